//! `runtime_files` against fixture files laid out as each runtime lays them out. containerd
//! runs live in `metadata_containerd.rs`; CRI-O is not packaged for Debian 12 and no other
//! package source is reachable from these machines, so its bundles are fixtures written from
//! CRI-O's own code (`server/container_create_linux.go`: `config.json` in the run and storage
//! directories, the `io.kubernetes.cri-o.*` annotations and the kubelet's labels copied into
//! annotations). Bad input (truncated, huge, not JSON, missing annotations) is only possible
//! with fixtures.
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use podometer::agent_counters::Telemetry;
use podometer::model::{
    AttrValue, ContainerInfo, PodRef, Point, ResourceId, Runtime, Sweep, SweepContext, Value,
};
use podometer::processors::metadata::runtime_files::{RuntimeFiles, RuntimeFilesConfig};
use podometer::processors::Processor;
use podometer::semconv;

const CTR: &str = "0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9e0d1c";
const SANDBOX: &str = "5d2b1f0cf3e0e2f6b7a2d14cb0d6a9f2e4b7c1d8a3f5e6b7c8d9e0f1a2b3c4d5";
const K8S_UID: &str = "0f7e3c1a-5b2d-4c8e-9a6f-1d2e3f4a5b6c";
const CRIO_CTR: &str = "7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";
const CRIO_SANDBOX: &str = "1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e";
const CRIO_UID: &str = "9c8b7a6f-5e4d-4c3b-8a29-1f0e9d8c7b6a";
const PODMAN_POD: &str = "aaaabbbbccccddddeeeeffff00001111222233334444555566667777888899990";
const PODMAN_INFRA: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const PODMAN_APP: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime_files").join(name)
}

/// A node's directories under a temporary root.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn config(&self) -> RuntimeFilesConfig {
        RuntimeFilesConfig {
            containerd_state: self.dir.path().join("run/containerd"),
            storage_runroot: self.dir.path().join("run/containers/storage"),
            storage_root: self.dir.path().join("var/lib/containers/storage"),
            ..RuntimeFilesConfig::default()
        }
    }

    fn put(&self, relative: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    fn put_fixture(&self, relative: &str, fixture_name: &str) -> PathBuf {
        self.put(relative, &std::fs::read(fixture(fixture_name)).unwrap())
    }

    fn containerd_bundle(&self, id: &str, fixture_name: &str) {
        self.put_fixture(
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"),
            fixture_name,
        );
    }
}

fn k8s(id: &str, runtime: Runtime, uid: &str) -> ContainerInfo {
    ContainerInfo {
        id: id.to_owned(),
        runtime,
        pod: Some(PodRef::Kubernetes { uid: uid.to_owned(), qos: "burstable".into() }),
        procs_file: PathBuf::from("/nonexistent/cgroup.procs"),
    }
}

/// A sweep as the sources make it: one resource per container (with the attributes the cgroup
/// path gives) and one per Kubernetes pod.
fn sweep_of(containers: &[ContainerInfo]) -> (SweepContext, Sweep) {
    let now = SystemTime::now();
    let mut ctx = SweepContext::new(now);
    ctx.containers = containers.iter().cloned().map(std::sync::Arc::new).collect();
    let mut sweep = Sweep::new(now);
    for c in containers {
        let mut attrs = vec![
            (semconv::CONTAINER_ID, AttrValue::from(c.id.as_str())),
            (semconv::CONTAINER_RUNTIME_NAME, c.runtime.as_str().into()),
        ];
        match &c.pod {
            Some(PodRef::Kubernetes { uid, .. }) => {
                attrs.push((semconv::K8S_POD_UID, uid.as_str().into()));
                sweep
                    .resource_mut(ResourceId::Pod(uid.clone()), || {
                        vec![(semconv::K8S_POD_UID, uid.as_str().into())]
                    })
                    .points
                    .push(Point::new(&semconv::POD.memory_usage, Value::Int(1)));
            }
            Some(PodRef::Podman { id }) => attrs.push((semconv::PODMAN_POD_ID, id.as_str().into())),
            None => {}
        }
        sweep
            .resource_mut(c.resource_id(), || attrs)
            .points
            .push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(1)));
    }
    (ctx, sweep)
}

fn run(processor: &mut RuntimeFiles, containers: &[ContainerInfo]) -> Sweep {
    let (ctx, mut sweep) = sweep_of(containers);
    processor.process(&ctx, &mut sweep);
    sweep
}

fn attr<'a>(sweep: &'a Sweep, id: &ResourceId, key: &str) -> Option<&'a AttrValue> {
    sweep.resource(id).unwrap_or_else(|| panic!("no resource {id:?}")).attribute(key)
}

