//! The VIP driver: service addresses that follow the master.
//!
//! - **On master** it probes for another host holding each address (ARP probe, DAD
//!   solicitation; `conflict.probe_ms`), adds the ones nobody answers for over rtnetlink
//!   (IPv6 with `nodad`, so they are usable at once), and announces them: both gratuitous
//!   ARP forms for IPv4, an unsolicited neighbour advertisement with the override flag for
//!   IPv6; `announce.count` times `announce.interval_ms` apart, then every
//!   `announce.refresh_ms`. The acknowledgement is `Ok` once every address is up and
//!   announced once; an address another host answers for is not taken, and the
//!   acknowledgement says so (`Failed`: the daemon counts it as a failed start).
//! - **On backup, lease expiry, driver shutdown and at start-up** it removes them. A
//!   removal is two netlink requests per interface (a dump and a delete): well under a
//!   millisecond on an idle machine, far inside the fast profile's 20 ms stop budget.
//! - **Level-triggered**: every `announce.reconcile_ms` it compares what should be with
//!   what is. An address missing on the master is added and announced again, one present
//!   on a backup is removed, each logged at WARN. On the master it also probes again, and
//!   an address another host claims (any ARP or advertisement naming it from another
//!   link-layer address) is logged at ERROR and reported to the daemon as the health check
//!   `conflict`, unhealthy until it has been quiet for a whole reconcile period.
//!
//! Addresses it adds are marked (see [`netlink::ADDRESS_PROTOCOL`]): at start-up one it left
//! behind is removed, while one configured by someone else is an error.

mod config;
pub mod frames;
pub mod netlink;
mod wire;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use clustd_core::driver::{ActionResult, DriverRole};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{Announce, MAX_VIPS, VipConfig, VipSpec};
use frames::{MacAddr, Seen};
use netlink::{Found, Link, Netlink, NetlinkError};
use wire::Port;

use crate::driver::{Driver, RoleChange};
use crate::health::HealthReporter;

/// The health check a conflict is reported under (the daemon shows `<driver id>/conflict`).
pub const CONFLICT_CHECK: &str = "conflict";

/// Where the systemd unit that grants the capabilities lives in the source tree.
const UNIT_HINT: &str =
    "run it as root or grant the capabilities, see packaging/clustd-vip-driver.service";

/// Why the VIP driver cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VipError {
    /// Missing CAP_NET_ADMIN or CAP_NET_RAW.
    #[error(
        "clustd-vip-driver needs CAP_NET_ADMIN (to add and remove addresses) and CAP_NET_RAW (to send ARP and neighbour advertisements), and lacks {missing}: {UNIT_HINT}"
    )]
    Capabilities {
        /// The missing ones, e.g. `CAP_NET_RAW`.
        missing: String,
    },
    /// A `[[vip]]` names an interface that does not exist.
    #[error("vip {vip}: there is no interface `{interface}`; this machine has: {existing}")]
    UnknownInterface {
        /// The address.
        vip: String,
        /// The interface named.
        interface: String,
        /// The interfaces there are.
        existing: String,
    },
    /// The interface has no Ethernet address to announce.
    #[error(
        "vip {vip}: interface `{interface}` has no Ethernet address, so the address cannot be announced; put it on an Ethernet interface (or a bridge, bond or VLAN on one)"
    )]
    NotEthernet {
        /// The address.
        vip: String,
        /// The interface.
        interface: String,
    },
    /// The address is configured on the interface by someone else.
    #[error(
        "vip {vip}: {address}/{prefix} is already configured on {interface}, and not by clustd-vip-driver: a statically configured VIP stays when this node is backup, beside the new master. Remove it (`ip addr del {address}/{prefix} dev {interface}`) and from the interface's static network configuration; the driver adds it on the master only"
    )]
    Static {
        /// The `[[vip]]`.
        vip: String,
        /// The address found.
        address: IpAddr,
        /// Its prefix.
        prefix: u8,
        /// The interface.
        interface: String,
    },
    /// A netlink request or a raw socket failed.
    #[error("{0}")]
    System(String),
}

/// One address, resolved to its interface.
#[derive(Clone, Debug)]
struct Vip {
    spec: VipSpec,
    index: u32,
    mac: MacAddr,
}

/// The last time each address was claimed by another host: written by the receiving
/// threads, read by the driver.
type Heard = Arc<StdMutex<Vec<Option<(MacAddr, std::time::Instant)>>>>;

