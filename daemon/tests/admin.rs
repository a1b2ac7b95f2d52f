//! The admin API over real HTTP, on its Unix socket and on loopback TCP with a token:
//! status JSON fields, metric names, commands, who may use it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clustd::admin::{Access, AdminLimits, AdminToken, Client, Endpoint, Listeners};
use clustd::local::LocalCluster;
use clustd::status::Status;
use clustd_transport::TransportKind;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

/// An admin server on a socket in `dir` (mode 0660) and on a loopback TCP port with
/// [`TOKEN`]; its socket path and TCP address.
async fn admin_server(
    dir: &std::path::Path,
    handle: clustd::runtime::Handle,
    metrics_open: bool,
    limits: AdminLimits,
) -> (
    PathBuf,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let path = dir.join("admin.sock");
    let socket = clustd_transport::bind_socket(
        &clustd_transport::LocalSocket {
            path: path.clone(),
            mode: 0o660,
            gid: None,
        },
        "admin socket",
        "admin.socket",
    )
    .expect("bind the socket");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(clustd::admin::serve_with(
        Listeners {
            socket: Some(socket),
            tcp: Some(tcp),
        },
        handle,
        Access {
            token: Some(AdminToken::new(TOKEN.into())),
            metrics_open,
        },
        limits,
        async move {
            let _ = stop_rx.await;
        },
    ));
    (path, addr, stop_tx, server)
}

fn tcp_client(addr: SocketAddr) -> Client {
    Client::new(Endpoint::Tcp {
        addr,
        token: Some(AdminToken::new(TOKEN.into())),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_commands() {
    let mut cluster = LocalCluster::start(3, TransportKind::WebSocket, "").expect("cluster");
    let master = cluster
        .wait_for_master(None, Duration::from_secs(30))
        .await
        .expect("a master");
    let i = cluster.index(&master).expect("known");
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, addr, stop_tx, server) = admin_server(
        dir.path(),
        cluster.nodes[i].handle.clone(),
        false,
        AdminLimits::default(),
    )
    .await;
    // The socket for reading, TCP with the token for the commands: both work.
    let client = Client::socket(&socket);
    let commands = tcp_client(addr);

    let json: serde_json::Value =
        serde_json::from_str(&client.status_json().await.expect("GET /status")).expect("JSON");
    for field in [
        "node_id",
        "role",
        "protocol_role",
        "term",
        "leader",
        "lease_remaining_ms",
        "maintenance",
        "peers",
        "drivers",
        "history",
        "elections_started",
        "elections_won",
        "leader_changes",
        "transport",
    ] {
        assert!(json.get(field).is_some(), "status lacks {field}: {json}");
    }
    let status: Status = serde_json::from_value(json).expect("typed");
    assert_eq!(status.role, "master");
    assert_eq!(status.node_id, master.as_str());
    assert!(status.lease_remaining_ms.is_some());
    assert_eq!(status.peers.len(), 2);
    assert!(
        status
            .history
            .iter()
            .any(|h| h.role == "master" && h.reason == "elected")
    );
    assert!(status.render().contains("is MASTER"));

    let metrics = client.metrics().await.expect("GET /metrics");
    for name in [
        "clustd_master 1",
        "clustd_term ",
        "clustd_leader_changes_total",
        "clustd_elections_started_total",
        "clustd_elections_won_total",
        "clustd_peer_up{peer=",
        "clustd_heartbeat_rtt_seconds_bucket",
        "clustd_driver_results",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }

    commands
        .post("/maintenance/on")
        .await
        .expect("POST /maintenance/on");
    let other = cluster
        .wait_for_master(Some(&master), Duration::from_secs(30))
        .await
        .expect("hand-over");
    assert_ne!(other, master);
    let status: Status =
        serde_json::from_str(&client.status_json().await.expect("status")).expect("JSON");
    assert!(status.maintenance && status.role == "backup");
    client
        .post("/maintenance/off")
        .await
        .expect("POST /maintenance/off");
    assert!(
        client.post("/nope").await.is_err(),
        "unknown paths are errors"
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    cluster.shutdown().await;
}

/// Descriptors open in this process (the daemon runs in it).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A local user opens many connections to the admin port and never sends a byte. The
/// daemon keeps at most `max_connections` of them (closing the oldest idle one for each
/// new one), closes the rest within the header timeout, and still answers `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_never_exhaust_descriptors() {
    use tokio::io::AsyncReadExt;
    const FLOOD: usize = 200;
    // One node of a three-node cluster is a real daemon; it needs no master for this.
    let (_dir, settings) =
        LocalCluster::configure(3, TransportKind::WebSocket, "").expect("configure");
    let mut node = clustd::local::LocalNode::start(&settings[0]);
    node.started().await.expect("the node runs");
    let limits = AdminLimits {
        max_connections: 16,
        header_timeout: Duration::from_secs(1),
        connection_lifetime: Duration::from_secs(10),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_socket, addr, stop_tx, server) =
        admin_server(dir.path(), node.handle.clone(), false, limits).await;
    let before = open_fds();
    // Our own FLOOD sockets, the daemon's share (at most the cap, plus a few being closed
    // or the node's own reconnect attempts to its absent peers).
    let bound = before + FLOOD + limits.max_connections + 16;

    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        assert!(open_fds() <= bound, "{} descriptors open", open_fds());
    }
    let status: Status = serde_json::from_str(
        &tcp_client(addr)
            .status_json()
            .await
            .expect("GET /status during the flood"),
    )
    .expect("JSON");
    assert_eq!(status.node_id, "node-1");
    assert!(open_fds() <= bound, "{} descriptors open", open_fds());

    // Every idle connection is closed by the daemon (EOF, or a reset), well within WAIT.
    let mut buf = [0u8; 64];
    for (i, stream) in idle.iter_mut().enumerate() {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "idle connection {i} not closed by the daemon: {read:?}"
        );
        assert!(open_fds() <= bound, "{} descriptors open", open_fds());
    }
    drop(idle);
    // And the daemon holds none of them any more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while open_fds() > before + 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} descriptors open, {before} before the flood",
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving.
    tcp_client(addr)
        .status_json()
        .await
        .expect("GET /status after the flood");

    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = node.stop(clustd::Shutdown::Immediate).await;
}

