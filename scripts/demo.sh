#!/usr/bin/env bash
# The demo: starts two sample Podman pods (a web server and a client that keeps fetching from
# it, plus a CPU burner), shows `podometer collect --format table`, then runs the agent against
# a real collector chain (rotel over OTLP/gRPC -> VictoriaMetrics, and OTLP/HTTP straight into
# VictoriaMetrics) and prints per pod and container, by name (the runtime_files processor reads
# Podman's files), the CPU, memory and network numbers read back from VictoriaMetrics by query.
# Cleans up everything it started, also on Ctrl-C.
# Needs root (cgroups, podman) and a Rust toolchain. Usage: sudo scripts/demo.sh
# Installs only what the demo uses, when missing: podman, runc, busybox-static, python3 and curl
# from Debian; VictoriaMetrics (Debian trixie's package, unpacked into .tools/) and rotel (PyPI,
# in a virtualenv in .tools/). The tests' wider set (containerd, dockerd, Prometheus, the QEMU
# guest) is scripts/testbed.sh's, which shares these .tools/ paths.
# PODOMETER_BIN=path skips the build and runs that binary. `scripts/demo.sh --prepare` only
# installs and prints the environment (`export` lines) for scripts/demo-sidecar.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tools="${PODOMETER_TOOLS:-$repo/.tools}"
mkdir -p "$tools"
say() { echo "demo: $*" >&2; }
started=$SECONDS

need_apt=()
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

# shellcheck source=lib/tools.sh
source "$repo/scripts/lib/tools.sh"
note() { say "$@"; }
podman_setup
conf=$CONTAINERS_CONF

PODOMETER_VICTORIA_METRICS=$(victoria_metrics)
PODOMETER_ROTEL=$(rotel_agent)
say "prerequisites ready after $((SECONDS - started)) s"
if [ "${1:-}" = --prepare ]; then
  echo "export CONTAINERS_CONF=$conf"
  exit 0
fi

if [ -n "${PODOMETER_BIN:-}" ]; then
  bin="$PODOMETER_BIN"
else
  # The dev profile: the demo measures containers, not the agent, and it builds in a fraction
  # of the release profile's time.
  echo "== building podometer"
  cargo build --quiet --bin podometer
  bin="${CARGO_TARGET_DIR:-$repo/target}/debug/podometer"
fi
say "built after $((SECONDS - started)) s"

work=$(mktemp -d /tmp/podometer-demo.XXXXXX)
pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  podman pod rm -f -t 0 podometer-demo-web podometer-demo-client >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== starting sample pods"
podman pod create --name podometer-demo-web >/dev/null
podman run -d --pod podometer-demo-web --name podometer-demo-httpd localhost/bb:1 \
  sh -c 'mkdir -p /www && dd if=/dev/zero of=/www/blob bs=64k count=16 2>/dev/null && exec httpd -f -p 8080 -h /www' >/dev/null
podman run -d --pod podometer-demo-web --name podometer-demo-burn localhost/bb:1 \
  sh -c 'while :; do :; done' >/dev/null
