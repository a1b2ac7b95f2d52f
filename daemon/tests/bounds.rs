//! Hostile or broken surroundings against real daemons (in this process, on loopback): what
//! they may hold is bounded, and safety holds while it is.
//!
//! - A flood of 1,000 drivers that are told "master" and vanish without acknowledging
//!   "backup": at most [`MAX_CONNECTED_DRIVERS`] are served at once (the rest wait, told
//!   nothing), at most [`MAX_REMEMBERED_DRIVERS`] are remembered, failure reasons are cut,
//!   `/status` stays small, a step-down never waits longer than a lease plus the stop
//!   budget, and once their leases have run out they hold up nothing.
//! - A state write that fails for a transient reason (EMFILE) does not stop the daemon: it
//!   sends nothing (so its vote is withheld and nobody can win with it), retries, and the
//!   node rejoins once the write works again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clustd::health::{MAX_DRIVER_CHECKS, MAX_RESULT_LEN};
use clustd::local::{DRIVER_SECRET_FILE, LocalCluster, LocalNode, ServiceWatch};
use clustd::runtime::{
    Command, MAX_CONNECTED_DRIVERS, MAX_REASON_LEN, MAX_REMEMBERED_DRIVERS, Shutdown,
};
use clustd::store::{FileStore, StateStore, StoreError};
use clustd::{DriverRecord, Handle};
use clustd_core::codec;
use clustd_core::driver::{FromDriver, ToDriver};
use clustd_core::{NodeId, PersistentState};
use clustd_drivers::{ActionResult, Driver, DriverConfig, DriverRole, DriverSession, RoleChange};
use clustd_transport::{
    Endpoint, EndpointConfig, PeerKind, Secret, SendClass, TokioNet, TransportEvent, TransportKind,
};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(30);

clustd_transport::both_transports!(
    a_transient_state_write_failure_withholds_votes_and_the_node_rejoins
);

/// One transport is enough for the volume: what is bounded lives above the transport.
/// (Over QUIC the same flood passes but takes over a minute: a thousand endpoints, each
/// with its own socket and handshake, and slower disconnect detection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_vanishing_drivers_leaves_memory_status_and_step_downs_bounded() {
    flood(TransportKind::WebSocket).await;
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn secret_bytes(cluster: &LocalCluster) -> Vec<u8> {
    std::fs::read(cluster.dir.path().join(DRIVER_SECRET_FILE))
        .expect("secret")
        .trim_ascii()
        .to_vec()
}

/// A driver that acknowledges everything with `Ok`.
struct Fine;

impl Driver for Fine {
    async fn on_role_change(&mut self, _change: RoleChange) -> ActionResult {
        ActionResult::Ok
    }
}

fn attach_fine(cluster: &LocalCluster, i: usize, kind: TransportKind, id: &str) -> DriverSession {
    let config = DriverConfig::new(
        cluster.settings[i].listen,
        kind,
        secret_bytes(cluster),
        "test",
    )
    .with_driver_id(id)
    .expect("valid id");
    clustd_drivers::connect(config, Fine).expect("driver starts")
}

/// A hostile driver: connects, waits to be told "master", answers it with a failure whose
/// reason is `reason_len` bytes, reports on `told`, and leaves when `leave` fires (or at
/// once without one) — never acknowledging a "backup".
async fn vanishing_driver(
    kind: TransportKind,
    secret: Secret,
    daemon: std::net::SocketAddr,
    id: String,
    reason_len: usize,
    told: mpsc::UnboundedSender<String>,
    leave: Option<oneshot::Receiver<()>>,
) {
    let node_id = NodeId::new(&id).expect("valid id");
    let config = EndpointConfig::new(kind, node_id, PeerKind::Driver, secret);
    let (endpoint, mut events) = Endpoint::start(TokioNet, config).await.expect("endpoint");
    endpoint.dial(daemon);
    while let Some(event) = events.recv().await {
        let TransportEvent::Frame { from, frame, .. } = event else {
            continue;
        };
        if let Ok(ToDriver::Role {
            role: DriverRole::Master,
            seq,
            ..
        }) = codec::decode::<ToDriver>(&frame)
        {
            // A started service (a failed start would make the node unhealthy and hand
            // over, which is not what this flood is about), with a huge health report.
            let ack = FromDriver::Ack {
                seq,
                role: DriverRole::Master,
                result: ActionResult::Ok,
            };
            let report = FromDriver::Health {
                check: "check".into(),
                healthy: true,
                detail: "é".repeat(reason_len / 2),
                fall: 1,
                rise: 1,
            };
            for msg in [ack, report] {
                let _ = endpoint.send(
                    &from,
                    codec::encode(&msg).expect("encodes"),
                    SendClass::Reliable,
                );
            }
            let _ = told.send(id.clone());
            break;
        }
    }
    if let Some(leave) = leave {
        let _ = leave.await;
    }
    endpoint.shutdown().await;
}

