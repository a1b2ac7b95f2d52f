//! The status page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`) loads `GET /` from a running 3-node cluster over `admin.listen` with the
//! token, the test reads the DOM over the DevTools protocol, kills the master, and sees
//! the page name the new one without a reload (live from `/events`). Screenshots are saved
//! under `target/tmp/` (`status-page-before.png`, `status-page-after.png`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clustd_transport::TransportKind;
use common::procs::{NodeSpec, ProcCluster};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;

const CHROMIUM: &str = "/usr/bin/chromium";

/// A DevTools session on one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Ws::text(msg.to_string()))
            .await
            .expect("send to chromium");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("chromium answers")
                .expect("open")
                .expect("a frame");
            if let Ws::Text(text) = frame {
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                if v["id"] == id {
                    assert!(v["error"].is_null(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expression` in the page and returns its string value.
    async fn text(&mut self, expression: &str) -> String {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .await;
        let png = base64_decode(r["data"].as_str().expect("image data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Starts headless Chromium with DevTools on a loopback port; returns it and the port.
async fn chromium(profile: &Path) -> (tokio::process::Child, u16) {
    let child = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1200,700",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            return (child, port);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium wrote no DevToolsActivePort"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_page(port: u16) -> Page {
    let list: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/json/list"))
        .send()
        .await
        .expect("devtools answers")
        .json()
        .await
        .expect("json");
    let url = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page target")
        .to_owned();
    let (ws, _) = tokio_tungstenite::client_async(
        url,
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("devtools port"),
    )
    .await
    .expect("devtools websocket");
    Page { ws, next: 0 }
}

async fn wait_text(
    page: &mut Page,
    what: &str,
    expression: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = page.text(expression).await;
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the page says {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_names_the_master_and_follows_a_failover_live() {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} is missing: .ci/run installs Debian's chromium package"
        );
        eprintln!("skipped: {CHROMIUM} is missing (apt-get install chromium)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    clustd::config::write_secret_file(&token_file).expect("token file");
    let token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_owned();
    let ports: Vec<u16> = (0..3)
        .map(|_| clustd::local::free_port().expect("port"))
        .collect();
    let specs: Vec<NodeSpec> = ports
        .iter()
        .map(|port| NodeSpec {
            daemon_toml: format!(
                "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
                token_file.display()
            ),
            start: "true".into(),
            stop: "true".into(),
            socket: true,
        })
        .collect();
    let cluster = ProcCluster::start(
        dir,
        TransportKind::Quic,
        "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]",
        &specs,
    )
    .await
    .expect("cluster");
    let master = cluster.one_master(Duration::from_secs(60)).await;
    let m = cluster.index(&master);
    let watcher = (m + 1) % 3;
    let base = format!("http://127.0.0.1:{}", ports[watcher]);

    // Without JavaScript: the server-rendered table already names the master.
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let html = cluster
        .wait_for("the page names the master", Duration::from_secs(30), || {
            let http = http.clone();
            let (base, token, master) = (base.clone(), token.clone(), master.clone());
            async move {
                let html = http
                    .get(format!("{base}/"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                html.contains(&format!("<span id=\"master\" class=\"ok\">{master}</span>"))
                    .then_some(html)
            }
        })
        .await;
    for n in &cluster.nodes {
        assert!(
            html.contains(&format!("data-node=\"{}\"", n.id)),
            "a row for {}: {html}",
            n.id
        );
    }
    // Without the token: refused.
    let status = http
        .get(format!("{base}/"))
        .send()
        .await
        .expect("answer")
        .status();
    assert_eq!(status.as_u16(), 401);

    let profile = tempfile::tempdir().expect("profile");
    let (_browser, devtools) = chromium(profile.path()).await;
    let mut page = open_page(devtools).await;
    page.call("Page.enable", serde_json::json!({})).await;
    page.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("{base}/?token={token}") }),
    )
    .await;
    let state = "document.getElementById('master').textContent + '|' + document.getElementById('live').textContent";
    wait_text(
        &mut page,
        "the page is live and names the master",
        state,
        |t| t == format!("{master}|live"),
    )
    .await;
    let rows = page
        .text("Array.from(document.querySelectorAll('#nodes tr')).map(r => r.dataset.node + '=' + r.querySelector('.role').textContent).join(',')")
        .await;
    assert!(rows.contains(&format!("{master}=master")), "{rows}");
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    page.screenshot(&artifacts.join("status-page-before.png"))
        .await;

    // Kill the master: the page, never reloaded, names the new one and marks the dead one.
    cluster.signal_daemon(m, "KILL");
    let after = wait_text(&mut page, "the page names a new master", state, |t| {
        let shown = t.split('|').next().unwrap_or_default();
        !shown.is_empty() && shown != master && shown != "NONE" && t.ends_with("|live")
    })
    .await;
    let new_master = after.split('|').next().unwrap_or_default().to_owned();
    let masters = cluster.masters().await;
    assert_eq!(
        masters,
        vec![new_master.clone()],
        "the page names the real master"
    );
    let dead_role =
        format!("document.querySelector('tr[data-node=\"{master}\"] .role').textContent");
    wait_text(
        &mut page,
        "the dead master is marked unknown",
        &dead_role,
        |t| t == "unknown",
    )
    .await;
    let history = page
        .text("document.getElementById('history').textContent")
        .await;
    assert!(
        history.contains(&format!("{new_master} is master")),
        "history: {history}"
    );
    page.screenshot(&artifacts.join("status-page-after.png"))
        .await;
}
