//! Live: the podometer binary against the OpenTelemetry Collector users run, built with the
//! OpenTelemetry Collector Builder from `deploy/otelcol/builder.yaml` (`scripts/otelcol.sh`,
//! called by the test itself; the first run on a machine builds it). Each OTLP path podometer
//! offers ends in a receiver of its own and a `file` exporter of its own, so every point the
//! Collector wrote can be traced to one exporter. The reference is podometer's own `file`
//! exporter in the same pipeline: it writes every sweep the OTLP exporters were given, in the
//! same OTLP/JSON format as the Collector's, and every point of it must reach every path once,
//! with its value (and value type), timestamps, attributes, unit and kind unchanged.
//!
//! partial_success: the Collector's OTLP receiver never sends one (v0.161.0,
//! `receiver/otlpreceiver/internal/metrics/otlp.go`: `Export` answers an empty
//! `ExportResponse` or an error status, whatever its pipeline dropped), so no real Collector
//! setup can produce it. podometer's handling of it (counted in
//! `podometer.exporter.points.rejected`, logged, the batch not sent again) is tested against a
//! stand-in server in tests/otlp_exporter.rs.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use std::collections::BTreeMap;
use support::cgroupfs::TestCgroup;

use support::otelcol::{
    agent_counters, compare, otelcol_available, points, read_requests, Agent, Collector, PointBody, PointKey,
};
use support::tls::{openssl_available, TestPki};
use support::{free_port, have_command, is_root, prerequisite};

/// Containers for the agent to measure (the host may have none of its own), killed and
/// removed on drop, with their ids.
fn test_containers(tag: u32) -> Vec<(String, TestCgroup)> {
    (0..2u32)
        .map(|n| {
            let id = format!("{:056x}{:08x}", std::process::id(), n + 16 * tag);
            let mut cg = TestCgroup::create(Path::new("/sys/fs/cgroup"), &format!("docker/{id}"));
            cg.spawn("exec sleep 300");
            (id, cg)
        })
        .collect()
}

/// Both test containers are in podometer's own output (its `file` exporter).
fn assert_measured(reference: &BTreeMap<PointKey, Vec<PointBody>>, containers: &[(String, TestCgroup)]) {
    for (id, _) in containers {
        assert!(
            reference
                .keys()
                .any(|k| k.0.iter().any(|(a, v)| a == "container.id" && v == &format!("str:{id}"))),
            "test container {id} is missing from podometer's own output"
        );
    }
}

fn live_prerequisites() -> bool {
    prerequisite(is_root(), "root (the test makes cgroups)")
        && prerequisite(
            Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists(),
            "cgroup v1 memory controller",
        )
        && otelcol_available()
        && openssl_available()
        && prerequisite(have_command("curl"), "curl (checks that the Collector demands a client certificate)")
}

/// Waits until the agent's file exporter holds `n` sweeps.
fn wait_for_sweeps(file: &Path, n: usize, agent: &Agent) {
    let start = Instant::now();
    while read_requests(file).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fewer than {n} sweeps in 60 s; agent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn yaml_path(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

const GOOD_TOKEN: &str = "podometer-e2e-good-5f1c9a";
const WRONG_TOKEN: &str = "podometer-e2e-wrong-77d0e3";

/// Four paths into one Collector, each into a file of its own: gRPC and HTTP/protobuf in the
/// clear with gzip, and gRPC (gzip) and HTTP (uncompressed) over mutual TLS with a bearer
/// token the `bearertokenauth` extension checks. Two more exporters send a wrong token to the
/// TLS receivers: the Collector must refuse them (their points would show as second copies in
/// the TLS paths' files), and podometer must count and log the refusal without the token.
#[test]
fn every_point_reaches_the_collector_once_over_grpc_http_gzip_mtls_and_bearer_auth() {
    if !live_prerequisites() {
        return;
    }
    let pki = TestPki::create();
    let dir = tempfile::tempdir().unwrap();
    let [grpc, http, grpc_tls, http_tls, health] = [(); 5].map(|_| free_port());
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}, client_ca_file: {}}}",
        yaml_path(&pki.file("server.pem")),
        yaml_path(&pki.file("server.key")),
        yaml_path(&pki.file("ca.pem"))
    );
    let collector_config = format!(
        r#"extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
  bearertokenauth: {{token: "{GOOD_TOKEN}"}}
receivers:
  otlp/grpc: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{grpc}"}}}}}}
  otlp/http: {{protocols: {{http: {{endpoint: "127.0.0.1:{http}"}}}}}}
  otlp/grpc-mtls:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc_tls}", {tls}, auth: {{authenticator: bearertokenauth}}}}
  otlp/http-mtls:
    protocols:
      http: {{endpoint: "127.0.0.1:{http_tls}", {tls}, auth: {{authenticator: bearertokenauth}}}}
