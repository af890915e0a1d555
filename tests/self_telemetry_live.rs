//! Self-telemetry end to end: the agent binary sends its own metrics through the OpenTelemetry
//! SDK to a real rotel, which forwards them to a real VictoriaMetrics. After SIGTERM the agent
//! logs its counters and then flushes the SDK once more, so the last samples VictoriaMetrics
//! holds must equal the numbers in that final log line. Exporter metrics carry the exporter's
//! config key (`exporter`); the log line has their totals.
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::cgroupfs::TestCgroup;
use support::receivers::{rotel_available, victoria_available, Rotel, Series, VictoriaMetrics};

fn counters(log: &str) -> BTreeMap<String, u64> {
    let line = log.lines().rev().find(|l| l.contains("Agent counters.")).expect("final counters line");
    line.split_whitespace()
        .filter_map(|w| w.trim_matches('"').rsplit_once('='))
        .filter_map(|(k, v)| Some((k.rsplit('=').next()?.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Runs the agent for 4 s with its OTLP exporters (config key, endpoint, extra settings)
/// and its self-telemetry at rotel; returns the final counters it logged and the series
/// VictoriaMetrics holds for it once the last self-telemetry export has arrived.
/// `expect`: (metric, label, counter in the log line) that must read back equal, summed over
/// the series of all exporters; waits until they all do (rotel forwards in batches, so the
/// last export arrives a moment later).
type Expect<'a> = &'a [(&'a str, Option<(&'a str, &'a str)>, &'a str)];

fn run_agent(
    vm: &VictoriaMetrics,
    rotel: &Rotel,
    exporters: &[(&str, &str, &str)],
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
    let exporter_config: String = exporters
        .iter()
        .map(|(key, endpoint, extra)| format!("  {key}: {{endpoint: \"{endpoint}\"{extra}}}\n"))
        .collect();
    let keys: Vec<&str> = exporters.iter().map(|e| e.0).collect();
    std::fs::write(
        &config,
        format!(
            "interval: 500ms\nshutdown_timeout: 1s\nhost_name: {host}\nnode_name: node-{host}\n\
             self_telemetry: {{interval: 1s, endpoint: \"{}\"}}\n\
             sources:\n  cgroups: {{}}\nexporters:\n{exporter_config}\
             pipelines:\n  main: {{sources: [cgroups], exporters: [{}]}}\n",
            rotel.grpc_endpoint(),
            keys.join(", "),
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
                let got = if metric.starts_with("podometer.exporter.") {
                    sum_last(&series, metric, *label)
                } else {
                    last(&series, metric, *label)
                };
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
            "read back differs from the final counters: {mismatches:?}; names: {:?}\nrotel:\n{}\nagent:\n{log}",
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

/// The sum over all exporters' series of each one's latest value.
fn sum_last(series: &[Series], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let exporters: std::collections::BTreeSet<&String> =
        series.iter().filter(|s| s.name() == name).filter_map(|s| s.labels.get("exporter")).collect();
    if exporters.is_empty() {
        return None;
    }
    exporters.iter().map(|e| of_exporter(series, name, label, e)).sum()
}

/// The latest value of one exporter's series.
fn of_exporter(series: &[Series], name: &str, label: Option<(&str, &str)>, exporter: &str) -> Option<f64> {
    let mine: Vec<Series> = series
        .iter()
        .filter(|s| s.labels.get("exporter").map(String::as_str) == Some(exporter))
        .cloned()
        .collect();
    last(&mine, name, label)
}

/// The largest value an exporter's series had.
fn max_of_exporter(series: &[Series], name: &str, exporter: &str) -> f64 {
    series
        .iter()
        .filter(|s| s.name() == name && s.labels.get("exporter").map(String::as_str) == Some(exporter))
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max)
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
        ("podometer.metadata.errors", None, "metadata_errors"),
        ("podometer.metadata.misses", None, "metadata_misses"),
        ("podometer.discovery.fd_exhausted", None, "fd_exhausted"),
    ];
    let (want, series) = run_agent(&vm, &rotel, &[("otlp", &rotel.grpc_endpoint(), "")], "selftest", expect);
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

/// Two exporters, one of them to a receiver that is down: the outage shows as that exporter's
/// retries and queue bytes, not the other's; summed they equal the totals the agent logged.
#[test]
fn a_receiver_outage_shows_on_its_exporter_only() {
    if !support::live_cgroups_available() || !victoria_available() || !rotel_available() {
        return;
    }
    let vm = VictoriaMetrics::start();
    let rotel = Rotel::start(&vm);
    // Nothing listens there: every attempt fails and is retried (soon: short backoff); batches
    // pile up.
    let closed = support::ClosedPort::new();
    let dead = format!("http://127.0.0.1:{}", closed.port());
    let expect: Expect = &[
        ("podometer.exporter.batches", Some(("outcome", "retried")), "batches_retried"),
        ("podometer.exporter.batches", Some(("outcome", "sent")), "batches_sent"),
        ("podometer.exporter.batches", Some(("outcome", "dropped")), "batches_dropped"),
        ("podometer.exporter.queue.size", None, "queue_bytes"),
        ("podometer.exporter.sweeps.dropped", None, "sweeps_dropped_by_exporter_backlog"),
    ];
    let exporters = [
        ("otlp/primary", rotel.grpc_endpoint(), String::new()),
        ("otlp/outage", dead, ", retry: {initial_interval: 100ms, max_interval: 500ms}".to_owned()),
    ];
    let exporters: Vec<(&str, &str, &str)> =
        exporters.iter().map(|(k, e, x)| (*k, e.as_str(), x.as_str())).collect();
    let (want, series) = run_agent(&vm, &rotel, &exporters, "selfoutage", expect);
    let batches = |exporter: &str, outcome: &str| {
        of_exporter(&series, "podometer.exporter.batches", Some(("outcome", outcome)), exporter)
            .unwrap_or_else(|| panic!("{exporter} {outcome} read back"))
    };
    assert_eq!(batches("otlp/outage", "sent"), 0.0, "{want:?}");
    assert!(batches("otlp/outage", "retried") > 0.0, "the outage shows as retries");
    assert!(batches("otlp/primary", "sent") > 0.0);
    assert_eq!(batches("otlp/primary", "retried"), 0.0, "the healthy exporter has no retries");
    // The memory queues are dropped at shutdown, so queue bytes show while the agent ran.
    assert!(
        max_of_exporter(&series, "podometer.exporter.queue.size", "otlp/outage") > 0.0,
        "the outage's queue bytes never above 0"
    );
    assert_eq!(
        of_exporter(&series, "podometer.exporter.queue.size", None, "otlp/outage"),
        Some(0.0),
        "its queue is gone after shutdown"
    );
    assert_eq!(want["batches_sent"] as f64, batches("otlp/primary", "sent"), "all sent by the primary");
}
