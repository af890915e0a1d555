#!/usr/bin/env bash
# Builds the container image localhost/podometer:<version> with Podman, offline: the shipped
# binary (static glibc, LTO, stripped: scripts/build-dist.sh) copied into an empty image (see
# Containerfile).
# Reproducible: the binary is built with --locked and stripped, the image's timestamps are the
# last commit's time. Prints the image reference on stdout.
# Usage: scripts/image.sh            (CONTAINERS_CONF from scripts/testbed.sh when set)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
image="localhost/podometer:$version"
log() { echo "image: $*" >&2; }

start=$(date +%s)
bin=$(bash scripts/build-dist.sh)
built=$(date +%s)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/podometer"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\npodometer:x:65532:65532:podometer:/:/sbin/nologin\n' > "$ctx/passwd"
printf 'root:x:0:\npodometer:x:65532:\n' > "$ctx/group"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
touch -d "@$epoch" "$ctx"/*

podman build --quiet --timestamp "$epoch" -f "$repo/Containerfile" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
  -t "$image" "$ctx" >&2
done_at=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$image")
log "$image: $((size / 1024)) KiB; cargo $((built - start)) s, podman build $((done_at - built)) s"
if [ "$size" -gt $((20 * 1024 * 1024)) ]; then
  log "image is larger than 20 MiB"
  exit 1
fi
echo "$image"
