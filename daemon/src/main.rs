//! The `clustd` command line: a thin layer over the `clustd` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use clustd::admin::Client;
use clustd::config::{self, Settings};
use clustd::runtime::{self, Shutdown};
use clustd::{FileStore, TokioClock};
use clustd_transport::{TokioNet, TransportKind};

/// clustd keeps exactly one machine of a cluster master and fails over fast.
///
/// Each machine runs `clustd run`; the daemons elect a master; drivers on each machine
/// (clustd-shell-driver, clustd-notify-driver) start and stop the service. Try
/// `clustd demo` to watch a 3-node cluster fail over on this machine.
#[derive(Debug, Parser)]
#[command(name = "clustd", version, about, long_about)]
struct Cli {
    /// Log format for `run` (logs go to stderr; filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    Quic,
    Websocket,
}

impl From<Transport> for TransportKind {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Quic => TransportKind::Quic,
            Transport::Websocket => TransportKind::WebSocket,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a node in the foreground. SIGTERM/SIGINT step down gracefully if master.
    Run {
        /// The node's config file (TOML); see README "Configuration".
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the local daemon's view of the cluster (via its admin API).
    Status {
        /// Read admin.listen from this config file (default 127.0.0.1:7401).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Admin API address, overriding the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the local master to step down: it demotes itself first, then hands over.
    StepDown {
        /// Read admin.listen from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Admin API address, overriding the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Maintenance mode: the node never stands for election and hands off if master.
    Maintenance {
        /// on or off.
        state: OnOff,
        /// Read admin.listen from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Admin API address, overriding the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Print a new random cluster secret (put it in cluster.secret_file, mode 0600).
    Keygen,
    /// Validate a config file: prints the exact key and reason on error.
    CheckConfig {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a 3-node cluster in this process on loopback and fail it over (about 15 s).
    Demo {
        /// Transport between the demo nodes.
        #[arg(long, value_enum, default_value_t = Transport::Quic)]
        transport: Transport,
    },
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn admin_addr(config: Option<&PathBuf>, admin: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = admin {
        return Ok(addr);
    }
    match config {
        Some(path) => Ok(config::admin_listen(path)?),
        None => Ok(config::default_admin_listen()),
    }
}

async fn shutdown_signal() -> Shutdown {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
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

async fn run_node(path: PathBuf) -> anyhow::Result<()> {
    let (settings, warnings) = Settings::load(&path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    if !settings.admin_listen.ip().is_loopback() {
        tracing::warn!(admin = %settings.admin_listen, "the admin API has no authentication and is not on loopback");
    }
    let (control, handle) = runtime::control();
    let admin = tokio::net::TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("admin.listen {}: cannot bind", settings.admin_listen))?;
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(clustd::admin::serve(admin, handle, async move {
        let _ = admin_stop_rx.await;
    }));
    let store = FileStore::new(&settings.data_dir);
    let result = runtime::run(settings, TokioNet, TokioClock::new(), store, control, shutdown_signal()).await;
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    result?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Cmd::Run { .. } => "info",
        // The demo prints its own story; only errors from the nodes go to stderr.
        Cmd::Demo { .. } => "error",
        _ => "warn",
    };
    init_logging(cli.log_format, default_log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clustd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clustd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Run { config } => run_node(config).await?,
        Cmd::Status { config, admin, json } => {
            let client = Client::new(admin_addr(config.as_ref(), admin)?);
            let body = client.status_json().await?;
            if json {
                println!("{body}");
            } else {
                let status: clustd::status::Status = serde_json::from_str(&body).context("the daemon's status JSON")?;
                print!("{}", status.render());
            }
        }
        Cmd::StepDown { config, admin } => {
            let client = Client::new(admin_addr(config.as_ref(), admin)?);
            client.post("/step-down").await?;
            println!("step-down requested: the master demotes itself, then hands over");
        }
        Cmd::Maintenance { state, config, admin } => {
            let client = Client::new(admin_addr(config.as_ref(), admin)?);
            let path = match state {
                OnOff::On => "/maintenance/on",
                OnOff::Off => "/maintenance/off",
            };
            client.post(path).await?;
            println!("maintenance {}", if matches!(state, OnOff::On) { "on: this node will not be master" } else { "off" });
        }
        Cmd::Keygen => println!("{}", config::keygen().context("reading OS randomness")?),
        Cmd::CheckConfig { config } => {
            let (settings, warnings) = Settings::load(&config)?;
            for w in &warnings {
                println!("warning: {w}");
            }
            let core = &settings.core;
            println!(
                "{}: ok — node {}, {} peer(s), transport {:?}, heartbeat {} ms, election timeout {}-{} ms, lease {} ms",
                config.display(),
                settings.id,
                settings.peers.len(),
                settings.transport,
                core.heartbeat_interval.as_millis(),
                core.election_timeout_min.as_millis(),
                core.election_timeout_max.as_millis(),
                core.lease.as_millis()
            );
        }
        Cmd::Demo { transport } => {
            let report = clustd::demo::run(transport.into()).await?;
            if report.overlaps > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
