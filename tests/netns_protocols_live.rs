//! The netns source's TCP/UDP counters on real network namespaces, each against the kernel's own
//! count of that namespace as iproute2's `nstat` reads it (`ip netns exec NS nstat -asz NAME`):
//! retransmits under random loss made by an nftables rule, listen-queue overflows of a listener
//! that never accepts, receive-buffer errors of a UDP socket that never reads; none for a
//! hostNetwork pod. The counters' files are kept open between sweeps: the test checks that they
//! are, so the deltas prove a kept file shows new counts.
mod support;

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use podometer::model::{AttrValue, ResourceId, Sweep, Value};
use podometer::semconv;
use podometer::sources::netns::{NetnsConfig, NetnsSource, ProtocolMetricsConfig};
use support::kube_pod::{sweep, KubePod};
use support::netns::{tcp_sink_in, TestNetns};

fn live() -> bool {
    support::live_cgroups_available()
        && support::netns::netns_available()
        && support::prerequisite(support::have_command("nft"), "nftables (nft)")
        && support::prerequisite(support::have_command("nstat"), "iproute2's nstat")
}

/// The kernel's absolute value of one counter in namespace `ns`, by nstat's name
/// (`TcpRetransSegs`, `TcpExtListenOverflows`, `UdpRcvbufErrors`).
fn kernel(ns: &str, name: &str) -> i64 {
    let out = support::run(Command::new("ip").args(["netns", "exec", ns, "nstat", "-asz", name]));
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().and_then(|v| v.parse().ok())).flatten()
        })
        .unwrap_or_else(|| panic!("nstat printed no {name}: {out}"))
}

/// The one point of `metric` on `id` whose attributes include all of `attrs`.
fn point(sweep: &Sweep, id: &ResourceId, metric: &str, attrs: &[(&str, &str)]) -> i64 {
    let r = sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?} in {sweep:#?}"));
    let found: Vec<_> = r
        .points_of(metric)
        .filter(|p| attrs.iter().all(|(k, v)| p.attribute(k) == Some(&AttrValue::from(*v))))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {attrs:?} on {id:?}: {found:?}");
    match found[0].value {
        Value::Int(v) => v,
        other => panic!("{metric}: {other:?}"),
    }
}

