//! The random sweep as a test: `SIM_SEEDS=n cargo test -p sim --release -- sweep` runs
//! seeds `SIM_SEED_START..+n` (default 2 seeds, from 1) on both transports. For thousands
//! of seeds use the runner: `cargo run -p sim --release -- sweep --seeds 10000`.

use clustd_transport::TransportKind;
use sim::sweep::{Summary, run_seed};

#[test]
fn sweep() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let start: u64 = std::env::var("SIM_SEED_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut summary = Summary::default();
    for seed in start..start + seeds {
        for transport in [TransportKind::WebSocket, TransportKind::Quic] {
            summary.add(run_seed(seed, transport));
        }
    }
    eprintln!("{}\n{}", Summary::header(), summary.table(seeds, "both"));
    if let Some(first) = summary.failures.first() {
        panic!(
            "{} of {} runs failed; first:\n{}",
            summary.failures.len(),
            summary.runs,
            first.report()
        );
    }
}
