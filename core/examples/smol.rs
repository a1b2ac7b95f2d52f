//! Embedding the core in a non-tokio async runtime: `smol`, one task per member, UDP
//! sockets, authenticated senders.
//!
//! Run: `cargo run -p clustd-core --example smol`
//!
//! The same members as the `udp` example (`common/mod.rs`), driven by tasks that wait for a
//! datagram or the next timer, whichever comes first. A watcher task checks every
//! millisecond that at most one lease gate is open. The example elects a master, cancels
//! its task (a crash), times the failover, restarts the member from its state file and
//! waits for it to rejoin. It exits non-zero if two gates are ever open at once, or if
//! anything it waits for does not happen within 10 s.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use clustd_core::{NodeId, StdClock};
use common::{Member, ScratchDir, open_gates};
use smol::net::UdpSocket;
use smol::{LocalExecutor, Task, Timer};

type Shared = Rc<RefCell<Member>>;

/// One member's loop: wait, feed the input in, send the outputs.
async fn drive(
    member: Shared,
    socket: UdpSocket,
    addresses: Rc<BTreeMap<NodeId, SocketAddr>>,
    clock: StdClock,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let wake = clock.to_std(member.borrow().next_wakeup());
        let received = smol::future::or(async { Some(socket.recv(&mut buf).await) }, async {
            Timer::at(wake).await;
            None
        })
        .await;
        let now = clock.now();
        // No borrow lives across an await: the watcher reads the member in between.
        let out = {
            let mut m = member.borrow_mut();
            if let Some(Ok(len)) = received {
                m.on_datagram(&buf[..len], now);
            }
            m.on_timers(now);
            m.flush()
        };
        match out {
            Ok(out) => {
                for (to, bytes) in out {
                    let _ = socket.send_to(&bytes, addresses[&to]).await;
                }
            }
            Err(e) => {
                // Nothing was sent: stop driving this member.
                eprintln!(
                    "  {}: state write failed, stopping it: {e}",
                    member.borrow().me()
                );
                return;
            }
        }
    }
}

/// The members whose gate is open now (exits the process if two are).
fn masters(members: &BTreeMap<NodeId, Shared>, clock: &StdClock) -> Vec<NodeId> {
    let guards: Vec<_> = members.values().map(|m| m.borrow()).collect();
    open_gates(guards.iter().map(|m| &m.node), clock.now())
}

/// Polls `done` every millisecond; exits the process after 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(10) {
            eprintln!("FAILED: no {what} within 10 s");
            std::process::exit(1);
        }
        Timer::after(Duration::from_millis(1)).await;
    }
}

async fn bind(address: SocketAddr) -> UdpSocket {
    UdpSocket::bind(address)
        .await
        .unwrap_or_else(|e| panic!("bind {address}: {e}"))
}

fn main() {
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(run(&ex)));
}

async fn run(ex: &LocalExecutor<'_>) {
    let ids: Vec<NodeId> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|s| NodeId::new(s).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let dir = ScratchDir::new("clustd-smol-example");
    let clock = StdClock::new();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut sockets = BTreeMap::new();
    for id in &ids {
        sockets.insert(id.clone(), bind(loopback).await);
    }
    let addresses: Rc<BTreeMap<NodeId, SocketAddr>> = Rc::new(
        sockets
            .iter()
            .map(|(id, s)| (id.clone(), s.local_addr().unwrap_or_else(|e| panic!("{e}"))))
            .collect(),
    );
    let start = |id: &NodeId| -> Shared {
        Rc::new(RefCell::new(
            Member::start(id, &ids, &dir.0, clock.now()).unwrap_or_else(|e| panic!("{e}")),
        ))
    };
    let mut members: BTreeMap<NodeId, Shared> =
        ids.iter().map(|id| (id.clone(), start(id))).collect();
    let mut tasks: BTreeMap<NodeId, Task<()>> = BTreeMap::new();
    for (id, socket) in sockets {
        let task = ex.spawn(drive(
            members[&id].clone(),
            socket,
            addresses.clone(),
            clock,
        ));
        tasks.insert(id, task);
    }
    // The watcher: never two lease gates open at one instant, all along the run.
    let watched = Rc::new(RefCell::new(members.clone()));
    let checks = Rc::new(RefCell::new(0u64));
    let watcher = {
        let (watched, checks) = (watched.clone(), checks.clone());
        ex.spawn(async move {
            loop {
                masters(&watched.borrow(), &clock);
                *checks.borrow_mut() += 1;
                Timer::after(Duration::from_millis(1)).await;
            }
        })
    };

    println!("--- three smol tasks on 127.0.0.1 (fast LAN profile: election timeout 100-200 ms)");
    until("master", || masters(&members, &clock).len() == 1).await;
    until("sessions", || {
        members
            .values()
            .all(|m| m.borrow().net.established().len() == 2)
    })
    .await;
    let first = masters(&members, &clock)[0].clone();

    println!("--- crashing {first} (its task is cancelled with its socket: no goodbye)");
    let crashed_at = std::time::Instant::now();
    if let Some(task) = tasks.remove(&first) {
        drop(task);
    }
    until("new master", || {
        masters(&members, &clock).iter().any(|m| *m != first)
    })
    .await;
    let second = masters(&members, &clock)[0].clone();
    println!(
        "--- failover {first} -> {second} in {} ms",
        crashed_at.elapsed().as_millis()
    );

    println!("--- restarting {first} from its state file");
    let member = start(&first);
    println!(
        "  {first} resumes at term {} (as saved)",
        member.borrow().node.term()
    );
    members.insert(first.clone(), member.clone());
    watched.borrow_mut().insert(first.clone(), member.clone());
    let socket = bind(addresses[&first]).await;
    tasks.insert(
        first.clone(),
        ex.spawn(drive(member.clone(), socket, addresses.clone(), clock)),
    );
    // Rejoined: it follows the master, and the master hears its acknowledgements (followers
    // talk to the leader only, so that is all there is to hear).
    let acks_before = members[&second]
        .borrow()
        .heard
        .get(&first)
        .copied()
        .unwrap_or(0);
    until("rejoin", || {
        let m = member.borrow();
        m.node.leader() == Some(&second)
            && m.heard.contains_key(&second)
            && members[&second]
                .borrow()
                .heard
                .get(&first)
                .copied()
                .unwrap_or(0)
                > acks_before
    })
    .await;
    Timer::after(Duration::from_millis(300)).await;
    drop(watcher);
    println!(
        "--- {} is master; never two lease gates open at once ({} checks)",
        masters(&members, &clock)
            .first()
            .map_or("nobody", |m| m.as_str()),
        checks.borrow()
    );
}
