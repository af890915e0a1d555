//! The OTLP exporter tests' receivers: a tonic `MetricsService` and an axum HTTP server whose
//! answers each test scripts, servers that answer every POST alike, and the HTTPS side of
//! mutual TLS. Included by path from `tests/otlp_exporter.rs`.

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::tls::TestPki;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
// A local port nobody listens on, held for the whole test so that no server of a test running
// in parallel can be given it.
use tonic::codec::CompressionEncoding;

// ---------- scripted gRPC receiver ----------

pub enum GrpcReply {
    Ok,
    Partial(i64, &'static str),
    Status(tonic::Status),
    Hang(Duration),
}

#[derive(Default)]
pub struct GrpcScript {
    pub replies: Mutex<VecDeque<GrpcReply>>,
    /// Every attempt: when, what, and the request metadata.
    pub received: Mutex<Vec<(Instant, ExportMetricsServiceRequest, tonic::metadata::MetadataMap)>>,
}

pub struct GrpcReceiver(pub Arc<GrpcScript>);

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metadata = request.metadata().clone();
        self.0.received.lock().unwrap().push((Instant::now(), request.into_inner(), metadata));
        let reply = self.0.replies.lock().unwrap().pop_front().unwrap_or(GrpcReply::Ok);
        match reply {
            GrpcReply::Ok => Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None })),
            GrpcReply::Partial(n, msg) => Ok(tonic::Response::new(ExportMetricsServiceResponse {
                partial_success: Some(ExportMetricsPartialSuccess {
                    rejected_data_points: n,
                    error_message: msg.to_owned(),
                }),
            })),
            GrpcReply::Status(s) => Err(s),
            GrpcReply::Hang(d) => {
                tokio::time::sleep(d).await;
                Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
            }
        }
    }
}

pub struct GrpcServer {
    pub addr: SocketAddr,
    pub script: Arc<GrpcScript>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    pub async fn start(replies: Vec<GrpcReply>) -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        GrpcServer::serve(listener, replies)
    }

    pub fn serve(listener: tokio::net::TcpListener, replies: Vec<GrpcReply>) -> GrpcServer {
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(GrpcScript { replies: Mutex::new(replies.into()), received: Mutex::default() });
        let service = MetricsServiceServer::new(GrpcReceiver(script.clone()))
            .accept_compressed(CompressionEncoding::Gzip);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("test gRPC server runs");
        });
        GrpcServer { addr, script, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn attempts(&self) -> usize {
        self.script.received.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.script.received.lock().unwrap().iter().map(|(_, r, _)| r.clone()).collect()
    }
}

// ---------- scripted HTTP receiver ----------

pub struct HttpReply {
    pub status: u16,
    pub retry_after: Option<&'static str>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn status(status: u16) -> HttpReply {
        HttpReply { status, retry_after: None, body: Vec::new() }
    }
}

pub struct HttpAttempt {
    pub at: Instant,
    pub path: String,
    pub headers: http::HeaderMap,
    /// The body as the agent meant it: gunzipped when sent with `Content-Encoding: gzip`.
    pub request: ExportMetricsServiceRequest,
}

#[derive(Default)]
pub struct HttpScript {
    pub replies: Mutex<VecDeque<HttpReply>>,
    pub received: Mutex<Vec<HttpAttempt>>,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    pub script: Arc<HttpScript>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn http_handler(
    axum::extract::State(script): axum::extract::State<Arc<HttpScript>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let raw = if headers.get("content-encoding").map(|v| v == "gzip").unwrap_or(false) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).expect("gzip body decodes");
        out
    } else {
        body.to_vec()
    };
    let request =
        ExportMetricsServiceRequest::decode(&raw[..]).expect("body is an ExportMetricsServiceRequest");
    script.received.lock().unwrap().push(HttpAttempt {
        at: Instant::now(),
        path: uri.path().to_owned(),
        headers,
        request,
    });
    let reply = script.replies.lock().unwrap().pop_front().unwrap_or(HttpReply::status(200));
    let mut builder =
        http::Response::builder().status(reply.status).header("content-type", "application/x-protobuf");
    if let Some(ra) = reply.retry_after {
        builder = builder.header("retry-after", ra);
    }
    builder.body(axum::body::Body::from(reply.body)).unwrap()
}

impl HttpServer {
    pub async fn start(replies: Vec<HttpReply>) -> HttpServer {
        HttpServer::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), replies)
    }

    /// Serves on a listener the test already holds.
    pub fn serve(listener: tokio::net::TcpListener, replies: Vec<HttpReply>) -> HttpServer {
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(HttpScript { replies: Mutex::new(replies.into()), received: Mutex::default() });
        let app = axum::Router::new()
            .route("/v1/metrics", axum::routing::post(http_handler))
            .route("/opentelemetry/v1/metrics", axum::routing::post(http_handler))
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("test HTTP server runs");
        });
        HttpServer { addr, script, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/opentelemetry/v1/metrics", self.addr)
    }

    pub fn attempts(&self) -> usize {
        self.script.received.lock().unwrap().len()
    }
}

/// A server whose every POST answers `status` with `Location: location` (and `extra` headers).
pub async fn start_answering(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: axum::body::Body,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(Mutex::new(Some(body)));
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move || {
            let headers = headers.clone();
            let body = body.lock().unwrap().take().unwrap_or_else(axum::body::Body::empty);
            async move {
                let mut b = http::Response::builder().status(status);
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                b.body(body).unwrap()
            }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("test HTTP server runs");
    });
    (addr, task)
}

/// A body that never ends, counting the bytes the server produced.
pub fn endless_body(produced: Arc<std::sync::atomic::AtomicU64>) -> axum::body::Body {
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    axum::body::Body::from_stream(tokio_stream::iter(std::iter::repeat_with(move || {
        produced.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::convert::Infallible>(chunk.clone())
    })))
}

/// The HTTPS receiver's rustls side, from the shared test PKI.
pub trait RustlsServer {
    fn rustls_server_config(&self) -> Arc<rustls::ServerConfig>;
}

impl RustlsServer for TestPki {
    fn rustls_server_config(&self) -> Arc<rustls::ServerConfig> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Vec<_> =
            rustls_pemfile::certs(&mut &self.read("server.pem")[..]).collect::<Result<_, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut &self.read("server.key")[..]).unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut &self.read("ca.pem")[..]) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Serves axum over TLS: the handshake happens in `accept`, which is plenty for a test.
pub struct TlsListener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A refused client (no certificate) fails here; keep serving the others.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
