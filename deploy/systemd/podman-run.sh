#!/bin/sh
# The systemd unit's equivalent as a container on a Podman (or Docker: same flags) host: the
# DaemonSet's settings (host pids, root with only SYS_PTRACE, and read-only mounts of only what
# the built-in config reads: /proc and the cgroup filesystem under /host, Podman's container
# store where runtime_files looks for it), the host network (the default collector endpoint is
# on the host's loopback), no other privilege.
# The image picks the node view by itself because /host/proc and /host/sys/fs/cgroup exist.
# Host peers (network.interface.host_peer) need CAP_NET_ADMIN in the host's network namespace:
# opt in with PODOMETER_HOST_PEERS=1.
set -eu
net_admin=
if [ "${PODOMETER_HOST_PEERS:-0}" = 1 ]; then
  net_admin=--cap-add=NET_ADMIN
fi
store=/var/lib/containers/storage/overlay-containers
# `ro` is not recursive: the mounts below /sys/fs/cgroup (cgroup v1's controllers) would stay
# writable, so each gets a read-only bind of its own.
cgroup_mounts=
for m in $(awk '$5 ~ "^/sys/fs/cgroup/" { print $5 }' /proc/self/mountinfo); do
  cgroup_mounts="$cgroup_mounts -v $m:/host$m:ro"
done
exec podman run -d --name podometer --replace \
  --pid=host --network=host \
  --user=0 --cap-drop=ALL --cap-add=SYS_PTRACE $net_admin \
  --security-opt=no-new-privileges --read-only \
  --ulimit nofile=65536:65536 \
  -v /proc:/host/proc:ro \
  -v /sys/fs/cgroup:/host/sys/fs/cgroup:ro $cgroup_mounts \
  -v "$store:$store:ro" \
  -e OTEL_EXPORTER_OTLP_ENDPOINT="${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4317}" \
  localhost/podometer:0.1.0 run
