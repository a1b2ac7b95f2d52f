//! # clustd-drivers: from role changes to action on the machine
//!
//! A *driver* connects to its machine's clustd daemon and acts when the node becomes master
//! or stops being master. This crate is the client library for writing one, and the two
//! drivers clustd ships:
//!
//! - the library: [`Driver`] (one async method per role change, and optional ones for
//!   cluster events such as a peer going down and for the start of the session), [`connect`] / [`run`]
//!   (connect over the daemon's transport with the cluster secret, reconnect forever with
//!   backoff and jitter, report each result back to the daemon), and the **fail-safe lease**:
//!   a master driver that stops hearing lease renewals demotes itself when the lease the
//!   daemon gave it runs out, so a killed daemon cannot leave a service running beside a new
//!   master. The lease is anchored at the daemon's *send* time on the machine's monotonic
//!   clock ([`MachineClock`]), so a late notice never extends it — drivers must run on the
//!   daemon's machine. A demotion or the lease's end cancels a running start, so a stop
//!   never waits behind one;
//! - **health reports** ([`HealthReporter`]): a driver that checks its service tells the
//!   daemon how each check went, and the daemon counts the results like its own
//!   `[[check]]`s (`fall` failures in a row make the node unhealthy and not eligible to be
//!   master, `rise` successes healthy again). The reporter comes with the session
//!   ([`Driver::on_session_start`], [`DriverSession::health_reporter`]); reporting never
//!   blocks, keeps only the latest result per check (at most [`MAX_HEALTH_CHECKS`]) while
//!   no daemon is connected, and sends every check's latest result again after a
//!   reconnect. Health and eligibility changes come back as [`ClusterEvent::Health`];
//! - [`connect_with`]: the same session over any [`clustd_transport::Net`] and any
//!   [`MachineClock`], so the simulation runs this library on simulated hosts;
//! - [`shell`]: runs `start`/`stop` scripts ([`ShellDriver`]), and an optional `check`
//!   script whose results it reports as health;
//! - [`notify`]: webhook, email and SMS notifications ([`NotifyDriver`]), including the
//!   node's health and eligibility changes;
//! - [`vip`]: service addresses that follow the master ([`VipDriver`]): added over
//!   rtnetlink, announced with gratuitous ARP and neighbour advertisements, reconciled,
//!   removed on backup, and watched for another host claiming them.
//!
//! A custom driver, complete:
//! ```no_run
//! use clustd_drivers::{ActionResult, Driver, DriverConfig, RoleChange, TransportKind};
//!
//! struct Log;
//! impl Driver for Log {
//!     async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
//!         println!("{} in term {}", change.role.as_str(), change.term);
//!         ActionResult::Ok
//!     }
//! }
//!
//! # async fn example() -> Result<(), clustd_drivers::SessionError> {
//! let config = DriverConfig::new("127.0.0.1:7400".parse().unwrap(), TransportKind::Quic,
//!                                std::fs::read("/etc/clustd/driver-secret").unwrap(), "log");
//! clustd_drivers::run(config, Log, async { tokio::signal::ctrl_c().await.unwrap() }).await
//! # }
//! ```
//!
//! A driver that also reports on its service, from a task of its own so the check runs
//! whatever the role (and ends when the session drops the driver):
//! ```no_run
//! use std::time::Duration;
//! use clustd_drivers::{ActionResult, Driver, HealthReporter, RoleChange};
//!
//! struct Web {
//!     checker: Option<tokio::task::JoinHandle<()>>,
//! }
//!
//! impl Driver for Web {
//!     async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
//!         ActionResult::Ok
//!     }
//!
//!     fn on_session_start(&mut self, health: HealthReporter) {
//!         self.checker = Some(tokio::spawn(async move {
//!             loop {
//!                 let up = std::net::TcpStream::connect("127.0.0.1:80").is_ok();
//!                 // 3 failures in a row make the node unhealthy, 2 successes healthy again.
//!                 let detail = if up { "port 80 answers" } else { "port 80 refused" };
//!                 let _ = health.report_with("web", up, detail, 3, 2);
//!                 tokio::time::sleep(Duration::from_secs(1)).await;
//!             }
//!         }));
//!     }
//! }
//!
//! impl Drop for Web {
//!     fn drop(&mut self) {
//!         if let Some(checker) = self.checker.take() {
//!             checker.abort();
//!         }
//!     }
//! }
//! ```

pub mod cli;
mod clock;
mod config;
mod dial;
mod driver;
mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod health;
pub mod notify;
mod reconnect;
pub mod shell;
mod transition;
pub mod vip;

pub use clock::{MachineClock, MonotonicClock, TokioMachineClock};
pub use clustd_core::driver::{ActionResult, DriverRole, HealthChange};
pub use clustd_core::{NodeId, Term};
pub use config::{
    ConfigError, DriverConfig, TransportKind, generate_driver_id, secret_file_mode_warning,
};
pub use driver::{CLUSTER_EVENT_BUDGET, ChangeSource, ClusterEvent, Driver, RoleChange};
pub use engine::{EngineError, SessionStatus};
pub use health::{HealthError, HealthReporter, MAX_HEALTH_CHECKS, MAX_HEALTH_TEXT};
pub use notify::{NotifyConfig, NotifyDriver};
pub use reconnect::{DriverSession, SessionError, connect, connect_with, run};
pub use shell::{ShellCheck, ShellConfig, ShellDriver};
pub use vip::{VipConfig, VipDriver, VipError};
