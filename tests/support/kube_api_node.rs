//! What the live tests of podometer *inside* the real node (tests/kube_api_rbac.rs,
//! tests/kube_sidecar.rs, tests/kube_kubelet.rs) share: an OTLP/gRPC receiver the node's pods
//! can reach, the podometer image loaded into the node, the shipped manifests rendered with
//! the few changes this node needs, and the kernel's own numbers of a pod read from the host.
//!
//! The receiver is in-process (tonic, as tests/otlp_exporter.rs has it) rather than
//! VictoriaMetrics: pods reach the host only at the host end of the node's veth
//! (`HOST_ADDR`), where the VictoriaMetrics helper does not listen, and the tests compare
//! exact integers and every attribute of a point, which an in-process decode keeps as sent.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use serde_json::Value as Json;

use super::kube_node::{script, KubeNode};

/// The host end of the node's veth (scripts/kube-node.sh `host_addr`): the one host address
/// the node's pods can reach.
pub const HOST_ADDR: &str = "10.216.0.1";
/// The API server from a pod: the node's address (its certificate names it). The service
/// address (10.218.0.1) does not route: the node runs no kube-proxy.
pub const API_HOST: &str = "10.216.0.2";
pub const API_PORT: &str = "6443";
/// The kubelet's cgroupRoot on this node (scripts/kube-node.sh `cgroot`): pods are in
/// `/podometer-kube/kubepods/…` of every hierarchy.
pub const KUBEPODS: &str = "podometer-kube/kubepods";

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn podometer_image() -> String {
    format!("localhost/podometer:{}", env!("CARGO_PKG_VERSION"))
}

/// The podometer image exists in Podman (scripts/image.sh builds it).
pub fn podometer_image_available() -> bool {
    super::prerequisite(
        Command::new("podman")
            .args(["image", "exists", &podometer_image()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        "the podometer image in Podman (scripts/image.sh builds it)",
    )
}

/// `podman save` of the image, imported into the node's containerd.
pub fn load_podometer_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("podometer.tar");
    super::run(
        Command::new("podman")
            .args(["save", "--quiet", "--format", "docker-archive", "-o"])
            .arg(&archive)
            .arg(podometer_image()),
    );
    super::run(Command::new("bash").arg(script()).arg("load-image").arg(&archive));
}

// ---------------------------------------------------------------------------------------------
// The receiver.

/// One number point as received, flattened.
#[derive(Debug, Clone)]
pub struct Point {
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub attrs: BTreeMap<String, String>,
    pub value: f64,
    /// The point's own time (the sweep's).
    pub time_ns: u64,
    /// When the receiver got it.
    pub received: Instant,
}

impl Point {
    pub fn res(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

fn text(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    fn one(v: &any_value::Value) -> String {
        match v {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::IntValue(i) => i.to_string(),
            any_value::Value::BoolValue(b) => b.to_string(),
            any_value::Value::DoubleValue(d) => d.to_string(),
            any_value::Value::ArrayValue(a) => {
                a.values.iter().filter_map(|v| v.value.as_ref()).map(one).collect::<Vec<_>>().join(",")
            }
            other => format!("{other:?}"),
        }
    }
    kvs.iter().filter_map(|kv| Some((kv.key.clone(), one(kv.value.as_ref()?.value.as_ref()?)))).collect()
}

pub fn flatten(req: &ExportMetricsServiceRequest, received: Instant) -> Vec<Point> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let resource = rm.resource.as_ref().map(|r| text(&r.attributes)).unwrap_or_default();
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let points = match &m.data {
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    _ => continue,
                };
                for p in points {
                    let value = match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => continue,
                    };
                    out.push(Point {
                        resource: resource.clone(),
                        name: m.name.clone(),
                        attrs: text(&p.attributes),
                        value,
                        time_ns: p.time_unix_nano,
                        received,
                    });
                }
            }
        }
    }
    out
}

type Received = Arc<Mutex<Vec<(Instant, ExportMetricsServiceRequest)>>>;

