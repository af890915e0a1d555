//! The tools users run instead on the same node: Netdata's cgroups plugin and `podman stats`.

use super::*;

pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Netdata with only its cgroups plugin, at 1 s, its state in a temp dir. Returns the CPU of its
/// `PLUGIN[cgroups]` threads per cgroup-sample and how many cgroups it charted.
pub(crate) fn measure_netdata(args: &Args, n: usize) -> anyhow::Result<(f64, usize)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let d = dir.path().display();
    let off = [
        "proc",
        "diskspace",
        "tc",
        "idlejitter",
        "timex",
        "apps",
        "python.d",
        "go.d",
        "charts.d",
        "node.d",
        "ebpf",
        "perf",
        "slabinfo",
        "statsd",
        "checks",
        "fping",
        "ioping",
        "nfacct",
        "freeipmi",
        "cups",
        "netdata monitoring",
        "profile",
        "debugfs",
        "logs-management",
        "systemd-journal",
    ];
    let mut plugins = String::from("[plugins]\n  enable running new plugins = no\n  cgroups = yes\n");
    for p in off {
        let _ = writeln!(plugins, "  {p} = no");
    }
    // 1.37's key is `max cgroups to allow` (default 1,000: the node's other cgroups leave
    // fewer for the bench's at N = 1,000). No renaming: its `cgroup-name.sh` asks a Kubernetes
    // API and docker for every `kubepods` cgroup, one at a time with timeouts, before charting
    // it; with no API on this machine the discovery of 500 cgroups outlasted the warm-up. The
    // cgroups are charted under their path names instead; steady-state reading is the same.
    let conf = format!(
        "[global]\n  run as user = root\n  update every = 1\n  memory mode = ram\n  history = 60\n  \
         cache directory = {d}/cache\n  lib directory = {d}/lib\n  log directory = {d}/log\n  \
         pid file = {d}/netdata.pid\n  error log = {d}/error.log\n  access log = none\n  debug log = none\n\
         [web]\n  bind to = 127.0.0.1:{port}\n\
         [registry]\n  enabled = no\n[health]\n  enabled = no\n[ml]\n  enabled = no\n[statsd]\n  enabled = no\n\
         [cloud]\n  conversation log = no\n{plugins}\
         [plugin:cgroups]\n  update every = 1\n  use unified cgroups = no\n  check for new cgroups every = 10\n  \
         max cgroups to allow = 5000\n  max cgroups depth to monitor = 0\n  \
         run script to rename cgroups matching = !*\n"
    );
    for sub in ["cache", "lib", "log"] {
        fs::create_dir_all(dir.path().join(sub))?;
    }
    let conf_path = dir.path().join("netdata.conf");
    fs::write(&conf_path, conf)?;
    let child = Command::new("netdata")
        .arg("-c")
        .arg(&conf_path)
        .arg("-D")
        .stdout(Stdio::null())
        .stderr(File::create(args.out.join(format!("netdata-{n}{}.log", args.label)))?)
        .spawn()
        .context("start netdata (apt-get install netdata)")?;
    let netdata = Killed(child);
    let pid = netdata.0.id();
    // Warm up until the number of charted cgroups stops growing (its discovery runs a name
    // script per cgroup), at most 180 s.
    let charted = || -> usize {
        let Some(body) = http_get(port, "/api/v1/charts") else { return 0 };
        let mut names = std::collections::BTreeSet::new();
        // Netdata pretty-prints: `"id": "cgroup_<name>.<chart>"`.
        let compact: String = body.split_whitespace().collect();
        for part in compact.split("\"id\":\"cgroup_").skip(1) {
            if let Some(name) = part.split('.').next() {
                names.insert(name.to_owned());
            }
        }
        names.len()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let c = charted();
        if c != last.0 {
            last = (c, Instant::now());
        } else if c > 0 && last.1.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    let cgroups = charted();
    if cgroups == 0 {
        bail!("netdata charted no cgroups in 180 s");
    }
    let is_cg = |k: &str| k == "PLUGIN[cgroups]";
    let c0: f64 = thread_cpu(pid, is_cg).values().sum();
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.sweeps));
    let c1: f64 = thread_cpu(pid, is_cg).values().sum();
    let samples = w0.elapsed().as_secs_f64().round() * cgroups as f64;
    drop(netdata);
    Ok(((c1 - c0) * 1e6 / samples, cgroups))
}

/// `podman stats --interval 1` streaming over `args.podman` containers it started: CPU of that
/// process per container-sample.
pub(crate) fn measure_podman(args: &Args) -> anyhow::Result<f64> {
    struct Containers(Vec<String>);
    impl Drop for Containers {
        fn drop(&mut self) {
            if !self.0.is_empty() {
                let _ = Command::new("podman")
                    .args(["rm", "-f", "-t", "0"])
                    .args(&self.0)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let mut names = Containers(Vec::new());
    for i in 0..args.podman {
        let name = format!("bn-{}-{i}", std::process::id());
        let out = Command::new("podman")
            .args(["run", "-d", "--name", &name, "localhost/bb:1", "sleep", "1000000"])
            .output()?;
        if !out.status.success() {
            bail!("podman run: {}", String::from_utf8_lossy(&out.stderr));
        }
        names.0.push(name);
    }
    let child = Command::new("podman")
        .args(["stats", "--interval", "1", "--format", "json"])
        .args(&names.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stats = Killed(child);
    let pid = stats.0.id();
    std::thread::sleep(Duration::from_secs(3));
    let (u0, s0) = process_cpu(pid)?;
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.sweeps));
    let (u1, s1) = process_cpu(pid)?;
    let samples = w0.elapsed().as_secs_f64().round() * args.podman as f64;
    drop(stats);
    Ok(((u1 - u0) + (s1 - s0)) * 1e6 / samples)
}
