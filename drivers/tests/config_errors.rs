//! Config errors name the file, the key and what is wrong; bad input never panics.

use std::path::Path;

use clustd_drivers::{ConfigError, NotifyConfig, ShellConfig};

const SECRET: &str = "test-cluster-secret-0123456789abcdef";

fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    dir
}

fn shell(dir: &Path, text: &str) -> Result<ShellConfig, ConfigError> {
    ShellConfig::parse(&dir.join("shell.toml"), text)
}

fn notify(dir: &Path, text: &str) -> Result<NotifyConfig, ConfigError> {
    NotifyConfig::parse(&dir.join("notify.toml"), text)
}

const HEAD: &str = "daemon = \"127.0.0.1:7400\"\nsecret_file = \"secret\"\n";
const SCRIPT: &str = "[script]\nstart = \"true\"\nstop = \"true\"\n";

/// Asserts the error names `key`, the file, and contains `what`.
fn names(result: Result<impl std::fmt::Debug, ConfigError>, file: &str, key: &str, what: &str) {
    let err = result.expect_err("must be rejected");
    let text = err.to_string();
    assert_eq!(err.key(), Some(key), "{text}");
    assert!(text.contains(file), "{text}");
    assert!(text.contains(&format!("`{key}`")), "{text}");
    assert!(text.contains(what), "{text}");
}

#[test]
fn a_valid_shell_config_loads_with_defaults() {
    let d = dir();
    let c = shell(d.path(), &format!("{HEAD}{SCRIPT}")).expect("valid");
    assert_eq!(c.runner.shell, Path::new("/bin/bash"));
    assert_eq!(c.runner.timeout.as_millis(), 30_000);
    assert_eq!(c.connection.transport, clustd_drivers::TransportKind::Quic);
    // No driver_id configured: a generated one.
    assert!(c.connection.driver_id.as_str().starts_with("shell-"));
    let other = shell(d.path(), &format!("{HEAD}{SCRIPT}")).expect("valid");
    assert_ne!(c.connection.driver_id, other.connection.driver_id);
}

#[test]
fn shell_config_errors_name_the_key() {
    let d = dir();
    let p = d.path();
    names(
        shell(p, &format!("{HEAD}{SCRIPT}timeout_ms = \"soon\"\n")),
        "shell.toml",
        "script.timeout_ms",
        "invalid type",
    );
    names(
        shell(p, &format!("{HEAD}{SCRIPT}colour = 1\n")),
        "shell.toml",
        "script.colour",
        "unknown field",
    );
    names(
        shell(p, &format!("{HEAD}[script]\nstart = \"true\"\n")),
        "shell.toml",
        "script.stop",
        "missing field",
    );
    names(
        shell(p, &format!("{HEAD}{SCRIPT}timeout_ms = 0\n")),
        "shell.toml",
        "script.timeout_ms",
        "at least 1",
    );
    names(
        shell(p, &format!("{HEAD}[script]\nstart = \" \"\nstop = \"x\"\n")),
        "shell.toml",
        "script.start",
        "empty",
    );
    names(
        shell(p, &format!("{HEAD}{SCRIPT}cwd = \"/nonexistent/dir\"\n")),
        "shell.toml",
        "script.cwd",
        "not a directory",
    );
    names(
        shell(
            p,
            &format!("{HEAD}{SCRIPT}[script.env]\nCLUSTD_ROLE = \"x\"\n"),
        ),
        "shell.toml",
        "script.env.CLUSTD_ROLE",
        "set by the driver",
    );
    names(
        shell(p, &format!("transport = \"tcp\"\n{HEAD}{SCRIPT}")),
        "shell.toml",
        "transport",
        "unknown variant",
    );
    names(
        shell(
            p,
            &format!("daemon = \"localhost\"\nsecret_file = \"secret\"\n{SCRIPT}"),
        ),
        "shell.toml",
        "daemon",
        "not an address",
    );
    names(
        shell(p, &format!("driver_id = \"bad id!\"\n{HEAD}{SCRIPT}")),
        "shell.toml",
        "driver_id",
        "node id",
    );
    names(
        shell(p, &format!("{HEAD}{SCRIPT}daemon_typo = 1\n")),
        "shell.toml",
        "script.daemon_typo",
        "unknown field",
    );
    names(shell(p, "stray = [\n"), "shell.toml", "(syntax)", "");
}

