//! The simulated disk: each node's `(term, vote)` lives outside its turmoil host, so it
//! survives a crash exactly like a state file that was fsynced before `save` returned
//! (which is what `clustd::FileStore` guarantees: a crash loses nothing `save` returned
//! for). Every save is also journaled, with the global simulated time, for the checkers
//! (terms never decrease, one vote per term).
//!
//! Disk faults: a node's state can be marked torn or corrupt while it is down
//! ([`Disk::damage`]); its store then fails to load exactly as `FileStore` does on a bad
//! checksum ([`StoreError::Corrupt`]), and the daemon must refuse to start.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clustd::store::{StateStore, StoreError};
use clustd_core::PersistentState;

/// One durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Save {
    /// Global simulated time of the write.
    pub at: Duration,
    /// Node index.
    pub node: usize,
    /// What was written.
    pub state: PersistentState,
}

/// Every node's durable state and the journal of writes.
#[derive(Debug, Default)]
pub struct Disk {
    /// Current durable state per node index.
    pub states: Vec<PersistentState>,
    /// Every write, in order.
    pub journal: Vec<Save>,
    /// Nodes whose state file is damaged, and how ("torn", "corrupt").
    pub damaged: std::collections::BTreeMap<usize, &'static str>,
}

impl Disk {
    /// Damages node `node`'s state file (call while it is down).
    pub fn damage(&mut self, node: usize, how: &'static str) {
        self.damaged.insert(node, how);
    }
}

/// A shared [`Disk`].
pub type SharedDisk = Arc<Mutex<Disk>>;

/// Locks the disk (a panic elsewhere leaves plain data behind; still usable).
pub fn lock(disk: &SharedDisk) -> MutexGuard<'_, Disk> {
    disk.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One node's view of the shared disk.
#[derive(Debug, Clone)]
pub struct SimStore {
    disk: SharedDisk,
    node: usize,
}

impl SimStore {
    /// The store of node `node`.
    pub fn new(disk: SharedDisk, node: usize) -> Self {
        Self { disk, node }
    }
}

impl StateStore for SimStore {
    fn load(&mut self) -> Result<PersistentState, StoreError> {
        if let Some(how) = lock(&self.disk).damaged.get(&self.node) {
            return Err(StoreError::Corrupt {
                path: format!("/sim/n{}/state", self.node).into(),
                reason: format!("simulated {how} write"),
            });
        }
        Ok(lock(&self.disk)
            .states
            .get(self.node)
            .cloned()
            .unwrap_or_default())
    }

    fn save(&mut self, state: &PersistentState) -> Result<(), StoreError> {
        let mut disk = lock(&self.disk);
        if disk.states.len() <= self.node {
            disk.states
                .resize(self.node + 1, PersistentState::default());
        }
        disk.states[self.node] = state.clone();
        let at = turmoil::sim_elapsed().unwrap_or_default();
        disk.journal.push(Save {
            at,
            node: self.node,
            state: state.clone(),
        });
        Ok(())
    }
}
