//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) and every kept crasher
//! (`fuzz/regressions/<target>/`) through the same entry points the fuzz targets call
//! (`podometer::fuzzing`), on stable, as part of `cargo test`: an input that once crashed a
//! parser, or that the fuzzer found interesting, stays tested. An input that runs longer than
//! [`PER_INPUT`] fails the test as a hang would fail the fuzzer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest one input may take. The slowest input of the minimised corpora takes a few
/// milliseconds in a debug build; libFuzzer's own limit is far longer, but a parser that needs
/// seconds for a 64 KiB input is a finding here.
const PER_INPUT: Duration = Duration::from_secs(5);

enum Outcome {
    Passed,
    Panicked,
    TimedOut,
}

/// Runs `entry` on `data` on a thread of its own, so that a hang is reported instead of
/// holding the test forever (the thread is left behind; the test fails anyway).
fn replay(entry: podometer::fuzzing::Entry, data: Vec<u8>) -> (Outcome, Duration) {
    let (done, result) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let panicked = std::panic::catch_unwind(|| entry(&data)).is_err();
        let _ = done.send(panicked);
    });
    let outcome = match result.recv_timeout(PER_INPUT) {
        Ok(false) => Outcome::Passed,
        Ok(true) | Err(mpsc::RecvTimeoutError::Disconnected) => Outcome::Panicked,
        Err(mpsc::RecvTimeoutError::Timeout) => Outcome::TimedOut,
    };
    (outcome, started.elapsed())
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
}

#[test]
fn every_corpus_file_replays_without_a_panic_or_a_hang() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut panics = Vec::new();
    let mut hangs = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for (name, entry) in podometer::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets").join(format!("{name}.rs")).is_file(),
            "target {name} has no fuzz/fuzz_targets/{name}.rs"
        );
        let mut replayed = 0;
        for dir in [root.join("corpus").join(name), root.join("regressions").join(name)] {
            for path in inputs(&dir) {
                let (outcome, took) = replay(*entry, std::fs::read(&path).unwrap());
                match outcome {
                    Outcome::Passed => {}
                    Outcome::Panicked => panics.push(path.display().to_string()),
                    Outcome::TimedOut => hangs.push(path.display().to_string()),
                }
                if took > slowest.0 {
                    slowest = (took, path.display().to_string());
                }
                replayed += 1;
            }
        }
        assert!(replayed >= 3, "target {name}: only {replayed} corpus files under {}", root.display());
    }
    eprintln!("slowest input: {:?} ({})", slowest.0, slowest.1);
    assert!(panics.is_empty(), "inputs that panic: {panics:#?}");
    assert!(hangs.is_empty(), "inputs that take longer than {PER_INPUT:?}: {hangs:#?}");
}

#[test]
fn a_hanging_input_is_reported_as_one() {
    fn hang(_: &[u8]) {
        std::thread::sleep(PER_INPUT * 2);
    }
    let (outcome, took) = replay(hang, Vec::new());
    assert!(matches!(outcome, Outcome::TimedOut), "a sleep past the limit passed");
    assert!(took < PER_INPUT * 2, "the replay waited for the hang: {took:?}");
    let (outcome, _) = replay(|_| panic!("a finding"), Vec::new());
    assert!(matches!(outcome, Outcome::Panicked));
}
