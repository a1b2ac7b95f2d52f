//! `clustd-vip-driver`'s config file: how to reach the daemon, the addresses, how to
//! announce them and how long to listen for another host before taking one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, DaemonKeys, load_toml, parse_toml};
use crate::config::{DriverConfig, TransportKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipFile {
    daemon: String,
    #[serde(default = "crate::config::default_transport")]
    transport: TransportKind,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    driver_id: Option<String>,
    #[serde(default)]
    startup_wait_ms: Option<u64>,
    daemon_key: Option<String>,
    #[serde(default)]
    vip: Vec<VipSection>,
    #[serde(default)]
    announce: AnnounceSection,
    #[serde(default)]
    conflict: ConflictSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipSection {
    address: String,
    interface: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceSection {
    #[serde(default = "default_count")]
    count: u32,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_refresh_ms")]
    refresh_ms: u64,
    #[serde(default = "default_reconcile_ms")]
    reconcile_ms: u64,
}

impl Default for AnnounceSection {
    fn default() -> Self {
        Self {
            count: default_count(),
            interval_ms: default_interval_ms(),
            refresh_ms: default_refresh_ms(),
            reconcile_ms: default_reconcile_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictSection {
    #[serde(default = "default_probe_ms")]
    probe_ms: u64,
}

impl Default for ConflictSection {
    fn default() -> Self {
        Self {
            probe_ms: default_probe_ms(),
        }
    }
}

fn default_count() -> u32 {
    5
}
fn default_interval_ms() -> u64 {
    200
}
fn default_refresh_ms() -> u64 {
    60_000
}
fn default_reconcile_ms() -> u64 {
    2_000
}
fn default_probe_ms() -> u64 {
    50
}

/// The most addresses one driver manages.
pub const MAX_VIPS: usize = 64;

/// One `[[vip]]`: an address with its prefix length, on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VipSpec {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length (`/24`).
    pub prefix: u8,
    /// The interface it goes on.
    pub interface: String,
}

impl std::fmt::Display for VipSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix, self.interface)
    }
}

/// `[announce]`: how the master tells the network where the addresses are.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Announce {
    /// Announcements right after taking an address (`count`, default 5).
    pub count: u32,
    /// How far apart those are (`interval_ms`, default 200).
    pub interval: Duration,
    /// Then one this often while master (`refresh_ms`, default 60000).
    pub refresh: Duration,
    /// Desired and actual state are compared this often (`reconcile_ms`, default 2000).
    pub reconcile: Duration,
}

/// A loaded and checked VIP driver config.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VipConfig {
    /// How to reach the daemon.
    pub connection: DriverConfig,
    /// The addresses, in file order.
    pub vips: Vec<VipSpec>,
    /// `[announce]`.
    pub announce: Announce,
    /// `conflict.probe_ms` (default 50): before taking an address, how long to wait for
    /// another host to answer a probe for it; zero takes it without probing (another host
    /// is still noticed while master).
    pub probe: Duration,
}