#[test]
fn script_check_loads_with_its_defaults_and_its_keys() {
    let d = dir();
    let p = d.path();
    let c = shell(p, &format!("{HEAD}{SCRIPT}")).expect("valid");
    assert_eq!(c.check, None, "no check unless configured");
    let c = shell(
        p,
        &format!("{HEAD}{SCRIPT}check = \"curl -sf http://127.0.0.1/\"\n"),
    )
    .expect("valid");
    let check = c.check.expect("configured");
    assert_eq!(check.command, "curl -sf http://127.0.0.1/");
    assert_eq!(check.interval.as_millis(), 1000);
    assert_eq!(check.timeout.as_millis(), 2000);
    assert_eq!((check.fall, check.rise), (3, 2));
    let c = shell(
        p,
        &format!(
            "{HEAD}{SCRIPT}check = \"true\"\ncheck_interval_ms = 250\ncheck_timeout_ms = 100\ncheck_fall = 1\ncheck_rise = 5\n"
        ),
    )
    .expect("valid");
    let check = c.check.expect("configured");
    assert_eq!(check.interval.as_millis(), 250);
    assert_eq!(check.timeout.as_millis(), 100);
    assert_eq!((check.fall, check.rise), (1, 5));
    // The scripts' own timeout is not the check's.
    assert_eq!(c.runner.timeout.as_millis(), 30_000);
}

#[test]
fn script_check_errors_name_the_key() {
    let d = dir();
    let p = d.path();
    let with_check = |extra: &str| shell(p, &format!("{HEAD}{SCRIPT}check = \"true\"\n{extra}"));
    for key in [
        "check_fall",
        "check_rise",
        "check_interval_ms",
        "check_timeout_ms",
    ] {
        names(
            with_check(&format!("{key} = 0\n")),
            "shell.toml",
            &format!("script.{key}"),
            "at least 1",
        );
        names(
            shell(p, &format!("{HEAD}{SCRIPT}{key} = 5\n")),
            "shell.toml",
            &format!("script.{key}"),
            "needs `script.check`",
        );
    }
    names(
        with_check("check_fall = -1\n"),
        "shell.toml",
        "script.check_fall",
        "invalid value",
    );
    names(
        with_check("check_interval_ms = \"1s\"\n"),
        "shell.toml",
        "script.check_interval_ms",
        "invalid type",
    );
    names(
        shell(p, &format!("{HEAD}{SCRIPT}check = \"  \"\n")),
        "shell.toml",
        "script.check",
        "must not be empty",
    );
    names(
        with_check("check_every_ms = 5\n"),
        "shell.toml",
        "script.check_every_ms",
        "unknown field",
    );
}

#[test]
fn notify_health_events_and_the_detail_field_load() {
    let d = dir();
    let c = notify(
        d.path(),
        &format!(
            "events = [\"healthy\", \"unhealthy\", \"ineligible\", \"eligible\"]\n{HEAD}\
             [templates]\ntext = \"{{node}} {{event}}: {{detail}}\"\n"
        ),
    )
    .expect("valid");
    let names: Vec<&str> = c.events.iter().map(|e| e.as_str()).collect();
    assert_eq!(names, ["healthy", "unhealthy", "ineligible", "eligible"]);
    // By default every event is sent, the health ones included.
    let c = notify(d.path(), HEAD).expect("valid");
    for name in [
        "healthy",
        "unhealthy",
        "ineligible",
        "eligible",
        "peer-down",
    ] {
        assert!(c.events.iter().any(|e| e.as_str() == name), "{name}");
    }
}

#[test]
fn unreadable_secret_file_names_the_key_and_path() {
    let d = dir();
    let err = shell(
        d.path(),
        &format!("daemon = \"127.0.0.1:7400\"\nsecret_file = \"missing\"\n{SCRIPT}"),
    )
    .expect_err("missing secret file");
    let text = err.to_string();
    assert!(
        text.contains("shell.toml") && text.contains("`secret_file`") && text.contains("missing"),
        "{text}"
    );
}

#[test]
fn missing_config_file_names_the_file() {
    let err = ShellConfig::load(Path::new("/nonexistent/clustd-shell.toml")).expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/clustd-shell.toml"),
        "{err}"
    );
}