/// Over TCP every request needs the token (except an opened `/metrics`), and no POST a
/// browser could send is obeyed, on TCP or the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_the_token_and_browsers_cannot_post() {
    let (_dir, settings) =
        LocalCluster::configure(3, TransportKind::WebSocket, "").expect("configure");
    let mut node = clustd::local::LocalNode::start(&settings[0]);
    node.started().await.expect("the node runs");
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, addr, stop_tx, server) = admin_server(
        dir.path(),
        node.handle.clone(),
        true,
        AdminLimits::default(),
    )
    .await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = |path: &str| format!("http://{addr}{path}");
    let status_of = |r: reqwest::Response| r.status().as_u16();

    let none = http.get(url("/status")).send().await.expect("answered");
    assert_eq!(status_of(none), 401, "no token");
    let wrong = http
        .get(url("/status"))
        .bearer_auth("0123456789abcdef0123456789abcdef-wrong")
        .send()
        .await
        .expect("answered");
    assert_eq!(status_of(wrong), 401, "wrong token");
    let short = http
        .get(url("/status"))
        .bearer_auth("0123")
        .send()
        .await
        .expect("answered");
    assert_eq!(status_of(short), 401, "a prefix of nothing");
    let body = http
        .post(url("/step-down"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("body");
    assert!(
        body.contains("admin.token_file"),
        "the 401 says what to do: {body}"
    );
    let right = http
        .get(url("/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answered");
    assert_eq!(status_of(right), 200, "the token");
    // admin.metrics_open: /metrics without the token, nothing else.
    let metrics = http.get(url("/metrics")).send().await.expect("answered");
    assert_eq!(status_of(metrics), 200, "metrics_open");

    // A cross-origin POST (a page the operator's browser has open) and a text/plain one.
    for (name, request) in [
        (
            "cross-origin",
            http.post(url("/maintenance/on"))
                .bearer_auth(TOKEN)
                .header("origin", "http://evil.example")
                .header("content-type", "application/json")
                .body("{}"),
        ),
        (
            "text/plain",
            http.post(url("/maintenance/on"))
                .bearer_auth(TOKEN)
                .header("content-type", "text/plain")
                .body("{}"),
        ),
        (
            "no content type",
            http.post(url("/maintenance/on")).bearer_auth(TOKEN),
        ),
    ] {
        let code = status_of(request.send().await.expect("answered"));
        let want = if name == "cross-origin" { 403 } else { 415 };
        assert_eq!(code, want, "{name}");
    }
    let status: Status =
        serde_json::from_str(&Client::socket(&socket).status_json().await.expect("status"))
            .expect("JSON");
    assert!(!status.maintenance, "none of them switched maintenance on");

    // The same refusal on the socket (a browser cannot reach it, but a proxy might).
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/maintenance/on")
        .header("host", "localhost")
        .header("origin", "http://evil.example")
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{}"))
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(
        response.status().as_u16(),
        403,
        "cross-origin on the socket"
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = node.stop(clustd::Shutdown::Immediate).await;
}

/// The socket is mode 0660: a local user who is neither its owner nor in its group cannot
/// even connect (a child run as `nobody`), while its owner can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_keeps_out_users_without_its_group() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test must not skip there"
        );
        eprintln!("SKIPPED: needs root to run a child as nobody");
        return;
    }
    let (_dir, settings) =
        LocalCluster::configure(3, TransportKind::WebSocket, "").expect("configure");
    let mut node = clustd::local::LocalNode::start(&settings[0]);
    node.started().await.expect("the node runs");
    let dir = tempfile::tempdir().expect("tempdir");
    // Only the socket's own mode may keep nobody out, not its directory's.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (socket, _addr, stop_tx, server) = admin_server(
        dir.path(),
        node.handle.clone(),
        false,
        AdminLimits::default(),
    )
    .await;
    let meta = std::fs::metadata(&socket).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "mode 0660");

    // perl is in every Debian base system (perl-base), and executable by anyone.
    let connect = |as_nobody: bool| {
        let script = "use IO::Socket::UNIX; IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\\n\"; print \"connected\\n\"";
        let mut cmd = std::process::Command::new(if as_nobody {
            "setpriv"
        } else {
            "/usr/bin/perl"
        });
        if as_nobody {
            cmd.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/perl",
            ]);
        }
        cmd.args(["-e", script])
            .arg(&socket)
            .output()
            .expect("runs")
    };
    let nobody = connect(true);
    assert!(!nobody.status.success(), "nobody connected: {nobody:?}");
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("connect: Permission denied"),
        "refused for permission: {}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    let owner = connect(false);
    assert!(owner.status.success(), "the owner connects: {owner:?}");

    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = node.stop(clustd::Shutdown::Immediate).await;
}

