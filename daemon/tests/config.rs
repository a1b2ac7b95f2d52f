//! Every config error names the file, the key and what to do.

use std::path::Path;

use clustd::config::Settings;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn config(node: &str, cluster: &str, election: &str) -> String {
    format!("[node]\n{node}\n\n[cluster]\n{cluster}\n\n[election]\n{election}\n")
}

fn good_node() -> &'static str {
    "id = \"node-1\"\ndata_dir = \"data\""
}

fn good_cluster() -> String {
    format!(
        "transport = \"quic\"\nlisten = \"127.0.0.1:7400\"\nsecret = \"{SECRET}\"\npeers = [{{ id = \"node-2\", addr = \"127.0.0.1:7402\" }}, {{ id = \"node-3\", addr = \"127.0.0.1:7403\" }}]"
    )
}

fn parse(text: &str) -> Result<Settings, String> {
    Settings::parse(text, "test.toml", Path::new("/etc/clustd"))
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

#[test]
fn a_good_config_parses_with_defaults() {
    let s = parse(&config(good_node(), &good_cluster(), "")).expect("valid");
    assert_eq!(s.id.as_str(), "node-1");
    assert_eq!(s.peers.len(), 2);
    assert_eq!(s.core.election_timeout_min.as_millis(), 1000);
    assert_eq!(s.core.lease.as_millis(), 714);
    assert_eq!(
        s.admin.socket.path,
        Path::new("/etc/clustd/data/admin.sock")
    );
    assert_eq!(s.admin.socket.mode, 0o660);
    assert!(s.admin.listen.is_none(), "no TCP unless asked for");
    assert_eq!(s.data_dir, Path::new("/etc/clustd/data"));
}

#[test]
fn table_of_errors_names_the_key() {
    let cluster = good_cluster();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown key",
            config(good_node(), &cluster, "heartbeat = 5"),
            "election",
            "unknown field `heartbeat`",
        ),
        (
            "unknown table",
            format!("{}\n[extra]\nx = 1\n", config(good_node(), &cluster, "")),
            "extra (line 14)",
            "unknown field `extra`",
        ),
        ("syntax error", "[node\nid = 1".to_string(), "line 1", ""),
        (
            "wrong type",
            config("id = 5\ndata_dir = \"d\"", &cluster, ""),
            "node.id",
            "invalid type",
        ),
        (
            "bad node id",
            config("id = \"node 1\"\ndata_dir = \"d\"", &cluster, ""),
            "node.id",
            "may contain only",
        ),
        (
            "peer is self",
            config(good_node(), &cluster.replace("node-3", "node-1"), ""),
            "cluster.peers[1].id",
            "is this node",
        ),
        (
            "duplicate peer",
            config(good_node(), &cluster.replace("node-3", "node-2"), ""),
            "cluster.peers[1].id",
            "listed twice",
        ),
        (
            "bad address",
            config(
                good_node(),
                &cluster.replace("127.0.0.1:7403", "nowhere"),
                "",
            ),
            "cluster.peers[1].addr",
            "is not an IP address with a port, like 192.0.2.12:7400",
        ),
        (
            "bad transport",
            config(good_node(), &cluster.replace("\"quic\"", "\"tcp\""), ""),
            "cluster.transport",
            "unknown variant",
        ),
        (
            "short secret",
            config(good_node(), &cluster.replace(SECRET, "tooshort"), ""),
            "cluster.secret",
            "at least 32",
        ),
        (
            "no secret",
            config(
                good_node(),
                &cluster.replace(&format!("secret = \"{SECRET}\"\n"), ""),
                "",
            ),
            "cluster.secret_file",
            "clustd keygen",
        ),
        (
            "inverted timeouts",
            config(good_node(), &cluster, "election_timeout_ms = [2000, 1000]"),
            "election.election_timeout_ms",
            "not a range",
        ),
        (
            "unsafe lease",
            config(good_node(), &cluster, "lease_ms = 900"),
            "election.lease_ms",
            "lease/(1-drift)",
        ),
        (
            "stop budget too big",
            config(good_node(), &cluster, "stop_budget_ms = 960"),
            "election.stop_budget_ms",
            "unsafe",
        ),
        (
            "slow heartbeat",
            config(good_node(), &cluster, "heartbeat_ms = 500"),
            "election.heartbeat_ms",
            "at most half the lease",
        ),
        (
            "drift",
            config(good_node(), &cluster, "max_clock_drift = 0.7"),
            "election.max_clock_drift",
            "below 0.5",
        ),
        (
            "margin",
            config(good_node(), &cluster, "driver_lease_margin_ms = 800"),
            "election.driver_lease_margin_ms",
            "below the lease",
        ),
    ];
    for (name, text, key, needle) in cases {
        let err = parse(&text).expect_err(name);
        assert!(
            err.starts_with("test.toml: "),
            "{name}: names the file: {err}"
        );
        assert!(err.contains(key), "{name}: names {key}: {err}");
        assert!(err.contains(needle), "{name}: says {needle:?}: {err}");
        assert!(
            !err.contains(SECRET),
            "{name}: never prints the secret: {err}"
        );
    }
}

