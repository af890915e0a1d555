//! End to end against real receivers started by the test: VictoriaMetrics (OTLP/HTTP in, raw
//! samples out through `/api/v1/export`) and rotel (OTLP/gRPC in, forwarding to
//! VictoriaMetrics). What the `file` exporter wrote is the reference: every sample of every
//! sweep it wrote must reach VictoriaMetrics with the same value and timestamp.
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, NumberDataPoint};
use podometer::exporters::otlp::encode::encode_sweep;
use podometer::exporters::otlp::{OtlpExporter, OtlpExporterConfig};
use podometer::exporters::Exporter;
use podometer::model::{Point, ResourceId, Sweep, Value};
use podometer::semconv;
use support::podman::{podman_available, PodmanPod};
use support::receivers::{self, Rotel, VictoriaMetrics};

// ---------- expected samples ----------

type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    labels: Labels,
    ts_ms: i64,
    value: f64,
}

fn attr_string(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => panic!("unexpected attribute value {other:?}"),
    }
}

/// The samples a Prometheus-style store keeps for a request: metric name, resource and point
/// attributes as labels, one sample per data point.
fn samples_of(request: &ExportMetricsServiceRequest) -> Vec<Sample> {
    let mut out = Vec::new();
    for rm in &request.resource_metrics {
        let mut base = Labels::new();
        for kv in rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default() {
            base.insert(kv.key.clone(), attr_string(kv));
        }
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let points: &[NumberDataPoint] = match &m.data {
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    other => panic!("the agent sends sums and gauges only, got {other:?}"),
                };
                for dp in points {
                    let mut labels = base.clone();
                    labels.insert("__name__".into(), m.name.clone());
                    for kv in &dp.attributes {
                        labels.insert(kv.key.clone(), attr_string(kv));
                    }
                    let value = match dp.value {
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        None => continue,
                    };
                    out.push(Sample { labels, ts_ms: (dp.time_unix_nano / 1_000_000) as i64, value });
                }
            }
        }
    }
    out
}

/// Every sweep the `file` exporter wrote, in order.
fn file_sweeps(path: &Path) -> Vec<ExportMetricsServiceRequest> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Only whole lines: the agent may be writing the next one (or was killed while it did).
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line in {}: {e}", path.display())))
        .collect()
}

fn sweep_time_ms(request: &ExportMetricsServiceRequest) -> Option<i64> {
    samples_of(request).first().map(|s| s.ts_ms)
}

/// The expected samples VictoriaMetrics lacks (or holds with another value).
fn missing_in(vm: &VictoriaMetrics, expected: &[Sample]) -> Vec<String> {
    let mut stored: HashMap<Labels, BTreeMap<i64, f64>> = HashMap::new();
    for s in vm.export(r#"{__name__=~".+"}"#) {
        let points = stored.entry(s.labels.clone()).or_default();
        for (t, v) in s.timestamps_ms.iter().zip(&s.values) {
            points.insert(*t, *v);
        }
    }
    let mut missing = Vec::new();
    for e in expected {
        match stored.get(&e.labels).and_then(|p| p.get(&e.ts_ms)) {
            Some(v) if (v - e.value).abs() <= 1e-9 * e.value.abs().max(1.0) => {}
            Some(v) => missing.push(format!("{:?} @{}: stored {v}, expected {}", e.labels, e.ts_ms, e.value)),
            None => missing.push(format!("{:?} @{} = {} absent", e.labels, e.ts_ms, e.value)),
        }
    }
    missing
}

fn wait_all_arrive(what: &str, vm: &VictoriaMetrics, expected: &[Sample], timeout: Duration) {
    let start = Instant::now();
    loop {
        let missing = missing_in(vm, expected);
        if missing.is_empty() {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: {} of {} samples missing after {timeout:?}, e.g.\n{}",
                missing.len(),
                expected.len(),
                missing.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Timestamps of one series in VictoriaMetrics, ascending.
fn series_times(vm: &VictoriaMetrics, labels: &Labels) -> Vec<i64> {
    vm.export(r#"{__name__=~".+"}"#)
        .into_iter()
        .find(|s| &s.labels == labels)
        .map(|s| s.timestamps_ms)
        .unwrap_or_default()
}

// ---------- receivers without the agent binary ----------

fn lib_sweep(secs: u64) -> Sweep {
    let t = UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs);
    let mut sweep = Sweep::new(t);
    for c in 0..3u64 {
        let id = format!("{c:064x}");
        let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
            vec![(semconv::CONTAINER_ID, id.into()), (semconv::CONTAINER_RUNTIME_NAME, "podman".into())]
        });
        r.points.push(Point::new(
            &semconv::CONTAINER.memory_usage,
            Value::Int((1 << 40) + secs as i64 * 7 + c as i64),
        ));
        let mut cpu =
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(secs as f64 * 0.123_456_789 + c as f64))
                .with(semconv::CPU_MODE, semconv::CPU_MODE_SYSTEM);
        cpu.start_time = Some(UNIX_EPOCH + Duration::from_secs(1_790_000_000));
        r.points.push(cpu);
    }
    sweep
}

