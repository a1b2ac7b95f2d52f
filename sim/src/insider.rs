//! The insider: a host on the cluster's network that holds the cluster secret and the
//! drivers' credential — a driver machine, or one with an old config — but no node's key,
//! and tries to be a node ([`clustd_core::fault::Fault::ForgedTerm`]). It dials the target
//! claiming the sender's id three ways: with the cluster secret alone, with a node key of
//! its own, and as a driver (its credential) sending election messages on that link. Every
//! peer connection it gets is reported: with node keys none may exist. A forged message it
//! gets through carries an absurd term, so a hole shows up in the checkers too.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use clustd_core::{NodeId, Term, codec};
use clustd_transport::{
    Endpoint, EndpointConfig, NodeKey, PeerKind, PublicKey, Secret, SendClass, TransportEvent,
    TransportKind,
};
use tokio::sync::mpsc;
use turmoil::Sim;

use crate::net::{SimNet, mix};

/// How long each attempt is given (simulated time).
const ATTEMPT: Duration = Duration::from_millis(400);

/// One forgery: reach node `to` as node `from` with a message carrying `term`.
#[derive(Debug, Clone, Copy)]
pub struct Forge {
    /// Target node index.
    pub to: usize,
    /// The node index claimed.
    pub from: usize,
    /// The term the forged messages carry.
    pub term: Term,
}

/// What the cluster knows of its insider host.
pub struct Insider {
    commands: mpsc::UnboundedSender<Forge>,
    reports: Rc<RefCell<Vec<String>>>,
}

/// What the insider host knows of the cluster.
pub struct Setup {
    /// Node ids by index.
    pub names: Vec<String>,
    /// Node addresses by index (cluster port).
    pub addrs: Vec<SocketAddr>,
    /// Node public keys by index.
    pub keys: Vec<PublicKey>,
    /// Transport.
    pub transport: TransportKind,
    /// The cluster secret (it has it).
    pub cluster_secret: &'static str,
    /// The drivers' credential (it has it).
    pub driver_secret: &'static str,
    /// The run's seed.
    pub seed: u64,
}

impl Insider {
    /// Adds the host `insider` to `sim`.
    pub fn host(sim: &mut Sim<'static>, setup: Setup) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let rx = Rc::new(RefCell::new(Some(rx)));
        let reports = Rc::new(RefCell::new(Vec::new()));
        let setup = Rc::new(setup);
        let (host_reports, host_setup) = (reports.clone(), setup.clone());
        sim.host("insider", move || {
            let rx = rx.borrow_mut().take();
            let reports = host_reports.clone();
            let setup = host_setup.clone();
            async move {
                let Some(mut rx) = rx else {
                    return Ok(()); // never restarted
                };
                let mut n = 0u64;
                while let Some(forge) = rx.recv().await {
                    for how in [How::Secret, How::OwnKey, How::Driver] {
                        n += 1;
                        if let Some(report) = attempt(&setup, forge, how, n).await {
                            reports.borrow_mut().push(report);
                        }
                    }
                }
                Ok(())
            }
        });
        Self { commands, reports }
    }

    /// Queues a forgery (the host carries it out as simulated time runs).
    pub fn forge(&self, forge: Forge) {
        let _ = self.commands.send(forge);
    }

    /// Peer connections the insider got since the last call: each is a violation.
    pub fn take_reports(&self) -> Vec<String> {
        std::mem::take(&mut self.reports.borrow_mut())
    }
}

#[derive(Debug, Clone, Copy)]
enum How {
    Secret,
    OwnKey,
    Driver,
}

fn id(name: &str) -> NodeId {
    NodeId::new(name).unwrap_or_else(|e| panic!("{name} is a valid id: {e}"))
}

fn secret(text: &str) -> Secret {
    Secret::from_bytes(text.as_bytes().to_vec())
        .unwrap_or_else(|e| panic!("the sim's secrets are long enough: {e}"))
}

/// One attempt; `Some(report)` when the insider got a peer connection.
async fn attempt(setup: &Setup, forge: Forge, how: How, n: u64) -> Option<String> {
    let target = id(&setup.names[forge.to]);
    let claimed = &setup.names[forge.from];
    let mut config = match how {
        How::Secret | How::OwnKey => EndpointConfig::new(
            setup.transport,
            id(claimed),
            PeerKind::Peer,
            secret(setup.cluster_secret),
        ),
        How::Driver => EndpointConfig::new(
            setup.transport,
            id("insider"),
            PeerKind::Driver,
            secret(setup.driver_secret),
        ),
    };
    if let How::OwnKey = how {
        config.node_key = Some(NodeKey::from_private([0xee; 32]));
        config
            .peer_keys
            .insert(target.clone(), setup.keys[forge.to]);
    }
    if !matches!(how, How::Driver) {
        config.peers.insert(target.clone(), setup.addrs[forge.to]);
    }
    config.limits.backoff_min = Duration::from_millis(50);
    let net = SimNet::new(mix(&[setup.seed, 0x1a51de7, n]));
    let Ok((endpoint, mut events)) = Endpoint::start(net, config).await else {
        return None;
    };
    if let How::Driver = how {
        endpoint.dial(setup.addrs[forge.to]);
    }
    let mut report = None;
    let deadline = tokio::time::Instant::now() + ATTEMPT;
    let mut k = n;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let TransportEvent::Connected {
            id: remote, kind, ..
        } = event
        {
            if !matches!(how, How::Driver) && kind == PeerKind::Peer {
                report = Some(format!(
                    "the insider ({how:?}) got a peer connection to {target} as {claimed}"
                ));
            }
            // Whatever it got, it sends election messages with an absurd term on it.
            for _ in 0..7 {
                k += 1;
                let msg = clustd_core::harness::forged_message(k, forge.term);
                if let Ok(frame) = codec::encode(&msg) {
                    let _ = endpoint.send(&remote, frame, SendClass::Reliable);
                }
            }
        }
    }
    endpoint.shutdown().await;
    report
}
