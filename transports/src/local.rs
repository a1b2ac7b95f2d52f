//! The local driver socket: a Unix socket on the daemon's machine where access is by file
//! permissions (the mode and group the daemon sets), so a local driver needs no secret at
//! all. Same framing (WebSocket) and handshake code as the network, under the driver
//! handshake with a fixed, public pre-shared key: it authenticates nothing (the socket's
//! permissions do), and a connection on this socket is only ever a driver.
//! Production only: the simulation has no Unix sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::endpoint::Shared;
use crate::link::{Via, accept_flow, dial_flow};
use crate::ws::{self, ws_config};
use crate::{Secret, TransportError};

/// Where a daemon serves its local drivers, and who may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSocket {
    /// The socket's path.
    pub path: PathBuf,
    /// Its permission bits (e.g. `0o660`: owner and group may connect).
    pub mode: u32,
    /// Its group (numeric id), if it should not keep the daemon's.
    pub gid: Option<u32>,
}

/// The public pre-shared key of the local socket (not a secret: see the module docs).
pub(crate) fn local_secret() -> Secret {
    Secret::from_bytes(b"clustd local driver socket: access is by file permissions".to_vec())
        .unwrap_or_else(|_| unreachable!("longer than the minimum"))
}

/// The binding of a local link (no TLS exporter to bind to; the socket is the channel).
const LOCAL_BINDING: &[u8] = b"local socket";

/// Stands for the local socket where an address is expected (admission, logs).
pub(crate) const LOCAL_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);

/// Binds `socket`: removes a stale socket file (never any other kind of file), binds, and
/// sets the mode and group before anyone can be accepted.
pub(crate) fn bind(socket: &LocalSocket) -> Result<tokio::net::UnixListener, TransportError> {
    bind_socket(socket, "driver socket", "cluster.driver_socket")
}

/// [`bind`] for any of the daemon's local sockets: `what` names it in errors (`admin
/// socket`), `key` is the config key that sets its path.
pub fn bind_socket(
    socket: &LocalSocket,
    what: &str,
    key: &str,
) -> Result<tokio::net::UnixListener, TransportError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = &socket.path;
    let failed = |step: &str, e: std::io::Error| {
        TransportError::Config(format!("{what} {}: {step}: {e}", path.display()))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed("create its directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        // A socket someone still listens on is another daemon's: never take it over.
        Ok(meta)
            if meta.file_type().is_socket()
                && std::os::unix::net::UnixStream::connect(path).is_ok() =>
        {
            return Err(TransportError::Config(format!(
                "{what} {}: another process serves it (another clustd on this machine?): give each daemon its own {key}",
                path.display()
            )));
        }
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| failed("remove the stale socket", e))?;
        }
        Ok(_) => {
            return Err(TransportError::Config(format!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| failed("bind", e))?;
    if let Some(gid) = socket.gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| failed("set its group", e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket.mode & 0o777))
        .map_err(|e| failed("set its mode", e))?;
    Ok(listener)
}

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

/// Accepts local drivers until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::UnixListener) {
    let config = ws_config(shared.config.limits.max_frame_len);
    let stopped = shared.stopped();
    tokio::pin!(stopped);
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(error) => {
                if !accept_failing {
                    tracing::warn!(%error, "local driver socket: accept failed (further failures are not logged until one succeeds)");
                }
                accept_failing = true;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ticket = shared.unauthenticated.admit(LOCAL_ADDR);
        // The kernel's word for who connected (for a fence that kills the driver's
        // processes): the driver cannot forge it.
        let process = stream.peer_cred().ok().and_then(|cred| {
            let pid = u32::try_from(cred.pid()?).ok()?;
            PeerProcess::of(pid, cred.uid())
        });
        let establish = async move {
            let (tx, rx) = ws::server(Box::new(stream), config).await?;
            Ok((tx, rx, LOCAL_BINDING.to_vec()))
        };
        shared.spawn(accept_flow(
            shared.clone(),
            LOCAL_ADDR,
            Via::LocalSocket,
            ticket,
            process,
            establish,
        ));
    }
}

/// Dials the daemon's local socket once and runs the session until it ends.
pub(crate) async fn dial_once(shared: &Arc<Shared>, path: &Path) -> Result<(), TransportError> {
    let config = ws_config(shared.config.limits.max_frame_len);
    dial_flow(shared, None, Via::LocalSocket, async {
        let stream = tokio::net::UnixStream::connect(path).await?;
        let (tx, rx) = ws::client(Box::new(stream), "ws://localhost/clustd", config).await?;
        Ok((tx, rx, LOCAL_BINDING.to_vec()))
    })
    .await
}
