//! The `clustd` command line: a thin layer over the `clustd` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use clustd::admin::Client;
use clustd::config::{self, Settings};
use clustd_transport::TransportKind;

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
    /// Show this node's status (via its admin API); `--all` shows every node of the
    /// cluster as this node hears it (no other node's admin API is needed).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Every node: role, term, leader, lease, health, maintenance, last heard, drivers.
        #[arg(long)]
        all: bool,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move mastership: on the master, step down (demote, let the drivers stop, hand over
    /// to the best eligible node) and wait for the new master. With `--to NODE`, from any
    /// node: a switchover to that node. Refused, saying why, when it cannot be done.
    ///
    /// Examples: `clustd step-down` (on the master); `clustd step-down --to node-2`.
    StepDown {
        #[command(flatten)]
        admin: AdminArgs,
        /// Hand mastership to this node (it must be connected and eligible).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Step down even with no eligible successor: the cluster is left without a master.
        #[arg(long, conflicts_with = "to")]
        force: bool,
    },
    /// Maintenance mode: the node never stands for election and hands off if master.
    /// `on` is refused when it would leave no eligible node, unless `--force`.
    Maintenance {
        /// on or off.
        state: OnOff,
        #[command(flatten)]
        admin: AdminArgs,
        /// Turn it on even if no other node is eligible to be master.
        #[arg(long)]
        force: bool,
    },
    /// Re-read the daemon's config file and apply what can change without a role change
    /// (priority, preempt, maintenance, checks, health, timings that stay safe); anything
    /// else is refused, naming the key, and the old config keeps running. Same as
    /// `systemctl reload clustd` (SIGHUP).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make credentials: a cluster secret or driver credential (printed; put it in
    /// cluster.secret_file or cluster.driver_secret_file, mode 0600), or with `--node` this
    /// node's key pair (the private key written to `--out`, the public key printed for the
    /// other nodes' `cluster.peers[].key`).
    ///
    /// Examples: `clustd keygen --out /etc/clustd/secret` (or `umask 077; clustd keygen >
    /// /etc/clustd/secret`); `clustd keygen --out /etc/clustd/admin-token`;
    /// `clustd keygen --node --out /etc/clustd/node.key`;
    /// `clustd keygen --public /etc/clustd/node.key`.
    Keygen {
        /// Make a node key pair instead of a secret (needs --out for the private key).
        #[arg(long, requires = "out")]
        node: bool,
        /// Write the secret (or with --node the private key) to this file instead of printing
        /// it (created with mode 0600; never overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the public key of this existing private key file.
        #[arg(long, value_name = "KEY_FILE", conflicts_with_all = ["node", "out"])]
        public: Option<PathBuf>,
    },
    /// Validate a config file: prints the exact key and reason on error.
    CheckConfig {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a 3-node cluster in this process on loopback and fail it over (about 15 s).
    Demo {
        /// Transport between the demo nodes.
        #[arg(long, value_parser = clustd::cli::transport_parser(), default_value = "quic")]
        transport: TransportKind,
    },
}

/// How the admin commands find the daemon.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The daemon's config file: the commands use its admin socket (admin.socket, default
    /// <node.data_dir>/admin.sock), which needs membership of admin.socket_group (or root).
    #[arg(long, short, default_value = clustd::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Use admin.listen over TCP instead, with admin.token_file's token.
    #[arg(long)]
    tcp: bool,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(config::admin_endpoint(&self.config, self.tcp)?))
    }
}

