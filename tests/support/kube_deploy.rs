//! What the live tests of podometer on the real node (`KubeNode`) share: an OTLP/gRPC receiver
//! the agent's pods reach, the podometer image in the node, the shipped manifests applied
//! through a kustomization of the test's own with what only this node needs, and the kernel's
//! own numbers of a pod or container read on the host (tests/kube_*.rs).
//!
//! Reaching the receiver: the node's network namespace has a veth whose host end is
//! 10.216.0.1 (scripts/kube-node.sh), and a pod's default route leads through the node's bridge
//! and that veth to the host, which routes the pod range back. So a receiver bound to
//! 10.216.0.1 on the host is reachable from every pod and from hostNetwork pods alike, and from
//! nothing outside the node (the address exists only while the node is up). It is in-process
//! (tonic) rather than VictoriaMetrics, whose helper does not listen there, and keeps every
//! point's exact value and attributes as sent.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, NumberDataPoint};
use serde_json::Value as Json;
use tonic::codec::CompressionEncoding;

use crate::support::kube_node::KubeNode;

/// The host end of the node's veth (scripts/kube-node.sh `host_addr`).
pub const HOST_ADDR: &str = "10.216.0.1";
/// The kubelet's cgroupRoot on the test node (scripts/kube-node.sh `cgroot`).
pub const NODE_CGROUP_ROOT: &str = "podometer-kube";
/// Where the kubelet puts pods below each hierarchy: `/podometer-kube/kubepods/…`.
pub const KUBEPODS: &str = "podometer-kube/kubepods";
/// The node's containerd state directory (scripts/kube-node.sh `$run/containerd/state`, under
/// its cache directory: KUBE_CACHE moves it).
pub fn node_containerd_state() -> PathBuf {
    crate::support::kube_node::cache_dir().join("run/containerd/state")
}
/// The API server from a pod: the node's address (its certificate names it). The service
/// address (10.218.0.1) does not route: the node runs no kube-proxy.
pub const API_HOST: &str = "10.216.0.2";
pub const API_PORT: &str = "6443";
/// The agent's sweep interval in these tests (`PODOMETER_INTERVAL`): seconds, not tens of them.
pub const NODE_INTERVAL: &str = "2s";
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn podometer_image() -> String {
    format!("localhost/podometer:{}", env!("CARGO_PKG_VERSION"))
}

// ---------------------------------------------------------------------------------------------
// The receiver

/// One export request as received, with the host's clock at its arrival.
#[derive(Clone)]
pub struct Received {
    pub at: SystemTime,
    pub request: ExportMetricsServiceRequest,
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl MetricsService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        self.0.lock().unwrap().push(Received { at: SystemTime::now(), request });
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC receiver on `HOST_ADDR`, stopped (listener closed, connections sent GOAWAY and
/// closed) and resumed on the same port at will.
pub struct Sink {
    pub port: u16,
    store: Store,
    runtime: tokio::runtime::Runtime,
    server: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Sink {
    pub fn start() -> Sink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((HOST_ADDR, 0)))
            .expect("bind the receiver on the node's veth (is the node up?)");
        let port = listener.local_addr().unwrap().port();
        let mut sink = Sink { port, store: Store::default(), runtime, server: None };
        sink.serve(listener);
        sink
    }

    pub fn endpoint(&self) -> String {
        format!("http://{HOST_ADDR}:{}", self.port)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let service = MetricsServiceServer::new(self.store.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = self.runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .expect("the test's OTLP receiver runs");
        });
        self.server = Some((tx, task));
    }