/// A secret of the wrong type is still a secret (or a typo of one): the error names the key
/// and the expected type, never the value.
#[test]
fn a_wrongly_typed_secret_is_never_echoed() {
    let cases = [
        ("integer", "secret = 987654321987", "987654321987"),
        ("array", "secret = [\"hunter2hunter2\", 42]", "hunter2"),
        ("table", "secret = { k = \"hunter2hunter2\" }", "hunter2"),
        ("float", "secret = 31415.9265", "31415"),
        ("bool", "secret = true", "true"),
    ];
    for (name, line, value) in cases {
        let cluster = good_cluster().replace(&format!("secret = \"{SECRET}\""), line);
        let err = parse(&config(good_node(), &cluster, "")).expect_err(name);
        assert!(
            err.contains("cluster.secret"),
            "{name}: names the key: {err}"
        );
        assert!(err.contains("must be a string"), "{name}: says why: {err}");
        assert!(!err.contains(value), "{name}: echoes the value: {err}");
    }
}

#[cfg(unix)]
#[test]
fn secret_file_checks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cluster = good_cluster().replace(
        &format!("secret = \"{SECRET}\""),
        "secret_file = \"secret\"",
    );
    let (settings, warnings) =
        Settings::parse(&config(good_node(), &cluster, ""), "test.toml", dir.path())
            .expect("valid");
    assert_eq!(settings.id.as_str(), "node-1");
    assert!(
        warnings.iter().any(|w| w.0.contains("chmod 600")),
        "{warnings:?}"
    );
    // Readable by the group alone is worth a warning too.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (_, warnings) =
        Settings::parse(&config(good_node(), &cluster, ""), "test.toml", dir.path())
            .expect("valid");
    assert!(
        warnings
            .iter()
            .any(|w| w.0.contains("accessible to its group") && w.0.contains("chmod 600")),
        "{warnings:?}"
    );

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (_, warnings) =
        Settings::parse(&config(good_node(), &cluster, ""), "test.toml", dir.path())
            .expect("valid");
    assert!(
        !warnings.iter().any(|w| w.0.contains("chmod")),
        "{warnings:?}"
    );

    std::fs::write(&secret, "short\n").expect("write");
    let err = Settings::parse(&config(good_node(), &cluster, ""), "test.toml", dir.path())
        .expect_err("short")
        .to_string();
    assert!(
        err.contains("cluster.secret_file") && err.contains("at least 32"),
        "{err}"
    );

    std::fs::write(&secret, vec![b'x'; 5000]).expect("write");
    let err = Settings::parse(&config(good_node(), &cluster, ""), "test.toml", dir.path())
        .expect_err("huge")
        .to_string();
    assert!(
        err.contains("cluster.secret_file") && err.contains("longer than 4096"),
        "{err}"
    );

    let missing = cluster.replace("\"secret\"", "\"nope\"");
    let err = Settings::parse(&config(good_node(), &missing, ""), "test.toml", dir.path())
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("cluster.secret_file") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn two_node_cluster_warns_and_witness_is_accepted() {
    let two = good_cluster().replace(", { id = \"node-3\", addr = \"127.0.0.1:7403\" }", "");
    let (_, warnings) =
        Settings::parse(&config(good_node(), &two, ""), "t.toml", Path::new(".")).expect("valid");
    assert!(
        warnings.iter().any(|w| w.0.contains("witness")),
        "{warnings:?}"
    );
    let witness = "id = \"node-1\"\ndata_dir = \"d\"\nwitness = true";
    let s = parse(&config(witness, &good_cluster(), "")).expect("valid");
    assert!(s.core.witness);
}

