//! Self-telemetry over TLS: the SDK's exporter, built by `self_telemetry::start` with a CA and
//! a client certificate, delivers to a real tonic gRPC server on loopback that demands mutual
//! TLS; with the wrong CA, or without the client certificate, nothing arrives. The certificates
//! are made here with the `openssl` command.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use podometer::self_telemetry::{self, Target};
use tonic::codec::CompressionEncoding;

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

/// A throwaway CA, another CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_pki(dir: &std::path::Path) {
    let script = r#"
set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
for ca in ca other-ca; do
  openssl req -x509 $ec -keyout $ca.key -out $ca.pem -days 2 -subj /CN=podometer-$ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
done
for who in server client; do
  openssl req $ec -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null
done
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
for who in server client; do
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
done
"#;
    support::run(std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir));
}

/// Starts self-telemetry towards `target`, flushes once, shuts down; returns whether the
/// flush reported success.
async fn flush_once(target: Target) -> bool {
    let resource = self_telemetry::resource(Some("tls-test-host".into()), None);
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
    if !support::prerequisite(support::have_command("openssl"), "openssl (to make test certificates)") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let read = |name: &str| std::fs::read(pki.path().join(name)).unwrap();
    let path = |name: &str| pki.path().join(name);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Received::default());
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read("server.pem"), read("server.key")))
        .client_ca_root(tonic::transport::Certificate::from_pem(read("ca.pem")));
    let service =
        MetricsServiceServer::new(Receiver(received.clone())).accept_compressed(CompressionEncoding::Gzip);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let endpoint = format!("https://127.0.0.1:{port}");
    let count = || received.0.lock().unwrap().len();

    // A server that does not chain to the configured CA is never sent to.
    let wrong_ca = Target {
        endpoint: endpoint.clone(),
        ca_file: Some(path("other-ca.pem")),
        client: Some((path("client.pem"), path("client.key"))),
    };
    assert!(!flush_once(wrong_ca).await, "a flush to an unverified server must fail");
    assert_eq!(count(), 0, "nothing reached the server");

    // Without the client certificate the server refuses the handshake.
    let no_client = Target { endpoint: endpoint.clone(), ca_file: Some(path("ca.pem")), client: None };
    assert!(!flush_once(no_client).await, "mutual TLS refuses a client without a certificate");
    assert_eq!(count(), 0, "nothing reached the server");

    let good = Target {
        endpoint: endpoint.clone(),
        ca_file: Some(path("ca.pem")),
        client: Some((path("client.pem"), path("client.key"))),
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
