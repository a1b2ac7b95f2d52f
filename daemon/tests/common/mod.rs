//! Shared by the daemon's integration tests.

// Each test crate that says `mod common;` compiles all of it and uses only part.
#[allow(dead_code)]
pub(crate) mod procs;
