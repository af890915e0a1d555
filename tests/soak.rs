//! Churn soak: pods are created and removed on a synthetic kubelet node (real cgroups in every
//! hierarchy, a network namespace with a veth and a live process per container, see
//! `tests/support/churn.rs`) while the real agent binary sweeps it at 1 s with the cgroups and
//! netns sources into the file exporter. It asserts that
//! - the agent's resident memory and open descriptors after the churn are back where they were
//!   before it, with as many pods alive (tolerances below);
//! - no series of a removed container or pod is written by a sweep that started more than one
//!   interval after the container's last cgroup directory was gone;
//! - nearly every container was seen (the churn really went through the agent);
//! - the log has no warning per sweep, and the agent exits 0.
//!
//! The short form (150 containers, about 40 s) runs with `cargo test`; `scripts/soak.sh` runs
//! the long form (`PODOMETER_SOAK_CONTAINERS=1000`). Root only: it makes cgroups and
//! namespaces. The agent sees only this test's node (bind mounts in its own mount namespace),
//! so other tests on the host change none of the numbers.
mod support;

use std::collections::{HashMap, VecDeque};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::churn::{rss_kib_and_fds, AgentRoot, ChurnNode, ChurnPod};

const INTERVAL: Duration = Duration::from_secs(1);
const CONTAINERS_PER_POD: usize = 3;

/// Kills the agent if the test ends before it was stopped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident KiB and descriptors, sampled `n` times a quarter second apart: the largest RSS and
/// the smallest descriptor count (a sweep holds a few more while it reads).
fn sample(pid: u32, n: usize) -> (u64, usize, usize) {
    let (mut rss, mut fds_min, mut fds_max) = (0, usize::MAX, 0);
    for _ in 0..n {
        let (r, f) = rss_kib_and_fds(pid);
        rss = rss.max(r);
        fds_min = fds_min.min(f);
        fds_max = fds_max.max(f);
        std::thread::sleep(Duration::from_millis(250));
    }
    (rss, fds_min, fds_max)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Per resource key (`container.id` or `k8s.pod.uid` value), the sweep times that reported it;
/// and the number of sweeps written.
fn seen_by_sweep(text: &str) -> (HashMap<String, Vec<u64>>, usize) {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut sweeps = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is one JSON request");
        sweeps += 1;
        for rm in v["resourceMetrics"].as_array().into_iter().flatten() {
            let key = rm["resource"]["attributes"].as_array().into_iter().flatten().find_map(|kv| {
                (kv["key"] == "container.id" || kv["key"] == "k8s.pod.uid")
                    .then(|| kv["value"]["stringValue"].as_str().unwrap_or_default().to_owned())
            });
            let Some(key) = key else { continue };
            let metric = &rm["scopeMetrics"][0]["metrics"][0];
            let points = if metric["sum"].is_object() { &metric["sum"] } else { &metric["gauge"] };
            if let Some(t) = points["dataPoints"][0]["timeUnixNano"].as_str().and_then(|t| t.parse().ok()) {
                seen.entry(key).or_default().push(t);
            }
        }
    }
    (seen, sweeps)
}

/// The node, its live pods, and when each container and pod was made and removed.
struct Churn {
    /// Before `node`: fields drop in order, and the node's directories go once its pods are gone.
    pods: VecDeque<ChurnPod>,
    node: ChurnNode,
    /// By container id and pod UID: when the last cgroup directory was gone.
    removed_at: HashMap<String, SystemTime>,
    lifetimes: HashMap<String, Duration>,
    created_at: HashMap<String, Instant>,
    created: usize,
    pid: u32,
    per_second: usize,
}

impl Churn {
    fn add(&mut self) {
        let pod = self.node.add_pod(CONTAINERS_PER_POD);
        for key in pod.ids.iter().chain([&pod.uid]) {
            self.created_at.insert(key.clone(), Instant::now());
        }
        self.created += pod.ids.len();
        self.pods.push_back(pod);
    }

    fn remove_oldest(&mut self) {
        let mut pod = self.pods.pop_front().unwrap();
        let gone = pod.remove();
        for key in pod.ids.iter().chain([&pod.uid]) {
            self.removed_at.insert(key.clone(), gone);
            self.lifetimes.insert(key.clone(), self.created_at[key].elapsed());
        }
    }

