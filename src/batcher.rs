//! Splits a sweep into OTLP export requests small enough for a receiver to take.
//!
//! A request holds at most `max_points` data points and encodes to at most `max_bytes` (gRPC
//! servers refuse messages over 4 MiB by default). Resources are packed whole into requests
//! in sweep order; a resource too large for one request is split across several, each
//! carrying the resource's attributes again. Sweeps are never merged: one sweep, one or more
//! requests, so a receiver sees each sweep's timestamp complete in one place.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric, ResourceMetrics};
use prost::Message;

use crate::encode::encode_resource;
use crate::model::{Resource, Sweep};

pub const DEFAULT_MAX_POINTS: usize = 8192;
/// gRPC's default 4 MiB receive limit, less headroom for the frame and metadata.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

#[derive(Debug, Clone)]
pub struct Batcher {
    max_points: usize,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new(DEFAULT_MAX_POINTS, DEFAULT_MAX_BYTES)
    }
}

/// Bytes a `ResourceMetrics` adds to a request: field tag, length prefix, body.
fn framed_len(rm: &ResourceMetrics) -> usize {
    let len = rm.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

pub fn point_count(rm: &ResourceMetrics) -> usize {
    rm.scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(metric::Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

pub fn request_point_count(request: &ExportMetricsServiceRequest) -> usize {
    request.resource_metrics.iter().map(point_count).sum()
}

impl Batcher {
    /// Limits below one point or a few bytes are raised to the smallest workable values.
    pub fn new(max_points: usize, max_bytes: usize) -> Batcher {
        Batcher { max_points: max_points.max(1), max_bytes: max_bytes.max(64) }
    }

    pub fn split(&self, sweep: &Sweep) -> Vec<ExportMetricsServiceRequest> {
        let mut requests = Vec::new();
        let mut current: Vec<ResourceMetrics> = Vec::new();
        let (mut points, mut bytes) = (0usize, 0usize);
        for resource in &sweep.resources {
            if resource.points.is_empty() {
                continue;
            }
            let mut pieces = Vec::new();
            self.encode_fitting(resource, sweep, &mut pieces);
            for (rm, p, b) in pieces {
                if !current.is_empty() && (points + p > self.max_points || bytes + b > self.max_bytes) {
                    requests
                        .push(ExportMetricsServiceRequest { resource_metrics: std::mem::take(&mut current) });
                    points = 0;
                    bytes = 0;
                }
                points += p;
                bytes += b;
                current.push(rm);
            }
        }
        if !current.is_empty() {
            requests.push(ExportMetricsServiceRequest { resource_metrics: current });
        }
        requests
    }

    /// [`Batcher::split`] straight to encoded requests, written from the model by
    /// [`crate::encode::wire`] without building prost messages; the same requests, byte for
    /// byte what `split` + `encode_to_vec` would decode to. Only a resource too large for one
    /// request takes `split`'s halving path.
    pub fn split_encoded(&self, sweep: &Sweep) -> Vec<bytes::Bytes> {
        let time = crate::encode::unix_nanos(sweep.time);
        let mut writer = crate::encode::wire::Writer::default();
        let mut requests = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        let (mut points, mut bytes) = (0usize, 0usize);
        let flush = |current: &mut Vec<u8>, requests: &mut Vec<bytes::Bytes>| {
            requests.push(bytes::Bytes::from(std::mem::take(current)));
        };
        for (index, resource) in sweep.resources.iter().enumerate() {
            if resource.points.is_empty() {
                continue;
            }
            let n = resource.points.len();
            let body = writer.resource_metrics_len(resource);
            let framed = 1 + prost::encoding::encoded_len_varint(body as u64) + body;
            if n <= self.max_points && framed <= self.max_bytes {
                if !current.is_empty() && (points + n > self.max_points || bytes + framed > self.max_bytes) {
                    flush(&mut current, &mut requests);
                    points = 0;
                    bytes = 0;
                }
                if current.capacity() == 0 {
                    // Sized once per request from this resource, as if the ones that follow
                    // were alike: growing by doubling copied each request about twice over.
                    let alike = (sweep.resources.len() - index).min((self.max_points / n).max(1));
                    current.reserve(framed.saturating_mul(alike).min(self.max_bytes));
                }
                writer.put_resource_metrics(resource, time, body, &mut current);
                points += n;
                bytes += framed;
                continue;
            }
            let mut pieces = Vec::new();
            self.encode_fitting(resource, sweep, &mut pieces);
            for (rm, p, b) in pieces {
                if !current.is_empty() && (points + p > self.max_points || bytes + b > self.max_bytes) {
                    flush(&mut current, &mut requests);
                    points = 0;
                    bytes = 0;
                }
                prost::encoding::message::encode(1, &rm, &mut current);
                points += p;
                bytes += b;
            }
        }
        if !current.is_empty() {
            requests.push(bytes::Bytes::from(current));
        }
        requests
    }

    /// Encodes `resource` as one `ResourceMetrics` when it fits the limits, else halves its
    /// points and tries each half: one encoding for a normal resource (no copy of its points),
    /// O(n log n) for an oversized one.
    /// Each piece comes with its point count and framed size.
    fn encode_fitting(
        &self,
        resource: &Resource,
        sweep: &Sweep,
        out: &mut Vec<(ResourceMetrics, usize, usize)>,
    ) {
        let n = resource.points.len();
        if n <= self.max_points {
            let rm = encode_resource(resource, sweep.time);
            let len = framed_len(&rm);
            if len <= self.max_bytes || n == 1 {
                if len > self.max_bytes {
                    tracing::warn!(
                        bytes = len,
                        limit = self.max_bytes,
                        "A single data point encodes larger than the request limit; sending it alone."
                    );
                }
                out.push((rm, n, len));
                return;
            }
        }
        let mid = if n <= self.max_points { n / 2 } else { self.max_points.min(n / 2).max(1) };
        for points in [&resource.points[..mid], &resource.points[mid..]] {
            let part = Resource {
                id: resource.id.clone(),
                attributes: resource.attributes.clone(),
                points: points.to_vec(),
            };
            self.encode_fitting(&part, sweep, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, ResourceId, Value};
    use crate::semconv;
    use std::time::{Duration, SystemTime};

    fn sweep(resources: &[(&str, usize)]) -> Sweep {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        for (id, n) in resources {
            let r = sweep.resource_mut(ResourceId::Container((*id).to_owned()), || {
                vec![(semconv::CONTAINER_ID, (*id).into())]
            });
            for i in 0..*n {
                r.points.push(
                    Point::new(&semconv::CONTAINER_NETWORK.io, Value::Int(i as i64))
                        .with(semconv::NETWORK_INTERFACE_NAME, format!("eth{i}"))
                        .with(semconv::NETWORK_IO_DIRECTION, semconv::DIRECTION_RECEIVE),
                );
            }
        }
        sweep
    }

    /// (container id, interface name) of every point, in order, across requests.
    fn flatten(requests: &[ExportMetricsServiceRequest]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for req in requests {
            for rm in &req.resource_metrics {
                let id = rm.resource.as_ref().unwrap().attributes[0].value.clone().unwrap();
                let id = format!("{:?}", id.value.unwrap());
                for m in &rm.scope_metrics[0].metrics {
                    let Some(metric::Data::Sum(s)) = &m.data else { panic!("network io is a sum") };
                    for dp in &s.data_points {
                        out.push((id.clone(), format!("{:?}", dp.attributes[0].value)));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_small_sweep_is_one_request_with_one_resource_metrics_per_resource() {
        let s = sweep(&[("a", 3), ("b", 2)]);
        let requests = Batcher::default().split(&s);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].resource_metrics.len(), 2);
        assert_eq!(request_point_count(&requests[0]), 5);
        assert_eq!(requests[0], crate::encode::encode_sweep(&s), "same as encoding the sweep whole");
    }

    #[test]
    fn point_limit_packs_whole_resources_and_splits_a_big_one() {
        let s = sweep(&[("a", 3), ("b", 3), ("c", 10), ("d", 1)]);
        let requests = Batcher::new(4, DEFAULT_MAX_BYTES).split(&s);
        for r in &requests {
            assert!(request_point_count(r) <= 4, "{} points", request_point_count(r));
        }
        // Nothing lost, nothing duplicated, order kept.
        assert_eq!(flatten(&requests), flatten(&[crate::encode::encode_sweep(&s)]));
        // The oversized resource appears in several requests, its attributes repeated.
        let c_parts: usize = requests
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .filter(|rm| format!("{:?}", rm.resource).contains("\"c\""))
            .count();
        assert!(c_parts >= 3, "10 points at 4 per request need at least 3 parts, got {c_parts}");
        assert_eq!(requests[0].resource_metrics.len(), 1, "a (3) and b (3) do not fit together in 4");
    }

    #[test]
    fn byte_limit_holds_for_every_request() {
        let s = sweep(&[("a", 50), ("b", 200), ("c", 7)]);
        let whole = crate::encode::encode_sweep(&s).encoded_len();
        let limit = whole / 5;
        let requests = Batcher::new(DEFAULT_MAX_POINTS, limit).split(&s);
        assert!(requests.len() >= 5, "{} requests for {whole} bytes at {limit}", requests.len());
        for r in &requests {
            assert!(r.encoded_len() <= limit, "{} > {limit}", r.encoded_len());
        }
        assert_eq!(flatten(&requests), flatten(&[crate::encode::encode_sweep(&s)]));
        for r in &requests {
            for rm in &r.resource_metrics {
                for dp in rm.scope_metrics[0].metrics.iter().flat_map(|m| match &m.data {
                    Some(metric::Data::Sum(s)) => s.data_points.iter(),
                    _ => panic!("sum expected"),
                }) {
                    assert_eq!(dp.time_unix_nano, crate::encode::unix_nanos(s.time));
                }
            }
        }
    }

    #[test]
    fn empty_sweep_and_empty_resources_make_no_request() {
        assert!(Batcher::default().split(&sweep(&[])).is_empty());
        assert!(Batcher::default().split(&sweep(&[("a", 0)])).is_empty());
    }

    #[test]
    fn split_encoded_gives_the_requests_split_gives() {
        let sweep = sweep(&[("a", 3), ("b", 40), ("c", 1), ("d", 7), ("e", 0), ("f", 12)]);
        for batcher in
            [Batcher::default(), Batcher::new(10, 1 << 20), Batcher::new(1000, 900), Batcher::new(5, 300)]
        {
            let expected: Vec<Vec<u8>> = batcher.split(&sweep).iter().map(|r| r.encode_to_vec()).collect();
            let got: Vec<Vec<u8>> = batcher.split_encoded(&sweep).iter().map(|b| b.to_vec()).collect();
            assert_eq!(got.len(), expected.len(), "{batcher:?}");
            for (g, e) in got.iter().zip(&expected) {
                let g = ExportMetricsServiceRequest::decode(g.as_slice()).expect("decodes");
                let e = ExportMetricsServiceRequest::decode(e.as_slice()).expect("decodes");
                assert_eq!(g, e, "{batcher:?}");
            }
        }
    }
}
