#!/bin/sh
# The systemd unit's equivalent as a container on a Podman (or Docker: same flags) host: the
# DaemonSet's settings (host pids, the host's root read-only at /host, root with only
# SYS_PTRACE, plus NET_ADMIN and the host network for host peers), no other privilege.
# The image picks the node view by itself because /host/proc and /host/sys/fs/cgroup exist.
exec podman run -d --name podometer --replace \
  --pid=host --network=host \
  --user=0 --cap-drop=ALL --cap-add=SYS_PTRACE --cap-add=NET_ADMIN \
  --security-opt=no-new-privileges --read-only \
  --ulimit nofile=65536:65536 \
  -v /:/host:ro,rslave \
  -e OTEL_EXPORTER_OTLP_ENDPOINT="${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4317}" \
  localhost/podometer:0.1.0 run
