//! Splits a sweep into OTLP export requests small enough for a receiver to take.
//!
//! A request holds at most `max_points` data points and encodes to at most `max_bytes` (gRPC
//! servers refuse messages over 4 MiB by default). Resources are packed whole into requests
//! in sweep order; a resource too large for one request is split across several, each
//! carrying the resource's attributes again. Sweeps are never merged: one sweep, one or more
//! requests, so a receiver sees each sweep's timestamp complete in one place.
//!
//! With gzip on, [`Batcher::split_encoded`] compresses each request as it is written, a few
//! tens of KiB at a time, so the whole uncompressed request never exists: at 500 containers it
//! is 1.6 MB, which glibc maps fresh, faults in and unmaps every sweep (see `bound_malloc` in
//! `main.rs`), against about 260 KB compressed. The queue then holds the compressed bytes.

use std::io::Write;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric, ResourceMetrics};
use prost::Message;

use crate::exporters::otlp::encode::encode_resource;
use crate::model::{Resource, Sweep};

pub const DEFAULT_MAX_POINTS: usize = 8192;
/// gRPC's default 4 MiB receive limit, less headroom for the frame and metadata.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Uncompressed bytes gathered before they are handed to the gzip stream: large enough that
/// the stream is fed in few calls, small enough to stay under glibc's mmap threshold (so it
/// is not mapped and faulted in afresh every sweep).
const GZIP_CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Writing into memory cannot fail; the compressor could, in principle, and the sweep's
    /// requests are then not built rather than sent damaged.
    #[error("cannot gzip an export request: {0}")]
    Gzip(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Batcher {
    limits: Limits,
    /// What [`Batcher::split_encoded`] compresses with; `None` leaves requests as they are.
    gzip: Option<Gzip>,
}

/// RFC 1952's member header: magic, deflate, no flags, no modification time, no extra flags,
/// operating system unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A gzip writer kept for the batcher's life and reset between requests. zlib-rs allocates
/// its deflate state (about 300 KB, zeroed) when one is made: made per request, that was a
/// third of the I/O thread's CPU at a dozen containers (page faults, `memset`, `munmap`), most
/// of its fixed cost per sweep. The gzip header and trailer are written here around the raw
/// deflate stream, since flate2's gzip writer cannot be reset.
struct Gzip {
    level: u32,
    /// Made at the first request, then only reset.
    deflate: Option<flate2::write::DeflateEncoder<Vec<u8>>>,
    crc: flate2::Crc,
    /// A member was begun and not finished (an error cut its request short): its deflate
    /// state must not carry into the next.
    open: bool,
}

impl Gzip {
    fn new(level: u32) -> Gzip {
        Gzip { level, deflate: None, crc: flate2::Crc::new(), open: false }
    }

    /// Starts a member written into `out`.
    fn begin(&mut self, mut out: Vec<u8>) {
        out.extend_from_slice(&GZIP_HEADER);
        self.crc.reset();
        let abandoned = std::mem::replace(&mut self.open, true);
        match &mut self.deflate {
            Some(deflate) if abandoned => {
                // A fresh state: rare (only after an error), and it cannot fail as a reset could.
                *deflate = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(self.level));
            }
            Some(deflate) => *deflate.get_mut() = out,
            None => {
                let level = flate2::Compression::new(self.level);
                self.deflate = Some(flate2::write::DeflateEncoder::new(out, level));
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.crc.update(data);
        match &mut self.deflate {
            Some(deflate) => deflate.write_all(data),
            None => Err(std::io::Error::other("gzip member written before it was begun")),
        }
    }

    /// Ends the member and hands it over; the deflate state is reset for the next one.
    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        let Some(deflate) = &mut self.deflate else {
            return Err(std::io::Error::other("gzip member finished before it was begun"));
        };
        let mut out = deflate.reset(Vec::new())?;
        self.open = false;
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Ok(out)
    }
}

impl Clone for Gzip {
    /// The same level; the state is made afresh at the clone's first request.
    fn clone(&self) -> Gzip {
        Gzip::new(self.level)
    }
}

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gzip").field("level", &self.level).finish_non_exhaustive()
    }
}

/// One request being written, and what it holds so far (uncompressed `bytes`).
struct RequestBuf<'g> {
    gzip: Option<&'g mut Gzip>,
    /// The request (without gzip), or its bytes not yet handed to `gzip`.
    buf: Vec<u8>,
    points: usize,
    bytes: usize,
}

