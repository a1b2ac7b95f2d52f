//! `clustd demo`: a 3-node cluster inside one process, on loopback, with the real runtime, the
//! real transport and one real driver per node (the `clustd-drivers` library, in process). It
//! elects a master, kills it, shows the failover and its duration, brings the node back, does
//! a graceful step-down, and ends with a summary table.
//!
//! "Overlapping masters" is judged by the one service-interval checker
//! ([`clustd_core::check::ServiceChecker`], through [`ServiceWatch`]) from what each daemon
//! sent its driver and heard back — the same rule as the simulation and the benchmark: a
//! master's service ends at its driver's confirmed stop or at its lease end plus the stop
//! budget, never at a "backup" notice.

use std::collections::BTreeMap;
use std::time::Duration;

use clustd_core::NodeId;
use clustd_core::driver::{ActionResult, DriverRole};
use clustd_drivers::{ChangeSource, Driver, DriverConfig, DriverSession, RoleChange};
use clustd_transport::TransportKind;
use tokio::sync::broadcast;
use tokio::time::Instant as TokioInstant;

use crate::local::{DRIVER_SECRET_FILE, LocalCluster, LocalError, LocalNode, ServiceWatch};
use crate::runtime::{Command, Handle, RoleNotice, Shutdown};

/// How long the demo waits for any one step before giving up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the demo could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step did not happen in time.
    #[error("{0}")]
    Step(String),
    /// Setting up the local cluster failed.
    #[error(transparent)]
    Setup(#[from] LocalError),
    /// A driver could not start.
    #[error("driver: {0}")]
    Driver(String),
}

/// What the demo measured.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Time from start to the first master.
    pub first_election: Duration,
    /// Time from SIGKILL-like crash of the master to the new master.
    pub failover: Duration,
    /// Time from graceful step-down to the new master.
    pub step_down: Duration,
    /// Whether the restarted node rejoined without changing the term.
    pub rejoin_without_disruption: bool,
    /// Elections won across the cluster.
    pub elections: u64,
    /// Service intervals the checker saw (one per stretch of mastership).
    pub service_intervals: usize,
    /// The service-interval checker's violations, as text (must be empty).
    pub violations: Vec<String>,
}

/// Seconds since the demo started, as printed at the start of each line.
fn stamp(origin: TokioInstant) -> String {
    format!("{:7.3}s", origin.elapsed().as_secs_f64())
}

/// The demo's driver: says what a real one would do, and succeeds.
struct DemoDriver {
    node: String,
    origin: TokioInstant,
}

impl Driver for DemoDriver {
    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        let why = match change.source {
            ChangeSource::LeaseExpired => "its lease ran out: fail-safe".to_string(),
            ChangeSource::DriverShutdown => "driver shutting down".to_string(),
            _ => change.reason.clone(),
        };
        match change.role {
            DriverRole::Master => println!(
                "  {}  {:<8} driver: start (term {}, {why})",
                stamp(self.origin),
                self.node,
                change.term
            ),
            // Only a stop of something started is news; the first "backup" is not.
            DriverRole::Backup if change.previous_role == Some(DriverRole::Master) => println!(
                "  {}  {:<8} driver: stop (term {}, {why})",
                stamp(self.origin),
                self.node,
                change.term
            ),
            DriverRole::Backup => {}
        }
        ActionResult::Ok
    }
}

/// Connects node `member`'s demo driver.
fn attach_driver(
    member: &LocalNode,
    transport: TransportKind,
    secret: &[u8],
    origin: TokioInstant,
) -> Result<DriverSession, DemoError> {
    let node = member.settings.id.to_string();
    let mut config = DriverConfig::new(member.settings.listen, transport, secret, "demo")
        .with_driver_id(format!("{node}-driver"))
        .map_err(|e| DemoError::Driver(e.to_string()))?;
    // The killed node comes back within seconds: do not sleep through it.
    config.reconnect_max = Duration::from_millis(500);
    config.daemon_key = member.settings.node_key.as_ref().map(|k| k.public());
    clustd_drivers::connect(config, DemoDriver { node, origin })
        .map_err(|e| DemoError::Driver(e.to_string()))
}

/// Watches every node's role notices: prints them live and tracks who is master (for the
/// story only: overlaps are the checker's business).
struct Observer {
    rx: tokio::sync::mpsc::UnboundedReceiver<RoleNotice>,
    masters: BTreeMap<NodeId, bool>,
    origin: TokioInstant,
    terms_with_master: std::collections::BTreeSet<u64>,
}

