//! Self-telemetry end to end: the agent binary sends its own metrics through the OpenTelemetry
//! SDK to a real rotel, which forwards them to a real VictoriaMetrics. After SIGTERM the agent
//! logs its counters and then flushes the SDK once more, so the last samples VictoriaMetrics
//! holds must equal the numbers in that final log line.
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use support::receivers::{rotel_available, victoria_available, Rotel, VictoriaMetrics};

fn counters(log: &str) -> BTreeMap<String, u64> {
    let line = log.lines().rev().find(|l| l.contains("Agent counters.")).expect("final counters line");
    line.split_whitespace()
        .filter_map(|w| w.trim_matches('"').rsplit_once('='))
        .filter_map(|(k, v)| Some((k.rsplit('=').next()?.to_owned(), v.parse().ok()?)))
        .collect()
}

#[test]
fn agent_metrics_read_back_equal_its_own_counters() {
    if !support::live_cgroups_available() || !victoria_available() || !rotel_available() {
        return;
    }
    let vm = VictoriaMetrics::start();
    let rotel = Rotel::start(&vm);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 500ms\nhost_name: selftest-{pid}\nnode_name: node-{pid}\nself_telemetry: {{interval: 1s}}\n\
             sources:\n  cgroups: {{}}\nexporters:\n  otlp: {{endpoint: \"{}\"}}\n\
             pipelines:\n  main: {{sources: [cgroups], exporters: [otlp]}}\n",
            rotel.grpc_endpoint(),
            pid = std::process::id()
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

    let selector = format!("{{host.name=\"selftest-{}\",service.name=\"podometer\"}}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let last =
        |series: &[support::receivers::Series], name: &str, label: Option<(&str, &str)>| -> Option<f64> {
            series
                .iter()
                .filter(|s| s.name() == name)
                .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
                .filter_map(|s| {
                    s.timestamps_ms.iter().zip(&s.values).max_by_key(|(t, _)| **t).map(|(t, v)| (*t, *v))
                })
                .max_by_key(|(t, _)| *t)
                .map(|(_, v)| v)
        };
    loop {
        let series = vm.export(&selector);
        let sweeps = last(&series, "podometer.sweeps", None);
        if sweeps == Some(want["sweeps"] as f64) {
            let sent = last(&series, "podometer.exporter.batches", Some(("outcome", "sent")));
            assert_eq!(sent, Some(want["batches_sent"] as f64), "batches sent");
            assert_eq!(
                last(&series, "podometer.exporter.queue.size", None),
                Some(want["queue_bytes"] as f64)
            );
            assert_eq!(last(&series, "podometer.containers", None), Some(want["last_containers"] as f64));
            assert_eq!(last(&series, "podometer.sweep.points", None), Some(want["last_points"] as f64));
            let any = series.iter().find(|s| s.name() == "podometer.sweeps").unwrap();
            assert_eq!(
                any.labels.get("k8s.node.name").map(String::as_str),
                Some(format!("node-{}", std::process::id()).as_str())
            );
            assert_eq!(any.labels.get("deployment.environment.name").map(String::as_str), Some("selftest"));
            assert_eq!(
                any.labels.get("service.version").map(String::as_str),
                Some(env!("CARGO_PKG_VERSION"))
            );
            let cpu =
                last(&series, "process.cpu.time", Some(("cpu.mode", "user"))).expect("process.cpu.time");
            assert!(cpu > 0.0, "the agent used CPU");
            let rss = last(&series, "process.memory.usage", None).expect("process.memory.usage");
            assert!(rss > (1 << 20) as f64, "rss {rss}");
            let fds = last(&series, "process.unix.file_descriptor.count", None).expect("fd count");
            assert!(fds >= 3.0, "fds {fds}");
            let names: Vec<&str> = series.iter().map(|s| s.name()).collect();
            assert!(names.iter().any(|n| n.starts_with("podometer.sweep.duration")), "histogram: {names:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "VictoriaMetrics has sweeps={sweeps:?}, the agent logged {want:?}; names: {:?}\nrotel:\n{}",
            series.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>(),
            rotel.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
