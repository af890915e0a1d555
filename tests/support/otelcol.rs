//! The OpenTelemetry Collector of `deploy/otelcol/builder.yaml`, built by `scripts/otelcol.sh`
//! (once per machine, cached outside the clone), run by live tests with a config they write:
//! started and restarted on the same ports, stopped by pid on drop. What its `file` exporters
//! wrote is read back as OTLP requests, and flattened to points for comparison with podometer's
//! own `file` exporter output.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, HistogramDataPoint, NumberDataPoint,
};

use super::receivers::{http_get, stop_child, wait_until};
use super::{have_command, prerequisite};

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/otelcol.sh")
}

/// True when the Collector can be built (Go is installed; the script fetches the modules).
pub fn otelcol_available() -> bool {
    prerequisite(have_command("go"), "go (scripts/otelcol.sh builds the Collector)")
        && prerequisite(have_command("flock"), "flock")
}

/// The Collector binary: `scripts/otelcol.sh` builds it on the first call on a machine (many
/// minutes; see docs/collector.md) and prints its path on its last stdout line.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash").arg(script()).output().expect("run scripts/otelcol.sh");
        assert!(
            out.status.success(),
            "scripts/otelcol.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(stdout.lines().last().expect("scripts/otelcol.sh printed no path").trim());
        assert!(path.is_file(), "scripts/otelcol.sh printed {path:?}, which is no file");
        path
    })
    .clone()
}

/// One Collector process with a config file; `stop` and `start` again keep ports and files.
pub struct Collector {
    pub dir: tempfile::TempDir,
    pub health_port: u16,
    config: PathBuf,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl Collector {
    /// Writes `config` (YAML; `extensions.health_check` must listen on `health_port`, which
    /// the caller puts in with [`Collector::health_port`]) and starts the Collector.
    pub fn start(dir: tempfile::TempDir, health_port: u16, config: &str, envs: &[(&str, &str)]) -> Collector {
        let path = dir.path().join("otelcol.yaml");
        std::fs::write(&path, config).expect("write the Collector's config");
        let envs = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut c = Collector { dir, health_port, config: path, envs, child: None, starts: 0 };
        c.resume();
        c
    }

    /// Starts (again) with the same config; returns once its health check answers 200.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the Collector is already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("Collector log file");
        let mut cmd = Command::new(binary());
        cmd.arg("--config").arg(&self.config);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start the Collector");
        self.child = Some(child);
        let port = self.health_port;
        let log_path = self.log_path();
        let child = self.child.as_mut().expect("just started");
        wait_until("the Collector's health check", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the Collector exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            matches!(http_get(port, "/"), Ok((200, _)))
        });
    }

    /// SIGTERM by pid: the receivers stop taking data, the pipelines drain into the exporters.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(20));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("otelcol.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every request in an OTLP/JSON lines file (the Collector's `file` exporter and podometer's
/// write the same format). Only whole lines: the writer may be in the middle of the next.
pub fn read_requests(path: &Path) -> Vec<ExportMetricsServiceRequest> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad OTLP/JSON line in {}: {e}\n{l}", path.display()))
        })
        .collect()
}

/// What identifies one data point: resource attributes, scope, metric name, point attributes
/// and timestamp. Attributes are sorted and rendered with their type, so `"1"` and `1` differ.
pub type PointKey = (Vec<(String, String)>, String, String, Vec<(String, String)>, u64);

/// Everything else a point carries, compared for equality: the metric's unit, description and
/// kind (with temporality and monotonicity), the point's start time, flags and value (with its
/// type: an integer is not a double; a histogram's count, sum, min, max, buckets and bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointBody {
    pub unit: String,
    pub description: String,
    pub kind: String,
    pub start_time_unix_nano: u64,
    pub flags: u32,
    pub value: String,
}

fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => format!("str:{s}"),
        Some(any_value::Value::IntValue(i)) => format!("int:{i}"),
        Some(any_value::Value::BoolValue(b)) => format!("bool:{b}"),
        Some(any_value::Value::DoubleValue(d)) => format!("double:{:x}", d.to_bits()),
        other => format!("{other:?}"),
    }
}

pub fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        kvs.iter().map(|kv| (kv.key.clone(), render(kv.value.as_ref()))).collect();
    out.sort();
    out
}

type Row = (Vec<(String, String)>, u64, u64, u32, String);

fn number_row(dp: &NumberDataPoint) -> Row {
    let value = match dp.value {
        Some(number_data_point::Value::AsInt(i)) => format!("int:{i}"),
        Some(number_data_point::Value::AsDouble(d)) => format!("double:{:x}", d.to_bits()),
        None => "none".to_string(),
    };
    (attrs(&dp.attributes), dp.time_unix_nano, dp.start_time_unix_nano, dp.flags, value)
}

