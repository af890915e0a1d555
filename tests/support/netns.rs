//! Real network namespaces joined to the host by a veth pair, removed on drop, and processes
//! that are killed on drop.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{have_command, is_root, prerequisite, run, unique};

pub fn netns_available() -> bool {
    prerequisite(is_root(), "root") && prerequisite(have_command("ip"), "iproute2 (ip)")
}

/// `ip netns add NAME` plus a veth pair: `host_if` in the host with `host_addr`, `eth0` in the
/// namespace with `pod_addr`, both in a private /30 (10.213.x.y) and IPv6 off so that no
/// autoconfiguration traffic disturbs byte counts.
pub struct TestNetns {
    pub name: String,
    pub host_if: String,
    pub host_addr: String,
    pub pod_addr: String,
}

impl TestNetns {
    pub fn create() -> TestNetns {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        assert!(n < 60, "out of /30 blocks");
        let pid = std::process::id();
        let ns = TestNetns {
            name: unique("podometer-ns"),
            // IFNAMSIZ is 16: keep it short but unique per process and per namespace.
            host_if: format!("vp{}x{n}", pid % 1_000_000),
            // Third octet from the pid, fourth from the counter: parallel test processes differ.
            host_addr: format!("10.213.{}.{}", pid % 250, n * 4 + 1),
            pod_addr: format!("10.213.{}.{}", pid % 250, n * 4 + 2),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]));
        // From here on, Drop removes the namespace even if a later step panics.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        run(Command::new("ip").args([
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]));
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", ns.host_if), "1");
        run(Command::new("ip").args(["addr", "add", &format!("{}/30", ns.host_addr), "dev", &ns.host_if]));
        run(Command::new("ip").args(["link", "set", &ns.host_if, "up"]));
        ns.exec(&["ip", "addr", "add", &format!("{}/30", ns.pod_addr), "dev", "eth0"]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// The host veth's transmit byte counter: what the pod's eth0 received, read from the
    /// host side through sysfs, independent of the source under test.
    pub fn host_tx_bytes(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", self.host_if);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn host_ifindex(&self) -> u32 {
        let path = format!("/sys/class/net/{}/ifindex", self.host_if);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .expect("ifindex")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A process killed (by pid) and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    /// Waits for the process to exit by itself; false on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends exactly `payload` bytes over TCP to `addr:port`, retrying the connect until the
/// listener is up (`timeout`), then closes the connection.
pub fn send_tcp(addr: &str, port: u16, payload: usize, timeout: Duration) {
    use std::io::Write;
    let deadline = Instant::now() + timeout;
    let target = format!("{addr}:{port}");
    let mut stream = loop {
        match std::net::TcpStream::connect(&target) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect {target}: {e}"),
        }
    };
    let data = vec![0x5au8; payload];
    stream.write_all(&data).unwrap_or_else(|e| panic!("send to {target}: {e}"));
    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // Wait for the peer's FIN so the whole exchange is over before counters are read.
    let mut sink = [0u8; 64];
    let _ = std::io::Read::read(&mut stream, &mut sink);
}

/// A one-connection TCP sink inside the network namespace at `ns_path` (`/run/netns/NAME` or
/// `/proc/<pid>/ns/net`): a test thread joins the namespace (the agent never does this) and
/// listens on `port`. Returns once it listens; the handle yields the bytes received.
pub fn tcp_sink_in(ns_path: &str, port: u16) -> std::thread::JoinHandle<u64> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; setns on this thread only changes this thread's netns.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind in netns");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match std::io::Read::read(&mut conn, &mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("read in netns: {e}"),
            }
        }
        total
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("sink thread did not start listening");
    handle
}

/// Bytes received and transmitted by a container's network namespace (its `eth0`) as
/// `podman stats` reports them, in the container's view.
pub fn podman_net_bytes(id: &str) -> (u64, u64) {
    let stats = super::podman::podman_stats(&[id.to_owned()]);
    let s = stats.first().unwrap_or_else(|| panic!("podman stats printed nothing for {id}"));
    (s.net_input_bytes, s.net_output_bytes)
}