/// The CLI as an operator runs it on real daemons: `clustd status --config` and
/// `clustd step-down --config` find the admin socket through the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_admin_socket_through_the_config() {
    use common::procs::{ProcCluster, clustd_bin};
    let cluster = ProcCluster::start_plain(TransportKind::Quic)
        .await
        .expect("cluster");
    let master = cluster.one_master(Duration::from_secs(60)).await;
    let config = |id: &str| cluster.dir.path().join(format!("{id}.toml"));
    let clustd = |args: &[&str], id: &str| {
        let out = std::process::Command::new(clustd_bin())
            .args(args)
            .arg("--config")
            .arg(config(id))
            .output()
            .expect("clustd runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = clustd(&["status"], &master);
    assert!(
        ok && out.contains(&master) && out.contains("MASTER"),
        "{out}{err}"
    );
    let (ok, out, err) = clustd(&["status", "--tcp"], &master);
    assert!(
        !ok && err.contains("admin.listen") && err.contains("--tcp"),
        "{out}{err}"
    );
    let (ok, out, err) = clustd(&["status", "--json"], &master);
    assert!(ok && out.contains("\"role\":\"master\""), "{out}{err}");
    // GET /leader: 200 on the master only (a load balancer's health check).
    let m = cluster.index(&master);
    let backup = (m + 1) % 3;
    let leader = cluster.nodes[m]
        .admin
        .get("/leader")
        .await
        .expect("200 on the master");
    assert!(
        leader.contains(&format!("\"node_id\":\"{master}\"")),
        "{leader}"
    );
    match cluster.nodes[backup].admin.get("/leader").await {
        Err(clustd::admin::ClientError::Refused { status: 503, .. }) => {}
        other => panic!("a backup answers /leader with 503, not {other:?}"),
    }
    // step-down on a backup: refused, naming the master, with a non-zero exit.
    let backup_id = cluster.nodes[backup].id.clone();
    let (ok, out, err) = clustd(&["step-down"], &backup_id);
    assert!(
        !ok && err.contains(&format!(
            "{backup_id} is not master (the master is {master})"
        )),
        "{out}{err}"
    );
    let (ok, out, err) = clustd(&["step-down"], &master);
    assert!(ok, "{out}{err}");
    cluster
        .wait_for("another master", Duration::from_secs(60), || async {
            let m = cluster.masters().await;
            (m.len() == 1 && m[0] != master).then_some(())
        })
        .await;
}

/// The cluster view and the commands that move mastership, as an operator uses them on
/// real daemons: `status --all` from a backup shows every node (carried through the
/// cluster); `step-down --to` from a backup switches over to the named node; maintenance
/// and step-down that would leave no eligible node are refused without `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_all_switchover_and_refusals_that_would_leave_no_master() {
    use common::procs::{ProcCluster, clustd_bin};
    let cluster = ProcCluster::start_plain(TransportKind::WebSocket)
        .await
        .expect("cluster");
    let master = cluster.one_master(Duration::from_secs(60)).await;
    let m = cluster.index(&master);
    let (b, t) = ((m + 1) % 3, (m + 2) % 3);
    let (backup, target) = (cluster.nodes[b].id.clone(), cluster.nodes[t].id.clone());
    let config = |i: usize| {
        cluster
            .dir
            .path()
            .join(format!("{}.toml", cluster.nodes[i].id))
    };
    let clustd = |args: &[&str], i: usize| {
        let out = std::process::Command::new(clustd_bin())
            .args(args)
            .arg("--config")
            .arg(config(i))
            .output()
            .expect("clustd runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Node `i`'s view, once `ok` holds for it.
    let view_when = |i: usize, what: &'static str, ok: fn(&serde_json::Value) -> bool| {
        let admin = cluster.nodes[i].admin.clone();
        let cluster = &cluster;
        async move {
            cluster
                .wait_for(what, Duration::from_secs(30), || {
                    let admin = admin.clone();
                    async move {
                        let body = admin.get("/cluster").await.ok()?;
                        let view: serde_json::Value = serde_json::from_str(&body).ok()?;
                        ok(&view).then_some(view)
                    }
                })
                .await
        }
    };
    let all_heard = |v: &serde_json::Value| {
        v["nodes"].as_array().is_some_and(|n| {
            n.len() == 3
                && n.iter()
                    .all(|n| n["heard"] == true && n["eligible"] == true)
        }) && !v["master"].is_null()
    };
    let view = view_when(b, "every node heard from, and a master", all_heard).await;
    assert_eq!(view["master"], master.as_str(), "{view}");
    // The table, from a backup: every node, the master marked, its driver's result.
    let (ok, out, err) = clustd(&["status", "--all"], b);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("cluster as {backup} sees it: master {master}")),
        "{out}"
    );
    let row = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("a row for {id} in {out}"))
            .to_owned()
    };
    assert!(
        row(&master).contains("MASTER") && row(&master).contains("shell"),
        "{out}"
    );
    assert!(
        row(&target).contains("backup") && row(&backup).contains("this node"),
        "{out}"
    );
    assert!(
        !out.contains("!!"),
        "no warnings in a healthy cluster: {out}"
    );

    // Switchover from a backup to the other backup (not necessarily the best-ranked one).
    let (ok, out, err) = clustd(&["step-down", "--to", &target], b);
    assert!(
        ok && out.contains(&format!("{target} is master now")),
        "{out}{err}"
    );
    assert_eq!(cluster.masters().await, vec![target.clone()]);
    // To a node that does not exist, or is already master: refused, saying so.
    let (ok, _, err) = clustd(&["step-down", "--to", "node-9"], m);
    assert!(!ok && err.contains("no node \"node-9\""), "{err}");
    let (ok, _, err) = clustd(&["step-down", "--to", &target], m);
    assert!(
        !ok && err.contains(&format!("{target} is already master")),
        "{err}"
    );

    // The two backups go into maintenance: allowed, the master stays eligible.
    for i in [m, b] {
        let (ok, out, err) = clustd(&["maintenance", "on"], i);
        assert!(ok, "{out}{err}");
    }
    view_when(
        t,
        "both backups in maintenance, as the master hears it",
        |v| {
            v["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .filter(|n| n["maintenance"] == true && n["heard"] == true)
                    .count()
                    == 2
            })
        },
    )
    .await;
    // A switchover to a node in maintenance is refused.
    let (ok, _, err) = clustd(&["step-down", "--to", &backup], t);
    assert!(
        !ok && err.contains(&format!(
            "cannot hand over to {backup}: it is in maintenance"
        )),
        "{err}"
    );
    // Maintenance on the master, or a step-down, would leave no master: refused.
    let (ok, _, err) = clustd(&["maintenance", "on"], t);
    assert!(
        !ok && err.contains("would leave no node eligible to be master") && err.contains("--force"),
        "{err}"
    );
    let (ok, _, err) = clustd(&["step-down"], t);
    assert!(
        !ok && err.contains("no eligible successor") && err.contains("in maintenance"),
        "{err}"
    );
    assert_eq!(
        cluster.masters().await,
        vec![target.clone()],
        "nothing moved"
    );
    // With --force it steps down, and says the cluster has no master.
    let (ok, out, err) = clustd(&["step-down", "--force"], t);
    assert!(ok && out.contains("no eligible successor"), "{out}{err}");
    let view = view_when(t, "a view with no master", |v| v["master"].is_null()).await;
    assert!(view["warnings"].to_string().contains("no master"), "{view}");
    // Maintenance off on one backup: it takes over.
    let (ok, out, err) = clustd(&["maintenance", "off"], b);
    assert!(ok, "{out}{err}");
    cluster
        .wait_for("a master again", Duration::from_secs(60), || async {
            let masters = cluster.masters().await;
            (masters.len() == 1).then_some(())
        })
        .await;
}

