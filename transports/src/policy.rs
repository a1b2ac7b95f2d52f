//! Who may be connected to us, once authenticated: the rules a remote's hello must pass on
//! a connection it dialed ([`inbound_allowed`], judged by what the handshake proved) and on
//! one we dialed ([`outbound_allowed`], judged by whom we meant to reach), side by side.
//! Pure functions of the config; how many drivers fit right now is the registry's to say.

use clustd_core::NodeId;

use crate::PeerKind;
use crate::config::EndpointConfig;
use crate::error::{RefuseReason, TransportError};
use crate::session::{Hello, Proof};

/// Who may connect to us: by what they proved, then by the hello they sent. A hello is a
/// claim; it is believed only as far as the proof behind it goes.
pub(crate) fn inbound_allowed(
    config: &EndpointConfig,
    remote: &Hello,
    proof: Proof,
) -> Result<(), RefuseReason> {
    if remote.id == config.local_id {
        return Err(RefuseReason::SameId);
    }
    if config.local_kind != PeerKind::Peer {
        return Err(RefuseReason::KindNotAccepted);
    }
    match (proof, remote.kind) {
        // A driver credential makes a driver, never a peer, and a driver may not take a
        // peer's id: ids are unique per endpoint.
        (Proof::Driver | Proof::ClusterSecretDriver, PeerKind::Peer) => {
            Err(RefuseReason::KindNotAccepted)
        }
        (Proof::Driver | Proof::ClusterSecretDriver, PeerKind::Driver)
            if config.peers.contains_key(&remote.id) =>
        {
            Err(RefuseReason::UnknownNode)
        }
        (Proof::Driver | Proof::ClusterSecretDriver, PeerKind::Driver) if config.accept_drivers => {
            Ok(())
        }
        (Proof::Driver | Proof::ClusterSecretDriver, PeerKind::Driver) => {
            Err(RefuseReason::KindNotAccepted)
        }
        // Drivers prove the driver credential, never the cluster secret or a node key.
        (Proof::ClusterSecret | Proof::NodeKey(_), PeerKind::Driver) => {
            Err(RefuseReason::KindNotAccepted)
        }
        (proof, PeerKind::Peer) => {
            if !config.peers.contains_key(&remote.id) {
                return Err(RefuseReason::UnknownNode);
            }
            match (config.peer_keys.get(&remote.id), proof) {
                (Some(expected), Proof::NodeKey(proved)) if *expected == proved => Ok(()),
                // The key of another node (or none): the claim is false.
                (Some(_), _) => Err(RefuseReason::KeyRequired),
                // A peer without a configured key: the secret is all it can prove.
                (None, _) => Ok(()),
            }
        }
    }
}

/// Who we may stay connected to on a connection we dialed: the node we meant to reach (when
/// we dialed a configured peer), a daemon (never a driver) that proved its key if it has
/// one configured, and, unless we are a driver, one of our peers. Checked before we confirm
/// the handshake, so a remote we refuse is never accepted.
pub(crate) fn outbound_allowed(
    config: &EndpointConfig,
    remote: &Hello,
    expected: Option<&NodeId>,
) -> Result<(), TransportError> {
    if let Some(expected) = expected
        && *expected != remote.id
    {
        return Err(TransportError::UnexpectedNode {
            expected: expected.clone(),
            got: remote.id.clone(),
        });
    }
    let reason = if remote.kind != PeerKind::Peer {
        Some(RefuseReason::KindNotAccepted)
    } else if expected.is_none() && config.peer_keys.contains_key(&remote.id) {
        // Dialed by address with the cluster secret: a keyed node proved nothing.
        Some(RefuseReason::KeyRequired)
    } else if remote.id == config.local_id {
        Some(RefuseReason::SameId)
    } else if config.local_kind == PeerKind::Peer && !config.peers.contains_key(&remote.id) {
        Some(RefuseReason::UnknownNode)
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TransportError::RefusedRemote {
            id: remote.id.clone(),
            reason,
        }),
        None => Ok(()),
    }
}
