//! `clustd-notify-driver`: tells people about role changes through webhooks, email and SMS.

use anyhow::Context;
use clap::Parser;
use clustd_drivers::cli::{ConfigArgs, LogTo, init_logging, shutdown_signal};

/// Sends a notification when this node becomes master or stops being master, when the
/// cluster loses its master, when a new master is elected, when the daemon loses or regains
/// a peer, and when a driver of this node fails to stop the service.
///
/// Sinks (any number of each): [[webhook]] (JSON POST with a Slack-compatible "text"),
/// [[email]] (SMTP: starttls, tls or plain, optional auth), [[sms]] (Twilio-style HTTP API;
/// base_url can point anywhere). Failed deliveries are retried with backoff; a failing sink
/// never holds up the others; when roles flap, at most [rate_limit] max_messages go out per
/// window_ms and the rest are summarized in one message.
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
///   [templates]
///   text = "[clustd] {node}: {event_text} (term {term})"
///
///   [[webhook]]
///   url = "https://hooks.slack.com/services/T000/B000/XXXX"
///
///   [[email]]
///   server = "smtp.example.com"
///   security = "starttls"
///   username = "clustd"
///   password_file = "/etc/clustd/smtp-password"
///   from = "clustd <clustd@example.com>"
///   to = ["ops@example.com"]
///
/// Template fields: {event} {event_text} {node} {role} {previous_role} {term} {leader}
/// {previous_leader} {reason} {time} {peer} {driver} {detail}. Events: became-master,
/// lost-master, master-lost, new-master, peer-down, peer-up, stop-failed (a driver of this
/// node reported that its stop failed or timed out; {driver} names it), healthy, unhealthy,
/// ineligible, eligible (this node's health or eligibility changed; {detail} says why).
/// Logging: RUST_LOG (default "info").
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
// The doc comment above is the `--help` text, printed verbatim: its brackets are TOML
// tables and its URLs are examples, not rustdoc links.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(LogTo::Stdout);
    let Some(config) = args
        .config
        .load("clustd-notify-driver", clustd_drivers::NotifyConfig::load)
    else {
        return Ok(());
    };
    if config.sink_names().is_empty() {
        tracing::warn!("no [[webhook]], [[email]] or [[sms]] configured: nothing will be sent");
    }
    clustd_drivers::notify::run_notify_driver(config, shutdown_signal())
        .await
        .context("notify driver stopped")
}