impl Observer {
    fn attach(&self, handle: &Handle, tx: &tokio::sync::mpsc::UnboundedSender<RoleNotice>) {
        let mut notices = handle.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(notice) => {
                        if tx.send(notice).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    fn print(&mut self, notice: &RoleNotice) {
        let is_master = notice.role == DriverRole::Master;
        self.masters.insert(notice.node.clone(), is_master);
        if is_master {
            self.terms_with_master.insert(notice.term.0);
        }
        let role = if is_master { "MASTER" } else { "backup" };
        println!(
            "  {}  {:<8} {role:<7} term {:<3} ({})",
            stamp(self.origin),
            notice.node,
            notice.term,
            notice.reason
        );
    }

    /// Waits for a master other than `except`; returns it.
    async fn wait_master(&mut self, except: Option<&NodeId>) -> Option<NodeId> {
        let deadline = TokioInstant::now() + STEP_TIMEOUT;
        loop {
            if let Some((id, _)) = self
                .masters
                .iter()
                .find(|(id, m)| **m && Some(*id) != except)
            {
                return Some(id.clone());
            }
            let notice = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            self.print(&notice);
        }
    }

    /// Prints notices for `d`.
    async fn watch_for(&mut self, d: Duration) {
        let deadline = TokioInstant::now() + d;
        while let Ok(Some(notice)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.print(&notice);
        }
    }

    fn forget(&mut self, id: &NodeId) {
        self.masters.insert(id.clone(), false);
    }
}

/// Runs the demo and prints as it goes.
pub async fn run(transport: TransportKind) -> Result<DemoReport, DemoError> {
    let transport_name = if transport == TransportKind::Quic {
        "QUIC"
    } else {
        "WebSocket"
    };
    let (dir, settings) = LocalCluster::configure(
        3,
        transport,
        "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]",
    )?;
    let secret = std::fs::read(dir.path().join(DRIVER_SECRET_FILE)).map_err(LocalError::Io)?;
    let secret = secret.trim_ascii().to_vec();
    let ports: Vec<u16> = settings.iter().map(|s| s.listen.port()).collect();
    let core = &settings[0].core;
    println!("clustd demo: 3 nodes on 127.0.0.1 ports {ports:?}, transport {transport_name}");
    println!(
        "election timeout 1000-2000 ms, heartbeat 100 ms, lease {} ms, stop budget {} ms, data in {}",
        core.lease.as_millis(),
        core.stop_budget.as_millis(),
        dir.path().display()
    );
    println!("each node has one driver (in process) that starts and stops the \"service\"\n");

    let origin = TokioInstant::now();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut observer = Observer {
        rx,
        masters: BTreeMap::new(),
        origin,
        terms_with_master: std::collections::BTreeSet::new(),
    };
    let mut watch = ServiceWatch::new(origin);
    let mut members: Vec<LocalNode> = settings.iter().map(LocalNode::start).collect();
    for m in &members {
        observer.attach(&m.handle, &tx);
        watch.follow(m);
    }
    let drivers = members
        .iter()
        .map(|m| attach_driver(m, transport, &secret, origin))
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = DemoReport::default();

    println!("1. electing a master");
    let t0 = TokioInstant::now();
    let first = observer.wait_master(None).await.ok_or_else(|| {
        step_error(format!(
            "no master within {}",
            crate::status::human_duration(STEP_TIMEOUT)
        ))
    })?;
    report.first_election = t0.elapsed();
    observer.watch_for(Duration::from_secs(2)).await;

    println!("\n2. killing the master {first} (no goodbye, like SIGKILL); its driver lives on");
    let index = members
        .iter()
        .position(|m| m.settings.id == first)
        .unwrap_or(0);
    let killed_at = TokioInstant::now();
    let _ = members[index].stop(Shutdown::Immediate).await;
    watch.crashed(&first);
    observer.forget(&first);
    let second = observer.wait_master(Some(&first)).await.ok_or_else(|| {
        step_error(format!(
            "no failover within {}",
            crate::status::human_duration(STEP_TIMEOUT)
        ))
    })?;
    report.failover = killed_at.elapsed();
    println!(
        "  -> failover {first} -> {second} in {} ms (the old driver stopped by itself at its lease end)",
        report.failover.as_millis()
    );
    observer.watch_for(Duration::from_secs(1)).await;

    println!("\n3. restarting {first}: it must rejoin as backup without disturbing {second}");
    let term_before = members
        .iter()
        .find(|m| m.settings.id == second)
        .map(|m| m.handle.status().term);
    members[index] = LocalNode::start(&settings[index]);
    // Followed before it runs, so that the checker sees every record of the new incarnation.
    watch.follow(&members[index]);
    // QUIC releases the old UDP port a moment after shutdown; retry while it is in use.
    let retry_until = TokioInstant::now() + Duration::from_secs(10);
    while let Err(e) = members[index].started().await {
        if TokioInstant::now() > retry_until {
            return Err(step_error(format!("cannot restart {first}: {e}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        members[index] = LocalNode::start(&settings[index]);
        watch.follow(&members[index]);
    }
    observer.attach(&members[index].handle, &tx);
    observer.watch_for(Duration::from_secs(4)).await;
    let term_after = members
        .iter()
        .find(|m| m.settings.id == second)
        .map(|m| m.handle.status().term);
    let still_master = observer.masters.get(&second).copied().unwrap_or(false);
    report.rejoin_without_disruption = still_master && term_before == term_after;
    let rejoined = members[index].handle.status();
    println!(
        "  -> {first} is {} in term {}, {second} still master: {still_master}",
        rejoined.role, rejoined.term
    );

    println!("\n4. graceful step-down of {second}: its driver stops, then it hands over");
    watch.collect();
    let stepped_at = TokioInstant::now();
    let second_member = members
        .iter()
        .find(|m| m.settings.id == second)
        .map(|m| m.handle.clone());
    if let Some(h) = second_member {
        h.command(Command::StepDown).await;
    }
    let third = observer.wait_master(Some(&second)).await.ok_or_else(|| {
        step_error(format!(
            "no new master after step-down within {}",
            crate::status::human_duration(STEP_TIMEOUT)
        ))
    })?;
    report.step_down = stepped_at.elapsed();
    println!(
        "  -> hand-over {second} -> {third} in {} ms",
        report.step_down.as_millis()
    );
    observer.watch_for(Duration::from_secs(1)).await;
    report.elections = observer.terms_with_master.len() as u64;

    println!("\nstatus of {third}:");
    if let Some(m) = members.iter().find(|m| m.settings.id == third) {
        for line in m.handle.status().render().lines() {
            println!("  {line}");
        }
    }

    // Drivers first (the master's stops its service as it leaves), then the daemons.
    println!("stopping the drivers, then the nodes");
    for d in drivers {
        if let Err(e) = d.shutdown().await {
            eprintln!("a driver stopped with an error: {e}");
        }
    }
    let checker = watch.check();
    for m in &mut members {
        if let Err(e) = m.stop(Shutdown::Immediate).await {
            eprintln!("node {} stopped with an error: {e}", m.settings.id);
        }
    }
    drop(dir);

    let mut intervals = checker.intervals();
    intervals.sort_by_key(|i| i.start);
    report.service_intervals = intervals.len();
    report.violations = checker.violations().iter().map(|v| v.0.clone()).collect();
    println!(
        "\nservice intervals (from what each daemon told its driver and heard back; each ends"
    );
    println!("at the driver's confirmed stop, or at its lease end + stop budget)");
    for i in &intervals {
        println!(
            "  {:<8} term {:<3} {:7.3}s .. {:7.3}s",
            i.node,
            i.term,
            i.start.as_secs_f64(),
            i.end.as_secs_f64()
        );
    }
    for v in &report.violations {
        println!("  !! {v}");
    }

    println!("\nsummary ({transport_name})");
    println!("  {:<44} {:>8}", "what", "time");
    println!(
        "  {:<44} {:>5} ms",
        "first election (cold start, ET_min 1000 ms)",
        report.first_election.as_millis()
    );
    println!(
        "  {:<44} {:>5} ms",
        "failover after killing the master",
        report.failover.as_millis()
    );
    println!(
        "  {:<44} {:>5} ms",
        "graceful step-down hand-over",
        report.step_down.as_millis()
    );
    println!(
        "  {:<44} {:>8}",
        "restarted node rejoined without disruption",
        if report.rejoin_without_disruption {
            "yes"
        } else {
            "NO"
        }
    );
    println!(
        "  {:<44} {:>8}",
        "terms with a master (elections won)", report.elections
    );
    println!(
        "  {:<44} {:>8}",
        "overlapping masters (service checker)",
        report.violations.len()
    );
    Ok(report)
}

fn step_error(text: String) -> DemoError {
    DemoError::Step(text)
}
