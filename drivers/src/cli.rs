//! What the driver binaries (`clustd-shell-driver`, `clustd-notify-driver`,
//! `clustd-vip-driver`) share around their library `run`: logging set-up, loading the config
//! (`--check-config` included) with the exit status operators and scripts rely on, and the
//! shutdown signal. A binary parses its arguments, calls these, and runs its driver.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Where a driver binary's log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogTo {
    /// Standard output (the shell and notify drivers).
    Stdout,
    /// Standard error, beside the start-up errors (the VIP driver; journald takes both).
    Stderr,
}

/// Installs the log: filtered by RUST_LOG (default `info`; an empty RUST_LOG counts as
/// unset, where tracing would keep only errors), colours only on a terminal and without
/// NO_COLOR, so a log file or journald gets plain text.
pub fn init_logging(to: LogTo) {
    use std::io::IsTerminal as _;
    let filter = std::env::var_os("RUST_LOG")
        .is_some_and(|v| !v.is_empty())
        .then(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .flatten()
        .unwrap_or_else(|| "info".into());
    let no_color = std::env::var_os("NO_COLOR").is_some();
    match to {
        LogTo::Stdout => tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal() && !no_color)
            .with_env_filter(filter)
            .init(),
        LogTo::Stderr => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal() && !no_color)
            .with_env_filter(filter)
            .init(),
    }
}

/// The value, or exits with status 2 after printing `{binary}: {error}` on stderr: a config
/// error names the file, the key and what is wrong, and that is all the user needs.
pub fn or_exit<T, E: Display>(binary: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("{binary}: {e}");
        std::process::exit(2)
    })
}

/// The arguments every driver binary takes: its config file and `--check-config`. A binary
/// flattens them into its own `Args` (`#[command(flatten)]`), whose doc comment is its help.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The driver's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Check the config (every key, and that the secret file can be read) and exit: 0 and
    /// `FILE: ok` when it is valid, 2 and what is wrong otherwise. Starts nothing.
    #[arg(long)]
    pub check_config: bool,
}

impl ConfigArgs {
    /// [`load_config`] with these arguments.
    pub fn load<C, E: Display>(
        &self,
        binary: &str,
        load: impl FnOnce(&Path) -> Result<C, E>,
    ) -> Option<C> {
        load_config(binary, &self.config, self.check_config, load)
    }
}

/// Loads `file` with `load`, exiting with status 2 if it is invalid ([`or_exit`]). With
/// `check_config`, prints `FILE: ok` and returns `None`: the caller exits 0, starting nothing.
pub fn load_config<C, E: Display>(
    binary: &str,
    file: &Path,
    check_config: bool,
    load: impl FnOnce(&Path) -> Result<C, E>,
) -> Option<C> {
    let config = or_exit(binary, load(file));
    if check_config {
        println!("{}: ok", file.display());
        return None;
    }
    Some(config)
}

/// Completes on SIGTERM or Ctrl-C (only Ctrl-C when SIGTERM cannot be listened for).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