/// Files this process holds open whose target is one of a namespace's protocol files.
fn open_protocol_files() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|t| {
                    let t = t.to_string_lossy();
                    t.ends_with("/net/snmp") || t.ends_with("/net/netstat")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Runs `f` on a thread that has joined the network namespace `ns` (the agent never does
/// this; the test's traffic has to start inside the pod).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; setns changes this thread's namespace only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in the namespace")
}

/// A second namespace joined to `pod` by its own veth pair (10.214.<pid>.<n>/30), as another
/// pod on the node would be: the far end of the pod's traffic, where loss is made.
struct Peer {
    ns: TestNetns,
    pod_side: String,
    peer_addr: String,
}

fn peer_of(pod: &TestNetns) -> Peer {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = TestNetns::create();
    let pid = std::process::id();
    let pod_side = format!("pp{}x{n}", pid % 1_000_000);
    let (a, b) =
        (format!("10.214.{}.{}", pid % 250, n * 4 + 1), format!("10.214.{}.{}", pid % 250, n * 4 + 2));
    support::run(Command::new("ip").args([
        "-n", &pod.name, "link", "add", &pod_side, "type", "veth", "peer", "name", "peer0", "netns", &ns.name,
    ]));
    pod.exec(&["ip", "addr", "add", &format!("{a}/30"), "dev", &pod_side]);
    pod.exec(&["ip", "link", "set", &pod_side, "up"]);
    ns.exec(&["ip", "addr", "add", &format!("{b}/30"), "dev", "peer0"]);
    ns.exec(&["ip", "link", "set", "peer0", "up"]);
    Peer { ns, pod_side, peer_addr: b }
}

#[test]
fn retransmits_under_random_loss_equal_the_kernels_count_of_the_pods_namespace() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let peer = peer_of(&ns);
    // Every fifth segment towards the peer's port is lost on its way in: the pod retransmits.
    peer.ns.exec(&["nft", "add table inet loss"]);
    peer.ns.exec(&["nft", "add chain inet loss in { type filter hook input priority 0 ; }"]);
    peer.ns.exec(&["nft", "add rule inet loss in tcp dport 9100 numgen random mod 5 == 0 drop"]);
    let pod = KubePod::in_netns(&ns.name, 2);
    let containers = pod.infos();
    let id = pod.resource_id();
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let metric = "k8s.pod.network.tcp.segment.retransmitted";

    let before = sweep(&mut source, &containers);
    let kernel_before = kernel(&ns.name, "TcpRetransSegs");
    assert_eq!(point(&before, &id, metric, &[]), kernel_before);
    assert!(open_protocol_files() >= 2, "snmp and netstat are kept open after a sweep");

    let sink = tcp_sink_in(&format!("/run/netns/{}", peer.ns.name), 9100);
    let target = peer.peer_addr.clone();
    in_netns(&ns.name, move || support::netns::send_tcp(&target, 9100, 2_000_000, Duration::from_secs(60)));
    assert_eq!(sink.join().expect("sink"), 2_000_000);
    // send_tcp returned after the peer's FIN: every segment of the pod's was acknowledged.
    let after = sweep(&mut source, &containers);
    let kernel_after = kernel(&ns.name, "TcpRetransSegs");

    let agent = point(&after, &id, metric, &[]) - point(&before, &id, metric, &[]);
    eprintln!("retransmits: agent delta {agent}, kernel delta {}", kernel_after - kernel_before);
    assert!(agent > 0, "20 % loss caused retransmits");
    assert_eq!(agent, kernel_after - kernel_before, "the pod's retransmits are its namespace's");
    assert_eq!(point(&after, &id, metric, &[]), kernel_after, "and so is the absolute count");
    // One resource, the pod's, with the default set, whatever the number of containers.
    assert_eq!(after.resources.len(), 1);
    for name in [
        "k8s.pod.network.tcp.listen.overflows",
        "k8s.pod.network.tcp.listen.drops",
        "k8s.pod.network.tcp.reset.count",
        "k8s.pod.network.udp.buffer_errors",
    ] {
        assert!(after.resources[0].points_of(name).next().is_some(), "{name} in the default set");
    }
    assert!(after.resources[0].points_of("k8s.pod.network.socket.count").next().is_none(), "not by default");
    assert!(peer.pod_side.starts_with("pp"));
}

