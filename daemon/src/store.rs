//! Durable `(term, voted_for)`: the daemon keeps it with the core's file store
//! ([`clustd_core::store`]: atomic write, fsync, checksum, and a clear error on
//! corruption); the simulation plugs in its own [`StateStore`].

pub use clustd_core::store::{
    FileStore, STATE_FILE, StateStore, StoreError, decode_state, encode_state,
};

/// What `clustd check-config` finds of `node.data_dir` at `dir`: it creates the directory
/// if missing, creates, writes, fsyncs and removes a probe file in it (what every state
/// write does), then reads the state file. The state, or one line on what is wrong.
pub fn probe_data_dir(dir: &std::path::Path) -> Result<clustd_core::PersistentState, String> {
    use std::io::Write as _;
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "node.data_dir {}: cannot {what}: {e}; the daemon stores its term there before every vote and would stop at its first election",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create it", e))?;
    let probe = dir.join(format!(".clustd-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe)
        .and_then(|mut f| {
            f.write_all(b"probe")?;
            f.sync_all()
        })
        .map_err(|e| fail("create and fsync a file in it", e));
    let removed = std::fs::remove_file(&probe);
    written?;
    removed.map_err(|e| fail("remove a file from it", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("fsync it", e))?;
    FileStore::new(dir).load().map_err(|e| match e {
        StoreError::Corrupt { path, reason } => format!(
            "node.data_dir: the state file {} is damaged ({reason}); the daemon refuses to start on it: see README, \"Recovering from a corrupt or poisoned term\"",
            path.display()
        ),
        other => format!("node.data_dir: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Running out of descriptors or space is worth a retry; a failing disk is not.
    #[cfg(unix)]
    #[test]
    fn which_write_failures_are_transient() {
        use nix::errno::Errno;
        let io = |errno: Errno| StoreError::Io {
            path: PathBuf::from("state.tmp"),
            action: "create",
            source: std::io::Error::from_raw_os_error(errno as i32),
        };
        for (errno, transient) in [
            (Errno::EMFILE, true),
            (Errno::ENFILE, true),
            (Errno::ENOSPC, true),
            (Errno::EDQUOT, true),
            (Errno::ENOMEM, true),
            (Errno::EAGAIN, true),
            (Errno::EINTR, true),
            (Errno::EIO, false),
            (Errno::EROFS, false),
            (Errno::EACCES, false),
        ] {
            assert_eq!(io(errno).is_transient(), transient, "{errno}");
        }
        let corrupt = StoreError::Corrupt {
            path: PathBuf::from("state"),
            reason: "checksum mismatch".into(),
        };
        assert!(!corrupt.is_transient());
    }
}