impl<'g> RequestBuf<'g> {
    fn new(gzip: Option<&'g mut Gzip>) -> RequestBuf<'g> {
        RequestBuf { gzip, buf: Vec::new(), points: 0, bytes: 0 }
    }

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Starts a request expected to hold about `estimate` uncompressed bytes.
    fn begin(&mut self, estimate: usize) {
        match &mut self.gzip {
            None => self.buf.reserve(estimate),
            Some(gzip) => {
                // gzip level 1 gives 8-10x on these requests (docs/performance.md);
                // a short guess only costs a `realloc`, which moves a large block's pages
                // without copying them.
                gzip.begin(Vec::with_capacity(estimate / 8));
                // Room for a full chunk and the resource that overfills it.
                self.buf.reserve((2 * GZIP_CHUNK).min(estimate));
            }
        }
    }

    /// Where the next resource is written.
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Records what was just written; with gzip, hands a full chunk to the stream.
    fn wrote(&mut self, points: usize, bytes: usize) -> Result<(), BatchError> {
        self.points += points;
        self.bytes += bytes;
        if self.buf.len() >= GZIP_CHUNK {
            if let Some(gzip) = &mut self.gzip {
                gzip.write(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// The finished request; leaves this buffer empty for the next (the chunk buffer is kept).
    fn finish(&mut self) -> Result<bytes::Bytes, BatchError> {
        self.points = 0;
        self.bytes = 0;
        let Some(gzip) = &mut self.gzip else {
            return Ok(bytes::Bytes::from(std::mem::take(&mut self.buf)));
        };
        gzip.write(&self.buf)?;
        self.buf.clear();
        Ok(bytes::Bytes::from(gzip.finish()?))
    }
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

/// What one request may hold. Apart from the batcher's gzip writer, so that the halving path
/// can use it while a request being written holds the writer.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_points: usize,
    max_bytes: usize,
}

impl Limits {
    /// Whether a request holding `held` (points, bytes) goes over a limit with `points` and
    /// `bytes` more.
    fn exceeded(&self, held: (usize, usize), points: usize, bytes: usize) -> bool {
        held.0 + points > self.max_points || held.1 + bytes > self.max_bytes
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

impl Batcher {
    /// Limits below one point or a few bytes are raised to the smallest workable values.
    pub fn new(max_points: usize, max_bytes: usize) -> Batcher {
        Batcher { limits: Limits { max_points: max_points.max(1), max_bytes: max_bytes.max(64) }, gzip: None }
    }

    /// Makes [`Batcher::split_encoded`] gzip each request at `level` (1 to 9).
    pub fn with_gzip(mut self, level: Option<u32>) -> Batcher {
        self.gzip = level.map(Gzip::new);
        self
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
            self.limits.encode_fitting(resource, sweep, &mut pieces);
            for (rm, p, b) in pieces {
                if !current.is_empty() && self.limits.exceeded((points, bytes), p, b) {
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
    /// [`crate::exporters::otlp::encode::wire`] without building prost messages; the same requests, byte for
    /// byte what `split` + `encode_to_vec` would decode to (after gunzip when the batcher
    /// gzips). Only a resource too large for one request takes `split`'s halving path. The
    /// limits apply to the uncompressed request, which is what a receiver's limit bounds.
    pub fn split_encoded(&mut self, sweep: &Sweep) -> Result<Vec<bytes::Bytes>, BatchError> {
        let time = crate::exporters::otlp::encode::unix_nanos(sweep.time);
        let mut writer = crate::exporters::otlp::encode::wire::Writer::default();
        let mut requests = Vec::new();
        let limits = self.limits;
        let mut current = RequestBuf::new(self.gzip.as_mut());
        for (index, resource) in sweep.resources.iter().enumerate() {
            if resource.points.is_empty() {
                continue;
            }
            let n = resource.points.len();
            let body = writer.resource_metrics_len(resource);
            let framed = 1 + prost::encoding::encoded_len_varint(body as u64) + body;
            if n <= limits.max_points && framed <= limits.max_bytes {
                if !current.is_empty() && limits.exceeded((current.points, current.bytes), n, framed) {
                    requests.push(current.finish()?);
                }
                if current.is_empty() {
                    // Sized once per request from this resource, as if the ones that follow
                    // were alike: growing by doubling copied each request about twice over.
                    let alike = (sweep.resources.len() - index).min((limits.max_points / n).max(1));
                    current.begin(framed.saturating_mul(alike).min(limits.max_bytes));
                }
                writer.put_resource_metrics(resource, time, body, current.buf());
                current.wrote(n, framed)?;
                continue;
            }
            let mut pieces = Vec::new();
            limits.encode_fitting(resource, sweep, &mut pieces);
            for (rm, p, b) in pieces {
                if !current.is_empty() && limits.exceeded((current.points, current.bytes), p, b) {
                    requests.push(current.finish()?);
                }
                if current.is_empty() {
                    current.begin(b);
                }
                prost::encoding::message::encode(1, &rm, current.buf());
                current.wrote(p, b)?;
            }
        }
        if !current.is_empty() {
            requests.push(current.finish()?);
        }
        Ok(requests)
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
        assert_eq!(
            requests[0],
            crate::exporters::otlp::encode::encode_sweep(&s),
            "same as encoding the sweep whole"
        );
    }

    #[test]
    fn point_limit_packs_whole_resources_and_splits_a_big_one() {
        let s = sweep(&[("a", 3), ("b", 3), ("c", 10), ("d", 1)]);
        let requests = Batcher::new(4, DEFAULT_MAX_BYTES).split(&s);
        for r in &requests {
            assert!(request_point_count(r) <= 4, "{} points", request_point_count(r));
        }
        // Nothing lost, nothing duplicated, order kept.
        assert_eq!(flatten(&requests), flatten(&[crate::exporters::otlp::encode::encode_sweep(&s)]));
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
        let whole = crate::exporters::otlp::encode::encode_sweep(&s).encoded_len();
        let limit = whole / 5;
        let requests = Batcher::new(DEFAULT_MAX_POINTS, limit).split(&s);
        assert!(requests.len() >= 5, "{} requests for {whole} bytes at {limit}", requests.len());
        for r in &requests {
            assert!(r.encoded_len() <= limit, "{} > {limit}", r.encoded_len());
        }
        assert_eq!(flatten(&requests), flatten(&[crate::exporters::otlp::encode::encode_sweep(&s)]));
        for r in &requests {
            for rm in &r.resource_metrics {
                for dp in rm.scope_metrics[0].metrics.iter().flat_map(|m| match &m.data {
                    Some(metric::Data::Sum(s)) => s.data_points.iter(),
                    _ => panic!("sum expected"),
                }) {
                    assert_eq!(dp.time_unix_nano, crate::exporters::otlp::encode::unix_nanos(s.time));
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
        use std::io::Read;
        let sweep = sweep(&[("a", 3), ("b", 40), ("c", 1), ("d", 7), ("e", 0), ("f", 12)]);
        // A sweep whose requests pass several gzip chunks.
        let big = sweep_big(300, 60);
        for (sweep, limits) in [
            (&sweep, vec![(DEFAULT_MAX_POINTS, DEFAULT_MAX_BYTES), (10, 1 << 20), (1000, 900), (5, 300)]),
            (&big, vec![(DEFAULT_MAX_POINTS, DEFAULT_MAX_BYTES), (5000, 200_000), (100, 1 << 20)]),
        ] {
            for (max_points, max_bytes) in limits {
                let plain = Batcher::new(max_points, max_bytes);
                let expected: Vec<Vec<u8>> = plain.split(sweep).iter().map(|r| r.encode_to_vec()).collect();
                for gzip in [None, Some(1), Some(9)] {
                    let mut batcher = plain.clone().with_gzip(gzip);
                    // Twice: the second reuses the gzip state the first made.
                    let got = batcher.split_encoded(sweep).expect("encodes");
                    assert_eq!(batcher.split_encoded(sweep).expect("encodes again"), got, "{batcher:?}");
                    assert_eq!(got.len(), expected.len(), "{batcher:?}");
                    for (g, e) in got.iter().zip(&expected) {
                        let g = match gzip {
                            None => g.to_vec(),
                            Some(_) => {
                                assert_eq!(&g[..2], &[0x1f, 0x8b], "a gzip member");
                                let mut out = Vec::new();
                                flate2::read::GzDecoder::new(&g[..]).read_to_end(&mut out).expect("gunzips");
                                assert!(g.len() < out.len(), "compressed: {} of {}", g.len(), out.len());
                                out
                            }
                        };
                        let g = ExportMetricsServiceRequest::decode(g.as_slice()).expect("decodes");
                        let e = ExportMetricsServiceRequest::decode(e.as_slice()).expect("decodes");
                        assert_eq!(g, e, "{batcher:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_gzip_member_cut_short_does_not_leak_into_the_next() {
        use std::io::Read;
        let mut gzip = Gzip::new(1);
        gzip.begin(Vec::new());
        gzip.write(b"abandoned by an error").unwrap();
        gzip.begin(Vec::new());
        gzip.write(b"the next request").unwrap();
        let member = gzip.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&member[..]).read_to_end(&mut back).expect("a valid member");
        assert_eq!(back, b"the next request");
        // And the state is reused cleanly after a finished member.
        gzip.begin(Vec::new());
        gzip.write(b"third").unwrap();
        let member = gzip.finish().unwrap();
        back.clear();
        flate2::read::GzDecoder::new(&member[..]).read_to_end(&mut back).expect("a valid member");
        assert_eq!(back, b"third");
    }

    /// `n` resources of `points` points each, with distinct values and interface names.
    fn sweep_big(n: usize, points: usize) -> Sweep {
        let names: Vec<String> = (0..n).map(|i| format!("container-{i:04}")).collect();
        let spec: Vec<(&str, usize)> = names.iter().map(|s| (s.as_str(), points)).collect();
        sweep(&spec)
    }
}
