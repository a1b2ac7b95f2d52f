//! The local driver socket: a Unix socket on the daemon's machine where access is by file
//! permissions (the mode and group the daemon sets), so a local driver needs no secret at
//! all. Same framing (WebSocket) and handshake code as the network, under the driver
//! handshake with a fixed, public pre-shared key: it authenticates nothing (the socket's
//! permissions do), and a connection on this socket is only ever a driver.
//! Production only: the simulation has no Unix sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::LocalSocket;
use crate::error::TransportError;
use crate::link::{Via, accept_flow, dial_flow};
use crate::process::PeerProcess;
use crate::registry::Registry;
use crate::ws::{self, ws_config};

/// The binding of a local link (no TLS exporter to bind to; the socket is the channel).
const LOCAL_BINDING: &[u8] = b"local socket";

/// Stands for the local socket where an address is expected (admission, logs).
pub(crate) const LOCAL_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);

/// Binds the driver socket (see [`bind_socket`]).
pub(crate) fn bind(socket: &LocalSocket) -> Result<tokio::net::UnixListener, TransportError> {
    bind_socket(socket, "driver socket", "cluster.driver_socket")
}

/// Binds one of the daemon's local sockets (the driver socket, the admin socket): removes a
/// stale socket file (never any other kind of file), binds, and sets the mode and group
/// before anyone can be accepted. `what` names it in errors (`admin socket`), `key` is the
/// config key that sets its path.
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

/// Accepts local drivers until shutdown.
pub(crate) async fn serve(registry: Arc<Registry>, listener: tokio::net::UnixListener) {
    let config = ws_config(registry.config.limits.max_frame_len);
    let stopped = registry.stopped();
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
        let ticket = registry.unauthenticated.admit(LOCAL_ADDR);
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
        registry.spawn(accept_flow(
            registry.clone(),
            LOCAL_ADDR,
            Via::LocalSocket,
            ticket,
            process,
            establish,
        ));
    }
}

/// Dials the daemon's local socket once and runs the session until it ends.
pub(crate) async fn dial_once(registry: &Arc<Registry>, path: &Path) -> Result<(), TransportError> {
    let config = ws_config(registry.config.limits.max_frame_len);
    dial_flow(registry, None, Via::LocalSocket, async {
        let stream = tokio::net::UnixStream::connect(path).await?;
        let (tx, rx) = ws::client(Box::new(stream), "ws://localhost/clustd", config).await?;
        Ok((tx, rx, LOCAL_BINDING.to_vec()))
    })
    .await
}
