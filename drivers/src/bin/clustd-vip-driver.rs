//! `clustd-vip-driver`: service addresses (VIPs) that follow the master.

use anyhow::Context;
use clap::Parser;
use clustd_drivers::cli::{ConfigArgs, LogTo, init_logging, or_exit, shutdown_signal};

/// Holds the service addresses (VIPs) on the master, and only there.
///
/// On master it probes for another host holding each address (conflict.probe_ms), adds it
/// over netlink (IPv6 without duplicate address detection, usable at once) and announces
/// it: both gratuitous ARP forms (request and reply) for IPv4, an unsolicited neighbour
/// advertisement with the override flag for IPv6; announce.count times announce.interval_ms
/// apart, then every announce.refresh_ms (for switches that age entries out). On backup,
/// when its lease runs out (daemon killed or unreachable), at shutdown and at start-up it
/// removes them. Every announce.reconcile_ms it compares what should be with what is: an
/// address removed by hand on the master is added and announced again, one found on a
/// backup is removed (WARN). Another host answering for an address is an ERROR: it is not
/// taken (the acknowledgement says so and the daemon counts a failed start), and on the
/// master it is reported as the health check `conflict`.
///
/// --check-config checks the file, not the interfaces: they are checked when it starts.
///
/// Needs CAP_NET_ADMIN and CAP_NET_RAW: run as root, or as in
/// packaging/clustd-vip-driver.service. Needs Linux 6.3 or later to tell the addresses it
/// added (marked with address protocol 193) from ones configured by hand.
///
/// Example config:
///
///   daemon = "unix:/var/lib/clustd/driver.sock"   # the daemon's local driver socket: no secret
///   # or over the transport, with the drivers' credential and the daemon's public key:
///   # daemon = "127.0.0.1:7400"
///   # transport = "quic"
///   # secret_file = "/etc/clustd/driver-secret"
///   # daemon_key = "<clustd keygen --public /etc/clustd/node.key>"
///
///   [[vip]]
///   address = "192.0.2.10/24"     # IPv4 or IPv6, with prefix length
///   interface = "eth0"
///
///   [[vip]]
///   address = "2001:db8::10/64"
///   interface = "eth0"
///
///   [announce]
///   count = 5                     # announcements right after taking the address...
///   interval_ms = 200             # ...this far apart
///   refresh_ms = 60000            # and again this often while master
///   reconcile_ms = 2000           # compare desired and actual state this often
///
///   [conflict]
///   probe_ms = 50                 # wait this long for another host before taking an address (0: don't)
///
/// Logging: RUST_LOG (default "info").
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
// The doc comment above is the `--help` text, printed verbatim: its brackets are TOML
// tables, not rustdoc links.
#[allow(rustdoc::broken_intra_doc_links)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(LogTo::Stderr);
    let Some(config) = args
        .config
        .load("clustd-vip-driver", clustd_drivers::VipConfig::load)
    else {
        return Ok(());
    };
    let driver = or_exit(
        "clustd-vip-driver",
        clustd_drivers::VipDriver::start(&config).await,
    );
    clustd_drivers::run(config.connection, driver, shutdown_signal())
        .await
        .context("VIP driver stopped")
}
