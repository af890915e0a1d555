//! On the real node of `scripts/kube-node.sh` (a kubelet over containerd): what the kubelet
//! spends when it is asked for stats, beside the agent reading the same pods' cgroups.
//!
//! The node is filled with as many one-container pods as its `maxPods` leaves, then, one window
//! after another, each `--kube-seconds` long:
//! - the kubelet idle (nothing scrapes it; its own cAdvisor housekeeping still runs);
//! - the Collector's `kubeletstats` receiver at `collection_interval: 1s` (the kubelet's
//!   `/stats/summary`), exporting OTLP gRPC to the bench's receiver, which counts the pods
//!   delivered: the kubelet's CPU and the Collector's;
//! - `/metrics/cadvisor` scraped once a second by one `curl` that keeps its connection (as a
//!   Prometheus scraper does): the kubelet's CPU;
//! - the agent (`podometer run` at 1 s with `bench/kube-node.yaml`: the built-in config plus
//!   this node's cgroup root) over the pods' cgroups: its CPU per pod-sweep, and the kubelet's
//!   (which the agent does not ask anything);
//! - the kubelet idle again. Idle is the mean of the two idle windows;
//! - the kubelet idle under its own CPU profiler (`/debug/pprof/profile`, Go's 100 Hz sampler):
//!   the share of its samples whose stack is in cAdvisor's code
//!   (`github.com/google/cadvisor/`), which is what its housekeeping of every cgroup costs it
//!   with nobody asking (the rest is pod sync, status, leases, the Go runtime).
//!
//! The kubelet's CPU is utime + stime of its process (`/proc/<pid>/stat`); the scrapes
//! authenticate with the client certificate the API server uses for the kubelet (group
//! system:masters, so the kubelet's webhook authorization allows them and caches the answer).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::engines::{measure_collector, CollectorResult, Samples};
use super::{measure_agent, process_cpu, AgentResult, Args, Killed, Receiver};

fn cache_dir() -> PathBuf {
    std::env::var_os("KUBE_CACHE").map_or_else(|| PathBuf::from("/var/tmp/podometer-kube"), PathBuf::from)
}

/// The node, up while this lives: the lock every live test on the node holds, `down` on drop.
struct Node {
    env: HashMap<String, String>,
    _lock: File,
}

impl Node {
    fn up() -> anyhow::Result<Node> {
        fs::create_dir_all(cache_dir())?;
        let lock = File::create(cache_dir().join("test.lock"))?;
        eprintln!("bench_node: kube: waiting for the node's lock");
        // SAFETY: flock on a descriptor this function owns; blocks until other holders end.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock {}", cache_dir().join("test.lock").display());
        }
        let mut node = Node { env: HashMap::new(), _lock: lock };
        let out = Command::new("bash").args(["scripts/kube-node.sh", "up"]).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            bail!(
                "scripts/kube-node.sh up failed: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                node.env.insert(k.to_owned(), v.to_owned());
            }
        }
        if !node.env.contains_key("KUBECONFIG") {
            bail!("scripts/kube-node.sh up printed no KUBECONFIG");
        }
        Ok(node)
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let kubeconfig = Path::new(&self.env["KUBECONFIG"]);
        let cache = kubeconfig.parent().context("kubeconfig dir")?.join("kubectl-cache");
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .arg("--cache-dir")
            .arg(cache)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        match Command::new("bash").args(["scripts/kube-node.sh", "down"]).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!("bench_node: kube-node.sh down failed: {}", String::from_utf8_lossy(&o.stderr))
            }
            Err(e) => eprintln!("bench_node: kube-node.sh down: {e}"),
        }
    }
}

