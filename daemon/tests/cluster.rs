//! Three real daemons in this process on loopback, for both transports: election, failover,
//! rejoin without disruption, step-down, maintenance, restart from disk.
//!
//! Timings are the defaults (heartbeat 100 ms, election timeout 1000–2000 ms) and every wait
//! is for a condition with a generous bound, so a busy machine slows the tests, not breaks them.

mod common;

use std::time::Duration;

use clustd::local::LocalCluster;
use clustd::runtime::{Command, Shutdown};
use clustd::{FileStore, StateStore};
use clustd_transport::TransportKind;

const WAIT: Duration = Duration::from_secs(30);
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";

clustd_transport::both_transports!(
    failover_and_rejoin_without_disruption,
    step_down_and_maintenance_move_mastership,
    restart_keeps_term_and_vote
);

async fn failover_and_rejoin_without_disruption(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, ELECTION).expect("cluster");
    let first = cluster
        .wait_for_master(None, WAIT)
        .await
        .expect("a master is elected");
    let i = cluster.index(&first).expect("known id");
    cluster
        .stop(i, Shutdown::Immediate)
        .await
        .expect("clean stop");
    let second = cluster
        .wait_for_master(Some(&first), WAIT)
        .await
        .expect("failover to another node");
    assert_ne!(first, second);

    let j = cluster.index(&second).expect("known id");
    let term = cluster.nodes[j].handle.status().term;
    cluster.restart(i).await.expect("restarts");
    // The old master rejoins: connected, backup, following the new master...
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = cluster.nodes[i].handle.status();
        if s.leader.as_deref() == Some(second.as_str()) && s.role == "backup" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old master never followed {second}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...without disrupting it: same master, same term, for several election timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.masters(), vec![second.clone()]);
    assert_eq!(
        cluster.nodes[j].handle.status().term,
        term,
        "pre-vote kept the term"
    );
    cluster.shutdown().await;
}

async fn step_down_and_maintenance_move_mastership(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, ELECTION).expect("cluster");
    let first = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let i = cluster.index(&first).expect("known id");
    assert!(cluster.nodes[i].handle.command(Command::StepDown).await);
    let second = cluster
        .wait_for_master(Some(&first), WAIT)
        .await
        .expect("hand-over after step-down");

    let j = cluster.index(&second).expect("known id");
    assert!(
        cluster.nodes[j]
            .handle
            .command(Command::Maintenance(true))
            .await
    );
    let third = cluster
        .wait_for_master(Some(&second), WAIT)
        .await
        .expect("hand-over on maintenance");
    assert!(cluster.nodes[j].handle.status().maintenance);
    // Kill the third: the maintenance node must not take over; the remaining one does.
    let k = cluster.index(&third).expect("known id");
    cluster.stop(k, Shutdown::Immediate).await.expect("stop");
    let fourth = cluster
        .wait_for_master(Some(&third), WAIT)
        .await
        .expect("the non-maintenance node takes over");
    assert_ne!(fourth, second, "a node in maintenance never becomes master");
    cluster.shutdown().await;
}

async fn restart_keeps_term_and_vote(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, ELECTION).expect("cluster");
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let terms: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.handle.status().term)
        .collect();
    for i in 0..3 {
        cluster.stop(i, Shutdown::Immediate).await.expect("stop");
    }
    for (i, settings) in cluster.settings.iter().enumerate() {
        let disk = FileStore::new(&settings.data_dir)
            .load()
            .expect("state readable");
        assert!(
            disk.term.0 >= terms[i],
            "{}: disk term {} < {}",
            settings.id,
            disk.term,
            terms[i]
        );
        if settings.id == master {
            assert_eq!(
                disk.voted_for.as_ref(),
                Some(&master),
                "the master voted for itself"
            );
        }
    }
    for (i, term) in terms.iter().enumerate() {
        cluster.restart(i).await.expect("restarts");
        // Once started, a node runs in the term it had on disk, never less.
        assert!(cluster.nodes[i].handle.status().term >= *term);
    }
    let again = cluster
        .wait_for_master(None, WAIT)
        .await
        .expect("a master after a full restart");
    let j = cluster.index(&again).expect("known id");
    assert!(cluster.nodes[j].handle.status().term > *terms.iter().max().expect("3 terms"));
    cluster.shutdown().await;
}

