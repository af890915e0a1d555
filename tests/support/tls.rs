//! Test certificates and a mutual-TLS OTLP/gRPC server, shared by the exporter's and the
//! self-telemetry's TLS tests so both check against the same PKI and the same server setup.

use std::net::SocketAddr;
use std::path::PathBuf;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use tonic::codec::CompressionEncoding;

/// True when `openssl` can make the certificates (fails the test under `CI=true` otherwise).
pub fn openssl_available() -> bool {
    super::prerequisite(super::have_command("openssl"), "openssl (to make test certificates)")
}

/// A throwaway CA (`ca.pem`), another CA the server does not chain to (`other-ca.pem`), a
/// server certificate for 127.0.0.1 and localhost (`server.pem`/`server.key`) and a client
/// certificate (`client.pem`/`client.key`), made with the `openssl` command.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn create() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
for ca in ca other-ca; do
  openssl req -x509 $ec -keyout $ca.key -out $ca.pem -days 2 -subj /CN=podometer-test-$ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
done
for who in server client; do
  openssl req $ec -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null
done
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
for who in server client; do
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
done
"#;
        super::run(std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir.path()));
        TestPki { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.file(name)).unwrap()
    }
}

/// Serves `receiver` over gRPC on a loopback port with the PKI's server certificate,
/// demanding a client certificate from its CA (gzip requests accepted). The server runs until
/// the returned task is aborted or the test's runtime ends.
pub async fn serve_grpc_mutual_tls<S: MetricsService>(
    pki: &TestPki,
    receiver: S,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(pki.read("server.pem"), pki.read("server.key")))
        .client_ca_root(tonic::transport::Certificate::from_pem(pki.read("ca.pem")));
    let service = MetricsServiceServer::new(receiver).accept_compressed(CompressionEncoding::Gzip);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, server)
}