impl VipConfig {
    /// Loads `file`; errors name the file and the key.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::check(file, load_toml(file)?)
    }

    /// Parses `text` as if read from `file` (paths resolve against `file`'s folder).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::check(file, parse_toml(file, text)?)
    }

    fn check(file: &Path, raw: VipFile) -> Result<Self, ConfigError> {
        if raw.vip.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "vip",
                "no addresses: add at least one [[vip]] table with `address = \"198.18.0.10/24\"` and `interface = \"eth0\"`",
            ));
        }
        if raw.vip.len() > MAX_VIPS {
            return Err(ConfigError::invalid(
                file,
                "vip",
                format!("{} addresses; at most {MAX_VIPS}", raw.vip.len()),
            ));
        }
        let mut vips: Vec<VipSpec> = Vec::new();
        for (i, v) in raw.vip.iter().enumerate() {
            let key = |k: &str| format!("vip[{i}].{k}");
            let (address, prefix) = parse_address(&v.address)
                .map_err(|why| ConfigError::invalid(file, &key("address"), why))?;
            check_interface_name(&v.interface)
                .map_err(|why| ConfigError::invalid(file, &key("interface"), why))?;
            if let Some(j) = vips.iter().position(|o| o.address == address) {
                return Err(ConfigError::invalid(
                    file,
                    &key("address"),
                    format!("{address} is already vip[{j}]: each address once"),
                ));
            }
            vips.push(VipSpec {
                address,
                prefix,
                interface: v.interface.clone(),
            });
        }
        let a = &raw.announce;
        for (k, value, least) in [
            ("announce.count", u64::from(a.count), 1),
            ("announce.interval_ms", a.interval_ms, 1),
            ("announce.refresh_ms", a.refresh_ms, 100),
            ("announce.reconcile_ms", a.reconcile_ms, 100),
        ] {
            if value < least {
                return Err(ConfigError::invalid(
                    file,
                    k,
                    format!("must be at least {least}"),
                ));
            }
        }
        if raw.conflict.probe_ms > 10_000 {
            return Err(ConfigError::invalid(
                file,
                "conflict.probe_ms",
                "at most 10000: the probe delays every failover by this much (0 disables it)",
            ));
        }
        let keys = DaemonKeys {
            daemon: raw.daemon,
            transport: raw.transport,
            secret_file: raw.secret_file,
            driver_id: raw.driver_id,
            startup_wait_ms: raw.startup_wait_ms,
            daemon_key: raw.daemon_key,
        };
        Ok(Self {
            connection: keys.to_driver_config(file, "vip")?,
            vips,
            announce: Announce {
                count: a.count,
                interval: Duration::from_millis(a.interval_ms),
                refresh: Duration::from_millis(a.refresh_ms),
                reconcile: Duration::from_millis(a.reconcile_ms),
            },
            probe: Duration::from_millis(raw.conflict.probe_ms),
        })
    }
}

/// `198.18.0.10/24` or `fd00::10/64`: an address a host may hold, with its prefix length.
fn parse_address(text: &str) -> Result<(IpAddr, u8), String> {
    let text = text.trim();
    let Some((addr, prefix)) = text.split_once('/') else {
        let hint = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => format!("{text}/24"),
            Ok(IpAddr::V6(_)) => format!("{text}/64"),
            Err(_) => "198.18.0.10/24".to_owned(),
        };
        return Err(format!(
            "`{text}` has no prefix length: write it like {hint}, with the prefix of the subnet the interface is on"
        ));
    };
    let address: IpAddr = addr
        .parse()
        .map_err(|e| format!("`{addr}` is not an IPv4 or IPv6 address: {e}"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("`/{prefix}` is not a prefix length from 0 to {max}"))?;
    let refuse = |why: &str| Err(format!("{address} {why}"));
    if address.is_unspecified() {
        return refuse("is the unspecified address");
    }
    if address.is_loopback() {
        return refuse("is a loopback address: other hosts cannot reach it");
    }
    if address.is_multicast() {
        return refuse("is a multicast address");
    }
    match address {
        IpAddr::V4(v4) => {
            if v4.is_broadcast() {
                return refuse("is the broadcast address");
            }
            if prefix < 31 {
                let host_bits = u32::MAX >> prefix;
                let bits = u32::from(v4) & host_bits;
                if bits == 0 || bits == host_bits {
                    return refuse(&format!(
                        "is the network or broadcast address of its /{prefix}: pick a host address"
                    ));
                }
            }
        }
        IpAddr::V6(v6) => {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return refuse(
                    "is link-local: use a global or unique local (fd00::/8) address that clients route to",
                );
            }
        }
    }
    Ok((address, prefix))
}

fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty: the interface the address goes on, like eth0".into());
    }
    // IFNAMSIZ is 16 with the terminating zero.
    if name.len() > 15 || name.contains(['/', ' ', '\0']) {
        return Err(format!(
            "`{name}` is not an interface name (at most 15 characters, no `/` or spaces)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "daemon = \"unix:/run/clustd/driver.sock\"\n";

    fn parse(body: &str) -> Result<VipConfig, ConfigError> {
        VipConfig::parse(Path::new("/etc/clustd/vip.toml"), &format!("{HEAD}{body}"))
    }

    fn error(body: &str) -> (String, String) {
        let e = parse(body).expect_err("must be refused");
        (e.key().unwrap_or_default().to_owned(), e.to_string())
    }

    #[test]
    fn a_full_config_loads_with_its_values_and_defaults() {
        let c = parse(
            "[[vip]]\naddress = \"198.18.0.10/24\"\ninterface = \"eth0\"\n\n[[vip]]\naddress = \"fd00::10/64\"\ninterface = \"eth1\"\n\n[announce]\ncount = 3\nrefresh_ms = 30000\n",
        )
        .expect("valid");
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[0].to_string(), "198.18.0.10/24 on eth0");
        assert_eq!(c.vips[1].address, "fd00::10".parse::<IpAddr>().expect("ip"));
        assert_eq!(c.vips[1].prefix, 64);
        assert_eq!(c.announce.count, 3);
        assert_eq!(c.announce.interval, Duration::from_millis(200));
        assert_eq!(c.announce.refresh, Duration::from_millis(30_000));
        assert_eq!(c.announce.reconcile, Duration::from_millis(2000));
        assert_eq!(c.probe, Duration::from_millis(50));
    }

    #[test]
    fn bad_addresses_are_refused_naming_the_key_and_the_fix() {
        let vip = |addr: &str| format!("[[vip]]\naddress = \"{addr}\"\ninterface = \"eth0\"\n");
        for (addr, says) in [
            ("198.18.0.10", "write it like 198.18.0.10/24"),
            ("fd00::10", "write it like fd00::10/64"),
            ("198.18.0.10/33", "not a prefix length from 0 to 32"),
            ("198.18.0/24", "not an IPv4 or IPv6 address"),
            ("198.18.0.0/24", "network or broadcast address"),
            ("198.18.0.255/24", "network or broadcast address"),
            ("127.0.0.2/8", "loopback"),
            ("fe80::1/64", "link-local"),
            ("0.0.0.0/0", "unspecified"),
            ("224.0.0.1/24", "multicast"),
        ] {
            let (key, text) = error(&vip(addr));
            assert_eq!(key, "vip[0].address", "{addr}: {text}");
            assert!(text.contains(says), "{addr}: {text}");
        }
        let (key, text) = error(&format!(
            "{}{}",
            vip("198.18.0.10/24"),
            vip("198.18.0.10/25")
        ));
        assert_eq!(key, "vip[1].address");
        assert!(text.contains("already vip[0]"), "{text}");
    }

    #[test]
    fn missing_addresses_bad_interfaces_and_zero_timings_are_refused() {
        let (key, text) = error("");
        assert_eq!(key, "vip");
        assert!(text.contains("[[vip]]"), "{text}");
        let (key, _) = error("[[vip]]\naddress = \"198.18.0.10/24\"\ninterface = \"\"\n");
        assert_eq!(key, "vip[0].interface");
        let (key, _) =
            error("[[vip]]\naddress = \"198.18.0.10/24\"\ninterface = \"a-very-long-name0\"\n");
        assert_eq!(key, "vip[0].interface");
        let ok = "[[vip]]\naddress = \"198.18.0.10/24\"\ninterface = \"eth0\"\n";
        for (table, k) in [
            ("[announce]\ncount = 0\n", "announce.count"),
            ("[announce]\ninterval_ms = 0\n", "announce.interval_ms"),
            ("[announce]\nreconcile_ms = 10\n", "announce.reconcile_ms"),
            ("[conflict]\nprobe_ms = 60000\n", "conflict.probe_ms"),
            ("[announce]\ncuont = 3\n", "announce.cuont"),
        ] {
            let (key, text) = error(&format!("{ok}{table}"));
            assert_eq!(key, k, "{text}");
        }
    }
}