/// Everything the flood may not grow, checked on each look at the master's status.
#[derive(Default)]
struct Bounds {
    max_drivers: usize,
    max_json: usize,
    max_may_run_for_ms: u64,
}

impl Bounds {
    fn check(&mut self, handle: &Handle, wait_bound_ms: u64) {
        let status = handle.status();
        let json = serde_json::to_string(&status).expect("JSON");
        self.max_drivers = self.max_drivers.max(status.drivers.len());
        self.max_json = self.max_json.max(json.len());
        self.max_may_run_for_ms = self.max_may_run_for_ms.max(status.drivers_may_run_for_ms);
        assert!(
            status.drivers.len() <= MAX_REMEMBERED_DRIVERS,
            "{}",
            status.drivers.len()
        );
        assert!(status.drivers_connected <= MAX_CONNECTED_DRIVERS);
        // Each entry holds at most two cut reasons and a short id.
        assert!(
            json.len() <= 16 * 1024 + MAX_REMEMBERED_DRIVERS * (2 * MAX_REASON_LEN + 512),
            "/status is {} bytes",
            json.len()
        );
        for d in &status.drivers {
            for text in [&d.last_result, &d.last_stop_failure].into_iter().flatten() {
                assert!(text.len() <= MAX_REASON_LEN, "{} bytes", text.len());
            }
        }
        // Driver-reported checks: capped in number, each result cut.
        assert!(
            status.checks.len() <= MAX_DRIVER_CHECKS,
            "{} checks",
            status.checks.len()
        );
        for c in &status.checks {
            let len = c.last_result.as_ref().map_or(0, String::len);
            assert!(len <= MAX_RESULT_LEN, "{len} bytes");
        }
        assert!(
            status.healthy,
            "healthy reports never make the node unhealthy"
        );
        // A step-down now would wait at most a lease plus the stop budget for them.
        assert!(
            status.drivers_may_run_for_ms <= wait_bound_ms,
            "drivers hold a hand-over for {} ms, beyond a lease plus the stop budget ({wait_bound_ms} ms)",
            status.drivers_may_run_for_ms
        );
    }
}

