//! A driver's process tree, from `/proc`: what `[fence] kill_driver` kills.
//!
//! A driver on the local driver socket is known by the kernel's credentials of its
//! connection (`SO_PEERCRED`), never by what it says, and by its start time, so that a pid
//! reused by another process after the driver exited is never taken for it. Killing its
//! tree stops every process that descends from it (each SIGSTOPped first, so none can fork
//! away while the tree is walked, then SIGKILLed): the driver and a service it runs as its
//! child. A service that left the tree (a daemonizing start script, a systemd unit) is not
//! in it: fence those with `fence.command`.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use clustd_transport::PeerProcess as DriverProcess;
use clustd_transport::{ProcStat, proc_stat};

/// Whether `process` still is the process it was (same pid, same start time, alive).
fn is_alive(process: DriverProcess) -> bool {
    stat(process.pid)
        .is_some_and(|s| s.start_time == process.start_time && !matches!(s.state, 'Z' | 'X'))
}

/// The owner of process `pid` (its effective uid, as `/proc` shows it).
fn owner(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

fn stat(pid: u32) -> Option<ProcStat> {
    proc_stat(pid)
}

/// Every live process's parent, now.
fn parents() -> Result<BTreeMap<u32, u32>, String> {
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("cannot read /proc: {e}"))?;
    let mut out = BTreeMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A zombie is dead already (and has no children left).
        if let Some(s) = stat(pid)
            && !matches!(s.state, 'Z' | 'X')
        {
            out.insert(pid, s.ppid);
        }
    }
    Ok(out)
}

/// `root` and every process that descends from it, in `parents`.
fn tree(parents: &BTreeMap<u32, u32>, root: u32) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, ppid) in parents {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut out = BTreeSet::from([root]);
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if out.insert(*child) {
                todo.push(*child);
            }
        }
    }
    out
}

/// How many times the tree is walked for processes forked while it was being frozen.
const ROUNDS: usize = 8;

/// Kills `root`'s process tree; returns how many processes it killed. Only processes owned
/// by the driver's user are signalled (a setuid descendant, which the driver could not kill
/// itself, fails the run instead); every process is frozen (SIGSTOP) first and killed only
/// if it still is the process that was frozen (pid and start time). Refuses a tree that
/// holds this daemon (or pid 1), a root that is gone, a zombie or whose pid now belongs to
/// another process (a service it started is no longer in its tree), and a tree that does
/// not stop growing.
pub fn kill_tree(root: DriverProcess) -> Result<usize, String> {
    let me = std::process::id();
    if root.pid <= 1 || root.pid == me {
        return Err(format!(
            "refusing to kill pid {} (init or this daemon)",
            root.pid
        ));
    }
    if !is_alive(root) {
        return Err(format!(
            "driver process {} is gone: a service it started is no longer in its tree; set fence.command to reach it",
            root.pid
        ));
    }
    let mut frozen: BTreeMap<u32, DriverProcess> = BTreeMap::new();
    let mut settled = false;
    // Freeze what is there, then look again for what was forked meanwhile.
    for _ in 0..ROUNDS {
        let all = tree(&parents()?, root.pid);
        if all.contains(&me) {
            return Err(format!(
                "this daemon descends from driver process {}: refusing to kill its own tree",
                root.pid
            ));
        }
        let new: Vec<u32> = all
            .into_iter()
            .filter(|p| !frozen.contains_key(p))
            .collect();
        if new.is_empty() {
            settled = true;
            break;
        }
        for pid in new {
            let Some(process) = stat(pid).map(|s| DriverProcess {
                pid,
                uid: root.uid,
                start_time: s.start_time,
            }) else {
                continue; // gone meanwhile
            };
            if owner(pid) != Some(root.uid) {
                for p in frozen.values() {
                    let _ = signal(p.pid, Signal::SIGCONT);
                }
                return Err(format!(
                    "pid {pid} in driver process {}'s tree belongs to another user: not killed",
                    root.pid
                ));
            }
            if signal(pid, Signal::SIGSTOP)? {
                frozen.insert(pid, process);
            }
        }
    }
    if !settled {
        for p in frozen.values() {
            let _ = signal(p.pid, Signal::SIGCONT);
        }
        return Err(format!(
            "driver process {}'s tree kept growing over {ROUNDS} walks (a fork bomb?): not killed",
            root.pid
        ));
    }
    let mut killed = 0;
    for process in frozen.values() {
        // Still the process we froze (a stopped process does not exit by itself, but it can
        // be killed by someone else and its pid reused).
        if is_alive(*process) && signal(process.pid, Signal::SIGKILL)? {
            killed += 1;
        }
    }
    Ok(killed)
}

/// Sends `signal`; `Ok(false)` if the process is gone already.
fn signal(pid: u32, signal: Signal) -> Result<bool, String> {
    let target = Pid::from_raw(i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?);
    match kill(target, signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(format!("cannot send {signal} to pid {pid}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        let s = ProcStat::parse(line).expect("parsed");
        assert_eq!((s.state, s.ppid, s.start_time), ('S', 17, 987_654));
        assert!(ProcStat::parse("garbage").is_none());
    }

    #[test]
    fn a_tree_holds_every_descendant_and_nothing_else() {
        let parents = BTreeMap::from([(10, 1), (11, 10), (12, 11), (13, 1), (14, 12)]);
        assert_eq!(tree(&parents, 10), BTreeSet::from([10, 11, 12, 14]));
        assert_eq!(tree(&parents, 13), BTreeSet::from([13]));
    }

    #[test]
    fn a_process_tree_is_killed_and_a_reused_pid_is_refused() {
        // A shell (the "driver") with a sleeping child (its "service").
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & wait"])
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let root = (0..200)
            .find_map(|_| {
                let p = DriverProcess::of(pid, nix::unistd::getuid().as_raw())?;
                let all = tree(&parents().ok()?, pid);
                if all.len() >= 2 {
                    Some(p)
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
            })
            .expect("the shell and its sleep");
        let stale = DriverProcess {
            start_time: root.start_time + 1,
            ..root
        };
        let other_user = DriverProcess {
            uid: root.uid + 1,
            ..root
        };
        assert!(
            kill_tree(other_user).is_err(),
            "another user's processes are not signalled"
        );
        assert!(
            kill_tree(stale).is_err(),
            "another start time is another process"
        );
        let before = tree(&parents().expect("proc"), pid);
        assert_eq!(kill_tree(root).expect("killed"), before.len());
        let status = child.wait().expect("wait");
        assert!(!status.success(), "killed: {status:?}");
        for p in before {
            // Dead: gone, or a zombie until its new parent reaps it.
            let dead = (0..200).any(|_| {
                let dead = stat(p).is_none_or(|s| matches!(s.state, 'Z' | 'X'));
                if !dead {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                dead
            });
            assert!(dead, "pid {p} survived");
        }
        assert!(
            kill_tree(DriverProcess {
                pid: std::process::id(),
                uid: 0,
                start_time: 0
            })
            .is_err()
        );
        // The shell is gone now: its children (if any were left) are out of reach.
        assert!(kill_tree(root).is_err());
    }
}
