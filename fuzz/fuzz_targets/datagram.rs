//! cargo-fuzz entry point; the body (shared with `cargo test -p clustd-fuzz`) is
//! `clustd_fuzz::datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clustd_fuzz::datagram(data));
