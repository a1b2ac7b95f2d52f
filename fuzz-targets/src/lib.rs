//! # clustd-fuzz: the bodies of clustd's fuzz targets
//!
//! Each public function here is one fuzz target's body: it takes arbitrary bytes, must never
//! panic on its own account, and panics (with a message saying which invariant broke) when
//! the code under test misbehaves. Two callers share them:
//! - `fuzz/fuzz_targets/*.rs` (cargo-fuzz, libFuzzer, outside the workspace), for long runs;
//! - this crate's tests (`cargo test -p clustd-fuzz`), which replay every file of
//!   `fuzz/corpus/<target>/` and a few thousand seeded random inputs per target on every CI run.
//!
//! | target | what it feeds | what it checks |
//! |---|---|---|
//! | [`frame_decode`](fn@frame_decode) | the wire codec, on raw bytes | no panic; whatever decodes re-encodes to the same value; no prefix of a valid frame decodes |
//! | [`handshake`](fn@handshake) | both sides of the Noise handshake and an established session | tampered messages never authenticate; in-order frames open intact; replays are refused; failures change no state |
//! | [`config_parse`](fn@config_parse) | the daemon's config loader, on TOML text | a valid config or an error naming the file and a key, never a panic |
//! | [`election`](fn@election) | a schedule of faults, commands and stale messages over a small cluster, or hostile messages to one node | the simulation's invariants after every step, liveness once healed; terms never go back, one vote per term, no busy timer |
//! | [`datagram`](fn@datagram) | an attacker's script against an authenticated datagram endpoint: raw bytes, genuine datagrams flipped, cut or replayed | only genuine intact datagrams get in, each once, with its proven sender; refusals change no state |
//! | [`driver_protocol`](fn@driver_protocol) | daemon→driver messages (well-formed and garbage) into the driver engine | no panic; every role acknowledged once on its connection; the driver converges to the daemon's last word; a lease that is not renewed always ends in backup |

pub mod config_parse;
pub mod datagram;
pub mod driver_protocol;
pub mod election;
pub mod frame_decode;
pub mod handshake;

pub use config_parse::config_parse;
pub use datagram::datagram;
pub use driver_protocol::driver_protocol;
pub use election::election;
pub use frame_decode::frame_decode;
pub use handshake::handshake;

/// A fuzz target's body.
pub type TargetBody = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz target and corpus folder.
pub const TARGETS: [(&str, TargetBody); 6] = [
    ("frame_decode", frame_decode),
    ("handshake", handshake),
    ("config_parse", config_parse),
    ("election", election),
    ("driver_protocol", driver_protocol),
    ("datagram", datagram),
];
