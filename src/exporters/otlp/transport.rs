//! One attempt at delivering one encoded batch, over gRPC (tonic) or HTTP/protobuf (reqwest).

use std::time::SystemTime;

use bytes::BufMut;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::config::{redact_url, Compression, Protocol, ResolvedConfig, Security};
use super::retry::{grpc_status_decision, http_decision, Decision};
use super::OtlpError;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; `rejected` points were refused (OTLP partial success), with the server's word.
    Delivered { rejected: i64, message: String },
    /// Not accepted; `detail` says what happened, for the log.
    Failed { decision: Decision, detail: String },
}

pub enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl Transport {
    pub fn new(config: &ResolvedConfig) -> Result<Transport, OtlpError> {
        match config.protocol {
            Protocol::Grpc => GrpcTransport::new(config).map(Transport::Grpc),
            Protocol::HttpProtobuf => HttpTransport::new(config).map(Transport::Http),
        }
    }

    pub async fn send(&mut self, payload: &Bytes) -> Outcome {
        match self {
            Transport::Grpc(t) => t.send(payload).await,
            Transport::Http(t) => t.send(payload).await,
        }
    }
}

/// The configured headers, checked once by the same function for both protocols.
fn headers(config: &ResolvedConfig) -> Result<http::HeaderMap, OtlpError> {
    super::config::header_map(&config.headers).map_err(|(name, reason)| OtlpError::Header { name, reason })
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|source| OtlpError::TlsFile { path: path.to_owned(), source })
}

fn partial(response: Option<ExportMetricsServiceResponse>) -> Outcome {
    match response.and_then(|r| r.partial_success) {
        Some(p) => Outcome::Delivered { rejected: p.rejected_data_points, message: p.error_message },
        None => Outcome::Delivered { rejected: 0, message: String::new() },
    }
}

/// The gRPC method OTLP metrics are exported with.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// A tonic codec that sends an already-encoded `ExportMetricsServiceRequest` as it is and
/// decodes the response. The batcher encodes each request once (and the disk queue stores those
/// bytes); tonic's prost codec would need the message back, decoded from those bytes and encoded
/// again: that round trip was a quarter of the agent's CPU at 300 containers.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedRequestCodec;

impl Codec for EncodedRequestCodec {
    type Encode = Bytes;
    type Decode = ExportMetricsServiceResponse;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for EncodedRequestCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedRequestCodec {
    type Item = ExportMetricsServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportMetricsServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("{UNDECODABLE}: {e}")))
    }
}

/// The channel, marking a request whose one gRPC message is gzip as compressed. The queue
/// holds requests already gzipped at the configured level (see [`crate::exporters::otlp::batcher`]): tonic
/// compresses only at level 6 (not configurable in 0.14), which cost 33 µs per container and
/// sweep against 9.4 µs at level 1, and would copy and compress the message again here. So the
/// client is built without tonic's compression, the codec writes the gzip bytes as the message,
/// and this layer sets the frame's flag to 1 and adds `grpc-encoding: gzip`, as the gRPC wire
/// format says. The length prefix is already the gzip bytes' length.
#[derive(Clone)]
struct GzipChannel {
    inner: Channel,
    /// The exporter compresses; without it no request is looked at.
    gzip: bool,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for GzipChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::codegen::StdError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was polled ready is the one that is called (tower's rule for clones).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !self.gzip {
            return Box::pin(async move { inner.call(request).await.map_err(Into::into) });
        }
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (mut parts, body) = request.into_parts();
            // A unary request body is one frame, already in memory: collecting it costs no wait.
            let frame = body.collect().await?.to_bytes();
            let body = match flag_gzip_frame(&frame) {
                Some((header, message)) => {
                    parts.headers.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
                    // Two chunks: the 5-byte header rewritten, the message not copied.
                    let chunks = [header, message]
                        .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(c)));
                    tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                        chunks,
                    )))
                }
                None => tonic::body::Body::new(http_body_util::Full::new(frame)),
            };
            inner.call(http::Request::from_parts(parts, body)).await.map_err(Into::into)
        })
    }
}

/// For a gRPC frame `[flag 0][u32 length][message]` whose message is gzip: the header marked
/// compressed, `[flag 1][u32 length]`, and the message. `None` when the input is not exactly one
/// uncompressed frame holding gzip, which is then sent as it is.
fn flag_gzip_frame(frame: &Bytes) -> Option<(Bytes, Bytes)> {
    let (&flag, rest) = frame.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = frame.slice(5..);
    if flag != 0 || message.len() != len || !super::payload::is_gzip(&message) {
        return None;
    }
    let mut header = [1u8; 5];
    header[1..].copy_from_slice(&rest[..4]);
    Some((Bytes::copy_from_slice(&header), message))
}

pub struct GrpcTransport {
    client: tonic::client::Grpc<GzipChannel>,
    // Boxed: a header map would make this variant of `Transport` large.
    metadata: Box<MetadataMap>,
}

