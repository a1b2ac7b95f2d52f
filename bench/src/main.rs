//! The `clustd-bench` command line: a thin layer over the `clustd_bench` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clustd::cli::Transports;
use clustd_bench::failover::{self, HealthProfile, Mode, Options};
use clustd_bench::vip;

/// Benchmarks of clustd with real processes: the `clustd` daemons and their drivers run as
/// child processes of this one, and are failed for real.
///
/// Needs the `clustd` binary and the driver binaries beside this one
/// (`cargo build --release -p clustd -p clustd-drivers -p clustd-bench`).
#[derive(Debug, Parser)]
#[command(name = "clustd-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Fail the master of a real N-process cluster R times and measure the failover to the new
    /// master's start script, with a breakdown of the election from the daemons' status;
    /// checks the daemons' service records for overlapping masters with the strict service
    /// checker.
    Failover(FailoverArgs),
}

#[derive(Debug, clap::Args)]
struct FailoverArgs {
    /// Number of daemons.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Failover rounds per transport.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Transport(s) to measure.
    #[arg(long, value_parser = clustd::cli::transports_parser(), default_value = "both")]
    transport: Transports,
    /// Heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Election timeout range, `MIN,MAX`.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 2000])]
    election_timeout_ms: Vec<u64>,
    /// Stop budget (must fit the lease inequality; e.g. 20 for ET_min 100).
    #[arg(long)]
    stop_budget_ms: Option<u64>,
    /// The margin taken off the lease drivers are given (must be below the lease; e.g. 8
    /// for ET 25..50 ms and a 5 ms stop budget) [default: the daemon's, 20].
    #[arg(long)]
    driver_lease_margin_ms: Option<u64>,
    /// How the master is failed.
    #[arg(long, value_enum, default_value_t = Mode::Kill)]
    mode: Mode,
    /// `--mode unhealthy`: the check's interval_ms (and timeout_ms) [default: 10 heartbeats,
    /// 1000 at the defaults, 200 at --heartbeat-ms 20].
    #[arg(long)]
    check_interval_ms: Option<u64>,
    /// `--mode unhealthy`: the check's fall (failures in a row that make a node unhealthy).
    #[arg(long, default_value_t = 3)]
    check_fall: u32,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the failover-time distribution into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seconds to sample idle daemons' CPU, memory and wakeups (leader and followers),
    /// after the rounds, on a fresh cluster that logs as in production (the rounds' daemons
    /// log every lease renewal for the checker); 0: skip. `--rounds 0`: only that.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// The clustd binary (default: beside this binary).
    #[arg(long)]
    clustd_bin: Option<PathBuf>,
    /// The clustd-shell-driver binary (with --vip: clustd-vip-driver) (default: beside this
    /// binary).
    #[arg(long)]
    driver_bin: Option<PathBuf>,
    /// Keep the work directory with all configs and logs.
    #[arg(long)]
    keep: bool,
    /// Measure a virtual IP's failover instead, as a client sees it: three daemons with a
    /// clustd-vip-driver each and a client, in network namespaces on one bridge (needs root
    /// and iproute2); from the SIGKILL of the master daemon to the client's neighbour entry
    /// naming the new master's MAC and to a TCP connection to the VIP answered by the new
    /// master. Only with --mode kill and 3 nodes; --driver-bin names clustd-vip-driver.
    #[arg(long)]
    vip: bool,
}

impl FailoverArgs {
    fn election_timeout(&self) -> anyhow::Result<[u64; 2]> {
        let [min, max] = self.election_timeout_ms[..] else {
            anyhow::bail!("--election-timeout-ms takes MIN,MAX");
        };
        Ok([min, max])
    }
}

/// `given`, or `name` beside this binary; either must exist.
fn binary(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name(name),
    };
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release -p clustd -p clustd-drivers` or pass --{}-bin",
        path.display(),
        if name == "clustd" { "clustd" } else { "driver" }
    );
    Ok(path)
}

async fn bench_failover(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    if args.vip {
        return bench_vip(args).await;
    }
    let opts = Options {
        nodes: args.nodes,
        rounds: args.rounds,
        transports: args.transport.0.clone(),
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_ms: args.election_timeout()?,
        stop_budget_ms: args.stop_budget_ms,
        driver_lease_margin_ms: args.driver_lease_margin_ms,
        mode: args.mode,
        health: HealthProfile {
            interval_ms: args
                .check_interval_ms
                .unwrap_or(HealthProfile::for_heartbeat(args.heartbeat_ms).interval_ms),
            fall: args.check_fall,
            ..HealthProfile::for_heartbeat(args.heartbeat_ms)
        },
        clustd_bin: binary(args.clustd_bin, "clustd")?,
        driver_bin: binary(args.driver_bin, "clustd-shell-driver")?,
        idle_secs: args.idle_secs,
        progress: !args.json,
        keep: args.keep,
    };
    let reports = failover::run(&opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", failover::render(&reports));
    }
    if let Some(path) = args.plot {
        write(&path, &failover::plot_svg(&reports))?;
    }
    let bad = reports
        .iter()
        .any(|r| !r.overlaps.is_empty() || r.failed_rounds > 0);
    Ok(if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn bench_vip(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        matches!(args.mode, Mode::Kill) && args.nodes == 3,
        "--vip measures --mode kill with --nodes 3 only"
    );
    let [min, max] = args.election_timeout()?;
    let mut election = format!(
        "heartbeat_ms = {}\nelection_timeout_ms = [{min}, {max}]",
        args.heartbeat_ms
    );
    if let Some(budget) = args.stop_budget_ms {
        election.push_str(&format!("\nstop_budget_ms = {budget}"));
    }
    let opts = vip::VipOptions {
        rounds: args.rounds,
        transports: args.transport.0.clone(),
        election,
        clustd_bin: binary(args.clustd_bin, "clustd")?,
        driver_bin: binary(args.driver_bin, "clustd-vip-driver")?,
        progress: !args.json,
    };
    let reports = vip::run(&opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", vip::render(&reports));
    }
    Ok(if reports.iter().any(|r| r.overlaps > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The bench runs many child processes and polls them all: a thread per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clustd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Failover(args) => bench_failover(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clustd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
