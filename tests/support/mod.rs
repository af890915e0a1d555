//! Shared by the integration tests: prerequisites that fail loudly in CI, real cgroups and
//! Podman pods that clean up after themselves even when a test panics.
#![allow(dead_code)]

pub mod cgroupfs;
pub mod churn;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod engine_daemon;
pub mod kube_node;
pub mod kube_pod;
pub mod manifests;
pub mod netns;
pub mod otelcol;
pub mod otelcol_node;
pub mod podman;
pub mod prometheus;
pub mod receivers;
pub mod sweeps;
pub mod tls;
pub mod v2vm;

use std::path::Path;
use std::process::Command;

/// True when the tests run in CI, where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Set to 1 to let live tests whose prerequisites are missing pass with a SKIPPED line instead
/// of failing (never under CI=true).
pub const ALLOW_SKIP_ENV: &str = "PODOMETER_ALLOW_SKIP";

/// Checks a live test's prerequisite. Missing: the test fails, naming what is missing, so that
/// a green run means every live test ran. Only when `PODOMETER_ALLOW_SKIP=1` is set outside CI
/// does it print `SKIPPED: …` and return false (the test then returns early).
#[must_use]
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI=true: {what} (scripts/test.sh installs it)");
    }
    if std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: prerequisite missing: {what}");
        return false;
    }
    panic!(
        "prerequisite missing: {what} (eval \"$(scripts/testbed.sh)\" installs it; {ALLOW_SKIP_ENV}=1 skips \
         such tests instead, with a SKIPPED line)"
    );
}

/// A loopback TCP port that refuses connections for as long as this value lives: its socket is
/// bound but never listens, so a connection gets a reset, and no other socket (another test's
/// server binding port 0, say) can be given the port meanwhile.
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns; the address structs
        // are fully initialised and their sizes passed along.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, std::ptr::addr_of!(addr).cast(), len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut bound_len = len;
            let rc = libc::getsockname(fd, std::ptr::addr_of_mut!(bound).cast(), &mut bound_len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort { _socket: socket, port: u16::from_be(bound.sin_port) }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts listening on the port (the same socket: no other can have taken the port), for a
    /// test whose receiver comes up after its clients found nothing there.
    pub fn listen(self) -> std::net::TcpListener {
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        // SAFETY: listen on a bound socket this value owns; its ownership moves to the listener.
        unsafe {
            let rc = libc::listen(self._socket.as_raw_fd(), 128);
            assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
            let listener = std::net::TcpListener::from_raw_fd(self._socket.into_raw_fd());
            listener.set_nonblocking(true).unwrap();
            listener
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

/// The lowest port [`free_port`] hands out.
const FREE_PORT_FLOOR: u32 = 10_000;

/// The kernel's ephemeral port range (`ip_local_port_range`).
pub fn ephemeral_ports() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|n| n.parse().ok());
    match (it.next(), it.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32768, 60999),
    }
}

/// A loopback port for a server another process binds (an agent's endpoint, a receiver).
/// It lies below the kernel's ephemeral range, so no socket binding port 0 and no outgoing
/// connection can be given it between this call and the server's bind, and each call in this
/// process returns another port (a counter from a start that depends on the pid). It is free
/// on 127.0.0.1 when returned.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, _) = ephemeral_ports();
    assert!(low > FREE_PORT_FLOOR + 1000, "ip_local_port_range starts at {low}: no room below it");
    let span = low - FREE_PORT_FLOOR;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FREE_PORT_FLOOR + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FREE_PORT_FLOOR}..{low}");
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
