//! The real `podometer run` over live cgroups in the Docker layout: started under a low soft
//! open-file limit it raises it to the hard one; when its limit is then lowered under it (soft
//! and hard stay apart only because raising a hard limit needs CAP_SYS_RESOURCE) and containers
//! start, it reads those the limit leaves room for, says once that the others are not read and
//! counts them, and after the limit is raised on the running process (`prlimit --pid`) it reads
//! every container from the next discovery on.
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cgroupfs::TestCgroup;

const CONTAINERS: usize = 24;

/// Ends the agent even when an assertion fails.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Container ids of each sweep written by the file exporter, in order.
fn ids_per_sweep(text: &str) -> Vec<HashSet<String>> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| {
            let mut ids = HashSet::new();
            for rm in v["resourceMetrics"].as_array().into_iter().flatten() {
                for kv in rm["resource"]["attributes"].as_array().into_iter().flatten() {
                    if kv["key"] == "container.id" {
                        if let Some(id) = kv["value"]["stringValue"].as_str() {
                            ids.insert(id.to_owned());
                        }
                    }
                }
            }
            ids
        })
        .collect()
}

fn ours_in(sweep: &HashSet<String>, ours: &[String]) -> usize {
    ours.iter().filter(|id| sweep.contains(*id)).count()
}

#[test]
fn a_low_fd_limit_is_reported_once_counted_and_recovered_from_when_raised() {
    if !support::live_cgroups_available()
        || !support::prerequisite(support::have_command("prlimit"), "prlimit")
    {
        return;
    }
    let tag = support::unique("fdlim").replace('-', "");
    let ids: Vec<String> = (0..CONTAINERS)
        .map(|i| {
            let seed = format!("{tag}{i:04}");
            let hex: String = seed.bytes().map(|b| format!("{b:02x}")).collect();
            format!("{hex:0<64}").chars().take(64).collect()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("agent.log");
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 300ms\nsources:\n  cgroups: {{discovery_interval: 1s}}\nexporters:\n  file: {{path: {}}}\npipelines:\n  main: {{sources: [cgroups], exporters: [file]}}\n",
            out.display()
        ),
    )
    .unwrap();
    // The agent starts with a soft limit of 100 and raises it to the hard limit.
    let child = Command::new("prlimit")
        .arg("--nofile=100:20000")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_podometer"))
        .args(["run", "-c"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut agent = Agent(child);
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read(&log).contains("Raised the open-file limit") {
        assert!(Instant::now() < deadline, "no 'Raised the open-file limit' in 20 s; log:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(read(&log).contains("from=100 to=20000"), "log:\n{}", read(&log));

    // Then its soft limit is lowered under it (only the soft one: raising a hard limit again needs
    // CAP_SYS_RESOURCE, which root lacks on the test machines) and containers start. 48
    // descriptors are kept in reserve and 15 go to each cgroup here: what the agent holds now
    // (its own, and any pod cgroups the host already has) plus 100 leaves room for a handful of
    // cgroups, far fewer than this test's 24.
    while !read(&log).contains("First sweep done") {
        assert!(Instant::now() < deadline, "no first sweep in 20 s; log:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let limit = held + 100;
    support::run(Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--nofile={limit}:20000")));
    let mut groups = Vec::new();
    for id in &ids {
        let mut cg = TestCgroup::create(Path::new("/sys/fs/cgroup"), &format!("docker/{id}"));
        cg.spawn("exec sleep 120");
        groups.push(cg);
    }

    let created = ids_per_sweep(&std::fs::read_to_string(&out).unwrap_or_default()).len();

    // Three discoveries (1 s apart) under the low limit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sweeps = ids_per_sweep(&std::fs::read_to_string(&out).unwrap_or_default());
        if sweeps.len() >= created + 12 {
            let last = sweeps.last().unwrap();
            let read = ours_in(last, &ids);
            assert!(read < CONTAINERS, "all {CONTAINERS} containers read under a limit of {limit}");
            break;
        }
        assert!(Instant::now() < deadline, "fewer than 12 sweeps in 30 s; log:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = read(&log);
    let warnings = text.lines().filter(|l| l.contains("Out of file descriptors")).count();
    assert_eq!(warnings, 1, "the shortage is said once, not per discovery; log:\n{text}");
    assert!(text.contains("unread="), "the warning says how many are not read; log:\n{text}");

    // Raise the running agent's limit: every container is read from the next discovery on.
    support::run(Command::new("prlimit").arg(format!("--pid={pid}")).arg("--nofile=8192:20000"));
    let raised = ids_per_sweep(&std::fs::read_to_string(&out).unwrap_or_default()).len();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sweeps = ids_per_sweep(&std::fs::read_to_string(&out).unwrap_or_default());
        if sweeps.iter().skip(raised).any(|s| ours_in(s, &ids) == CONTAINERS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every container read 15 s after raising the limit; last sweep had {}; log:\n{}",
            sweeps.last().map(|s| ours_in(s, &ids)).unwrap_or(0),
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill with the pid we spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = agent.0.wait();
    let text = read(&log);
    let recovered = text
        .lines()
        .find(|l| l.contains("has its files open again"))
        .unwrap_or_else(|| panic!("no recovery line; log:\n{text}"));
    // The counter: every discovery under the limit counted the cgroups it left out.
    let total: u64 = recovered
        .split_whitespace()
        .find_map(|w| w.strip_prefix("unread_total="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no unread_total in {recovered}"));
    assert!(total >= 3 * (CONTAINERS as u64 / 2), "counted {total} unread over 3+ discoveries");
    assert_eq!(text.lines().filter(|l| l.contains("Out of file descriptors")).count(), 1, "log:\n{text}");
    drop(groups);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
