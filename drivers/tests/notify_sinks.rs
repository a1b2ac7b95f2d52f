//! The notify driver against real servers on 127.0.0.1: an HTTP server written here for
//! webhooks and the SMS API, aiosmtpd for email. Retries, isolation of a failing sink, and
//! the flapping summary.

mod support;

use std::path::PathBuf;

use clustd_drivers::{
    ActionResult, Driver, DriverRole, NodeId, NotifyConfig, NotifyDriver, RoleChange, Term,
};
use support::{HttpServer, SECRET, SmtpServer, form, init_tracing};

/// Writes a notify config (plus its secret files) into a temp dir and loads it.
fn config(extra: &str) -> (tempfile::TempDir, NotifyConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    std::fs::write(dir.path().join("sms-token"), "tok3n\n").expect("write");
    let text = format!("daemon = \"127.0.0.1:7400\"\nsecret_file = \"secret\"\n{extra}");
    let file: PathBuf = dir.path().join("notify.toml");
    std::fs::write(&file, &text).expect("write");
    let config = NotifyConfig::load(&file).unwrap_or_else(|e| panic!("config loads: {e}"));
    (dir, config)
}

fn id(s: &str) -> Option<NodeId> {
    Some(NodeId::new(s).expect("valid"))
}

/// node-1 becomes master in `term`.
fn became_master(term: u64) -> RoleChange {
    RoleChange::new(DriverRole::Master, Term(term), id("node-1"))
        .with_leader(id("node-1"))
        .with_previous_role(Some(DriverRole::Backup))
        .with_reason("elected")
}

fn lost_master(term: u64) -> RoleChange {
    let mut c = RoleChange::new(DriverRole::Backup, Term(term), id("node-1"))
        .with_leader(id("node-2"))
        .with_previous_role(Some(DriverRole::Master))
        .with_reason("lease-lost");
    c.previous_leader = id("node-1");
    c
}

