//! Durable `(term, voted_for)`: the daemon keeps it with the core's file store
//! ([`clustd_core::store`]: atomic write, fsync, checksum, and a clear error on
//! corruption); the simulation plugs in its own [`StateStore`].

pub use clustd_core::store::{
    FileStore, STATE_FILE, StateStore, StoreError, decode_state, encode_state,
};

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