impl GrpcTransport {
    fn new(config: &ResolvedConfig) -> Result<GrpcTransport, OtlpError> {
        let bad_endpoint = |e: &dyn std::fmt::Display| OtlpError::Endpoint {
            endpoint: redact_url(&config.endpoint).into_owned(),
            reason: e.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| bad_endpoint(&e))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // Bounds the status message and details a receiver can make us hold.
            .http2_max_header_list_size(MAX_RESPONSE_BODY as u32);
        if let Security::Tls { ca_file, client } = &config.security {
            let mut tls = ClientTlsConfig::new();
            tls = match ca_file {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem(ca)?)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = client {
                tls = tls.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad_endpoint(&e))?;
        }
        // Lazy: the agent starts while the collector is down; the queue covers the gap.
        let channel = endpoint.connect_lazy();
        let gzip = config.compression == Compression::Gzip;
        let channel = GzipChannel { inner: channel, gzip };
        let mut client = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BODY);
        if gzip {
            client = client.accept_compressed(CompressionEncoding::Gzip);
        }
        let metadata = Box::new(MetadataMap::from_headers(headers(config)?));
        Ok(GrpcTransport { client, metadata })
    }

    async fn send(&mut self, payload: &Bytes) -> Outcome {
        // The bytes go out as they are (a cheap reference-counted clone), gzip included.
        let mut request = tonic::Request::new(payload.clone());
        *request.metadata_mut() = (*self.metadata).clone();
        if let Err(e) = self.client.ready().await {
            crate::agent_counters::Telemetry::inc(
                &crate::agent_counters::Telemetry::global().export_connection_errors,
            );
            return Outcome::Failed {
                decision: Decision::Retry { after: None },
                detail: format!("gRPC channel not ready: {}", error_chain(&*e)),
            };
        }
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        match self.client.unary(request, path, EncodedRequestCodec).await {
            Ok(response) => partial(Some(response.into_inner())),
            Err(status) => {
                count_grpc_fault(&status);
                grpc_failure(&status)
            }
        }
    }
}

/// Counts a gRPC call that got no usable answer, by what went wrong, as
/// [`count_request_failure`] does for HTTP. A status the receiver sent is an answer, not a
/// fault: only statuses that tonic made from a local error (they carry it as their source) or
/// from an undecodable answer are counted.
fn count_grpc_fault(status: &tonic::Status) {
    use std::error::Error;
    let telemetry = crate::agent_counters::Telemetry::global();
    let Some(source) = status.source() else {
        if status.message().starts_with(UNDECODABLE) {
            crate::agent_counters::Telemetry::inc(&telemetry.export_bad_responses);
        }
        return;
    };
    let mut counter = &telemetry.export_connection_errors;
    let mut cause = Some(source);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            counter = &telemetry.export_timeouts;
            break;
        }
        let not_http2 = e.downcast_ref::<h2::Error>().is_some_and(|h2| {
            !h2.is_io()
                && matches!(
                    h2.reason(),
                    Some(
                        h2::Reason::PROTOCOL_ERROR
                            | h2::Reason::FRAME_SIZE_ERROR
                            | h2::Reason::COMPRESSION_ERROR
                    )
                )
        });
        if not_http2 || e.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_parse() || h.is_parse_status())
        {
            counter = &telemetry.export_bad_responses;
            break;
        }
        cause = e.source();
    }
    crate::agent_counters::Telemetry::inc(counter);
}

pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
}

impl HttpTransport {
    fn new(config: &ResolvedConfig) -> Result<HttpTransport, OtlpError> {
        // reqwest is built without a default crypto provider; ring is the project's choice.
        // Another part of the agent may have installed it already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let headers = headers(config)?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect would turn the POST into a GET (a 200 on it counts as delivered while
            // the data is lost) or send the secret headers to another host: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers);
        let tls_err = |e: reqwest::Error| OtlpError::Endpoint {
            endpoint: redact_url(&config.endpoint).into_owned(),
            reason: e.without_url().to_string(),
        };
        if let Security::Tls { ca_file, client } = &config.security {
            if let Some(ca) = ca_file {
                let certs = reqwest::Certificate::from_pem_bundle(&read_pem(ca)?).map_err(tls_err)?;
                builder = builder.tls_certs_only(certs);
            }
            if let Some((cert, key)) = client {
                let mut pem = read_pem(cert)?;
                pem.push(b'\n');
                pem.extend_from_slice(&read_pem(key)?);
                builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(tls_err)?);
            }
        }
        let client = builder.build().map_err(tls_err)?;
        Ok(HttpTransport { client, url: config.endpoint.clone() })
    }

    async fn send(&mut self, payload: &Bytes) -> Outcome {
        let mut request =
            self.client.post(&self.url).header(http::header::CONTENT_TYPE, "application/x-protobuf");
        // Queued gzip (the exporter compresses) goes out as it is, labelled.
        if super::payload::is_gzip(payload) {
            request = request.header(http::header::CONTENT_ENCODING, "gzip");
        }
        request = request.body(payload.clone());
        let response = match request.send().await {
            Ok(r) => r,
            // Connection refused, reset, TLS handshake, timeout: the receiver may come back.
            Err(e) => {
                count_request_failure(&e);
                return Outcome::Failed {
                    decision: Decision::Retry { after: None },
                    // Without the URL: it may carry user:password (the exporter is named).
                    detail: format!("HTTP request failed: {}", error_chain(&e.without_url())),
                };
            }
        };
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let retry_after = header(http::header::RETRY_AFTER);
        let location = header(http::header::LOCATION);
        let body = read_bounded(response, MAX_RESPONSE_BODY).await;
        http_outcome(status, retry_after.as_deref(), location.as_deref(), body.as_deref(), SystemTime::now())
    }
}

