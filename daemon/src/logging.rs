//! The log filter, adjustable while running: `log.level` in the config sets it at start and
//! on `clustd reload`, unless `RUST_LOG` is set and not empty (then the environment decides, as always).
//! The binary installs the function that swaps the filter; a library user without one gets
//! an error saying so.

use std::sync::OnceLock;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Installs the function that replaces the process's log filter (once; later calls are
/// ignored).
pub fn install(set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    let _ = SET_LEVEL.set(Box::new(set));
}

/// Whether `RUST_LOG` decides the filter (then `log.level` is not applied).
pub fn env_decides() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Checks that `level` is a valid filter; returns it trimmed.
pub fn check_level(level: &str) -> Result<String, String> {
    let level = level.trim();
    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    Ok(level.to_owned())
}

/// Applies `level` (see the module docs): `Ok(false)` when `RUST_LOG` decides instead.
pub fn apply(level: &str) -> Result<bool, String> {
    if env_decides() {
        return Ok(false);
    }
    match SET_LEVEL.get() {
        Some(set) => set(level).map(|()| true),
        None => Err("this process cannot change its log filter".into()),
    }
}