/// Announcements still due for one address.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    /// Left in the first burst (then refreshes).
    left: u32,
    next: Instant,
}

/// What only one task changes at a time: the addresses, the announcements, the reports.
#[derive(Debug)]
struct Ops {
    /// The addresses this master holds, or waits to take while another host claims them:
    /// set by [`Inner::take`] after its probe, cleared by [`Inner::release`]. A reconcile
    /// repairs only these, so it never takes an address before the probe that must come
    /// first.
    wanted: Vec<bool>,
    schedule: Vec<Option<Schedule>>,
    /// A conflict on this address was reported (ERROR logged, health unhealthy).
    reported: Vec<bool>,
    /// When a master last logged that it is not taking a claimed address.
    refused_logged: Vec<Option<Instant>>,
    next_reconcile: Instant,
    health: Option<HealthReporter>,
}

#[derive(Debug)]
struct Inner {
    vips: Vec<Vip>,
    ports: BTreeMap<u32, Port>,
    netlink: Netlink,
    announce: Announce,
    probe: Duration,
    /// The role to converge to. Cleared before a stop takes the lock, so no reconcile that
    /// starts after the stop began re-adds an address.
    master: AtomicBool,
    ops: Mutex<Ops>,
    heard: Heard,
    wake: Notify,
}

/// The VIP driver (see the module docs).
#[derive(Debug)]
pub struct VipDriver {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for VipDriver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The effective capabilities this process lacks, from `/proc/self/status`.
fn missing_capabilities() -> Vec<&'static str> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // Not Linux's procfs: let the kernel's answers tell.
        return Vec::new();
    };
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_NET_RAW, "CAP_NET_RAW"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

fn system(e: NetlinkError) -> VipError {
    if e.is_permission() {
        VipError::Capabilities {
            missing: "CAP_NET_ADMIN".into(),
        }
    } else {
        VipError::System(e.to_string())
    }
}

impl VipDriver {
    /// Checks the capabilities and interfaces, removes addresses an earlier run left
    /// behind, opens the raw sockets and starts the reconcile loop. On a tokio runtime.
    pub async fn start(config: &VipConfig) -> Result<Self, VipError> {
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(VipError::Capabilities {
                missing: missing.join(" and "),
            });
        }
        let netlink = Netlink::connect()
            .map_err(|e| VipError::System(format!("cannot open a netlink socket: {e}")))?;
        let links = netlink.links().await.map_err(system)?;
        let mut vips = Vec::new();
        for spec in &config.vips {
            let Some(link) = links.iter().find(|l| l.name == spec.interface) else {
                let existing: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
                return Err(VipError::UnknownInterface {
                    vip: spec.to_string(),
                    interface: spec.interface.clone(),
                    existing: existing.join(", "),
                });
            };
            if link.mac == MacAddr::zero() {
                return Err(VipError::NotEthernet {
                    vip: spec.to_string(),
                    interface: spec.interface.clone(),
                });
            }
            if !link.up {
                tracing::warn!(interface = %link.name, "interface {} is down: {spec} cannot be reached until it is up", link.name);
            }
            vips.push(Vip {
                spec: spec.clone(),
                index: link.index,
                mac: link.mac,
            });
        }
        // Start-up: nothing may stay from an earlier run (a node that reboots or restarts
        // must not keep a stale VIP), and nobody else may have configured one.
        for (i, vip) in vips.iter().enumerate() {
            let found = netlink.addresses(vip.index).await.map_err(system)?;
            for f in found.iter().filter(|f| f.address == vip.spec.address) {
                if !f.ours {
                    return Err(VipError::Static {
                        vip: format!("vip[{i}] ({})", vip.spec),
                        address: f.address,
                        prefix: f.prefix,
                        interface: vip.spec.interface.clone(),
                    });
                }
                tracing::warn!(vip = %vip.spec, "{} was left on {} by an earlier run: removing it (only the master holds it)", f.address, vip.spec.interface);
                netlink.remove(f).await.map_err(system)?;
            }
        }
        let heard: Heard = Arc::new(StdMutex::new(vec![None; vips.len()]));
        let mut ports = BTreeMap::new();
        for vip in &vips {
            if ports.contains_key(&vip.index) {
                continue;
            }
            let link = Link {
                index: vip.index,
                name: vip.spec.interface.clone(),
                mac: vip.mac,
                up: true,
            };
            let watched: Vec<(usize, IpAddr)> = vips
                .iter()
                .enumerate()
                .filter(|(_, v)| v.index == vip.index)
                .map(|(i, v)| (i, v.spec.address))
                .collect();
            let heard = heard.clone();
            let ours = vip.mac;
            let port = Port::open(&link, move |seen: Seen| {
                for (i, address) in &watched {
                    if seen.claims_for_other(*address, ours) {
                        let mut heard = heard.lock().unwrap_or_else(|p| p.into_inner());
                        heard[*i] = Some((seen.claims, std::time::Instant::now()));
                    }
                }
            })
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    VipError::Capabilities {
                        missing: "CAP_NET_RAW".into(),
                    }
                } else {
                    VipError::System(format!(
                        "cannot open a raw socket on {}: {e}",
                        vip.spec.interface
                    ))
                }
            })?;
            ports.insert(vip.index, port);
        }
        let n = vips.len();
        let inner = Arc::new(Inner {
            vips,
            ports,
            netlink,
            announce: config.announce.clone(),
            probe: config.probe,
            master: AtomicBool::new(false),
            ops: Mutex::new(Ops {
                wanted: vec![false; n],
                schedule: vec![None; n],
                reported: vec![false; n],
                refused_logged: vec![None; n],
                next_reconcile: Instant::now() + config.announce.reconcile,
                health: None,
            }),
            heard,
            wake: Notify::new(),
        });
        for vip in &inner.vips {
            tracing::info!(vip = %vip.spec, mac = %vip.mac, "managing {}", vip.spec);
        }
        let task = tokio::spawn(run_loop(inner.clone()));
        Ok(Self { inner, task })
    }
}

