//! `exporters: prometheus` end to end: the agent binary sweeps the real host (with a Podman
//! pod in it) every second and serves both naming schemes; a real Prometheus 2.42 scrapes
//! both on loopback; every sample Prometheus stored must equal the value the `file` exporter
//! wrote for the same sweep, mapped by this test's own copy of the naming rules. The
//! classic text of both schemes goes through `promtool check metrics`.
mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use support::podman::{podman_available, PodmanPod};
use support::prometheus::{get_with_accept, prometheus_available, promtool_check_metrics, Prometheus};
use support::receivers::free_port;

type Labels = BTreeMap<String, String>;
/// sweep time (ms) → (metric name, labels) → value
type Expected = BTreeMap<i64, HashMap<(String, Labels), f64>>;

struct FilePoint {
    metric: String,
    unit: String,
    counter: bool,
    attributes: Labels,
    value: f64,
}

struct FileResource {
    attributes: Labels,
    points: Vec<FilePoint>,
}

fn any_value_text(v: &serde_json::Value) -> String {
    if let Some(s) = v["stringValue"].as_str() {
        return s.to_owned();
    }
    if let Some(b) = v["boolValue"].as_bool() {
        return b.to_string();
    }
    if let Some(i) = v["intValue"].as_str() {
        return i.to_owned();
    }
    if let Some(items) = v["arrayValue"]["values"].as_array() {
        let strings: Vec<String> =
            items.iter().map(|i| i["stringValue"].as_str().unwrap_or("").to_owned()).collect();
        return serde_json::to_string(&strings).unwrap();
    }
    panic!("unexpected attribute value {v}");
}

fn attributes(list: &serde_json::Value) -> Labels {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| (kv["key"].as_str().unwrap().to_owned(), any_value_text(&kv["value"])))
                .collect()
        })
        .unwrap_or_default()
}

/// The file exporter's sweeps by time in ms.
fn file_sweeps(text: &str) -> BTreeMap<i64, Vec<FileResource>> {
    let mut sweeps: BTreeMap<i64, Vec<FileResource>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one request per line");
        let mut time_ms = None;
        let mut resources = Vec::new();
        for rm in v["resourceMetrics"].as_array().unwrap() {
            let mut points = Vec::new();
            for m in rm["scopeMetrics"][0]["metrics"].as_array().unwrap() {
                let counter = m["sum"].is_object();
                let dps = if counter { &m["sum"]["dataPoints"] } else { &m["gauge"]["dataPoints"] };
                for dp in dps.as_array().unwrap() {
                    let t: i64 = dp["timeUnixNano"].as_str().unwrap().parse().unwrap();
                    time_ms = Some(t / 1_000_000);
                    let value = match dp["asDouble"].as_f64() {
                        Some(d) => d,
                        None => dp["asInt"].as_str().unwrap().parse::<i64>().unwrap() as f64,
                    };
                    points.push(FilePoint {
                        metric: m["name"].as_str().unwrap().to_owned(),
                        unit: m["unit"].as_str().unwrap_or("").to_owned(),
                        counter,
                        attributes: attributes(&dp["attributes"]),
                        value,
                    });
                }
            }
            resources.push(FileResource { attributes: attributes(&rm["resource"]["attributes"]), points });
        }
        if let Some(t) = time_ms {
            sweeps.insert(t, resources);
        }
    }
    sweeps
}

fn underscores(key: &str) -> String {
    key.replace(['.', '/', '-'], "_")
}