#[tokio::test]
async fn corrupted_state_file_stops_the_node_with_a_clear_error() {
    let (_dir, settings) =
        LocalCluster::configure(3, TransportKind::WebSocket, ELECTION).expect("config");
    let store = FileStore::new(&settings[0].data_dir);
    std::fs::create_dir_all(&settings[0].data_dir).expect("mkdir");
    std::fs::write(store.path(), b"\x01garbage that is not a state file").expect("write");
    let mut node = clustd::local::LocalNode::start(&settings[0]);
    let result = tokio::time::timeout(WAIT, node.join())
        .await
        .expect("the node stops by itself");
    let err = result
        .expect("task ran")
        .expect_err("corrupt state is fatal")
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        err.contains(&store.path().display().to_string()),
        "names the file: {err}"
    );
}

/// `GET /cluster` from every node: each one hears every other (through the cluster, not
/// their admin APIs) and names the one master; after a failover, the dead one is marked
/// not heard and the new master is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_the_whole_cluster_through_it() {
    let mut cluster = LocalCluster::start(3, TransportKind::WebSocket, ELECTION).expect("cluster");
    let first = cluster
        .wait_for_master(None, WAIT)
        .await
        .expect("a master is elected");
    let views_agree = |cluster: &LocalCluster, master: &str, up: &[usize]| {
        up.iter().all(|&i| {
            let handle = &cluster.nodes[i].handle;
            let view = handle.cluster();
            view.master.as_deref() == Some(master)
                && view.nodes.len() == 3
                && view.nodes.iter().filter(|n| n.heard).count() == up.len()
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for n in &cluster.nodes {
            n.handle.command(Command::Refresh).await;
        }
        if views_agree(&cluster, first.as_str(), &[0, 1, 2]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "views: {:#?}",
            cluster
                .nodes
                .iter()
                .map(|n| n.handle.cluster())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let i = cluster.index(&first).expect("known id");
    cluster
        .stop(i, Shutdown::Immediate)
        .await
        .expect("clean stop");
    let second = cluster
        .wait_for_master(Some(&first), WAIT)
        .await
        .expect("failover");
    let up: Vec<usize> = (0..3).filter(|&j| j != i).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for &j in &up {
            cluster.nodes[j].handle.command(Command::Refresh).await;
        }
        if views_agree(&cluster, second.as_str(), &up) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "views: {:#?}",
            up.iter()
                .map(|&j| cluster.nodes[j].handle.cluster())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = cluster.nodes[up[0]].handle.cluster();
    let dead = view
        .nodes
        .iter()
        .find(|n| n.id == first.as_str())
        .expect("listed");
    assert!(!dead.heard && dead.role == "unknown", "{dead:?}");
    assert!(
        view.warnings
            .iter()
            .any(|w| w.starts_with(&format!("{first} not heard from"))),
        "{:?}",
        view.warnings
    );
}

/// A master's status lists the steps of the election it won, in the order they happen, on
/// one clock: timer, campaign (pre-vote quorum), durable vote, vote quorum, master. (No
/// drivers here, so no "drivers told".) What `clustd-bench failover` reads its breakdown from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_lists_the_steps_of_its_election() {
    use clustd::status::ElectionStepKind as Step;
    let mut cluster = LocalCluster::start(3, TransportKind::Quic, ELECTION).expect("cluster");
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let i = cluster.index(&master).expect("known id");
    let status = cluster.nodes[i].handle.status();
    let won: Vec<_> = status
        .elections
        .iter()
        .filter(|s| s.term == status.term)
        .collect();
    let steps: Vec<Step> = won.iter().map(|s| s.step).collect();
    // A pre-vote may fail and the timer fire again before the one that won.
    let first_campaign = steps
        .iter()
        .position(|s| *s == Step::Campaign)
        .expect("a campaign");
    assert_eq!(
        &steps[first_campaign - 1..],
        [
            Step::TimerFired,
            Step::Campaign,
            Step::Persisted,
            Step::VoteQuorum,
            Step::Master
        ],
        "{won:?}"
    );
    assert!(
        won.windows(2).all(|w| w[0].at_mono_ns <= w[1].at_mono_ns),
        "{won:?}"
    );
    cluster.shutdown().await;
}
