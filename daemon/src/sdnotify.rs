//! systemd's readiness protocol (`Type=notify`): `READY=1` once the node runs, `RELOADING=1`
//! around a reload, `STOPPING=1` at shutdown, and `WATCHDOG=1` while the runtime answers
//! (when the unit sets `WatchdogSec=`). A datagram to `$NOTIFY_SOCKET`; nothing happens
//! when it is unset (not started by systemd).

use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to systemd. False when not under systemd or it failed.
pub fn notify(state: &str) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt as _;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return false;
        };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(std::path::Path::new(&path)),
        };
        let Ok(addr) = addr else {
            return false;
        };
        let Ok(socket) = UnixDatagram::unbound() else {
            return false;
        };
        socket.send_to_addr(state.as_bytes(), &addr).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = state;
        false
    }
}

/// `RELOADING=1` needs the monotonic time with it (`MONOTONIC_USEC=`).
pub fn reloading() -> bool {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"))
}

/// Half of `$WATCHDOG_USEC` (systemd's advice), when the unit asks for a watchdog and it
/// is meant for this process (`$WATCHDOG_PID`, if set, is ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