fn str_attr<'a>(sweep: &'a Sweep, id: &ResourceId, key: &str) -> Option<&'a str> {
    match attr(sweep, id, key)? {
        AttrValue::Str(s) => Some(s),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn container(id: &str) -> ResourceId {
    ResourceId::Container(id.to_owned())
}

#[test]
fn containerd_cri_bundles_name_the_container_the_sandbox_and_the_pod() {
    let node = Node::new();
    node.containerd_bundle(CTR, "containerd-container.json");
    node.containerd_bundle(SANDBOX, "containerd-sandbox.json");
    let mut p = RuntimeFiles::new(node.config());
    let containers = [k8s(SANDBOX, Runtime::Containerd, K8S_UID), k8s(CTR, Runtime::Containerd, K8S_UID)];
    let s = run(&mut p, &containers);

    let c = container(CTR);
    assert_eq!(str_attr(&s, &c, semconv::K8S_CONTAINER_NAME), Some("app"));
    assert_eq!(str_attr(&s, &c, semconv::CONTAINER_NAME), Some("app"));
    assert_eq!(str_attr(&s, &c, semconv::CONTAINER_IMAGE_NAME), Some("registry.example:5000/shop/web"));
    assert_eq!(attr(&s, &c, semconv::CONTAINER_IMAGE_TAGS), Some(&AttrValue::StrArray(vec!["2.4.1".into()])));
    assert_eq!(str_attr(&s, &c, semconv::K8S_POD_NAME), Some("web-7d4b9c-x2x"));
    assert_eq!(str_attr(&s, &c, semconv::K8S_NAMESPACE_NAME), Some("shop"));
    let sb = container(SANDBOX);
    assert_eq!(str_attr(&s, &sb, semconv::K8S_POD_NAME), Some("web-7d4b9c-x2x"));
    assert_eq!(str_attr(&s, &sb, semconv::K8S_CONTAINER_NAME), None);
    assert_eq!(str_attr(&s, &sb, semconv::CONTAINER_NAME), None);
    let pod = ResourceId::Pod(K8S_UID.into());
    assert_eq!(str_attr(&s, &pod, semconv::K8S_POD_NAME), Some("web-7d4b9c-x2x"));
    assert_eq!(str_attr(&s, &pod, semconv::K8S_NAMESPACE_NAME), Some("shop"));
    // The cgroup path's attributes stay as they were, once each.
    let r = s.resource(&c).unwrap();
    assert_eq!(r.attributes.iter().filter(|(k, _)| *k == semconv::K8S_POD_UID).count(), 1);

    // Read once: a changed file is not read again while the container lives.
    node.put(&format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{CTR}/config.json"), b"{}");
    let s = run(&mut p, &containers);
    assert_eq!(str_attr(&s, &c, semconv::K8S_CONTAINER_NAME), Some("app"));

    // Gone containers are forgotten, their pod with them.
    let s = run(&mut p, &containers[..1]);
    assert!(s.resource(&c).is_none());
    assert!(!p.snapshot().containers.contains_key(CTR));
    assert!(p.snapshot().pods.contains_key(K8S_UID), "the sandbox still names the pod");
    run(&mut p, &[]);
    assert!(p.snapshot().containers.is_empty() && p.snapshot().pods.is_empty(), "{:?}", p.snapshot());
}

#[test]
fn crio_bundles_in_the_run_or_the_storage_directory_give_kubernetes_names() {
    let node = Node::new();
    node.put_fixture(
        &format!("run/containers/storage/overlay-containers/{CRIO_CTR}/userdata/config.json"),
        "crio-container.json",
    );
    // Only the storage directory's copy of the sandbox's: the run directory's is gone.
    node.put_fixture(
        &format!("var/lib/containers/storage/overlay-containers/{CRIO_SANDBOX}/userdata/config.json"),
        "crio-sandbox.json",
    );
    let mut p = RuntimeFiles::new(node.config());
    let s =
        run(&mut p, &[k8s(CRIO_CTR, Runtime::CriO, CRIO_UID), k8s(CRIO_SANDBOX, Runtime::CriO, CRIO_UID)]);
    let c = container(CRIO_CTR);
    assert_eq!(str_attr(&s, &c, semconv::K8S_CONTAINER_NAME), Some("redis"));
    assert_eq!(
        str_attr(&s, &c, semconv::CONTAINER_NAME),
        Some("k8s_redis_cache-0_data_9c8b7a6f-5e4d-4c3b-8a29-1f0e9d8c7b6a_0")
    );
    assert_eq!(str_attr(&s, &c, semconv::CONTAINER_IMAGE_NAME), Some("docker.io/library/redis"));
    assert_eq!(str_attr(&s, &c, semconv::K8S_POD_NAME), Some("cache-0"));
    assert_eq!(str_attr(&s, &c, semconv::K8S_NAMESPACE_NAME), Some("data"));
    let sb = container(CRIO_SANDBOX);
    assert_eq!(str_attr(&s, &sb, semconv::K8S_POD_NAME), Some("cache-0"));
    assert_eq!(str_attr(&s, &sb, semconv::K8S_CONTAINER_NAME), None);
    assert_eq!(str_attr(&s, &sb, semconv::CONTAINER_IMAGE_NAME), Some("registry.k8s.io/pause"));
    assert_eq!(str_attr(&s, &ResourceId::Pod(CRIO_UID.into()), semconv::K8S_NAMESPACE_NAME), Some("data"));
}

#[test]
fn podman_names_come_from_the_store_and_the_pod_name_from_the_infra_hostname() {
    let node = Node::new();
    let store = "var/lib/containers/storage/overlay-containers";
    node.put_fixture(&format!("{store}/containers.json"), "podman-containers.json");
    node.put_fixture(&format!("{store}/{PODMAN_INFRA}/userdata/config.json"), "podman-infra.json");
    let info = |id: &str| ContainerInfo {
        id: id.to_owned(),
        runtime: Runtime::Podman,
        pod: Some(PodRef::Podman { id: PODMAN_POD.to_owned() }),
        procs_file: PathBuf::from("/nonexistent"),
    };
    let mut p = RuntimeFiles::new(node.config());
    let s = run(&mut p, &[info(PODMAN_INFRA), info(PODMAN_APP)]);
    let app = container(PODMAN_APP);
    assert_eq!(str_attr(&s, &app, semconv::CONTAINER_NAME), Some("blog-web"));
    assert_eq!(str_attr(&s, &app, semconv::CONTAINER_IMAGE_NAME), Some("docker.io/library/nginx"));
    assert_eq!(
        attr(&s, &app, semconv::CONTAINER_IMAGE_TAGS),
        Some(&AttrValue::StrArray(vec!["1.27".into()]))
    );
    assert_eq!(str_attr(&s, &app, semconv::PODMAN_POD_NAME), Some("blog"));
    assert_eq!(str_attr(&s, &app, semconv::K8S_POD_NAME), None, "a Podman pod is not a Kubernetes pod");
    let infra = container(PODMAN_INFRA);
    assert_eq!(str_attr(&s, &infra, semconv::PODMAN_POD_NAME), Some("blog"));
    assert_eq!(str_attr(&s, &infra, semconv::CONTAINER_NAME), Some("aaaabbbbcccc-infra"));

    // A container created later: the store is read again because it changed.
    let late = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
    let text = std::fs::read_to_string(fixture("podman-containers.json")).unwrap();
    let text = text.trim_end().trim_end_matches(']').to_owned()
        + &format!(r#",{{"id":"{late}","names":["blog-worker"],"metadata":"{{}}"}}]"#);
    std::thread::sleep(std::time::Duration::from_millis(20));
    node.put(&format!("{store}/containers.json"), text.as_bytes());
    let s = run(&mut p, &[info(PODMAN_INFRA), info(PODMAN_APP), info(late)]);
    assert_eq!(str_attr(&s, &container(late), semconv::CONTAINER_NAME), Some("blog-worker"));
    assert_eq!(str_attr(&s, &container(late), semconv::PODMAN_POD_NAME), Some("blog"));
}

/// Every kind of bad file: one error each, counted; the containers are still exported with
/// their ids; the good container next to them is named. Only this test in this binary makes
/// errors, so the shared counter's difference is exact.
#[test]
fn bad_bundles_are_counted_and_their_containers_exported_with_ids() {
    let node = Node::new();
    let ids: Vec<String> = (0..5).map(|i| format!("{i:0>64}")).collect();
    node.containerd_bundle(&ids[0], "truncated.json");
    node.containerd_bundle(&ids[1], "not-json.json");
    node.containerd_bundle(&ids[2], "missing-annotations.json");
    // Huge: valid JSON, but past the limit (a runtime would never write this).
    let limit = node.config().max_file_bytes as usize;
    let mut huge = String::from(r#"{"annotations":{"io.kubernetes.cri.container-type":"container","pad":""#);
    huge.push_str(&"x".repeat(limit));
    huge.push_str(r#""}}"#);
    node.put(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{}/config.json", ids[3]),
        huge.as_bytes(),
    );
    node.containerd_bundle(&ids[4], "containerd-container.json");
    let missing = "f".repeat(64); // no bundle at all
    let mut containers: Vec<ContainerInfo> =
        ids.iter().map(|id| k8s(id, Runtime::Containerd, K8S_UID)).collect();
    containers.push(k8s(&missing, Runtime::Containerd, K8S_UID));

    let t = Telemetry::global();
    let (errors0, misses0) =
        (t.metadata_errors.load(Ordering::Relaxed), t.metadata_misses.load(Ordering::Relaxed));
    let mut p = RuntimeFiles::new(node.config());
    let s = run(&mut p, &containers);
    let errors = t.metadata_errors.load(Ordering::Relaxed) - errors0;
    let misses = t.metadata_misses.load(Ordering::Relaxed) - misses0;
    assert_eq!(errors, 5, "truncated, not JSON, missing annotations, huge, missing file");
    assert_eq!(misses, 5, "every container without names is a miss");
    for id in ids[..4].iter().chain([&missing]) {
        let r = s.resource(&container(id)).expect("still exported");
        assert_eq!(r.attribute(semconv::CONTAINER_ID), Some(&AttrValue::from(id.as_str())));
        assert_eq!(r.attribute(semconv::K8S_CONTAINER_NAME), None);
        assert_eq!(r.points.len(), 1, "its points are untouched");
    }
    assert_eq!(str_attr(&s, &container(&ids[4]), semconv::K8S_CONTAINER_NAME), Some("app"));
    // The bad containers' pod still gets its names from the good one.
    assert_eq!(str_attr(&s, &container(&ids[0]), semconv::K8S_POD_NAME), Some("web-7d4b9c-x2x"));

    // The next sweep does not read the bad files again (retried only after a minute).
    let errors_before = t.metadata_errors.load(Ordering::Relaxed);
    run(&mut p, &containers);
    assert_eq!(t.metadata_errors.load(Ordering::Relaxed), errors_before, "no second read, no second error");
}

#[test]
fn default_paths_are_a_standard_nodes_and_bad_settings_are_refused() {
    let yaml = |processor: &str| {
        format!(
            "sources: {{cgroups: {{}}}}\nprocessors: {{runtime_files: {processor}}}\nexporters: {{file: {{}}}}\n\
             pipelines: {{p: {{sources: [cgroups], processors: [runtime_files], exporters: [file]}}}}\n"
        )
    };
    let config =
        podometer::config::parse("t.yaml", &yaml("{}"), |_| None).expect("runtime_files: {} is valid");
    match config.processors.get("runtime_files") {
        Some(podometer::config::ProcessorConfig::RuntimeFiles(c)) => {
            assert_eq!(c.containerd_state, Path::new("/run/containerd"));
            assert_eq!(c.storage_runroot, Path::new("/run/containers/storage"));
            assert_eq!(c.storage_root, Path::new("/var/lib/containers/storage"));
            assert_eq!(c.storage_driver, "overlay");
            assert_eq!(c.max_file_bytes, 1024 * 1024);
        }
        other => panic!("{other:?}"),
    }
    for bad in ["{storage_driver: ../x}", "{max_file_bytes: 0}", "{unknown: 1}"] {
        let e = podometer::config::parse("t.yaml", &yaml(bad), |_| None).expect_err(bad);
        let text = e.lines().join("\n");
        assert!(text.contains("processors.runtime_files"), "{bad}: {text}");
    }
}

/// Real Podman pods on this machine: the store and the infra bundle where Podman keeps them.
#[test]
fn real_podman_pod_containers_get_their_names_and_the_pod_name() {
    if !support::podman::podman_available() {
        return;
    }
    let pod = support::podman::PodmanPod::start("podometer-names", &["sleep 300"]);
    let info = |id: &str| ContainerInfo {
        id: id.to_owned(),
        runtime: Runtime::Podman,
        pod: Some(PodRef::Podman { id: pod.pod_id.clone() }),
        procs_file: PathBuf::from("/nonexistent"),
    };
    let mut p = RuntimeFiles::new(RuntimeFilesConfig::default());
    let s = run(&mut p, &[info(&pod.infra_id), info(&pod.app_ids[0])]);
    let app = container(&pod.app_ids[0]);
    // PodmanPod names its app containers `<pod name>-app<i>`.
    assert_eq!(str_attr(&s, &app, semconv::CONTAINER_NAME), Some(format!("{}-app0", pod.name).as_str()));
    assert_eq!(str_attr(&s, &app, semconv::CONTAINER_IMAGE_NAME), Some("localhost/bb"));
    assert_eq!(str_attr(&s, &app, semconv::PODMAN_POD_NAME), Some(pod.name.as_str()));
    assert_eq!(str_attr(&s, &container(&pod.infra_id), semconv::PODMAN_POD_NAME), Some(pod.name.as_str()));
}
