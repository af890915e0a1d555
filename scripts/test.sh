#!/usr/bin/env bash
# The test command: installs what the tests need when missing (scripts/testbed.sh), then runs
# the format check, clippy and every test. `.ci/run` calls exactly this.
# Live tests need root; a live test whose prerequisites are missing fails (PODOMETER_ALLOW_SKIP=1
# skips it instead, except under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/testbed.sh)"

echo "== container image (scripts/image.sh)" >&2
# tests/image.rs and tests/sidecar.rs run it; a release build of the static binary.
bash scripts/image.sh >/dev/null

echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test" >&2
# Integration test binaries run one after another; the tests inside each run in parallel
# (RUST_TEST_THREADS, not a libtest flag: the criterion benches, smoke-run here, reject those).
RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" cargo test --all-targets --no-fail-fast
echo "== node benchmark, smoke (scripts/bench-node.sh --smoke)" >&2
# The whole agent over a tiny synthetic node (N = 12, 30; 3 sweeps): keeps the harness working.
bash scripts/bench-node.sh --smoke