    /// Replaces `n` pods, oldest first, at `per_second`; returns the RSS and descriptor peaks.
    fn churn(&mut self, n: usize) -> (u64, usize) {
        let step = Duration::from_secs(1) / self.per_second as u32;
        let (mut rss_peak, mut fds_peak) = (0, 0);
        for _ in 0..n {
            let next = Instant::now() + step;
            self.remove_oldest();
            self.add();
            let (r, f) = rss_kib_and_fds(self.pid);
            (rss_peak, fds_peak) = (rss_peak.max(r), fds_peak.max(f));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (rss_peak, fds_peak)
    }
}

#[test]
fn churned_containers_leave_no_memory_descriptors_or_series_behind() {
    if !(support::live_cgroups_available() && support::netns::netns_available()) {
        return;
    }
    let total: usize =
        std::env::var("PODOMETER_SOAK_CONTAINERS").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let long = total >= 600;
    let pods_total = total.div_ceil(CONTAINERS_PER_POD);
    // Pods alive at any moment, and pods replaced per second: a pod lives live/rate seconds,
    // several sweeps, so each is seen.
    let live = if long { 30 } else { 10 };
    let per_second = if long { 3 } else { 2 };
    assert!(pods_total >= 3 * live, "PODOMETER_SOAK_CONTAINERS={total} is too few for {live} live pods");

    let node = ChurnNode::create();
    let root = AgentRoot::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("agent.log");
    let config = dir.path().join("soak.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: {}s\nshutdown_timeout: 2s\nsources:\n  cgroups: {{root: {}, discovery_interval: 0s}}\n  netns: {{}}\n\
             exporters:\n  file: {{path: {}}}\n\
             pipelines:\n  node: {{sources: [cgroups, netns], exporters: [file]}}\n",
            INTERVAL.as_secs(),
            root.path().display(),
            out.display()
        ),
    )
    .unwrap();
    let mut cmd = root.command(std::path::Path::new(env!("CARGO_BIN_EXE_podometer")), &["run", "-c"]);
    cmd.arg(&config).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let agent = Agent(cmd.spawn().expect("the agent starts"));
    let pid = agent.0.id();

    let mut state = Churn {
        pods: VecDeque::new(),
        node,
        removed_at: HashMap::new(),
        lifetimes: HashMap::new(),
        created_at: HashMap::new(),
        created: 0,
        pid,
        per_second,
    };
    let settle = INTERVAL * 4;
    std::thread::sleep(settle);
    let (rss_empty, fds_empty, _) = sample(pid, 4);
    for _ in 0..live {
        state.add();
    }
    std::thread::sleep(settle);
    // One full replacement first: what the agent allocates once (buffers sized to the node,
    // maps grown to the live count plus the pods removed but not yet noticed) is in the
    // baseline; what it leaks per container is not.
    state.churn(live);
    std::thread::sleep(settle);
    let (rss_base, fds_base, fds_base_max) = sample(pid, 8);
    let churned_before = state.created;
    let rest = pods_total - 2 * live;
    let started = Instant::now();
    let (rss_peak, fds_peak) = state.churn(rest);
    let churn_time = started.elapsed();
    let churned_after_baseline = state.created - churned_before;
    std::thread::sleep(settle);
    let (rss_after, fds_after, fds_after_max) = sample(pid, 8);
    while !state.pods.is_empty() {
        state.remove_oldest();
    }
    let Churn { removed_at, lifetimes, created, .. } = state;
    std::thread::sleep(settle);
    let (rss_drained, fds_drained, _) = sample(pid, 4);