    /// Down: nothing listens on the port and open connections are closed.
    pub fn stop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let done =
                self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            if done.is_err() {
                panic!("the receiver did not stop within 10 s");
            }
        }
    }

    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "receiver already running");
        let addr: SocketAddr = format!("{HOST_ADDR}:{}", self.port).parse().unwrap();
        let listener =
            self.runtime.block_on(tokio::net::TcpListener::bind(addr)).expect("bind the receiver again");
        self.serve(listener);
    }

    pub fn received(&self) -> Vec<Received> {
        self.store.0.lock().unwrap().clone()
    }

    /// How many export requests arrived.
    pub fn requests(&self) -> usize {
        self.store.0.lock().unwrap().len()
    }

    /// Every point received so far, in arrival order.
    pub fn points(&self) -> Vec<Point> {
        self.received().iter().flat_map(points_of).collect()
    }

    /// The points of the requests that arrived after `since`.
    pub fn points_since(&self, since: SystemTime) -> Vec<Point> {
        self.received().iter().filter(|r| r.at > since).flat_map(points_of).collect()
    }

    /// Waits until `pred` holds for the points received so far; panics after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[Point]) -> bool,
    ) -> Vec<Point> {
        let start = Instant::now();
        loop {
            let points = self.points();
            if pred(&points) {
                return points;
            }
            assert!(
                start.elapsed() < timeout,
                "{what}: not seen within {timeout:?} ({} points received)",
                points.len()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some((tx, _)) = self.server.take() {
            let _ = tx.send(());
        }
    }
}

pub type Attrs = BTreeMap<String, String>;

/// One data point with its Resource's attributes.
#[derive(Debug, Clone)]
pub struct Point {
    pub resource: Arc<Attrs>,
    pub name: String,
    pub attrs: Attrs,
    pub start_ns: u64,
    pub time_ns: u64,
    pub value: f64,
    /// When the request carrying it arrived.
    pub received: SystemTime,
}

impl Point {
    pub fn res(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.time_ns)
    }
    /// What identifies the series: metric name, Resource and point attributes.
    pub fn series_key(&self) -> String {
        format!("{} {:?} {:?}", self.name, self.resource, self.attrs)
    }
}

fn attr_string(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            items.join(",")
        }
        other => format!("{other:?}"),
    }
}