#[tokio::test]
async fn webhook_posts_slack_compatible_json_with_headers() {
    init_tracing();
    let mut server = HttpServer::start(&[], false).await;
    let (_dir, cfg) = config(&format!(
        "[templates]\ntext = \"{{node}} is now {{role}} (term {{term}}): {{event_text}}\"\n\
         [[webhook]]\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer abc\", X-Team = \"ops\" }}\n",
        server.url("/hooks/clustd")
    ));
    let mut driver = NotifyDriver::new(&cfg);
    assert_eq!(
        driver.on_role_change(became_master(4)).await,
        ActionResult::Ok
    );
    let req = server.next().await;
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/clustd");
    assert_eq!(
        req.headers.get("authorization").map(String::as_str),
        Some("Bearer abc")
    );
    assert_eq!(req.headers.get("x-team").map(String::as_str), Some("ops"));
    assert_eq!(
        req.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
    assert_eq!(body["text"], "node-1 is now master (term 4): became master");
    assert_eq!(body["event"], "became-master");
    assert_eq!(body["node"], "node-1");
    assert_eq!(body["term"], 4, "a JSON number: {body}");
    assert_eq!(body["reason"], "elected");
    // The new master is the one node that tells the cluster of the election.
    let req = server.next().await;
    let body: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
    assert_eq!(body["event"], "new-master");
    assert_eq!(
        body["text"],
        "node-1 is now master (term 4): new master elected: node-1"
    );
    assert_eq!(
        (&body["node"], &body["leader"]),
        (&"node-1".into(), &"node-1".into())
    );
    assert!(body["term"].is_u64(), "{body}");
}

#[tokio::test]
async fn sms_is_a_twilio_style_form_post_with_basic_auth() {
    init_tracing();
    let mut server = HttpServer::start(&[], false).await;
    let (_dir, cfg) = config(&format!(
        "[[sms]]\nbase_url = \"{}\"\naccount_sid = \"AC123\"\nauth_token_file = \"sms-token\"\n\
         from = \"+15550001\"\nto = [\"+15550002\", \"+15550003\"]\n",
        server.url("/api")
    ));
    let mut driver = NotifyDriver::new(&cfg);
    assert_eq!(
        driver.on_role_change(lost_master(9)).await,
        ActionResult::Ok
    );
    for to in ["+15550002", "+15550003"] {
        let req = server.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/2010-04-01/Accounts/AC123/Messages.json");
        // base64("AC123:tok3n")
        assert_eq!(
            req.headers.get("authorization").map(String::as_str),
            Some("Basic QUMxMjM6dG9rM24=")
        );
        assert_eq!(
            req.headers.get("content-type").map(String::as_str),
            Some("application/x-www-form-urlencoded")
        );
        let fields = form(&req.body);
        assert_eq!(fields.get("To").map(String::as_str), Some(to));
        assert_eq!(fields.get("From").map(String::as_str), Some("+15550001"));
        let body = fields.get("Body").expect("a Body field");
        assert!(body.contains("node-1: stopped being master"), "{body}");
        assert!(body.contains("term 9"), "{body}");
    }
    // A backup does not tell of the new master (node-2's own driver does): the next
    // messages are the next change's.
    driver.on_role_change(became_master(10)).await;
    for _ in ["+15550002", "+15550003"] {
        let body = form(&server.next().await.body)["Body"].clone();
        assert!(body.contains("node-1: became master"), "{body}");
    }
}

#[tokio::test]
async fn email_arrives_at_a_real_smtp_server() {
    init_tracing();
    let Some(mut smtp) = SmtpServer::start().await else {
        return;
    };
    let (_dir, cfg) = config(&format!(
        "[templates]\nsubject = \"clustd {{event}} on {{node}}\"\n\
         [[email]]\nserver = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n\
         from = \"clustd <clustd@example.test>\"\nto = [\"ops@example.test\", \"oncall@example.test\"]\n",
        smtp.port
    ));
    let mut driver = NotifyDriver::new(&cfg);
    assert_eq!(
        driver.on_role_change(became_master(12)).await,
        ActionResult::Ok
    );
    let message = smtp.next_message().await;
    let text = message.join("\n");
    assert!(
        message
            .iter()
            .any(|l| l == "Subject: clustd became-master on node-1"),
        "{text}"
    );
    assert!(
        message
            .iter()
            .any(|l| l.starts_with("From: clustd <clustd@example.test>")),
        "{text}"
    );
    assert!(
        text.contains("ops@example.test") && text.contains("oncall@example.test"),
        "{text}"
    );
    assert!(
        text.contains("node-1: became master (role master, term 12"),
        "{text}"
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_backoff() {
    init_tracing();
    let mut server = HttpServer::start(&[503, 500], false).await;
    let (_dir, cfg) = config(&format!(
        "events = [\"became-master\", \"lost-master\"]\n\
         [retry]\nattempts = 4\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\n\
         [[webhook]]\nurl = \"{}\"\n",
        server.url("/h")
    ));
    let mut driver = NotifyDriver::new(&cfg);
    driver.on_role_change(became_master(2)).await;
    let bodies: Vec<String> = [
        server.next().await,
        server.next().await,
        server.next().await,
    ]
    .into_iter()
    .map(|r| r.body)
    .collect();
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
    // The third attempt succeeded: the next notification is a new message, sent once.
    driver.on_role_change(lost_master(3)).await;
    let next = server.next().await;
    assert!(next.body.contains("stopped being master"), "{}", next.body);
}

#[tokio::test]
async fn a_hanging_sink_never_blocks_the_others() {
    init_tracing();
    let mut stuck = HttpServer::start(&[], true).await;
    let mut good = HttpServer::start(&[], false).await;
    let (_dir, cfg) = config(&format!(
        "events = [\"became-master\", \"lost-master\"]\n\
         [retry]\ntimeout_ms = 60000\n[[webhook]]\nurl = \"{}\"\n[[webhook]]\nurl = \"{}\"\n",
        stuck.url("/stuck"),
        good.url("/good")
    ));
    let mut driver = NotifyDriver::new(&cfg);
    driver.on_role_change(became_master(2)).await;
    driver.on_role_change(lost_master(3)).await;
    assert!(stuck.next().await.body.contains("became master"));
    // The stuck server holds its first request forever; the good one gets both messages.
    assert!(good.next().await.body.contains("became master"));
    assert!(good.next().await.body.contains("stopped being master"));
}

#[tokio::test]
async fn flapping_is_rate_limited_and_summarized_in_one_message() {
    init_tracing();
    let mut server = HttpServer::start(&[], false).await;
    let (_dir, cfg) = config(&format!(
        "events = [\"became-master\", \"lost-master\"]\n\
         [rate_limit]\nwindow_ms = 1500\nmax_messages = 2\n[[webhook]]\nurl = \"{}\"\n",
        server.url("/h")
    ));
    let mut driver = NotifyDriver::new(&cfg);
    for term in 1..=3 {
        driver.on_role_change(became_master(2 * term)).await;
        driver.on_role_change(lost_master(2 * term + 1)).await;
    }
    let first = server.next().await;
    let second = server.next().await;
    assert!(first.body.contains("became master"));
    assert!(second.body.contains("stopped being master"));
    let summary = server.next().await;
    let body: serde_json::Value = serde_json::from_str(&summary.body).expect("json");
    assert_eq!(body["event"], "flapping");
    let text = body["text"].as_str().expect("text");
    assert!(text.contains("4 notifications held back"), "{text}");
    assert!(
        text.contains("became-master x2") && text.contains("lost-master x2"),
        "{text}"
    );
    // The latest state is in the summary: node-1 lost master in term 7.
    assert_eq!(body["term"], 7, "a JSON number: {body}");
    assert!(
        server.requests.try_recv().is_err(),
        "exactly one summary, nothing else"
    );
}