const DRIVER_SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// A cluster as README recommends it: node keys and a drivers' credential, in files.
fn keyed(dir: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt;
    let private = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    private("secret", SECRET);
    private("driver-secret", DRIVER_SECRET);
    let mut publics = Vec::new();
    for n in 1..=3 {
        let path = dir.join(format!("node-{n}.key"));
        publics.push(clustd::config::write_node_key(&path).expect("keygen"));
    }
    let node = "id = \"node-1\"\ndata_dir = \"data\"\nkey_file = \"node-1.key\"".to_string();
    let cluster = format!(
        "transport = \"quic\"\nlisten = \"127.0.0.1:7400\"\nsecret_file = \"secret\"\ndriver_secret_file = \"driver-secret\"\npeers = [{{ id = \"node-2\", addr = \"127.0.0.1:7402\", key = \"{}\" }}, {{ id = \"node-3\", addr = \"127.0.0.1:7403\", key = \"{}\" }}]",
        publics[1], publics[2]
    );
    (node, cluster)
}

#[cfg(unix)]
#[test]
fn a_keyed_config_parses_without_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, cluster) = keyed(dir.path());
    let (settings, warnings) =
        Settings::parse(&config(&node, &cluster, ""), "test.toml", dir.path()).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(settings.peer_keys.len(), 2);
    assert!(settings.node_key.is_some() && settings.driver_secret.is_some());
    // The legacy shape still loads, and says what it lacks.
    let (_, warnings) = Settings::parse(
        &config(good_node(), &good_cluster(), ""),
        "t.toml",
        dir.path(),
    )
    .expect("valid");
    let text = format!("{warnings:?}");
    assert!(
        text.contains("node-2, node-3") && text.contains("cluster secret alone"),
        "{text}"
    );
    assert!(text.contains("driver_secret_file is not set"), "{text}");
}

#[cfg(unix)]
#[test]
fn key_errors_name_the_key_and_never_print_key_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, cluster) = keyed(dir.path());
    let own_private = std::fs::read_to_string(dir.path().join("node-1.key")).expect("read");
    let own_public = clustd::config::public_key_of_file(&dir.path().join("node-1.key"))
        .expect("public")
        .to_string();
    let peer2 = clustd::config::public_key_of_file(&dir.path().join("node-2.key"))
        .expect("public")
        .to_string();
    std::fs::write(dir.path().join("bad.key"), "a passphrase, not a key\n").expect("write");
    let cases: Vec<(&str, String, String, &str, &str)> = vec![
        (
            "peers have keys, this node has none",
            node.replace("\nkey_file = \"node-1.key\"", ""),
            cluster.clone(),
            "node.key_file",
            "keygen --node",
        ),
        (
            "a peer key that is not hex",
            node.clone(),
            cluster.replacen(&peer2, "not-a-key", 1),
            "cluster.peers[0].key",
            "64 hex characters",
        ),
        (
            "our own key listed for a peer",
            node.clone(),
            cluster.replacen(&peer2, &own_public, 1),
            "cluster.peers[0].key",
            "this node's own public key",
        ),
        (
            "two peers with one key",
            node.clone(),
            cluster.replace(
                &clustd::config::public_key_of_file(&dir.path().join("node-3.key"))
                    .expect("public")
                    .to_string(),
                &peer2,
            ),
            "cluster.peers[1].key",
            "same key as node-2",
        ),
        (
            "a node key file that is not a key",
            node.replace("node-1.key", "bad.key"),
            cluster.clone(),
            "node.key_file",
            "64 hex characters",
        ),
        (
            "the drivers' credential is the cluster secret",
            node.clone(),
            cluster.replace(
                "driver_secret_file = \"driver-secret\"",
                "driver_secret_file = \"secret\"",
            ),
            "cluster.driver_secret_file",
            "must be a different secret",
        ),
    ];
    for (name, node, cluster, key, needle) in cases {
        let err = Settings::parse(&config(&node, &cluster, ""), "test.toml", dir.path())
            .expect_err(name)
            .to_string();
        assert!(err.contains(key), "{name}: names {key}: {err}");
        assert!(err.contains(needle), "{name}: says {needle:?}: {err}");
        for secret in [SECRET, DRIVER_SECRET, own_private.trim()] {
            assert!(
                !err.contains(secret),
                "{name}: prints secret material: {err}"
            );
        }
    }
}

