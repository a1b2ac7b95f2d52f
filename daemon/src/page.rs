//! The admin API's status page (`GET /`) and its event stream (`GET /events`).
//!
//! The page is one self-contained HTML document from the binary (no external assets): the
//! cluster table rendered on the server, so it reads without JavaScript, and a small script
//! that keeps it live from `/events`. The stream is server-sent events: on connect a
//! `cluster` event with the whole [`ClusterView`], then, as they happen, `role`, `health`
//! and `peer` events (what changed, one node each) and a fresh `cluster` event with every
//! change and at least once a second.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};

use crate::runtime::{Command, Handle};
use crate::status::{ClusterView, NodeView, Status, format_unix_ms, human_ms};

/// The most event streams served at once: each holds an admin connection, and the rest
/// must stay free for `clustd status`.
pub const MAX_EVENT_STREAMS: usize = 16;
/// How often a stream looks for changes.
const POLL: Duration = Duration::from_millis(200);
/// A `cluster` event goes out at least this often (ages and leases move on).
const REFRESH: Duration = Duration::from_secs(1);

const SCRIPT: &str = include_str!("page/page.js");

/// HTML-escapes `text`.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The health column, as the page and its script say it.
pub fn health_word(n: &NodeView) -> &'static str {
    match (n.maintenance, n.witness, n.healthy, n.eligible) {
        (None, ..) => "-",
        (Some(true), ..) => "maintenance",
        (_, Some(true), ..) => "witness",
        (_, _, Some(false), _) => "UNHEALTHY",
        (.., Some(false)) => "not eligible",
        _ => "healthy",
    }
}

fn heard_text(n: &NodeView) -> String {
    match (n.this_node, n.heard, n.last_heard_ms_ago) {
        (true, ..) => "this node".into(),
        (_, true, Some(ms)) => format!("{} ago", human_ms(ms)),
        (_, false, Some(ms)) => format!("NOT HEARD for {}", human_ms(ms)),
        (_, _, None) => "never".into(),
    }
}

/// The page, with `view` and this node's `status` (for its recent role changes) in it.
pub fn render(view: &ClusterView, status: &Status) -> String {
    let mut rows = String::new();
    for n in &view.nodes {
        let class = match (n.role.as_str(), n.heard) {
            ("master", _) => "master",
            (_, false) => "unheard",
            _ => "",
        };
        let reason = n
            .ineligible_reason
            .as_deref()
            .map(|r| format!("<br><small>{}</small>", esc(r)))
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<tr data-node=\"{id}\" class=\"{class}\"><td>{id}{me}</td><td class=\"role\">{role}</td><td>{term}</td><td>{leader}</td><td>{lease}</td><td>{health}{reason}</td><td>{heard}</td><td>{addr}</td><td>{drivers}</td></tr>",
            id = esc(&n.id),
            me = if n.this_node { " *" } else { "" },
            role = esc(&n.role),
            term = n.term.map_or("-".into(), |t| t.to_string()),
            leader = esc(n.leader.as_deref().unwrap_or("-")),
            lease = n.lease_remaining_ms.map_or("-".into(), human_ms),
            health = health_word(n),
            heard = esc(&heard_text(n)),
            addr = esc(&n.addr),
            drivers = esc(&n.drivers_text()),
        );
    }
    let warnings: String = view
        .warnings
        .iter()
        .map(|w| format!("<li>{}</li>", esc(w)))
        .collect();
    let history: String = status
        .history
        .iter()
        .rev()
        .take(20)
        .map(|h| {
            format!(
                "<li>{}  {} became {} (term {}, {})</li>",
                format_unix_ms(h.at_unix_ms),
                esc(&status.node_id),
                esc(&h.role),
                h.term,
                esc(&h.reason)
            )
        })
        .collect();
    let (master, master_class) = match &view.master {
        Some(m) => (esc(m), "ok"),
        None => ("NONE".into(), "bad"),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clustd: {from}</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; margin: 0 0 .6em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .35em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }}