impl Driver for VipDriver {
    fn on_session_start(&mut self, health: HealthReporter) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.ops.lock().await.health = Some(health);
        });
    }

    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        match change.role {
            DriverRole::Master => self.inner.take().await,
            DriverRole::Backup => self.inner.release(change.stop_budget).await,
        }
    }
}

impl Inner {
    fn port(&self, vip: &Vip) -> &Port {
        &self.ports[&vip.index]
    }

    /// The other host that claimed address `i` at or after `since`, if any.
    fn claimed_since(&self, i: usize, since: std::time::Instant) -> Option<MacAddr> {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard[i].filter(|(_, at)| *at >= since).map(|(mac, _)| mac)
    }

    fn send_all(&self, vip: &Vip, frames: &[Vec<u8>], what: &str) {
        for frame in frames {
            if let Err(e) = self.port(vip).send(frame) {
                tracing::warn!(vip = %vip.spec, "cannot send {what} for {}: {e}", vip.spec.address);
            }
        }
    }

    fn announce(&self, vip: &Vip) {
        self.send_all(
            vip,
            &frames::announcements(vip.mac, vip.spec.address),
            "the announcement",
        );
    }

    fn probe(&self, vip: &Vip) {
        self.send_all(
            vip,
            &[frames::probe(vip.mac, vip.spec.address)],
            "a conflict probe",
        );
    }

    /// The addresses found on each interface the VIPs are on.
    async fn actual(&self) -> Result<BTreeMap<u32, Vec<Found>>, NetlinkError> {
        let mut found = BTreeMap::new();
        for index in self.ports.keys() {
            found.insert(*index, self.netlink.addresses(*index).await?);
        }
        Ok(found)
    }

    fn conflict_text(&self, vip: &Vip, other: MacAddr) -> String {
        format!(
            "{}: another host ({other}) answers for {}: a misconfiguration or a second cluster; not taking it while that lasts",
            vip.spec, vip.spec.address
        )
    }

    /// Adds the address (already known not to be claimed), announces it once and
    /// schedules the rest of the burst.
    async fn add_and_announce(&self, ops: &mut Ops, i: usize) -> Result<(), String> {
        let vip = &self.vips[i];
        self.netlink
            .add(vip.index, vip.spec.address, vip.spec.prefix)
            .await
            .map_err(|e| format!("{}: {e}", vip.spec))?;
        self.announce(vip);
        ops.schedule[i] = Some(Schedule {
            left: self.announce.count.saturating_sub(1),
            next: Instant::now() + self.announce.interval,
        });
        self.wake.notify_one();
        Ok(())
    }

