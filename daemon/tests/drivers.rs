//! The shell driver against real daemons (three, in this process, on loopback), for both
//! transports: it runs `start`/`stop` with the right environment, runs `stop` by itself
//! when its daemon dies while master — within the lease it was given plus the stop budget,
//! before the new master starts — and reconnects and converges when the daemon comes back.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clustd::local::{LocalCluster, SECRET_FILE};
use clustd::runtime::Shutdown;
use clustd_drivers::{DriverSession, ShellConfig, ShellDriver};
use clustd_transport::TransportKind;

const WAIT: Duration = Duration::from_secs(30);

both_transports!(shell_driver_follows_real_daemons);

/// `action|role|term|node|leader|prev|reason|unix-ns`, one line per script run.
fn actions(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

fn attach(cluster: &LocalCluster, i: usize, kind: TransportKind) -> (DriverSession, PathBuf) {
    let dir = cluster.dir.path();
    let name = cluster.settings[i].id.as_str();
    let log = dir.join(format!("actions-{name}.log"));
    let transport = if kind == TransportKind::Quic {
        "quic"
    } else {
        "websocket"
    };
    let line = "$CLUSTD_ROLE|$CLUSTD_TERM|$CLUSTD_NODE_ID|$CLUSTD_LEADER_ID|$CLUSTD_PREV_ROLE|$CLUSTD_REASON|$(date +%s%N)";
    let text = format!(
        "daemon = \"{}\"\ntransport = \"{transport}\"\nsecret_file = \"{SECRET_FILE}\"\ndriver_id = \"shell-{name}\"\n\n[script]\ntimeout_ms = 20000\nstart = '''echo \"start|{line}\" >> {log}'''\nstop = '''echo \"stop|{line}\" >> {log}'''\n",
        cluster.settings[i].listen,
        log = log.display()
    );
    let config = ShellConfig::parse(&dir.join(format!("shell-{name}.toml")), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session =
        clustd_drivers::connect(config.connection.clone(), ShellDriver::from_config(&config))
            .expect("driver starts");
    (session, log)
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

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

async fn shell_driver_follows_real_daemons(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let drivers: Vec<(DriverSession, PathBuf)> =
        (0..3).map(|i| attach(&cluster, i, kind)).collect();
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let term = cluster.nodes[m].handle.status().term.to_string();

    // The master's driver ran start with the full environment; the others ran stop once.
    let log = &drivers[m].1;
    wait_until("the master's driver runs start", || {
        actions(log).iter().any(|a| a[0] == "start")
    })
    .await;
    let start = actions(log)
        .into_iter()
        .find(|a| a[0] == "start")
        .expect("start");
    assert_eq!(
        start[1..7],
        [
            "master",
            &term,
            master.as_str(),
            master.as_str(),
            "backup",
            "elected"
        ]
    );
    for (i, (_, log)) in drivers.iter().enumerate() {
        if i != m {
            wait_until("backups run stop once", || !actions(log).is_empty()).await;
            let first = &actions(log)[0];
            assert_eq!(first[0..2], ["stop", "backup"], "{first:?}");
        }
    }
    // The daemon shows its driver's acknowledgement.
    wait_until("the daemon sees the driver's ack", || {
        let s = cluster.nodes[m].handle.status();
        s.drivers
            .iter()
            .any(|d| d.connected && d.acknowledged && d.last_result.as_deref() == Some("ok"))
    })
    .await;

    // The master's daemon dies: its driver stops by itself when the lease runs out.
    let killed_at = unix_ns();
    cluster.stop(m, Shutdown::Immediate).await.expect("stop");
    let after_start = |log: &Path| {
        actions(log)
            .into_iter()
            .skip_while(|a| a[0] != "start")
            .skip(1)
            .collect::<Vec<_>>()
    };
    wait_until("the orphaned driver runs stop", || {
        after_start(log).iter().any(|a| a[0] == "stop")
    })
    .await;
    let stop = after_start(log)
        .into_iter()
        .find(|a| a[0] == "stop")
        .expect("stop");
    assert_eq!(stop[0..3], ["stop", "backup", &term]);
    assert_eq!(stop[5..7], ["master", "lease-expired"]);
    let stopped_at: u128 = stop[7].parse().expect("ns");
    let core = &cluster.settings[m].core;
    let budget = (core.lease + core.stop_budget).as_nanos();
    assert!(
        stopped_at - killed_at < budget,
        "stop came {} ms after the kill",
        (stopped_at - killed_at) / 1_000_000
    );

    // The new master's start comes after that stop: never two services at once.
    let next = cluster
        .wait_for_master(Some(&master), WAIT)
        .await
        .expect("failover");
    let n = cluster.index(&next).expect("known");
    let next_log = &drivers[n].1;
    wait_until("the new master's driver runs start", || {
        actions(next_log).iter().any(|a| a[0] == "start")
    })
    .await;
    let started: u128 = actions(next_log)
        .into_iter()
        .find(|a| a[0] == "start")
        .expect("start")[7]
        .parse()
        .expect("ns");
    assert!(
        started > stopped_at,
        "new master started before the old one stopped"
    );

    // The old daemon comes back: its driver reconnects and converges (backup, acknowledged).
    cluster.restart(m).await.expect("restart");
    wait_until("the driver reconnects and acknowledges", || {
        let s = cluster.nodes[m].handle.status();
        s.drivers
            .iter()
            .any(|d| d.connected && d.acknowledged && d.last_role.as_deref() == Some("backup"))
    })
    .await;
    assert_eq!(
        actions(log).iter().filter(|a| a[0] == "start").count(),
        1,
        "no second start on the old master"
    );
    for (session, _) in drivers {
        session.shutdown().await.expect("driver shuts down");
    }
    cluster.shutdown().await;
}
