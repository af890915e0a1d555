#!/usr/bin/env bash
# The node benchmark: the whole agent at 1 s over a synthetic kubelet-style node of
# N containers, beside the pread floor, a naive reader, Netdata's cgroups plugin and
# `podman stats`, the agent again with the lean profile (config/lean.yaml) and without its
# TCP/UDP counters (bench/no-protocols.yaml, for what they add per pod); then, in the same run,
# the OpenTelemetry Collector's docker_stats and podman_stats receivers over N real containers
# of a dockerd and a Podman service of the bench's own (the agent over the same containers
# beside them), and on the real node of scripts/kube-node.sh the Collector's kubeletstats
# receiver and the kubelet's /metrics/cadvisor (the kubelet's CPU with and without them).
# Writes node.{md,csv,dat,png}, node-peers.{csv,dat,png} and README.md (bench/node-method.md
# followed by the tables) into the results directory. Root only.
#
#   scripts/bench-node.sh                 # N = 100, 500, 1000; 20 sweeps; 40 Podman containers
#                                         # for `podman stats`; engines at N = 100, 500, 1000;
#                                         # the real node; results in bench/results/node-runNN
#                                         # (the next free NN)
#   scripts/bench-node.sh --smoke         # CI: N = 12, 30; 3 sweeps; engines at N = 4; no
#                                         # Netdata, no `podman stats`, no real node; debug
#                                         # build, results in a temp dir
#   scripts/bench-node.sh --out DIR       # results in DIR
#   scripts/bench-node.sh --no-kube       # without the real node
# Extra arguments go to the harness (examples/bench_node/main.rs): --sizes, --sweeps,
# --podman N, --no-netdata, --out DIR, --label SUFFIX, --engines docker,podman|none,
# --engine-sizes, --kube-seconds S.
# The Collector: $OTELCOL_BIN if set, else the binary scripts/otelcol.sh builds (cached outside
# the clone); when neither gives one, its cells say "not run" and why.
# Installs what it needs (Debian: netdata, gnuplot-nox; and what scripts/testbed.sh installs).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "bench-node: $*" >&2; }

smoke=0
kube=1
args=()
out=""
label=""
prev=""
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    --no-kube) kube=0 ;;
    *) args+=("$a") ;;
  esac
  [ "$prev" = --out ] && out=$a
  [ "$prev" = --label ] && label=$a
  prev=$a
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

# The Collector for the docker_stats, podman_stats and kubeletstats cells.
otelcol=()
if [ -n "${OTELCOL_BIN:-}" ]; then
  otelcol=(--otelcol "$OTELCOL_BIN")
elif [ -f scripts/otelcol.sh ]; then
  otelcol_log=$(mktemp)
  if bin=$(bash scripts/otelcol.sh 2>"$otelcol_log" | tail -n1) && [ -x "$bin" ]; then
    otelcol=(--otelcol "$bin")
  else
    otelcol=(--otelcol-missing "scripts/otelcol.sh failed: $(tail -n1 "$otelcol_log")")
  fi
  rm -f "$otelcol_log"
else
  otelcol=(--otelcol-missing "no Collector: scripts/otelcol.sh is missing and OTELCOL_BIN is unset")
fi

if [ "$smoke" = 1 ]; then
  # The engines need podman's config and the busybox docker-archive (scripts/test.sh has them).
  [ -n "${PODOMETER_BB_DOCKER_TAR:-}" ] || eval "$(bash scripts/testbed.sh)"
  # The debug build `cargo test` already made; tiny sizes, no Netdata, no real node.
  cargo build -q --bin podometer --example bench_node
  results=${out:-$(mktemp -d)}
  [ -n "$out" ] || trap 'rm -rf "$results"' EXIT
  target/debug/examples/bench_node --agent target/debug/podometer --sizes 12,30 --sweeps 3 \
    --podman 0 --no-netdata --engine-sizes 4 --lean-config config/lean.yaml \
    --protocols-off-config bench/no-protocols.yaml "${otelcol[@]}" --out "$results" "${args[@]}"
else
  eval "$(bash scripts/testbed.sh)"   # podman, runc, dockerd and the local busybox images
  # The agent measured is the shipped binary (the image's: static, LTO, stripped); the harness
  # is a plain release build.
  agent=$(bash scripts/build-dist.sh)
  cargo build -q --release --example bench_node
  if [ -z "$out" ]; then
    last=$(find bench/results -maxdepth 1 -name 'node-run*' | sed -E 's/.*node-run([0-9]+).*/\1/' | sort -n | tail -n1)
    out=bench/results/node-run$((${last:-0} + 1))
  fi
  results=$out
  kube_args=()
  [ "$kube" = 1 ] && kube_args=(--kube)
  target/release/examples/bench_node --agent "$agent" --lean-config config/lean.yaml \
    --protocols-off-config bench/no-protocols.yaml "${otelcol[@]}" "${kube_args[@]}" \
    --out "$results" "${args[@]}"
fi

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
peers_dat="$results/node-peers$label.dat"
peers_png="$results/node-peers$label.png"
gnuplot <<PLOT
set terminal pngcairo size 900,560 font "sans,11"
set output "$peers_png"
set title "CPU per container-sample at 1 s: podometer and the Collector's receivers"
set xlabel "containers (N)"
set ylabel "µs per container-sample (user + system)"
set logscale y
set grid
set key outside right
set datafile missing "NaN"
plot "$peers_dat" using 1:2 with linespoints lw 2 title "podometer, synthetic node", \
     "$peers_dat" using 1:3 with linespoints lw 2 dashtype 2 title "podometer, Docker containers", \
     "$peers_dat" using 1:4 with linespoints title "Collector docker_stats", \
     "$peers_dat" using 1:5 with linespoints dashtype 3 title "docker_stats + dockerd above idle", \
     "$peers_dat" using 1:6 with linespoints lw 2 dashtype 4 title "podometer, Podman containers", \
     "$peers_dat" using 1:7 with linespoints title "Collector podman_stats", \
     "$peers_dat" using 1:8 with linespoints dashtype 3 title "podman_stats + Podman service above idle"
PLOT
[ -s "$peers_png" ] || { log "no peers plot written"; exit 1; }
{ cat bench/node-method.md; echo; echo "# Results"; echo; cat "$results/node$label.md"; } > "$results/README$label.md"
cat "$results/node$label.md"
log "wrote $results/{node,node-peers}$label.* and README$label.md"