    /// Becoming master: probe, add, announce.
    async fn take(&self) -> ActionResult {
        self.master.store(true, Ordering::SeqCst);
        let since = std::time::Instant::now();
        if !self.probe.is_zero() {
            for vip in &self.vips {
                self.probe(vip);
            }
            // Not holding the lock: a stop that cancels this waits for nothing.
            tokio::time::sleep(self.probe).await;
        }
        let mut ops = self.ops.lock().await;
        if !self.master.load(Ordering::SeqCst) {
            return ActionResult::Failed("cancelled: no longer master".into());
        }
        let actual = match self.actual().await {
            Ok(a) => a,
            Err(e) => return ActionResult::Failed(e.to_string()),
        };
        let mut failures = Vec::new();
        for (i, vip) in self.vips.iter().enumerate() {
            ops.wanted[i] = true;
            if let Some(other) = self.claimed_since(i, since) {
                let text = self.conflict_text(vip, other);
                tracing::error!(vip = %vip.spec, other = %other, "{text}");
                ops.refused_logged[i] = Some(Instant::now());
                failures.push(text);
                continue;
            }
            let present = actual[&vip.index]
                .iter()
                .find(|f| f.address == vip.spec.address);
            if let Some(f) = present
                && f.tentative
            {
                // Someone added it with duplicate address detection: redo it without.
                let _ = self.netlink.remove(f).await;
            }
            match self.add_and_announce(&mut ops, i).await {
                Ok(()) => tracing::info!(vip = %vip.spec, "took {} and announced it", vip.spec),
                Err(e) => {
                    tracing::error!(vip = %vip.spec, "cannot take {}: {e}", vip.spec);
                    failures.push(e);
                }
            }
        }
        if failures.is_empty() {
            ActionResult::Ok
        } else {
            ActionResult::Failed(failures.join("; "))
        }
    }

    /// Stopping being master: remove every address, stop announcing.
    async fn release(&self, budget: Option<Duration>) -> ActionResult {
        self.master.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let mut ops = self.ops.lock().await;
        ops.wanted.iter_mut().for_each(|w| *w = false);
        ops.schedule.iter_mut().for_each(|s| *s = None);
        let result = self.remove_all(&mut ops, None).await;
        let took = started.elapsed();
        if let Some(budget) = budget
            && took > budget
        {
            tracing::error!(
                took_ms = took.as_millis(),
                stop_budget_ms = budget.as_millis(),
                "removing the addresses took longer than election.stop_budget_ms"
            );
        }
        // No conflict is watched on a backup: what was reported no longer holds.
        self.clear_reports(&mut ops);
        result
    }