fn init_logging(format: LogFormat, default: &str) {
    // An empty `RUST_LOG` counts as unset (as `log.level` sees it): otherwise it would
    // silence everything but errors.
    let filter = clustd::logging::env_decides()
        .then(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .flatten()
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // `log.level` may replace the filter later (at start and on reload).
    macro_rules! init_reloadable {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            clustd::logging::install(move |level| {
                handle
                    .reload(tracing_subscriber::EnvFilter::new(level))
                    .map_err(|e| e.to_string())
            });
            builder.init();
        }};
    }
    match format {
        LogFormat::Text => init_reloadable!(builder),
        LogFormat::Json => init_reloadable!(builder.json()),
    }
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
    // One thread is plenty for a node (one election task, a few connections) and keeps the
    // idle footprint small; the demo runs many nodes and gets a thread per core.
    let builder = match cli.command {
        Cmd::Demo { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let mut builder = builder;
    let runtime = match builder.enable_all().build() {
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
        Cmd::Run { config } => clustd::serve::run(&config).await?,
        Cmd::Status {
            admin,
            all: true,
            json,
        } => {
            let body = admin.client()?.get("/cluster").await?;
            if json {
                println!("{body}");
            } else {
                let view: clustd::status::ClusterView =
                    serde_json::from_str(&body).context("the daemon's cluster JSON")?;
                print!("{}", view.render());
            }
        }
        Cmd::Status {
            admin,
            all: false,
            json,
        } => {
            let client = admin.client()?;
            let body = client.status_json().await?;
            if json {
                println!("{body}");
            } else {
                let status: clustd::status::Status =
                    serde_json::from_str(&body).context("the daemon's status JSON")?;
                print!("{}", status.render());
            }
        }
        Cmd::Reload { admin } => {
            let body = admin.client()?.post("/reload").await?;
            let answer: serde_json::Value =
                serde_json::from_str(&body).context("the daemon's answer")?;
            println!("reloaded: {}", answer["changes"].as_str().unwrap_or("done"));
        }
        Cmd::StepDown { admin, to, force } => {
            let client = admin.client()?;
            let body = client
                .post_json(
                    "/step-down",
                    &serde_json::json!({ "to": to, "force": force }),
                )
                .await?;
            let answer: serde_json::Value =
                serde_json::from_str(&body).context("the daemon's answer")?;
            match (answer["master"].as_str(), answer["took_ms"].as_u64()) {
                (Some(master), Some(ms)) => println!(
                    "{master} is master now (hand-over took {})",
                    clustd::status::human_ms(ms)
                ),
                _ => println!("{}", answer["note"].as_str().unwrap_or("stepped down")),
            }
        }
        Cmd::Maintenance {
            state,
            admin,
            force,
        } => {
            let client = admin.client()?;
            match state {
                OnOff::On => {
                    client
                        .post_json("/maintenance/on", &serde_json::json!({ "force": force }))
                        .await?
                }
                OnOff::Off => client.post("/maintenance/off").await?,
            };
            println!(
                "maintenance {}",
                if matches!(state, OnOff::On) {
                    "on: this node will not be master"
                } else {
                    "off"
                }
            );
        }
        Cmd::Keygen {
            node: false,
            out: None,
            public: None,
        } => println!("{}", config::keygen().context("reading OS randomness")?),
        Cmd::Keygen {
            public: Some(path), ..
        } => println!("{}", config::public_key_of_file(&path)?),
        Cmd::Keygen {
            node: false,
            out: Some(out),
            public: None,
        } => {
            config::write_secret_file(&out)?;
            eprintln!(
                "wrote a new secret to {} (mode 0600): use it as cluster.secret_file, cluster.driver_secret_file or admin.token_file",
                out.display()
            );
        }
        Cmd::Keygen { out, .. } => {
            let out = out.context("--node needs --out FILE for the private key")?;
            let public = config::write_node_key(&out)?;
            println!("{public}");
            eprintln!(
                "wrote this node's private key to {} (mode 0600): set node.key_file to it; on every other node, add key = \"{public}\" to this node's entry in cluster.peers",
                out.display()
            );
        }
        Cmd::CheckConfig { config } => {
            let (settings, warnings) = Settings::load(&config)?;
            for w in &warnings {
                println!("warning: {w}");
            }
            let state = clustd::store::probe_data_dir(&settings.data_dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            println!(
                "data_dir: {} is writable; stored term {}{}",
                settings.data_dir.display(),
                state.term.0,
                state
                    .voted_for
                    .map(|v| format!(", voted for {v}"))
                    .unwrap_or_default()
            );
            let core = &settings.core;
            println!(
                "{}: ok — node {}, {} peer(s), transport {}, heartbeat {} ms, election timeout {}-{} ms, lease {} ms",
                config.display(),
                settings.id,
                settings.peers.len(),
                settings.transport,
                core.heartbeat_interval.as_millis(),
                core.election_timeout_min.as_millis(),
                core.election_timeout_max.as_millis(),
                core.lease.as_millis()
            );
            let checks: Vec<String> = settings
                .checks
                .iter()
                .map(|c| {
                    format!(
                        "{} ({}, every {} ms, timeout {} ms, fall {}, rise {})",
                        c.name,
                        c.kind.as_str(),
                        c.interval.as_millis(),
                        c.timeout.as_millis(),
                        c.fall,
                        c.rise
                    )
                })
                .collect();
            println!(
                "health: {} check(s){}{}; unhealthy and alone: {}; min_master {} ms; a failed start counts for {} ms",
                checks.len(),
                if checks.is_empty() { "" } else { ": " },
                checks.join(", "),
                core.alone.as_str(),
                core.min_master.as_millis(),
                settings.health.start_failure.as_millis()
            );
        }
        Cmd::Demo { transport } => {
            let report = clustd::demo::run(transport).await?;
            if !report.violations.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
