//! Writing a node's config file: the one writer behind every generated config (the local
//! clusters of `clustd demo` and the tests, the benches, the simulation), so each of them
//! emits the same keys, with strings quoted and escaped by `toml`, and a key renamed in
//! [`Settings`](super::Settings) is renamed here once.
//!
//! ```
//! use clustd::config::write::NodeToml;
//! use clustd_transport::TransportKind;
//!
//! let text = NodeToml::new("node-1", TransportKind::Quic, "127.0.0.1:7400".parse().unwrap())
//!     .data_dir("data-node-1")
//!     .key_file("node-1.key")
//!     .secret_file("secret")
//!     .driver_secret_file("driver-secret")
//!     .heartbeat_ms(100)
//!     .election_timeout_ms([1000, 2000])
//!     .to_toml();
//! assert!(text.starts_with("[node]\nid = \"node-1\"\n"));
//! ```

use std::net::SocketAddr;
use std::path::Path;

use clustd_transport::{PublicKey, TransportKind};

/// A node's config file, built key by key: `[node]`, `[cluster]` (with its peers) and
/// `[election]`, then any further tables as TOML text. Keys appear in the order they are set.
#[derive(Debug, Clone)]
#[must_use]
pub struct NodeToml {
    node: Vec<(&'static str, String)>,
    cluster: Vec<(&'static str, String)>,
    peers: Vec<String>,
    election: Vec<(&'static str, String)>,
    /// TOML written as given after the typed `[election]` keys: more `[election]` keys,
    /// then other tables (`[[check]]`, `[health]`, `[fence]`, ...).
    tail: String,
}

/// A TOML string literal.
fn string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn path(path: &Path) -> String {
    string(&path.display().to_string())
}

impl NodeToml {
    /// A node `id` speaking `transport` on `listen`; everything else is set by the methods.
    pub fn new(id: &str, transport: TransportKind, listen: SocketAddr) -> Self {
        Self {
            node: vec![("id", string(id))],
            cluster: vec![
                ("transport", string(transport.as_str())),
                ("listen", string(&listen.to_string())),
            ],
            peers: Vec::new(),
            election: Vec::new(),
            tail: String::new(),
        }
    }

    /// `node.data_dir`.
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.node.push(("data_dir", path(dir.as_ref())));
        self
    }

    /// `node.witness`: a voter that never becomes master.
    pub fn witness(mut self, witness: bool) -> Self {
        self.node.push(("witness", witness.to_string()));
        self
    }

    /// `node.key_file`: the node's private key in a file.
    pub fn key_file(mut self, file: impl AsRef<Path>) -> Self {
        self.node.push(("key_file", path(file.as_ref())));
        self
    }

    /// `node.key`: the node's private key inline, in hex (the simulation, which has no files).
    pub fn key(mut self, private_hex: &str) -> Self {
        self.node.push(("key", string(private_hex)));
        self
    }

    /// `cluster.secret_file`.
    pub fn secret_file(mut self, file: impl AsRef<Path>) -> Self {
        self.cluster.push(("secret_file", path(file.as_ref())));
        self
    }

    /// `cluster.secret`: the cluster secret inline.
    pub fn secret(mut self, secret: &str) -> Self {
        self.cluster.push(("secret", string(secret)));
        self
    }

    /// `cluster.driver_secret_file`.
    pub fn driver_secret_file(mut self, file: impl AsRef<Path>) -> Self {
        self.cluster
            .push(("driver_secret_file", path(file.as_ref())));
        self
    }

    /// `cluster.driver_secret`: the drivers' credential inline.
    pub fn driver_secret(mut self, secret: &str) -> Self {
        self.cluster.push(("driver_secret", string(secret)));
        self
    }

    /// `cluster.driver_socket` (`""`: none).
    pub fn driver_socket(mut self, socket: impl AsRef<Path>) -> Self {
        self.cluster.push(("driver_socket", path(socket.as_ref())));
        self
    }

    /// One entry of `cluster.peers`.
    pub fn peer(mut self, id: &str, addr: SocketAddr, key: &PublicKey) -> Self {
        self.peers.push(format!(
            "{{ id = {}, addr = {}, key = {} }}",
            string(id),
            string(&addr.to_string()),
            string(&key.to_string())
        ));
        self
    }

    /// `election.heartbeat_ms`.
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.election.push(("heartbeat_ms", ms.to_string()));
        self
    }

    /// `election.election_timeout_ms`: `[min, max]`.
    pub fn election_timeout_ms(mut self, [min, max]: [u64; 2]) -> Self {
        self.election
            .push(("election_timeout_ms", format!("[{min}, {max}]")));
        self
    }

    /// `election.max_clock_drift` (ρ).
    pub fn max_clock_drift(mut self, rho: f64) -> Self {
        self.election
            .push(("max_clock_drift", toml::Value::Float(rho).to_string()));
        self
    }

    /// `election.priority`.
    pub fn priority(mut self, priority: u8) -> Self {
        self.election.push(("priority", priority.to_string()));
        self
    }

    /// `election.preempt`.
    pub fn preempt(mut self, preempt: bool) -> Self {
        self.election.push(("preempt", preempt.to_string()));
        self
    }

    /// `election.stop_budget_ms`.
    pub fn stop_budget_ms(mut self, ms: u64) -> Self {
        self.election.push(("stop_budget_ms", ms.to_string()));
        self
    }

    /// `election.driver_lease_margin_ms`.
    pub fn driver_lease_margin_ms(mut self, ms: u64) -> Self {
        self.election
            .push(("driver_lease_margin_ms", ms.to_string()));
        self
    }

    /// Appends TOML text after the typed `[election]` keys: more `[election]` keys (as the
    /// local clusters' callers pass them), then any other tables. A newline is added if
    /// `text` does not end in one.
    pub fn then_toml(mut self, text: &str) -> Self {
        self.tail.push_str(text);
        if !self.tail.is_empty() && !self.tail.ends_with('\n') {
            self.tail.push('\n');
        }
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("[node]\n");
        let keys = |out: &mut String, keys: &[(&str, String)]| {
            for (key, value) in keys {
                out.push_str(&format!("{key} = {value}\n"));
            }
        };
        keys(&mut out, &self.node);
        out.push_str("\n[cluster]\n");
        keys(&mut out, &self.cluster);
        out.push_str(&format!("peers = [{}]\n", self.peers.join(", ")));
        out.push_str("\n[election]\n");
        keys(&mut out, &self.election);
        out.push_str(&self.tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths and ids with quotes or backslashes come out as TOML strings that read back.
    #[test]
    fn strings_are_escaped() {
        let text = NodeToml::new(
            "node-1",
            TransportKind::WebSocket,
            "127.0.0.1:7400".parse().expect("addr"),
        )
        .data_dir("a \"quoted\" \\dir")
        .witness(true)
        .max_clock_drift(0.05)
        .then_toml("[health]\nmin_master_ms = 0")
        .to_toml();
        let table: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(
            table["node"]["data_dir"].as_str(),
            Some("a \"quoted\" \\dir")
        );
        assert_eq!(table["node"]["witness"].as_bool(), Some(true));
        assert_eq!(table["cluster"]["transport"].as_str(), Some("websocket"));
        assert_eq!(table["cluster"]["peers"].as_array().map(Vec::len), Some(0));
        assert_eq!(table["election"]["max_clock_drift"].as_float(), Some(0.05));
        assert_eq!(table["health"]["min_master_ms"].as_integer(), Some(0));
    }
}
