//! Insiders against three real daemons on loopback, both transports: a holder of the
//! cluster secret and of one node's key cannot be another node, and a compromised node's
//! absurd term is dropped while the cluster keeps its master.

mod common;

use std::path::Path;
use std::time::Duration;

use clustd::local::DRIVER_SECRET_FILE;
use clustd::local::{LocalCluster, SECRET_FILE};
use clustd::runtime::Shutdown;
use clustd::runtime::{Command, DriverRecord};
use clustd_core::driver::{ActionResult, DriverRole, FromDriver, ToDriver};
use clustd_core::{Message, NodeId, Term, codec};
use clustd_transport::raw::RawConn;
use clustd_transport::session::{Credential, Hello};
use clustd_transport::{NodeKey, PeerKind, RefuseReason, Secret, TransportError, TransportKind};

const WAIT: Duration = Duration::from_secs(30);
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";

clustd_transport::both_transports!(
    a_connection_proving_one_nodes_key_cannot_be_another,
    a_compromised_nodes_absurd_term_is_dropped_and_the_master_stays,
    a_stop_acknowledged_under_a_taken_over_driver_id_ends_nothing
);

fn cluster_secret(dir: &Path) -> Secret {
    let bytes = std::fs::read(dir.join(SECRET_FILE)).expect("secret");
    Secret::from_bytes(bytes.trim_ascii().to_vec()).expect("long enough")
}

fn node_key(dir: &Path, name: &str) -> NodeKey {
    NodeKey::from_hex(&std::fs::read_to_string(dir.join(format!("{name}.key"))).expect("key"))
        .expect("a node key")
}

fn hello(name: &str) -> Hello {
    Hello {
        id: NodeId::new(name).expect("valid"),
        kind: PeerKind::Peer,
    }
}

/// The attack: with the secret (every driver host used to have it) and node-3's key,
/// claim node-1 at node-2, hoping to replace node-1's real connection.
async fn a_connection_proving_one_nodes_key_cannot_be_another(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, ELECTION).expect("cluster");
    let master = cluster
        .wait_for_master(None, WAIT)
        .await
        .expect("a master is elected");
    let term = cluster.nodes[cluster.index(&master).expect("known")]
        .handle
        .status()
        .term;
    let dir = cluster.dir.path().to_path_buf();
    let secret = cluster_secret(&dir);
    let n3 = node_key(&dir, "node-3");
    let n2_public = node_key(&dir, "node-2").public();
    let addr = cluster.settings[1].listen;
    for attempt in 0..20 {
        let mut raw = RawConn::connect(kind, addr).await.expect("link");
        let claim = if attempt % 2 == 0 {
            Credential::NodeKey {
                secret: &secret,
                local: &n3,
                remote: &n2_public,
            }
        } else {
            Credential::ClusterSecret(&secret)
        };
        let result = raw.handshake(claim, &hello("node-1")).await;
        assert!(
            matches!(
                result,
                Err(TransportError::Refused(RefuseReason::KeyRequired))
            ),
            "attempt {attempt}: {result:?}"
        );
    }
    // node-2 never lost node-1: same master, same term, everyone connected.
    let status = cluster.nodes[1].handle.status();
    assert!(
        status.peers.iter().all(|p| p.connected),
        "node-2 lost a peer: {status:?}"
    );
    assert_eq!(cluster.masters(), vec![master]);
    for node in &cluster.nodes {
        assert_eq!(node.handle.status().term, term, "a term moved");
    }
    cluster.shutdown().await;
}

/// A compromised node (its key stolen) sends every election message with term u64::MAX
/// and with ours + 2^32 + 1: the receivers drop them, count them, and keep their term;
/// the master stays master.
async fn a_compromised_nodes_absurd_term_is_dropped_and_the_master_stays(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, ELECTION).expect("cluster");
    let master = cluster
        .wait_for_master(None, WAIT)
        .await
        .expect("a master is elected");
    let m = cluster.index(&master).expect("known");
    let term = cluster.nodes[m].handle.status().term;
    // The stolen key is a follower's, whose daemon the attacker stopped (so no real
    // connection of that node competes); the targets are the other two, the master included.
    let stolen = (m + 1) % 3;
    cluster
        .stop(stolen, Shutdown::Immediate)
        .await
        .expect("clean stop");
    let dir = cluster.dir.path().to_path_buf();
    let secret = cluster_secret(&dir);
    let stolen_name = format!("node-{}", stolen + 1);
    let key = node_key(&dir, &stolen_name);
    for target in (0..3).filter(|t| *t != stolen) {
        let public = node_key(&dir, &format!("node-{}", target + 1)).public();
        let mut raw = RawConn::connect(kind, cluster.settings[target].listen)
            .await
            .expect("link");
        raw.handshake(
            Credential::NodeKey {
                secret: &secret,
                local: &key,
                remote: &public,
            },
            &hello(&stolen_name),
        )
        .await
        .expect("the stolen key is a real node's key");
        for (k, absurd) in [u64::MAX, term + (1 << 32) + 1].into_iter().enumerate() {
            for n in 0..7 {
                let msg: Message =
                    clustd_core::harness::forged_message(n + 7 * k as u64, Term(absurd));
                let frame = raw
                    .seal(&codec::encode(&msg).expect("encodes"))
                    .expect("seal");
                raw.send_raw(frame).await.expect("send");
            }
        }
        // Wait until the target counted them (it may also have dropped the connection).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = cluster.nodes[target].handle.metrics_text();
            let counted = text.lines().any(|l| {
                l.starts_with("clustd_rejected_messages_total")
                    && l.contains(&stolen_name)
                    && !l.ends_with(" 0")
            });
            if counted {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node-{} never counted the rejected messages:\n{text}",
                target + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Several election timeouts later: same master, same term on both.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.masters(), vec![master]);
    for target in (0..3).filter(|t| *t != stolen) {
        assert_eq!(
            cluster.nodes[target].handle.status().term,
            term,
            "a term moved"
        );
    }
    cluster.shutdown().await;
}

