//! Every fuzz target on every CI run, without nightly: replay each file committed under
//! `fuzz/corpus/<target>/`, then feed a few thousand seeded random inputs per target.
//! `FUZZ_RANDOM_INPUTS` overrides how many (e.g. more locally, 0 to only replay).

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    for file in &files {
        let data = std::fs::read(file).expect("readable corpus file");
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(
            result.is_ok(),
            "{target} fails on {} (replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} {})",
            file.display(),
            file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap_or(file)
                .display()
        );
    }
    files.len()
}

fn random_inputs(default: usize) -> usize {
    std::env::var("FUZZ_RANDOM_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random bytes, and random mutations of corpus files (which get much further than pure
/// noise into structured targets).
fn random(target: &str, body: fn(&[u8]), count: usize, max_len: usize) {
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + target.len() as u64);
    for i in 0..count {
        let data: Vec<u8> = if i % 2 == 0 || seeds.is_empty() {
            let len = rng.random_range(0..=max_len);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut data = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..=8) {
                match rng.random_range(0..4) {
                    0 if !data.is_empty() => {
                        let at = rng.random_range(0..data.len());
                        data[at] = rng.random();
                    }
                    1 if !data.is_empty() => {
                        let at = rng.random_range(0..data.len());
                        data.truncate(at);
                    }
                    2 => {
                        let at = rng.random_range(0..=data.len());
                        data.insert(at, rng.random());
                    }
                    _ => {
                        let at = rng.random_range(0..=data.len());
                        let len = rng.random_range(0..16);
                        let more: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        data.splice(at..at, more);
                    }
                }
            }
            data
        };
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(
            result.is_ok(),
            "{target} fails on random input #{i}: {data:?}"
        );
    }
}

macro_rules! target_test {
    ($name:ident, $random:expr, $max_len:expr) => {
        #[test]
        fn $name() {
            let target = stringify!($name);
            let replayed = replay(target, clustd_fuzz::$name);
            random(target, clustd_fuzz::$name, random_inputs($random), $max_len);
            eprintln!("{target}: {replayed} corpus files replayed");
        }
    };
}

target_test!(frame_decode, 5000, 256);
target_test!(handshake, 3000, 512);
target_test!(config_parse, 3000, 512);
target_test!(election, 2000, 512);
target_test!(driver_protocol, 2000, 512);
target_test!(datagram, 2000, 256);

#[test]
fn every_target_has_a_test_and_a_corpus() {
    for (name, _) in clustd_fuzz::TARGETS {
        assert!(corpus_dir(name).is_dir(), "no corpus for {name}");
    }
}
