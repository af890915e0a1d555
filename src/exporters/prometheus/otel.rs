//! `naming: otel`: the OpenTelemetry → Prometheus compatibility rules
//! (opentelemetry-specification `compatibility/prometheus_and_openmetrics.md`).
//!
//! - Metric names: every character outside `[a-zA-Z0-9_:]` becomes `_`; the unit is appended
//!   as a word (`s` → `_seconds`, `By` → `_bytes`; annotations in braces such as `{packet}`
//!   are dropped); monotonic cumulative sums get `_total`.
//! - Attribute keys: the same character rule (`cpu.mode` → `cpu_mode`).
//! - Resource attributes: one `target_info` sample per resource carries all of them; a
//!   configurable set is also copied onto every series as labels (promoted). `container.id`
//!   and `k8s.pod.uid` are always labels: they identify the resource, so the series of two
//!   containers or pods never collide.

use std::collections::HashMap;
use std::sync::Arc;

use super::text::{attr_text, sanitize_label, FamilyKind, Format, Writer};
use crate::model::{MetricDesc, MetricKind, Resource, Sweep, Value};
use crate::semconv;

/// Always labels: the resource's identity.
const IDENTIFYING: [&str; 2] = [semconv::CONTAINER_ID, semconv::K8S_POD_UID];

