//! A durable home for [`PersistentState`], `(term, voted_for)`: the only state a node
//! must not forget. The election state machine itself does no I/O; this module is the
//! file store the clustd daemon uses, for embedders who want the same.
//!
//! # The rule
//! After every input, drain [`crate::Node::poll_persist`] and [`StateStore::save`] the
//! last state it gave **before** sending anything from [`crate::Node::poll_transmit`]. If a
//! save fails, the node must not speak: send nothing, and either stop driving it (exit) or
//! keep its messages and retry the save ([`StoreError::is_transient`] says whether a retry
//! can help). Sending after a failed save could let the node vote twice in a term. At
//! start, [`StateStore::load`] and pass the state to [`crate::Node::new`]; a
//! [`StoreError::Corrupt`] file must stop the node, not be replaced by a fresh state.
//!
//! File format: `clustd_core::codec` frame of the state, then a CRC-32 of that frame
//! (4 bytes, little endian). Writes go to a temporary file that is fsynced and renamed
//! over the old one, then the directory is fsynced, so a crash leaves either the old or
//! the new state, never a mix. A corrupt file must stop the node: starting from zero
//! could make it vote twice in a term.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::PersistentState;
use crate::codec;

/// The file name inside the store's directory (the daemon's `data_dir`).
pub const STATE_FILE: &str = "state";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but its contents are damaged.
    #[error(
        "{path} is corrupt ({reason}); refusing to start, because forgetting this node's vote \
         could let it vote twice in a term. Restore the file from a backup, or, if this node \
         has been down for longer than the maximum election timeout \
         (election.election_timeout_ms[1] in clustd's config), so that any election it voted \
         in is over, move it away to start fresh"
    )]
    Corrupt {
        /// The damaged state file, named in the message so the operator can restore it.
        path: PathBuf,
        /// What is wrong with it (checksum, length, undecodable contents).
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying later may succeed without anyone's help: out of file descriptors
    /// (EMFILE, ENFILE: e.g. a flood of connections), out of space or quota (ENOSPC,
    /// EDQUOT: logs filling the disk), out of memory, or interrupted. The clustd daemon
    /// then withholds every message until a retry makes the state durable, instead of
    /// exiting.
    ///
    /// EIO, EROFS, EACCES and a corrupt file are not transient: they mean a failing disk or
    /// a misconfiguration an operator must fix, and the daemon stops as before.
    pub fn is_transient(&self) -> bool {
        let Self::Io { source, .. } = self else {
            return false;
        };
        if matches!(
            source.kind(),
            std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::OutOfMemory
                | std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::WouldBlock
        ) {
            return true;
        }
        // EMFILE and ENFILE have no `ErrorKind` of their own; both are 24 and 23 on every
        // Unix (Linux, the BSDs, macOS), which the daemon's tests check against `nix`.
        #[cfg(unix)]
        if let Some(code) = source.raw_os_error() {
            const EMFILE: i32 = 24;
            const ENFILE: i32 = 23;
            return code == EMFILE || code == ENFILE;
        }
        false
    }
}

/// Where a node keeps its persistent state. clustd's simulation implements it in memory.
pub trait StateStore: Send + 'static {
    /// Reads the state; a missing state is the default (a brand new node).
    fn load(&mut self) -> Result<PersistentState, StoreError>;
    /// Writes the state durably; returns only when it would survive a power cut.
    fn save(&mut self, state: &PersistentState) -> Result<(), StoreError>;
}

/// The state in `DIR/state`: written to `DIR/state.tmp`, fsynced, renamed over, and the
/// directory fsynced.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store in `dir` (created on first save if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        path,
        action,
        source,
    }
}

/// Encodes a state as the file's bytes.
pub fn encode_state(state: &PersistentState) -> Vec<u8> {
    let mut bytes = codec::encode(state)
        .unwrap_or_else(|_| unreachable!("a term and a node id always fit a frame"));
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes the file's bytes; `Err(reason)` when damaged.
pub fn decode_state(bytes: &[u8]) -> Result<PersistentState, String> {
    if bytes.len() < 5 {
        return Err(format!("only {} bytes", bytes.len()));
    }
    let (frame, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(frame) != stored {
        return Err("checksum mismatch".into());
    }
    codec::decode(frame).map_err(|e| e.to_string())
}

impl StateStore for FileStore {
    fn load(&mut self) -> Result<PersistentState, StoreError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => {
                decode_state(&bytes).map_err(|reason| StoreError::Corrupt { path, reason })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistentState::default()),
            Err(e) => Err(io(&path, "read")(e)),
        }
    }

    fn save(&mut self, state: &PersistentState) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir, "create directory"))?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let path = self.path();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        file.write_all(&encode_state(state))
            .map_err(io(&tmp, "write"))?;
        file.sync_all().map_err(io(&tmp, "fsync"))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path, "rename"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "fsync directory"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed on drop (the core has no dev-dependency for this).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "clustd-core-store-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    use crate::{NodeId, Term};

    #[test]
    fn round_trip_and_missing_file() {
        let dir = TempDir::new();
        let mut store = FileStore::new(dir.path().join("data"));
        assert_eq!(
            store.load().expect("missing is fresh"),
            PersistentState::default()
        );
        let state = PersistentState {
            term: Term(42),
            voted_for: Some(NodeId::new("node-2").expect("valid")),
        };
        store.save(&state).expect("save");
        assert_eq!(store.load().expect("load"), state);
        assert!(!dir.path().join("data/state.tmp").exists());
    }

    /// A crash in the middle of a save: the new state was only partly written to
    /// `state.tmp` and never renamed. That write was not durable (save had not returned),
    /// so the node comes back with the previous state — never a torn one — and saves again.
    #[test]
    fn a_crash_during_save_keeps_the_previous_state() {
        let dir = TempDir::new();
        let mut store = FileStore::new(dir.path());
        let before = PersistentState {
            term: Term(3),
            voted_for: Some(NodeId::new("node-1").expect("valid")),
        };
        store.save(&before).expect("save");
        let after = PersistentState {
            term: Term(4),
            voted_for: Some(NodeId::new("node-2").expect("valid")),
        };
        let torn = encode_state(&after);
        fs::write(dir.path().join("state.tmp"), &torn[..torn.len() / 2]).expect("write");
        assert_eq!(store.load().expect("the previous state"), before);
        store.save(&after).expect("save over the torn tmp");
        assert_eq!(store.load().expect("load"), after);
    }

    #[test]
    fn corruption_is_reported_not_ignored() {
        let dir = TempDir::new();
        let mut store = FileStore::new(dir.path());
        store
            .save(&PersistentState {
                term: Term(7),
                voted_for: None,
            })
            .expect("save");
        let mut bytes = fs::read(store.path()).expect("read");
        bytes[1] ^= 0x40;
        fs::write(store.path(), &bytes).expect("write");
        let err = store.load().expect_err("corrupt").to_string();
        assert!(
            err.contains("corrupt") && err.contains("checksum mismatch"),
            "{err}"
        );
        // Forgetting the vote is safe only once every election it could have voted in is
        // over: after the *maximum* election timeout, not the minimum.
        assert!(
            err.contains("maximum election timeout (election.election_timeout_ms[1]"),
            "{err}"
        );
        fs::write(store.path(), b"xy").expect("write");
        assert!(
            store
                .load()
                .expect_err("truncated")
                .to_string()
                .contains("only 2 bytes")
        );
    }
}
