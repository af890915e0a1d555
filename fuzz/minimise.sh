#!/usr/bin/env bash
# Minimises the committed corpora with `cargo fuzz cmin` (libFuzzer's merge) counting each
# coverage edge once (-use_counters=0): an input is kept for a path no other input takes, not
# for going round a loop more often than the others (with hit-count buckets, 10,800 of the
# corpora's 11,900 inputs were kept; with edges, 3,700). Crashers stay in fuzz/regressions/.
#   fuzz/minimise.sh [TARGET...]      needs the nightly toolchain and cargo-fuzz
set -euo pipefail
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
for t in "${targets[@]}"; do
  before=$(find "corpus/$t" -type f | wc -l)
  cargo +nightly fuzz cmin -O "$t" -- -use_counters=0 >&2
  echo "$t: $before -> $(find "corpus/$t" -type f | wc -l) inputs"
done
