//! Writes the seed corpora under `fuzz/corpus/<target>/` from real encoders: frames of
//! every message type, a recorded handshake, the README/DESIGN and demo configs, and
//! schedules picked for variety. Deterministic; every file is small (< 4 KiB).
//!
//! `cargo run -p clustd-fuzz --example make_corpus`

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use clustd_core::codec::encode;
use clustd_core::driver::{ActionResult, DriverRole, FromDriver, ToDriver};
use clustd_core::{Message, NodeId, Term};
use clustd_fuzz::election::{Input as ElectionInput, Step};
use clustd_transport::session::{Body, Hello, Initiator, Reply, Responder};
use clustd_transport::{PeerKind, RefuseReason, Secret};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn write(target: &str, name: &str, data: &[u8]) {
    assert!(data.len() < 4096, "{target}/{name} is {} bytes", data.len());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(name), data).expect("write");
}

/// The `arbitrary` tag bytes that select variant `k` of an enum with `n` variants.
fn tag(k: u64, n: u64) -> [u8; 4] {
    let t = (k << 32).div_ceil(n);
    u32::try_from(t).expect("fits").to_le_bytes()
}

fn tagged(k: u64, n: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = tag(k, n).to_vec();
    out.extend_from_slice(rest);
    out
}

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let t = Term(7);
    vec![
        ("prevote", encode(&Message::PreVote { term: t })),
        (
            "prevote_response",
            encode(&Message::PreVoteResponse {
                term: t,
                granted: false,
                retry_after_ms: Some(850),
            }),
        ),
        (
            "request_vote",
            encode(&Message::RequestVote {
                term: t,
                transfer: true,
            }),
        ),
        (
            "vote",
            encode(&Message::Vote {
                term: t,
                granted: true,
            }),
        ),
        (
            "heartbeat",
            encode(&Message::Heartbeat {
                term: t,
                round: 1234,
                successors: vec![id("node-2"), id("node-3")],
                hold_ms: 29_500,
            }),
        ),
        (
            "heartbeat_ack",
            encode(&Message::HeartbeatAck {
                term: t,
                round: 1234,
                priority: 10,
                eligible: true,
                preempt: false,
            }),
        ),
        (
            "timeout_now",
            encode(&Message::TimeoutNow {
                term: t,
                hold_ms: 30_000,
            }),
        ),
        (
            "role_master",
            encode(&ToDriver::Role {
                role: DriverRole::Master,
                term: t,
                node: id("node-1"),
                leader: Some(id("node-1")),
                lease_remaining_ms: 614,
                sent_at_ns: 86_400_000_000_000,
                stop_budget_ms: 50,
                reason: "elected".into(),
                seq: 3,
            }),
        ),
        (
            "role_backup",
            encode(&ToDriver::Role {
                role: DriverRole::Backup,
                term: Term(8),
                node: id("node-1"),
                leader: Some(id("node-2")),
                lease_remaining_ms: 0,
                sent_at_ns: 86_400_250_000_000,
                stop_budget_ms: 50,
                reason: "lease-lost".into(),
                seq: 4,
            }),
        ),
        (
            "lease_renewal",
            encode(&ToDriver::LeaseRenewal {
                term: t,
                lease_remaining_ms: 614,
                sent_at_ns: 86_400_100_000_000,
            }),
        ),
        (
            "stop_failed",
            encode(&ToDriver::StopFailed {
                driver: id("shell-1"),
                term: t,
                result: ActionResult::TimedOut,
            }),
        ),
        (
            "ack_failed",
            encode(&FromDriver::Ack {
                seq: 3,
                role: DriverRole::Master,
                result: ActionResult::Failed("exit status 1".into()),
            }),
        ),
        (
            "hello",
            encode(&Hello {
                id: id("node-2"),
                kind: PeerKind::Peer,
            }),
        ),
        (
            "reply_accepted",
            encode(&Reply::Accepted(Hello {
                id: id("node-1"),
                kind: PeerKind::Peer,
            })),
        ),
        (
            "reply_refused",
            encode(&Reply::Refused(RefuseReason::UnknownNode)),
        ),
    ]
    .into_iter()
    .map(|(n, f)| (n, f.expect("encodes")))
    .collect()
}

