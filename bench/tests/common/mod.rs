//! Shared by the bench's integration tests: the binaries the benches run as child processes.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The binary `name` (`clustd`, a driver) beside `clustd-bench` in the target dir: the daemon
/// and every driver binary are built (or brought up to date: a stale one may not speak the
/// current wire format) once per test run, in this test's profile.
pub(crate) fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_clustd-bench"));
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "clustd", "-p", "clustd-drivers", "--bins"]);
        // What cargo set for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...) must not
        // reach the inner build: build scripts that rerun when those change (ring's) would
        // rebuild, and every crate above them with them, in place — under the outer build's
        // feet.
        for (key, _) in std::env::vars_os() {
            if set_by_cargo_for_tests(&key.to_string_lossy()) {
                cmd.env_remove(key);
            }
        }
        if bench
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "release")
        {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(
            status.success(),
            "building clustd and the driver binaries failed"
        );
    });
    bench.with_file_name(name)
}

/// Environment variables cargo sets for a test process, not for a build.
fn set_by_cargo_for_tests(key: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p))
        || key == "CARGO_PRIMARY_PACKAGE"
        || key == "CARGO_TARGET_TMPDIR"
}

/// The `clustd` daemon binary.
pub(crate) fn clustd_bin() -> PathBuf {
    built("clustd")
}

/// The shell driver binary.
#[allow(dead_code)] // Each test crate that says `mod common;` uses only part of it.
pub(crate) fn driver_bin() -> PathBuf {
    built("clustd-shell-driver")
}
