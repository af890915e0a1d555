//! Docker and Podman hosts: the systemd unit and the `podman run` line.
//!
//! This machine's PID 1 is not systemd, so the unit cannot be started here;
//! `systemd-analyze verify` (which needs no running systemd) checks its syntax and directives,
//! and the unit's capability set is checked against the privilege table of docs/deploy.md. The
//! `podman run` line is run for real, with `collect` in place of `run`.
mod support;

use std::collections::BTreeSet;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn unit() -> String {
    std::fs::read_to_string(format!("{ROOT}/deploy/systemd/podometer.service")).unwrap()
}

fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).collect()
}

/// Capabilities named in the privilege table of docs/deploy.md (first column, `CAP_*`).
fn readme_capabilities() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(format!("{ROOT}/docs/deploy.md")).unwrap();
    let table = readme.split("| capability |").nth(1).expect("the privilege table of docs/deploy.md");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .filter_map(|cell| cell.split('`').nth(1))
        .filter(|c| c.starts_with("CAP_"))
        .map(str::to_owned)
        .collect()
}

/// The documented capabilities without the opt-in ones: CAP_NET_ADMIN (host peers) is granted
/// only when asked for.
fn default_capabilities() -> BTreeSet<String> {
    let mut caps = readme_capabilities();
    assert!(caps.remove("CAP_NET_ADMIN"), "docs/deploy.md's table lists CAP_NET_ADMIN for host peers");
    caps
}

