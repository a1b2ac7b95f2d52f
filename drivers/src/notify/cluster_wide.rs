//! Which node tells people about a cluster-wide event. Every node runs its own notify
//! driver and sees the same failover, so without a rule one failover becomes one message per
//! node. `new-master` needs none: only the new master sends it. For `master-lost` there is no
//! such node, so the drivers agree without talking: the node with the smallest id among those
//! still connected sends it. This module keeps the connected peers (as the local daemon
//! reports them) and applies that rule; it does no I/O.

use std::collections::BTreeSet;

use clustd_core::NodeId;

use crate::driver::ClusterEvent;

/// The peers the local daemon reports connected (`peer-up` / `peer-down` events).
///
/// The daemon sends one `peer-up` per connected peer right after its first role notice on
/// each driver connection, so the set is complete once that has arrived; a peer that went down
/// while the driver was disconnected stays in it until the daemon says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpPeers(BTreeSet<NodeId>);

impl UpPeers {
    /// Takes in a cluster event; returns whether it changed the set (`false` for a `peer-up`
    /// of a peer already up: the daemon repeating what it knows on a reconnect, not news).
    pub fn handle_event(&mut self, event: &ClusterEvent) -> bool {
        match event {
            ClusterEvent::PeerUp { peer, .. } => self.0.insert(peer.clone()),
            ClusterEvent::PeerDown { peer, .. } => self.0.remove(peer),
            _ => false,
        }
    }

    /// Whether this node (`me`) sends `master-lost` for the loss of `lost`: it does when it
    /// has the smallest id (in string order) among itself and its connected peers, the lost
    /// master left out. A node that knows no other connected peer sends it (it cannot know
    /// better), and so does the lost master itself in that case; otherwise the lost master
    /// never does (its `lost-master` is its own node event).
    pub fn sends_master_lost(&self, me: &NodeId, lost: &NodeId) -> bool {
        let mut others = self.0.iter().filter(|p| *p != lost && *p != me);
        match others.next() {
            None => true,
            Some(_) if me == lost => false,
            Some(first) => me < first,
        }
    }
}

#[cfg(test)]
mod tests {
    use clustd_core::Term;

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid")
    }

    fn up(peers: &[&str]) -> UpPeers {
        UpPeers(peers.iter().map(|p| id(p)).collect())
    }

    #[test]
    fn the_smallest_connected_node_but_the_lost_master_sends_master_lost() {
        // (me, lost master, connected peers, sends)
        let table: &[(&str, &str, &[&str], bool)] = &[
            // node-1 died; node-2 and node-3 still see each other: node-2 sends.
            ("node-2", "node-1", &["node-1", "node-3"], true),
            ("node-3", "node-1", &["node-1", "node-2"], false),
            // The daemon already reported the lost master down: the same answer.
            ("node-2", "node-1", &["node-3"], true),
            ("node-3", "node-1", &["node-2"], false),
            // node-2 died; node-1 is the smallest left.
            ("node-1", "node-2", &["node-3"], true),
            ("node-3", "node-2", &["node-1"], false),
            // Alone (or only the lost master known): it cannot know better, it sends.
            ("node-3", "node-1", &[], true),
            ("node-3", "node-1", &["node-1"], true),
            // The old master lost its lease but lives: a connected peer sends, not it...
            ("node-1", "node-1", &["node-2", "node-3"], false),
            ("node-1", "node-1", &["node-3"], false),
            // ...unless it knows no other node.
            ("node-1", "node-1", &[], true),
            // String order, the same on every node.
            ("node-10", "node-1", &["node-2"], true),
            ("node-2", "node-1", &["node-10"], false),
        ];
        for &(me, lost, peers, sends) in table {
            assert_eq!(
                up(peers).sends_master_lost(&id(me), &id(lost)),
                sends,
                "{me}, lost {lost}, up {peers:?}"
            );
        }
    }

    #[test]
    fn peer_events_keep_the_set_and_a_repeated_up_is_no_change() {
        let event = |peer: &str, up: bool| {
            let (peer, term, node) = (id(peer), Term(3), Some(id("node-1")));
            if up {
                ClusterEvent::PeerUp { peer, term, node }
            } else {
                ClusterEvent::PeerDown { peer, term, node }
            }
        };
        let mut peers = UpPeers::default();
        assert!(peers.handle_event(&event("node-2", true)));
        assert!(!peers.handle_event(&event("node-2", true)), "a repeat");
        assert!(peers.handle_event(&event("node-3", true)));
        assert!(peers.handle_event(&event("node-2", false)));
        assert!(!peers.handle_event(&event("node-2", false)));
        assert_eq!(peers, up(&["node-3"]));
        let health = ClusterEvent::Health {
            change: clustd_core::driver::HealthChange::Healthy,
            detail: String::new(),
            term: Term(3),
            node: id("node-1"),
        };
        assert!(!peers.handle_event(&health), "only peer events count");
    }
}