fn histogram_row(dp: &HistogramDataPoint) -> Row {
    let bits = |d: Option<f64>| d.map(|d| format!("{:x}", d.to_bits()));
    let bounds: Vec<String> = dp.explicit_bounds.iter().map(|b| format!("{:x}", b.to_bits())).collect();
    let value = format!(
        "count={} sum={:?} min={:?} max={:?} buckets={:?} bounds={bounds:?}",
        dp.count,
        bits(dp.sum),
        bits(dp.min),
        bits(dp.max),
        dp.bucket_counts
    );
    (attrs(&dp.attributes), dp.time_unix_nano, dp.start_time_unix_nano, dp.flags, value)
}

/// The points of `requests`, each key with every body it was seen with (more than one body, or
/// a key seen twice, is a duplicate).
pub fn points(requests: &[ExportMetricsServiceRequest]) -> BTreeMap<PointKey, Vec<PointBody>> {
    let mut out: BTreeMap<PointKey, Vec<PointBody>> = BTreeMap::new();
    for request in requests {
        for rm in &request.resource_metrics {
            let resource = attrs(rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
            for sm in &rm.scope_metrics {
                let scope =
                    sm.scope.as_ref().map(|s| format!("{}@{}", s.name, s.version)).unwrap_or_default();
                for m in &sm.metrics {
                    // (kind, [(attributes, time, start time, flags, value)])
                    let (kind, rows): (String, Vec<_>) = match &m.data {
                        Some(metric::Data::Sum(s)) => (
                            format!(
                                "sum temporality={} monotonic={}",
                                s.aggregation_temporality, s.is_monotonic
                            ),
                            s.data_points.iter().map(number_row).collect(),
                        ),
                        Some(metric::Data::Gauge(g)) => {
                            ("gauge".to_string(), g.data_points.iter().map(number_row).collect())
                        }
                        // podometer's own self-telemetry (sweep durations) when it is exported
                        // through a pipeline.
                        Some(metric::Data::Histogram(h)) => (
                            format!("histogram temporality={}", h.aggregation_temporality),
                            h.data_points.iter().map(histogram_row).collect(),
                        ),
                        other => panic!(
                            "podometer sends sums, gauges and histograms only, got {other:?} for {}",
                            m.name
                        ),
                    };
                    for (point_attrs, time, start, flags, value) in rows {
                        let key = (resource.clone(), scope.clone(), m.name.clone(), point_attrs, time);
                        out.entry(key).or_default().push(PointBody {
                            unit: m.unit.clone(),
                            description: m.description.clone(),
                            kind: kind.clone(),
                            start_time_unix_nano: start,
                            flags,
                            value,
                        });
                    }
                }
            }
        }
    }
    out
}

/// The differences between the points podometer wrote (`sent`, each seen once) and those the
/// Collector wrote (`received`): absent, duplicated, changed, or unexpected points. At most
/// `limit` lines, then a count.
pub fn compare(
    sent: &BTreeMap<PointKey, Vec<PointBody>>,
    received: &BTreeMap<PointKey, Vec<PointBody>>,
    limit: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, bodies) in sent {
        assert_eq!(bodies.len(), 1, "podometer's file exporter wrote {key:?} {} times", bodies.len());
        match received.get(key).map(Vec::as_slice) {
            None => problems.push(format!("absent: {} {:?} @{}", key.2, key.0, key.4)),
            Some([one]) if one == &bodies[0] => {}
            Some([one]) => {
                problems.push(format!("changed: {} @{}: sent {:?}, got {one:?}", key.2, key.4, bodies[0]))
            }
            Some(many) => problems.push(format!("{} copies: {} {:?} @{}", many.len(), key.2, key.0, key.4)),
        }
    }
    for key in received.keys() {
        if !sent.contains_key(key) {
            problems.push(format!("not sent: {} {:?} @{}", key.2, key.0, key.4));
        }
    }
    let n = problems.len();
    if n > limit {
        problems.truncate(limit);
        problems.push(format!("… {} problems in all", n));
    }
    problems
}

/// The final "Agent counters." line of a podometer log, as name → value.
pub fn agent_counters(log: &str) -> BTreeMap<String, u64> {
    let line = log.lines().rev().find(|l| l.contains("Agent counters.")).unwrap_or_else(|| {
        panic!("no 'Agent counters.' line in the agent's log:\n{log}");
    });
    line.split_whitespace()
        .filter_map(|w| w.trim_matches('"').rsplit_once('='))
        .filter_map(|(k, v)| Some((k.rsplit('=').next()?.trim_matches('"').to_owned(), v.parse().ok()?)))
        .collect()
}

/// The podometer binary with a config file, its stderr and stdout in a log file; killed by pid
/// on drop.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, log: &Path) -> Agent {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_podometer"))
            .args(["run", "-c"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start podometer");
        Agent { child: Some(child), log: log.to_owned() }
    }

    /// SIGTERM: a last sweep, the exporters flushed; it must exit 0.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "podometer exited with {status}; log:\n{}", self.log_text());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("podometer ignored SIGTERM for 30 s; log:\n{}", self.log_text());
        }
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