/// `clustd reload` and `SIGHUP` on a real daemon: what may change is applied and named; an
/// invalid file, a changed peer set or an unsafe timing is refused naming the key, and the
/// old config keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_what_may_change_and_refuses_the_rest() {
    use common::procs::{ProcCluster, clustd_bin};
    let cluster = ProcCluster::start_plain(TransportKind::Quic)
        .await
        .expect("cluster");
    let master = cluster.one_master(Duration::from_secs(60)).await;
    let b = (cluster.index(&master) + 1) % 3;
    let path = cluster
        .dir
        .path()
        .join(format!("{}.toml", cluster.nodes[b].id));
    let original = std::fs::read_to_string(&path).expect("config");
    let reload = || {
        let out = std::process::Command::new(clustd_bin())
            .args(["reload", "--config"])
            .arg(&path)
            .output()
            .expect("clustd runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let with = |from: &str, to: &str| {
        assert!(original.contains(from), "{from:?} in {original}");
        std::fs::write(&path, original.replacen(from, to, 1)).expect("write config");
    };
    // Nothing changed: says so.
    let (ok, out, err) = reload();
    assert!(ok && out.contains("nothing changed"), "{out}{err}");
    // Priority and maintenance: applied, and named.
    with("[election]\n", "[election]\npriority = 9\n");
    let (ok, out, err) = reload();
    assert!(
        ok && out.contains("election.priority: 0 -> 9"),
        "{out}{err}"
    );
    with("[node]\n", "[node]\nmaintenance = true\n");
    let (ok, out, err) = reload();
    assert!(
        ok && out.contains("node.maintenance: false -> true"),
        "{out}{err}"
    );
    let status = cluster.status(b).await.expect("status");
    assert_eq!(status["maintenance"], true, "{status}");
    // An invalid file: refused naming the key; the daemon runs on with the old config.
    with("[election]\n", "[election]\nno_such_key = 1\n");
    let (ok, out, err) = reload();
    assert!(!ok && err.contains("no_such_key"), "{out}{err}");
    // A longer lease is refused (a peer on the old timings could time the master out).
    with(
        "election_timeout_ms = [1000, 2000]",
        "election_timeout_ms = [1200, 2400]\nlease_ms = 800",
    );
    let (ok, out, err) = reload();
    assert!(
        !ok && err.contains("election.lease_ms") && err.contains("only shortens"),
        "{out}{err}"
    );
    // A changed peer set: refused, saying membership changes need a restart.
    let peer = original
        .split("addr = \"127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a peer port")
        .to_owned();
    with(&format!("127.0.0.1:{peer}"), "127.0.0.1:9");
    let (ok, out, err) = reload();
    assert!(!ok && err.contains("cluster.peers changed"), "{out}{err}");
    let status = cluster.status(b).await.expect("still running");
    assert_eq!(status["maintenance"], true, "{status}");
    // SIGHUP reloads too: maintenance off again.
    std::fs::write(&path, &original).expect("write config");
    cluster.signal_daemon(b, "HUP");
    cluster
        .wait_for(
            "maintenance off after SIGHUP",
            Duration::from_secs(30),
            || async {
                let s = cluster.status(b).await?;
                (s["maintenance"] == false).then_some(())
            },
        )
        .await;
    let log = std::fs::read_to_string(&cluster.nodes[b].daemon_log).expect("log");
    assert!(
        log.contains("config reloaded") && log.contains("config not reloaded"),
        "{log}"
    );
    assert_eq!(
        cluster.masters().await,
        vec![master],
        "no reload moved mastership"
    );
}