web_ip=$(podman inspect podometer-demo-web-infra --format '{{.NetworkSettings.IPAddress}}' 2>/dev/null || true)
if [ -z "$web_ip" ]; then
  web_ip=$(podman inspect "$(podman pod inspect podometer-demo-web --format '{{.InfraContainerID}}')" \
    --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
fi
podman pod create --name podometer-demo-client >/dev/null
podman run -d --pod podometer-demo-client --name podometer-demo-fetch localhost/bb:1 \
  sh -c "while :; do wget -q -O /dev/null http://$web_ip:8080/blob; sleep 0.2; done" >/dev/null
sleep 2
podman ps --format 'table {{.ID}} {{.Names}} {{.Pod}}'

echo
echo "== podometer collect --format table --window 2s"
"$bin" collect --format table --window 2s

echo
echo "== starting VictoriaMetrics and rotel on loopback"
vm_port=18428; grpc_port=14317; rotel_http_port=14318
"$PODOMETER_VICTORIA_METRICS" -storageDataPath "$work/vm" -httpListenAddr "127.0.0.1:$vm_port" \
  -search.latencyOffset=0s -dedup.minScrapeInterval=1ms -loggerLevel=ERROR >"$work/vm.log" 2>&1 &
pids+=($!)
"$PODOMETER_ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$grpc_port" --otlp-http-endpoint "127.0.0.1:$rotel_http_port" \
  --exporter otlp --otlp-exporter-protocol http --otlp-exporter-endpoint "http://127.0.0.1:$vm_port/opentelemetry" \
  >"$work/rotel.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$vm_port/health" >/dev/null 2>&1 && break; sleep 0.2; done

cat >"$work/agent.yaml" <<YAML
interval: 2s
sources:
  cgroups: {}
  netns: {}
processors:
  runtime_files: {}
exporters:
  otlp/rotel: { protocol: grpc, endpoint: "http://127.0.0.1:$grpc_port" }
  otlp/victoriametrics: { protocol: http/protobuf, endpoint: "http://127.0.0.1:$vm_port/opentelemetry/v1/metrics" }
pipelines:
  main: { sources: [cgroups, netns], processors: [runtime_files], exporters: [otlp/rotel, otlp/victoriametrics] }
YAML
echo "== running the agent for 12 s (2 s interval), exporting to both"
"$bin" run -c "$work/agent.yaml" --log warn &
agent=$!
pids+=($agent)
sleep 12
kill -TERM "$agent"; wait "$agent" || true

echo
echo "== read back from VictoriaMetrics (metric and label names keep their dots)"
cat >"$work/readback.py" <<'PY'
import json, sys, urllib.parse, urllib.request
from collections import defaultdict

base = sys.argv[1]

def query(q):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url) as r:
        return json.load(r)["data"]["result"]

named = set()

def who(m):
    # Names as the metadata processor attached them; ids where it knew none.
    if "container.id" in m:
        name = m.get("k8s.container.name") or m.get("container.name")
        pod = m.get("podman.pod.name") or m.get("k8s.pod.name")
        if name:
            named.add(name)
        label = (pod + "/" if pod else "") + (name or m["container.id"][:12])
        return "container " + label
    return "pod " + (m.get("k8s.pod.name") or m.get("k8s.pod.uid", "?")[:12])

cpu = defaultdict(float)
for s in query('rate({__name__="container.cpu.time"}[10s])'):
    cpu[who(s["metric"])] += float(s["value"][1])
mem = {who(s["metric"]): float(s["value"][1]) for s in query('last_over_time({__name__="container.memory.working_set"}[30s])')}
net = defaultdict(dict)
for s in query('rate({__name__=~"(container|k8s.pod).network.io"}[10s])'):
    m = s["metric"]
    key = "%s %s (host veth %s)" % (who(m), m.get("network.interface.name"), m.get("network.interface.host_peer", "-"))
    net[key][m.get("network.io.direction")] = float(s["value"][1])

print("%-52s %10s %14s" % ("", "CPU cores", "working set"))
for k in sorted(set(cpu) | set(mem)):
    print("%-52s %10.3f %12.1fKiB" % (k, cpu.get(k, 0.0), mem.get(k, 0.0) / 1024))
print()
print("network, bytes/s (one series set per network namespace):")
for k in sorted(net):
    print("  %-76s rx %10.0f  tx %10.0f" % (k, net[k].get("receive", 0), net[k].get("transmit", 0)))
if not cpu or not net:
    sys.exit("VictoriaMetrics returned no container CPU or network series")
if not {"podometer-demo-httpd", "podometer-demo-burn", "podometer-demo-fetch"} <= named:
    sys.exit("VictoriaMetrics returned series without the demo containers' names: %s" % sorted(named))
PY
python3 "$work/readback.py" "http://127.0.0.1:$vm_port"
say "done after $((SECONDS - started)) s"
