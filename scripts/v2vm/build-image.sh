#!/usr/bin/env bash
# Builds the pure cgroup v2 test guest (Debian 12, systemd, containerd + runc, the CNI plugins)
# from Debian's packages and prints the directory holding disk.raw, vmlinuz and initrd.img.
# Usage: build-image.sh TOOLS_DIR. The result is cached in TOOLS_DIR/v2vm/<hash of this file>:
# change this script and the next run builds afresh; older builds are removed.
# Needs root (debootstrap, chroot). No loop mount: mkfs.ext4 -d packs the rootfs directory.
set -euo pipefail

tools=${1:?usage: build-image.sh TOOLS_DIR}
log() { echo "v2vm: $*" >&2; }
hash=$(sha256sum "$0" | cut -c1-16)
base="$tools/v2vm"
out="$base/$hash"
mkdir -p "$base"
[ -f "$out/ok" ] && { echo "$out"; exit 0; }

# One build at a time on a machine (parallel test runs share the tools dir).
exec 9>"$base/lock"
flock 9
[ -f "$out/ok" ] && { echo "$out"; exit 0; }
# A build killed outright (SIGKILL: no trap ran) leaves its directory and maybe its /proc mount.
for stale in "$base"/build.*; do
  [ -d "$stale" ] || continue
  mountpoint -q "$stale/rootfs/proc" 2>/dev/null && umount -l "$stale/rootfs/proc"
  rm -rf "$stale"
done

need=()
for c in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap mkfs.ext4:e2fsprogs; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  t0=$SECONDS
  apt-get update -qq >&2
  # Without --no-install-recommends qemu pulls in a desktop's worth of libraries.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  log "install took $((SECONDS - t0)) s"
fi

# The mirror this machine's own apt sources name (no other network is reachable).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { log "no Debian mirror in the apt sources"; exit 1; }

work=$(mktemp -d "$base/build.XXXXXX")
root="$work/rootfs"
cleanup() {
  for m in "$root/proc" "$root/sys" "$root/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

t0=$SECONDS
log "debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,udev,iproute2,procps,kmod,linux-image-amd64,busybox-static,dbus \
  bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
log "debootstrap took $((SECONDS - t0)) s"

# Stage 2: the container runtime and the CNI plugins (bridge, host-local, loopback), installed
# the way a node gets them (apt in the rootfs).
t0=$SECONDS
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"   # start no service in the chroot
chmod +x "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
chroot "$root" apt-get install -y -qq --no-install-recommends containerd runc \
  containernetworking-plugins >&2 \
  || { log "stage 2 (containerd, runc, CNI plugins) failed"; exit 1; }
chroot "$root" apt-get clean
umount "$root/proc"
rm -f "$root/usr/sbin/policy-rc.d"
log "stage 2 took $((SECONDS - t0)) s"

# Guest configuration: root on virtio disk, the 9p share at /mnt/host, and a unit that runs
# /mnt/host/guest.sh once the system is up, then powers off (QEMU runs with -no-reboot).
t0=$SECONDS
echo v2vm > "$root/etc/hostname"
cat > "$root/etc/fstab" <<'F'
/dev/vda  /          ext4  rw,relatime  0 1
hostshare /mnt/host  9p    trans=virtio,version=9p2000.L,msize=262144,nofail  0 0
F
mkdir -p "$root/mnt/host"
chroot "$root" passwd -d root >/dev/null
cat > "$root/etc/systemd/system/v2test.service" <<'F'
[Unit]
Description=podometer cgroup v2 guest tests
After=multi-user.target mnt-host.mount
Requires=mnt-host.mount
ConditionPathExists=/mnt/host/guest.sh
[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/host/guest.sh
ExecStopPost=/bin/systemctl --no-block poweroff --force
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=900
[Install]
WantedBy=multi-user.target
F
chroot "$root" systemctl enable v2test.service >/dev/null 2>&1
# containerd starts when guest.sh has written its configuration (CRI with the systemd cgroup
# driver, CNI), not at boot with the package's.
chroot "$root" systemctl disable containerd.service >/dev/null 2>&1
# Nothing else runs in the guest: it is slow enough under TCG.
chroot "$root" systemctl mask systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer fstrim.timer man-db.timer systemd-networkd-wait-online.service >/dev/null 2>&1 || true
rm -f "$root/etc/resolv.conf"
mkdir -p "$work/img"
cp -L "$root/vmlinuz" "$work/img/vmlinuz"
cp -L "$root/initrd.img" "$work/img/initrd.img"
size=$(( $(du -sm "$root" | cut -f1) + 768 ))
# mke2fs says "Creating regular file" on stdout even with -q; stdout carries only the result.
mkfs.ext4 -q -F -L root -d "$root" "$work/img/disk.raw" "${size}M" >&2
log "image took $((SECONDS - t0)) s"

rm -rf "$out"
mv "$work/img" "$out"
touch "$out/ok"
# Earlier builds (other hashes) are no longer used.
for d in "$base"/*/; do
  d=${d%/}
  [ "$d" = "$out" ] || [ ! -f "$d/ok" ] || rm -rf "$d"
done
echo "$out"