#[test]
fn a_listener_that_never_accepts_overflows_exactly_as_the_kernel_counts() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let pod = KubePod::in_netns(&ns.name, 1);
    let containers = pod.infos();
    let id = pod.resource_id();
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let overflows = "k8s.pod.network.tcp.listen.overflows";
    let drops = "k8s.pod.network.tcp.listen.drops";
    let before = sweep(&mut source, &containers);

    // Backlog 1, never accepted; 8 clients. Once the accept queue is full the kernel drops the
    // handshakes it cannot queue and counts them. The clients are closed before reading, so
    // that no SYN retransmit moves the counters between the agent's read and nstat's.
    in_netns(&ns.name, || {
        // SAFETY: plain socket calls on descriptors this closure owns and closes.
        unsafe {
            let listener = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 9200u16.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
                sin_zero: [0; 8],
            };
            let sa = &addr as *const libc::sockaddr_in as *const libc::sockaddr;
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(libc::bind(listener, sa, len), 0, "bind");
            assert_eq!(libc::listen(listener, 1), 0, "listen");
            let mut clients = Vec::new();
            for _ in 0..8 {
                let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                libc::connect(c, sa, len);
                clients.push(c);
            }
            std::thread::sleep(Duration::from_millis(1500));
            for c in clients {
                libc::close(c);
            }
            libc::close(listener);
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = sweep(&mut source, &containers);
    let (k_overflows, k_drops) =
        (kernel(&ns.name, "TcpExtListenOverflows"), kernel(&ns.name, "TcpExtListenDrops"));
    eprintln!("listen: overflows {k_overflows}, drops {k_drops}");
    assert!(point(&after, &id, overflows, &[]) > point(&before, &id, overflows, &[]), "overflows counted");
    assert_eq!(point(&after, &id, overflows, &[]), k_overflows);
    assert_eq!(point(&after, &id, drops, &[]), k_drops);
}

#[test]
fn a_udp_socket_that_never_reads_drops_exactly_as_the_kernel_counts() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let pod = KubePod::in_netns(&ns.name, 1);
    let containers = pod.infos();
    let id = pod.resource_id();
    let mut source = NetnsSource::new(&NetnsConfig::default()).expect("source");
    let metric = "k8s.pod.network.udp.buffer_errors";
    let rx = [(semconv::NETWORK_IO_DIRECTION, "receive"), (semconv::NETWORK_TYPE, "ipv4")];
    let before = sweep(&mut source, &containers);
    assert_eq!(point(&before, &id, metric, &rx), 0);

    in_netns(&ns.name, || {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own with a c_int option value.
        unsafe {
            libc::setsockopt(
                receiver.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("addr");
        for _ in 0..200 {
            sender.send_to(&[0u8; 1000], to).expect("send");
        }
        // Loopback delivers within the send: the counts are final when the loop ends.
        drop(receiver);
    });
    let after = sweep(&mut source, &containers);
    let kernel_count = kernel(&ns.name, "UdpRcvbufErrors");
    eprintln!("udp: receive buffer errors {kernel_count}");
    assert!(kernel_count > 100, "a 1-byte buffer (the kernel's minimum) takes a few datagrams at most");
    assert_eq!(point(&after, &id, metric, &rx), kernel_count);
    // IPv6 is off in the test namespace but its MIB is there: zero, read, not left out.
    assert_eq!(
        point(
            &after,
            &id,
            metric,
            &[(semconv::NETWORK_IO_DIRECTION, "receive"), (semconv::NETWORK_TYPE, "ipv6")]
        ),
        0
    );
}

#[test]
fn a_host_network_pod_gets_no_protocol_counters_and_all_can_be_chosen() {
    if !live() {
        return;
    }
    let ns = TestNetns::create();
    let normal = KubePod::in_netns(&ns.name, 1);
    let mut host_pod = KubePod::new(1);
    host_pod.start(0, "exec sleep 300", "sleep");
    let mut containers = normal.infos();
    containers.extend(host_pod.infos());
    let all = ProtocolMetricsConfig { include: vec![podometer::glob::Glob::new("*")], exclude: vec![] };
    let mut source =
        NetnsSource::new(&NetnsConfig { protocol_metrics: all, ..NetnsConfig::default() }).expect("source");
    let s = sweep(&mut source, &containers);
    assert!(s.resource(&host_pod.resource_id()).is_none(), "{s:#?}");
    let id = normal.resource_id();
    let tcp4 = [("network.transport", "tcp"), ("network.type", "ipv4")];
    assert_eq!(point(&s, &id, "k8s.pod.network.socket.count", &tcp4), 0, "no socket in the pod yet");
    assert!(s.resource(&id).unwrap().points_of("k8s.pod.network.tcp.timeouts").next().is_some());

    // A listener and one connection to it, held open inside the pod: 3 TCP sockets, both ends
    // established; ss (iproute2, from the kernel's socket tables) says the same.
    let file = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("open netns");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; setns changes this thread's namespace only.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let accepted = listener.accept().expect("accept");
        ready_tx.send(()).expect("ready");
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop((client, accepted, listener));
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("connection made");
    let s = sweep(&mut source, &containers);
    let ss = |filter: &[&str]| {
        support::run(
            Command::new("ip").args(["netns", "exec", &ns.name, "ss", "-H", "-t", "-4"]).args(filter),
        )
        .lines()
        .count() as i64
    };
    let established = [("network.transport", "tcp"), ("network.connection.state", "established")];
    let estab = point(&s, &id, "k8s.pod.network.connection.count", &established);
    assert_eq!(estab, 2);
    assert_eq!(estab, ss(&["state", "established"]) + ss(&["state", "close-wait"]));
    let sockets = point(&s, &id, "k8s.pod.network.socket.count", &tcp4);
    assert_eq!(sockets, 3);
    assert_eq!(sockets, ss(&["-a"]));
    done_tx.send(()).expect("release");
    holder.join().expect("holder");

    let none = ProtocolMetricsConfig { include: vec![], exclude: vec![] };
    let mut off =
        NetnsSource::new(&NetnsConfig { protocol_metrics: none, ..NetnsConfig::default() }).expect("source");
    let s = sweep(&mut off, &containers);
    let r = s.resource(&id).expect("interface series still there");
    assert!(r.points.iter().all(|p| p.attribute(semconv::NETWORK_INTERFACE_NAME).is_some()), "{r:#?}");
}