/// A config with `extra` (e.g. `[[check]]` tables) appended.
fn with_checks(extra: &str) -> String {
    format!("{}\n{extra}\n", config(good_node(), &good_cluster(), ""))
}

fn parse_with_warnings(text: &str) -> Result<(Settings, Vec<String>), String> {
    Settings::parse(text, "test.toml", Path::new("/etc/clustd"))
        .map(|(s, w)| (s, w.into_iter().map(|w| w.0).collect()))
        .map_err(|e| e.to_string())
}

#[test]
fn checks_and_health_parse_with_defaults() {
    use clustd::config::CheckKind;
    use std::time::Duration;
    let (s, _) = parse_with_warnings(&with_checks(
        r#"
[[check]]
name = "web"
exec = "curl -fsS http://127.0.0.1:8080/health"

[[check]]
name = "api"
http = "https://localhost:8443/health"
interval_ms = 500
timeout_ms = 400
fall = 1
rise = 5

[[check]]
name = "db.primary_1"
tcp = "localhost:5432"

[[check]]
name = "v6"
tcp = "[::1]:5432"

[health]
alone = "step-down"
min_master_ms = 5000
start_failure_ms = 1000
"#,
    ))
    .expect("valid");
    assert_eq!(s.checks.len(), 4);
    let web = &s.checks[0];
    assert_eq!(web.name, "web");
    assert_eq!(
        web.kind,
        CheckKind::Exec {
            command: "curl -fsS http://127.0.0.1:8080/health".into()
        }
    );
    assert_eq!(
        (web.interval, web.timeout, web.fall, web.rise),
        (
            Duration::from_millis(1000),
            Duration::from_millis(2000),
            3,
            2
        )
    );
    let api = &s.checks[1];
    assert!(
        matches!(&api.kind, CheckKind::Http { url } if url.as_str() == "https://localhost:8443/health")
    );
    assert_eq!((api.fall, api.rise), (1, 5));
    assert_eq!(
        s.checks[2].kind,
        CheckKind::Tcp {
            addr: "localhost:5432".into()
        }
    );
    assert_eq!(s.core.alone, clustd_core::Alone::StepDown);
    assert_eq!(s.core.min_master, Duration::from_millis(5000));
    assert_eq!(s.health.start_failure, Duration::from_millis(1000));

    // No checks, no [health]: none, and the defaults.
    let (s, _) = parse_with_warnings(&with_checks("")).expect("valid");
    assert!(s.checks.is_empty());
    assert_eq!(s.core.alone, clustd_core::Alone::Stay);
    assert_eq!(s.core.min_master, Duration::from_secs(30));
    assert_eq!(s.health.start_failure, Duration::from_secs(60));
}

