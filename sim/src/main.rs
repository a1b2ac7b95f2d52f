//! `sim`: the command-line runner.
//!
//! ```text
//! sim sweep [--seeds N] [--start S] [--jobs J] [--transport both|websocket|quic]
//! sim replay --seed S [--transport websocket|quic]     # one run, full trace
//! ```
//! The sweep runs seeds in parallel threads (each simulation is single-threaded), shows a
//! progress bar, and ends with a table: seeds, simulated hours, violations, failover time
//! p50/p99 in simulated ms, elections per simulated hour. Failures print their replay
//! command. Exit status 1 if any run violated an invariant.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clustd_transport::TransportKind;
use sim::sweep::{Summary, run_seed};

fn usage() -> ! {
    eprintln!(
        "usage:\n  sim sweep [--seeds N] [--start S] [--jobs J] [--transport both|websocket|quic]\n  sim replay --seed S [--transport websocket|quic]"
    );
    std::process::exit(2)
}

/// `--transport`: `both` (WebSocket first, the sweep's table order), `ws`, or a
/// `cluster.transport` value.
fn transports(name: &str) -> Vec<TransportKind> {
    match name {
        "both" => vec![TransportKind::WebSocket, TransportKind::Quic],
        "ws" => vec![TransportKind::WebSocket],
        _ => match TransportKind::ALL.into_iter().find(|k| k.as_str() == name) {
            Some(kind) => vec![kind],
            None => usage(),
        },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else { usage() };
    // Every flag takes a value; an unknown one is an error, never silently ignored.
    let known: &[&str] = match command.as_str() {
        "sweep" => &["--seeds", "--start", "--jobs", "--transport"],
        "replay" => &["--seed", "--transport"],
        _ => &[],
    };
    for flag in args[1..].iter().step_by(2) {
        if !known.contains(&flag.as_str()) {
            eprintln!("sim: unknown option `{flag}`");
            usage();
        }
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).cloned().unwrap_or_else(|| usage()))
    };
    let number = |flag: &str, default: u64| {
        value(flag).map_or(default, |v| v.parse().unwrap_or_else(|_| usage()))
    };
    match command.as_str() {
        "sweep" => {
            let seeds = number("--seeds", 100);
            let start = number("--start", 1);
            let jobs = number(
                "--jobs",
                std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
            );
            let kinds = transports(&value("--transport").unwrap_or_else(|| "both".into()));
            std::process::exit(sweep(seeds, start, jobs.max(1), &kinds));
        }
        "replay" => {
            let seed = value("--seed")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage());
            let kinds = transports(&value("--transport").unwrap_or_else(|| "websocket".into()));
            let mut failed = false;
            for kind in kinds {
                let outcome = run_seed(seed, kind);
                for line in &outcome.trace {
                    println!("{line}");
                }
                if outcome.violations.is_empty() {
                    println!(
                        "seed {seed} ({}): no violation, trace hash {:016x}",
                        kind.as_str(),
                        outcome.hash
                    );
                } else {
                    failed = true;
                    println!("{}", outcome.report());
                }
            }
            std::process::exit(i32::from(failed));
        }
        _ => usage(),
    }
}

fn sweep(seeds: u64, start: u64, jobs: u64, kinds: &[TransportKind]) -> i32 {
    let began = Instant::now();
    let next = AtomicU64::new(start);
    let done = AtomicU64::new(0);
    let summaries: Arc<Mutex<Vec<Summary>>> =
        Arc::new(Mutex::new(vec![Summary::default(); kinds.len()]));
    let total = seeds;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + seeds {
                        return;
                    }
                    for (k, kind) in kinds.iter().enumerate() {
                        let outcome = run_seed(seed, *kind);
                        if !outcome.violations.is_empty() {
                            eprintln!("\n{}", outcome.report());
                        }
                        let mut all = summaries
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        all[k].add(outcome);
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    let all = summaries
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    progress(finished, total, &all, began);
                }
            });
        }
    });
    let all = summaries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    eprintln!();
    println!("{}", Summary::header());
    let mut violations = 0;
    for (kind, summary) in kinds.iter().zip(all.iter()) {
        println!("{}", summary.table(seeds, kind.as_str()));
        violations += summary.failures.len();
    }
    println!(
        "\n{seeds} seeds (from {start}) x {} transport(s) in {:.1} s real time with {jobs} jobs; {violations} failing runs",
        kinds.len(),
        began.elapsed().as_secs_f64()
    );
    for failure in all.iter().flat_map(|s| s.failures.iter()) {
        println!(
            "FAILED seed {} (swarm {}): {}\n  replay: {}",
            failure.seed,
            failure.swarm.as_deref().unwrap_or("-"),
            failure.violations.first().map_or("", String::as_str),
            failure.replay
        );
    }
    i32::from(violations > 0)
}

fn progress(done: u64, total: u64, all: &[Summary], began: Instant) {
    let width = 40;
    let filled = (done * width / total.max(1)) as usize;
    let failed: usize = all.iter().map(|s| s.failures.len()).sum();
    let hours: f64 = all.iter().map(|s| s.sim_time.as_secs_f64()).sum::<f64>() / 3600.0;
    let elapsed = began.elapsed().as_secs_f64();
    let eta = if done > 0 {
        elapsed / done as f64 * (total - done) as f64
    } else {
        0.0
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {done}/{total} seeds, {hours:.1} sim h, {failed} failing, {elapsed:.0} s, ETA {eta:.0} s ",
        "=".repeat(filled),
        " ".repeat(width as usize - filled)
    );
    let _ = err.flush();
}
