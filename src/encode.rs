//! Turns a [`Sweep`] into OTLP messages: one `ResourceMetrics` per container or pod, one scope
//! `podometer`, cumulative sums with each point's own start time, every point stamped with the
//! sweep's time.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;

use crate::model::{AttrValue, MetricKind, Point, Resource, Sweep, Value};
use crate::semconv;

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

pub fn key_value(key: &str, value: &AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::StrArray(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items
                .iter()
                .map(|s| AnyValue { value: Some(any_value::Value::StringValue(s.clone())) })
                .collect(),
        }),
    };
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: semconv::SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

/// Encodes one resource's points; points of the same metric share one `Metric`.
pub fn encode_resource(resource: &Resource, time: SystemTime) -> ResourceMetrics {
    let time_unix_nano = unix_nanos(time);
    let mut metrics: Vec<Metric> = Vec::new();
    for point in &resource.points {
        let data_point = encode_point(point, time_unix_nano);
        let desc = point.metric;
        let existing = metrics.iter_mut().find(|m| m.name == desc.name);
        let metric = match existing {
            Some(m) => m,
            None => {
                let data = match desc.kind {
                    MetricKind::Counter => metric::Data::Sum(Sum {
                        data_points: Vec::new(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    }),
                    MetricKind::Gauge => metric::Data::Gauge(Gauge { data_points: Vec::new() }),
                };
                metrics.push(Metric {
                    name: desc.name.to_owned(),
                    description: desc.description.to_owned(),
                    unit: desc.unit.to_owned(),
                    metadata: Vec::new(),
                    data: Some(data),
                });
                metrics.last_mut().expect("just pushed")
            }
        };
        match metric.data.as_mut() {
            Some(metric::Data::Sum(s)) => s.data_points.push(data_point),
            Some(metric::Data::Gauge(g)) => g.data_points.push(data_point),
            _ => unreachable!("encode_resource only creates sums and gauges"),
        }
    }
    ResourceMetrics {
        resource: Some(OtlpResource {
            attributes: resource.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, schema_url: String::new() }],
        schema_url: String::new(),
    }
}

fn encode_point(point: &Point, time_unix_nano: u64) -> NumberDataPoint {
    let value = match point.value {
        Value::Int(v) => number_data_point::Value::AsInt(v),
        Value::Double(v) => number_data_point::Value::AsDouble(v),
    };
    NumberDataPoint {
        attributes: point.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
        start_time_unix_nano: point.start_time.map(unix_nanos).unwrap_or(0),
        time_unix_nano,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(value),
    }
}

/// The whole sweep as one request (the `collect` command and the file exporter).
pub fn encode_sweep(sweep: &Sweep) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: sweep.resources.iter().map(|r| encode_resource(r, sweep.time)).collect(),
    }
}

/// OTLP/JSON, as the OpenTelemetry Collector's file exporter writes it: one line, no newline.
pub fn to_json_line(request: &ExportMetricsServiceRequest) -> String {
    serde_json::to_string(request).expect("OTLP messages always serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, ResourceId};
    use std::time::Duration;

    #[test]
    fn counters_become_cumulative_monotonic_sums_with_their_own_start_time() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_secs(10);
        let mut sweep = Sweep::new(t1);
        let r = sweep.resource_mut(ResourceId::Container("abc".into()), || {
            vec![(semconv::CONTAINER_ID, "abc".into())]
        });
        let mut user =
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.5)).with(semconv::CPU_MODE, "user");
        user.start_time = Some(t0);
        let mut system =
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(0.25)).with(semconv::CPU_MODE, "system");
        system.start_time = Some(t0);
        r.points.push(user);
        r.points.push(system);
        r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(4096)));

        let req = encode_sweep(&sweep);
        let json: serde_json::Value = serde_json::from_str(&to_json_line(&req)).unwrap();
        let rm = &json["resourceMetrics"][0];
        assert_eq!(rm["resource"]["attributes"][0]["key"], "container.id");
        assert_eq!(rm["resource"]["attributes"][0]["value"]["stringValue"], "abc");
        let sm = &rm["scopeMetrics"][0];
        assert_eq!(sm["scope"]["name"], "podometer");
        assert_eq!(sm["scope"]["version"], env!("CARGO_PKG_VERSION"));
        let metrics = sm["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2, "two cpu points share one metric");
        let cpu = &metrics[0];
        assert_eq!(cpu["name"], "container.cpu.time");
        assert_eq!(cpu["unit"], "s");
        assert_eq!(cpu["sum"]["aggregationTemporality"], 2);
        assert_eq!(cpu["sum"]["isMonotonic"], true);
        let dp = &cpu["sum"]["dataPoints"][1];
        assert_eq!(dp["asDouble"], 0.25);
        assert_eq!(dp["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(dp["timeUnixNano"], "1700000010000000000");
        assert_eq!(dp["attributes"][0]["value"]["stringValue"], "system");
        let mem = &metrics[1];
        assert_eq!(mem["gauge"]["dataPoints"][0]["asInt"], "4096");
    }
}