fn handshake() {
    // A recorded handshake (and the first frames after it).
    let secret = Secret::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).expect("secret");
    let hello = Hello {
        id: id("node-1"),
        kind: PeerKind::Peer,
    };
    let (init, msg1) = Initiator::start(
        clustd_transport::session::Credential::ClusterSecret(&secret),
        b"",
        [1; 32],
        &hello,
    )
    .expect("start");
    let accept = clustd_transport::session::Acceptor {
        secret: &secret,
        node_key: None,
        driver: None,
        driver_cluster_secret: false,
    };
    let (resp, _, _) = Responder::read_hello(&accept, b"", [2; 32], &msg1).expect("hello");
    let reply = Reply::Accepted(Hello {
        id: id("node-2"),
        kind: PeerKind::Peer,
    });
    let (msg2, _) = resp.reply(&reply).expect("reply");
    let (_, mut session, confirm) = init.finish(&msg2).expect("finish");
    let frame = encode(&Message::Heartbeat {
        term: Term(3),
        round: 9,
        successors: vec![id("node-2")],
        hold_ms: 0,
    })
    .expect("frame");
    let sealed = session.seal(Body::Frame, &frame).expect("seal");
    // Case variants: Msg1, Msg2, Confirm, Tampered, RawHello, RawReply, Session.
    write("handshake", "msg1", &tagged(0, 7, &msg1));
    write("handshake", "msg2", &tagged(1, 7, &msg2));
    write("handshake", "confirm", &tagged(2, 7, &confirm));
    write("handshake", "sealed_frame", &tagged(2, 7, &sealed));
    write(
        "handshake",
        "raw_hello",
        &tagged(4, 7, &encode(&hello).expect("hello")),
    );
    write(
        "handshake",
        "raw_reply",
        &tagged(5, 7, &encode(&reply).expect("reply")),
    );
    let mut rng = StdRng::seed_from_u64(1);
    for (k, name) in [(3, "tampered"), (6, "session")] {
        let mut kept = 0;
        while kept < 3 {
            let len = rng.random_range(16..400);
            let rest: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let data = tagged(k, 7, &rest);
            kept += 1;
            write("handshake", &format!("{name}_{kept}"), &data);
        }
    }
}

