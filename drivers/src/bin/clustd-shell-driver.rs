//! `clustd-shell-driver`: runs a start script when this node becomes master and a stop
//! script when it stops being master.

use anyhow::Context;
use clap::Parser;
use clustd_drivers::cli::{ConfigArgs, LogTo, init_logging, shutdown_signal};

/// Runs `start` when this node becomes master and `stop` when it stops being master.
///
/// Connects to the local clustd daemon over the cluster transport with the cluster secret,
/// reconnects forever, and runs one script at a time, in order. At start-up on a backup it
/// runs `stop` once, so the service is in a known state. While master it holds the lease the
/// daemon gave it, counted from when the daemon sent it (so it must run on the daemon's
/// machine): if renewals stop (daemon killed, hung, unreachable) it runs `stop` by itself
/// when the lease runs out. A demotion or the lease's end while `start` still runs kills
/// the start script's process group (SIGKILL) and runs `stop` at once. `stop` must finish
/// within the daemon's election.stop_budget_ms; the driver warns when timeout_ms +
/// kill_grace_ms exceed it, and logs an error for every stop that took longer.
///
/// Scripts run as `SHELL -c SCRIPT` in their own process group with CLUSTD_ROLE
/// (master|backup), CLUSTD_TERM, CLUSTD_NODE_ID, CLUSTD_LEADER_ID, CLUSTD_PREV_ROLE and
/// CLUSTD_REASON set; their output goes to the log; past `timeout_ms` the whole group is
/// killed (SIGTERM, then SIGKILL after `kill_grace_ms`). With `check` set, the check runs
/// the same way every `check_interval_ms`, on master and backup alike, and each result
/// (exit status 0: healthy; the last line printed as the detail) goes to the daemon.
///
/// Example config:
///
///   daemon = "unix:/var/lib/clustd/driver.sock"   # the daemon's local driver socket: no secret
///   # or over the transport, with the drivers' credential and the daemon's public key:
///   # daemon = "127.0.0.1:7400"
///   # transport = "quic"
///   # secret_file = "/etc/clustd/driver-secret"
///   # daemon_key = "<clustd keygen --public /etc/clustd/node.key>"
///
///   [script]
///   start = "systemctl start myapp"
///   stop = "systemctl stop myapp"
///   timeout_ms = 30000
///   # optional health check, reported to the daemon as <driver id>/check:
///   check = "curl -sf http://127.0.0.1:8080/health"
///   check_interval_ms = 1000
///   check_timeout_ms = 2000   # then its process group is killed: unhealthy
///   check_fall = 3            # failures in a row that make the node unhealthy
///   check_rise = 2            # successes in a row that make it healthy again
///
/// Logging: RUST_LOG (default "info").
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
// The doc comment above is the `--help` text, printed verbatim: its brackets are TOML
// tables and its `<...>` are placeholders, not rustdoc links or HTML.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(LogTo::Stdout);
    let Some(config) = args
        .config
        .load("clustd-shell-driver", clustd_drivers::ShellConfig::load)
    else {
        return Ok(());
    };
    clustd_drivers::shell::run_shell_driver(config, shutdown_signal())
        .await
        .context("shell driver stopped")
}