exporters:
  file/grpc: {{path: {d}/grpc.jsonl}}
  file/http: {{path: {d}/http.jsonl}}
  file/grpc-mtls: {{path: {d}/grpc-mtls.jsonl}}
  file/http-mtls: {{path: {d}/http-mtls.jsonl}}
processors:
  batch: {{}}
service:
  extensions: [health_check, bearertokenauth]
  telemetry: {{metrics: {{level: none}}}}
  pipelines:
    metrics/grpc: {{receivers: [otlp/grpc], processors: [batch], exporters: [file/grpc]}}
    metrics/http: {{receivers: [otlp/http], exporters: [file/http]}}
    metrics/grpc-mtls: {{receivers: [otlp/grpc-mtls], exporters: [file/grpc-mtls]}}
    metrics/http-mtls: {{receivers: [otlp/http-mtls], exporters: [file/http-mtls]}}
"#,
        d = dir.path().display(),
    );
    let mut collector = Collector::start(tempfile::tempdir().unwrap(), health, &collector_config, &[]);

    // The TLS receivers demand a client certificate: without one the handshake fails; with
    // one the request gets as far as HTTP (an empty body is not OTLP: 4xx).
    let curl = |with_cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cacert"])
            .arg(pki.file("ca.pem"));
        if with_cert {
            cmd.arg("--cert").arg(pki.file("client.pem")).arg("--key").arg(pki.file("client.key"));
        }
        cmd.args(["-H", &format!("authorization: Bearer {GOOD_TOKEN}"), "-X", "POST"])
            .arg(format!("https://127.0.0.1:{http_tls}/v1/metrics"));
        cmd.output().expect("run curl")
    };
    let without = curl(false);
    assert!(!without.status.success(), "the Collector took a TLS connection without a client certificate");
    let with = curl(true);
    let code = String::from_utf8_lossy(&with.stdout).to_string();
    assert!(code.starts_with('4'), "with a client certificate: HTTP {code} (curl {:?})", with.status);

    let containers = test_containers(1);
    let sent = dir.path().join("sent.jsonl");
    let tls_client = format!(
        "tls: {{ca_file: {}, cert_file: {}, key_file: {}}}",
        yaml_path(&pki.file("ca.pem")),
        yaml_path(&pki.file("client.pem")),
        yaml_path(&pki.file("client.key"))
    );
    let retry = "retry: {initial_interval: 250ms, max_interval: 1s}";
    let agent_config = format!(
        r#"interval: 1s
shutdown_timeout: 5s
self_telemetry: {{enabled: false}}
sources:
  cgroups: {{}}
exporters:
  file: {{path: {sent}}}
  otlp/grpc: {{protocol: grpc, endpoint: "http://127.0.0.1:{grpc}", compression: gzip, {retry}}}
  otlp/http: {{protocol: http/protobuf, endpoint: "http://127.0.0.1:{http}/v1/metrics", compression: gzip, {retry}}}
  otlp/grpc-mtls:
    {{protocol: grpc, endpoint: "https://127.0.0.1:{grpc_tls}", compression: gzip, {retry},
     headers: {{authorization: "Bearer {GOOD_TOKEN}"}}, {tls_client}}}
  otlp/http-mtls:
    {{protocol: http/protobuf, endpoint: "https://127.0.0.1:{http_tls}/v1/metrics", compression: none, {retry},
     headers: {{authorization: "Bearer {GOOD_TOKEN}"}}, {tls_client}}}
  otlp/grpc-wrong-token:
    {{protocol: grpc, endpoint: "https://127.0.0.1:{grpc_tls}", {retry},
     headers: {{authorization: "Bearer {WRONG_TOKEN}"}}, {tls_client}}}
  otlp/http-wrong-token:
    {{protocol: http/protobuf, endpoint: "https://127.0.0.1:{http_tls}/v1/metrics", {retry},
     headers: {{authorization: "Bearer {WRONG_TOKEN}"}}, {tls_client}}}
pipelines:
  main:
    sources: [cgroups]
    exporters: [file, otlp/grpc, otlp/http, otlp/grpc-mtls, otlp/http-mtls, otlp/grpc-wrong-token, otlp/http-wrong-token]
"#,
        sent = yaml_path(&sent),
    );
    let config = dir.path().join("podometer.yaml");
    std::fs::write(&config, agent_config).unwrap();
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    wait_for_sweeps(&sent, 5, &agent);
    agent.stop();
    // The Collector drains its pipelines into the files when it stops.
    collector.stop();

    let sweeps = read_requests(&sent);
    let reference = points(&sweeps);
    assert!(reference.len() >= sweeps.len() * 10, "too few points to compare: {}", reference.len());
    assert_measured(&reference, &containers);
    let mut failures = Vec::new();
    for path in ["grpc", "http", "grpc-mtls", "http-mtls"] {
        let got = points(&read_requests(&dir.path().join(format!("{path}.jsonl"))));
        let problems = compare(&reference, &got, 8);
        eprintln!(
            "{path}: {} points of {} sweeps compared, {} problems",
            reference.len(),
            sweeps.len(),
            problems.len()
        );
        if !problems.is_empty() {
            failures.push(format!("{path}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}\ncollector log:\n{}", failures.join("\n"), collector.log());

    let log = agent.log_text();
    let counters = agent_counters(&log);
    // One batch per sweep and exporter at least; both wrong-token exporters' batches dropped.
    assert!(
        counters.get("batches_dropped").copied().unwrap_or(0) >= 2 * sweeps.len() as u64,
        "wrong-token batches not counted as dropped: {counters:?}"
    );
    for (exporter, kind) in
        [("otlp/grpc-wrong-token", "grpc_unauthenticated"), ("otlp/http-wrong-token", "http_unauthorized")]
    {
        assert!(
            log.lines().any(|l| l.contains(exporter) && l.contains(kind)),
            "no {kind} warning for {exporter}; log:\n{log}"
        );
    }
    for secret in [GOOD_TOKEN, WRONG_TOKEN] {
        assert!(!log.contains(secret), "the agent's log shows a token; log:\n{log}");
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn sweep_time_ms(request: &ExportMetricsServiceRequest) -> Option<u64> {
    let rm = request.resource_metrics.first()?;
    let m = rm.scope_metrics.first()?.metrics.first()?;
    let t = match m.data.as_ref()? {
        opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s) => {
            s.data_points.first()?.time_unix_nano
        }
        opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(g) => {
            g.data_points.first()?.time_unix_nano
        }
        _ => return None,
    };
    Some(t / 1_000_000)
}

/// The Collector goes away (SIGTERM) for about 12 s; meanwhile podometer keeps sweeping into
/// its disk queues, is killed (SIGKILL, nothing flushed) and started again on the same queue
/// directories; then the Collector comes back. Every sweep queued before the crash or taken
/// after it arrives, over gRPC and over HTTP, once, unchanged.
#[test]
fn a_collector_restart_and_an_agent_crash_lose_and_repeat_nothing_with_the_disk_queue() {
    if !live_prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // podometer's two exporters go to two Collectors (gRPC and HTTP), so that what each
    // wrote stays apart; each restart writes new files, so that each run's output does too.
    let [grpc, http, health_grpc, health_http] = [(); 4].map(|_| free_port());
    let config_for = |run: u32, proto: &str, port: u16, health: u16| {
        let listen = if proto == "grpc" {
            format!("grpc: {{endpoint: \"127.0.0.1:{port}\"}}")
        } else {
            format!("http: {{endpoint: \"127.0.0.1:{port}\"}}")
        };
        format!(
            r#"extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
receivers:
  otlp: {{protocols: {{{listen}}}}}
processors:
  batch: {{}}
  memory_limiter: {{check_interval: 1s, limit_mib: 512}}
exporters:
  file: {{path: {d}/{proto}-{run}.jsonl}}
service:
  extensions: [health_check]
  telemetry: {{metrics: {{level: none}}}}
  pipelines:
    metrics: {{receivers: [otlp], processors: [memory_limiter, batch], exporters: [file]}}
"#,
            d = dir.path().display()
        )
    };
    let mut collectors = [
        Collector::start(
            tempfile::tempdir().unwrap(),
            health_grpc,
            &config_for(1, "grpc", grpc, health_grpc),
            &[],
        ),
        Collector::start(
            tempfile::tempdir().unwrap(),
            health_http,
            &config_for(1, "http", http, health_http),
            &[],
        ),
    ];

    let containers = test_containers(2);
    let sent = dir.path().join("sent.jsonl");
    let queue = |name: &str| yaml_path(&dir.path().join(name));
    let retry = "retry: {initial_interval: 250ms, max_interval: 2s}";
    let agent_config = format!(
        r#"interval: 1s
shutdown_timeout: 5s
self_telemetry: {{enabled: false}}
sources:
  cgroups: {{}}
exporters:
  file: {{path: {sent}}}
  otlp/grpc: {{protocol: grpc, endpoint: "http://127.0.0.1:{grpc}", compression: gzip, {retry}, queue: {{directory: {qg}}}}}
  otlp/http: {{protocol: http/protobuf, endpoint: "http://127.0.0.1:{http}/v1/metrics", {retry}, queue: {{directory: {qh}}}}}
pipelines:
  main: {{sources: [cgroups], exporters: [file, otlp/grpc, otlp/http]}}
"#,
        sent = yaml_path(&sent),
        qg = queue("queue-grpc"),
        qh = queue("queue-http"),
    );
    let config = dir.path().join("podometer.yaml");
    std::fs::write(&config, agent_config).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = Agent::start(&config, &log);
    wait_for_sweeps(&sent, 3, &agent);

    for c in &mut collectors {
        c.stop();
    }
    std::thread::sleep(Duration::from_secs(5));
    let killed_at = SystemTime::now();
    agent.kill9();
    let before_crash = read_requests(&sent).len();
    let mut agent = Agent::start(&config, &log);
    std::thread::sleep(Duration::from_secs(6));
    // Back, writing to new files.
    let rewrite = |c: &Collector, proto: &str, port: u16, health: u16| {
        std::fs::write(c.path("otelcol.yaml"), config_for(2, proto, port, health)).unwrap();
    };
    rewrite(&collectors[0], "grpc", grpc, health_grpc);
    rewrite(&collectors[1], "http", http, health_http);
    for c in &mut collectors {
        c.resume();
    }
    std::thread::sleep(Duration::from_secs(4));
    agent.stop();
    for c in &mut collectors {
        c.stop();
    }

    let text = agent.log_text();
    assert!(
        text.contains("Recovered queued batches from disk"),
        "the restarted agent found nothing queued on disk; log:\n{text}"
    );
    let sweeps = read_requests(&sent);
    assert!(sweeps.len() > before_crash, "the restarted agent took sweeps");
    // A sweep taken within the last interval before the crash may have reached the file but
    // not the OTLP queues (each exporter has its own task): never accepted, not the queue's to
    // keep. Every other sweep must arrive.
    let cutoff = ms(killed_at) - 1_500;
    let (must, may): (Vec<_>, Vec<_>) = sweeps
        .iter()
        .cloned()
        .partition(|r| sweep_time_ms(r).is_some_and(|t| t <= cutoff || t > ms(killed_at)));
    assert!(must.len() >= 12, "only {} sweeps to check", must.len());
    let must_points = points(&must);
    assert_measured(&must_points, &containers);
    let may_points = points(&may);
    let mut failures = Vec::new();
    for proto in ["grpc", "http"] {
        let mut got = Vec::new();
        for run in [1, 2] {
            got.extend(read_requests(&dir.path().join(format!("{proto}-{run}.jsonl"))));
        }
        let mut got = points(&got);
        // The crash window's points may be there (once) or not.
        got.retain(|k, v| !(may_points.contains_key(k) && v.len() == 1 && v[0] == may_points[k][0]));
        let problems = compare(&must_points, &got, 8);
        eprintln!(
            "{proto}: {} points of {} sweeps checked ({} in the crash window may be absent), {} problems",
            must_points.len(),
            must.len(),
            may.len(),
            problems.len()
        );
        if !problems.is_empty() {
            failures.push(format!("{proto}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}\nagent log:\n{text}", failures.join("\n"));
}