/// `log.level` applies at start and on reload (when `RUST_LOG` does not decide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_is_set_by_the_config_and_reloaded() {
    use common::procs::{ProcCluster, clustd_bin};
    let cluster = ProcCluster::start_plain_env(TransportKind::Quic, &[("RUST_LOG", "")])
        .await
        .expect("cluster");
    cluster.one_master(Duration::from_secs(60)).await;
    let path = cluster.dir.path().join("node-1.toml");
    let log = cluster.nodes[0].daemon_log.clone();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // An empty RUST_LOG is as good as none: info, not errors only.
    cluster
        .wait_for("INFO lines at start", Duration::from_secs(30), || {
            let found = text().contains(" INFO ");
            async move { found.then_some(()) }
        })
        .await;
    assert!(!text().contains(" DEBUG "), "info by default:\n{}", text());
    let mut config = std::fs::read_to_string(&path).expect("config");
    config.push_str("\n[log]\nlevel = \"debug\"\n");
    std::fs::write(&path, &config).expect("write");
    let out = std::process::Command::new(clustd_bin())
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .expect("clustd runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("log.level: unset -> debug")
            && !stdout.contains("not applied"),
        "{stdout}"
    );
    // A steady cluster may log nothing at debug: stop a peer, so node-1's transport says at
    // debug that the connection ended.
    cluster.signal_daemon(2, "KILL");
    cluster
        .wait_for(
            "DEBUG lines after the reload",
            Duration::from_secs(30),
            || {
                let found = text().contains(" DEBUG ");
                async move { found.then_some(()) }
            },
        )
        .await;
    // An invalid filter is refused naming the key.
    std::fs::write(&path, config.replace("level = \"debug\"", "level = \"=[\"")).expect("write");
    let out = std::process::Command::new(clustd_bin())
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .expect("clustd runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("log.level"),
        "{stderr}"
    );
}

