#!/usr/bin/env bash
# A real one-node Kubernetes cluster for the test bed, built from Go modules.
#
#   scripts/kube-node.sh build              build (once) what `up` needs
#   scripts/kube-node.sh up                 start the node; prints export lines on stdout
#   scripts/kube-node.sh exec -- CMD...     run CMD in the node's network namespace
#   scripts/kube-node.sh load-image F.tar   import an OCI or docker archive into the node
#   scripts/kube-node.sh down               remove everything `up` made (idempotent)
#
# `up` prints `export KUBECONFIG=… KUBE_NODE_NAME=… KUBE_AUDIT_LOG=…` lines (logs go to
# stderr) once the node is Ready and the default service account exists. The kubeconfig
# reaches the API server from the host and from the node's namespace alike.
#
# Release: KUBE_RELEASE, default v1.37.2, the newest k8s.io/kubernetes the Go module proxy
# serves (v1.34.0 … v1.37.2). Its go.mod asks for go 1.26.0, so the machines' Go 1.26.8 builds
# it without another toolchain. It runs on this hybrid-cgroup host: from 1.35 the kubelet
# refuses cgroup v1 unless `failCgroupV1: false`, which 1.37 still honours (v1 is deprecated,
# one warning). Debian's containerd 1.6.20 lacks the CRI RuntimeConfig call: the kubelet logs
# one error and falls back to `cgroupDriver: cgroupfs` from its config. Older releases were
# not needed: this one built and ran as is.
# Measured on a 2-core machine with two Rust builds running beside it: a cold build took
# 16 min 53 s wall (go build of the four 16 min 37 s; 585 s user + 115 s sys at nice 19,
# -p 1), the etcd package a second; `up` with the builds cached takes 10-11 s until the node
# is Ready, `down` 3-4 s.
#
# The node: etcd, kube-apiserver (RBAC + Node authorization, NodeRestriction and Pod Security
# admission with privileged defaults so namespaces choose their level by label, an audit log of
# every request at Metadata level), kube-controller-manager (all default controllers,
# service-account tokens signed with a key of its own), kube-scheduler, and the kubelet over a
# containerd of its own (own config, root, state, socket) with a CNI bridge. All of them run in
# the network namespace `podometer-kube` (entered with nsenter --net only: `ip netns exec`
# would give each a mount namespace of its own, and containerd would not see the kubelet's
# volume mounts). Addresses: node 10.216.0.2/30 in the namespace, its veth peer 10.216.0.1 in
# the host (host routes send pod and service addresses into the namespace, which has no
# default route), pods 10.217.0.0/24, services 10.218.0.0/24 (no kube-proxy: ClusterIPs do not
# route). Pods resolve no names (`resolvConf: ""`). Cgroups: the kubelet's cgroupRoot is
# /podometer-kube, so pods live in /podometer-kube/kubepods/… of every hierarchy and never
# touch the /kubepods/… the other live tests make themselves.
# The kubelet sets six kernel tunables host-wide when it starts (vm.overcommit_memory,
# kernel.panic, kernel.panic_on_oops, …; it has no "leave them" mode): `up` saves them before
# and writes them back once the node is Ready, `down` again.
#
# Builds are cached outside the clone, under KUBE_CACHE (default /var/tmp/podometer-kube):
# gopath/ (module cache), gocache/, <release>/ (wrapper module + bin/), etcd/ (unpacked
# Debian package, etcd 3.5.16 from trixie); run/ is the running node's (certificates,
# kubeconfigs, logs, etcd data, containerd root and state, kubelet root), removed by `down`;
# failed-logs/ keeps the logs of the last `up` that failed. Every Go build runs with nice -n 19
# and CGO_ENABLED=0: the machines have 2 cores and other builds share them; nice lets those
# go first, and Go's default parallelism uses both cores whenever they are idle (with -p 1 a
# build that runs alone, as inside a test, left one core unused).
# One node per machine (fixed names and addresses); build, up and down hold a lock. Root only.
# KUBE_NODE_NAME overrides the node's name (default: the host name, lower case).
set -Eeuo pipefail
PATH=$PATH:/usr/sbin:/sbin

KUBE_RELEASE=${KUBE_RELEASE:-v1.37.2}
KUBE_CACHE=${KUBE_CACHE:-/var/tmp/podometer-kube}
repo=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "kube-node: $*" >&2; }
die() { log "$*"; exit 1; }

