//! # clustd-bench: clustd measured with real processes
//!
//! The benchmarks that run the shipped binaries (`clustd`, the drivers) as child processes
//! and fail them for real, kept out of the daemon so that it carries none of their code:
//!
//! - [`failover`]: N daemons with a shell driver each on loopback; round after round the
//!   master is failed (SIGKILL, SIGTERM, SIGSTOP, step-down, a partition, a failing health
//!   check) and the time to the new master's `start` script is measured, with a breakdown
//!   of the election read from the daemons' structured status ([`clustd::status`]). Every
//!   run is judged by the one strict checker ([`service_log`]).
//! - [`vip`]: three daemons with a VIP driver each in network namespaces ([`netns`]), timed
//!   as a client sees the address move.
//! - [`proxy`]: a loopback fault proxy that cuts and heals peer links; the daemon's own
//!   process tests use it too.
//!
//! The `clustd-bench` binary is a thin command line over [`failover::run`] and [`vip::run`].

pub mod failover;
pub mod netns;
pub mod proxy;
pub mod service_log;
pub mod vip;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Files, processes, ports.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The cluster did not reach a state in time.
    #[error("{0}")]
    Stuck(String),
    /// A config the bench wrote does not load (so the bench cannot know its stop budget).
    #[error("{0}")]
    Config(#[from] clustd::ConfigError),
}

/// Percentile (nearest rank) of sorted values; NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
