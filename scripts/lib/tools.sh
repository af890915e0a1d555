# Sourced by scripts/testbed.sh and scripts/demo.sh: the setup both need, in one place.
# Expects `tools` (the .tools directory) and a `note` function for progress on stderr.

# Podman's defaults do not work here: crun refuses hybrid cgroups and the default nofile
# ulimit exceeds the hard limit. Keep our own config instead of editing the machine's, and the
# local busybox images (nothing is pulled from a registry). Exports CONTAINERS_CONF.
podman_setup() {
  local conf="$tools/containers.conf" root applet
  # Written aside and renamed: podman run by a test at this moment reads a whole file.
  cat > "$conf.tmp.$$" <<CONF
[containers]
default_ulimits = []
[engine]
runtime = "runc"
infra_image = "localhost/pause:1"
CONF
  mv -f "$conf.tmp.$$" "$conf"
  export CONTAINERS_CONF="$conf"

  if ! podman image exists localhost/bb:1 || ! podman image exists localhost/pause:1; then
    note "building local busybox images"
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh sleep cat nc wget dd httpd head tail yes ls ps echo true sync; do
      ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
    tar -C "$root" -cf "$root.tar" .
    podman import "$root.tar" localhost/bb:1 >/dev/null
    podman import --change 'CMD ["/bin/sleep","1000000"]' "$root.tar" localhost/pause:1 >/dev/null
    rm -rf "$root" "$root.tar"
  fi
}

# VictoriaMetrics from Debian trixie, unpacked into tools without touching apt sources.
# Prints the binary's path.
victoria_metrics() {
  local vm="$tools/vm/usr/bin/victoria-metrics" aptdir="$tools/apt-trixie" opts
  if [ ! -x "$vm" ]; then
    note "fetching victoria-metrics from Debian trixie"
    mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
    echo 'deb http://deb.debian.org/debian trixie main' > "$aptdir/sources.list"
    opts=(-oDir::Etc::SourceList="$aptdir/sources.list" -oDir::Etc::SourceParts=/dev/null
          -oDir::State::Lists="$aptdir/lists" -oDir::Cache::Archives="$aptdir/archives"
          -oAPT::Get::List-Cleanup=0)
    apt-get "${opts[@]}" update -qq >&2
    (cd "$aptdir" && apt-get "${opts[@]}" download victoria-metrics >&2)
    dpkg -x "$aptdir"/victoria-metrics_*.deb "$tools/vm"
  fi
  echo "$vm"
}

# rotel (PyPI) in a virtualenv in tools. Prints the rotel-agent binary's path.
rotel_agent() {
  local rotel
  rotel="$(ls "$tools"/rotel-venv/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -n1 || true)"
  if [ -z "$rotel" ]; then
    note "installing rotel into a virtualenv"
    python3 -m venv "$tools/rotel-venv" >&2
    "$tools/rotel-venv/bin/pip" install -q rotel >&2
    rotel="$(ls "$tools"/rotel-venv/lib/python3*/site-packages/rotel/rotel-agent | head -n1)"
  fi
  echo "$rotel"
}
