#!/bin/bash
# Runs inside the cgroup v2 test guest at boot (v2test.service, from the 9p share at /mnt/host),
# then the guest powers off. It makes two kubelet-layout containers the way a node does, reads
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
hex64() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# snap NAME DIR: copies the interface files of one cgroup into out/<phase>/NAME.
snap() {
  local dst="$out/$phase/$1" f
  mkdir -p "$dst"
  for f in cpu.stat cpu.max memory.current memory.stat memory.max memory.events io.stat \
    pids.current pids.max cpu.pressure memory.pressure io.pressure cgroup.controllers \
    cgroup.subtree_control; do
    [ -e "$2/$f" ] && cat "$2/$f" >"$dst/$f"
  done
  return 0
}

kv uptime_start "$(cut -d' ' -f1 /proc/uptime)"
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
# fields, no cpu.max). Made before the runtime's pod, whose runc enables every controller.
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

# 3. A besteffort pod's container made by the real runtime: containerd + runc with the systemd
# cgroup driver, parent "slice:prefix:id" exactly as the CRI plugin passes it.
uid2=$(cat /proc/sys/kernel/random/uuid)
cid2=$(hex64)
slice2="kubepods-besteffort-pod${uid2//-/_}.slice"
kv c2_id "$cid2"; kv c2_uid "$uid2"
wait_for 60 systemctl is-active --quiet containerd || error "containerd is not active"
bb=/var/tmp/bb
mkdir -p $bb/bin $bb/proc $bb/sys $bb/dev $bb/tmp
cp /bin/busybox $bb/bin/ && for a in sh sleep; do ln -sf busybox $bb/bin/$a; done
timeout 120 ctr run -d --runc-systemd-cgroup --cgroup "$slice2:cri-containerd:$cid2" \
  --rootfs $bb "$cid2" /bin/sh -c 'exec sleep 100000' >"$out/ctr-run.log" 2>&1 \
  || error "ctr run failed: $(cat "$out/ctr-run.log")"
c2_dir=/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/$slice2/cri-containerd-$cid2.scope
wait_for 60 grep -q . "$c2_dir/cgroup.procs" || error "no process in $c2_dir"
kv c2_path "${c2_dir#/sys/fs/cgroup/}"
c2_pid=$(ctr task ls | awk -v c="$cid2" '$1 == c {print $2}')
kv c2_proc_cgroup "$(cut -d: -f3 "/proc/$c2_pid/cgroup")"
kv c2_unit "$(systemctl show -p Id --value "cri-containerd-$cid2.scope")"
# The pod's network as a CNI plugin makes it: a veth pair with one end in the container's
# namespace, and a few pings across it (busybox: the minimal guest has no iputils).
ip link add v2-h0 type veth peer name eth0 netns "$c2_pid" || error "veth into $c2_pid"
ip addr add 10.99.0.1/30 dev v2-h0 && ip link set v2-h0 up || error "host end of the veth"
nsenter -t "$c2_pid" -n sh -c 'ip addr add 10.99.0.2/30 dev eth0 && ip link set eth0 up' \
  || error "pod end of the veth"
busybox ping -c 3 -W 10 10.99.0.2 >"$out/ping.log" 2>&1 || error "ping: $(cat "$out/ping.log")"
kv c2_host_veth v2-h0

# 4. The kernel's counters, one sweep of the agent, the counters again.
cp "$share/podometer" /var/tmp/podometer && chmod +x /var/tmp/podometer
for phase in before after; do
  snap c1 "$c1_dir"; snap p1 "$(dirname "$c1_dir")"
  snap c2 "$c2_dir"; snap p2 "$(dirname "$c2_dir")"
  snap c3 "$c3_dir"; snap p3 "$(dirname "$c3_dir")"
  cat "/proc/$c2_pid/net/dev" >"$out/$phase/c2/net.dev"
  if [ $phase = before ]; then
    timeout 300 /var/tmp/podometer collect -c "$share/guest.yaml" --format json \
      >"$out/collect.json" 2>"$out/collect.err" || error "podometer collect failed: $(tail -n 5 "$out/collect.err")"
  fi
done

# 5. Tear down: the runtime's container, then the scope (systemd removes both slices' leaves).
ip link del v2-h0 2>/dev/null
timeout 60 ctr task rm -f "$cid2" >/dev/null || error "ctr task rm"
timeout 60 ctr container rm "$cid2" || error "ctr container rm"
systemctl stop "cri-containerd-$cid1.scope" "cri-containerd-$cid3.scope" || error "stop scopes"
rm -f /dev/shm/v2-mem /var/tmp/v2-io
kv uptime_end "$(cut -d' ' -f1 /proc/uptime)"
echo done >"$out/done"
