#!/usr/bin/env python3
"""Builds a one-layer busybox image offline (no registry is reachable from the test machines).

usage: oci-image.py OUT.tar NAME:TAG [CMD...]

The tar is both an OCI image layout (index.json, for `ctr images import`) and a
docker-archive (manifest.json, for `docker load`). The layer holds /bin/busybox from Debian's
busybox-static and one symlink per applet. Everything is written with fixed timestamps, so the
same inputs give the same digests.
"""
import hashlib
import io
import json
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"


def entry(name, kind=tarfile.DIRTYPE, mode=0o755, **fields):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def layer_bytes():
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "var", "run"]:
            tar.addfile(entry(d, mode=0o1777 if d == "tmp" else 0o755))
        with open(BUSYBOX, "rb") as f:
            data = f.read()
        tar.addfile(entry("bin/busybox", tarfile.REGTYPE, size=len(data)), io.BytesIO(data))
        for applet in sorted(set(applets) - {"busybox"}):
            tar.addfile(entry("bin/" + applet, tarfile.SYMTYPE, 0o777, linkname="busybox"))
        for name, body in [("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", b"root:x:0:\n")]:
            tar.addfile(entry(name, tarfile.REGTYPE, 0o644, size=len(body)), io.BytesIO(body))
    return out.getvalue()


def main():
    if len(sys.argv) < 3 or ":" not in sys.argv[2]:
        sys.exit(__doc__)
    out, ref, cmd = sys.argv[1], sys.argv[2], sys.argv[3:] or ["sh"]
    tag = ref.rsplit(":", 1)[1]
    layer = layer_bytes()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "podometer scripts/oci-image.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + sha256(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + sha256(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
        "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    docker_manifest = json.dumps([{"Config": "blobs/sha256/" + sha256(config), "RepoTags": [ref],
                                   "Layers": ["blobs/sha256/" + sha256(layer)]}]).encode()
    with tarfile.open(out, "w") as tar:
        def add(name, data):
            tar.addfile(entry(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
        tar.addfile(entry("blobs"))
        tar.addfile(entry("blobs/sha256"))
        for blob in (layer, config, manifest):
            add("blobs/sha256/" + sha256(blob), blob)
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        add("manifest.json", docker_manifest)


if __name__ == "__main__":
    main()