async fn flood(kind: TransportKind) {
    const TOTAL: usize = 1000;
    const CAP_PHASE: usize = MAX_CONNECTED_DRIVERS + 6;
    const BATCH: usize = 60;
    // A longer lease than the default keeps more of the departed drivers' leases running
    // at once, so the remembered-driver cap is reached.
    let mut cluster =
        LocalCluster::start(3, kind, "election_timeout_ms = [2000, 3000]").expect("cluster");
    let mut watch = ServiceWatch::new(tokio::time::Instant::now());
    for node in &cluster.nodes {
        watch.follow(node);
    }
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let handle = cluster.nodes[m].handle.clone();
    let addr = cluster.settings[m].listen;
    let core = &cluster.settings[m].core;
    let wait_bound_ms =
        u64::try_from((core.lease + core.stop_budget_at_drift_bound()).as_millis()).expect("ms");
    let secret = Secret::from_bytes(secret_bytes(&cluster)).expect("secret");
    let mut bounds = Bounds::default();
    let (told_tx, mut told_rx) = mpsc::unbounded_channel();

    // The cap: 70 at once. 64 are told master; 6 are told nothing, counted as refused.
    let mut leaves = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CAP_PHASE {
        let (leave_tx, leave_rx) = oneshot::channel();
        leaves.push(leave_tx);
        tasks.spawn(vanishing_driver(
            kind,
            secret.clone(),
            addr,
            format!("cap-{i:02}"),
            60_000,
            told_tx.clone(),
            Some(leave_rx),
        ));
    }
    wait_until("the cap is full and the rest refused", || {
        let s = handle.status();
        s.drivers_connected == MAX_CONNECTED_DRIVERS
            && s.drivers_refused >= (CAP_PHASE - MAX_CONNECTED_DRIVERS) as u64
    })
    .await;
    let mut told = Vec::new();
    while told.len() < MAX_CONNECTED_DRIVERS {
        let id = tokio::time::timeout(WAIT, told_rx.recv())
            .await
            .expect("the admitted drivers are told master")
            .expect("open");
        told.push(id);
    }
    // Their acks are in, and their 60 KB health reports arrive cut.
    wait_until("the admitted drivers' acks and reports are in", || {
        let s = handle.status();
        s.drivers.iter().filter(|d| d.last_result.is_some()).count() == MAX_CONNECTED_DRIVERS
            && s.checks.len() == MAX_DRIVER_CHECKS
    })
    .await;
    bounds.check(&handle, wait_bound_ms);
    assert!(
        told_rx.try_recv().is_err(),
        "a refused driver was told master"
    );
    // The admitted ones leave without a word about "backup": the waiting ones get their
    // slots, and are told master in turn.
    for (i, leave) in leaves.into_iter().enumerate() {
        if told.contains(&format!("cap-{i:02}")) {
            let _ = leave.send(());
        } else {
            // A waiting one leaves as soon as it has been told.
            drop(leave);
        }
    }
    watch.collect();
    for _ in MAX_CONNECTED_DRIVERS..CAP_PHASE {
        tokio::time::timeout(WAIT, told_rx.recv())
            .await
            .expect("a waiting driver is admitted when a slot frees")
            .expect("open");
        bounds.check(&handle, wait_bound_ms);
    }
    while tasks.join_next().await.is_some() {}

    // The volume: the rest, a batch at a time, each told master and gone at once.
    let mut started = CAP_PHASE;
    while started < TOTAL {
        let n = BATCH.min(TOTAL - started);
        for i in started..started + n {
            tasks.spawn(vanishing_driver(
                kind,
                secret.clone(),
                addr,
                format!("flood-{i:04}"),
                60_000,
                told_tx.clone(),
                None,
            ));
        }
        started += n;
        for _ in 0..n {
            tokio::time::timeout(WAIT, told_rx.recv())
                .await
                .expect("every flood driver is told master")
                .expect("open");
        }
        while tasks.join_next().await.is_some() {}
        bounds.check(&handle, wait_bound_ms);
        // Keep up with the records (lease renewals to every driver) so none are lost.
        watch.collect();
        wait_until("the batch is seen gone", || {
            handle.status().drivers_connected == 0
        })
        .await;
    }
    bounds.check(&handle, wait_bound_ms);

    // Once their leases plus the stop budget have passed, they are forgotten and hold up
    // nothing: a step-down with one well-behaved driver hands over on its Ok, before the
    // lease the master was still giving out has ended.
    wait_until("the flood's leases have run out", || {
        let s = handle.status();
        bounds.check(&handle, wait_bound_ms);
        s.drivers_may_run_for_ms == 0 && s.drivers.is_empty()
    })
    .await;
    let fine: Vec<DriverSession> = (0..3)
        .map(|i| attach_fine(&cluster, i, kind, &format!("fine-{i}")))
        .collect();
    wait_until("the master's good driver has started", || {
        handle
            .status()
            .drivers
            .iter()
            .any(|d| d.acknowledged && d.last_role.as_deref() == Some("master"))
    })
    .await;
    assert!(handle.command(Command::StepDown).await);
    let mut handed_over = None;
    wait_until("another node tells its driver master", || {
        handed_over = watch
            .records()
            .into_iter()
            .find(|r| r.node != master && matches!(r.record, DriverRecord::ToldMaster { .. }))
            .map(|r| r.at);
        handed_over.is_some()
    })
    .await;
    let handed_over = handed_over.expect("just seen");
    let lease_end = watch
        .records()
        .into_iter()
        .filter(|r| r.node == master && r.at < handed_over)
        .filter_map(|r| r.lease_until())
        .max()
        .expect("the master gave leases");
    assert!(
        handed_over < lease_end,
        "the hand-over at {handed_over:?} waited for the lease end {lease_end:?}: the flood still held it up"
    );
    let checker = watch.check();
    assert!(
        checker.violations().is_empty(),
        "{:#?}",
        checker.violations()
    );
    eprintln!(
        "flood of {TOTAL}: at most {} drivers remembered, /status at most {} bytes, a step-down would have waited at most {} ms",
        bounds.max_drivers, bounds.max_json, bounds.max_may_run_for_ms
    );
    for session in fine {
        session.shutdown().await.expect("driver shuts down");
    }
    cluster.shutdown().await;
}

