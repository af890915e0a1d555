#!/bin/bash
# Runs inside the cgroup v2 test guest at boot (v2test.service, from the 9p share at /mnt/host),
# then the guest powers off. It makes kubelet-layout pods the way a node does (systemd scopes,
# and containerd's CRI plugin driven through the CRI API), reads
# the kernel's own counters around one `podometer collect` sweep, and leaves everything in
# /mnt/host/out for the host-side test (tests/cgroup_v2_guest.rs) to assert on. It asserts
# nothing itself: every check is on the host, where a failure names the numbers.
# Bounded: every wait has a limit; no CPU-heavy work (the guest is emulated, TCG).
set -u
share=/mnt/host
out=$share/out
mkdir -p "$out"
exec >"$out/guest.log" 2>&1
kv() { printf '%s=%s\n' "$1" "$2" >>"$out/results.env"; }
error() { echo "ERROR: $*"; echo "$*" >>"$out/errors"; }
# wait_for SECONDS CMD...: polls CMD every 0.2 s.
wait_for() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.2
  done
}
# mark PHASE: the guest's uptime when PHASE ends, for the stage's time budget.
mark() { kv "t_$1" "$(cut -d' ' -f1 /proc/uptime)"; }
hex64() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# snap NAME DIR: copies the interface files of one cgroup into out/<phase>/NAME, with one cp for
# them all: a process per file (cat) made the snapshots take most of a minute in the emulated
# guest, and a shell read loop still 40 s (it reads line by line, and the kernel renders the
# whole file again for every read).
snap() {
  local dst="$out/$phase/$1" f files=()
  mkdir -p "$dst"
  for f in cpu.stat cpu.max memory.current memory.stat memory.max memory.events io.stat \
    pids.current pids.max cpu.pressure memory.pressure io.pressure cgroup.controllers \
    cgroup.subtree_control; do
    [ -e "$2/$f" ] && files+=("$2/$f")
  done
  [ ${#files[@]} -eq 0 ] || cp "${files[@]}" "$dst/"
}

kv uptime_start "$(cut -d' ' -f1 /proc/uptime)"
cp "$share/cri-request.json" "$out/" 2>/dev/null   # with the results, for re-checking them
kv kernel "$(uname -r)"
kv fstype "$(stat -fc %T /sys/fs/cgroup)"
kv root_controllers "$(cat /sys/fs/cgroup/cgroup.controllers)"
kv cmdline "$(cat /proc/cmdline)"
kv systemd "$(systemctl --version | head -n1)"

# 1. A burstable pod's container as the kubelet's systemd driver asks for it: a transient
# scope in the pod slice, with limits given as systemd properties.
uid1=$(cat /proc/sys/kernel/random/uuid)
cid1=$(hex64)
slice1="kubepods-burstable-pod${uid1//-/_}.slice"
kv c1_id "$cid1"; kv c1_uid "$uid1"
kv c1_memory_max 209715200; kv c1_tasks_max 40
# 8 MiB written with O_DIRECT to the virtio disk (io.stat), 16 MiB in tmpfs (charged shmem that
# stays), then three sleeping processes.
systemd-run --scope --quiet --unit="cri-containerd-$cid1" --slice="$slice1" \
  -p MemoryMax=209715200 -p TasksMax=40 -p CPUQuota=50% -p IOAccounting=yes \
  /bin/sh -c 'dd if=/dev/zero of=/var/tmp/v2-io bs=1M count=8 oflag=direct status=none
    dd if=/dev/zero of=/dev/shm/v2-mem bs=1M count=16 status=none
    sleep 100000 & sleep 100000 & touch /run/v2-c1-ready; exec sleep 100000' &
wait_for 120 test -e /run/v2-c1-ready || error "container 1 did not get ready"
c1_dir=/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/$slice1/cri-containerd-$cid1.scope
[ -d "$c1_dir" ] || error "no $c1_dir: $(find /sys/fs/cgroup -name "cri-containerd-$cid1.scope")"
kv c1_path "${c1_dir#/sys/fs/cgroup/}"
# Where the kernel says the workload runs (the host test compares it with the kubelet layout).
kv c1_proc_cgroup "$(cut -d: -f3 "/proc/$(head -n1 "$c1_dir/cgroup.procs")/cgroup")"

# 2. Controllers on demand: a second burstable pod whose container asks for nothing, so systemd
# enables in its pod slice only what the scope needs (no cpu: cpu.stat without throttling
# fields, no cpu.max). Made before the runtime's pods, whose runc enables every controller.
uid3=$(cat /proc/sys/kernel/random/uuid)
cid3=$(hex64)
slice3="kubepods-burstable-pod${uid3//-/_}.slice"
kv c3_id "$cid3"; kv c3_uid "$uid3"
systemd-run --scope --quiet --unit="cri-containerd-$cid3" --slice="$slice3" \
  /bin/sh -c 'touch /run/v2-c3-ready; exec sleep 100000' &
wait_for 120 test -e /run/v2-c3-ready || error "container 3 did not get ready"
c3_dir=/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/$slice3/cri-containerd-$cid3.scope
wait_for 60 grep -q . "$c3_dir/cgroup.procs" || error "no process in $c3_dir"
kv c3_proc_cgroup "$(cut -d: -f3 "/proc/$(head -n1 "$c3_dir/cgroup.procs")/cgroup")"
mark scopes

# 3. Pods made through the CRI API exactly as the kubelet makes them: containerd's CRI plugin
# with runc and the systemd cgroup driver, a CNI bridge, images imported offline (the guest has
# no network). The CRI client is the host's test binary (guest_cri_driver), which creates the
# pods of cri-request.json and writes what it made to cri.json and cri-snaps.
mkdir -p /etc/containerd /etc/cni/net.d
# The CRI copies the node's resolv.conf into every sandbox; this node has no DNS.
[ -e /etc/resolv.conf ] || : >/etc/resolv.conf
cat >/etc/containerd/config.toml <<'EOF'
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "podometer.test/pause:1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
EOF
# No ipMasq, no portmap: nothing touches iptables; each pod gets a veth on the bridge v2br0.
cat >/etc/cni/net.d/10-v2vm.conflist <<'EOF'
{"cniVersion": "1.0.0", "name": "v2vm", "plugins": [
  {"type": "bridge", "bridge": "v2br0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]]}},
  {"type": "loopback"}]}
EOF
timeout 120 systemctl start containerd \
  || error "containerd did not start: $(journalctl -u containerd -n 20 --no-pager)"
for image in pause busybox; do
  timeout 120 ctr -n k8s.io images import "$share/$image.tar" >>"$out/ctr-import.log" 2>&1 \
    || error "ctr images import $image: $(tail -n 5 "$out/ctr-import.log")"
done
mark containerd
cp "$share/driver" /var/tmp/driver && chmod +x /var/tmp/driver
cri() {
  PODOMETER_V2VM_CRI=$1 PODOMETER_V2VM_SHARE=$share timeout 300 /var/tmp/driver \
    --ignored --exact guest_cri_driver --nocapture --test-threads=1 >"$out/cri-$1.log" 2>&1
}
cri up || error "CRI driver (up) failed: $(tail -n 20 "$out/cri-up.log")"
mark cri_up
# Every container the runtime made (sandboxes too) and each pod slice, as NAME DIR lines.
snaps=("c1 $c1_dir" "p1 $(dirname "$c1_dir")" "c3 $c3_dir" "p3 $(dirname "$c3_dir")")
netpods=()
while read -r name dir; do
  snaps+=("$name $dir")
  kv "${name}_path" "${dir#/sys/fs/cgroup/}"
  case $name in *_pod) continue ;; esac
  wait_for 60 grep -q . "$dir/cgroup.procs" || { error "no process in $dir"; continue; }
  pid=$(head -n1 "$dir/cgroup.procs")
  kv "${name}_proc_cgroup" "$(cut -d: -f3 "/proc/$pid/cgroup")"
  # The pod's network namespace is the sandbox's: its host-side veth (eth0's peer).
  case $name in *_sandbox) ;; *) continue ;; esac
  key=${name%_sandbox}
  netpods+=("$key $pid")
  iflink=$(nsenter -t "$pid" -n ip -o link show eth0 | sed -n 's/.*eth0@if\([0-9]*\).*/\1/p')
  veth=$(ip -o link | awk -F': ' -v i="$iflink" '$1 == i {print $2}')
  kv "${key}_host_veth" "${veth%%@*}"