staging=v0.${KUBE_RELEASE#v1.}
moddir=$KUBE_CACHE/$KUBE_RELEASE
bindir=$moddir/bin
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
etcd_bin=$KUBE_CACHE/etcd/usr/bin/etcd

go_env() {
  export GOPATH=$KUBE_CACHE/gopath GOCACHE=$KUBE_CACHE/gocache
  export GOMODCACHE=$GOPATH/pkg/mod CGO_ENABLED=0 GOFLAGS="-buildvcs=false"
}

build_kube() {
  local c missing=0
  for c in "${components[@]}"; do [ -x "$bindir/$c" ] || missing=1; done
  [ $missing = 0 ] && return 0
  command -v go >/dev/null || die "go is not installed"
  go_env
  mkdir -p "$moddir"
  log "building ${components[*]} $KUBE_RELEASE in $moddir (cold: about 17 minutes on 2 busy cores)"
  (
    cd "$moddir"
    [ -f go.mod ] || go mod init podometer.test/kube-node >&2
    local gomod m
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_RELEASE" \
      | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || die "k8s.io/kubernetes@$KUBE_RELEASE: no go.mod"
    # The go directive of k8s.io/kubernetes itself, so its language version applies.
    go mod edit -go="$(awk '$1 == "go" {print $2; exit}' "$gomod")"
    # Every k8s.io/* module k8s.io/kubernetes requires at v0.0.0 is a staging module, served
    # at the matching v0.X.Y.
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u |
      while read -r m; do go mod edit -replace="$m=$m@$staging"; done
    go mod edit -require="k8s.io/kubernetes@$KUBE_RELEASE"
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
    nice -n 19 go mod tidy >&2
    local minor ld
    minor=$(echo "$KUBE_RELEASE" | cut -d. -f2)
    ld="-s -w"
    for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $v.gitVersion=$KUBE_RELEASE -X $v.gitMajor=1 -X $v.gitMinor=$minor"
      ld="$ld -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p bin.tmp
    local start=$SECONDS
    nice -n 19 go build -trimpath -ldflags "$ld" -o bin.tmp/ \
      "${components[@]/#/k8s.io/kubernetes/cmd/}" >&2
    log "built in $((SECONDS - start)) s"
    rm -rf bin && mv bin.tmp bin
  )
}

# etcd: Debian trixie's etcd-server, unpacked with dpkg -x, apt pointed at a private sources
# list so the machine's own apt state is untouched.
fetch_etcd() {
  [ -x "$etcd_bin" ] && return 0
  log "fetching etcd-server from Debian trixie"
  local aptdir=$KUBE_CACHE/apt-trixie
  mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
  echo 'deb http://deb.debian.org/debian trixie main' > "$aptdir/sources.list"
  local opts=(-oDir::Etc::SourceList="$aptdir/sources.list" -oDir::Etc::SourceParts=/dev/null
    -oDir::State::Lists="$aptdir/lists" -oDir::Cache::Archives="$aptdir/archives"
    -oAPT::Get::List-Cleanup=0)
  apt-get "${opts[@]}" update -qq >&2
  (cd "$aptdir" && rm -f etcd-server_*.deb && apt-get "${opts[@]}" download etcd-server >&2)
  rm -rf "$KUBE_CACHE/etcd"
  dpkg -x "$aptdir"/etcd-server_*.deb "$KUBE_CACHE/etcd"
  [ -x "$etcd_bin" ] || die "etcd-server package has no usr/bin/etcd"
}

build() {
  mkdir -p "$KUBE_CACHE"
  fetch_etcd
  build_kube
}


# ---------------------------------------------------------------------------------------------
# The node. Everything it makes at run time is under $run (removed by `down`), in the network
# namespace $netns, in the cgroup /$cgroot of every hierarchy, the host end of one veth and
# its two routes, CNI result cache files of its sandboxes, the kubelet's symlinks in
# /var/log/containers and its device plugin socket (with those directories, when up made them).

run=$KUBE_CACHE/run
netns=podometer-kube
host_if=pmkube0
host_addr=10.216.0.1          # host end of the veth (a /30 of its own)
node_ip=10.216.0.2            # the node's address, inside $netns
pod_cidr=10.217.0.0/24        # CNI bridge; podman uses 10.88, the tests 10.213 and 10.231
service_cidr=10.218.0.0/24
service_ip=10.218.0.1
cgroot=podometer-kube         # the kubelet's cgroupRoot: pods go to /podometer-kube/kubepods/…
node_name=${KUBE_NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
cni_network=podometer-kube
ctrd_sock=$run/containerd/containerd.sock
pki=$run/pki
logs=$run/logs
pause_image=podometer.test/pause:1
busybox_image=podometer.test/busybox:1
# Fixed paths outside $run: symlinks to container logs, the device plugin socket, and CNI's
# result cache (children before parents).
host_dirs=(/var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet
  /var/lib/cni/results /var/lib/cni)
# The kubelet sets these host-wide at start (it has no "leave them" mode): saved before it
# starts, put back once the node is Ready and again by `down`.
kernel_tunables=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

in_netns() { nsenter --net="/run/netns/$netns" -- "$@"; }

# start NAME BINARY ARGS...: runs BINARY in the node's network namespace, not in a mount
# namespace of its own as `ip netns exec` would: the kubelet's volume mounts must be seen by
# containerd and by `down`. nsenter execs BINARY, so $! is its pid.
start() {
  local name=$1; shift
  # 9>&-: the daemons must not hold the lock of the command that started them.
  nsenter --net="/run/netns/$netns" -- "$@" > "$logs/$name.log" 2>&1 < /dev/null 9>&- &
  local pid=$! d
  echo "$pid $(readlink -f "$1")" > "$run/$name.pid"
  # Into /$cgroot/daemons at once (none of them forks before it serves): what they start
  # later, containerd's shims above all, is found there by `down` even when containerd lost
  # track of it.
  for d in $(cgroup_dirs); do echo "$pid" > "$d/daemons/cgroup.procs" 2>/dev/null || true; done
}

# stop NAME: ends the process in $run/NAME.pid if it still runs the binary recorded there.
stop() {
  local f=$run/$1.pid pid exe
  [ -f "$f" ] || return 0
  read -r pid exe < "$f" || true
  if [ -n "${pid:-}" ] && alive "$pid" "$exe"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" "$exe" || break; sleep 0.1; done
    if alive "$pid" "$exe"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$f"
}

# alive PID EXE: PID runs EXE (guards against a reused pid).
alive() {
  local e
  e=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  [ "${e% (deleted)}" = "$2" ]
}

wait_for() { # SECONDS WHAT CMD...
  local t=$1 what=$2 end; shift 2
  end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { log "timed out after ${t}s waiting for $what"; return 1; }
    sleep 0.5
  done
}

cgroup_dirs() { # every hierarchy's /$cgroot (v1 controllers, name=systemd, unified)
  local h
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo "/sys/fs/cgroup/$cgroot"   # pure cgroup v2
    return 0
  fi
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] && echo "${h%/}/$cgroot"
  done
  return 0
}

cert() { # NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
  local name=$1 subj=$2 eku=$3 san=${4:-}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}

kubeconfig() { # FILE NAME (client cert $pki/NAME.{crt,key}) SERVER
  cat > "$1" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: podometer-kube
  cluster:
    server: $3
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$pki/$2.crt")
    client-key-data: $(base64 -w0 "$pki/$2.key")
contexts:
- name: podometer-kube
  context: {cluster: podometer-kube, user: $2}
current-context: podometer-kube
YAML
}

make_pki() {
  mkdir -p "$pki"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj /CN=podometer-kube-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  cert apiserver /CN=kube-apiserver serverAuth \
    "IP:$node_ip,IP:127.0.0.1,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert admin "/O=system:masters/CN=podometer-admin" clientAuth
  cert controller-manager /CN=system:kube-controller-manager clientAuth
  cert scheduler /CN=system:kube-scheduler clientAuth
  # The front proxy's client (aggregated APIs); its CA is what kube-controller-manager and
  # kube-scheduler expect in extension-apiserver-authentication, and they log errors without.
  cert front-proxy-client /CN=front-proxy-client clientAuth
  cert kubelet-client "/O=system:nodes/CN=system:node:$node_name" clientAuth
  cert kubelet-serving "/CN=$node_name" serverAuth "IP:$node_ip,DNS:$node_name"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  rm -f "$pki"/*.csr "$pki"/*.ext
  kubeconfig "$run/admin.kubeconfig" admin "https://$node_ip:6443"
  kubeconfig "$run/controller-manager.kubeconfig" controller-manager https://127.0.0.1:6443
  kubeconfig "$run/scheduler.kubeconfig" scheduler https://127.0.0.1:6443
  kubeconfig "$run/kubelet.kubeconfig" kubelet-client "https://$node_ip:6443"
}

make_netns() {
  ip netns add "$netns"
  in_netns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip link add "$host_if" type veth peer name eth0 netns "$netns"
  echo 1 > "/proc/sys/net/ipv6/conf/$host_if/disable_ipv6"
  ip addr add "$host_addr/30" dev "$host_if"
  ip link set "$host_if" up
  in_netns ip addr add "$node_ip/30" dev eth0
  in_netns ip link set eth0 up
  in_netns ip link set lo up
  # Replies from the host to a pod, and anything the host sends to a pod or service address,
  # go back into the namespace (which has no default route), never to the host's gateway.
  ip route add "$pod_cidr" via "$node_ip" dev "$host_if"
  ip route add "$service_cidr" via "$node_ip" dev "$host_if"
}

make_cgroups() {
  local d c
  for d in $(cgroup_dirs); do
    for c in "$d" "$d/daemons"; do
      mkdir -p "$c"
      # A new v1 cpuset starts with no cpus and mems: it could take no task.
      if [ -f "$c/cpuset.cpus" ]; then
        cat "$(dirname "$c")/cpuset.cpus" > "$c/cpuset.cpus"
        cat "$(dirname "$c")/cpuset.mems" > "$c/cpuset.mems"
      fi
    done
  done
}

write_configs() {
  mkdir -p "$run/containerd/root" "$run/containerd/state" "$run/containerd/opt" \
    "$run/containerd/runc" "$run/cni/net.d" "$run/cni/ipam" "$run/kubelet" "$run/pod-logs" \
    "$run/etcd" "$run/apiserver"
  cat > "$run/containerd/config.toml" <<TOML
version = 2
root = "$run/containerd/root"
state = "$run/containerd/state"
[grpc]
  address = "$ctrd_sock"
[ttrpc]
  address = "$ctrd_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$run/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The sandbox lacks CAP_SYS_RESOURCE here: without this every RunPodSandbox fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$run/containerd/runc"
        SystemdCgroup = false
TOML
  # No ipMasq, no portmap: iptables outside the namespace stays untouched.
  cat > "$run/cni/net.d/10-podometer-kube.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "$cni_network", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$run/cni/ipam",
            "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
JSON
  cat > "$run/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
YAML
  cat > "$run/admission.yaml" <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    # Namespaces choose their level with pod-security.kubernetes.io/* labels.
    defaults: {enforce: privileged, enforce-version: latest, audit: privileged,
               audit-version: latest, warn: privileged, warn-version: latest}
    exemptions: {usernames: [], runtimeClasses: [], namespaces: []}
YAML
  cat > "$run/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$ctrd_sock
# PID 1 is not systemd; containerd's runc has SystemdCgroup = false.
cgroupDriver: cgroupfs
# Pods under /$cgroot/kubepods/…: other tests make /kubepods/… cgroups of their own, and a
# kubelet removes what it takes for orphaned pod cgroups below its root.
cgroupRoot: /$cgroot
# The host has hybrid cgroups (v1 controllers): refused from 1.35 unless this is false.
failCgroupV1: false
failSwapOn: false
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
# No DNS for pods: nothing may be sent to the host's resolvers.
resolvConf: ""
clusterDomain: cluster.local
podLogsDir: $run/pod-logs
volumePluginDir: $run/kubelet/volume-plugins
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 60
YAML
}

images_dir=$KUBE_CACHE/images
make_images() {
  mkdir -p "$images_dir"
  [ -f "$images_dir/pause.tar" ] ||
    python3 "$repo/scripts/oci-image.py" "$images_dir/pause.tar" "$pause_image" /bin/sleep 1000000000
  [ -f "$images_dir/busybox.tar" ] ||
    python3 "$repo/scripts/oci-image.py" "$images_dir/busybox.tar" "$busybox_image" sh
}

ctr_import() { ctr -a "$ctrd_sock" -n k8s.io images import "$1" >&2; }

kubectl_admin() { kubectl --kubeconfig "$run/admin.kubeconfig" --cache-dir "$run/kubectl-cache" "$@"; }

print_env() {
  echo "export KUBECONFIG=$run/admin.kubeconfig"
  echo "export KUBE_NODE_NAME=$node_name"
  echo "export KUBE_AUDIT_LOG=$logs/audit.log"
}

running() { # NAME: the process of $run/NAME.pid runs
  local pid exe
  [ -f "$run/$1.pid" ] && read -r pid exe < "$run/$1.pid" && alive "$pid" "$exe"
}

fail_up() {
  local f
  trap - ERR INT TERM
  log "up failed; the logs' last lines:"
  for f in "$logs"/*.log; do
    if [ ! -f "$f" ] || [ "$(basename "$f")" = audit.log ]; then continue; fi
    echo "== $f" >&2; tail -n 15 "$f" >&2
  done
  rm -rf "$KUBE_CACHE/failed-logs"
  cp -r "$logs" "$KUBE_CACHE/failed-logs" 2>/dev/null || true
  log "logs kept in $KUBE_CACHE/failed-logs; removing what up made"
  do_down
  exit 1
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local t0=$SECONDS c
  for c in ip nsenter openssl containerd ctr runc kubectl python3 base64; do
    command -v "$c" >/dev/null || die "$c is not installed"
  done
  for c in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$c" ] || die "/usr/lib/cni/$c is missing (containernetworking-plugins)"
  done
  # Only the export lines go to stdout.
  build >&2
  make_images >&2
  if running kube-apiserver; then
    log "already up"
    print_env
    return 0
  fi
  [ -e "$run" ] && { log "removing what an earlier up left"; do_down; }
  trap fail_up ERR INT TERM
  mkdir -p "$run" "$logs"
  make_pki
  make_netns
  make_cgroups
  write_configs

  start etcd "$etcd_bin" --name "$node_name" --data-dir "$run/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$node_name=http://127.0.0.1:2380" --log-level warn
  start containerd "$(command -v containerd)" --config "$run/containerd/config.toml"

  start kube-apiserver "$bindir/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$node_ip" \
    --cert-dir="$run/apiserver" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="$pki/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,PodSecurity \
    --admission-control-config-file="$run/admission.yaml" \
    --audit-policy-file="$run/audit-policy.yaml" --audit-log-path="$logs/audit.log" \
    --audit-log-maxbackup=0 \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$service_cidr" \
    --allow-privileged=true
  wait_for 20 etcd in_netns curl -fs http://127.0.0.1:2379/health
  wait_for 90 "the API server" kubectl_admin get --raw /readyz

  start kube-controller-manager "$bindir/kube-controller-manager" \
    --kubeconfig="$run/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$run/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$run/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --controllers='*' --flex-volume-plugin-dir="$run/flexvolume"
  start kube-scheduler "$bindir/kube-scheduler" \
    --kubeconfig="$run/scheduler.kubeconfig" \
    --authentication-kubeconfig="$run/scheduler.kubeconfig" \
    --authorization-kubeconfig="$run/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false

  wait_for 20 containerd test -S "$ctrd_sock"
  ctr_import "$images_dir/pause.tar"
  ctr_import "$images_dir/busybox.tar"

  local t
  : > "$run/kernel-tunables"
  for t in "${kernel_tunables[@]}"; do
    echo "$t $(cat "/proc/sys/$t")" >> "$run/kernel-tunables"
  done
  # Directories outside $run the kubelet and the CNI plugins make at fixed paths: the ones
  # missing now are removed by `down` once empty.
  for d in "${host_dirs[@]}"; do [ -e "$d" ] || echo "$d" >> "$run/made-dirs"; done
  start kubelet "$bindir/kubelet" --config="$run/kubelet-config.yaml" \
    --kubeconfig="$run/kubelet.kubeconfig" --root-dir="$run/kubelet" \
    --cert-dir="$run/kubelet/pki" --hostname-override="$node_name" --node-ip="$node_ip"

  wait_for 120 "node $node_name Ready" node_ready
  restore_kernel_tunables
  wait_for 60 "the default service account" kubectl_admin -n default get serviceaccount default
  trap - ERR INT TERM
  log "up in $((SECONDS - t0)) s"
  print_env
}

node_ready() {
  [ "$(kubectl_admin get node "$node_name" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

restore_kernel_tunables() {
  local t v
  [ -f "$run/kernel-tunables" ] || return 0
  while read -r t v; do
    [ "$(cat "/proc/sys/$t")" = "$v" ] || echo "$v" > "/proc/sys/$t"
  done < "$run/kernel-tunables"
}

# Removes what `up` made, whatever state it is in.
do_down() {
  local id f d pid sandboxes
  sandboxes=$(find "$run"/containerd/{root,state}/io.containerd.grpc.v1.cri/sandboxes \
    -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -u || true)
  stop kubelet
  stop kube-scheduler
  stop kube-controller-manager
  # Pods: containers and sandboxes through containerd, then the daemon itself.
  if running containerd && [ -S "$ctrd_sock" ]; then
    for id in $(ctr -a "$ctrd_sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$ctrd_sock" -n k8s.io tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -a "$ctrd_sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$ctrd_sock" -n k8s.io tasks rm -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -a "$ctrd_sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr -a "$ctrd_sock" -n k8s.io containers rm "$id" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  stop kube-apiserver
  stop etcd
  # What is left (containerd's shims and their containers when containerd lost track of them,
  # a daemon that outlived its pid file): every process in the node's cgroups, by pid; then
  # shims by their pid files.
  for d in $(cgroup_dirs); do
    [ -d "$d" ] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u |
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for f in "$run"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if alive "$pid" "$(readlink -f "$(command -v containerd-shim-runc-v2)")"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Mounts below $run, deepest first (rootfs overlays, pod network namespaces, the kubelet's
  # volumes and its rshared root directory); a path mounted twice needs a second pass.
  for _ in 1 2 3 4 5; do
    [ -n "$(mounts_below_run)" ] || break
    mounts_below_run | sort -r -u |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  # Cgroups, leaves first; a cgroup whose processes are still exiting is retried for 5 s.
  for _ in $(seq 50); do
    local left=0
    for d in $(cgroup_dirs); do
      [ -d "$d" ] || continue
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$d" ] && left=1
    done
    [ $left = 0 ] && break
    sleep 0.1
  done
  for d in $(cgroup_dirs); do [ -d "$d" ] && log "cgroup $d is left"; done
  ip link del "$host_if" 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
  # CNI's result cache outside $run: the bridge network's and containerd's loopback network's
  # entries of this node's sandboxes.
  rm -f /var/lib/cni/results/"$cni_network"-*
  for id in $sandboxes; do rm -f "/var/lib/cni/results/cni-loopback-$id-lo"; done
  for f in /var/log/containers/*; do
    [ -L "$f" ] && case "$(readlink "$f")" in "$run"/*) rm -f "$f" ;; esac
  done
  if [ -f "$run/made-dirs" ]; then
    # The device plugin socket is the kubelet's only when the directory was made for it.
    if grep -qx /var/lib/kubelet/device-plugins "$run/made-dirs"; then
      rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    fi
    while read -r d; do rmdir "$d" 2>/dev/null || true; done < "$run/made-dirs"
  fi
  restore_kernel_tunables
  # Never delete through a mount: a volume could lead anywhere on the host.
  if [ -n "$(mounts_below_run)" ]; then
    log "mounts are left below $run, not removing it:"; mounts_below_run >&2
    return 1
  fi
  rm -rf "$run"
}

mounts_below_run() { awk -v p="$run/" 'index($5 "/", p) == 1 {print $5}' /proc/self/mountinfo; }

down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  do_down
  log "down"
}

node_exec() {
  [ "${1:-}" = -- ] && shift
  [ $# -gt 0 ] || die "usage: $0 exec -- CMD..."
  [ -e "/run/netns/$netns" ] || die "the node is not up"
  KUBECONFIG=${KUBECONFIG:-$run/admin.kubeconfig} in_netns "$@"
}

load_image() {
  [ -f "${1:-}" ] || die "usage: $0 load-image FILE.tar"
  [ -S "$ctrd_sock" ] || die "the node is not up"
  ctr_import "$1"
}

# One command at a time on this machine (the node's names and addresses are fixed).
locked() {
  mkdir -p "$KUBE_CACHE"
  exec 9> "$KUBE_CACHE/lock"
  flock 9
  "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  build) locked build ;;
  up) locked up ;;
  down) locked down ;;
  exec) node_exec "$@" ;;
  load-image) load_image "$@" ;;
  *) die "usage: $0 build|up|down|exec -- CMD...|load-image FILE.tar" ;;
esac