/// Counts a request that got no usable answer by what went wrong: no answer in time, an
/// answer that is not HTTP (hyper could not parse it), or the connection (refused, reset,
/// closed before the answer).
fn count_request_failure(error: &reqwest::Error) {
    let telemetry = crate::agent_counters::Telemetry::global();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut not_http = false;
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            not_http |= h.is_parse() || h.is_parse_status();
        }
        source = e.source();
    }
    let counter = if error.is_timeout() {
        &telemetry.export_timeouts
    } else if not_http {
        &telemetry.export_bad_responses
    } else {
        &telemetry.export_connection_errors
    };
    crate::agent_counters::Telemetry::inc(counter);
}

/// Most bytes of a response body that are read. An OTLP response is a few bytes (a partial
/// success message at most); what a misbehaving or hostile receiver sends beyond this is not
/// read at all: the connection is dropped instead.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// How the codec's status for an answer that is not an `ExportMetricsServiceResponse` starts.
const UNDECODABLE: &str = "undecodable ExportMetricsServiceResponse";

/// Reads at most `limit` bytes of the body; `None` when it is longer or cannot be read.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// What an HTTP answer comes to: the status, its `Retry-After` and `Location` headers, and the
/// body (`None` when it was over [`MAX_RESPONSE_BODY`] or unreadable). Pure: the fuzz target
/// `otlp_response` calls it with arbitrary input.
pub fn http_outcome(
    status: u16,
    retry_after: Option<&str>,
    location: Option<&str>,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Outcome {
    match http_decision(status, retry_after, now) {
        // An empty or non-protobuf body is a plain success.
        Decision::Done => partial(body.and_then(|b| ExportMetricsServiceResponse::decode(b).ok())),
        decision => {
            let detail = match (location, body) {
                (Some(to), _) if (300..400).contains(&status) => {
                    format!(
                        "HTTP {status} redirects to {to} (not followed: set the endpoint to the final URL)"
                    )
                }
                (_, Some(b)) => {
                    let text = String::from_utf8_lossy(&b[..b.len().min(300)]);
                    format!("HTTP {status}: {}", text.trim())
                }
                (_, None) => {
                    format!("HTTP {status} (body unread: over {MAX_RESPONSE_BODY} bytes or cut off)")
                }
            };
            Outcome::Failed { decision, detail }
        }
    }
}

/// What a gRPC error status comes to. Pure: the fuzz target `otlp_response` calls it with
/// arbitrary codes, messages and details.
pub fn grpc_failure(status: &tonic::Status) -> Outcome {
    let message = status.message();
    let message = message.char_indices().nth(300).map_or(message, |(end, _)| &message[..end]);
    Outcome::Failed {
        decision: grpc_status_decision(status),
        detail: format!("gRPC {:?}: {message}", status.code()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(message.len() as u32).to_be_bytes());
        f.extend_from_slice(message);
        f
    }

    fn gzip(message: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        enc.write_all(message).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn a_frame_holding_gzip_is_flagged_compressed_with_its_length_kept() {
        let message: Vec<u8> = (0..20_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let packed = gzip(&message);
        let (header, body) = flag_gzip_frame(&Bytes::from(frame(&packed))).expect("one frame of gzip");
        assert_eq!(header[0], 1, "compressed flag");
        assert_eq!(u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize, packed.len());
        assert_eq!(body, packed, "the message is passed on unchanged");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut back).expect("gzip decodes");
        assert_eq!(back, message);
    }

    #[test]
    fn what_is_not_one_uncompressed_frame_of_gzip_is_left_alone() {
        let f = |v: Vec<u8>| flag_gzip_frame(&Bytes::from(v));
        assert!(f(vec![]).is_none());
        assert!(f(vec![0, 0, 0]).is_none(), "short header");
        assert!(f(frame(b"\x0a\x03abc")).is_none(), "a protobuf message");
        let mut flagged = frame(&gzip(b"abc"));
        flagged[0] = 1;
        assert!(f(flagged).is_none(), "already flagged");
        let mut two = frame(&gzip(b"abc"));
        two.extend_from_slice(&frame(&gzip(b"def")));
        assert!(f(two).is_none(), "two frames");
    }
}
