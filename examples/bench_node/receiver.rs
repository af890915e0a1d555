//! The OTLP gRPC receiver the agent and the Collector export to: counts requests, container
//! resources and the containers of each sweep.

use super::*;

#[derive(Clone, Default)]
pub(crate) struct Receiver {
    pub(crate) port: u16,
    pub(crate) requests: Arc<AtomicU64>,
    /// Container resources received, summed over requests (a sweep may span several).
    pub(crate) container_resources: Arc<AtomicU64>,
    /// Container resources received per sweep, by the sweep's timestamp (its points'
    /// `time_unix_nano`): a sweep's resources may arrive over several requests, and on a loaded
    /// machine a request late, so counting sweeps by the wall clock would be off by one.
    pub(crate) per_sweep: Arc<std::sync::Mutex<BTreeMap<u64, u64>>>,
    /// Distinct `container.id`s received since the warm-up began.
    pub(crate) seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Pod resources (a `k8s.pod.uid` with no container or volume name: what the Collector's
    /// kubeletstats receiver sends per pod), summed over requests, and the distinct uids.
    pub(crate) pod_resources: Arc<AtomicU64>,
    pub(crate) pods_seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    pub(crate) bytes: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut containers = 0;
        let mut pods = 0;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let mut pods_seen = self.pods_seen.lock().unwrap_or_else(|e| e.into_inner());
            let mut per_sweep = self.per_sweep.lock().unwrap_or_else(|e| e.into_inner());
            for rm in &req.resource_metrics {
                let mut pod_uid = None;
                let mut in_pod = false;
                for kv in rm.resource.iter().flat_map(|r| &r.attributes) {
                    let Some(AnyValue::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.as_ref())
                    else {
                        continue;
                    };
                    match kv.key.as_str() {
                        "container.id" => {
                            containers += 1;
                            seen.insert(v.clone());
                            if let Some(t) = first_point_time(rm) {
                                *per_sweep.entry(t).or_default() += 1;
                            }
                        }
                        "k8s.pod.uid" => pod_uid = Some(v),
                        "k8s.container.name" | "k8s.volume.name" => in_pod = true,
                        _ => {}
                    }
                }
                if let (Some(uid), false) = (pod_uid, in_pod) {
                    pods += 1;
                    pods_seen.insert(uid.clone());
                }
            }
        }
        self.container_resources.fetch_add(containers, Ordering::Relaxed);
        self.pod_resources.fetch_add(pods, Ordering::Relaxed);
        self.bytes.fetch_add(prost::Message::encoded_len(&req) as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The time of a resource's first data point: the agent stamps every point of a sweep with the
/// sweep's time.
pub(crate) fn first_point_time(rm: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics) -> Option<u64> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    rm.scope_metrics.iter().flat_map(|s| &s.metrics).find_map(|m| match m.data.as_ref()? {
        Data::Gauge(g) => g.data_points.first().map(|p| p.time_unix_nano),
        Data::Sum(s) => s.data_points.first().map(|p| p.time_unix_nano),
        Data::Histogram(h) => h.data_points.first().map(|p| p.time_unix_nano),
        _ => None,
    })
}

impl Receiver {
    /// The containers of a typical sweep among those received since `clear_sweeps`: the median
    /// of the per-sweep counts, so that a sweep cut by either end of the window (its first
    /// requests before, or its last ones after) does not count as a short sweep.
    pub(crate) fn containers_per_sweep(&self) -> Option<u64> {
        let per_sweep = self.per_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: Vec<u64> = per_sweep.values().copied().collect();
        counts.sort_unstable();
        counts.get(counts.len() / 2).copied()
    }

    pub(crate) fn clear_sweeps(&self) {
        self.per_sweep.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub(crate) async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut receiver = Receiver { port: listener.local_addr()?.port(), ..Receiver::default() };
        receiver.port = listener.local_addr()?.port();
        let service = MetricsServiceServer::new(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(receiver)
    }
}
