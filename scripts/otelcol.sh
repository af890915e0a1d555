#!/usr/bin/env bash
# Build (once) the OpenTelemetry Collector of deploy/otelcol/builder.yaml and print its path.
#
#   bash scripts/otelcol.sh        logs on stderr; the last stdout line is the binary's path
#
# The Collector is built by the OpenTelemetry Collector Builder
# (go.opentelemetry.io/collector/cmd/builder, same release as the core modules) from the
# manifest in the repository; the binary is reused until the manifest changes.
#
# Release: every module at core v0.161.0 / v1.67.0 and contrib v0.161.0, the one release at
# which the Go module proxy serves all the manifest's modules: dockerstatsreceiver and
# podmanreceiver are served at v0.161.0 only (not v0.160.0, nor v0.162.0 … v0.165.1), and
# k8sattributesprocessor, versioned v1.x from then on, is served as v1.0.0 = contrib v0.161.0
# (the v0.x line stops at v0.160.0). The header-checking auth extension is bearertokenauth:
# basicauth is served at v0.158.0 only, which cannot sit beside the rest.
# Its go.mod files ask for go 1.26.0: the machines' Go 1.26.8 builds it (GOTOOLCHAIN=local,
# no other toolchain is fetched).
#
# Cache, outside the clone (OTELCOL_CACHE, default /var/tmp/podometer-otelcol):
#   <release>/build/   the builder's generated module and the binary otelcol-podometer
#   <release>/stamp    sha256 of the manifest the binary was built from
#   bin/builder        the builder itself
#   build.log          the last build's output
# The Go module and build caches are shared with scripts/kube-node.sh's
# (/var/tmp/podometer-kube/gopath and gocache; GOMODCACHE/GOCACHE override): both builds need
# client-go, gRPC and protobuf, which are then fetched and compiled once per machine.
# Builds run with nice -n 19 and CGO_ENABLED=0 (a static binary); a lock makes two callers
# wait for one build.
# Build time: docs/collector.md ("Build").
set -Eeuo pipefail

RELEASE=v0.161.0
OTELCOL_CACHE=${OTELCOL_CACHE:-/var/tmp/podometer-otelcol}
repo=$(cd "$(dirname "$0")/.." && pwd)
manifest=$repo/deploy/otelcol/builder.yaml
log() { echo "otelcol: $*" >&2; }
die() { log "$*"; exit 1; }

relroot=$OTELCOL_CACHE/$RELEASE
outdir=$relroot/build
bin=$outdir/otelcol-podometer
stamp=$relroot/stamp

[ -f "$manifest" ] || die "no manifest at $manifest"
command -v go >/dev/null || die "go is not installed (the machines have Go 1.26)"
mkdir -p "$relroot" "$OTELCOL_CACHE/bin"
want=$(sha256sum "$manifest" | cut -d' ' -f1)

exec 9>"$OTELCOL_CACHE/lock"
flock 9

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$bin"
  exit 0
fi

export GOMODCACHE=${GOMODCACHE:-/var/tmp/podometer-kube/gopath/pkg/mod}
export GOCACHE=${GOCACHE:-/var/tmp/podometer-kube/gocache}
export GOPATH=$OTELCOL_CACHE/gopath GOBIN=$OTELCOL_CACHE/bin
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$GOMODCACHE" "$GOCACHE"

start=$(date +%s)
{
  if [ ! -x "$OTELCOL_CACHE/bin/builder" ] ||
    [ "$(cat "$OTELCOL_CACHE/bin/builder.version" 2>/dev/null)" != "$RELEASE" ]; then
    log "installing the builder $RELEASE"
    nice -n 19 go install "go.opentelemetry.io/collector/cmd/builder@$RELEASE"
    echo "$RELEASE" >"$OTELCOL_CACHE/bin/builder.version"
  fi
  log "building the Collector from $manifest into $outdir (cold: see docs/collector.md)"
  rm -f "$stamp"
  # The builder's `go mod tidy` also loads the tests of the components' own packages, and
  # some modules only those tests import (pkg/semconvtest, scraper/scrapertest) are not
  # served at this release: the builder runs go through this shim, which lets tidy pass over
  # them (-e). A package the Collector itself needs and cannot get still fails `go build`.
  cat >"$relroot/go-tidy-e" <<'SHIM'
#!/bin/sh
if [ "$1" = mod ] && [ "$2" = tidy ]; then shift 2; exec go mod tidy -e "$@"; fi
exec go "$@"
SHIM
  chmod +x "$relroot/go-tidy-e"
  # The builder resolves output_path against its working directory: point it at the cache.
  sed -e "s|^  output_path: .*|  output_path: $outdir|" \
    -e "s|^  version: .*|&\n  go: $relroot/go-tidy-e|" "$manifest" >"$relroot/builder.yaml"
  cd "$relroot"
  nice -n 19 "$OTELCOL_CACHE/bin/builder" --config "$relroot/builder.yaml"
} >"$OTELCOL_CACHE/build.log" 2>&1 || {
  tail -n 40 "$OTELCOL_CACHE/build.log" >&2
  die "build failed (full log: $OTELCOL_CACHE/build.log)"
}
[ -x "$bin" ] || die "the builder made no $bin"
echo "$want" >"$stamp"
log "built in $(($(date +%s) - start)) s"
echo "$bin"
