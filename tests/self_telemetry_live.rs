//! Self-telemetry end to end: the agent binary sends its own metrics through the OpenTelemetry
//! SDK to a real rotel, which forwards them to a real VictoriaMetrics. After SIGTERM the agent
//! logs its counters and then flushes the SDK once more, so the last samples VictoriaMetrics
//! holds must equal the numbers in that final log line.
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::cgroupfs::TestCgroup;
use support::receivers::{free_port, rotel_available, victoria_available, Rotel, Series, VictoriaMetrics};

fn counters(log: &str) -> BTreeMap<String, u64> {
    let line = log.lines().rev().find(|l| l.contains("Agent counters.")).expect("final counters line");
    line.split_whitespace()
        .filter_map(|w| w.trim_matches('"').rsplit_once('='))
        .filter_map(|(k, v)| Some((k.rsplit('=').next()?.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Runs the agent for 4 s with its OTLP exporter pointed at `otlp_endpoint` and its
/// self-telemetry at rotel; returns the final counters it logged and the series
/// VictoriaMetrics holds for it once the last self-telemetry export has arrived.
/// `expect`: (metric, label, counter in the log line) that must read back equal; waits until
/// they all do (rotel forwards in batches, so the last export arrives a moment later).
type Expect<'a> = &'a [(&'a str, Option<(&'a str, &'a str)>, &'a str)];

fn run_agent(
    vm: &VictoriaMetrics,
    rotel: &Rotel,
    otlp_endpoint: &str,
    tag: &str,
    expect: Expect,
) -> (BTreeMap<String, u64>, Vec<Series>) {
    // Containers for the agent to measure, so that its sweeps have points to export: the
    // host may have none of its own.
    let _containers: Vec<TestCgroup> = (0..2)
        .map(|n| {
            let id = format!("{:056x}{:08x}", std::process::id(), n + tag.len() * 16);
            let mut cg = TestCgroup::create(Path::new("/sys/fs/cgroup"), &format!("docker/{id}"));
            cg.spawn("exec sleep 60");
            cg
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    let host = format!("{tag}-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            "interval: 500ms\nshutdown_timeout: 1s\nhost_name: {host}\nnode_name: node-{host}\n\
             self_telemetry: {{interval: 1s, endpoint: \"{}\"}}\n\
             sources:\n  cgroups: {{}}\nexporters:\n  otlp: {{endpoint: \"{otlp_endpoint}\"}}\n\
             pipelines:\n  main: {{sources: [cgroups], exporters: [otlp]}}\n",
            rotel.grpc_endpoint(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_podometer"))
        .args(["run", "-c"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=selftest")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "agent exit {status:?}:\n{log}");
    let want = counters(&log);
    assert!(want.contains_key("sweeps"), "{want:?}\n{log}");

    let selector = format!("{{host.name=\"{host}\",service.name=\"podometer\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let series = vm.export(&selector);
        let mismatches: Vec<String> = expect
            .iter()
            .chain([("podometer.sweeps", None, "sweeps")].iter())
            .filter_map(|(metric, label, key)| {
                let got = last(&series, metric, *label);
                (got != Some(want[*key] as f64))
                    .then(|| format!("{metric}{label:?}: {got:?} != {key}={}", want[*key]))
            })
            .collect();
        if mismatches.is_empty() {
            let any = series.iter().find(|s| s.name() == "podometer.sweeps").unwrap();
            assert_eq!(any.labels.get("k8s.node.name"), Some(&format!("node-{host}")));
            assert_eq!(any.labels.get("deployment.environment.name").map(String::as_str), Some("selftest"));
            assert_eq!(
                any.labels.get("service.version").map(String::as_str),
                Some(env!("CARGO_PKG_VERSION"))
            );
            return (want, series);
        }
        assert!(
            Instant::now() < deadline,
            "read back differs from the final counters: {mismatches:?}; names: {:?}\nrotel:\n{}",
            series.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>(),
            rotel.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The latest value of a series by name (and one label).
fn last(series: &[Series], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    series
        .iter()
        .filter(|s| s.name() == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .filter_map(|s| s.timestamps_ms.iter().zip(&s.values).max_by_key(|(t, _)| **t).map(|(t, v)| (*t, *v)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, v)| v)
}

#[test]
fn agent_metrics_read_back_equal_its_own_counters() {
    if !support::live_cgroups_available() || !victoria_available() || !rotel_available() {
        return;
    }
    let vm = VictoriaMetrics::start();
    let rotel = Rotel::start(&vm);
    let expect: Expect = &[
        ("podometer.exporter.batches", Some(("outcome", "sent")), "batches_sent"),
        ("podometer.exporter.batches", Some(("outcome", "retried")), "batches_retried"),
        ("podometer.exporter.queue.size", None, "queue_bytes"),
        ("podometer.containers", None, "last_containers"),
        ("podometer.pods", None, "last_pods"),
        ("podometer.sweep.points", None, "last_points"),
        ("podometer.source.errors", Some(("error.type", "vanished")), "containers_vanished"),
    ];
    let (want, series) = run_agent(&vm, &rotel, &rotel.grpc_endpoint(), "selftest", expect);
    assert!(want["batches_sent"] > 0);
    let cpu = last(&series, "process.cpu.time", Some(("cpu.mode", "user"))).expect("process.cpu.time");
    assert!(cpu > 0.0, "the agent used CPU");
    let rss = last(&series, "process.memory.usage", None).expect("process.memory.usage");
    assert!(rss > (1 << 20) as f64, "rss {rss}");
    let fds = last(&series, "process.unix.file_descriptor.count", None).expect("fd count");
    assert!(fds >= 3.0, "fds {fds}");
    let names: Vec<&str> = series.iter().map(|s| s.name()).collect();
    assert!(names.iter().any(|n| n.starts_with("podometer.sweep.duration")), "histogram: {names:?}");
}

#[test]
fn a_receiver_outage_shows_as_retries_and_queue_bytes() {
    if !support::live_cgroups_available() || !victoria_available() || !rotel_available() {
        return;
    }
    let vm = VictoriaMetrics::start();
    let rotel = Rotel::start(&vm);
    // Nothing listens there: every attempt fails and is retried; batches pile up.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let expect: Expect = &[
        ("podometer.exporter.batches", Some(("outcome", "retried")), "batches_retried"),
        ("podometer.exporter.batches", Some(("outcome", "sent")), "batches_sent"),
        ("podometer.exporter.queue.size", None, "queue_bytes"),
    ];
    let (want, series) = run_agent(&vm, &rotel, &dead, "selfoutage", expect);
    // Retries depend on how far the first attempts got in 4 s on a busy machine; the queue
    // always grows and nothing is sent.
    assert_eq!(want["batches_sent"], 0, "{want:?}");
    // The memory queue is dropped at shutdown, so its bytes show while the agent ran.
    let queued = series
        .iter()
        .filter(|s| s.name() == "podometer.exporter.queue.size")
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    assert!(queued > 0.0, "queue bytes never above 0 during the outage");
}
