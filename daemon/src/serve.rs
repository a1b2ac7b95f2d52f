//! `clustd run`: one node in the foreground, as an operator runs it (the binary parses the
//! command line and calls [`run`]).

use std::path::Path;

use anyhow::Context;

use crate::config::Settings;
use crate::runtime::{self, Shutdown};
use crate::{FileStore, TokioClock};
use clustd_transport::TokioNet;

async fn shutdown_signal() -> Shutdown {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    Shutdown::Graceful
}

/// Raises the soft limit on open files to the hard limit: the soft default (often 1024) is
/// what a local user's flood of connections exhausted, leaving no descriptor to write the
/// state with. The admin API and the transport bound their connections too; this is the
/// margin. (The systemd unit sets `LimitNOFILE=65536`.)
#[cfg(unix)]
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() {}

/// `clustd run --config PATH`: loads the config, binds the admin API, runs the node until
/// SIGTERM or SIGINT (a master steps down gracefully first), and talks to systemd (READY,
/// RELOADING on SIGHUP, the watchdog) when it runs under it.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    raise_fd_limit();
    let (settings, warnings) = Settings::load(path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(level) = &settings.log_level {
        match crate::logging::apply(level) {
            Ok(true) => tracing::info!("log filter {level:?} (log.level)"),
            Ok(false) => {
                tracing::info!("RUST_LOG is set: it decides the log filter, not log.level")
            }
            Err(e) => tracing::warn!("log.level: {e}"),
        }
    }
    let (control, handle) = runtime::control();
    let socket =
        clustd_transport::bind_socket(&settings.admin.socket, "admin socket", "admin.socket")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tcp = match settings.admin.listen {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("admin.listen {listen}: cannot bind"))?,
        ),
        None => None,
    };
    let listeners = crate::admin::Listeners {
        socket: Some(socket),
        tcp,
    };
    let access = crate::admin::Access {
        token: settings.admin.token.clone(),
        metrics_open: settings.admin.metrics_open,
    };
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let systemd = tokio::spawn(tell_systemd(handle.clone()));
    let admin_task = tokio::spawn(crate::admin::serve(listeners, handle, access, async move {
        let _ = admin_stop_rx.await;
    }));
    let store = FileStore::new(&settings.data_dir);
    let result = runtime::run(
        settings,
        TokioNet,
        TokioClock::new(),
        store,
        control,
        shutdown_signal(),
    )
    .await;
    crate::sdnotify::notify("STOPPING=1");
    systemd.abort();
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    result?;
    Ok(())
}

/// READY once the node runs; then, for as long as it runs: a reload on `SIGHUP` (the
/// runtime logs what changed, or an ERROR naming the key and keeps the old config), and
/// systemd's watchdog fed while the runtime answers within a second.
async fn tell_systemd(handle: runtime::Handle) {
    while handle.status().node_id.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    crate::sdnotify::notify("READY=1");
    let watchdog = crate::sdnotify::watchdog_interval();
    if let Some(every) = watchdog {
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "feeding the systemd watchdog"
        );
    }
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let tick = tokio::time::sleep(watchdog.unwrap_or(std::time::Duration::from_secs(3600)));
        #[cfg(unix)]
        let hangup = async {
            match &mut hup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = hangup => {
                tracing::info!("SIGHUP: reloading the config");
                crate::sdnotify::reloading();
                // The runtime logs the outcome.
                let _ = handle.call(runtime::Command::Reload).await;
                crate::sdnotify::notify("READY=1");
            }
            () = tick, if watchdog.is_some() => {
                let alive = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    handle.command(runtime::Command::Refresh),
                )
                .await
                .is_ok_and(|answered| answered);
                if alive {
                    crate::sdnotify::notify("WATCHDOG=1");
                }
            }
        }
    }
}