/// What the real node measured; each part says why when it could not run.
pub struct KubeResult {
    pub pods: usize,
    pub max_pods: usize,
    pub seconds: u64,
    /// The kubelet's CPU, s per s, idle (mean of the two idle windows).
    pub kubelet_idle: f64,
    /// The Collector's kubeletstats receiver (its `other_per_sec`: the kubelet's CPU).
    pub kubeletstats: Result<CollectorResult, String>,
    /// `/metrics/cadvisor` once a second: the kubelet's CPU (s per s) and the pods one scrape
    /// covered.
    pub cadvisor: Result<(f64, usize), String>,
    /// The agent over the pods' containers, and the kubelet's CPU (s per s) meanwhile.
    pub agent: Result<(AgentResult, f64), String>,
    /// The idle kubelet's CPU profile: where its collection time goes.
    pub profile: Result<KubeletProfile, String>,
}

/// The idle kubelet under Go's CPU profiler for one window.
pub struct KubeletProfile {
    /// The kubelet's CPU over the window, s per s (`/proc`, profiler included).
    pub cpu: f64,
    /// CPU the profile sampled in all, s.
    pub sampled: f64,
    /// Of that, in stacks with a cAdvisor frame (housekeeping of every cgroup it watches), s.
    pub cadvisor: f64,
    /// The cgroups the kubelet's cAdvisor reports (`id` labels of one `/metrics/cadvisor`).
    pub cgroups: usize,
}

impl KubeletProfile {
    /// The kubelet's CPU in cAdvisor's code, s per s: its share of the samples times its CPU.
    pub fn cadvisor_cpu(&self) -> f64 {
        if self.sampled > 0.0 {
            self.cpu * self.cadvisor / self.sampled
        } else {
            f64::NAN
        }
    }
}

impl KubeResult {
    /// What the kubelet spent above idle, per pod and second (µs).
    pub fn kubelet_added(&self, busy: f64) -> f64 {
        (busy - self.kubelet_idle) * 1e6 / self.pods as f64
    }
}

fn kubelet_cpu(pid: u32) -> f64 {
    process_cpu(pid).map(|(u, s)| u + s).unwrap_or(0.0)
}

fn pod_manifest(count: usize) -> String {
    let mut items = Vec::new();
    for i in 0..count {
        items.push(format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"bench-node-{i}","namespace":"default","labels":{{"app":"bench-node"}}}},"spec":{{"automountServiceAccountToken":false,"terminationGracePeriodSeconds":0,"containers":[{{"name":"sleep","image":"podometer.test/busybox:1","imagePullPolicy":"Never","command":["sleep","1000000000"]}}]}}}}"#
        ));
    }
    format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, items.join(","))
}