done <"$out/cri-snaps"
# A few pings into every pod across the bridge (busybox: the minimal guest has no iputils).
for ip in $(sed -n 's/.*"ip": "\(.*\)".*/\1/p' "$out/cri.json"); do
  busybox ping -c 3 -W 10 "$ip" >>"$out/ping.log" 2>&1 || error "ping $ip: $(tail -n 3 "$out/ping.log")"
done

mark pings

# 4. The kernel's counters, one sweep of the agent, the counters again. Each pod's net/dev is
# read from inside its network namespace.
cp "$share/podometer" /var/tmp/podometer && chmod +x /var/tmp/podometer
mark copy_agent
for phase in before after; do
  for s in "${snaps[@]}"; do snap $s; done
  for p in "${netpods[@]}"; do
    set -- $p
    mkdir -p "$out/$phase/$1_pod"
    nsenter -t "$2" -n cat /proc/net/dev >"$out/$phase/$1_pod/net.dev"
  done
  mark "snap_$phase"
  if [ $phase = before ]; then
    timeout 300 /var/tmp/podometer collect -c "$share/guest.yaml" --format json \
      >"$out/collect.json" 2>"$out/collect.err" || error "podometer collect failed: $(tail -n 5 "$out/collect.err")"
    mark collect
  fi
done

mark sweep

# 5. Tear down: the pods through the CRI (CNI DEL removes their veths), then the scopes.
cri down || error "CRI driver (down) failed: $(tail -n 20 "$out/cri-down.log")"
kv veths_left "$(ip -o link show type veth | wc -l)"
mark cri_down
systemctl stop "cri-containerd-$cid1.scope" "cri-containerd-$cid3.scope" || error "stop scopes"
rm -f /dev/shm/v2-mem /var/tmp/v2-io
kv uptime_end "$(cut -d' ' -f1 /proc/uptime)"
echo done >"$out/done"
