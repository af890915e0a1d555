#!/usr/bin/env bash
# Writes the seed inputs of every fuzz target into fuzz/corpus/TARGET/seed-*: cgroup files of
# the fixture trees, this machine's /proc files, the captured netlink dump, the config examples,
# a small queue segment and typical OTLP answers. The fuzzer grows the corpus from there.
set -euo pipefail
cd "$(dirname "$0")"
c=corpus
mkdir -p $c/cgroup_file $c/proc_file $c/netlink $c/config_yaml $c/queue_segment $c/otlp_response
# cgroup_file: first byte selects the parser (see src/fuzzing.rs), then the file's text.
seed_cg() { # selector file
    local name; name=$(echo "$2" | tr '/' '_')
    { printf "\\x$(printf %02x "$1")"; head -c 4096 "$2"; } > "$c/cgroup_file/seed-$1-${name##*cgroup_}"
}
f=../fixtures/cgroup
pick() { find "$f" -name "$1" -type f -print -quit; }
for spec in "0 pids.current" "1 pids.max" "1 memory.max" "2 memory.limit_in_bytes" \
            "3 cpuacct.usage_user" "4 cpuacct.stat" "5 cpu.stat" "7 memory.stat" \
            "9 memory.events" "9 memory.oom_control" "10 blkio.throttle.io_service_bytes_recursive" \
            "11 io.stat" "12 cpu.pressure" "12 memory.pressure"; do
    set -- $spec
    p=$(pick "$2"); [ -n "$p" ] && seed_cg "$1" "$p"
done
for file in $(find $f -name cpu.stat -type f | sort | sed -n 1,4p); do seed_cg 6 "$file"; seed_cg 5 "$file"; done
for file in $(find $f -name memory.stat -type f | sort | sed -n 1,4p); do seed_cg 8 "$file"; done
# proc_file: 0 net/dev, 1 stat, 2 cgroup.procs
{ printf '\x00'; cat /proc/self/net/dev; } > $c/proc_file/seed-net-dev
{ printf '\x01'; cat /proc/self/stat; } > $c/proc_file/seed-stat
{ printf '\x01'; echo '4242 (a) b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0'; } > $c/proc_file/seed-stat-paren
{ printf '\x02'; printf '1\n42\n4242\n'; } > $c/proc_file/seed-procs
# net_protocols: 0 snmp, 1 netstat, 2 snmp6, 3 sockstat, 4 sockstat6; the recorded kernels' files.
mkdir -p $c/net_protocols
i=0
for file in snmp netstat snmp6 sockstat sockstat6; do
    for k in ../fixtures/net_protocols/*/; do
        if [ -f "$k$file" ]; then { printf "\\x0$i"; cat "$k$file"; } > "$c/net_protocols/seed-$file-$(basename "$k")"; fi
    done
    i=$((i + 1))
done
# netlink: each captured RTM_NEWLINK message of the test data, sequence number set to 1.
i=0
grep -v '^#' ../src/sources/netns/testdata/rtnl_links.txt | while read -r _ _ hex; do
    i=$((i + 1))
    # Bytes 8..11 are the sequence number (little endian).
    printf '%s' "${hex:0:16}01000000${hex:24}" | xxd -r -p > "$c/netlink/seed-$i"
done
# A DONE message (type 3) with sequence 1.
printf '140000000300020001000000000000000000000000' | xxd -r -p > $c/netlink/seed-done
# config_yaml: the example configs, with env references.
for file in ../config/*.yaml; do cp "$file" "$c/config_yaml/seed-$(basename "$file")"; done
printf 'interval: ${env:A:-10s}\nexporters:\n  file: {path: "${env:EMPTY:--}"}\npipelines:\n  p: {sources: [cgroups], exporters: [file]}\nsources: {cgroups: {}}\n' > $c/config_yaml/seed-env
# queue_segment: records [u32 len][u32 crc][payload], written by python's zlib.crc32 (IEEE).
python3 - "$c/queue_segment" <<'PY'
import struct, sys, zlib
out = sys.argv[1]
recs = [b"\x0a\x03abc", b"\x0a\x05hello", b"\x0a\x00"]
def rec(p): return struct.pack("<II", len(p), zlib.crc32(p)) + p
good = b"".join(rec(p) for p in recs)
open(f"{out}/seed-good", "wb").write(good)
bad = bytearray(good); bad[8 + 1] ^= 0xff
open(f"{out}/seed-bad-crc", "wb").write(bytes(bad))
bad = bytearray(good); bad[0:4] = struct.pack("<I", 0xfffff0)
open(f"{out}/seed-bad-len", "wb").write(bytes(bad))
open(f"{out}/seed-torn", "wb").write(good[:-2])
PY
# otlp_response: status selector, Retry-After, NUL, Location, NUL, body.
printf '\x32120\x00\x00' > $c/otlp_response/seed-200-empty
printf '\xc8Sun, 06 Nov 1994 08:49:37 GMT\x00\x00busy' > $c/otlp_response/seed-retry-date
printf '\x64\x00http://elsewhere/v1/metrics\x00' > $c/otlp_response/seed-redirect
printf '\x32\x00\x00\x0a\x07\x08\x02\x12\x03dup' > $c/otlp_response/seed-partial
# bundle_config: first byte 0 a bundle's config.json, 1 a containers/storage containers.json.
mkdir -p $c/bundle_config $c/docker_api
for file in ../fixtures/runtime_files/*.json; do
    sel='\x00'; case $file in *podman-containers*) sel='\x01';; esac
    { printf "$sel"; cat "$file"; } > "$c/bundle_config/seed-$(basename "$file" .json)"
done
# docker_api: /version, NUL, /containers/json, NUL, /libpod/containers/json, NUL, /events lines.
id=$(printf 'a%.0s' $(seq 64)); id2=$(printf 'b%.0s' $(seq 64))
printf '{"ApiVersion":"1.41","Components":[{"Name":"Podman Engine","Version":"4.3.1"}]}\0[{"Id":"%s","Names":["/web"],"Image":"docker.io/library/nginx:1.27","Labels":{"app":"shop"}},{"Id":"%s","Names":["/db","/web/db"],"Image":"sha256:0123"}]\0[{"Id":"%s","Pod":"%s","PodName":"shop"}]\0{"Type":"container","Action":"rename","Actor":{"ID":"%s","Attributes":{"name":"web2"}},"time":1}\n{"Type":"container","Action":"destroy","Actor":{"ID":"%s"}}\n' \
    "$id" "$id2" "$id" "$id2" "$id" "$id2" > $c/docker_api/seed-podman
printf '{"ApiVersion":"1.41","Version":"20.10.24"}\0[{"Id":"%s","Names":["/x"],"Image":"registry:5000/team/app:v2@sha256:ab","Labels":{"com.docker.compose.project":"p"}}]\0\0{"Type":"container","Action":"start","Actor":{"ID":"%s"}}\n' \
    "$id" "$id" > $c/docker_api/seed-docker
printf '{}\0{"message":"page not found"}\0\0' > $c/docker_api/seed-error
