#!/usr/bin/env bash
# The test command: installs what the tests need when missing (scripts/testbed.sh), then runs
# the format check, clippy and every test. `.ci/run` calls exactly this.
# Live tests need root; a live test whose prerequisites are missing fails (PODOMETER_ALLOW_SKIP=1
# skips it instead, except under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/testbed.sh)"

# The Go builds the node tests need (the kube node, helm, the Collector) are cached outside the
# clone; on a fresh machine they are most of a run's added time (docs/testing.md, "Time").
# Started now at nice 19, they take what the Rust builds and the tests leave idle. Each script
# holds its own lock, so a test that needs a binary still being built waits for it, and a build
# that failed here is retried by the test and fails there, visibly.
go_log=$(mktemp)
setsid bash -c 'bash scripts/kube-node.sh build && bash scripts/helm.sh && bash scripts/otelcol.sh' \
  >"$go_log" 2>&1 &
go_pid=$!
# setsid made it a process group of its own: end the builds with it, by its pid.
trap 'kill -- "-$go_pid" 2>/dev/null || true; rm -f "$go_log"' EXIT
echo "== Go builds for the node tests started in the background (pid $go_pid)" >&2

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
# What the Go builds took (nothing to say when they were cached).
wait "$go_pid" || echo "the background Go builds failed (the tests that need them built again):" >&2
grep -E 'building|built in|failed' "$go_log" >&2 || true
echo "== node benchmark, smoke (scripts/bench-node.sh --smoke)" >&2
# The whole agent over a tiny synthetic node (N = 12, 30; 3 sweeps): keeps the harness working.
bash scripts/bench-node.sh --smoke