    // SAFETY: kill with the pid of a child this test spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut agent = agent;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log).unwrap();
    let (seen, sweeps) = seen_by_sweep(&std::fs::read_to_string(&out).unwrap());
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains("ERROR")).collect();

    // Series: the latest sweep that reported each removed container or pod, against the moment
    // its cgroups were gone.
    let mut overshoot_max = i64::MIN;
    let mut outlived = Vec::new();
    let mut seen_containers = 0;
    let mut unseen_long_lived = Vec::new();
    for (key, gone) in &removed_at {
        let last = seen.get(key).and_then(|t| t.iter().max().copied());
        let is_container = key.len() == 64;
        match last {
            Some(last) => {
                seen_containers += usize::from(is_container);
                let overshoot = last as i64 - nanos(*gone) as i64;
                overshoot_max = overshoot_max.max(overshoot);
                if overshoot > INTERVAL.as_nanos() as i64 {
                    outlived
                        .push(format!("{key}: {:.3} s after its cgroups were gone", overshoot as f64 / 1e9));
                }
            }
            // Alive for three sweeps: at least one must have seen it.
            None if is_container && lifetimes[key] >= INTERVAL * 3 => unseen_long_lived.push(key.clone()),
            None => {}
        }
    }
    eprintln!(
        "soak: {created} containers in {} pods ({churned_after_baseline} after the baseline, churned in {churn_time:.1?}), \
         {live} pods alive, {sweeps} sweeps, {seen_containers} containers seen; \
         RSS KiB empty {rss_empty}, baseline {rss_base}, peak {rss_peak}, after {rss_after}, drained {rss_drained}; \
         fds empty {fds_empty}, baseline {fds_base}..{fds_base_max}, peak {fds_peak}, after {fds_after}..{fds_after_max}, drained {fds_drained}; \
         latest series after removal {:.3} s; {} warning lines",
        created.div_ceil(CONTAINERS_PER_POD),
        overshoot_max as f64 / 1e9,
        warnings.len()
    );
    // Cgroup files vanish under the sweep at every removal: counted as vanished, never as a
    // read error.
    let counters: HashMap<&str, u64> = log
        .lines()
        .rev()
        .find(|l| l.contains("Agent counters."))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.trim_start_matches("stats=").trim_matches('"').split_once('=')?;
                    Some((k, v.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "soak: containers_vanished {:?}, source_errors {:?}",
        counters.get("containers_vanished"),
        counters.get("source_errors")
    );
    assert_eq!(
        counters.get("source_errors"),
        Some(&0),
        "removed containers counted as read errors: {counters:?}"
    );
    for w in &warnings {
        eprintln!("soak: agent log: {w}");
    }
    assert!(status.success(), "the agent exits 0 after the soak: {status:?}\n{log}");
    assert!(created >= total, "only {created} of {total} containers were created");
    assert!(outlived.is_empty(), "series outlived their container by more than one sweep:\n{outlived:#?}");
    assert!(
        unseen_long_lived.is_empty(),
        "containers alive for 3 sweeps never reported: {unseen_long_lived:?}"
    );
    assert!(seen_containers * 10 >= created * 9, "only {seen_containers} of {created} containers were seen");
    // Descriptors: the agent keeps one per cgroup file of a live container and per namespace;
    // the same number of pods alive means the same descriptors. The smallest count of the
    // samples (between sweeps) must equal the baseline's, and with no pod left it falls back
    // to where it was before any.
    assert_eq!(fds_after, fds_base, "open descriptors after the churn vs before it");
    assert_eq!(fds_drained, fds_empty, "open descriptors with every pod gone vs before any");
    // Memory: what one container costs (the live pods' RSS over the empty node's, per
    // container) times the containers churned after the baseline is what a leak of the
    // per-container state would add. Allow a quarter of one live set's worth (allocator
    // slack, maps rehashed at a different moment) and 1 MiB, far below that.
    let per_container = rss_base.saturating_sub(rss_empty) as f64 / (live * CONTAINERS_PER_POD) as f64;
    let tolerance = 1024 + (per_container * (live * CONTAINERS_PER_POD) as f64 / 4.0) as u64;
    eprintln!(
        "soak: {per_container:.1} KiB per live container; a leak of it would add {:.0} KiB; tolerance {tolerance} KiB",
        per_container * churned_after_baseline as f64
    );
    assert!(
        rss_after <= rss_base + tolerance,
        "RSS grew from {rss_base} KiB to {rss_after} KiB over {churned_after_baseline} churned containers \
         (tolerance {tolerance} KiB)"
    );
    // Warnings: none per sweep (a removed container is normal node life, not a warning).
    assert!(
        warnings.len() <= 2,
        "{} warning lines over {sweeps} sweeps:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
}
