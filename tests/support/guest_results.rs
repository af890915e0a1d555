//! Reading what the cgroup v2 guest recorded: the kernel's files before and after the sweep
//! (`name=value` lines) and the agent's OTLP JSON, and comparing a reported number with the
//! kernel's bracket. Included by path from `tests/cgroup_v2_guest.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn read_results(out: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(out.join("results.env"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One reported data point: its attributes and value.
#[derive(Debug)]
pub struct Point {
    pub attrs: HashMap<String, String>,
    pub value: f64,
}

/// The metrics of one resource: metric name → points.
pub type Metrics = HashMap<String, Vec<Point>>;

pub fn attr_map(list: &Value) -> HashMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let v = &kv["value"];
            let s = v["stringValue"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            (kv["key"].as_str().unwrap_or_default().to_string(), s)
        })
        .collect()
}

pub fn number(dp: &Value) -> f64 {
    if let Some(d) = dp["asDouble"].as_f64() {
        return d;
    }
    match &dp["asInt"] {
        Value::String(s) => s.parse().expect("asInt"),
        v => v.as_f64().expect("a data point without a value"),
    }
}

/// The resource whose attributes contain all of `want`, and none with `exclude` as a key.
pub fn resource(
    sweep: &Value,
    want: &[(&str, &str)],
    exclude: Option<&str>,
) -> Option<(HashMap<String, String>, Metrics)> {
    for rm in sweep["resourceMetrics"].as_array()? {
        let attrs = attr_map(&rm["resource"]["attributes"]);
        if !want.iter().all(|(k, v)| attrs.get(*k).map(String::as_str) == Some(*v)) {
            continue;
        }
        if exclude.is_some_and(|k| attrs.contains_key(k)) {
            continue;
        }
        let mut metrics = Metrics::new();
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten() {
                let data = if m["sum"].is_object() { &m["sum"] } else { &m["gauge"] };
                let points = data["dataPoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|dp| Point { attrs: attr_map(&dp["attributes"]), value: number(dp) })
                    .collect();
                metrics.insert(m["name"].as_str().unwrap().to_string(), points);
            }
        }
        return Some((attrs, metrics));
    }
    None
}

/// Sum of the points of `name` whose attributes include `filter`; None when the metric is absent.
pub fn value(m: &Metrics, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    let points = m.get(name)?;
    let matching: Vec<&Point> = points
        .iter()
        .filter(|p| filter.iter().all(|(k, v)| p.attrs.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    (!matching.is_empty()).then(|| matching.iter().map(|p| p.value).sum())
}

/// The kernel's files of one cgroup, read in the guest before and after the sweep.
pub struct Snap {
    pub name: String,
    pub before: PathBuf,
    pub after: PathBuf,
}

impl Snap {
    pub fn file(dir: &Path, f: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(f)).ok()
    }
    /// A `key value` field of a flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`).
    pub fn field(dir: &Path, f: &str, key: &str) -> Option<f64> {
        Self::file(dir, f)?.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }
    pub fn single(dir: &Path, f: &str) -> Option<String> {
        Self::file(dir, f).map(|s| s.trim().to_string())
    }
    /// (before, after) of a field; panics naming the file when the guest did not record it.
    pub fn pair(&self, f: &str, key: &str) -> Option<(f64, f64)> {
        match (Self::field(&self.before, f, key), Self::field(&self.after, f, key)) {
            (Some(a), Some(b)) => Some((a, b)),
            (None, None) => None,
            other => panic!("{}: {f} {key} present only on one side: {other:?}", self.name),
        }
    }
    pub fn has(&self, f: &str) -> bool {
        self.before.join(f).exists()
    }
}

pub fn within(what: &str, got: f64, lo: f64, hi: f64, slack: f64) {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    assert!(
        got >= lo - slack && got <= hi + slack,
        "{what}: reported {got}, kernel {lo}..{hi} (slack {slack})"
    );
}