/// The OpenTelemetry → Prometheus rules for the names podometer uses, written out again.
fn otel_expected(sweeps: &BTreeMap<i64, Vec<FileResource>>) -> Expected {
    let promoted = ["k8s.namespace.name", "k8s.pod.name", "k8s.container.name"];
    let mut expected = Expected::new();
    for (&t, resources) in sweeps {
        let at = expected.entry(t).or_default();
        for r in resources {
            let mut resource_labels = Labels::new();
            for key in ["container.id", "k8s.pod.uid"].iter().chain(promoted.iter()) {
                if let Some(v) = r.attributes.get(*key) {
                    resource_labels.insert(underscores(key), v.clone());
                }
            }
            for p in &r.points {
                let mut name = underscores(&p.metric);
                match p.unit.as_str() {
                    "s" => name.push_str("_seconds"),
                    "By" => name.push_str("_bytes"),
                    _ => {}
                }
                if p.counter {
                    name.push_str("_total");
                }
                let mut labels = resource_labels.clone();
                for (k, v) in &p.attributes {
                    labels.insert(underscores(k), v.clone());
                }
                assert!(at.insert((name, labels), p.value).is_none(), "two points map to one series");
            }
            let info: Labels = r.attributes.iter().map(|(k, v)| (underscores(k), v.clone())).collect();
            at.insert(("target_info".to_owned(), info), 1.0);
        }
    }
    expected
}

/// The `tcp_state` under which cAdvisor's `container_network_advance_tcp_stats_total` carries a
/// TCP counter (the kernel counter's name in lower case, from cAdvisor's `advtcp` list);
/// `Some(None)` for the namespace counters cAdvisor has no name for (UDP, sockets, TIME-WAIT);
/// `None` for every other metric.
fn cadvisor_tcp_state(metric: &str, attrs: &Labels) -> Option<Option<&'static str>> {
    let suffix = metric.strip_prefix("container.").or_else(|| metric.strip_prefix("k8s.pod.")).unwrap();
    let attr = |k: &str| attrs.get(k).map(String::as_str).unwrap_or("");
    let rx = attr("network.io.direction") == "receive";
    Some(Some(match suffix {
        "network.tcp.segment.retransmitted" => "retranssegs",
        "network.tcp.segment.count" if rx => "insegs",
        "network.tcp.segment.count" => "outsegs",
        "network.tcp.segment.errors" => "inerrs",
        "network.tcp.reset.count" if rx => "estabresets",
        "network.tcp.reset.count" => "outrsts",
        "network.tcp.open.active" => "activeopens",
        "network.tcp.open.passive" => "passiveopens",
        "network.tcp.open.failed" => "attemptfails",
        "network.tcp.listen.overflows" => "listenoverflows",
        "network.tcp.listen.drops" => "listendrops",
        "network.tcp.syn.retransmitted" => "tcpsynretrans",
        "network.tcp.timeouts" => "tcptimeouts",
        "network.connection.count" if attr("network.connection.state") == "established" => "currestab",
        s if s.starts_with("network.udp.")
            || s.starts_with("network.socket.")
            || s.starts_with("network.connection.") =>
        {
            return Some(None)
        }
        _ => return None,
    }))
}