#[test]
fn table_of_check_errors_names_the_check_and_the_key() {
    let check = |body: &str| {
        with_checks(&format!(
            "[[check]]\nname = \"ok\"\ntcp = \"127.0.0.1:1\"\n\n[[check]]\n{body}"
        ))
    };
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "no kind",
            check("name = \"web\""),
            "check[1] (web).exec",
            "exactly one of exec (a command), http (a URL) or tcp",
        ),
        (
            "two kinds",
            check("name = \"web\"\nexec = \"true\"\ntcp = \"127.0.0.1:1\""),
            "check[1] (web).tcp",
            "exec and tcp are all set: a check has exactly one of exec, http, tcp",
        ),
        (
            "unknown kind",
            check("name = \"web\"\ngrpc = \"127.0.0.1:1\""),
            "check[1] (web).grpc",
            "unknown key: a check has exactly one of exec, http, tcp",
        ),
        (
            "fall 0",
            check("name = \"web\"\nexec = \"true\"\nfall = 0"),
            "check[1] (web).fall",
            "at least 1",
        ),
        (
            "rise 0",
            check("name = \"web\"\nexec = \"true\"\nrise = 0"),
            "check[1] (web).rise",
            "at least 1",
        ),
        (
            "interval 0",
            check("name = \"web\"\nexec = \"true\"\ninterval_ms = 0"),
            "check[1] (web).interval_ms",
            "positive",
        ),
        (
            "timeout 0",
            check("name = \"web\"\nexec = \"true\"\ntimeout_ms = 0"),
            "check[1] (web).timeout_ms",
            "positive",
        ),
        (
            "wrong type",
            check("name = \"web\"\nexec = \"true\"\nfall = \"3\""),
            "check[1] (web).fall",
            "invalid type",
        ),
        (
            "empty command",
            check("name = \"web\"\nexec = \"  \""),
            "check[1] (web).exec",
            "empty",
        ),
        (
            "not a url",
            check("name = \"web\"\nhttp = \"127.0.0.1:8080/health\""),
            "check[1] (web).http",
            "not a URL",
        ),
        (
            "empty url",
            check("name = \"web\"\nhttp = \"\""),
            "check[1] (web).http",
            "not a URL",
        ),
        (
            "ftp url",
            check("name = \"web\"\nhttp = \"ftp://127.0.0.1/health\""),
            "check[1] (web).http",
            "not an http:// or https:// URL",
        ),
        (
            "no port",
            check("name = \"db\"\ntcp = \"127.0.0.1\""),
            "check[1] (db).tcp",
            "not host:port",
        ),
        (
            "port 0",
            check("name = \"db\"\ntcp = \"localhost:0\""),
            "check[1] (db).tcp",
            "not host:port",
        ),
        (
            "bad host",
            check("name = \"db\"\ntcp = \"local host:5432\""),
            "check[1] (db).tcp",
            "not host:port",
        ),
        (
            "bare v6",
            check("name = \"db\"\ntcp = \"::1:5432\""),
            "check[1] (db).tcp",
            "[::1]:5432",
        ),
        (
            "no name",
            check("exec = \"true\""),
            "check[1].name",
            "missing: give every check a unique name",
        ),
        (
            "bad name",
            check("name = \"we b\"\nexec = \"true\""),
            "check[1].name",
            "A-Z a-z 0-9 . _ -",
        ),
        (
            "long name",
            check(&format!("name = \"{}\"\nexec = \"true\"", "a".repeat(65))),
            "check[1].name",
            "1 to 64",
        ),
        (
            "slash",
            check("name = \"shell/check\"\nexec = \"true\""),
            "check[1].name",
            "reserved for the checks drivers report",
        ),
        (
            "start",
            check("name = \"start\"\nexec = \"true\""),
            "check[1] (start).name",
            "`start` is reserved",
        ),
        (
            "duplicate",
            check("name = \"ok\"\nexec = \"true\""),
            "check[1] (ok).name",
            "also check[0]'s name: names must be unique",
        ),
        (
            "alone",
            with_checks("[health]\nalone = \"leave\""),
            "health.alone",
            "neither \"stay\"",
        ),
        (
            "alone lists both",
            with_checks("[health]\nalone = \"leave\""),
            "health.alone",
            "\"step-down\"",
        ),
        (
            "start failure 0",
            with_checks("[health]\nstart_failure_ms = 0"),
            "health.start_failure_ms",
            "positive",
        ),
        (
            "unknown health key",
            with_checks("[health]\nfall = 3"),
            "health.fall (line 15)",
            "unknown field `fall`",
        ),
    ];
    for (name, text, key, needle) in cases {
        let err = parse(text).expect_err(name);
        assert!(
            err.starts_with("test.toml: "),
            "{name}: names the file: {err}"
        );
        assert!(
            err.contains(&format!(": {key}: ")),
            "{name}: names {key}: {err}"
        );
        assert!(err.contains(needle), "{name}: says {needle:?}: {err}");
    }
}