/// A switchover that a preempting node of higher priority would undo at once is refused
/// with that reason, from any node (the master is that node here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_that_preemption_would_undo_is_refused() {
    use common::procs::{NodeSpec, ProcCluster, clustd_bin};
    let specs: Vec<NodeSpec> = (0..3)
        .map(|i| NodeSpec {
            daemon_toml: if i == 0 {
                "priority = 9\npreempt = true\n".into()
            } else {
                String::new()
            },
            start: "true".into(),
            stop: "true".into(),
            socket: true,
        })
        .collect();
    let cluster = ProcCluster::start(
        tempfile::tempdir().expect("tempdir"),
        TransportKind::Quic,
        "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]",
        &specs,
    )
    .await
    .expect("cluster");
    cluster
        .wait_for(
            "node-1 (priority 9, preempt) master",
            Duration::from_secs(60),
            || async { (cluster.masters().await == vec!["node-1".to_owned()]).then_some(()) },
        )
        .await;
    // Every node heard, as node-3 sees it.
    cluster
        .wait_for("node-3 hears everyone", Duration::from_secs(30), || async {
            let body = cluster.nodes[2].admin.get("/cluster").await.ok()?;
            let view: serde_json::Value = serde_json::from_str(&body).ok()?;
            view["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["heard"] == true && n["eligible"] == true)
                .then_some(())
        })
        .await;
    let config = cluster.dir.path().join("node-3.toml");
    let out = std::process::Command::new(clustd_bin())
        .args(["step-down", "--to", "node-2", "--config"])
        .arg(&config)
        .output()
        .expect("clustd runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err
                .contains("node-1 (priority 9, preempt on) would take mastership back from node-2"),
        "{err}"
    );
    assert_eq!(
        cluster.masters().await,
        vec!["node-1".to_owned()],
        "nothing moved"
    );
}
