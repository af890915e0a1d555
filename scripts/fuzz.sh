#!/usr/bin/env bash
# Runs one cargo-fuzz target for a given time: scripts/fuzz.sh TARGET SECONDS
# (scripts/fuzz.sh list prints the targets). Needs the nightly toolchain; installs cargo-fuzz
# into ~/.cargo/bin the first time. The corpus grows in fuzz/corpus/TARGET; minimise it with
# `cargo +nightly fuzz cmin TARGET` before committing. CI does not fuzz: tests/fuzz_corpus.rs
# replays every committed corpus file through the same entry points on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
    cargo install --locked cargo-fuzz
fi
export PATH="$HOME/.cargo/bin:$PATH"
if [ "${1:-}" = list ] || [ $# -lt 2 ]; then
    cargo +nightly fuzz list
    [ "${1:-}" = list ] && exit 0
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
mkdir -p "fuzz/corpus/$target"
# -O: release with ASan and without overflow checks (FUZZ_FLAGS=-a adds them, at the cost of a
# separate build of every dependency). -rss_limit_mb: a parser that allocates without bound is
# a finding, not a slow run.
# shellcheck disable=SC2086
cargo +nightly fuzz run ${FUZZ_FLAGS:--O} "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
