//! Embedding the core without any async runtime: three nodes, each on a plain std thread,
//! talking over std channels, with the thread's own clock fed into the core.
//!
//! Run: `cargo run -p clustd-core --example embed`
//! It prints the election, stops the master's thread, and prints the failover and its time.
//!
//! "Who may serve" is the lease gate ([`Node::may_serve`]), published as the gate's end on
//! the std clock: a node whose thread stopped still *says* master (`is_master()`: as of its
//! last input), but its gate shuts at its lease end, before any other node's opens. The
//! main thread checks that no two gates are ever open at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use clustd_core::{Config, Event, Message, Node, NodeId, PersistentState, StdClock};

type Inbox = Sender<(NodeId, Message)>;

/// Shared view for the main thread: each node's open lease gate, until when.
#[derive(Default)]
struct View {
    gates: BTreeMap<NodeId, std::time::Instant>,
}

/// The nodes whose gate is open now; panics (with the view unlocked, so that the other
/// threads go on) if there are two.
fn open_gates(view: &Mutex<View>) -> Vec<NodeId> {
    let open: Vec<NodeId> = {
        let v = view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        v.gates
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, _)| id.clone())
            .collect()
    };
    assert!(open.len() <= 1, "two lease gates open at once: {open:?}");
    open
}

fn run_node(
    mut node: Node,
    inbox: Receiver<(NodeId, Message)>,
    peers: BTreeMap<NodeId, Inbox>,
    stop: Arc<AtomicBool>,
    view: Arc<Mutex<View>>,
    clock: StdClock,
) {
    // The caller owns the clock: here, a monotonic std clock relative to a shared origin.
    let now = || clock.now();
    let origin = clock.to_std(clustd_core::Instant::ZERO);
    let mut disk = PersistentState::default(); // a real program writes this to a file + fsync
    while !stop.load(Ordering::Relaxed) {
        let wait = node.poll_timeout().saturating_duration_since(now());
        match inbox.recv_timeout(wait.min(Duration::from_millis(50))) {
            Ok((from, msg)) => {
                node.handle_message(now(), &from, msg);
                // Busy inboxes must not starve the timers.
                if now() >= node.poll_timeout() {
                    node.handle_timeout(now());
                }
            }
            Err(RecvTimeoutError::Timeout) => node.handle_timeout(now()),
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Outputs, in order: persist, send, events.
        while let Some(state) = node.poll_persist() {
            disk = state;
        }
        while let Some((to, msg)) = node.poll_transmit() {
            if let Some(peer) = peers.get(&to) {
                let _ = peer.send((node.id().clone(), msg)); // a stopped peer is just unreachable
            }
        }
        while let Some(event) = node.poll_event() {
            let t = origin.elapsed().as_secs_f64();
            match &event {
                Event::BecameMaster { term, .. } => {
                    println!("{t:7.3}s  {} is MASTER (term {term})", node.id())
                }
                Event::BecameBackup { term, reason, .. } => {
                    println!(
                        "{t:7.3}s  {} is backup (term {term}, {})",
                        node.id(),
                        reason.as_str()
                    )
                }
                Event::ElectionStarted { term } => {
                    println!("{t:7.3}s  {} campaigns in term {term}", node.id())
                }
                _ => {}
            }
        }
        // The gate, read at the moment of publishing it: open until the lease end.
        let t = now();
        if let Ok(mut v) = view.lock() {
            match node.lease_until() {
                Some(until) if node.may_serve(t) => {
                    v.gates.insert(node.id().clone(), clock.to_std(until));
                }
                _ => {
                    v.gates.remove(node.id());
                }
            }
        }
    }
    println!(
        "         {} stopped (disk: term {}, voted for {:?})",
        node.id(),
        disk.term,
        disk.voted_for
    );
}

/// Waits for a node other than `except` whose gate is open; panics if two gates are ever
/// open at the same instant.
fn wait_for_master(view: &Mutex<View>, except: Option<&NodeId>) -> NodeId {
    loop {
        if let Some(id) = open_gates(view).into_iter().find(|id| Some(id) != except) {
            return id;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    let ids: Vec<NodeId> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|s| NodeId::new(s).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let clock = StdClock::new();
    let origin = clock.to_std(clustd_core::Instant::ZERO);
    let view = Arc::new(Mutex::new(View::default()));
    let channels: Vec<_> = ids.iter().map(|_| mpsc::channel()).collect();
    let senders: BTreeMap<NodeId, Inbox> = ids
        .iter()
        .cloned()
        .zip(channels.iter().map(|(tx, _)| tx.clone()))
        .collect();
    let mut stops = BTreeMap::new();
    let mut handles = Vec::new();
    for ((i, id), (_, rx)) in ids.iter().enumerate().zip(channels) {
        let mut config = Config::new(id.clone(), ids.clone());
        config.set_timings(
            Duration::from_millis(50),
            Duration::from_millis(500),
            Duration::from_millis(1000),
        );
        config.rng_seed = i as u64 + 1;
        let node = Node::new(config, PersistentState::default(), clock.now())
            .unwrap_or_else(|e| panic!("config: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        stops.insert(id.clone(), stop.clone());
        let peers = senders.clone();
        let view = view.clone();
        handles.push(thread::spawn(move || {
            run_node(node, rx, peers, stop, view, clock)
        }));
    }
    drop(senders);
    // The check, all along the run: never two lease gates open at one instant.
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (view, watching) = (view.clone(), watching.clone());
        thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                open_gates(&view);
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let first = wait_for_master(&view, None);
    thread::sleep(Duration::from_millis(500));
    println!("--- stopping {first}'s thread (like a crash: no goodbye)");
    let killed_at = origin.elapsed();
    stops[&first].store(true, Ordering::Relaxed);
    let second = wait_for_master(&view, Some(&first));
    let took = origin.elapsed() - killed_at;
    println!(
        "--- failover: {first} -> {second} in {} ms (election timeout min 500 ms)",
        took.as_millis()
    );
    for stop in stops.values() {
        stop.store(true, Ordering::Relaxed);
    }
    for handle in handles {
        let _ = handle.join();
    }
    watching.store(false, Ordering::Relaxed);
    if monitor.join().is_err() {
        eprintln!("FAILED: two lease gates were open at once");
        std::process::exit(1);
    }
    println!("--- never two lease gates open at once");
}
