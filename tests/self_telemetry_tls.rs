//! Self-telemetry over TLS: the SDK's exporter, built by `self_telemetry::start` with a CA and
//! a client certificate, delivers to a real tonic gRPC server on loopback that demands mutual
//! TLS; with the wrong CA, or without the client certificate, nothing arrives. The certificates
//! are made here with the `openssl` command.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use podometer::self_telemetry_otlp::{self as self_telemetry, Target};
use support::tls::{openssl_available, serve_grpc_mutual_tls, TestPki};

#[derive(Default)]
struct Received(Mutex<Vec<ExportMetricsServiceRequest>>);

struct Receiver(Arc<Received>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0 .0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// Starts self-telemetry towards `target`, flushes once, shuts down; returns whether the
/// flush reported success.
async fn flush_once(target: Target) -> bool {
    let resource = podometer::resource::Common::new(Some("tls-test-host"), None, &Default::default(), &[])
        .sdk_resource();
    let provider =
        self_telemetry::start(&target, Duration::from_secs(3600), resource).expect("exporter builds");
    tokio::task::spawn_blocking(move || {
        let ok = provider.force_flush().is_ok();
        let _ = provider.shutdown();
        ok
    })
    .await
    .unwrap()
}

fn service_name(request: &ExportMetricsServiceRequest) -> Option<String> {
    let resource = request.resource_metrics.first()?.resource.as_ref()?;
    resource.attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_telemetry_over_mutual_tls_delivers_only_to_the_right_server() {
    if !openssl_available() {
        return;
    }
    let pki = TestPki::create();
    let path = |name: &str| pki.file(name);
    let received = Arc::new(Received::default());
    let (addr, server) = serve_grpc_mutual_tls(&pki, Receiver(received.clone())).await;
    let port = addr.port();
    let endpoint = format!("https://127.0.0.1:{port}");
    let count = || received.0.lock().unwrap().len();

    // A server that does not chain to the configured CA is never sent to.
    let wrong_ca = Target {
        endpoint: endpoint.clone(),
        ca_file: Some(path("other-ca.pem")),
        client: Some((path("client.pem"), path("client.key"))),
        headers: Vec::new(),
    };
    assert!(!flush_once(wrong_ca).await, "a flush to an unverified server must fail");
    assert_eq!(count(), 0, "nothing reached the server");

    // Without the client certificate the server refuses the handshake.
    let no_client = Target {
        endpoint: endpoint.clone(),
        ca_file: Some(path("ca.pem")),
        client: None,
        headers: Vec::new(),
    };
    assert!(!flush_once(no_client).await, "mutual TLS refuses a client without a certificate");
    assert_eq!(count(), 0, "nothing reached the server");

    let good = Target {
        endpoint: endpoint.clone(),
        ca_file: Some(path("ca.pem")),
        client: Some((path("client.pem"), path("client.key"))),
        headers: Vec::new(),
    };
    assert!(flush_once(good).await, "flush over mutual TLS");
    let requests = received.0.lock().unwrap().clone();
    assert!(!requests.is_empty(), "the receiver got the agent's metrics");
    assert_eq!(service_name(&requests[0]).as_deref(), Some("podometer"));
    let names: Vec<&str> = requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.as_str())
        .collect();
    assert!(names.contains(&"podometer.sweeps"), "{names:?}");
    assert!(names.contains(&"podometer.discovery.fd_exhausted"), "{names:?}");
    server.abort();
}

#[test]
fn tls_files_need_an_https_endpoint_and_go_together() {
    let parse = |yaml: &str| -> self_telemetry::SelfTelemetryConfig { serde_saphyr::from_str(yaml).unwrap() };
    let ok = parse("endpoint: https://c:4317\ntls: {ca_file: /ca.pem, cert_file: /c.pem, key_file: /c.key}");
    assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    let plain = parse("endpoint: http://c:4317\ntls: {ca_file: /ca.pem}");
    assert!(plain.validate().iter().any(|(k, r)| k == "tls" && r.contains("https://")));
    let half = parse("endpoint: https://c:4317\ntls: {cert_file: /c.pem}");
    assert!(half.validate().iter().any(|(_, r)| r.contains("go together")));
    let unknown: Result<self_telemetry::SelfTelemetryConfig, _> = serde_saphyr::from_str("tls: {ca: /x}");
    assert!(unknown.is_err(), "unknown keys are refused");
}