/// The exporter alone, over HTTP straight into VictoriaMetrics and over gRPC through rotel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_reaches_victoria_metrics_directly_and_through_rotel() {
    if !(receivers::victoria_available() && receivers::rotel_available()) {
        return;
    }
    let vm_http = VictoriaMetrics::start();
    let vm_grpc = VictoriaMetrics::start();
    let rotel = Rotel::start(&vm_grpc);
    let sweeps: Vec<Sweep> = (0..5).map(lib_sweep).collect();
    let expected: Vec<Sample> = sweeps.iter().flat_map(|s| samples_of(&encode_sweep(s))).collect();
    for (proto, endpoint) in [("http/protobuf", vm_http.otlp_url()), ("grpc", rotel.grpc_endpoint())] {
        let c: OtlpExporterConfig =
            serde_saphyr::from_str(&format!("protocol: {proto}\nendpoint: {endpoint}")).unwrap();
        let mut exporter = OtlpExporter::from_resolved(proto, c.resolve(|_| None).unwrap()).unwrap();
        for s in &sweeps {
            exporter.export(Arc::new(s.clone())).await.unwrap();
        }
        exporter.shutdown(Instant::now() + Duration::from_secs(10)).await.unwrap();
        assert_eq!(exporter.queued(), 0, "{proto}: everything was accepted");
    }
    let (vm_http, vm_grpc) = tokio::task::spawn_blocking(move || {
        wait_all_arrive("http/protobuf into VictoriaMetrics", &vm_http, &expected, Duration::from_secs(20));
        wait_all_arrive("grpc through rotel", &vm_grpc, &expected, Duration::from_secs(20));
        (vm_http, vm_grpc)
    })
    .await
    .unwrap();
    drop((vm_http, vm_grpc, rotel));
}

// ---------- the agent binary ----------

/// The agent, killed by pid on drop.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, log: &Path) -> Agent {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_podometer"))
            .args(["run", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start the agent");
        Agent { child: Some(child), log: log.to_owned() }
    }

    /// SIGTERM: the agent takes a last sweep and flushes its exporters.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "agent exited with {status}; log:\n{}", self.log_text());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent ignored SIGTERM for 20 s; log:\n{}", self.log_text());
        }
    }

    /// SIGKILL: a crash, nothing flushed.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Receivers and files of one scenario: gRPC goes through rotel into `vm_grpc`, HTTP/protobuf
/// straight into `vm_http`.
struct Scenario {
    name: &'static str,
    vm_grpc: VictoriaMetrics,
    vm_http: VictoriaMetrics,
    rotel: Rotel,
    dir: tempfile::TempDir,
}

