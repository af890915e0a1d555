//! Docker and Podman hosts: the systemd unit and the `podman run` line.
//!
//! This machine's PID 1 is not systemd, so the unit cannot be started here;
//! `systemd-analyze verify` (which needs no running systemd) checks its syntax and directives,
//! and the unit's capability set is checked against the README's privilege table. The
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

/// Capabilities named in the README's privilege table (first column, `CAP_*`).
fn readme_capabilities() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let table = readme.split("| capability |").nth(1).expect("the README's privilege table");
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

#[test]
fn unit_is_hardened_and_grants_only_the_readme_capabilities() {
    let unit = unit();
    let caps: BTreeSet<String> =
        directive(&unit, "CapabilityBoundingSet")[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(caps, readme_capabilities(), "CapabilityBoundingSet vs the README's privilege table");
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

/// The flags of deploy/systemd/podman-run.sh, without the detach/name/replace options and the
/// environment (collect exports nothing).
fn podman_run_flags() -> Vec<String> {
    let script = std::fs::read_to_string(format!("{ROOT}/deploy/systemd/podman-run.sh")).unwrap();
    let joined =
        script.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join(" ").replace('\\', " ");
    let after = joined.split("exec podman run").nth(1).expect("exec podman run");
    let mut words = after.split_whitespace().map(str::to_owned);
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
    let mut flags = podman_run_flags();
    // This sandbox forbids runc to set any rlimit (nofile above the hard 20000, and then
    // nproc, which Podman adds with any --ulimit): the flag is checked, then left out here.
    let ulimit = flags.iter().position(|f| f.starts_with("--ulimit=nofile=")).expect("--ulimit nofile");
    let wanted: u64 = flags[ulimit].rsplit(':').next().unwrap().parse().unwrap();
    assert!(wanted >= 65536, "{}", flags[ulimit]);
    flags.remove(ulimit);
    let caps: BTreeSet<String> =
        flags.iter().filter_map(|f| f.strip_prefix("--cap-add=")).map(|c| format!("CAP_{c}")).collect();
    assert_eq!(caps, readme_capabilities());
    assert!(flags.contains(&"--cap-drop=ALL".to_owned()), "{flags:?}");
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
