#!/usr/bin/env bash
# The node benchmark (issue 10): the whole agent at 1 s over a synthetic kubelet-style node of
# N containers, beside the pread floor, a naive reader, Netdata's cgroups plugin and
# `podman stats`, the agent again with the lean profile (config/lean.yaml) and without its
# TCP/UDP counters (bench/no-protocols.yaml, for what they add per pod); writes
# bench/results/node.{md,csv,dat,png}. Root only.
#
#   scripts/bench-node.sh                 # N = 100, 500, 1000; 20 sweeps; 40 Podman containers
#   scripts/bench-node.sh --smoke         # CI: N = 12, 30; 3 sweeps; no Podman, no Netdata;
#                                         # debug build, results in a temp dir
#   scripts/bench-node.sh --label -run2   # results as node-run2.*
# Extra arguments go to the harness (examples/bench_node.rs): --sizes, --sweeps, --podman N,
# --no-netdata, --out DIR, --label SUFFIX, --lean-config FILE (given here as config/lean.yaml).
# Installs what it needs (Debian: netdata, gnuplot-nox; and what scripts/testbed.sh installs).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "bench-node: $*" >&2; }

smoke=0
args=()
for a in "$@"; do
  if [ "$a" = --smoke ]; then smoke=1; else args+=("$a"); fi
done

need_apt=()
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
command -v nsenter >/dev/null || need_apt+=(util-linux)
if [ "$smoke" = 0 ]; then
  command -v netdata >/dev/null || need_apt+=(netdata)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

if [ "$smoke" = 1 ]; then
  # The debug build `cargo test` already made; tiny sizes, no peers.
  cargo build -q --bin podometer --example bench_node
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  target/debug/examples/bench_node --agent target/debug/podometer --sizes 12,30 --sweeps 3 \
    --podman 0 --no-netdata --lean-config config/lean.yaml --protocols-off-config bench/no-protocols.yaml \
    --out "$out" "${args[@]}"
  results="$out"
else
  eval "$(bash scripts/testbed.sh)"   # podman, runc and the local busybox images
  # The agent measured is the shipped binary (the image's: static, LTO, stripped); the harness
  # is a plain release build.
  agent=$(bash scripts/build-dist.sh)
  cargo build -q --release --example bench_node
  results=bench/results
  target/release/examples/bench_node --agent "$agent" --lean-config config/lean.yaml \
    --protocols-off-config bench/no-protocols.yaml \
    --out "$results" "${args[@]}"
fi

label=""
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --label ] && label="${args[$((i + 1))]}"
done
dat="$results/node$label.dat"
png="$results/node$label.png"
gnuplot <<PLOT
set terminal pngcairo size 900,560 font "sans,11"
set output "$png"
set title "CPU per container-sweep at 1 s (user + system)"
set xlabel "containers on the node (N)"
set ylabel "µs per container-sweep"
set logscale y
set grid
set key outside right
set datafile missing "NaN"
plot "$dat" using 1:2 with linespoints title "pread floor", \
     "$dat" using 1:3 with linespoints title "naive open+read+close", \
     "$dat" using 1:4 with linespoints lw 2 title "podometer (whole agent)", \
     "$dat" using 1:7 with linespoints lw 2 dashtype 3 title "podometer, lean profile", \
     "$dat" using 1:5 with linespoints title "Netdata cgroups plugin", \
     "$dat" using 1:6 with lines dashtype 2 title "podman stats (40 containers)"
PLOT
[ -s "$png" ] || { log "no plot written"; exit 1; }
cat "$results/node$label.md"
log "wrote $results/node$label.{md,csv,dat,png}"