#[test]
fn an_http_url_with_a_password_is_not_echoed() {
    let err = parse(&with_checks(
        "[[check]]\nname = \"web\"\nhttp = \"gopher://user:hunter2@127.0.0.1/\"",
    ))
    .expect_err("not http");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_timeout_above_the_interval_warns_what_it_means() {
    let (_, warnings) = parse_with_warnings(&with_checks(
        "[[check]]\nname = \"web\"\nexec = \"true\"\ninterval_ms = 1000\ntimeout_ms = 5000",
    ))
    .expect("allowed");
    let warning = warnings
        .iter()
        .find(|w| w.contains("check[0] (web)"))
        .expect("a warning for the check");
    assert!(warning.contains("runs never overlap"), "{warning}");
    assert!(warning.contains("6000 ms"), "{warning}");
    let (_, warnings) = parse_with_warnings(&with_checks(
        "[[check]]\nname = \"web\"\nexec = \"true\"\ninterval_ms = 1000\ntimeout_ms = 1000",
    ))
    .expect("allowed");
    assert!(
        !warnings.iter().any(|w| w.contains("check[0]")),
        "{warnings:?}"
    );
    // The defaults (interval 1000, timeout 2000) are such a pair on purpose: no warning.
    let (_, warnings) =
        parse_with_warnings(&with_checks("[[check]]\nname = \"web\"\nexec = \"true\""))
            .expect("allowed");
    assert!(
        !warnings.iter().any(|w| w.contains("check[0]")),
        "{warnings:?}"
    );
    // Setting one of them is a choice the warning explains.
    let (_, warnings) = parse_with_warnings(&with_checks(
        "[[check]]\nname = \"web\"\nexec = \"true\"\ninterval_ms = 500",
    ))
    .expect("allowed");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("check[0] (web): timeout_ms (2000) is above interval_ms (500)")),
        "{warnings:?}"
    );
}

#[test]
fn a_fence_parses_and_must_fit_inside_the_stop_budget() {
    let s = parse(&with_checks(
        "[fence]\ncommand = \"systemctl kill --signal=SIGKILL myapp.service\"",
    ))
    .expect("valid");
    let fence = s.fence.expect("fence configured");
    assert_eq!(fence.timeout.as_millis(), 150, "default timeout");
    assert!(parse(&with_checks("")).expect("valid").fence.is_none());

    // 250 ms does not fit the default 200 ms stop budget: the error says which keys and what to do.
    let e = parse(&with_checks(
        "[fence]\ncommand = \"kill-it\"\ntimeout_ms = 250",
    ))
    .expect_err("does not fit");
    assert!(e.contains("test.toml"), "{e}");
    assert!(e.contains("fence.timeout_ms"), "{e}");
    assert!(e.contains("election.stop_budget_ms (200 ms)"), "{e}");
    // It fits when the stop budget is raised.
    let text = config(
        good_node(),
        &good_cluster(),
        "stop_budget_ms = 300\nelection_timeout_ms = [1500, 3000]",
    ) + "\n[fence]\ncommand = \"kill-it\"\ntimeout_ms = 250\n";
    assert_eq!(
        parse(&text)
            .expect("fits")
            .fence
            .expect("fence")
            .timeout
            .as_millis(),
        250
    );
    let e = parse(&with_checks("[fence]\ncommand = \"  \"")).expect_err("empty");
    assert!(e.contains("fence.command"), "{e}");
    let e = parse(&with_checks("[fence]\ncommand = \"x\"\ntimeout = 5")).expect_err("unknown key");
    assert!(e.contains("timeout"), "{e}");
}

