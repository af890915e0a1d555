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
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
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

/// Writes protobuf straight from the model, with no intermediate prost messages: building an
/// `ExportMetricsServiceRequest` allocated a `String` per key, value, metric name, description
/// and unit and a `Vec` per point, per resource per sweep, only to encode and drop them. The
/// output decodes to exactly what [`encode_resource`] builds (the tests compare the two).
pub mod wire {
    use prost::encoding::{encoded_len_varint, WireType};

    /// A field key in one byte: every tag written here is below 16. prost's `encode_key` goes
    /// through its general varint loop, the largest item in a profile of this writer.
    #[inline]
    fn encode_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
        debug_assert!(tag < 16, "one-byte keys only");
        buf.push(((tag << 3) | wire_type as u32) as u8);
    }

    /// A varint written straight into the Vec (prost's goes through `BufMut` byte by byte).
    #[inline]
    fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    use super::{semconv, unix_nanos};
    use crate::model::{AttrValue, MetricDesc, MetricKind, Point, Resource, Value};

    /// Field tags below 16 take one byte.
    fn len_field(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }

    fn str_field(s: &str) -> usize {
        if s.is_empty() {
            0
        } else {
            len_field(s.len())
        }
    }

    fn put_len(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }

    fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
        if !s.is_empty() {
            put_len(tag, s.len(), buf);
            buf.extend_from_slice(s.as_bytes());
        }
    }

    fn put_fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    /// `AnyValue` body.
    fn any_len(v: &AttrValue) -> usize {
        match v {
            AttrValue::Str(s) => len_field(s.len()),
            AttrValue::Int(i) => 1 + encoded_len_varint(*i as u64),
            AttrValue::Bool(_) => 2,
            AttrValue::StrArray(items) => len_field(array_len(items)),
        }
    }

    /// `ArrayValue` body: one `AnyValue{string_value}` per item.
    fn array_len(items: &[String]) -> usize {
        items.iter().map(|s| len_field(len_field(s.len()))).sum()
    }

    fn put_any(v: &AttrValue, buf: &mut Vec<u8>) {
        match v {
            AttrValue::Str(s) => {
                // string_value is always written, even empty: it is a oneof member.
                put_len(1, s.len(), buf);
                buf.extend_from_slice(s.as_bytes());
            }
            AttrValue::Bool(b) => {
                encode_key(2, WireType::Varint, buf);
                encode_varint(u64::from(*b), buf);
            }
            AttrValue::Int(i) => {
                encode_key(3, WireType::Varint, buf);
                encode_varint(*i as u64, buf);
            }
            AttrValue::StrArray(items) => {
                put_len(5, array_len(items), buf);
                for s in items {
                    put_len(1, len_field(s.len()), buf);
                    put_len(1, s.len(), buf);
                    buf.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    /// `KeyValue` body.
    fn kv_len(key: &str, v: &AttrValue) -> usize {
        str_field(key) + len_field(any_len(v))
    }

    fn put_kv(key: &str, v: &AttrValue, buf: &mut Vec<u8>) {
        put_str(1, key, buf);
        put_len(2, any_len(v), buf);
        put_any(v, buf);
    }

    /// `NumberDataPoint` body.
    fn point_len(p: &Point) -> usize {
        let attrs: usize = p.attributes.iter().map(|(k, v)| len_field(kv_len(k, v))).sum();
        let start = if p.start_time.map(unix_nanos).unwrap_or(0) != 0 { 9 } else { 0 };
        attrs + start + 9 + 9
    }

    fn put_point(p: &Point, time: u64, buf: &mut Vec<u8>) {
        let start = p.start_time.map(unix_nanos).unwrap_or(0);
        if start != 0 {
            put_fixed64(2, start, buf);
        }
        put_fixed64(3, time, buf);
        match p.value {
            Value::Double(v) => put_fixed64(4, v.to_bits(), buf),
            Value::Int(v) => put_fixed64(6, v as u64, buf),
        }
        for (k, v) in &p.attributes {
            put_len(7, kv_len(k, v), buf);
            put_kv(k, v, buf);
        }
    }

    /// Points are grouped by metric name, as [`super::encode_resource`] does; the address
    /// comparison settles nearly every case without comparing strings.
    fn same_metric(p: &Point, desc: &MetricDesc) -> bool {
        std::ptr::eq(p.metric, desc) || p.metric.name == desc.name
    }

    fn scope_len() -> usize {
        str_field(semconv::SCOPE_NAME) + str_field(env!("CARGO_PKG_VERSION"))
    }

    /// One distinct metric of a resource, with the lengths its header needs.
    struct MetricSlot<'a> {
        desc: &'a MetricDesc,
        /// `Sum` or `Gauge` body length.
        data_len: usize,
        /// `Metric` body length.
        body_len: usize,
        /// Its points: `order[start..start + count]`.
        start: usize,
        count: usize,
    }

    /// Reusable scratch for [`Writer::resource_metrics_len`] and
    /// [`Writer::put_resource_metrics`]; one per batcher call.
    ///
    /// Every length prefix is computed once per resource, in one pass over its points, and
    /// kept for the writing pass (nested messages need their body length before their body;
    /// computing it at each level again cost more than writing the bytes).
    #[derive(Default)]
    pub struct Writer<'a> {
        /// The distinct metrics in the order they first appear, as
        /// [`super::encode_resource`] groups them.
        metrics: Vec<MetricSlot<'a>>,
        /// Per point: the index of its metric in `metrics` and its `NumberDataPoint` body
        /// length.
        points: Vec<(usize, usize)>,
        /// Point indices grouped by metric, in point order within a metric.
        order: Vec<usize>,
        /// `Resource` body length (its attributes).
        resource_len: usize,
        /// `ScopeMetrics` body length.
        scope_metrics_len: usize,
    }

    impl<'a> Writer<'a> {
        /// The `ResourceMetrics` body length of `resource`; keeps the nested lengths for
        /// [`Writer::put_resource_metrics`].
        pub fn resource_metrics_len(&mut self, resource: &'a Resource) -> usize {
            self.metrics.clear();
            self.points.clear();
            let mut last = 0;
            for p in &resource.points {
                // Points of one metric usually come together: try the previous one first.
                let m = match self.metrics.get(last) {
                    Some(slot) if same_metric(p, slot.desc) => last,
                    _ => match self.metrics.iter().position(|slot| same_metric(p, slot.desc)) {
                        Some(m) => m,
                        None => {
                            self.metrics.push(MetricSlot {
                                desc: p.metric,
                                data_len: 0,
                                body_len: 0,
                                start: 0,
                                count: 0,
                            });
                            self.metrics.len() - 1
                        }
                    },
                };
                last = m;
                let len = point_len(p);
                let slot = &mut self.metrics[m];
                slot.data_len += len_field(len);
                slot.count += 1;
                self.points.push((m, len));
            }
            let mut start = 0;
            let mut metrics_len = 0;
            for slot in &mut self.metrics {
                if slot.desc.kind == MetricKind::Counter {
                    // aggregation_temporality = CUMULATIVE (2), is_monotonic = true.
                    slot.data_len += 2 + 2;
                }
                slot.body_len = str_field(slot.desc.name)
                    + str_field(slot.desc.description)
                    + str_field(slot.desc.unit)
                    + len_field(slot.data_len);
                metrics_len += len_field(slot.body_len);
                slot.start = start;
                start += slot.count;
                // From here on `count` is the next free place of this metric in `order`.
                slot.count = slot.start;
            }
            self.order.clear();
            self.order.resize(self.points.len(), 0);
            for (i, &(m, _)) in self.points.iter().enumerate() {
                let slot = &mut self.metrics[m];
                self.order[slot.count] = i;
                slot.count += 1;
            }
            for slot in &mut self.metrics {
                slot.count -= slot.start;
            }
            self.resource_len = resource.attributes.iter().map(|(k, v)| len_field(kv_len(k, v))).sum();
            self.scope_metrics_len = len_field(scope_len()) + metrics_len;
            len_field(self.resource_len) + len_field(self.scope_metrics_len)
        }

        /// Appends `resource` as field 1 of `ExportMetricsServiceRequest` (tag, length, body);
        /// call right after [`Writer::resource_metrics_len`] for the same resource.
        pub fn put_resource_metrics(
            &self,
            resource: &Resource,
            time: u64,
            body_len: usize,
            buf: &mut Vec<u8>,
        ) {
            debug_assert_eq!(self.points.len(), resource.points.len(), "lengths of this resource");
            buf.reserve(len_field(body_len));
            put_len(1, body_len, buf);
            let body_start = buf.len();
            put_len(1, self.resource_len, buf);
            for (k, v) in &resource.attributes {
                put_len(1, kv_len(k, v), buf);
                put_kv(k, v, buf);
            }
            put_len(2, self.scope_metrics_len, buf);
            put_len(1, scope_len(), buf);
            put_str(1, semconv::SCOPE_NAME, buf);
            put_str(2, env!("CARGO_PKG_VERSION"), buf);
            for slot in &self.metrics {
                let desc = slot.desc;
                put_len(2, slot.body_len, buf);
                put_str(1, desc.name, buf);
                put_str(2, desc.description, buf);
                put_str(3, desc.unit, buf);
                let tag = match desc.kind {
                    MetricKind::Counter => 7,
                    MetricKind::Gauge => 5,
                };
                put_len(tag, slot.data_len, buf);
                for &i in &self.order[slot.start..slot.start + slot.count] {
                    put_len(1, self.points[i].1, buf);
                    put_point(&resource.points[i], time, buf);
                }
                if desc.kind == MetricKind::Counter {
                    encode_key(2, WireType::Varint, buf);
                    encode_varint(2, buf);
                    encode_key(3, WireType::Varint, buf);
                    encode_varint(1, buf);
                }
            }
            debug_assert_eq!(buf.len() - body_start, body_len, "computed and written lengths agree");
        }
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

    #[test]
    fn the_wire_writer_decodes_to_what_the_message_encoder_builds() {
        use prost::Message;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut sweep = Sweep::new(t0 + Duration::from_secs(10));
        let r = sweep.resource_mut(ResourceId::Container("c1".into()), || {
            vec![
                (semconv::CONTAINER_ID, "c1".into()),
                ("k.int", AttrValue::Int(-7)),
                ("k.bool", AttrValue::Bool(true)),
                ("k.empty", AttrValue::from(String::new())),
                ("k.tags", AttrValue::StrArray(vec!["a".into(), String::new(), "ccc".into()])),
            ]
        });
        let mut user =
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.5)).with(semconv::CPU_MODE, "user");
        user.start_time = Some(t0);
        r.points.push(user);
        r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(0)));
        r.points.push(Point::new(&semconv::CONTAINER.memory_rss, Value::Int(-1)));
        let mut sys =
            Point::new(&semconv::CONTAINER.cpu_time, Value::Double(0.0)).with(semconv::CPU_MODE, "system");
        sys.start_time = Some(UNIX_EPOCH);
        r.points.push(sys);
        let disk = Point::new(&semconv::CONTAINER.disk_io, Value::Int(i64::MAX))
            .with(semconv::DISK_IO_DIRECTION, "read")
            .with(semconv::SYSTEM_DEVICE, "8:0");
        r.points.push(disk);
        sweep
            .resource_mut(ResourceId::Pod("p1".into()), Vec::new)
            .points
            .push(Point::new(&semconv::POD.memory_usage, Value::Int(1 << 40)));

        let time = unix_nanos(sweep.time);
        let mut buf = Vec::new();
        for resource in &sweep.resources {
            let mut w = wire::Writer::default();
            let len = w.resource_metrics_len(resource);
            w.put_resource_metrics(resource, time, len, &mut buf);
        }
        let decoded = ExportMetricsServiceRequest::decode(buf.as_slice()).expect("decodes");
        assert_eq!(decoded, encode_sweep(&sweep));
    }
}