impl Scenario {
    fn start(name: &'static str) -> Scenario {
        let vm_grpc = VictoriaMetrics::start();
        let vm_http = VictoriaMetrics::start();
        let rotel = Rotel::start(&vm_grpc);
        Scenario { name, vm_grpc, vm_http, rotel, dir: tempfile::tempdir().expect("tempdir") }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("sweeps.jsonl")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn config(&self, on_disk: bool) -> PathBuf {
        let queue = |q: &str| {
            if on_disk {
                format!(", queue: {{directory: {}}}", self.dir.path().join(q).display())
            } else {
                String::new()
            }
        };
        // A short retry cap so delivery resumes within seconds of the receivers' return.
        let retry = "retry: {initial_interval: 250ms, max_interval: 2s}";
        let yaml = format!(
            "interval: 1s\nshutdown_timeout: 5s\nsources:\n  cgroups: {{}}\n  netns: {{}}\nexporters:\n  \
             file: {{path: {file}}}\n  \
             otlp/grpc: {{protocol: grpc, endpoint: \"{grpc}\", compression: gzip, {retry}{qg}}}\n  \
             otlp/vm: {{protocol: http/protobuf, endpoint: \"{http}\", {retry}{qh}}}\n\
             pipelines:\n  main: {{sources: [cgroups, netns], exporters: [file, otlp/grpc, otlp/vm]}}\n",
            file = self.file().display(),
            grpc = self.rotel.grpc_endpoint(),
            http = self.vm_http.otlp_url(),
            qg = queue("queue-grpc"),
            qh = queue("queue-vm"),
        );
        let path = self.dir.path().join("podometer.yaml");
        std::fs::write(&path, yaml).expect("write config");
        path
    }

    fn stop_receivers(&mut self) {
        // rotel first, so it forwards what it holds while its VictoriaMetrics is still up.
        self.rotel.stop();
        self.vm_grpc.stop();
        self.vm_http.stop();
    }

    fn resume_receivers(&mut self) {
        self.vm_grpc.resume();
        self.vm_http.resume();
        self.rotel.resume();
    }

    fn wait_for_sweeps(&self, n: usize, agent: &Agent) {
        let start = Instant::now();
        while file_sweeps(&self.file()).len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}: fewer than {n} sweeps in 30 s; agent log:\n{}",
                self.name,
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every sample of the given sweeps is in both VictoriaMetrics, and the series of `probe`
    /// holds exactly the sweeps' timestamps, in order, without a gap.
    fn assert_delivered(&self, sweeps: &[ExportMetricsServiceRequest], timeout: Duration) {
        let expected: Vec<Sample> = sweeps.iter().flat_map(samples_of).collect();
        assert!(!expected.is_empty(), "{}: the file exporter wrote no samples", self.name);
        wait_all_arrive(&format!("{} over gRPC via rotel", self.name), &self.vm_grpc, &expected, timeout);
        wait_all_arrive(&format!("{} over HTTP/protobuf", self.name), &self.vm_http, &expected, timeout);
        eprintln!(
            "{}: {} samples of {} sweeps found, equal, in both VictoriaMetrics",
            self.name,
            expected.len(),
            sweeps.len()
        );
    }
}

/// A series present in every given sweep (the pod's first app container's memory usage).
fn probe_series(sweeps: &[ExportMetricsServiceRequest], container_id: &str) -> Labels {
    let samples = samples_of(&sweeps[0]);
    samples
        .into_iter()
        .find(|s| {
            s.labels.get(semconv::CONTAINER_ID).map(String::as_str) == Some(container_id)
                && s.labels["__name__"] == semconv::CONTAINER.memory_usage.name
        })
        .unwrap_or_else(|| panic!("container {container_id} has no memory usage in the first sweep"))
        .labels
}

fn assert_pod_is_measured(sweeps: &[ExportMetricsServiceRequest], pod: &PodmanPod) {
    let last = samples_of(sweeps.last().expect("at least one sweep"));
    for id in pod.all_ids() {
        assert!(
            last.iter().any(|s| s.labels.get(semconv::CONTAINER_ID) == Some(&id)),
            "container {id} of pod {} missing from the file exporter's last sweep",
            pod.name
        );
    }
    // A Podman pod has no cgroup of its own in the model: its network series sit on the
    // container holding the namespace (the infra container), tagged with the pod id.
    assert!(
        last.iter().any(|s| s.labels.get(semconv::PODMAN_POD_ID) == Some(&pod.pod_id)
            && s.labels["__name__"] == semconv::CONTAINER_NETWORK.io.name),
        "pod {} has no network series",
        pod.pod_id
    );
}

fn scenario_delivery(pod: &PodmanPod) {
    let s = Scenario::start("delivery");
    let mut agent = Agent::start(&s.config(false), &s.log());
    s.wait_for_sweeps(6, &agent);
    agent.stop();
    let sweeps = file_sweeps(&s.file());
    assert_pod_is_measured(&sweeps, pod);
    s.assert_delivered(&sweeps, Duration::from_secs(30));
}

const OUTAGE: Duration = Duration::from_secs(60);

fn scenario_outage(pod: &PodmanPod) {
    let mut s = Scenario::start("outage");
    let mut agent = Agent::start(&s.config(false), &s.log());
    s.wait_for_sweeps(3, &agent);
    s.stop_receivers();
    let down_at = SystemTime::now();
    std::thread::sleep(OUTAGE);
    s.resume_receivers();
    let up_at = SystemTime::now();
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    let sweeps = file_sweeps(&s.file());
    assert_pod_is_measured(&sweeps, pod);
    let during: usize =
        sweeps.iter().filter_map(sweep_time_ms).filter(|t| *t >= ms(down_at) && *t <= ms(up_at)).count();
    assert!(during >= 50, "outage: only {during} sweeps were taken during the {OUTAGE:?} outage");
    let log = agent.log_text();
    assert!(log.contains("retrying"), "outage: the agent never had to retry; log:\n{log}");
    s.assert_delivered(&sweeps, Duration::from_secs(60));
    let probe = probe_series(&sweeps, &pod.app_ids[0]);
    let file_times: Vec<i64> = sweeps.iter().filter_map(sweep_time_ms).collect();
    for vm in [&s.vm_grpc, &s.vm_http] {
        assert_eq!(series_times(vm, &probe), file_times, "outage: every sweep, once, in order");
    }
}

fn scenario_restart(pod: &PodmanPod) {
    let mut s = Scenario::start("restart");
    let config = s.config(true);
    let mut agent = Agent::start(&config, &s.log());
    s.wait_for_sweeps(3, &agent);
    s.stop_receivers();
    std::thread::sleep(OUTAGE / 3);
    let killed_at = SystemTime::now();
    agent.kill9();
    let before_crash = file_sweeps(&s.file()).len();
    let mut agent = Agent::start(&config, &s.log());
    std::thread::sleep(OUTAGE * 2 / 3);
    s.resume_receivers();
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    let sweeps = file_sweeps(&s.file());
    assert!(sweeps.len() > before_crash, "restart: the restarted agent took sweeps");
    let log = agent.log_text();
    assert!(
        log.contains("Recovered queued batches from disk"),
        "restart: the second agent found nothing queued on disk; log:\n{log}"
    );
    assert_pod_is_measured(&sweeps, pod);
    // A sweep taken within the last interval before the crash may have reached the file but
    // not yet the OTLP queues (each exporter has its own task): that sweep was never accepted
    // by the exporter, so it is not the queue's to keep. Everything older must arrive.
    let cutoff = ms(killed_at) - 1_500;
    let must_arrive: Vec<_> = sweeps
        .iter()
        .filter(|r| sweep_time_ms(r).map(|t| t <= cutoff || t > ms(killed_at)).unwrap_or(false))
        .cloned()
        .collect();
    eprintln!(
        "restart: {} of {} sweeps fall in the last {} ms before the crash and may be missing",
        sweeps.len() - must_arrive.len(),
        sweeps.len(),
        ms(killed_at) - cutoff
    );
    s.assert_delivered(&must_arrive, Duration::from_secs(60));
    let probe = probe_series(&sweeps, &pod.app_ids[0]);
    let want: Vec<i64> = must_arrive.iter().filter_map(sweep_time_ms).collect();
    for vm in [&s.vm_grpc, &s.vm_http] {
        let got = series_times(vm, &probe);
        let got_subset: Vec<i64> = got.iter().copied().filter(|t| want.contains(t)).collect();
        assert_eq!(
            got_subset, want,
            "restart: every sweep queued before the crash or taken after it, in order"
        );
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The three agent scenarios run in parallel threads, each with its own receivers, so the two
/// 60-second outages overlap and the test takes about 80 s, not 3 minutes.
#[test]
fn agent_delivers_every_series_through_outages_and_a_crash() {
    if !(podman_available() && receivers::victoria_available() && receivers::rotel_available()) {
        return;
    }
    let pod = Arc::new(PodmanPod::start("podometer-otlp-e2e", &["sleep 100000", "sleep 100000"]));
    type ScenarioFn = (&'static str, fn(&PodmanPod));
    let scenarios: [ScenarioFn; 3] =
        [("delivery", scenario_delivery), ("outage", scenario_outage), ("restart", scenario_restart)];
    let handles: Vec<_> = scenarios
        .into_iter()
        .map(|(name, f)| {
            let pod = pod.clone();
            (name, std::thread::spawn(move || f(&pod)))
        })
        .collect();
    let mut failures = Vec::new();
    for (name, h) in handles {
        if let Err(panic) = h.join() {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "scenarios failed:\n{}", failures.join("\n\n"));
}
