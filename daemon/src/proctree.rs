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

/// A driver's process as its connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DriverProcess {
    /// Its pid (from the kernel).
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot).
    pub start_time: u64,
}

impl DriverProcess {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<Self> {
        stat(pid).map(|s| Self {
            pid,
            start_time: s.start_time,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    /// `R`, `S`, `T`, `Z` (a zombie: dead, not reaped yet)...
    state: char,
    ppid: u32,
    start_time: u64,
}

/// Fields 4 (ppid) and 22 (start time) of `/proc/<pid>/stat`; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
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

/// Kills `root`'s process tree; returns how many processes it signalled. Refuses a tree
/// that holds this daemon (or pid 1), and a root that is gone or whose pid now belongs to
/// another process: its children can no longer be found that way.
pub fn kill_tree(root: DriverProcess) -> Result<usize, String> {
    let me = std::process::id();
    if root.pid <= 1 || root.pid == me {
        return Err(format!(
            "refusing to kill pid {} (init or this daemon)",
            root.pid
        ));
    }
    if DriverProcess::of(root.pid) != Some(root) {
        return Err(format!(
            "driver process {} is gone: a service it started is no longer in its tree; set fence.command to reach it",
            root.pid
        ));
    }
    let mut stopped = BTreeSet::new();
    // Freeze what is there, then look again for what was forked meanwhile.
    for _ in 0..8 {
        let all = tree(&parents()?, root.pid);
        if all.contains(&me) {
            return Err(format!(
                "this daemon descends from driver process {}: refusing to kill its own tree",
                root.pid
            ));
        }
        let new: Vec<u32> = all.difference(&stopped).copied().collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            signal(pid, Signal::SIGSTOP)?;
            stopped.insert(pid);
        }
    }
    for pid in &stopped {
        signal(*pid, Signal::SIGKILL)?;
    }
    Ok(stopped.len())
}

fn signal(pid: u32, signal: Signal) -> Result<(), String> {
    let target = Pid::from_raw(i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?);
    match kill(target, signal) {
        // Gone already: nothing left to stop.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("cannot send {signal} to pid {pid}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        let s = parse_stat(line).expect("parsed");
        assert_eq!((s.state, s.ppid, s.start_time), ('S', 17, 987_654));
        assert!(parse_stat("garbage").is_none());
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
                let p = DriverProcess::of(pid)?;
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
                start_time: 0
            })
            .is_err()
        );
    }
}
