//! Benchmarks of the election core: messages handled per second, and the cost of one full
//! heartbeat round (leader tick → N-1 heartbeats → N-1 acks → lease renewed) for 3, 5 and
//! 7 nodes. Run: `cargo bench -p clustd-core`.

use std::hint::black_box;
use std::time::Duration;

use clustd_core::{Config, Instant, Message, Node, NodeId, PersistentState, Role};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn ids(n: usize) -> Vec<NodeId> {
    (1..=n)
        .map(|i| NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// A cluster of `n` nodes where `n1` has just been elected; returns the nodes and the time.
fn elected(n: usize) -> (Vec<Node>, Instant) {
    let ids = ids(n);
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|id| {
            Node::new(
                Config::new(id.clone(), ids.clone()),
                PersistentState::default(),
                Instant::ZERO,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut now = Instant::from_millis(5000);
    nodes[0].handle_timeout(now);
    // Deliver everything until quiet, with zero network delay.
    for _ in 0..10 {
        exchange(&mut nodes, now);
    }
    assert_eq!(nodes[0].role(), Role::Leader);
    now = now + Duration::from_millis(1);
    (nodes, now)
}

/// Delivers every pending message once; returns how many were delivered.
fn exchange(nodes: &mut [Node], now: Instant) -> usize {
    let mut mail = Vec::new();
    for node in nodes.iter_mut() {
        while node.poll_persist().is_some() {}
        while let Some((to, msg)) = node.poll_transmit() {
            mail.push((node.id().clone(), to, msg));
        }
        while node.poll_event().is_some() {}
    }
    let count = mail.len();
    for (from, to, msg) in mail {
        if let Some(node) = nodes.iter_mut().find(|n| *n.id() == to) {
            node.handle_message(now, &from, msg);
        }
    }
    count
}

fn heartbeat_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("heartbeat_round");
    for n in [3, 5, 7] {
        let (mut nodes, mut now) = elected(n);
        group.throughput(Throughput::Elements(2 * (n as u64 - 1)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                now = now + Duration::from_millis(100);
                nodes[0].handle_timeout(now);
                let sent = exchange(&mut nodes, now); // heartbeats
                let acked = exchange(&mut nodes, now); // acks
                black_box((sent, acked));
            });
        });
    }
    group.finish();
}

fn handle_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("handle_message");
    group.throughput(Throughput::Elements(1));
    let (mut nodes, now) = elected(5);
    let from = nodes[0].id().clone();
    let mut round = 1_000;
    let follower_term = nodes[1].term();
    group.bench_function("follower_heartbeat", |b| {
        b.iter(|| {
            round += 1;
            nodes[1].handle_message(
                now,
                &from,
                Message::Heartbeat {
                    term: follower_term,
                    round,
                    successors: vec![],
                    hold_ms: 0,
                },
            );
            black_box(nodes[1].poll_transmit());
        });
    });
    let follower = nodes[1].id().clone();
    let term = nodes[0].term();
    group.bench_function("leader_ack", |b| {
        b.iter(|| {
            nodes[0].handle_message(
                now,
                &follower,
                Message::HeartbeatAck {
                    term,
                    round: 1,
                    priority: 0,
                    eligible: true,
                    preempt: false,
                },
            );
            black_box(nodes[0].poll_event());
        });
    });
    group.finish();
}

criterion_group!(benches, heartbeat_round, handle_message);
criterion_main!(benches);
