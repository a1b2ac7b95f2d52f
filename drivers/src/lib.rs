//! # clustd-drivers: from role changes to action on the machine
//!
//! A *driver* connects to its machine's clustd daemon and acts when the node becomes master
//! or stops being master. This crate is the client library for writing one, and the two
//! drivers clustd ships:
//!
//! - the library: [`Driver`] (one async method per role change, and an optional one for
//!   cluster events such as a peer going down), [`connect`] / [`run`]
//!   (connect over the daemon's transport with the cluster secret, reconnect forever with
//!   backoff and jitter, report each result back to the daemon), and the **fail-safe lease**:
//!   a master driver that stops hearing lease renewals demotes itself when the lease the
//!   daemon gave it runs out, so a killed daemon cannot leave a service running beside a new
//!   master. The lease is anchored at the daemon's *send* time on the machine's monotonic
//!   clock ([`MachineClock`]), so a late notice never extends it — drivers must run on the
//!   daemon's machine. A demotion or the lease's end cancels a running start, so a stop
//!   never waits behind one;
//! - [`connect_with`]: the same session over any [`clustd_transport::Net`] and any
//!   [`MachineClock`], so the simulation runs this library on simulated hosts;
//! - [`shell`]: runs `start`/`stop` scripts ([`ShellDriver`]);
//! - [`notify`]: webhook, email and SMS notifications ([`NotifyDriver`]).
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

mod backoff;
mod clock;
mod config;
mod driver;
mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod link;
pub mod notify;
mod session;
pub mod shell;
mod transition;

pub use clock::{MachineClock, MonotonicClock, TokioMachineClock};
pub use clustd_core::{ActionResult, DriverRole, NodeId, Term};
pub use config::{ConfigError, secret_file_mode_warning};
pub use driver::{CLUSTER_EVENT_BUDGET, ChangeSource, ClusterEvent, Driver, RoleChange};
pub use engine::{EngineError, SessionStatus};
pub use notify::{NotifyConfig, NotifyDriver};
pub use session::{
    DriverConfig, DriverSession, SessionError, TransportKind, connect, connect_with,
    generate_driver_id, run,
};
pub use shell::{ShellConfig, ShellDriver};
