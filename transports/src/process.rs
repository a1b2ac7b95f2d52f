//! What the kernel says of a process: who is on the other end of a local-socket
//! connection ([`PeerProcess`], from `SO_PEERCRED` at accept) and what `/proc/<pid>/stat`
//! holds of it ([`ProcStat`]).

/// The process on the other end of a local-socket connection, as the kernel named it
/// when the connection was accepted (`SO_PEERCRED`), with its start time so that a pid
/// reused later by another process is never taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerProcess {
    /// Its pid.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot).
    pub start_time: u64,
}

impl PeerProcess {
    /// Process `pid` of user `uid` as it is now, if it exists.
    pub fn of(pid: u32, uid: u32) -> Option<Self> {
        proc_stat(pid).map(|s| Self {
            pid,
            uid,
            start_time: s.start_time,
        })
    }
}

/// What `/proc/<pid>/stat` says of a process (the fields this project reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `T`, `Z` (a zombie: dead, not reaped yet)...
    pub state: char,
    /// Its parent.
    pub ppid: u32,
    /// Its start time, clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Parses one `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
    /// parentheses, so fields are counted after its last `)`.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Self {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }
}

/// `/proc/<pid>/stat`, if the process exists (and `/proc` is mounted).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}