#[test]
fn notify_config_errors_name_the_key() {
    let d = dir();
    let p = d.path();
    names(
        notify(p, &format!("{HEAD}[templates]\ntext = \"{{nope}}\"\n")),
        "notify.toml",
        "templates.text",
        "unknown placeholder {nope}",
    );
    names(
        notify(p, &format!("{HEAD}[[webhook]]\nurl = \"ftp://x\"\n")),
        "notify.toml",
        "webhook[0].url",
        "http",
    );
    names(
        notify(
            p,
            &format!("{HEAD}[[webhook]]\nurl = \"http://127.0.0.1:1/\"\nmethod = \"GET\"\n"),
        ),
        "notify.toml",
        "webhook[0].method",
        "unknown field",
    );
    names(
        notify(
            p,
            &format!(
                "{HEAD}[[email]]\nserver = \"smtp\"\nfrom = \"not an address\"\nto = [\"a@b.c\"]\n"
            ),
        ),
        "notify.toml",
        "email[0].from",
        "not an email address",
    );
    names(
        notify(
            p,
            &format!(
                "{HEAD}[[email]]\nserver = \"smtp\"\nsecurity = \"ssl\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\n"
            ),
        ),
        "notify.toml",
        "email[0].security",
        "unknown variant",
    );
    names(
        notify(
            p,
            &format!(
                "{HEAD}[[email]]\nserver = \"smtp\"\nusername = \"u\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\n"
            ),
        ),
        "notify.toml",
        "email[0].password_file",
        "username",
    );
    names(
        notify(p, &format!("{HEAD}[rate_limit]\nmax_messages = 0\n")),
        "notify.toml",
        "rate_limit.max_messages",
        "at least 1",
    );
    names(
        notify(p, &format!("{HEAD}events = [\"sunrise\"]\n")),
        "notify.toml",
        "events[0]",
        "unknown variant",
    );
    names(
        notify(
            p,
            &format!(
                "{HEAD}[[sms]]\naccount_sid = \"AC1\"\nauth_token_file = \"secret\"\nfrom = \"+1\"\nto = []\n"
            ),
        ),
        "notify.toml",
        "sms[0].to",
        "at least one",
    );
}

#[test]
fn garbage_configs_are_errors_not_panics() {
    let d = dir();
    for text in [
        "",
        "\0\0\0",
        "[[[",
        "daemon = 1",
        "script = 5",
        "[script]\nenv = 3",
        "ðŸ¦€ = \"x\"",
    ] {
        assert!(shell(d.path(), text).is_err(), "{text:?}");
        assert!(notify(d.path(), text).is_err(), "{text:?}");
    }
}

#[test]
fn the_daemon_on_its_local_socket_or_over_the_transport() {
    let d = dir();
    let p = d.path();
    // The local socket: no secret needed, the path relative to the config file.
    let c = shell(p, &format!("daemon = \"unix:run/driver.sock\"\n{SCRIPT}")).expect("valid");
    assert_eq!(c.connection.daemon_socket, Some(p.join("run/driver.sock")));
    names(
        shell(p, &format!("daemon = \"unix:\"\n{SCRIPT}")),
        "shell.toml",
        "daemon",
        "needs the socket's path",
    );
    names(
        shell(
            p,
            &format!(
                "daemon = \"unix:/run/d.sock\"\ndaemon_key = \"{}\"\n{SCRIPT}",
                "ab".repeat(32)
            ),
        ),
        "shell.toml",
        "daemon_key",
        "over the transport",
    );
    // Over the transport the credential is required, and a daemon_key must be a real key.
    names(
        shell(p, &format!("daemon = \"127.0.0.1:7400\"\n{SCRIPT}")),
        "shell.toml",
        "secret_file",
        "unix:PATH",
    );
    names(
        shell(
            p,
            &format!("{HEAD}daemon_key = \"{}\"\n{SCRIPT}", "00".repeat(32)),
        ),
        "shell.toml",
        "daemon_key",
        "not a usable public key",
    );
    let key = clustd_transport::NodeKey::from_private([3; 32]).public();
    let c = shell(p, &format!("{HEAD}daemon_key = \"{key}\"\n{SCRIPT}")).expect("valid");
    assert_eq!(c.connection.daemon_key, Some(key));
}
