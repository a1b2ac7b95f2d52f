//! `--check-config` on every driver binary: validates the file, starts nothing, and says
//! so with its exit status.

use std::process::Command;

fn check(bin: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("driver.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(bin)
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn every_driver_checks_its_config_without_starting() {
    let daemon = "daemon = \"unix:/nonexistent/driver.sock\"\n";
    for (bin, good, bad, key) in [
        (
            env!("CARGO_BIN_EXE_clustd-shell-driver"),
            "[script]\nstart = \"true\"\nstop = \"true\"\n",
            "[script]\nstart = \"true\"\nstop = \"true\"\ntimeout_ms = 0\n",
            "script.timeout_ms",
        ),
        (
            env!("CARGO_BIN_EXE_clustd-notify-driver"),
            "[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\n",
            "[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\n[rate_limit]\nwindow_ms = \"x\"\n",
            "rate_limit.window_ms",
        ),
        (
            env!("CARGO_BIN_EXE_clustd-vip-driver"),
            "[[vip]]\naddress = \"198.18.0.10/24\"\ninterface = \"eth0\"\n",
            "[[vip]]\naddress = \"198.18.0.10\"\ninterface = \"eth0\"\n",
            "vip[0].address",
        ),
    ] {
        // Nothing listens on the socket: a driver that started would wait for it.
        let (code, out) = check(bin, &format!("{daemon}{good}"));
        assert_eq!(code, Some(0), "{bin}: {out}");
        assert!(out.contains("driver.toml: ok"), "{bin}: {out}");
        let (code, out) = check(bin, &format!("{daemon}{bad}"));
        assert_eq!(code, Some(2), "{bin}: {out}");
        assert!(out.contains(key), "{bin} names {key}: {out}");
    }
}