#[test]
fn a_watchdog_timeout_that_fires_too_late_for_the_lease_is_refused() {
    // Default timings: lease 714 ms + stop budget 200 ms; a 1000 ms watchdog cannot be fed safely.
    let e = parse(&with_checks(
        "[fence]\nwatchdog = \"/dev/watchdog\"\nwatchdog_timeout_ms = 1000",
    ))
    .expect_err("too late");
    assert!(e.contains("fence.watchdog_timeout_ms"), "{e}");
    assert!(e.contains("fires too late for the lease inequality"), "{e}");
    assert!(e.contains("at most 714"), "{e}");
    assert!(e.contains("election.election_timeout_ms"), "{e}");
    // A longer election timeout makes room: lease 2524 ms.
    let text = config(
        good_node(),
        &good_cluster(),
        "election_timeout_ms = [3000, 6000]",
    ) + "\n[fence]\nwatchdog = \"/dev/watchdog\"\nwatchdog_timeout_ms = 2000\n";
    let s = parse(&text).expect("fits");
    let w = s.watchdog.expect("watchdog");
    assert_eq!(w.device, Path::new("/dev/watchdog"));
    assert_eq!(w.timeout.as_millis(), 2000);
    assert!(s.fence.is_none(), "a watchdog alone needs no command");
    // The timeout is required, and not without a device.
    let e = parse(&with_checks("[fence]\nwatchdog = \"/dev/watchdog\"")).expect_err("no timeout");
    assert!(
        e.contains("fence.watchdog_timeout_ms") && e.contains("required"),
        "{e}"
    );
    let e = parse(&with_checks(
        "[fence]\ncommand = \"x\"\nwatchdog_timeout_ms = 500",
    ))
    .expect_err("no device");
    assert!(e.contains("fence.watchdog_timeout_ms"), "{e}");
    let e = parse(&with_checks("[fence]\ntimeout_ms = 100")).expect_err("neither");
    assert!(e.contains("fence.command") && e.contains("required"), "{e}");
    assert!(e.contains("fence.kill_driver = true"), "{e}");
}

#[test]
fn the_built_in_fence_needs_no_command_and_may_go_with_one() {
    let fence = parse(&with_checks("[fence]\nkill_driver = true"))
        .expect("valid")
        .fence
        .expect("fence configured");
    assert!(fence.kill_driver && fence.command.is_none(), "{fence:?}");
    let fence = parse(&with_checks(
        "[fence]\nkill_driver = true\ncommand = \"kill-it\"",
    ))
    .expect("valid")
    .fence
    .expect("fence configured");
    assert!(fence.kill_driver && fence.command.as_deref() == Some("kill-it"));
    let e = parse(&with_checks("[fence]\nkill_driver = \"yes\"")).expect_err("not a bool");
    assert!(e.contains("kill_driver"), "{e}");
}

#[test]
fn a_zero_lease_is_refused_under_its_own_key() {
    let text = config(good_node(), &good_cluster(), "lease_ms = 0");
    let e = parse(&text).expect_err("no lease");
    assert!(
        e.contains("election.lease_ms") && e.contains("leave the key out"),
        "{e}"
    );
}

/// TCP for the admin API needs a token: without one the config names the key and the fix.
#[test]
fn admin_listen_needs_a_token_file() {
    let e = parse(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:7401\"\n",
        config(good_node(), &good_cluster(), "")
    ))
    .expect_err("refused");
    assert!(
        e.contains("admin.token_file") && e.contains("clustd keygen --out"),
        "{e}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "short").expect("write");
    let e = Settings::parse(
        &format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:7401\"\ntoken_file = \"{}\"\n",
            config(good_node(), &good_cluster(), ""),
            token.display()
        ),
        "test.toml",
        dir.path(),
    )
    .map(|_| ())
    .expect_err("a short token is refused")
    .to_string();
    assert!(e.contains("at least 32"), "{e}");
}