struct Receiver(Received);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push((Instant::now(), request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC receiver on `HOST_ADDR` (which exists only while the node is up), on a runtime
/// of its own; stopped on drop.
pub struct OtlpSink {
    pub port: u16,
    received: Received,
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpSink {
    pub fn start() -> OtlpSink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((HOST_ADDR, 0)))
            .unwrap_or_else(|e| panic!("bind {HOST_ADDR}: {e} (is the node up?)"));
        let port = listener.local_addr().unwrap().port();
        let received: Received = Arc::default();
        let service = MetricsServiceServer::new(Receiver(received.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("receiver runs");
        });
        OtlpSink { port, received, runtime: Some(runtime) }
    }

    /// For OTEL_EXPORTER_OTLP_ENDPOINT in a pod.
    pub fn endpoint(&self) -> String {
        format!("http://{HOST_ADDR}:{}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Every point received so far, in arrival order.
    pub fn points(&self) -> Vec<Point> {
        self.received.lock().unwrap().iter().flat_map(|(at, r)| flatten(r, *at)).collect()
    }

    /// Points received after `since`.
    pub fn points_since(&self, since: Instant) -> Vec<Point> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at > since)
            .flat_map(|(at, r)| flatten(r, *at))
            .collect()
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests.

/// `kubectl kustomize DIR` (relative to the repository), every object as JSON.
pub fn kustomize(dir: &str) -> Vec<Json> {
    let text = super::run(Command::new("kubectl").args(["kustomize", &format!("{ROOT}/{dir}")]));
    serde_saphyr::from_multiple(&text).expect("kustomize output is YAML")
}

/// Sets (or adds) one env variable of a container.
pub fn set_env(container: &mut Json, name: &str, value: &str) {
    let env = container["env"].as_array_mut().expect("the container has env");
    env.retain(|e| e["name"] != name);
    env.push(serde_json::json!({"name": name, "value": value}));
}

/// The DaemonSet of `overlay` made to run on this node, and only that: the OTLP endpoint is
/// the test's receiver, the API server is reached at the node's address (no kube-proxy), the
/// sweep interval is `interval` (PODOMETER_INTERVAL, which the shipped config reads), and the
/// kubelet tree is where this node's `cgroupRoot` puts it (`sources.cgroups.layouts.kubelet`,
/// as the layouts' doc says to set when the kubelet has a cgroup root). Returns a List to
/// apply.
pub fn node_daemonset(overlay: &str, endpoint: &str, interval: &str) -> Json {
    let mut objects = kustomize(overlay);
    let mut patched = (false, false);
    for o in &mut objects {
        match o["kind"].as_str() {
            Some("ConfigMap")
                if o["metadata"]["name"].as_str().unwrap_or("").starts_with("podometer-config") =>
            {
                let config = o["data"]["podometer.yaml"].as_str().expect("podometer.yaml").to_owned();
                let from = "  cgroups:\n    root: /host/sys/fs/cgroup\n";
                let to = format!("{from}    layouts:\n      kubelet: [{KUBEPODS}]\n");
                assert!(config.contains(from), "the agent config's cgroups source moved: {config}");
                o["data"]["podometer.yaml"] = Json::String(config.replace(from, &to));
                patched.0 = true;
            }
            Some("DaemonSet") => {
                let c = &mut o["spec"]["template"]["spec"]["containers"][0];
                set_env(c, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
                set_env(c, "PODOMETER_INTERVAL", interval);
                set_env(c, "KUBERNETES_SERVICE_HOST", API_HOST);
                set_env(c, "KUBERNETES_SERVICE_PORT", API_PORT);
                patched.1 = true;
            }
            _ => {}
        }
    }
    assert_eq!(patched, (true, true), "{overlay} has no podometer ConfigMap or DaemonSet");
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
}

/// Applies a JSON object or List.
pub fn apply(node: &KubeNode, objects: &Json) {
    node.kubectl_ok(&["apply", "-f", "-"], Some(&objects.to_string()));
}

/// `kubectl get -o json`.
pub fn get_json(node: &KubeNode, args: &[&str]) -> Json {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&node.kubectl_ok(&all, None)).expect("kubectl JSON")
}

/// Waits for a rollout; on failure the pods and their events are in the message.
pub fn rollout(node: &KubeNode, namespace: &str, what: &str) {
    let out = node.kubectl(&["-n", namespace, "rollout", "status", what, "--timeout=120s"], None);
    if !out.status.success() {
        let describe = node.kubectl(&["-n", namespace, "describe", "pods"], None);
        panic!(
            "{what} did not roll out: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&describe.stdout)
        );
    }
}

/// The pods of a namespace with a label selector.
pub fn pods(node: &KubeNode, namespace: &str, selector: &str) -> Vec<Json> {
    get_json(node, &["-n", namespace, "get", "pods", "-l", selector])["items"].as_array().unwrap().clone()
}

/// `(container name, 64-hex id)` of every started container of a pod.
pub fn container_ids(pod: &Json) -> Vec<(String, String)> {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let id = s["containerID"].as_str()?.strip_prefix("containerd://")?;
                    Some((s["name"].as_str()?.to_owned(), id.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn logs(node: &KubeNode, namespace: &str, pod: &str) -> String {
    String::from_utf8_lossy(&node.kubectl(&["-n", namespace, "logs", pod, "--all-containers"], None).stdout)
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// The kernel's numbers, read on the host.

/// A pod's cgroup directory below a hierarchy (`cpuacct`, `memory`, `unified`):
/// `/sys/fs/cgroup/<h>/podometer-kube/kubepods/[<qos>/]pod<uid>`.
pub fn pod_cgroup(hierarchy: &str, pod: &Json) -> PathBuf {
    let uid = pod["metadata"]["uid"].as_str().expect("pod uid");
    let qos = pod["status"]["qosClass"].as_str().expect("qosClass").to_lowercase();
    let mut p = PathBuf::from(format!("/sys/fs/cgroup/{hierarchy}/{KUBEPODS}"));
    if qos != "guaranteed" {
        p.push(qos);
    }
    p.push(format!("pod{uid}"));
    p
}

fn read_u64(path: PathBuf) -> u64 {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim().parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stat_field(path: PathBuf, key: &str) -> u64 {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}", path.display()))
}

/// CPU seconds of a cgroup (a pod's, or one of its containers' with `Some(id)`): the unified
/// hierarchy's `cpu.stat` `usage_usec`, the scheduler's exact runtime.
pub fn kernel_cpu(pod: &Json, container: Option<&str>) -> f64 {
    let mut dir = pod_cgroup("unified", pod);
    if let Some(id) = container {
        dir.push(id);
    }
    stat_field(dir.join("cpu.stat"), "usage_usec") as f64 / 1e6
}

/// The kubelet's working set of a cgroup: `memory.usage_in_bytes` minus `total_inactive_file`
/// (never below zero).
pub fn kernel_working_set(pod: &Json, container: Option<&str>) -> u64 {
    let mut dir = pod_cgroup("memory", pod);
    if let Some(id) = container {
        dir.push(id);
    }
    let usage = read_u64(dir.join("memory.usage_in_bytes"));
    usage.saturating_sub(stat_field(dir.join("memory.stat"), "total_inactive_file"))
}

/// The pids of a cgroup (a container's) in the v1 memory hierarchy.
pub fn cgroup_pids(pod: &Json, container: &str) -> Vec<u32> {
    let path = pod_cgroup("memory", pod).join(container).join("cgroup.procs");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `(rx bytes, tx bytes)` of each interface in the network namespace of `pid`, from
/// `/proc/<pid>/net/dev` read on the host.
pub fn net_dev(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).expect("net/dev");
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            Some((name.trim().to_owned(), (*f.first()?, *f.get(8)?)))
        })
        .collect()
}

/// Parsed events of the API server's audit log.
pub fn audit_events(node: &KubeNode) -> Vec<Json> {
    let text = std::fs::read_to_string(&node.env["KUBE_AUDIT_LOG"]).expect("audit log");
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Polls `done` every 200 ms until it returns `Some`; after `limit` panics with `context()`.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}; {}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}
