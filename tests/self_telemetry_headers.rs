//! Self-telemetry authenticates as the exporter does: the agent binary sends its sweeps and its
//! own metrics to one in-process tonic receiver on loopback that refuses any export without the
//! exporter's `authorization` header, and both kinds of request arrive with it.
mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const TOKEN: &str = "Bearer s3cret-token";

/// One export received: the service.name of its first resource, and whether it was accepted.
type Seen = (Option<String>, bool);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Seen>>>);

fn service_name(request: &ExportMetricsServiceRequest) -> Option<String> {
    let resource = request.resource_metrics.first()?.resource.as_ref()?;
    resource.attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let authorized = request.metadata().get("authorization").is_some_and(|v| v == TOKEN);
        self.0.lock().unwrap().push((service_name(request.get_ref()), authorized));
        if !authorized {
            return Err(tonic::Status::unauthenticated("no or wrong authorization header"));
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_telemetry_sends_the_exporters_headers_to_an_authenticating_receiver() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                MetricsServiceServer::new(receiver.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cgroup/v1-docker");
    std::fs::write(
        &config,
        format!(
            "interval: 200ms\nshutdown_timeout: 1s\nself_telemetry: {{interval: 300ms}}\n\
             sources:\n  cgroups: {{root: {root}}}\n\
             exporters:\n  otlp:\n    endpoint: http://127.0.0.1:{port}\n    \
             headers: {{authorization: {TOKEN}}}\n\
             pipelines:\n  p: {{sources: [cgroups], exporters: [otlp]}}\n",
            root = root.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_podometer"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let agent = Agent(child);

    let seen = || receiver.0.lock().unwrap().clone();
    let own =
        |seen: &[(Option<String>, bool)]| seen.iter().any(|(s, ok)| s.as_deref() == Some("podometer") && *ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !own(&seen()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
    let log = log.join().unwrap();
    let seen = seen();
    server.abort();
    assert!(own(&seen), "no self-telemetry export was accepted; received {seen:?}\n{log}");
    let refused: Vec<_> = seen.iter().filter(|(_, ok)| !ok).collect();
    assert!(refused.is_empty(), "exports without the header: {refused:?}");
    assert!(seen.iter().any(|(s, _)| s.as_deref() != Some("podometer")), "no sweep arrived: {seen:?}");
}
