//! The test helpers themselves work against the real machine.
mod support;

use support::cgroupfs::TestCgroup;

#[test]
fn test_cgroup_is_created_joined_and_removed() {
    if !support::live_cgroups_available() {
        return;
    }
    let name = support::unique("podometer-smoke");
    let path;
    {
        let mut cg = TestCgroup::create(std::path::Path::new("/sys/fs/cgroup"), &name);
        let pid = cg.spawn("sleep 30");
        path = cg.dir("memory");
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "pid {pid} not in {procs}");
    }
    assert!(!path.exists(), "{} left behind", path.display());
}

/// A closed port stays closed while held: connecting is refused, and no other socket can bind
/// it (as a server binding port 0 in a parallel test could once the port was dropped).
#[test]
fn closed_port_refuses_connections_and_cannot_be_taken() {
    let closed = support::ClosedPort::new();
    let port = closed.port();
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_err();
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse, "port {port} could be bound by another socket");
    // Ports the kernel gives to binds of port 0 meanwhile are never this one.
    let others: Vec<_> = (0..200).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    assert!(others.iter().all(|l| l.local_addr().unwrap().port() != port));
}

/// Ports for servers other processes bind: each call another port, none in the kernel's
/// ephemeral range (from which binds of port 0 and outgoing connections take theirs).
#[test]
fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
    let (low, high) = support::ephemeral_ports();
    let ports: Vec<u16> = (0..200).map(|_| support::free_port()).collect();
    for p in &ports {
        assert!(!(low..=high).contains(&u32::from(*p)), "port {p} is in the ephemeral range {low}-{high}");
    }
    let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
    assert_eq!(distinct.len(), ports.len(), "a port handed out twice: {ports:?}");
}

/// A live test whose prerequisite is missing fails (so a green run means it ran), unless
/// skipping was asked for outside CI.
#[test]
fn a_missing_prerequisite_fails_the_test() {
    let outcome = std::panic::catch_unwind(|| support::prerequisite(false, "nothing that exists"));
    let allowed = std::env::var(support::ALLOW_SKIP_ENV).is_ok_and(|v| v == "1") && !support::in_ci();
    if allowed {
        assert_eq!(outcome.ok(), Some(false), "with {} set it skips", support::ALLOW_SKIP_ENV);
    } else {
        assert!(outcome.is_err(), "a missing prerequisite passed silently");
    }
}