/// A [`FileStore`] whose writes fail with EMFILE while `fail` is set.
struct Flaky {
    inner: FileStore,
    fail: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
}

impl StateStore for Flaky {
    fn load(&mut self) -> Result<PersistentState, StoreError> {
        self.inner.load()
    }

    fn save(&mut self, state: &PersistentState) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io {
                path: self.inner.path().with_extension("tmp"),
                action: "create",
                source: std::io::Error::from_raw_os_error(nix::libc::EMFILE),
            });
        }
        self.inner.save(state)
    }
}

async fn a_transient_state_write_failure_withholds_votes_and_the_node_rejoins(kind: TransportKind) {
    let (dir, settings) = LocalCluster::configure(3, kind, "").expect("configure");
    let fail: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
    let failures: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::default()).collect();
    let nodes = settings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            LocalNode::start_with_store(
                s,
                Flaky {
                    inner: FileStore::new(&s.data_dir),
                    fail: fail[i].clone(),
                    failures: failures[i].clone(),
                },
            )
        })
        .collect();
    let mut cluster = LocalCluster {
        dir,
        settings,
        nodes,
    };
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let f = (m + 1) % 3;
    let s = (m + 2) % 3;

    // F cannot write its state; then the master dies. The survivors need each other's
    // vote, and F's vote (or its own candidacy) needs a durable write first.
    fail[f].store(true, Ordering::SeqCst);
    let won = |cluster: &LocalCluster, i: usize| cluster.nodes[i].handle.status().elections_won;
    let (f_won, s_won) = (won(&cluster, f), won(&cluster, s));
    cluster.stop(m, Shutdown::Immediate).await.expect("stop");
    // Retries every 100 ms: 20 failures span longer than the largest election timeout.
    wait_until("F has failed its write many times", || {
        assert!(
            cluster.nodes[f].is_running(),
            "F exited on a transient write failure"
        );
        assert!(
            cluster.masters().is_empty(),
            "a master was elected with a vote that was never written"
        );
        failures[f].load(Ordering::SeqCst) >= 20
    })
    .await;
    let status = cluster.nodes[f].handle.status();
    assert!(
        status
            .state_write_error
            .as_deref()
            .is_some_and(|e| e.contains("Too many open files")),
        "{status:?}"
    );
    assert!(status.render().contains("CANNOT WRITE STATE"));
    assert!(
        cluster.nodes[f]
            .handle
            .metrics_text()
            .contains("clustd_state_write_failures_total"),
    );
    assert_eq!(
        won(&cluster, f),
        f_won,
        "F won an election it could not record"
    );
    assert_eq!(won(&cluster, s), s_won, "S won with a vote F never wrote");

    // The disk works again: the retry writes the state, F speaks again, and the two elect
    // a master; F follows it.
    fail[f].store(false, Ordering::SeqCst);
    let next = cluster
        .wait_for_master(Some(&master), WAIT)
        .await
        .expect("a master once F can write");
    wait_until("F follows the new master", || {
        let status = cluster.nodes[f].handle.status();
        status.state_write_error.is_none() && (status.leader.as_deref() == Some(next.as_str()))
    })
    .await;
    assert!(cluster.nodes[f].is_running());
    assert!(cluster.nodes[f].handle.status().state_write_failures >= 20);
    cluster.shutdown().await;
}