/// Peer addresses: IP addresses only (a host name says so), never this node's own listen
/// address, never two peers at one address.
#[test]
fn peer_addresses_are_ips_of_other_nodes() {
    let cluster = |peers: &str| {
        format!(
            "transport = \"quic\"\nlisten = \"127.0.0.1:7400\"\nsecret = \"0123456789abcdef0123456789abcdef0123\"\npeers = [{peers}]\n"
        )
    };
    for (peers, key, says) in [
        (
            "{ id = \"node-2\", addr = \"node-2.example:7400\" }, { id = \"node-3\", addr = \"127.0.0.3:7400\" }",
            "cluster.peers[0].addr",
            "names a host: only IP addresses are accepted",
        ),
        (
            "{ id = \"node-2\", addr = \"127.0.0.1:7400\" }, { id = \"node-3\", addr = \"127.0.0.3:7400\" }",
            "cluster.peers[0].addr",
            "this node's own cluster.listen",
        ),
        (
            "{ id = \"node-2\", addr = \"127.0.0.3:7400\" }, { id = \"node-3\", addr = \"127.0.0.3:7400\" }",
            "cluster.peers[1].addr",
            "the same address as node-2",
        ),
        (
            "{ id = \"node-2\", addr = \"fd00::2:7400\" }, { id = \"node-3\", addr = \"127.0.0.3:7400\" }",
            "cluster.peers[0].addr",
            "in brackets, like [fd00::2]:7400",
        ),
    ] {
        let e = parse(&config(good_node(), &cluster(peers), "")).expect_err(says);
        assert!(e.contains(key) && e.contains(says), "{e}");
    }
}

/// A reload may change timings only in ways that stay safe while other nodes still run the
/// old ones: each timing in its safe direction, and the new lease and stop budget inside
/// the old election timeout (a longer timeout and a longer budget at once would let a peer
/// on the old timing time out a master whose drivers are still stopping).
#[test]
fn reload_timing_changes_must_be_safe_against_the_old_config() {
    let at =
        |election: &str| parse(&config(good_node(), &good_cluster(), election)).expect(election);
    let old = at("");
    let cases = [
        ("priority = 9", Ok("election.priority: 0 -> 9")),
        (
            "election_timeout_ms = [1200, 2400]",
            Err("Set election.lease_ms = 714 to keep it"),
        ),
        (
            "election_timeout_ms = [1200, 2400]\nlease_ms = 714",
            Ok("election.election_timeout_ms"),
        ),
        ("lease_ms = 500", Ok("election.lease_ms: 714 -> 500")),
        (
            "election_timeout_ms = [1300, 2600]\nstop_budget_ms = 500\nlease_ms = 700",
            Err("reload in two steps"),
        ),
        (
            "election_timeout_ms = [800, 1600]\nlease_ms = 500",
            Err("only lengthens the election timeout"),
        ),
        (
            "election_timeout_ms = [1500, 3000]\nlease_ms = 900",
            Err("only shortens the lease"),
        ),
        (
            "stop_budget_ms = 100
lease_ms = 714",
            Err("only lengthens the stop budget"),
        ),
    ];
    for (election, expected) in cases {
        let got = old.reload_changes(&at(election));
        match (expected, got) {
            (Ok(needle), Ok(changes)) => {
                assert!(
                    changes.iter().any(|c| c.contains(needle)),
                    "{election}: {changes:?}"
                )
            }
            (Err(needle), Err(why)) => assert!(why.contains(needle), "{election}: {why}"),
            (expected, got) => panic!("{election}: expected {expected:?}, got {got:?}"),
        }
    }
    // In two steps it goes through: the longer timeout first, then the longer budget.
    let step = at("election_timeout_ms = [1300, 2600]\nlease_ms = 714");
    assert!(old.reload_changes(&step).is_ok());
    let last = at("election_timeout_ms = [1300, 2600]\nstop_budget_ms = 500\nlease_ms = 700");
    assert!(
        step.reload_changes(&last).is_ok(),
        "{:?}",
        step.reload_changes(&last)
    );
}
