#!/usr/bin/env bash
# Demo: podometer as an unprivileged sidecar in a Podman pod. Builds the image, plays a pod
# derived from deploy/kubernetes/sidecar-example.yaml (an app that burns CPU and receives
# 1 MB, the image as sidecar with no capability and a shared PID namespace), shows what the
# sidecar exports next to the kernel's own counters read from the host, and removes the pod.
set -euo pipefail
cd "$(dirname "$0")/.."
# Podman, runc, busybox-static and the local images: what scripts/demo.sh installs.
eval "$(bash scripts/demo.sh --prepare)"
# The image carries Debian's CA bundle (scripts/image.sh).
[ -f /etc/ssl/certs/ca-certificates.crt ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >&2

image=$(bash scripts/image.sh)
name="podometer-demo-sidecar-$$"
out=$(mktemp -d)
chmod 777 "$out"
cleanup() { podman pod rm -f -t 0 "$name" >/dev/null 2>&1 || true; rm -rf "$out"; }
trap cleanup EXIT

# The built-in sidecar config with a file exporter instead of OTLP (no collector needed).
sed -e 's|${env:PODOMETER_INTERVAL:-10s}|1s|' -e 's|otlp: {}|file: {path: /out/metrics.jsonl}|' \
    -e 's|exporters: \[otlp\]|exporters: [file]|' config/sidecar.yaml > "$out/sidecar.yaml"

cat > "$out/pod.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $name
spec:
  shareProcessNamespace: true
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
  containers:
    - name: app
      image: localhost/bb:1
      command: ["/bin/sh", "-c", "dd if=/dev/zero of=/dev/null bs=1 count=1500000 2>/dev/null; while true; do nc -l -p 8080 > /dev/null; done"]
      env: [{name: PATH, value: /bin}]
      securityContext: {runAsUser: 65534, allowPrivilegeEscalation: false}
    - name: podometer
      image: $image
      args: ["run", "-c", "/out/sidecar.yaml"]
      env:
        - {name: K8S_POD_NAME, value: $name}
        - {name: K8S_POD_UID, value: demo-uid}
        - {name: K8S_NAMESPACE_NAME, value: default}
        - {name: OTEL_RESOURCE_ATTRIBUTES, value: service.name=demo}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts: [{name: out, mountPath: /out}]
  volumes:
    - name: out
      hostPath: {path: $out, type: Directory}
YAML

echo "== podman kube play (sidecar: user 65532, no capability, shared PID namespace)"
podman kube play "$out/pod.yaml" >/dev/null
infra=$(podman pod inspect "$name" --format '{{.InfraContainerID}}')
ip=$(podman inspect "$infra" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
app=$(podman inspect "$name-app" --format '{{.Id}}')
sleep 4
echo "== sending 1000000 bytes to the app at $ip:8080"
python3 -c '
import socket, sys, time
for _ in range(50):
    try:
        s = socket.create_connection((sys.argv[1], 8080), timeout=5)
        break
    except OSError:
        time.sleep(0.2)
s.sendall(b"\0" * 1000000)
s.shutdown(socket.SHUT_WR)
s.recv(1)
' "$ip"
sleep 3

infra_pid=$(podman inspect "$infra" --format '{{.State.Pid}}')
app_pid=$(podman inspect "$app" --format '{{.State.Pid}}')
cg=$(awk -F: '$2 ~ /(^|,)cpuacct(,|$)/ {print $3}' "/proc/$app_pid/cgroup")
echo "== what the kernel says (read on the host)"
echo "pod eth0 received bytes: $(awk '/eth0:/ {sub(/.*:/, ""); print $1}' "/proc/$infra_pid/net/dev")"
echo "app cgroup CPU seconds:  $(awk '{printf "%.3f", $1/1e9}' "/sys/fs/cgroup/cpuacct$cg/cpuacct.usage")"
echo "== what the sidecar exported (last sweep)"
tail -n 1 "$out/metrics.jsonl" | python3 -c '
import json, sys
app = sys.argv[1]
for rm in json.load(sys.stdin)["resourceMetrics"]:
    attrs = {a["key"]: list(a["value"].values())[0] for a in rm["resource"]["attributes"]}
    if attrs.get("container.id") == app:
        who = "app container"
    elif "container.id" in attrs:
        who = "container " + attrs["container.id"][:12]
    elif "podometer.cgroup.path" in attrs:
        who = "cgroup " + attrs["podometer.cgroup.path"]
    else:
        who = "pod"
        print("pod attributes: " + ", ".join("%s=%s" % kv for kv in attrs.items()))
    for m in rm["scopeMetrics"][0]["metrics"]:
        name = m["name"]
        if name.startswith("k8s.pod.network.") and name != "k8s.pod.network.io":
            continue
        for p in (m.get("sum") or m.get("gauge"))["dataPoints"]:
            pa = {a["key"]: a["value"]["stringValue"] for a in p["attributes"]}
            if name == "k8s.pod.network.io" and pa.get("network.interface.name") != "eth0":
                continue
            value = p.get("asDouble", p.get("asInt"))
            print("%-24s %-32s %-18s %s" % (who, name, " ".join(pa.values()), value))
' "$app"
