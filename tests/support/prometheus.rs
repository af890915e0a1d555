//! A real Prometheus server (Debian 12's 2.42, unpacked by scripts/testbed.sh) scraping
//! loopback targets, and `promtool check metrics`. Stopped by its pid on drop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::prerequisite;
use super::receivers::{free_port, http_get, stop_child, urlencode, wait_until};

pub const PROMETHEUS_ENV: &str = "PODOMETER_PROMETHEUS";
pub const PROMTOOL_ENV: &str = "PODOMETER_PROMTOOL";

fn binary(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file())
}

pub fn prometheus_available() -> bool {
    prerequisite(binary(PROMETHEUS_ENV).is_some(), "prometheus binary in $PODOMETER_PROMETHEUS")
        && prerequisite(binary(PROMTOOL_ENV).is_some(), "promtool binary in $PODOMETER_PROMTOOL")
}

/// One raw sample series from a range query.
#[derive(Debug, Clone)]
pub struct PromSeries {
    pub labels: BTreeMap<String, String>,
    /// (timestamp in ms, value)
    pub samples: Vec<(i64, f64)>,
}

pub struct Prometheus {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    /// Scrapes each `(job, port)` on 127.0.0.1 every `interval`.
    pub fn start(targets: &[(&str, u16)], interval: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\nscrape_configs:\n"
        );
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary(PROMETHEUS_ENV).expect("checked by prometheus_available()"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prom = Prometheus { port, dir, child: Some(child) };
        wait_until("Prometheus", Duration::from_secs(30), || {
            matches!(http_get(port, "/-/ready"), Ok((200, _)))
        });
        prom
    }

    /// Every raw sample of the series matching `selector` in the last `range` (e.g. `5m`).
    pub fn raw_samples(&self, selector: &str, range: &str) -> Vec<PromSeries> {
        let query = format!("/api/v1/query?query={}", urlencode(&format!("{selector}[{range}]")));
        let (status, body) = http_get(self.port, &query).expect("query Prometheus");
        assert_eq!(status, 200, "query {selector}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        assert_eq!(v["data"]["resultType"], "matrix", "{body}");
        v["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| PromSeries {
                labels: s["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                samples: s["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|pair| {
                        let ts = pair[0].as_f64().expect("timestamp");
                        let value: f64 = pair[1].as_str().expect("value string").parse().expect("float");
                        ((ts * 1000.0).round() as i64, value)
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(10));
        }
    }
}

/// `promtool check metrics` of an exposition: (exit code, output).
pub fn promtool_check_metrics(text: &str) -> (i32, String) {
    let mut child = Command::new(binary(PROMTOOL_ENV).expect("checked by prometheus_available()"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    let text = text.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("promtool output");
    let _ = writer.join();
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), output)
}

/// GET with an `Accept` header over HTTP/1.0: (status, content type, body).
pub fn get_with_accept(port: u16, path: &str, accept: &str) -> std::io::Result<(u16, String, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_owned()))
}