pub fn points_of(received: &Received) -> Vec<Point> {
    let mut out = Vec::new();
    for rm in &received.request.resource_metrics {
        let resource: Arc<Attrs> = Arc::new(
            rm.resource
                .as_ref()
                .map(|r| r.attributes.iter().map(|kv| (kv.key.clone(), attr_string(kv))).collect())
                .unwrap_or_default(),
        );
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let points: &[NumberDataPoint] = match &m.data {
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    _ => continue,
                };
                for dp in points {
                    let value = match dp.value {
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        None => continue,
                    };
                    out.push(Point {
                        resource: resource.clone(),
                        name: m.name.clone(),
                        attrs: dp.attributes.iter().map(|kv| (kv.key.clone(), attr_string(kv))).collect(),
                        start_ns: dp.start_time_unix_nano,
                        time_ns: dp.time_unix_nano,
                        value,
                        received: received.at,
                    });
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Kustomizations

/// The test's kustomization over one shipped directory (`deploy/kubernetes` or an overlay),
/// in a temporary directory: `kubectl apply -k` of it is what a user's own overlay does.
pub struct Overlay {
    pub dir: tempfile::TempDir,
}

impl Overlay {
    /// `shipped`: relative to deploy/kubernetes (`.`, `overlays/host-peers`, …). `body`: the
    /// kustomization's lines after `resources:` (images, patches, generators).
    pub fn new(shipped: &str, body: &str, files: &[(&str, &str)]) -> Overlay {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes").join(shipped);
        let target = std::fs::canonicalize(&target).expect("shipped kustomization");
        // kustomize refuses absolute resource paths: the way up from the temp dir and down.
        let up = std::fs::canonicalize(dir.path()).unwrap().components().count() - 1;
        let rel: PathBuf =
            std::iter::repeat_n("..", up).collect::<PathBuf>().join(target.strip_prefix("/").unwrap());
        let text = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n{body}",
            rel.display()
        );
        std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        Overlay { dir }
    }

    pub fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

/// The kustomization lines that set the image and the OTLP endpoint, the two things a user sets.
pub fn image_and_endpoint(endpoint: &str) -> String {
    let image = podometer_image();
    let (name, tag) = image.rsplit_once(':').unwrap();
    format!(
        r#"images:
  - name: localhost/podometer
    newName: {name}
    newTag: "{tag}"
patches:
{AGENT_PATCH_HEAD}                env:
                  - name: OTEL_EXPORTER_OTLP_ENDPOINT
                    value: {endpoint}
"#
    )
}

/// The head of a kustomize patch of the shipped DaemonSet down to its `podometer` container:
/// container fields (`env:`, `volumeMounts:`) at 16 spaces, then pod fields (`volumes:`) at 12
/// complete it.
pub const AGENT_PATCH_HEAD: &str = "  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: podometer, namespace: podometer}
      spec:
        template:
          spec:
            containers:
              - name: podometer
";

/// What only this test node needs, as a patch after `image_and_endpoint`'s, with why:
/// - the node's containerd keeps its state under the node's run directory, not in
///   /run/containerd (scripts/kube-node.sh keeps the host's own paths untouched), so the
///   bundle volume points there; the mount inside the pod is the shipped one;
/// - `PODOMETER_INTERVAL` (the shipped config's own knob) at `interval` so the test waits
///   seconds, not tens of seconds.
pub fn node_patch(interval: &str) -> String {
    node_patch_with(interval, true)
}

/// `node_patch`, with the bundle volume pointed at the node's containerd state only when
/// `node_bundles` (else it stays the shipped /run/containerd path, where this node keeps none).
fn node_patch_with(interval: &str, node_bundles: bool) -> String {
    let volumes = if node_bundles {
        format!(
            r#"            volumes:
              - name: containerd-bundles
                hostPath:
                  path: {}/io.containerd.runtime.v2.task
"#,
            node_containerd_state().display()
        )
    } else {
        String::new()
    };
    format!(
        r#"{AGENT_PATCH_HEAD}                env:
                  - name: PODOMETER_INTERVAL
                    value: {interval}
{volumes}"#
    )
}

/// The `kubernetes` Service's ClusterIP does not route on this node (no kube-proxy): the
/// in-cluster client is pointed at the API server's own address, as the kubelet's service
/// variables would be on a node with kube-proxy.
pub fn api_server_env_patch() -> String {
    format!(
        r#"{AGENT_PATCH_HEAD}                env:
                  - name: KUBERNETES_SERVICE_HOST
                    value: {API_HOST}
                  - name: KUBERNETES_SERVICE_PORT
                    value: "{API_PORT}"
"#
    )
}

/// The agent's DaemonSet on this node: a shipped kustomization (`.` or an overlay) with the
/// image and endpoint a user sets (`image_and_endpoint`), what this node needs (`node_patch`),
/// and the shipped agent config with this node's cgroup root (`node_agent_config`).
pub struct NodeAgent {
    /// Relative to deploy/kubernetes: `.`, `overlays/k8s-api`, …
    pub shipped: String,
    /// The agent config the ConfigMap is made from, relative to deploy/kubernetes.
    pub config_file: String,
    /// Lines for `exporters.otlp` (see `node_agent_config`).
    pub otlp_body: Option<String>,
    /// More kustomization patches, after the node's.
    pub extra_patches: String,
    /// Whether `runtime_files` is given the node's bundles (`node_patch`).
    pub node_bundles: bool,
}

impl NodeAgent {
    pub fn new(shipped: &str, config_file: &str) -> NodeAgent {
        NodeAgent {
            shipped: shipped.to_owned(),
            config_file: config_file.to_owned(),
            otlp_body: None,
            extra_patches: String::new(),
            node_bundles: true,
        }
    }

    /// The shipped base DaemonSet and its config.
    pub fn base() -> NodeAgent {
        NodeAgent::new(".", "base/agent.yaml")
    }

    /// The k8s-api overlay, its config, and the API server's address.
    pub fn k8s_api() -> NodeAgent {
        NodeAgent::new("overlays/k8s-api", "overlays/k8s-api/agent.yaml").patch(&api_server_env_patch())
    }

    pub fn otlp(mut self, body: &str) -> NodeAgent {
        self.otlp_body = Some(body.to_owned());
        self
    }

    pub fn patch(mut self, patch: &str) -> NodeAgent {
        self.extra_patches.push_str(patch);
        self
    }

    /// The bundle volume as shipped (/run/containerd, where this node keeps no bundles):
    /// `runtime_files` names nothing, so names can only come from elsewhere.
    pub fn without_node_bundles(mut self) -> NodeAgent {
        self.node_bundles = false;
        self
    }

    /// The kustomization, exporting to `endpoint`.
    pub fn overlay(&self, endpoint: &str) -> Overlay {
        let config = node_agent_config(&self.config_file, self.otlp_body.as_deref());
        let body = format!(
            "{}{}{}{CONFIG_GENERATOR}",
            image_and_endpoint(endpoint),
            node_patch_with(NODE_INTERVAL, self.node_bundles),
            self.extra_patches,
        );
        Overlay::new(&self.shipped, &body, &[("podometer.yaml", &config)])
    }
}

/// `kubectl apply -k`; its stderr (warnings land there).
pub fn apply_overlay(node: &KubeNode, overlay: &Overlay) -> String {
    let out = node.kubectl(&["apply", "-k", overlay.path()], None);
    assert!(out.status.success(), "apply -k failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How a test of the agent's DaemonSet begins: the node up, the receiver, the podometer image
/// in the node, `workload` (objects as YAML or JSON) applied, then the agent as `agent` says,
/// rolled out (its pod Ready through its real probes). The workload's pods may or may not be
/// Ready yet: the test waits for what it needs.
pub fn node_with_agent(workload: &str, agent: &NodeAgent) -> (KubeNode, Sink) {
    let node = KubeNode::up();
    let sink = Sink::start();
    load_podometer_image(&node);
    node.kubectl_ok(&["apply", "-f", "-"], Some(workload));
    apply_overlay(&node, &agent.overlay(&sink.endpoint()));
    node.rollout("podometer", "daemonset/podometer", "120s");
    (node, sink)
}

/// The shipped agent config (`deploy/kubernetes/<file>`) with the kubelet cgroup root of this
/// node added to the kubelet layouts (the kubelet here runs with `cgroupRoot: /podometer-kube`,
/// so that its pods never mix with the /kubepods trees other tests make; the config's
/// `layouts.kubelet` doc says to add a kubelet's cgroup root there), and `extra` lines
/// inserted after `exporters:\n  otlp:` when given.
pub fn node_agent_config(file: &str, otlp_body: Option<&str>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes").join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    let anchor = "    root: /host/sys/fs/cgroup\n";
    assert_eq!(text.matches(anchor).count(), 1, "{file}: the cgroups root line moved");
    text = text.replace(
        anchor,
        &format!("{anchor}    layouts:\n      kubelet: [kubepods, kubepods.slice, {KUBEPODS}]\n"),
    );
    if let Some(body) = otlp_body {
        let otlp = "  otlp: {}\n";
        assert_eq!(text.matches(otlp).count(), 1, "{file}: the otlp exporter line moved");
        text = text.replace(otlp, &format!("  otlp:\n{body}"));
    }
    text
}

/// The generator line that replaces the ConfigMap with `podometer.yaml` from the overlay dir.
pub const CONFIG_GENERATOR: &str = r#"configMapGenerator:
  - name: podometer-config
    namespace: podometer
    behavior: replace
    files:
      - podometer.yaml=podometer.yaml
"#;

// ---------------------------------------------------------------------------------------------
// The node

/// Loads the podometer image (built by scripts/image.sh) into the node's containerd.
pub fn load_podometer_image(node: &KubeNode) {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("podometer.tar");
    crate::support::run(
        Command::new("podman")
            .args(["save", "--quiet", "--format", "docker-archive", "-o"])
            .arg(&tar)
            .arg(podometer_image()),
    );
    node.load_image(&tar);
}

/// Podman and the podometer image in it (scripts/image.sh builds it).
pub fn podometer_image_available() -> bool {
    crate::support::prerequisite(crate::support::have_command("podman"), "podman")
        && crate::support::prerequisite(
            Command::new("podman")
                .args(["image", "exists", &podometer_image()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            "the podometer image (scripts/image.sh builds it)",
        )
}

/// The cgroup directory of a container (its 64-hex id) in one hierarchy, below the node's root.
pub fn container_cgroup(hierarchy: &str, id: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, id: &str, depth: u32) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if e.file_name().to_str() == Some(id) {
                return Some(e.path());
            }
            if depth > 0 {
                if let Some(p) = walk(&e.path(), id, depth - 1) {
                    return Some(p);
                }
            }
        }
        None
    }
    walk(&Path::new("/sys/fs/cgroup").join(hierarchy).join(NODE_CGROUP_ROOT), id, 4)
}

/// The kernel's CPU time of a container cgroup in seconds: `usage_usec` of the unified
/// hierarchy's cpu.stat (what the split user/system the agent reports add up to), else
/// cpuacct.usage.
pub fn kernel_cpu_seconds(id: &str) -> f64 {
    if let Some(dir) = container_cgroup("unified", id) {
        if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) {
            if let Some(v) = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")) {
                return v.trim().parse::<u64>().unwrap() as f64 / 1e6;
            }
        }
    }
    let dir = container_cgroup("cpuacct", id).unwrap_or_else(|| panic!("no cpuacct cgroup for {id}"));
    std::fs::read_to_string(dir.join("cpuacct.usage")).unwrap().trim().parse::<u64>().unwrap() as f64 / 1e9
}

pub fn kernel_memory_bytes(id: &str) -> u64 {
    let dir = container_cgroup("memory", id).unwrap_or_else(|| panic!("no memory cgroup for {id}"));
    std::fs::read_to_string(dir.join("memory.usage_in_bytes")).unwrap().trim().parse().unwrap()
}

/// `(receive, transmit)` bytes of each interface in /proc/net/dev text.
pub fn net_dev_table(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            Some((name.trim().to_owned(), (*f.first()?, *f.get(8)?)))
        })
        .collect()
}

