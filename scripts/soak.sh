#!/usr/bin/env bash
# The long churn soak: scripts/soak.sh [CONTAINERS] (default 1000). Runs tests/soak.rs with
# that many containers created and removed (pods of three, 30 alive, 3 pods replaced a second)
# while the agent sweeps at 1 s, and prints its numbers (RSS, descriptors, sweeps, the latest
# series after a removal). Root only; takes about two and a half minutes for 1000.
# `cargo test` runs the short form (150 containers) by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PODOMETER_SOAK_CONTAINERS=${1:-1000} exec cargo test --test soak -- --nocapture
