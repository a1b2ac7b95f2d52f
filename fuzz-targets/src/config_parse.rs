//! `config_parse`: arbitrary text into the daemon's config loader. The outcome is a config
//! that passes the core's own validation, or an error that names the file and a key —
//! never a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clustd::config::Settings;

/// The file name errors must mention.
const FILE: &str = "fuzz.toml";

/// A directory with secret files the configs may point at (`cluster.secret_file`), made
/// once per process: `secret` (valid), `short` (too short), `empty`.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("clustd-fuzz-config")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"))
            .keep();
        for (name, contents) in [
            (
                "secret",
                "0123456789abcdef0123456789abcdef0123456789abcdef\n",
            ),
            ("short", "tooshort\n"),
            ("empty", ""),
        ] {
            std::fs::write(dir.join(name), contents)
                .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
        }
        dir
    })
}

/// Whether the loader may read the `secret_file` this text names. The loader reads the file
/// (it must); the fuzzer must not make it read `/dev/zero` or a FIFO, so only plain names
/// inside the base directory are let through.
fn secret_file_is_harmless(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return true; // not TOML: the loader stops before reading anything
    };
    let Some(path) = table
        .get("cluster")
        .and_then(|c| c.as_table())
        .and_then(|c| c.get("secret_file"))
    else {
        return true;
    };
    path.as_str().is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 16
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    })
}

/// The target body.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if !secret_file_is_harmless(&text) {
        return;
    }
    match Settings::parse(&text, FILE, base_dir()) {
        Ok((settings, _warnings)) => {
            settings
                .core
                .validate()
                .unwrap_or_else(|e| panic!("accepted a config the core rejects: {e}"));
            assert!(
                !settings.peers.contains_key(&settings.id),
                "accepted a config listing itself as a peer"
            );
            assert!(
                settings.driver_lease_margin < settings.core.lease,
                "accepted a driver lease margin not below the lease"
            );
            for (i, check) in settings.checks.iter().enumerate() {
                assert!(
                    clustd::config::is_valid_check_name(&check.name)
                        && check.name != clustd::config::START_CHECK_NAME,
                    "accepted check name {:?}",
                    check.name
                );
                assert!(
                    settings.checks[..i].iter().all(|c| c.name != check.name),
                    "accepted two checks named {:?}",
                    check.name
                );
                assert!(
                    check.fall >= 1
                        && check.rise >= 1
                        && !check.interval.is_zero()
                        && !check.timeout.is_zero(),
                    "accepted check {:?} with a zero fall, rise, interval or timeout",
                    check.name
                );
            }
        }
        Err(e) => {
            assert_eq!(e.file, FILE, "the error names another file: {e}");
            assert!(!e.key.is_empty(), "the error names no key: {e}");
            assert!(!e.message.is_empty(), "the error says nothing: {e}");
        }
    }
}