/// `(receive, transmit)` bytes of `interface` in /proc/net/dev text.
pub fn net_dev_bytes(text: &str, interface: &str) -> Option<(u64, u64)> {
    net_dev_table(text).get(interface).copied()
}

/// `(receive, transmit)` bytes of each interface in the network namespace of `pid`, from
/// `/proc/<pid>/net/dev` read on the host.
pub fn net_dev(pid: u32) -> BTreeMap<String, (u64, u64)> {
    net_dev_table(&std::fs::read_to_string(format!("/proc/{pid}/net/dev")).expect("net/dev"))
}

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

// ---------------------------------------------------------------------------------------------
// The API server, as a test reads it.

/// Applies a JSON object or List.
pub fn apply_json(node: &KubeNode, objects: &Json) {
    node.kubectl_ok(&["apply", "-f", "-"], Some(&objects.to_string()));
}

/// Sets (or adds) one env variable of a container.
pub fn set_env(container: &mut Json, name: &str, value: &str) {
    let env = container["env"].as_array_mut().expect("the container has env");
    env.retain(|e| e["name"] != name);
    env.push(serde_json::json!({"name": name, "value": value}));
}

/// The pods of a namespace with a label selector.
pub fn pods(node: &KubeNode, namespace: &str, selector: &str) -> Vec<Json> {
    node.get_json(namespace, &["pods", "-l", selector])["items"].as_array().unwrap().clone()
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