#[test]
fn unit_is_hardened_and_grants_only_the_default_capabilities() {
    let unit = unit();
    let caps: BTreeSet<String> =
        directive(&unit, "CapabilityBoundingSet")[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(caps, default_capabilities(), "CapabilityBoundingSet: CAP_NET_ADMIN is opt-in");
    // The opt-in the unit's comment documents grants exactly the documented set.
    let opt_in = unit
        .lines()
        .find_map(|l| l.split('`').find(|part| part.starts_with("CapabilityBoundingSet=")))
        .expect("the unit documents the CAP_NET_ADMIN drop-in");
    let opted: BTreeSet<String> =
        opt_in.trim_start_matches("CapabilityBoundingSet=").split_whitespace().map(str::to_owned).collect();
    assert_eq!(opted, readme_capabilities());
    assert_eq!(directive(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(directive(&unit, "NoNewPrivileges"), ["yes"]);
    assert!(directive(&unit, "ProtectProc").is_empty(), "the agent must see every process");
    let nofile: u64 = directive(&unit, "LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE {nofile}");
    assert!(directive(&unit, "ExecStart")[0].contains(" run -c "));
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if !support::prerequisite(
        support::have_command("systemd-analyze"),
        "systemd-analyze (Debian package systemd)",
    ) {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("podometer.service");
    std::fs::write(&path, unit().replace("/usr/local/bin/podometer", env!("CARGO_BIN_EXE_podometer")))
        .unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown directives are only warnings: none allowed.
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("podometer.service")).collect();
    assert!(own.is_empty(), "systemd-analyze complains: {own:?}");
    // And it does catch a typo (so the check above means something).
    std::fs::write(&path, unit().replace("ProtectSystem=", "ProtectSystm=")).unwrap();
    let bad = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ProtectSystm"), "a typo went unnoticed");
}

/// The arguments deploy/systemd/podman-run.sh passes to `podman`, got by running the script
/// with a `podman` on PATH that prints them, with `env` set.
fn podman_run_args(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("podman");
    std::fs::write(&stub, "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n").unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.arg(format!("{ROOT}/deploy/systemd/podman-run.sh"))
        .env("PATH", path)
        .env_remove("PODOMETER_HOST_PEERS");
    cmd.envs(env.iter().copied());
    support::run(&mut cmd).lines().map(str::to_owned).collect()
}

/// The flags of deploy/systemd/podman-run.sh, without the detach/name/replace options and the
/// environment (collect exports nothing), up to the image.
fn podman_run_flags(env: &[(&str, &str)]) -> Vec<String> {
    let args = podman_run_args(env);
    assert_eq!(args[0], "run", "{args:?}");
    let mut words = args.into_iter().skip(1);
    let mut flags = Vec::new();
    while let Some(w) = words.next() {
        match w.as_str() {
            "-d" | "--replace" => {}
            "--name" | "-e" => {
                words.next();
            }
            "--ulimit" | "-v" => flags.push(format!("{w}={}", words.next().unwrap())),
            w if w.starts_with("localhost/podometer") => break,
            _ => flags.push(w),
        }
    }
    flags
}

fn added_capabilities(flags: &[String]) -> BTreeSet<String> {
    flags.iter().filter_map(|f| f.strip_prefix("--cap-add=")).map(|c| format!("CAP_{c}")).collect()
}

/// The `-v` flags: no host root, every mount read-only, and every mount below the cgroup
/// filesystem read-only too (`ro` is not recursive). Run for real with the busybox image: every
/// write into what is mounted fails, and `/host` holds only proc and the cgroup filesystem.
#[test]
fn podman_run_line_mounts_read_only_only_what_the_config_reads_and_net_admin_is_opt_in() {
    let flags = podman_run_flags(&[]);
    assert_eq!(added_capabilities(&flags), default_capabilities(), "{flags:?}");
    assert!(flags.contains(&"--cap-drop=ALL".to_owned()), "{flags:?}");
    let host_peers = podman_run_flags(&[("PODOMETER_HOST_PEERS", "1")]);
    assert_eq!(added_capabilities(&host_peers), readme_capabilities(), "{host_peers:?}");

    let mounts: Vec<(String, String, String)> = flags
        .iter()
        .filter_map(|f| f.strip_prefix("-v="))
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            assert_eq!(parts.len(), 3, "{v}: source:destination:options");
            (parts[0].to_owned(), parts[1].to_owned(), parts[2].to_owned())
        })
        .collect();
    for (source, destination, options) in &mounts {
        assert_ne!(source.trim_end_matches('/'), "", "the host's root is mounted");
        assert!(options.split(',').any(|o| o == "ro"), "{source}:{destination} is not read-only");
        assert!(
            ["/proc", "/sys/fs/cgroup", "/var/lib/containers/storage/overlay-containers"]
                .iter()
                .any(|read| source == read || source.starts_with(&format!("{read}/"))),
            "{source} is not read by the built-in config"
        );
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for below in
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with("/sys/fs/cgroup/"))
    {
        assert!(
            mounts.iter().any(|(s, d, _)| s == below && *d == format!("/host{below}")),
            "{below} (a mount below the cgroup filesystem) has no read-only mount of its own"
        );
    }

    if !support::podman::podman_available() {
        return;
    }
    let run_flags: Vec<&String> = flags.iter().filter(|f| !f.starts_with("--ulimit=")).collect();
    let name = support::unique("podometer-probe");
    let probe = format!(
        "for d in /host/sys/fs/cgroup/* /host/sys/fs/cgroup; do mkdir $d/{name} && echo WROTE $d; done; \
         ls /host; touch /host/proc/sys/kernel/hostname && echo WROTE proc; \
         touch /var/lib/containers/storage/overlay-containers/{name} && echo WROTE store; true"
    );
    let out = support::podman::podman()
        .args(["run", "--rm"])
        .args(&run_flags)
        .args(["localhost/bb:1", "sh", "-c", &probe])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What a failing run may have created on the host goes again.
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().filter_map(Result::ok) {
        let _ = std::fs::remove_dir(entry.path().join(&name));
    }
    let _ = std::fs::remove_file(format!("/var/lib/containers/storage/overlay-containers/{name}"));
    assert!(out.status.success(), "{flags:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("WROTE"), "writable through the mounts:\n{stdout}");
    let listed: BTreeSet<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(listed, BTreeSet::from(["proc", "sys"]), "/host holds more than proc and sys");
}

#[test]
fn podman_run_line_collects_in_the_node_view() {
    if !support::podman::podman_available() {
        return;
    }
    let image = format!("localhost/podometer:{}", env!("CARGO_PKG_VERSION"));
    if !support::prerequisite(
        support::podman::podman()
            .args(["image", "exists", &image])
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        "the podometer image (scripts/image.sh builds it)",
    ) {
        return;
    }
    let mut flags = podman_run_flags(&[]);
    // This sandbox forbids runc to set any rlimit (nofile above the hard 20000, and then
    // nproc, which Podman adds with any --ulimit): the flag is checked, then left out here.
    let ulimit = flags.iter().position(|f| f.starts_with("--ulimit=nofile=")).expect("--ulimit nofile");
    let wanted: u64 = flags[ulimit].rsplit(':').next().unwrap().parse().unwrap();
    assert!(wanted >= 65536, "{}", flags[ulimit]);
    flags.remove(ulimit);
    assert_eq!(added_capabilities(&flags), default_capabilities());
    let pod = support::podman::PodmanPod::start("podometer-hostrun", &["exec sleep 600"]);
    let out = support::podman::podman()
        .args(["run", "--rm"])
        .args(&flags)
        .arg(&image)
        .arg("collect")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{flags:?}: {stderr}");
    assert!(stderr.contains("view=\"node\""), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for id in pod.all_ids() {
        assert!(stdout.contains(&id), "container {id} missing from the containerized agent's sweep");
    }
}