/// Reads frames until a `Role` notice with `role` arrives; returns its seq.
async fn role_notice(raw: &mut RawConn, role: DriverRole) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, raw.recv_frame())
            .await
            .unwrap_or_else(|_| panic!("no {role:?} notice"))
            .expect("frame");
        if let Ok(ToDriver::Role { role: got, seq, .. }) = codec::decode::<ToDriver>(&frame)
            && got == role
        {
            return seq;
        }
    }
}

/// The attack: anyone with the drivers' credential connects under a real driver's id
/// (replacing its connection), receives the "backup" of a step-down and acknowledges `Ok`
/// for a stop the real driver never made. Only the connection that was told "master" can
/// end the service interval: the impostor's word ends nothing, and the hand-over waits for
/// that driver's lease end plus the stop budget.
async fn a_stop_acknowledged_under_a_taken_over_driver_id_ends_nothing(kind: TransportKind) {
    // A long lease and stop budget, so "still running" holds for seconds, however busy the
    // machine is when the impostor's ack is read.
    let slow = "heartbeat_ms = 100\nelection_timeout_ms = [4000, 6000]\nstop_budget_ms = 1500";
    let mut cluster = LocalCluster::start(3, kind, slow).expect("cluster");
    let master = cluster
        .wait_for_master(None, WAIT)
        .await
        .expect("a master is elected");
    let m = cluster.index(&master).expect("known");
    let dir = cluster.dir.path().to_path_buf();
    let bytes = std::fs::read(dir.join(DRIVER_SECRET_FILE)).expect("driver secret");
    let credential = Secret::from_bytes(bytes.trim_ascii().to_vec()).expect("long enough");
    let as_web = Hello {
        id: NodeId::new("web-1").expect("valid"),
        kind: PeerKind::Driver,
    };
    let addr = cluster.settings[m].listen;
    // The real driver: told master.
    let mut real = RawConn::connect(kind, addr).await.expect("link");
    real.handshake(Credential::Driver(&credential), &as_web)
        .await
        .expect("driver");
    let seq = role_notice(&mut real, DriverRole::Master).await;
    let ack = |seq, role| {
        codec::encode(&FromDriver::Ack {
            seq,
            role,
            result: ActionResult::Ok,
        })
        .expect("encodes")
    };
    let sealed = real.seal(&ack(seq, DriverRole::Master)).expect("seal");
    real.send_raw(sealed).await.expect("send");
    let mut records = cluster.nodes[m].handle.driver_records();
    // The impostor takes the id, the master steps down, the impostor "confirms" the stop.
    let mut impostor = RawConn::connect(kind, addr).await.expect("link");
    impostor
        .handshake(Credential::Driver(&credential), &as_web)
        .await
        .expect("same credential");
    role_notice(&mut impostor, DriverRole::Master).await;
    assert!(cluster.nodes[m].handle.command(Command::StepDown).await);
    let stepped_down = tokio::time::Instant::now();
    // The impostor acknowledges every "backup" it is sent (the daemon may send a newer one
    // as the leader changes) until the daemon has read an ack of the latest.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Ok(frame)) =
            tokio::time::timeout(Duration::from_millis(20), impostor.recv_frame()).await
            && let Ok(ToDriver::Role {
                role: DriverRole::Backup,
                seq,
                ..
            }) = codec::decode::<ToDriver>(&frame)
        {
            let sealed = impostor.seal(&ack(seq, DriverRole::Backup)).expect("seal");
            impostor.send_raw(sealed).await.expect("send");
        }
        let status = cluster.nodes[m].handle.status();
        let web = status.drivers.iter().find(|d| d.id == "web-1");
        if let Some(web) = web
            && web.acknowledged
            && web.last_role.as_deref() == Some("backup")
        {
            // Well within the lease (over 2 s) the daemon must still count it as running.
            if stepped_down.elapsed() < Duration::from_millis(1500) {
                assert!(web.may_run, "the impostor's Ok ended the interval: {web:?}");
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ack never read: {status:?}"
        );
    }
    while let Ok(record) = records.try_recv() {
        assert!(
            !matches!(record, DriverRecord::StopConfirmed { .. }),
            "the impostor's word was recorded as a stop: {record:?}"
        );
    }
    // The cluster still fails over (after the lease end plus the stop budget).
    cluster
        .wait_for_master(Some(&master), WAIT)
        .await
        .expect("a new master after the lease end plus the stop budget");
    cluster.shutdown().await;
}
