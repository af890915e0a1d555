#!/usr/bin/env bash
# Installs and prepares what the live tests and the demo need on a fresh Debian 12 machine:
# podman + runc + busybox-static, local busybox images (no registry is reachable), a
# containers.conf that works on hybrid cgroups, VictoriaMetrics and rotel, and the pure cgroup v2
# guest image (QEMU, debootstrap; scripts/v2vm/).
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
# Packet loss inside test namespaces (no netem in this kernel) for the TCP retransmit test.
command -v nft >/dev/null || need_apt+=(nftables)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# A kubelet-style node for the metadata tests: containerd's CRI plugin, CNI plugins, and
# protoc for the k8s-cri crate the tests' CRI client is built from.
command -v containerd >/dev/null || need_apt+=(containerd)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
  || need_apt+=(containernetworking-plugins)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# The image carries Debian's CA bundle (scripts/image.sh).
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

# A real Docker daemon for the docker_api tests and the Docker cgroup layout: Debian's
# docker.io 20.10 (it puts dockerd, containerd and /usr/bin/docker in place; the machine
# image's own docker CLI in /usr/local/bin belongs to no package, so nothing conflicts).
# Without recommends: no apparmor, no cgroupfs-mount. The package's init scripts must not
# start a daemon for the whole machine: the tests start their own, so policy-rc.d denies
# service starts for the install when the machine has no policy of its own.
if ! command -v dockerd >/dev/null; then
  log "installing docker.io"
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 docker.io >&2
  if [ -n "$own_policy" ]; then rm -f "$policy"; fi
fi

# shellcheck source=lib/tools.sh
source "$repo/scripts/lib/tools.sh"
note() { log "$@"; }
podman_setup
conf=$CONTAINERS_CONF

# The same busybox image as a docker-archive, for `docker load` into the tests' dockerd.
bb_docker="$tools/bb-docker.tar"
if [ ! -s "$bb_docker" ]; then
  log "saving localhost/bb:1 as a docker-archive"
  podman save -q --format docker-archive -o "$bb_docker.tmp" localhost/bb:1 >&2
  mv "$bb_docker.tmp" "$bb_docker"
fi

# Images for containerd (imported into each test instance): a pause image and a busybox image,
# built offline from busybox-static.
images="$tools/cri-images"
if [ ! -s "$images/pause.tar" ] || [ ! -s "$images/busybox.tar" ]; then
  log "building OCI images for the containerd tests"
  mkdir -p "$images"
  python3 "$repo/scripts/oci-image.py" "$images/pause.tar" podometer.test/pause:1 /bin/sleep 1000000000
  python3 "$repo/scripts/oci-image.py" "$images/busybox.tar" podometer.test/busybox:1 sh
fi

vm=$(victoria_metrics)

# Prometheus 2.42 (Debian 12) as a scraper for the `prometheus` exporter tests, and its
# promtool. Unpacked into tools, not installed: the package would start a system service.
prom="$tools/prometheus/usr/bin/prometheus"
if [ ! -x "$prom" ]; then
  log "fetching prometheus from Debian"
  mkdir -p "$tools/prometheus-deb"
  (cd "$tools/prometheus-deb" && apt-get download prometheus >&2 2>/dev/null || { apt-get update -qq >&2; apt-get download prometheus >&2; })
  dpkg -x "$tools"/prometheus-deb/prometheus_*.deb "$tools/prometheus"
fi

rotel=$(rotel_agent)

# kubectl (with kustomize) renders the Kubernetes manifests in tests/kubernetes.rs. The machine
# image ships kubectl 1.32; Debian's kubernetes-client conflicts with it, so it is not installed.
command -v kubectl >/dev/null || log "kubectl not found: tests/kubernetes.rs will fail under CI=true"
# The pure cgroup v2 guest (Debian 12 under QEMU): built once per version of its build script
# and cached in the tools dir; the first build takes a few minutes (debootstrap).
log "preparing the cgroup v2 guest image (scripts/v2vm/build-image.sh)"
v2vm_image=$(bash "$repo/scripts/v2vm/build-image.sh" "$tools")

echo "export CONTAINERS_CONF=$conf"
echo "export PODOMETER_VICTORIA_METRICS=$vm"
echo "export PODOMETER_ROTEL=$rotel"
echo "export PODOMETER_BB_DOCKER_TAR=$bb_docker"
echo "export PODOMETER_CRI_IMAGES=$images"
echo "export PODOMETER_V2VM_IMAGE=$v2vm_image"
echo "export PODOMETER_PROMETHEUS=$prom"
echo "export PODOMETER_PROMTOOL=$tools/prometheus/usr/bin/promtool"