/// The Prometheus name of a metric under the OpenTelemetry rules.
pub fn metric_name(desc: &MetricDesc) -> String {
    let mut name: String = desc
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' })
        .collect();
    let unit = match desc.unit {
        "s" => Some("seconds"),
        "ms" => Some("milliseconds"),
        "By" => Some("bytes"),
        "1" if desc.kind == MetricKind::Gauge => Some("ratio"),
        "1" => None,
        u if u.starts_with('{') => None,
        "" => None,
        // Not used by podometer today; kept readable rather than guessed.
        _ => None,
    };
    if let Some(unit) = unit {
        if !name.ends_with(&format!("_{unit}")) {
            name.push('_');
            name.push_str(unit);
        }
    }
    if desc.kind == MetricKind::Counter && !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// Label names and values of one resource that go on each of its series.
fn resource_labels(resource: &Resource, promoted: &[String]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for key in IDENTIFYING.iter().copied().chain(promoted.iter().map(String::as_str)) {
        let Some(value) = resource.attribute(key) else { continue };
        let name = sanitize_label(key);
        if labels.iter().any(|(n, _)| *n == name) {
            continue;
        }
        labels.push((name, attr_text(value).into_owned()));
    }
    labels
}

/// Renders the sweeps (one per pipeline, all of the same instant).
pub fn render(
    sweeps: &[Arc<Sweep>],
    format: Format,
    promoted: &[String],
    timestamps: bool,
    target_info: bool,
) -> String {
    let time = sweeps.first().map(|s| s.time).filter(|_| timestamps);
    let points: usize = sweeps.iter().map(|s| s.point_count()).sum();
    let mut w = Writer::new(format, time, points * 160);
    let resources: Vec<&Resource> = sweeps.iter().flat_map(|s| s.resources.iter()).collect();
    let labels: Vec<Vec<(String, String)>> = resources.iter().map(|r| resource_labels(r, promoted)).collect();

    // Group points by metric so each family is written once, in order of first appearance.
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    let mut families: Vec<(&'static MetricDesc, Vec<(usize, usize)>)> = Vec::new();
    for (ri, r) in resources.iter().enumerate() {
        for (pi, p) in r.points.iter().enumerate() {
            let slot = *index.entry(p.metric.name).or_insert_with(|| {
                families.push((p.metric, Vec::new()));
                families.len() - 1
            });
            families[slot].1.push((ri, pi));
        }
    }
    // Each resource's labels written out once (`name="escaped value",...`): a sample copies
    // them instead of escaping the same ids and names again for each of its ~40 points.
    let blocks: Vec<String> = labels
        .iter()
        .map(|ls| {
            let mut block = Writer::new(format, None, 256);
            for (i, (name, value)) in ls.iter().enumerate() {
                block.label(i == 0, name, value);
            }
            block.out
        })
        .collect();
    // Every label name a resource gives; a point attribute with one of these names takes its
    // place (the slow path below), so this is checked once per attribute key, not per sample.
    let mut resource_names: Vec<&str> = Vec::new();
    for (name, _) in labels.iter().flatten() {
        if !resource_names.contains(&name.as_str()) {
            resource_names.push(name);
        }
    }
    // Label names of point attributes, sanitized once per key (keys are static strings), and
    // whether the name is also a resource label's.
    let mut names: Vec<(&'static str, String, bool)> = Vec::new();
    fn label_of(
        names: &mut Vec<(&'static str, String, bool)>,
        resource_names: &[&str],
        key: &'static str,
    ) -> usize {
        match names.iter().position(|(k, _, _)| std::ptr::eq(*k, key)) {
            Some(i) => i,
            None => {
                let name = sanitize_label(key);
                let clash = resource_names.contains(&name.as_str());
                names.push((key, name, clash));
                names.len() - 1
            }
        }
    }
    for (desc, members) in &families {
        let name = metric_name(desc);
        let kind = if desc.kind == MetricKind::Counter { FamilyKind::Counter } else { FamilyKind::Gauge };
        w.family(&name, kind, desc.description);
        for &(ri, pi) in members {
            let point = &resources[ri].points[pi];
            w.start_sample(&name);
            let mut first = true;
            let mut own: [usize; 8] = [usize::MAX; 8];
            let mut clash = point.attributes.len() > own.len();
            for (i, (key, value)) in point.attributes.iter().enumerate() {
                let label = label_of(&mut names, &resource_names, key);
                if i < own.len() {
                    own[i] = label;
                }
                clash |= names[label].2;
                w.label(first, &names[label].1, &attr_text(value));
                first = false;
            }
            if !clash {
                if !blocks[ri].is_empty() {
                    if !first {
                        w.out.push(',');
                    }
                    w.out.push_str(&blocks[ri]);
                }
            } else {
                for (label, value) in &labels[ri] {
                    // A point attribute of the same name wins over a promoted resource attribute.
                    if own.iter().any(|&i| i != usize::MAX && names[i].1 == *label) {
                        continue;
                    }
                    w.label(first, label, value);
                    first = false;
                }
            }
            w.end_sample(point.value);
        }
    }
    if target_info && !resources.is_empty() {
        w.family(
            "target_info",
            FamilyKind::Info,
            "Target metadata: the resource attributes of each container and pod.",
        );
        for r in &resources {
            w.start_sample("target_info");
            let mut seen: Vec<String> = Vec::with_capacity(r.attributes.len());
            let ordered = IDENTIFYING
                .iter()
                .filter_map(|k| r.attribute(k).map(|v| (*k, v)))
                .chain(r.attributes.iter().filter(|(k, _)| !IDENTIFYING.contains(k)).map(|(k, v)| (*k, v)));
            for (key, value) in ordered {
                let label = sanitize_label(key);
                if seen.contains(&label) {
                    continue;
                }
                w.label(seen.is_empty(), &label, &attr_text(value));
                seen.push(label);
            }
            w.end_sample(Value::Int(1));
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, ResourceId};
    use std::time::{Duration, SystemTime};

    #[test]
    fn names_get_unit_and_total_suffixes() {
        assert_eq!(metric_name(&semconv::CONTAINER.cpu_time), "container_cpu_time_seconds_total");
        assert_eq!(metric_name(&semconv::POD.memory_usage), "k8s_pod_memory_usage_bytes");
        assert_eq!(metric_name(&semconv::CONTAINER.pids_count), "container_pids_count");
        assert_eq!(metric_name(&semconv::POD_NETWORK.packets), "k8s_pod_network_packet_count_total");
        assert_eq!(
            metric_name(&semconv::CONTAINER.cpu_throttling_throttled_time),
            "container_cpu_throttling_data_throttled_time_seconds_total"
        );
        assert_eq!(metric_name(&semconv::CONTAINER.memory_oom_kills), "container_memory_oom_kills_total");
    }

    #[test]
    fn identifying_and_promoted_attributes_are_labels_and_everything_is_in_target_info() {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        for id in ["a", "b"] {
            let r = sweep.resource_mut(ResourceId::Container(id.into()), || {
                vec![
                    (semconv::CONTAINER_ID, id.into()),
                    (semconv::K8S_POD_UID, "uid-1".into()),
                    (semconv::K8S_POD_NAME, "web".into()),
                    (semconv::CONTAINER_RUNTIME_NAME, "containerd".into()),
                ]
            });
            r.points.push(
                Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.5)).with(semconv::CPU_MODE, "user"),
            );
        }
        let promoted = vec![semconv::K8S_POD_NAME.to_owned()];
        let text = render(&[Arc::new(sweep)], Format::Text, &promoted, true, true);
        assert!(text.contains("# TYPE container_cpu_time_seconds_total counter\n"), "{text}");
        assert!(
            text.contains("container_cpu_time_seconds_total{cpu_mode=\"user\",container_id=\"a\",k8s_pod_uid=\"uid-1\",k8s_pod_name=\"web\"} 1.5 5000\n"),
            "{text}"
        );
        assert!(text.contains("container_id=\"b\""), "{text}");
        assert!(!text.contains("container_runtime_name=\"containerd\"} 1.5"), "not promoted: {text}");
        assert!(
            text.contains("target_info{container_id=\"a\",k8s_pod_uid=\"uid-1\",k8s_pod_name=\"web\",container_runtime_name=\"containerd\"} 1 5000\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 2, "one family each: {text}");
    }

    #[test]
    fn a_point_attribute_takes_the_place_of_a_promoted_label_of_the_same_name() {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        let r = sweep.resource_mut(ResourceId::Container("a".into()), || {
            vec![(semconv::CONTAINER_ID, "a".into()), (semconv::CPU_MODE, "from-resource".into())]
        });
        r.points.push(
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.5)).with(semconv::CPU_MODE, "user"),
        );
        r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(7)));
        let promoted = vec![semconv::CPU_MODE.to_owned()];
        let text = render(&[Arc::new(sweep)], Format::Text, &promoted, false, false);
        assert!(
            text.contains("container_cpu_time_seconds_total{cpu_mode=\"user\",container_id=\"a\"} 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("container_memory_usage_bytes{container_id=\"a\",cpu_mode=\"from-resource\"} 7\n"),
            "{text}"
        );
    }
}