th {{ background: #f3f3f3; }}
tr.master td {{ background: #e6f4ea; font-weight: 600; }}
tr.unheard td {{ color: #999; }}
.ok {{ color: #137333; }} .bad {{ color: #c5221f; font-weight: 600; }}
#warnings li {{ color: #c5221f; }}
#history {{ font-family: ui-monospace, monospace; font-size: 12px; }}
small {{ color: #666; font-weight: normal; }}
</style></head>
<body>
<h1>clustd cluster — master <span id="master" class="{master_class}">{master}</span></h1>
<p>As node <b id="from">{from}</b> hears it; <span id="live" class="bad">not live (no JavaScript, or not connected yet)</span>.</p>
<ul id="warnings">{warnings}</ul>
<table><thead><tr><th>node</th><th>role</th><th>term</th><th>leader</th><th>lease</th><th>health</th><th>heard</th><th>address</th><th>drivers</th></tr></thead>
<tbody id="nodes">{rows}</tbody></table>
<h2>Recent history</h2>
<ul id="history">{history}</ul>
<script>{SCRIPT}</script>
</body></html>
"#,
        from = esc(&view.from),
    )
}

/// One node's change between two views, as an event.
fn changes(old: &ClusterView, new: &ClusterView) -> Vec<Event> {
    let mut out = Vec::new();
    for n in &new.nodes {
        let Some(o) = old.nodes.iter().find(|o| o.id == n.id) else {
            continue;
        };
        let json = |v: serde_json::Value| v.to_string();
        if o.role != n.role {
            out.push(Event::default().event("role").data(json(serde_json::json!({
                "node": n.id, "role": n.role, "was": o.role, "term": n.term,
            }))));
        }
        if health_word(o) != health_word(n) {
            out.push(
                Event::default()
                    .event("health")
                    .data(json(serde_json::json!({
                        "node": n.id, "health": health_word(n), "was": health_word(o),
                        "reason": n.ineligible_reason,
                    }))),
            );
        }
        if o.heard != n.heard {
            out.push(Event::default().event("peer").data(json(serde_json::json!({
                "node": n.id, "heard": n.heard,
            }))));
        }
    }
    out
}

/// What makes a `cluster` event news (ages and leases move on by themselves).
fn gist(view: &ClusterView) -> ClusterView {
    let mut view = view.clone();
    for n in &mut view.nodes {
        n.last_heard_ms_ago = None;
        n.report_age_ms = None;
        n.lease_remaining_ms = None;
    }
    view
}

/// A fresh cluster view, or `None` when the runtime does not answer.
async fn fresh(handle: &Handle) -> Option<ClusterView> {
    match tokio::time::timeout(Duration::from_secs(1), handle.command(Command::Refresh)).await {
        Ok(true) => Some(handle.cluster()),
        _ => None,
    }
}

/// Counts the event streams open; a stream's slot is given back when it ends.
#[derive(Debug, Clone, Default)]
pub struct Streams(Arc<AtomicUsize>);

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Streams {
    fn take(&self) -> Option<Slot> {
        let taken = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_EVENT_STREAMS).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Slot(self.0.clone()))
    }
}

struct Stream {
    handle: Handle,
    last: Option<(ClusterView, tokio::time::Instant)>,
    queued: std::collections::VecDeque<Event>,
    _slot: Slot,
}

/// `GET /events`, or `None` when [`MAX_EVENT_STREAMS`] are open already.
pub fn events(
    handle: Handle,
    streams: Streams,
) -> Option<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    let slot = streams.take()?;
    let state = Stream {
        handle,
        last: None,
        queued: std::collections::VecDeque::new(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.queued.pop_front() {
                return Some((Ok(event), s));
            }
            if s.last.is_some() {
                tokio::time::sleep(POLL).await;
            }
            // A runtime that stopped answering ends the stream (the page reconnects).
            let view = fresh(&s.handle).await?;
            let now = tokio::time::Instant::now();
            let news = match &s.last {
                None => true,
                Some((old, at)) => {
                    s.queued.extend(changes(old, &view));
                    gist(old) != gist(&view) || now >= *at + REFRESH
                }
            };
            if news {
                let data = serde_json::to_string(&view).unwrap_or_default();
                s.queued
                    .push_back(Event::default().event("cluster").data(data));
                s.last = Some((view, now));
            }
        }
    });
    Some(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
