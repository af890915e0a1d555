#!/usr/bin/env bash
# Builds the binary podometer ships (the one in the container image) and prints its path:
# static glibc (crt-static), whole-program LTO in one codegen unit, no debug info, stripped,
# --locked. scripts/image.sh packs it; scripts/bench-node.sh measures it, so the node benchmark's
# numbers are those of the binary users run.
#
# Whole-program LTO in one codegen unit: the binary is about a third smaller than the plain
# release build (and no slower), which keeps the image under its 20 MiB target and the agent's
# resident code small (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# --target keeps crt-static away from build scripts and proc macros (they must stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=0 \
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  cargo build --release --locked --quiet --target "$target" --bin podometer >&2
bin="$PWD/target/$target/release/podometer"
if ! ldd "$bin" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
  echo "build-dist: $bin is not static" >&2
  exit 1
fi
echo "$bin"