pub fn measure_kube(args: &Args, sink: &Receiver) -> anyhow::Result<KubeResult> {
    let started = Instant::now();
    let node = Node::up()?;
    let run = cache_dir().join("run");
    let max_pods: usize = fs::read_to_string(run.join("kubelet-config.yaml"))?
        .lines()
        .find_map(|l| l.strip_prefix("maxPods:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(110);
    let existing = node.kubectl(&["get", "pods", "-A", "-o", "name"], None)?.lines().count();
    let count = max_pods.saturating_sub(existing);
    if count == 0 {
        bail!("the node has no room for pods ({existing} of {max_pods})");
    }
    node.kubectl(&["apply", "-f", "-"], Some(&pod_manifest(count)))?;
    node.kubectl(&["wait", "--for=condition=Ready", "pod", "-l", "app=bench-node", "--timeout=900s"], None)?;
    let listing = node.kubectl(
        &[
            "get",
            "pods",
            "-l",
            "app=bench-node",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.uid} {.status.containerStatuses[0].containerID}{"\n"}{end}"#,
        ],
        None,
    )?;
    let mut uids = Vec::new();
    let mut ids = Vec::new();
    for line in listing.lines() {
        let mut f = line.split_whitespace();
        if let (Some(uid), Some(id)) = (f.next(), f.next()) {
            uids.push(uid.to_owned());
            ids.push(id.rsplit("://").next().unwrap_or(id).to_owned());
        }
    }
    if uids.len() != count {
        bail!("{} of {count} pods listed with a running container", uids.len());
    }
    eprintln!("bench_node: kube: {count} pods Ready after {:.1?}", started.elapsed());
    let node_ip = node.kubectl(
        &["get", "nodes", "-o", r#"jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}"#],
        None,
    )?;
    let endpoint = format!("{}:10250", node_ip.trim());
    let pki = run.join("pki");
    let (ca, cert, key) = (
        pki.join("ca.crt"),
        pki.join("apiserver-kubelet-client.crt"),
        pki.join("apiserver-kubelet-client.key"),
    );
    let kubelet_pid: u32 = fs::read_to_string(run.join("kubelet.pid"))?
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("parse kubelet.pid")?;
    let seconds = args.kube_seconds;
    let idle_window = || -> f64 {
        let k0 = kubelet_cpu(kubelet_pid);
        let w0 = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        (kubelet_cpu(kubelet_pid) - k0) / w0.elapsed().as_secs_f64()
    };
    // Settle: the pods' first housekeeping passes, the API server's writes of their status.
    std::thread::sleep(Duration::from_secs(10));
    let idle_a = idle_window();
    eprintln!("bench_node: kube: kubelet idle {:.2} ms/s", idle_a * 1e3);

    let usage = || kubelet_cpu(kubelet_pid);
    let kubeletstats = match &args.otelcol {
        Err(why) => Err(why.clone()),
        Ok(_) => {
            let yaml = format!(
                "  kubelet_stats:\n    collection_interval: 1s\n    auth_type: tls\n    endpoint: {endpoint}\n    \
                 ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
                ca.display(),
                cert.display(),
                key.display()
            );
            measure_collector(args, sink, "kubelet_stats", &yaml, Samples::Pods(&uids), seconds, Some(&usage))
                .map_err(|e| format!("{e:#}"))
        }
    };
    match &kubeletstats {
        Ok(c) => eprintln!(
            "bench_node: kube: kubeletstats {:.1} µs per pod-sample ({:.1} pods per s), kubelet {:.2} ms/s",
            c.per_sample,
            c.delivered,
            c.other_per_sec.unwrap_or(0.0) * 1e3
        ),
        Err(e) => eprintln!("bench_node: kube: kubeletstats not run: {e}"),
    }

    let cadvisor = scrape_cadvisor(args, &endpoint, [&ca, &cert, &key], kubelet_pid, count, seconds)
        .map_err(|e| format!("{e:#}"));
    match &cadvisor {
        Ok((busy, pods)) => {
            eprintln!("bench_node: kube: /metrics/cadvisor ({pods} pods) kubelet {:.2} ms/s", busy * 1e3)
        }
        Err(e) => eprintln!("bench_node: kube: /metrics/cadvisor not run: {e}"),
    }

    let k0 = kubelet_cpu(kubelet_pid);
    let w0 = Instant::now();
    // The built-in config with this node's kubelet cgroup root and containerd state added: the
    // built-in one finds no pod below `cgroupRoot: /podometer-kube`.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/kube-node.yaml");
    let agent = measure_agent(args, &ids, "kube-", sink, Some(&config), None)
        .map(|(a, _)| (a, (kubelet_cpu(kubelet_pid) - k0) / w0.elapsed().as_secs_f64()))
        .map_err(|e| format!("{e:#}"));
    let idle_b = idle_window();
    eprintln!("bench_node: kube: kubelet idle again {:.2} ms/s", idle_b * 1e3);
    let profile = profile_kubelet(args, &endpoint, [&ca, &cert, &key], kubelet_pid, seconds)
        .map_err(|e| format!("{e:#}"));
    match &profile {
        Ok(p) => eprintln!(
            "bench_node: kube: profiled kubelet {:.2} ms/s, {:.1} % of its samples in cAdvisor ({} cgroups)",
            p.cpu * 1e3,
            100.0 * p.cadvisor / p.sampled,
            p.cgroups
        ),
        Err(e) => eprintln!("bench_node: kube: kubelet profile not taken: {e}"),
    }
    drop(node);
    Ok(KubeResult {
        pods: count,
        max_pods,
        seconds,
        kubelet_idle: (idle_a + idle_b) / 2.0,
        kubeletstats,
        cadvisor,
        agent,
        profile,
    })
}

/// `curl` with the kubelet client certificate.
fn kubelet_curl([ca, cert, key]: [&Path; 3], extra: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

/// The idle kubelet's CPU profile over `seconds` (its `/debug/pprof/profile`, which the kubelet
/// serves with `enableProfilingHandler`, on by default), read with `go tool pprof -traces`:
/// Go profiles carry their function names, so the stripped binary is not needed.
fn profile_kubelet(
    args: &Args,
    endpoint: &str,
    tls: [&Path; 3],
    kubelet_pid: u32,
    seconds: u64,
) -> anyhow::Result<KubeletProfile> {
    let metrics =
        kubelet_curl(tls, &[&format!("https://{endpoint}/metrics/cadvisor")]).output().context("curl")?;
    if !metrics.status.success() {
        bail!("curl /metrics/cadvisor: {}", String::from_utf8_lossy(&metrics.stderr).trim());
    }
    let cgroups = String::from_utf8_lossy(&metrics.stdout)
        .lines()
        .filter(|l| l.starts_with("container_cpu_usage_seconds_total{"))
        .filter_map(|l| l.split("id=\"").nth(1).and_then(|r| r.split('"').next()))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let file = args.out.join(format!("kubelet-cpu{}.pprof", args.label));
    let url = format!("https://{endpoint}/debug/pprof/profile?seconds={seconds}");
    let k0 = kubelet_cpu(kubelet_pid);
    let w0 = Instant::now();
    let out = kubelet_curl(tls, &["--max-time", &(seconds + 30).to_string(), "-o"])
        .arg(&file)
        .arg(&url)
        .output()
        .context("curl")?;
    let cpu = (kubelet_cpu(kubelet_pid) - k0) / w0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let traces = Command::new("go")
        .args(["tool", "pprof", "-traces"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .context("go tool pprof")?;
    if !traces.status.success() {
        bail!("go tool pprof -traces: {}", String::from_utf8_lossy(&traces.stderr).trim());
    }
    let (sampled, cadvisor) = cadvisor_share(&String::from_utf8_lossy(&traces.stdout))?;
    Ok(KubeletProfile { cpu, sampled, cadvisor, cgroups })
}

/// From `go tool pprof -traces`: (all sampled CPU, that in stacks with a cAdvisor frame), s.
/// Each trace is a block after a `-----------+---` line: its labels, if any, then a line with the
/// sample's value (`10ms`, `1.20s`) and the leaf function, then its callers one a line.
fn cadvisor_share(traces: &str) -> anyhow::Result<(f64, f64)> {
    let (mut all, mut cadvisor) = (0.0, 0.0);
    let mut value: Option<f64> = None;
    let mut in_cadvisor = false;
    let mut flush = |value: Option<f64>, in_cadvisor: bool| {
        if let Some(v) = value {
            all += v;
            if in_cadvisor {
                cadvisor += v;
            }
        }
    };
    for line in traces.lines() {
        if line.starts_with("-----------+") {
            flush(value.take(), in_cadvisor);
            in_cadvisor = false;
            value = Some(f64::NAN); // the next line holds it
            continue;
        }
        let Some(v) = value else { continue };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let frame = if v.is_nan() {
            // A sample's labels (`%10s:  values`) come before its value line.
            if t.split_whitespace().next().is_some_and(|w| w.ends_with(':')) {
                continue;
            }
            let (amount, frame) = t.split_once(char::is_whitespace).context("trace line")?;
            value = Some(duration_seconds(amount).with_context(|| format!("sample value {amount:?}"))?);
            frame.trim()
        } else {
            t
        };
        in_cadvisor |= frame.contains("github.com/google/cadvisor/");
    }
    flush(value.filter(|v| !v.is_nan()), in_cadvisor);
    if all == 0.0 {
        bail!("the profile has no samples");
    }
    Ok((all, cadvisor))
}

/// `10ms`, `1.20s`, `500us`, `3µs`, `2ns` in seconds.
fn duration_seconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "min" => 60.0,
        _ => return None,
    };
    Some(n * scale)
}

/// `/metrics/cadvisor` once a second over one kept connection (`curl --rate 1/s` over a list
/// of the same URL), after one scrape that must cover every pod.
fn scrape_cadvisor(
    args: &Args,
    endpoint: &str,
    tls: [&Path; 3],
    kubelet_pid: u32,
    pods: usize,
    seconds: u64,
) -> anyhow::Result<(f64, usize)> {
    let url = format!("https://{endpoint}/metrics/cadvisor");
    let curl = |extra: &[&str]| kubelet_curl(tls, extra);
    let out = curl(&[&url]).output().context("curl")?;
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let body = String::from_utf8_lossy(&out.stdout);
    let covered: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| l.starts_with("container_cpu_usage_seconds_total{"))
        .filter_map(|l| l.split("pod=\"bench-node-").nth(1).and_then(|r| r.split('"').next()))
        .collect();
    if covered.len() * 100 < pods * 98 {
        bail!("one scrape covered {} of {pods} pods", covered.len());
    }
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("urls");
    let mut text = String::new();
    for _ in 0..seconds + 6 {
        text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    fs::write(&list, text)?;
    let child = curl(&["--rate", "1/s", "-K"])
        .arg(&list)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(args.out.join(format!("curl-cadvisor{}.log", args.label)))?)
        .spawn()
        .context("curl")?;
    let scraper = Killed(child);
    std::thread::sleep(Duration::from_secs(3));
    let k0 = kubelet_cpu(kubelet_pid);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let busy = (kubelet_cpu(kubelet_pid) - k0) / w0.elapsed().as_secs_f64();
    drop(scraper);
    Ok((busy, covered.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of pprof's `-traces` report (`internal/report`: a separator before each
    /// sample, labels as `%10s:  %s`, the value only on the leaf's line, a closing separator).
    const TRACES: &str = "File: kubelet
Type: cpu
Duration: 60s, Total samples = 1.25s ( 2.08%)
-----------+-------------------------------------------------------
      20ms   syscall.Syscall6
             github.com/google/cadvisor/container/libcontainer.readUInt64 (inline)
             github.com/google/cadvisor/manager.(*containerData).housekeeping
-----------+-------------------------------------------------------
   thread:  worker
     1.20s   runtime.futex
             runtime.notesleep
-----------+-------------------------------------------------------
      30ms   k8s.io/kubernetes/pkg/kubelet.(*Kubelet).syncLoop
-----------+-------------------------------------------------------
";

    #[test]
    fn the_cadvisor_share_counts_whole_stacks_with_a_cadvisor_frame() {
        let (all, cadvisor) = cadvisor_share(TRACES).unwrap();
        assert!((all - 1.25).abs() < 1e-9, "{all}");
        assert!((cadvisor - 0.02).abs() < 1e-9, "{cadvisor}");
        assert!(cadvisor_share("File: kubelet\n").is_err(), "no samples is an error, not a zero share");
    }

    #[test]
    fn durations_in_every_unit_pprof_prints() {
        assert_eq!(duration_seconds("10ms"), Some(0.01));
        assert_eq!(duration_seconds("1.20s"), Some(1.2));
        assert_eq!(duration_seconds("500us"), Some(0.0005));
        assert_eq!(duration_seconds("10"), None);
        assert_eq!(duration_seconds("ms"), None);
    }
}
