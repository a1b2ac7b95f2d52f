//! `sim`: the command-line runner of the random sweep (placeholder until the sweep lands).

fn main() {}