/// cAdvisor's names for podometer's metrics, written out again from cAdvisor's list.
fn cadvisor_name(metric: &str, attrs: &Labels) -> Option<&'static str> {
    let suffix = metric.strip_prefix("container.").or_else(|| metric.strip_prefix("k8s.pod.")).unwrap();
    let attr = |k: &str| attrs.get(k).map(String::as_str).unwrap_or("");
    let net = |rx: &'static str, tx: &'static str| match attr("network.io.direction") {
        "receive" => Some(rx),
        "transmit" => Some(tx),
        other => panic!("direction {other}"),
    };
    let disk = |rd: &'static str, wr: &'static str| match attr("disk.io.direction") {
        "read" => Some(rd),
        "write" => Some(wr),
        other => panic!("direction {other}"),
    };
    let psi = |some: &'static str, full: &'static str| match attr("pressure.stall.type") {
        "some" => Some(some),
        "full" => Some(full),
        other => panic!("stall type {other}"),
    };
    Some(match suffix {
        "cpu.time" if attr("cpu.mode") == "user" => "container_cpu_user_seconds_total",
        "cpu.time" => "container_cpu_system_seconds_total",
        "cpu.throttling_data.periods" => "container_cpu_cfs_periods_total",
        "cpu.throttling_data.throttled_periods" => "container_cpu_cfs_throttled_periods_total",
        "cpu.throttling_data.throttled_time" => "container_cpu_cfs_throttled_seconds_total",
        "memory.usage" => "container_memory_usage_bytes",
        "memory.working_set" => "container_memory_working_set_bytes",
        "memory.rss" => "container_memory_rss",
        "memory.file" => "container_memory_cache",
        "memory.usage.limit" => "container_spec_memory_limit_bytes",
        "memory.oom_kills" => "container_oom_events_total",
        "disk.io" => disk("container_fs_reads_bytes_total", "container_fs_writes_bytes_total")?,
        "disk.operations" => disk("container_fs_reads_total", "container_fs_writes_total")?,
        "pids.count" => "container_threads",
        "pids.limit" => "container_threads_max",
        "cpu.pressure.stall_time" => psi(
            "container_pressure_cpu_waiting_seconds_total",
            "container_pressure_cpu_stalled_seconds_total",
        )?,
        "memory.pressure.stall_time" => psi(
            "container_pressure_memory_waiting_seconds_total",
            "container_pressure_memory_stalled_seconds_total",
        )?,
        "io.pressure.stall_time" => {
            psi("container_pressure_io_waiting_seconds_total", "container_pressure_io_stalled_seconds_total")?
        }
        "network.io" => {
            net("container_network_receive_bytes_total", "container_network_transmit_bytes_total")?
        }
        "network.packet.count" => {
            net("container_network_receive_packets_total", "container_network_transmit_packets_total")?
        }
        "network.packet.dropped" => net(
            "container_network_receive_packets_dropped_total",
            "container_network_transmit_packets_dropped_total",
        )?,
        "network.errors" => {
            net("container_network_receive_errors_total", "container_network_transmit_errors_total")?
        }
        other => panic!("no cAdvisor name for {other}"),
    })
}

fn cadvisor_expected(sweeps: &BTreeMap<i64, Vec<FileResource>>) -> Expected {
    let mut expected = Expected::new();
    for (&t, resources) in sweeps {
        let at = expected.entry(t).or_default();
        for r in resources {
            let is_pod = !r.attributes.contains_key("container.id");
            let mut labels = Labels::new();
            let id = r.attributes.get("container.id").or_else(|| r.attributes.get("k8s.pod.uid")).unwrap();
            labels.insert("id".into(), id.clone());
            for (key, label) in [("k8s.namespace.name", "namespace"), ("k8s.pod.name", "pod")] {
                if let Some(v) = r.attributes.get(key) {
                    labels.insert(label.into(), v.clone());
                }
            }
            if !is_pod {
                for (key, label) in [("k8s.container.name", "container"), ("container.name", "name")] {
                    if let Some(v) = r.attributes.get(key) {
                        labels.insert(label.into(), v.clone());
                    }
                }
            }
            let mut cpu = None;
            for p in &r.points {
                if p.metric.ends_with(".cpu.time") {
                    *cpu.get_or_insert(0.0) += p.value;
                }
                let mut l = labels.clone();
                let name = match cadvisor_tcp_state(&p.metric, &p.attributes) {
                    Some(Some(state)) => {
                        l.insert("tcp_state".into(), state.into());
                        "container_network_advance_tcp_stats_total"
                    }
                    Some(None) => continue,
                    None => cadvisor_name(&p.metric, &p.attributes).unwrap(),
                };
                if let Some(iface) = p.attributes.get("network.interface.name") {
                    l.insert("interface".into(), iface.clone());
                }
                if let Some(dev) = p.attributes.get("system.device") {
                    l.insert("device".into(), dev.clone());
                }
                assert!(at.insert((name.to_owned(), l), p.value).is_none(), "two points map to one series");
            }
            if let Some(total) = cpu {
                at.insert(("container_cpu_usage_seconds_total".into(), labels.clone()), total);
            }
        }
    }
    expected
}

