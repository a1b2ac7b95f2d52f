//! Embedding the core on plain std UDP sockets, in one thread, with authenticated senders.
//!
//! Run: `cargo run -p clustd-core --example udp`
//!
//! Three members on 127.0.0.1, each with its own socket, state file and
//! `clustd_session::datagram` endpoint (Noise sessions under a cluster secret; the envelope
//! names the sender and the session proves it). The example elects a master, lets an
//! attacker replay and forge datagrams, crashes the master, times the failover, restarts
//! the crashed member from its state file, and checks on every turn of the loop that at
//! most one lease gate is open. It exits non-zero if two ever are, or if anything it waits
//! for does not happen within 10 s.
//!
//! The runtime-independent part (what to do with a datagram, a timer, the outputs) is in
//! `common/mod.rs`; this file only moves bytes.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use clustd_core::{NodeId, StdClock};
use clustd_session::datagram::{Envelope, Kind, Refused};
use common::{Member, ScratchDir, open_gates};

/// A member and its socket; no socket once it crashed.
struct Host {
    member: Member,
    socket: Option<UdpSocket>,
}

struct Cluster {
    hosts: Vec<Host>,
    addresses: BTreeMap<NodeId, SocketAddr>,
    clock: StdClock,
    /// The last sealed datagram each member sent each peer, for the attacker to replay.
    last_sealed: BTreeMap<(NodeId, NodeId), Vec<u8>>,
    gate_checks: u64,
}

impl Cluster {
    /// One turn: every live member reads its socket, fires its timers and sends its
    /// outputs; then the gates are checked at one instant.
    fn turn(&mut self) {
        let mut buf = vec![0u8; 65_536];
        for host in &mut self.hosts {
            let Some(socket) = &host.socket else { continue };
            let now = self.clock.now();
            while let Ok((len, _from_address)) = socket.recv_from(&mut buf) {
                // The source address proves nothing; the envelope and its session do.
                host.member.on_datagram(&buf[..len], now);
            }
            host.member.on_timers(now);
            match host.member.flush() {
                Ok(out) => {
                    for (to, bytes) in out {
                        let sealed = Envelope::parse(&bytes)
                            .is_ok_and(|(envelope, _)| envelope.kind == Kind::Sealed);
                        if sealed {
                            let key = (host.member.me().clone(), to.clone());
                            self.last_sealed.insert(key, bytes.clone());
                        }
                        // A crashed peer is just unreachable.
                        let _ = socket.send_to(&bytes, self.addresses[&to]);
                    }
                }
                Err(e) => {
                    // Nothing was sent: stop driving this member.
                    eprintln!(
                        "  {}: state write failed, stopping it: {e}",
                        host.member.me()
                    );
                    host.socket = None;
                }
            }
        }
        open_gates(self.hosts.iter().map(|h| &h.member.node), self.clock.now());
        self.gate_checks += 1;
    }

    /// Turns until `done` holds; exits the process after 10 s.
    ///
    /// Three members share this one thread, so it polls their sockets every half
    /// millisecond. A program with one member and one socket blocks instead:
    /// `socket.set_read_timeout(Some(member.next_wakeup() - now))`, then `recv_from`.
    fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let start = std::time::Instant::now();
        while !done(self) {
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("FAILED: no {what} within 10 s");
                std::process::exit(1);
            }
            self.turn();
            thread::sleep(Duration::from_micros(500));
        }
    }

    fn masters(&self) -> Vec<NodeId> {
        open_gates(self.hosts.iter().map(|h| &h.member.node), self.clock.now())
    }

    fn host(&mut self, id: &NodeId) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.member.me() == id)
            .unwrap_or_else(|| panic!("no member {id}"))
    }
}

fn bind(address: &str) -> UdpSocket {
    let socket = UdpSocket::bind(address).unwrap_or_else(|e| panic!("bind {address}: {e}"));
    socket
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("nonblocking: {e}"));
    socket
}

