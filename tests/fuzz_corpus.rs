//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzz targets call (`podometer::fuzzing`), on stable, as part of `cargo test`:
//! an input that once crashed a parser, or that the fuzzer found interesting, stays tested.

use std::path::Path;

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (name, entry) in podometer::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets").join(format!("{name}.rs")).is_file(),
            "target {name} has no fuzz/fuzz_targets/{name}.rs"
        );
        let mut replayed = 0;
        for dir in [root.join("corpus").join(name), root.join("regressions").join(name)] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for file in entries {
                let path = file.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| entry(&data)).is_err() {
                    failures.push(path.display().to_string());
                }
                replayed += 1;
            }
        }
        assert!(replayed >= 3, "target {name}: only {replayed} corpus files under {}", root.display());
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}
