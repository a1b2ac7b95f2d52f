//! # clustd: the cluster failover daemon
//!
//! The node runtime ([`runtime`]) drives the sans-IO election core with a transport, a
//! clock and a disk; around it sit the config loader ([`config`]), durable state
//! ([`store`]), the admin HTTP API ([`admin`]), status and metrics, and the in-process
//! demo ([`demo`]). The `clustd` binary is a thin command-line layer over this library.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fence;
pub mod health;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod page;
pub mod proctree;
pub mod rejections;
pub mod runtime;
pub mod sdnotify;
pub mod serve;
pub mod status;
pub mod store;
pub mod watchdog;

pub use clock::{Clock, TokioClock};
pub use config::{ConfigError, Settings};
pub use runtime::{
    Command, DriverRecord, Handle, RoleNotice, RuntimeError, Shutdown, control, run,
};
pub use store::{FileStore, StateStore};
