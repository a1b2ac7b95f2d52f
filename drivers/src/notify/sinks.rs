//! Where notifications go: webhook (JSON POST, Slack-compatible `text`), email (SMTP via
//! lettre) and SMS (a Twilio-style HTTP API). Each configured sink runs in its own task with
//! its own bounded queue and retries, so a slow or failing sink never holds up the others.

use std::collections::BTreeMap;
use std::time::Duration;

use clustd_transport::Backoff;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;

use super::template::json_value;

/// One rendered notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// The message text (webhook `text`, email body, SMS body).
    pub(crate) text: String,
    /// The email subject.
    pub(crate) subject: String,
    /// The event's fields, for the webhook's JSON.
    pub(crate) fields: BTreeMap<&'static str, String>,
}

/// How an email sink talks to its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP, upgraded with STARTTLS (required). Default port 587.
    Starttls,
    /// TLS from the first byte (SMTPS). Default port 465.
    Tls,
    /// No encryption at all (local relays and tests). Default port 25.
    Plain,
}

/// A configured sink.
#[derive(Clone, Debug)]
pub(crate) enum Sink {
    Webhook {
        url: reqwest::Url,
        headers: BTreeMap<String, String>,
    },
    Email {
        host: String,
        port: u16,
        security: SmtpSecurity,
        credentials: Option<(String, String)>,
        from: Mailbox,
        to: Vec<Mailbox>,
    },
    Sms {
        messages_url: reqwest::Url,
        account_sid: String,
        auth_token: String,
        from: String,
        to: Vec<String>,
    },
}

impl Sink {
    /// A short name for logs (`webhook[0]`, ...).
    fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Email { .. } => "email",
            Self::Sms { .. } => "sms",
        }
    }

    /// One delivery attempt.
    async fn deliver(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        msg: &Rendered,
    ) -> Result<(), String> {
        match self {
            Self::Webhook { url, headers } => {
                let mut body = serde_json::Map::new();
                body.insert("text".into(), msg.text.clone().into());
                for (k, v) in &msg.fields {
                    body.insert((*k).into(), json_value(k, v));
                }
                let mut request = http.post(url.clone()).timeout(timeout).json(&body);
                for (k, v) in headers {
                    request = request.header(k, v);
                }
                check(request.send().await).await
            }
            Self::Sms {
                messages_url,
                account_sid,
                auth_token,
                from,
                to,
            } => {
                for number in to {
                    let form = [
                        ("To", number.as_str()),
                        ("From", from.as_str()),
                        ("Body", msg.text.as_str()),
                    ];
                    let request = http
                        .post(messages_url.clone())
                        .timeout(timeout)
                        .basic_auth(account_sid, Some(auth_token))
                        .form(&form);
                    check(request.send().await)
                        .await
                        .map_err(|e| format!("to {number}: {e}"))?;
                }
                Ok(())
            }
            Self::Email {
                host,
                port,
                security,
                credentials,
                from,
                to,
            } => {
                let mut builder = Message::builder()
                    .from(from.clone())
                    .subject(msg.subject.clone());
                for rcpt in to {
                    builder = builder.to(rcpt.clone());
                }
                let message = builder
                    .header(ContentType::TEXT_PLAIN)
                    .body(msg.text.clone())
                    .map_err(|e| format!("cannot build the email: {e}"))?;
                let transport = match security {
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                    }
                    SmtpSecurity::Plain => Ok(
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                    ),
                }
                .map_err(|e| format!("smtp setup: {e}"))?;
                let mut transport = transport.port(*port).timeout(Some(timeout));
                if let Some((user, password)) = credentials {
                    transport =
                        transport.credentials(Credentials::new(user.clone(), password.clone()));
                }
                transport
                    .build()
                    .send(message)
                    .await
                    .map(drop)
                    .map_err(|e| format!("smtp {host}:{port}: {e}"))
            }
        }
    }
}

async fn check(response: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    let response = response.map_err(|e| {
        // reqwest's Display hides the cause; the chain says "connection refused" etc.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    Err(format!("HTTP {status}: {body}"))
}

/// Retry policy for one sink.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retry {
    pub(crate) attempts: u32,
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) timeout: Duration,
}

/// Starts the task for one sink; returns its queue. `rng` draws the retry jitter.
pub(crate) fn spawn_sink(
    name: String,
    sink: Sink,
    retry: Retry,
    http: reqwest::Client,
    mut rng: StdRng,
) -> mpsc::Sender<Rendered> {
    let (tx, mut rx) = mpsc::channel::<Rendered>(64);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let jitter = StdRng::from_rng(&mut rng);
            let mut backoff = Backoff::with_rng(retry.initial, retry.max, jitter);
            for attempt in 1..=retry.attempts.max(1) {
                match sink.deliver(&http, retry.timeout, &msg).await {
                    Ok(()) => {
                        tracing::info!(sink = %name, attempt, "notification sent");
                        break;
                    }
                    Err(e) if attempt < retry.attempts => {
                        let delay = backoff.next_delay();
                        tracing::warn!(sink = %name, attempt, "sending failed: {e}; retrying in {} ms", delay.as_millis());
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => {
                        tracing::error!(sink = %name, attempt, kind = sink.kind(), "giving up on this notification: {e}");
                    }
                }
            }
        }
    });
    tx
}