fn configs() {
    let design = r#"[node]
id = "node-1"
data_dir = "/var/lib/clustd"

[cluster]
transport = "quic"
listen = "0.0.0.0:7400"
secret_file = "secret"
peers = [ { id = "node-2", addr = "10.0.0.2:7400" }, { id = "node-3", addr = "10.0.0.3:7400" } ]

[election]
heartbeat_ms = 100
election_timeout_ms = [1000, 2000]
priority = 0

[admin]
listen = "127.0.0.1:7401"
"#;
    let inline = "[node]\nid = \"node-1\"\ndata_dir = \"data\"\n\n[cluster]\ntransport = \"quic\"\nlisten = \"127.0.0.1:7400\"\nsecret = \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\npeers = [{ id = \"node-2\", addr = \"127.0.0.1:7402\" }, { id = \"node-3\", addr = \"127.0.0.1:7403\" }]\n\n[election]\n\n";
    let demo = clustd::local::node_config(
        "node-2",
        ([127, 0, 0, 1], 7412).into(),
        &[
            clustd::local::LocalPeer {
                id: "node-1".to_string(),
                addr: ([127, 0, 0, 1], 7411).into(),
                key: clustd_transport::NodeKey::from_private([1; 32]).public(),
            },
            clustd::local::LocalPeer {
                id: "node-3".to_string(),
                addr: ([127, 0, 0, 1], 7413).into(),
                key: clustd_transport::NodeKey::from_private([3; 32]).public(),
            },
        ],
        clustd_transport::TransportKind::WebSocket,
        &clustd::local::LocalFiles {
            secret: Path::new("secret"),
            driver_secret: Path::new("driver-secret"),
            node_key: Path::new("node-2.key"),
        },
        Path::new("/tmp/clustd-demo/node-2"),
        "heartbeat_ms = 50\nelection_timeout_ms = [500, 1000]",
    );
    let tuned = r#"[node]
id = "witness-1"
data_dir = "state"
witness = true

[cluster]
transport = "websocket"
listen = "[::]:7400"
secret = "a-long-enough-cluster-secret-0123456789"
tls_cert = "cert.pem"
tls_key = "key.pem"
peers = [ { id = "db-1", addr = "192.168.1.10:7400" }, { id = "db-2", addr = "[fe80::1]:7400" } ]

[election]
heartbeat_ms = 20
election_timeout_ms = [200, 400]
lease_ms = 100
max_clock_drift = 0.02
stop_budget_ms = 50
driver_lease_margin_ms = 10
priority = 200
preempt = true
"#;
    let health = r#"[node]
id = "node-1"
data_dir = "/var/lib/clustd"

[cluster]
listen = "0.0.0.0:7400"
secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
peers = [ { id = "node-2", addr = "10.0.0.2:7400" }, { id = "node-3", addr = "10.0.0.3:7400" } ]

[[check]]
name = "web"
exec = "curl -fsS http://127.0.0.1:8080/health"

[[check]]
name = "api"
http = "http://127.0.0.1:8080/health"
interval_ms = 500
timeout_ms = 1000
fall = 1
rise = 3

[[check]]
name = "db"
tcp = "localhost:5432"

[health]
alone = "step-down"
min_master_ms = 30000
start_failure_ms = 60000
"#;
    let broken = "[node\nid = 1\n[cluster]\npeers = [ { id = \"node 2\" } ]\n[election]\nelection_timeout_ms = [2000, 1000]\nlease_ms = 900\n";
    for (name, text) in [
        ("design_example.toml", design.to_string()),
        ("inline_secret.toml", inline.to_string()),
        ("demo_node.toml", demo),
        ("witness_tuned.toml", tuned.to_string()),
        ("broken.toml", broken.to_string()),
        ("health_checks.toml", health.to_string()),
    ] {
        write("config_parse", name, text.as_bytes());
    }
}

/// Random inputs, kept when they parse into something long enough to be interesting.
fn picked<T: for<'a> Arbitrary<'a>>(
    target: &str,
    seed: u64,
    count: usize,
    keep: impl Fn(&T) -> bool,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kept = 0;
    while kept < count {
        let len = rng.random_range(64..1024);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let Ok(value) = T::arbitrary_take_rest(Unstructured::new(&data)) else {
            continue;
        };
        if keep(&value) {
            kept += 1;
            write(target, &format!("picked_{kept}"), &data);
        }
    }
}

fn main() {
    for (name, frame) in frames() {
        write("frame_decode", name, &frame);
    }
    handshake();
    configs();
    picked::<ElectionInput>("election", 2, 6, |input| match input {
        ElectionInput::Cluster(s) => {
            s.steps.len() >= 8
                && s.steps
                    .iter()
                    .filter(|s| matches!(s, Step::Fault(_)))
                    .count()
                    >= 2
        }
        ElectionInput::Lone(l) => l.steps.len() >= 8,
    });
    picked::<clustd_fuzz::driver_protocol::Input>("driver_protocol", 3, 6, |input| {
        input.ops.len() >= 6
            && input.ops.iter().any(|op| {
                matches!(
                    op,
                    clustd_fuzz::driver_protocol::Op::Role { master: true, .. }
                )
            })
    });
}