fn main() {
    let ids: Vec<NodeId> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|s| NodeId::new(s).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let dir = ScratchDir::new("clustd-udp-example");
    let clock = StdClock::new();
    let sockets: Vec<UdpSocket> = ids.iter().map(|_| bind("127.0.0.1:0")).collect();
    let addresses = ids
        .iter()
        .cloned()
        .zip(
            sockets
                .iter()
                .map(|s| s.local_addr().unwrap_or_else(|e| panic!("{e}"))),
        )
        .collect();
    let hosts = ids
        .iter()
        .zip(sockets)
        .map(|(id, socket)| Host {
            member: Member::start(id, &ids, &dir.0, clock.now()).unwrap_or_else(|e| panic!("{e}")),
            socket: Some(socket),
        })
        .collect();
    let mut cluster = Cluster {
        hosts,
        addresses,
        clock,
        last_sealed: BTreeMap::new(),
        gate_checks: 0,
    };

    println!("--- three members on 127.0.0.1 (fast LAN profile: election timeout 100-200 ms)");
    cluster.until("master", |c| c.masters().len() == 1);
    cluster.until("sessions", |c| {
        c.hosts
            .iter()
            .all(|h| h.member.net.established().len() == 2)
    });
    let first = cluster.masters()[0].clone();

    // An attacker on the network replays a master's datagram, rewrites its sender, and
    // sends garbage: all refused, and nothing changes.
    let victim = ids
        .iter()
        .find(|id| **id != first)
        .cloned()
        .unwrap_or_else(|| unreachable!());
    cluster.until("datagram to replay", |c| {
        c.last_sealed.contains_key(&(first.clone(), victim.clone()))
    });
    let recorded = cluster.last_sealed[&(first.clone(), victim.clone())].clone();
    let other = ids
        .iter()
        .find(|id| **id != first && **id != victim)
        .unwrap_or_else(|| unreachable!());
    // The same sealed body under an envelope that claims `other` sent it.
    let (mut envelope, body) = Envelope::parse(&recorded).unwrap_or_else(|e| panic!("{e}"));
    envelope.from = other.clone();
    let forged = envelope.write(body);
    let attacker = bind("127.0.0.1:0");
    let term = cluster.host(&first).member.node.term();
    let refused_before = cluster.host(&victim).member.refused;
    for bytes in [&recorded[..], &forged[..], b"\xc1\x03garbage"] {
        let _ = attacker.send_to(bytes, cluster.addresses[&victim]);
    }
    let target = victim.clone();
    cluster.until("refusals", move |c| {
        let host = c.hosts.iter().find(|h| h.member.me() == &target);
        host.is_some_and(|h| h.member.refused >= refused_before + 3)
    });
    let reasons: Vec<Refused> = cluster
        .host(&victim)
        .member
        .last_refusals
        .iter()
        .cloned()
        .collect();
    for refused in &reasons {
        println!("  {victim} refused: {refused}");
    }
    let replay = reasons
        .iter()
        .any(|r| matches!(r, Refused::Crypto { from, .. } if *from == first));
    let forgery = reasons.iter().any(|r| {
        matches!(r, Refused::NoSession { from, .. } | Refused::Crypto { from, .. } if from == other)
    });
    let garbage = reasons.iter().any(|r| matches!(r, Refused::Malformed(_)));
    if !(replay && forgery && garbage) {
        eprintln!("FAILED: the attacker's datagrams were not all refused: {reasons:?}");
        std::process::exit(1);
    }
    // Nothing changed: the same master in the same term, still heard by the victim.
    let heard = cluster
        .host(&victim)
        .member
        .heard
        .get(&first)
        .copied()
        .unwrap_or(0);
    let (master, victim_id) = (first.clone(), victim.clone());
    cluster.until("heartbeats after the attack", move |c| {
        c.hosts.iter().any(|h| {
            h.member.me() == &victim_id && h.member.heard.get(&master).copied().unwrap_or(0) > heard
        })
    });
    assert_eq!(
        cluster.masters(),
        vec![first.clone()],
        "the attack moved mastership"
    );
    assert_eq!(
        cluster.host(&first).member.node.term(),
        term,
        "the attack changed the term"
    );

    println!("--- crashing {first} (its socket closes, its loop stops: no goodbye)");
    let crashed_at = std::time::Instant::now();
    cluster.host(&first).socket = None;
    cluster.until("new master", |c| c.masters().iter().any(|m| *m != first));
    let second = cluster.masters()[0].clone();
    println!(
        "--- failover {first} -> {second} in {} ms",
        crashed_at.elapsed().as_millis()
    );

    println!("--- restarting {first} from its state file");
    let address = cluster.addresses[&first];
    let member = Member::start(&first, &ids, &dir.0, cluster.clock.now())
        .unwrap_or_else(|e| panic!("restart: {e}"));
    println!("  {first} resumes at term {}", member.node.term());
    *cluster.host(&first) = Host {
        member,
        socket: Some(bind(&address.to_string())),
    };
    // Rejoined: it follows the master, and the master hears its acknowledgements (followers
    // talk to the leader only, so that is all there is to hear).
    let master = cluster.masters()[0].clone();
    let acks_before = cluster
        .host(&master)
        .member
        .heard
        .get(&first)
        .copied()
        .unwrap_or(0);
    let rejoined = first.clone();
    cluster.until("rejoin", move |c| {
        let host = |id: &NodeId| c.hosts.iter().find(|h| h.member.me() == id);
        host(&rejoined).is_some_and(|h| {
            h.member.node.leader() == Some(&master) && h.member.heard.contains_key(&master)
        }) && host(&master)
            .is_some_and(|h| h.member.heard.get(&rejoined).copied().unwrap_or(0) > acks_before)
    });
    // Let the rejoined cluster run a little, still checking every turn.
    let until = std::time::Instant::now() + Duration::from_millis(300);
    cluster.until("quiet run", move |_| std::time::Instant::now() >= until);
    println!(
        "--- {} is master; never two lease gates open at once ({} checks)",
        cluster.masters().first().map_or("nobody", |m| m.as_str()),
        cluster.gate_checks
    );
}
