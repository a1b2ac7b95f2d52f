//! `clustd demo`: a 3-node cluster inside one process, on loopback, with the real runtime and
//! the real transport. It elects a master, kills it, shows the failover and its duration,
//! brings the node back, does a graceful step-down, and ends with a summary table.

use std::collections::BTreeMap;
use std::time::Duration;

use clustd_core::{DriverRole, NodeId};
use clustd_transport::TransportKind;
use tokio::sync::broadcast;
use tokio::time::Instant as TokioInstant;

use crate::local::{LocalCluster, LocalError, LocalNode};
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
    /// Overlapping master intervals seen by the observer (must be 0).
    pub overlaps: u64,
}

/// Watches every node's role notices: prints them live, tracks who is master, counts overlaps.
struct Observer {
    rx: tokio::sync::mpsc::UnboundedReceiver<RoleNotice>,
    masters: BTreeMap<NodeId, bool>,
    origin: TokioInstant,
    overlaps: u64,
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
        let t = self.origin.elapsed().as_secs_f64();
        let is_master = notice.role == DriverRole::Master;
        if is_master && self.masters.iter().any(|(id, m)| *m && *id != notice.node) {
            self.overlaps += 1;
            println!("  {t:7.3}s  !! two masters at once");
        }
        self.masters.insert(notice.node.clone(), is_master);
        if is_master {
            self.terms_with_master.insert(notice.term.0);
        }
        let role = if is_master { "MASTER" } else { "backup" };
        println!(
            "  {t:7.3}s  {:<8} {role:<7} term {:<3} ({})",
            notice.node, notice.term, notice.reason
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
    let ports: Vec<u16> = settings.iter().map(|s| s.listen.port()).collect();
    println!("clustd demo: 3 nodes on 127.0.0.1 ports {ports:?}, transport {transport_name}");
    println!(
        "election timeout 1000-2000 ms, heartbeat 100 ms, data in {}\n",
        dir.path().display()
    );

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut observer = Observer {
        rx,
        masters: BTreeMap::new(),
        origin: TokioInstant::now(),
        overlaps: 0,
        terms_with_master: std::collections::BTreeSet::new(),
    };
    let mut members: Vec<LocalNode> = settings.iter().map(LocalNode::start).collect();
    for m in &members {
        observer.attach(&m.handle, &tx);
    }
    let mut report = DemoReport::default();

    println!("1. electing a master");
    let t0 = TokioInstant::now();
    let first = observer
        .wait_master(None)
        .await
        .ok_or_else(|| step_error(format!("no master within {STEP_TIMEOUT:?}")))?;
    report.first_election = t0.elapsed();
    observer.watch_for(Duration::from_secs(2)).await;

    println!("\n2. killing the master {first} (no goodbye, like SIGKILL)");
    let index = members
        .iter()
        .position(|m| m.settings.id == first)
        .unwrap_or(0);
    let killed_at = TokioInstant::now();
    let _ = members[index].stop(Shutdown::Immediate).await;
    observer.forget(&first);
    let second = observer
        .wait_master(Some(&first))
        .await
        .ok_or_else(|| step_error(format!("no failover within {STEP_TIMEOUT:?}")))?;
    report.failover = killed_at.elapsed();
    println!(
        "  -> failover {first} -> {second} in {} ms",
        report.failover.as_millis()
    );
    observer.watch_for(Duration::from_secs(1)).await;

    println!("\n3. restarting {first}: it must rejoin as backup without disturbing {second}");
    let term_before = members
        .iter()
        .find(|m| m.settings.id == second)
        .map(|m| m.handle.status().term);
    members[index] = LocalNode::start(&settings[index]);
    // QUIC releases the old UDP port a moment after shutdown; retry while it is in use.
    let retry_until = TokioInstant::now() + Duration::from_secs(10);
    while let Err(e) = members[index].started().await {
        if TokioInstant::now() > retry_until {
            return Err(step_error(format!("cannot restart {first}: {e}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        members[index] = LocalNode::start(&settings[index]);
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

    println!("\n4. graceful step-down of {second}");
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
            "no new master after step-down within {STEP_TIMEOUT:?}"
        ))
    })?;
    report.step_down = stepped_at.elapsed();
    println!(
        "  -> hand-over {second} -> {third} in {} ms",
        report.step_down.as_millis()
    );
    observer.watch_for(Duration::from_secs(1)).await;

    report.elections = observer.terms_with_master.len() as u64;
    report.overlaps = observer.overlaps;

    println!("\nstatus of {third}:");
    if let Some(m) = members.iter().find(|m| m.settings.id == third) {
        for line in m.handle.status().render().lines() {
            println!("  {line}");
        }
    }

    println!("stopping the cluster (graceful)");
    for m in &mut members {
        if let Err(e) = m.stop(Shutdown::Graceful).await {
            eprintln!("node {} stopped with an error: {e}", m.settings.id);
        }
    }
    drop(dir);

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
    println!("  {:<44} {:>8}", "overlapping masters", report.overlaps);
    Ok(report)
}

fn step_error(text: String) -> DemoError {
    DemoError::Step(text)
}