/// Matches every stored sample with the sweep of its timestamp (±1 ms: OpenMetrics carries
/// seconds as a decimal, which Prometheus converts to ms through a float). Returns how many
/// samples matched and the sweeps they came from.
fn compare(job: &str, prom: &Prometheus, expected: &Expected) -> (usize, Vec<i64>) {
    let series = prom.raw_samples(&format!("{{job=\"{job}\",__name__!~\"up|scrape_.*\"}}"), "10m");
    assert!(!series.is_empty(), "Prometheus stored nothing for {job}; log:\n{}", prom.log());
    let mut per_sweep: BTreeMap<i64, usize> = BTreeMap::new();
    let mut matched = 0;
    for s in &series {
        let mut labels = s.labels.clone();
        let name = labels.remove("__name__").unwrap();
        labels.remove("job");
        labels.remove("instance");
        for &(ts, value) in &s.samples {
            let sweep = [ts, ts - 1, ts + 1]
                .into_iter()
                .find(|t| expected.contains_key(t))
                .unwrap_or_else(|| panic!("{job}: sample at {ts} matches no sweep the file exporter wrote"));
            let want = expected[&sweep].get(&(name.clone(), labels.clone())).unwrap_or_else(|| {
                panic!("{job}: {name}{labels:?} at {ts} is not in the file exporter's sweep")
            });
            assert_eq!(value, *want, "{job}: {name}{labels:?} at {ts}");
            *per_sweep.entry(sweep).or_default() += 1;
            matched += 1;
        }
    }
    // Each scraped sweep is stored whole: as many samples as the sweep has series.
    for (sweep, count) in &per_sweep {
        assert_eq!(*count, expected[sweep].len(), "{job}: sweep {sweep} stored partially");
    }
    (matched, per_sweep.keys().copied().collect())
}

struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child we spawned.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_stores_exactly_what_the_file_exporter_wrote_in_both_namings() {
    if !support::live_cgroups_available() || !podman_available() || !prometheus_available() {
        return;
    }
    let pod = PodmanPod::start("podo-prom", &["exec sleep 600"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweeps.jsonl");
    let (otel_port, cadvisor_port) = (free_port(), free_port());
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "interval: 1s\nsources:\n  cgroups: {{}}\n  netns: {{}}\nexporters:\n  file: {{path: {}}}\n  \
             prometheus/otel: {{endpoint: \"127.0.0.1:{otel_port}\"}}\n  \
             prometheus/cadvisor: {{endpoint: \"127.0.0.1:{cadvisor_port}\", naming: cadvisor}}\n\
             pipelines:\n  main: {{sources: [cgroups, netns], exporters: [file, prometheus/otel, prometheus/cadvisor]}}\n",
            out.display()
        ),
    )
    .unwrap();
    let mut agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_podometer"))
            .args(["run", "-c"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // The classic text of both schemes passes promtool; OpenMetrics comes when asked.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (port, scheme) in [(otel_port, "otel"), (cadvisor_port, "cadvisor")] {
        let text = loop {
            match get_with_accept(port, "/metrics", "text/plain") {
                Ok((200, ct, body)) if body.contains(&pod.infra_id) => {
                    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
                    break body;
                }
                _ if Instant::now() > deadline => {
                    panic!("{scheme}: no scrape with the pod's containers in 20 s")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let (code, output) = promtool_check_metrics(&text);
        // Lints promtool may report, one per naming; nothing else. `otel`: the data model's
        // `*.pids.count` becomes `*_pids_count` (`_count` is a histogram suffix). `cadvisor`:
        // cAdvisor types its `advtcp` family a gauge under a `_total` name, which promlint flags
        // on cAdvisor's own exposition too; the name is kept so that dashboards work.
        let allowed = if scheme == "otel" {
            "_pids_count non-histogram"
        } else {
            "container_network_advance_tcp_stats_total non-counter metrics should not have \"_total\""
        };
        let lints: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        for line in &lints {
            assert!(line.contains(allowed), "promtool on {scheme}: {line}");
        }
        if lints.is_empty() {
            assert_eq!(code, 0, "promtool on {scheme} failed without a lint:\n{output}");
        }
        let (status, ct, om) =
            get_with_accept(port, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
                .unwrap();
        assert_eq!(status, 200);
        assert!(ct.starts_with("application/openmetrics-text; version=1.0.0"), "{ct}");
        assert!(om.ends_with("# EOF\n"), "{scheme}: OpenMetrics must end with # EOF");
    }

    let prom = Prometheus::start(&[("otel", otel_port), ("cadvisor", cadvisor_port)], "1s");
    // Prometheus takes a few seconds before its first scrape; wait for five of each job.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let up = prom.raw_samples("up", "10m");
        let scrapes = |job: &str| {
            up.iter()
                .filter(|s| s.labels["job"] == job)
                .map(|s| s.samples.iter().filter(|v| v.1 == 1.0).count())
                .sum::<usize>()
        };
        if scrapes("otel") >= 5 && scrapes("cadvisor") >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape 5 times in 40 s: {up:?}\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Stop the agent so every sweep it served is complete in the file.
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "agent exit {status:?}");
    let sweeps = file_sweeps(&std::fs::read_to_string(&out).unwrap());

    // The start-up line says what the first sweep found and where it goes.
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let startup = log
        .lines()
        .find(|l| l.contains("First sweep done."))
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    let field = |name: &str| {
        startup
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(["v1", "v2", "hybrid"].contains(&field("cgroups").as_str()), "{startup}");
    assert!(field("runtimes").split(',').any(|r| r == "podman"), "{startup}");
    assert!(field("containers").parse::<usize>().unwrap() >= 2, "{startup}");
    assert!(field("pods").parse::<usize>().unwrap() >= 1, "{startup}");
    assert!(
        startup.contains(&format!(
            "prometheus/cadvisor -> http://127.0.0.1:{cadvisor_port}/metrics (cadvisor names)"
        )),
        "{startup}"
    );
    assert!(startup.contains("file -> "), "{startup}");

    let (otel_samples, otel_sweeps) = compare("otel", &prom, &otel_expected(&sweeps));
    let (cadvisor_samples, cadvisor_sweeps) = compare("cadvisor", &prom, &cadvisor_expected(&sweeps));
    eprintln!(
        "checked {otel_samples} otel samples from {} sweeps, {cadvisor_samples} cadvisor samples from {} sweeps",
        otel_sweeps.len(),
        cadvisor_sweeps.len()
    );
    assert!(
        otel_sweeps.len() >= 3 && cadvisor_sweeps.len() >= 3,
        "too few sweeps scraped: {otel_sweeps:?} {cadvisor_sweeps:?} of {:?}; up: {:?}; log:\n{}",
        sweeps.keys().collect::<Vec<_>>(),
        prom.raw_samples("up", "10m"),
        prom.log()
    );

    // The pod's containers are among what was compared, with network series once, on the
    // container that owns the namespace (the infra container).
    let cadvisor =
        prom.raw_samples("container_network_receive_bytes_total{job=\"cadvisor\",interface=\"eth0\"}", "10m");
    let ids: Vec<&str> = cadvisor.iter().filter_map(|s| s.labels.get("id").map(String::as_str)).collect();
    assert!(ids.contains(&pod.infra_id.as_str()), "no network series for the pod's infra container: {ids:?}");
    for app in &pod.app_ids {
        assert!(!ids.contains(&app.as_str()), "network counted again on app container {app}");
    }
    let cpu = prom.raw_samples(
        &format!("container_cpu_time_seconds_total{{job=\"otel\",container_id=\"{}\"}}", pod.app_ids[0]),
        "10m",
    );
    assert_eq!(cpu.len(), 2, "user and system series of the app container: {cpu:?}");
}
