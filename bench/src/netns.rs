//! Hosts on one Ethernet segment, in network namespaces: for the VIP driver's tests and
//! `clustd-bench failover --vip`, which need real kernels answering ARP and neighbour
//! discovery, not loopback.
//!
//! [`Topology::create`] makes one namespace per host and one more holding a bridge; each
//! host gets an `eth0` (a veth whose other end is a port of the bridge) with a fixed MAC
//! (`02:c1:00:00:00:NN`), `198.18.0.NN/24` and `fd00::NN/64` (the benchmarking ranges,
//! never routed), and `lo` up. Dropping it deletes every namespace, and with them the
//! devices. Namespace names start with `clustd-<pid>-`; ones left by a process that no
//! longer runs (a test killed mid-run) are deleted by the next [`Topology::create`].
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's `ip`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One host of a [`Topology`].
#[derive(Clone, Debug)]
pub struct Host {
    /// Its short name, as given to [`Topology::create`].
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// `eth0`'s MAC, `02:c1:00:00:00:NN`.
    pub mac: String,
    /// `198.18.0.NN`.
    pub v4: Ipv4Addr,
    /// `fd00::NN`.
    pub v6: Ipv6Addr,
}

/// Hosts on one bridge, each in its own network namespace (deleted on drop).
#[derive(Debug)]
pub struct Topology {
    bridge_ns: String,
    /// The hosts, in the order given.
    pub hosts: Vec<Host>,
}

/// Why namespaces cannot be used here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("iproute2's `ip` is not installed (apt-get install iproute2)".into()),
    }
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes namespaces named `clustd-<pid>-…` whose process is gone.
fn delete_orphans() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("clustd-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Topology {
    /// Creates one namespace per name in `hosts` (at most 99), all on one bridge.
    pub fn create(hosts: &[&str]) -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(hosts.len() < 100, "at most 99 hosts");
        delete_orphans();
        let prefix = format!(
            "clustd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bridge_ns = format!("{prefix}-br");
        ip(&["netns", "add", &bridge_ns])?;
        let mut topology = Self {
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
        };
        let b = |args: &[&str]| {
            let mut all = vec!["-n", bridge_ns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        b(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        b(&["link", "set", "br0", "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let n = i + 1;
            let host = Host {
                name: (*name).to_owned(),
                ns: format!("{prefix}-{name}"),
                mac: format!("02:c1:00:00:00:{n:02x}"),
                v4: Ipv4Addr::new(198, 18, 0, u8::try_from(n).expect("< 100")),
                v6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::try_from(n).expect("< 100")),
            };
            ip(&["netns", "add", &host.ns])?;
            // Pushed before its devices exist, so a failure below still deletes it.
            topology.hosts.push(host.clone());
            let port = format!("p{n}");
            b(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.ns,
            ])?;
            b(&["link", "set", &port, "master", "br0", "up"])?;
            let h = |args: &[&str]| {
                let mut all = vec!["-n", host.ns.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            h(&["link", "set", "lo", "up"])?;
            h(&["link", "set", "eth0", "address", &host.mac])?;
            h(&["addr", "add", &format!("{}/24", host.v4), "dev", "eth0"])?;
            h(&[
                "addr",
                "add",
                &format!("{}/64", host.v6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            h(&["link", "set", "eth0", "up"])?;
        }
        Ok(topology)
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Runs `ip -n <host's namespace> ARGS`.
    pub fn ip(&self, host: &str, args: &[&str]) -> std::io::Result<String> {
        let mut all = vec!["-n", self.host(host).ns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the host's namespace.
    pub fn command(
        &self,
        host: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host).ns])
            .arg(program);
        cmd
    }

    /// Whether `address` is configured on the host's `eth0`.
    pub fn holds(&self, host: &str, address: &str) -> std::io::Result<bool> {
        let out = self.ip(host, &["-o", "addr", "show", "dev", "eth0"])?;
        Ok(out
            .split_whitespace()
            .any(|word| word.split('/').next() == Some(address)))
    }

    /// The link-layer address of `address` in the host's neighbour table, if it has one
    /// (and the entry is not FAILED or INCOMPLETE).
    pub fn neighbour(&self, host: &str, address: &str) -> std::io::Result<Option<String>> {
        let out = self.ip(host, &["neigh", "show", address, "dev", "eth0"])?;
        Ok(out.lines().find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "lladdr")?;
            words.get(at + 1).map(|m| (*m).to_owned())
        }))
    }

    /// Runs `f` on a thread that has entered the host's network namespace (sockets it
    /// opens live there), and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<T>> {
        let path = format!("/run/netns/{}", self.host(host).ns);
        let ns = std::fs::File::open(&path)?;
        std::thread::Builder::new()
            .name(format!("netns-{host}"))
            .spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                f()
            })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns]);
    }
}
