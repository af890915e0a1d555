//! Shared by the integration tests: prerequisites that fail loudly in CI, real cgroups and
//! Podman pods that clean up after themselves even when a test panics.
#![allow(dead_code)]

pub mod cgroupfs;
pub mod churn;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod kube_pod;
pub mod netns;
pub mod podman;
pub mod prometheus;
pub mod receivers;
pub mod tls;
pub mod v2vm;

use std::path::Path;
use std::process::Command;

/// True when the tests run in CI, where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Checks a live test's prerequisite. Missing in CI: the test fails, naming what is missing.
/// Missing elsewhere: prints why and returns false, and the test returns early.
#[must_use]
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI=true: {what} (scripts/test.sh installs it)");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have_command(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The live cgroup tests need root and the v1 controllers this machine mounts.
pub fn live_cgroups_available() -> bool {
    prerequisite(is_root(), "root")
        && prerequisite(
            Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists(),
            "cgroup v1 memory controller at /sys/fs/cgroup/memory",
        )
}

/// Runs a command and returns stdout, panicking with stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique suffix for names of things a test creates, so parallel tests never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Polls `done` every 100 ms until it holds; after `limit`, panics naming `what` with
/// `context()` (an agent's log, say).
pub fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; {}", context());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A string attribute of one resource of a sweep.
pub fn str_attr<'a>(
    sweep: &'a podometer::model::Sweep,
    id: &podometer::model::ResourceId,
    key: &str,
) -> Option<&'a str> {
    match sweep.resource(id)?.attribute(key)? {
        podometer::model::AttrValue::Str(s) => Some(s),
        _ => None,
    }
}
