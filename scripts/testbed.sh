#!/usr/bin/env bash
# Installs and prepares what the live tests and the demo need on a fresh Debian 12 machine:
# podman + runc + busybox-static, local busybox images (no registry is reachable), a
# containers.conf that works on hybrid cgroups, VictoriaMetrics and rotel.
# Idempotent: each step checks before it acts. Prints `export` lines for the environment the
# tests read (source it with: eval "$(scripts/testbed.sh)").
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tools="${PODOMETER_TOOLS:-$repo/.tools}"
mkdir -p "$tools"
log() { echo "testbed: $*" >&2; }

need_apt=()
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx nc || need_apt+=(busybox-static)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

# Podman's defaults do not work here: crun refuses hybrid cgroups and the default nofile
# ulimit exceeds the hard limit. Keep our own config instead of editing the machine's.
conf="$tools/containers.conf"
cat > "$conf" <<CONF
[containers]
default_ulimits = []
[engine]
runtime = "runc"
infra_image = "localhost/pause:1"
CONF
export CONTAINERS_CONF="$conf"

if ! podman image exists localhost/bb:1 || ! podman image exists localhost/pause:1; then
  log "building local busybox images"
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh sleep cat nc wget dd httpd head tail yes ls ps echo true sync; do
    ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
  tar -C "$root" -cf "$root.tar" .
  podman import "$root.tar" localhost/bb:1 >/dev/null
  podman import --change 'CMD ["/bin/sleep","1000000"]' "$root.tar" localhost/pause:1 >/dev/null
  rm -rf "$root" "$root.tar"
fi

# VictoriaMetrics from Debian trixie, unpacked into tools without touching apt sources.
vm="$tools/vm/usr/bin/victoria-metrics"
if [ ! -x "$vm" ]; then
  log "fetching victoria-metrics from Debian trixie"
  aptdir="$tools/apt-trixie"
  mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
  echo 'deb http://deb.debian.org/debian trixie main' > "$aptdir/sources.list"
  opts=(-oDir::Etc::SourceList="$aptdir/sources.list" -oDir::Etc::SourceParts=/dev/null
        -oDir::State::Lists="$aptdir/lists" -oDir::Cache::Archives="$aptdir/archives"
        -oAPT::Get::List-Cleanup=0)
  apt-get "${opts[@]}" update -qq >&2
  (cd "$aptdir" && apt-get "${opts[@]}" download victoria-metrics >&2)
  dpkg -x "$aptdir"/victoria-metrics_*.deb "$tools/vm"
fi

# Prometheus 2.42 (Debian 12) as a scraper for the `prometheus` exporter tests, and its
# promtool. Unpacked into tools, not installed: the package would start a system service.
prom="$tools/prometheus/usr/bin/prometheus"
if [ ! -x "$prom" ]; then
  log "fetching prometheus from Debian"
  mkdir -p "$tools/prometheus-deb"
  (cd "$tools/prometheus-deb" && apt-get download prometheus >&2 2>/dev/null || { apt-get update -qq >&2; apt-get download prometheus >&2; })
  dpkg -x "$tools"/prometheus-deb/prometheus_*.deb "$tools/prometheus"
fi

rotel="$(ls "$tools"/rotel-venv/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -n1 || true)"
if [ -z "$rotel" ]; then
  log "installing rotel into a virtualenv"
  python3 -m venv "$tools/rotel-venv" >&2
  "$tools/rotel-venv/bin/pip" install -q rotel >&2
  rotel="$(ls "$tools"/rotel-venv/lib/python3*/site-packages/rotel/rotel-agent | head -n1)"
fi

echo "export CONTAINERS_CONF=$conf"
echo "export PODOMETER_VICTORIA_METRICS=$vm"
echo "export PODOMETER_ROTEL=$rotel"
echo "export PODOMETER_PROMETHEUS=$prom"
echo "export PODOMETER_PROMTOOL=$tools/prometheus/usr/bin/promtool"