    /// Removes every VIP found; `why` is logged at WARN for each one removed (a reconcile).
    async fn remove_all(&self, _ops: &mut Ops, why: Option<&str>) -> ActionResult {
        let actual = match self.actual().await {
            Ok(a) => a,
            Err(e) => return ActionResult::Failed(e.to_string()),
        };
        let mut failures = Vec::new();
        for vip in &self.vips {
            for f in actual[&vip.index]
                .iter()
                .filter(|f| f.address == vip.spec.address)
            {
                match self.netlink.remove(f).await {
                    Ok(removed) => {
                        if removed {
                            match why {
                                Some(why) => {
                                    tracing::warn!(vip = %vip.spec, "{} {why}: removed it", vip.spec)
                                }
                                None => tracing::info!(vip = %vip.spec, "released {}", vip.spec),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(vip = %vip.spec, "cannot remove {}: {e}", vip.spec);
                        failures.push(format!("{}: {e}", vip.spec));
                    }
                }
            }
        }
        if failures.is_empty() {
            ActionResult::Ok
        } else {
            ActionResult::Failed(failures.join("; "))
        }
    }

    fn clear_reports(&self, ops: &mut Ops) {
        if ops.reported.iter().any(|r| *r) {
            ops.reported.iter_mut().for_each(|r| *r = false);
            self.report(ops, true, "backup: not holding the addresses".into());
        }
    }

    fn report(&self, ops: &Ops, healthy: bool, detail: String) {
        if let Some(health) = &ops.health
            && let Err(e) = health.report_with(CONFLICT_CHECK, healthy, &detail, 1, 1)
        {
            tracing::error!("conflict not reported to the daemon: {e}");
        }
    }

    /// Compares what should be with what is, and repairs it.
    async fn reconcile(&self, ops: &mut Ops) {
        if !self.master.load(Ordering::SeqCst) {
            let _ = self
                .remove_all(ops, Some("was found on this backup node"))
                .await;
            return;
        }
        let actual = match self.actual().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("reconcile: {e}");
                return;
            }
        };
        // A claim counts for one reconcile period and the probe's wait after it.
        let window = self.announce.reconcile + self.probe.max(Duration::from_millis(100));
        let since = std::time::Instant::now()
            .checked_sub(window)
            .unwrap_or_else(std::time::Instant::now);
        let mut changed = false;
        for (i, vip) in self.vips.iter().enumerate() {
            if !ops.wanted[i] {
                // A master still probing before it takes the address.
                continue;
            }
            let claimed = self.claimed_since(i, since);
            let present = actual[&vip.index]
                .iter()
                .find(|f| f.address == vip.spec.address);
            match claimed {
                Some(other) if !ops.reported[i] => {
                    tracing::error!(vip = %vip.spec, other = %other, "{}", self.conflict_text(vip, other));
                    ops.reported[i] = true;
                    changed = true;
                    // Win the neighbour caches back while the operator looks.
                    if present.is_some() {
                        self.announce(vip);
                    }
                }
                None if ops.reported[i] => {
                    tracing::info!(vip = %vip.spec, "no other host claimed {} for {} ms: conflict over", vip.spec.address, window.as_millis());
                    ops.reported[i] = false;
                    changed = true;
                }
                _ => {}
            }
            match present {
                None if claimed.is_some() => {
                    let due = ops.refused_logged[i]
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
                    if due {
                        tracing::error!(vip = %vip.spec, "master without {}: another host claims it", vip.spec.address);
                        ops.refused_logged[i] = Some(Instant::now());
                    }
                }
                None => {
                    tracing::warn!(vip = %vip.spec, "{} is missing on the master (removed by hand or by another program?): adding and announcing it again", vip.spec);
                    if let Err(e) = self.add_and_announce(ops, i).await {
                        tracing::error!(vip = %vip.spec, "cannot add {}: {e}", vip.spec);
                    }
                }
                Some(f) if f.tentative => {
                    tracing::warn!(vip = %vip.spec, "{} is tentative or failed duplicate address detection: adding it again without", vip.spec);
                    let _ = self.netlink.remove(f).await;
                    if let Err(e) = self.add_and_announce(ops, i).await {
                        tracing::error!(vip = %vip.spec, "cannot add {}: {e}", vip.spec);
                    }
                }
                Some(_) => {}
            }
            // Ask again; answers count at the next reconcile.
            self.probe(vip);
        }
        if changed {
            let claimed: Vec<String> = self
                .vips
                .iter()
                .zip(&ops.reported)
                .filter(|(_, r)| **r)
                .map(|(v, _)| v.spec.address.to_string())
                .collect();
            if claimed.is_empty() {
                self.report(ops, true, "no other host claims the addresses".into());
            } else {
                self.report(
                    ops,
                    false,
                    format!(
                        "another host answers for {}: a misconfiguration or a second cluster",
                        claimed.join(", ")
                    ),
                );
            }
        }
    }

    /// Sends the announcements that are due.
    fn announce_due(&self, ops: &mut Ops, now: Instant) {
        for (i, vip) in self.vips.iter().enumerate() {
            let Some(s) = &mut ops.schedule[i] else {
                continue;
            };
            if s.next > now {
                continue;
            }
            self.announce(vip);
            if s.left > 0 {
                s.left -= 1;
            }
            s.next = now
                + if s.left > 0 {
                    self.announce.interval
                } else {
                    self.announce.refresh
                };
        }
    }
}

/// Reconciles every `reconcile_ms` and sends announcements when due, for as long as the
/// driver lives.
async fn run_loop(inner: Arc<Inner>) {
    loop {
        let deadline = {
            let ops = inner.ops.lock().await;
            ops.schedule
                .iter()
                .flatten()
                .map(|s| s.next)
                .fold(ops.next_reconcile, Instant::min)
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = inner.wake.notified() => {}
        }
        let mut ops = inner.ops.lock().await;
        let now = Instant::now();
        if now >= ops.next_reconcile {
            inner.reconcile(&mut ops).await;
            ops.next_reconcile = now + inner.announce.reconcile;
        }
        if inner.master.load(Ordering::SeqCst) {
            inner.announce_due(&mut ops, now);
        }
    }
}
