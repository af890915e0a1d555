#![no_main]
// The entry point is shared with tests/fuzz_corpus.rs, which replays the corpus on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| podometer::fuzzing::net_protocols(data));
