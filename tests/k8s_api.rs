//! The `k8s_api` metadata processor, through the real agent (`podometer run`) on this machine's
//! real cgroupfs, against a stand-in Kubernetes API server.
//!
//! Why a stand-in: no Kubernetes API server can run on these machines (it needs etcd and a
//! control plane). `support/kube_api.rs` implements the Pod list and watch protocol the way
//! the real server does (resourceVersion, chunked watch events, BOOKMARK, 410 Gone,
//! fieldSelector) and serves `k8s-openapi` Pods built from realistic specs. The agent reaches
//! it through a KUBECONFIG file, so the real `kube::Config::infer` and client run. The
//! containers are real cgroups in the kubelet's layout whose ids are the ones the server's
//! pod statuses name.
//!
//! Root only (cgroups); skipped elsewhere, fails under CI=true when a prerequisite is missing.
#[path = "support/k8s_pods.rs"]
mod k8s_pods;
#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_pods::{container, pod, Owner, TestContainer, TestPod};
use kube_api::{KubeApi, Mode};
use serde_json::Value;
use support::cgroupfs::TestCgroup;

const ROOT: &str = "/sys/fs/cgroup";

/// One resource of one exported sweep: its attributes and the sweep's time.
#[derive(Debug, Clone)]
struct Seen {
    time_ns: u64,
    attrs: HashMap<String, Value>,
}

impl Seen {
    fn str(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).and_then(|v| v["stringValue"].as_str())
    }
    fn int(&self, key: &str) -> Option<i64> {
        let v = &self.attrs.get(key)?["intValue"];
        v.as_i64().or_else(|| v.as_str()?.parse().ok())
    }
    fn strings(&self, key: &str) -> Option<Vec<String>> {
        let values = self.attrs.get(key)?["arrayValue"]["values"].as_array()?;
        Some(values.iter().filter_map(|v| v["stringValue"].as_str().map(str::to_owned)).collect())
    }
    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.attrs.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.sort();
        keys
    }
}

fn read_output(path: &Path) -> Vec<Seen> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        for rm in v["resourceMetrics"].as_array().into_iter().flatten() {
            let attrs: HashMap<String, Value> = rm["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|kv| (kv["key"].as_str().unwrap_or_default().to_owned(), kv["value"].clone()))
                .collect();
            let metric = &rm["scopeMetrics"][0]["metrics"][0];
            let dp = if metric["sum"].is_object() {
                &metric["sum"]["dataPoints"][0]
            } else {
                &metric["gauge"]["dataPoints"][0]
            };
            let time_ns = dp["timeUnixNano"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
            out.push(Seen { time_ns, attrs });
        }
    }
    out
}

/// The latest sweep's resource for a container id, if any.
fn latest_container(seen: &[Seen], id: &str) -> Option<Seen> {
    seen.iter().rev().find(|s| s.str("container.id") == Some(id)).cloned()
}

fn latest_pod(seen: &[Seen], uid: &str) -> Option<Seen> {
    seen.iter().rev().find(|s| s.str("k8s.pod.uid") == Some(uid) && s.str("container.id").is_none()).cloned()
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The agent process, killed on drop.
struct Agent {
    child: Child,
    stderr: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(api: &KubeApi, node: &str, processor: &str, cgroups: &Cgroups) -> Agent {
        Agent::start_with(&api.url, node, processor, cgroups)
    }

    /// The agent reads the test's kubelet tree, `<top>/kubepods`, as a kubelet root.
    fn start_with(url: &str, node: &str, processor: &str, cgroups: &Cgroups) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let stderr = dir.path().join("stderr.log");
        let kubeconfig = dir.path().join("kubeconfig");
        kube_api::write_kubeconfig(&kubeconfig, url, "stand-in-token");
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "interval: 300ms\nstats_log_interval: 1s\nnode_name: {node}\n\
                 sources:\n  cgroups: {{root: {ROOT}, discovery_interval: 300ms, layouts: {{kubelet: [{}]}}}}\n\
                 processors:\n  k8s_api: {processor}\n\
                 exporters:\n  file: {{path: {}}}\n\
                 pipelines:\n  main: {{sources: [cgroups], processors: [k8s_api], exporters: [file]}}\n",
                cgroups.kubelet,
                out.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_podometer"))
            .args(["run", "-c"])
            .arg(&config)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        Agent { child, stderr, out, _dir: dir }
    }

    fn output(&self) -> Vec<Seen> {
        read_output(&self.out)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last `metadata_errors=N` the agent logged.
    fn metadata_errors(&self) -> u64 {
        self.log()
            .lines()
            .rev()
            .find_map(|l| l.split("metadata_errors=").nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `check` holds on the output, panicking with the log after `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration, mut check: impl FnMut(&[Seen]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if check(&self.output()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited ({status}) waiting for {what}; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// Waits until the container `id` is exported (ids only: no API answer was usable) and
    /// `failures` metadata errors are counted; returns its latest series, checked to carry no
    /// pod name, and the log lines that contain `needle` (each failure is logged once at most).
    fn ids_only_after_failures(
        &mut self,
        what: &str,
        id: &str,
        failures: u64,
        needle: &str,
    ) -> (Seen, Vec<String>) {
        self.wait_for(&format!("ids exported while {what}"), Duration::from_secs(20), |seen| {
            latest_container(seen, id).is_some()
        });
        support::wait_until(
            &format!("{failures} counted failures"),
            Duration::from_secs(20),
            || self.metadata_errors() >= failures,
            || self.log(),
        );
        let s = latest_container(&self.output(), id).unwrap();
        assert_eq!(s.str("k8s.pod.name"), None, "names while {what}");
        let lines = self.log().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect();
        (s, lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubelet-like cgroup tree for the pods: `<top>/kubepods/burstable/pod<uid>/<id>`, one
/// process per container.
struct Cgroups {
    groups: Vec<TestCgroup>,
    /// `<top>/kubepods`, the kubelet root the agent is configured with.
    kubelet: String,
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // Children first: a parent cgroup cannot be removed while it has any.
        while let Some(group) = self.groups.pop() {
            drop(group);
        }
    }
}

fn make_cgroups(top: &str, pods: &[&TestPod]) -> Cgroups {
    let mut groups = Vec::new();
    for p in pods {
        let pod_dir = format!("{top}/kubepods/burstable/pod{}", p.kubelet_uid());
        groups.push(TestCgroup::create(Path::new(ROOT), &pod_dir));
        for c in p.init_containers.iter().chain(&p.containers) {
            let Some(id) = &c.id else { continue };
            let mut cg = TestCgroup::create(Path::new(ROOT), &format!("{pod_dir}/{id}"));
            cg.spawn("exec sleep 120");
            groups.push(cg);
        }
    }
    Cgroups { groups, kubelet: format!("{top}/kubepods") }
}

fn test_pod(
    name: &str,
    namespace: &str,
    node: &str,
    owner: Owner,
    containers: Vec<TestContainer>,
) -> TestPod {
    TestPod {
        name: name.into(),
        namespace: namespace.into(),
        uid: k8s_pods::random_uid(),
        node: node.into(),
        owner,
        labels: vec![
            ("app".into(), name.split('-').next().unwrap().into()),
            ("tier".into(), "backend".into()),
        ],
        annotations: vec![("team".into(), "payments".into()), ("prometheus.io/scrape".into(), "true".into())],
        init_containers: Vec::new(),
        containers,
        runtime: "containerd".into(),
    }
}

fn id_of(c: &TestContainer) -> &str {
    c.id.as_deref().unwrap()
}

#[test]
fn names_owners_allowlisted_labels_deletion_grace_410_relist_and_node_scoped_requests() {
    if !support::live_cgroups_available() {
        return;
    }
    let node = support::unique("node");
    let other_node = format!("{node}-other");
    let deployment = test_pod(
        "web-7d4b9c8f5-x2x9z",
        "shop",
        &node,
        Owner::Deployment { name: "web".into(), hash: "7d4b9c8f5".into() },
        vec![container("nginx", "nginx:1.25.3", 2), container("envoy", "ghcr.io/example/envoy:v1.29.1", 0)],
    );
    let statefulset = test_pod(
        "db-0",
        "shop",
        &node,
        Owner::StatefulSet("db".into()),
        vec![container("postgres", "postgres:16", 0)],
    );
    let daemonset = test_pod(
        "node-exporter-8fz2k",
        "monitoring",
        &node,
        Owner::DaemonSet("node-exporter".into()),
        vec![container("node-exporter", "quay.io/prometheus/node-exporter:v1.8.2", 0)],
    );
    let mut cronjob = test_pod(
        "backup-29384710-q7x2m",
        "ops",
        &node,
        Owner::CronJob { name: "backup".into(), minute: 29384710 },
        vec![container("backup", "registry.example:5000/ops/backup:2.1", 0)],
    );
    cronjob.init_containers = vec![container("fetch-keys", "busybox:1.36", 0)];
    cronjob.runtime = "cri-o".into();
    let job = test_pod(
        "migrate-schema-4kq9p",
        "shop",
        &node,
        Owner::Job("migrate-schema".into()),
        vec![container("migrate", "shop/migrate@sha256:4c2d9f0e5a6b7c8d", 0)],
    );
    let mut static_pod = test_pod(
        &format!("kube-apiserver-{node}"),
        "kube-system",
        &node,
        Owner::Static { node: node.clone(), hash: format!("{:032x}", fastrand::u128(..)) },
        vec![container("kube-apiserver", "registry.k8s.io/kube-apiserver:v1.33.1", 1)],
    );
    static_pod.runtime = "docker".into();
    let elsewhere = test_pod(
        "web-7d4b9c8f5-zzz11",
        "shop",
        &other_node,
        Owner::Deployment { name: "web".into(), hash: "7d4b9c8f5".into() },
        vec![container("nginx", "nginx:1.25.3", 0)],
    );
    // Served only after the watch history is compacted: only a relist can find it.
    let late = test_pod(
        "late-5f6d7c8b9-abcde",
        "shop",
        &node,
        Owner::Deployment { name: "late".into(), hash: "5f6d7c8b9".into() },
        vec![container("late", "nginx:1.27", 0)],
    );
    let all = [&deployment, &statefulset, &daemonset, &cronjob, &job, &static_pod, &elsewhere, &late];
    let cgroups = make_cgroups(&support::unique("podometer-k8stest"), &all);

    let api = KubeApi::start();
    // Watches end every 1.5 s, so the agent resumes often (from bookmarks too).
    api.set_watch_cap(Duration::from_millis(1500));
    for p in &all[..7] {
        api.apply(&pod(p));
    }
    let mut agent = Agent::start(
        &api,
        &node,
        "{labels: [app], annotations: [team], deleted_pod_grace: 2s, initial_sync_timeout: 10s}",
        &cgroups,
    );
    let named = |seen: &[Seen], c: &TestContainer| {
        latest_container(seen, id_of(c)).is_some_and(|s| s.str("k8s.container.name") == Some(c.name.as_str()))
    };
    agent.wait_for("every container of this node named", Duration::from_secs(90), |seen| {
        [&deployment, &statefulset, &daemonset, &cronjob, &job, &static_pod]
            .iter()
            .all(|p| p.containers.iter().chain(&p.init_containers).all(|c| named(seen, c)))
    });
    let seen = agent.output();

    // The pod's names, each owner rule, on every container of each pod and on the pod.
    let expect_pod = |p: &TestPod, owners: &[(&str, &str)]| {
        for c in p.containers.iter().chain(&p.init_containers) {
            let s = latest_container(&seen, id_of(c)).unwrap();
            assert_eq!(s.str("k8s.pod.name"), Some(p.name.as_str()), "{}", c.name);
            assert_eq!(s.str("k8s.namespace.name"), Some(p.namespace.as_str()));
            assert_eq!(s.str("k8s.pod.uid"), Some(p.kubelet_uid()));
            for (key, value) in owners {
                assert_eq!(s.str(key), Some(*value), "{key} of {}", p.name);
            }
            let owner_keys: Vec<String> = s
                .attrs
                .keys()
                .filter(|k| {
                    ["replicaset", "deployment", "statefulset", "daemonset", "job", "cronjob"]
                        .iter()
                        .any(|o| **k == format!("k8s.{o}.name"))
                })
                .cloned()
                .collect();
            assert_eq!(owner_keys.len(), owners.len(), "owners of {}: {owner_keys:?}", p.name);
            // Allowlisted keys only.
            assert_eq!(s.keys_with_prefix("k8s.pod.label."), ["k8s.pod.label.app"]);
            assert_eq!(s.keys_with_prefix("k8s.pod.annotation."), ["k8s.pod.annotation.team"]);
            assert_eq!(s.str("k8s.pod.annotation.team"), Some("payments"));
        }
        let pod_resource =
            latest_pod(&seen, p.kubelet_uid()).unwrap_or_else(|| panic!("pod resource of {}", p.name));
        assert_eq!(pod_resource.str("k8s.pod.name"), Some(p.name.as_str()));
        assert_eq!(pod_resource.str("k8s.namespace.name"), Some(p.namespace.as_str()));
        for (key, value) in owners {
            assert_eq!(pod_resource.str(key), Some(*value), "{key} on the pod resource of {}", p.name);
        }
    };
    expect_pod(&deployment, &[("k8s.replicaset.name", "web-7d4b9c8f5"), ("k8s.deployment.name", "web")]);
    expect_pod(&statefulset, &[("k8s.statefulset.name", "db")]);
    expect_pod(&daemonset, &[("k8s.daemonset.name", "node-exporter")]);
    expect_pod(&cronjob, &[("k8s.job.name", "backup-29384710"), ("k8s.cronjob.name", "backup")]);
    expect_pod(&job, &[("k8s.job.name", "migrate-schema")]);
    expect_pod(&static_pod, &[]);
    assert_eq!(
        latest_container(&seen, id_of(&deployment.containers[0])).unwrap().str("k8s.pod.label.app"),
        Some("web")
    );

    // Container names, images, tags, restart counts.
    let expect_container = |c: &TestContainer, image: &str, tags: &[&str]| {
        let s = latest_container(&seen, id_of(c)).unwrap();
        assert_eq!(s.str("k8s.container.name"), Some(c.name.as_str()));
        assert_eq!(s.str("container.image.name"), Some(image), "{}", c.name);
        assert_eq!(s.strings("container.image.tags").unwrap_or_default(), tags, "{}", c.name);
        assert_eq!(s.int("k8s.container.restart_count"), Some(i64::from(c.restarts)), "{}", c.name);
    };
    expect_container(&deployment.containers[0], "nginx", &["1.25.3"]);
    expect_container(&deployment.containers[1], "ghcr.io/example/envoy", &["v1.29.1"]);
    expect_container(&cronjob.init_containers[0], "busybox", &["1.36"]);
    expect_container(&cronjob.containers[0], "registry.example:5000/ops/backup", &["2.1"]);
    expect_container(&job.containers[0], "shop/migrate", &[]);
    expect_container(&static_pod.containers[0], "registry.k8s.io/kube-apiserver", &["v1.33.1"]);

    // The other node's pod is never served to this agent: its container keeps only ids.
    let other =
        latest_container(&seen, id_of(&elsewhere.containers[0])).expect("the other pod's cgroup is swept");
    assert_eq!(other.str("k8s.pod.name"), None);
    assert_eq!(other.str("k8s.pod.uid"), Some(elsewhere.uid.as_str()), "ids are still exported");

    // Bookmarks: a change on the other node moves the version without an event for this node;
    // only a BOOKMARK tells the agent, and its next watch resumes from there.
    let mut moved = pod(&elsewhere);
    moved.metadata.labels.get_or_insert_default().insert("tier".into(), "frontend".into());
    let bookmark_only = api.apply(&moved).to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let resumed_from_bookmark = loop {
        let resumed = api
            .requests()
            .iter()
            .any(|r| r.is_watch() && r.query.get("resourceVersion") == Some(&bookmark_only));
        if resumed || Instant::now() > deadline {
            break resumed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(api.bookmarks().iter().any(|b| b.to_string() == bookmark_only));

    // A pod deleted mid-run keeps its names for the grace period (2 s), then loses them.
    let job_id = id_of(&job.containers[0]).to_owned();
    let deleted_at = now_ns();
    api.delete(&job.uid);
    agent.wait_for("the deleted pod's container to lose its names", Duration::from_secs(60), |seen| {
        latest_container(seen, &job_id)
            .is_some_and(|s| s.time_ns > deleted_at && s.str("k8s.pod.name").is_none())
    });
    let seen = agent.output();
    let after: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.str("container.id") == Some(job_id.as_str()) && s.time_ns > deleted_at)
        .collect();
    let first_nameless = after.iter().find(|s| s.str("k8s.pod.name").is_none()).unwrap().time_ns;
    let named_after: Vec<u64> =
        after.iter().filter(|s| s.str("k8s.pod.name").is_some()).map(|s| s.time_ns - deleted_at).collect();
    assert!(
        first_nameless - deleted_at >= 1_900_000_000,
        "names went {} ms after the delete, before the 2 s grace",
        (first_nameless - deleted_at) / 1_000_000
    );
    assert!(
        !named_after.is_empty(),
        "sweeps in the grace period still carry names (300 ms interval): {named_after:?} ns after the delete"
    );
    assert!(after
        .iter()
        .skip_while(|s| s.str("k8s.pod.name").is_some())
        .all(|s| s.str("k8s.pod.name").is_none()));

    // 410 Gone: a pod added while the watch history is compacted is found by the relist, and
    // no other pod loses its names.
    let lists_before = api.requests().iter().filter(|r| !r.is_watch()).count();
    let compacted_at = now_ns();
    api.add_and_compact(&pod(&late));
    agent.wait_for("the pod only a relist can see", Duration::from_secs(60), |seen| {
        named(seen, &late.containers[0])
    });
    let seen = agent.output();
    assert!(api.requests().iter().filter(|r| !r.is_watch()).count() > lists_before, "a relist after 410");
    for p in [&deployment, &statefulset, &daemonset, &cronjob, &static_pod] {
        for c in p.containers.iter().chain(&p.init_containers) {
            let since: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.str("container.id") == Some(id_of(c)) && s.time_ns > compacted_at)
                .collect();
            assert!(!since.is_empty());
            assert!(
                since.iter().all(|s| s.str("k8s.pod.name") == Some(p.name.as_str())),
                "{} lost its names around the relist",
                c.name
            );
        }
    }
    let late_seen = latest_container(&seen, id_of(&late.containers[0])).unwrap();
    assert_eq!(late_seen.str("k8s.deployment.name"), Some("late"));

    // Every request is this node's pods, with the kubeconfig's token; watches ask for
    // bookmarks, and at least one resumed from a version only a bookmark carried.
    let requests = api.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    let selector = format!("spec.nodeName={node}");
    for r in &requests {
        assert_eq!(r.path, "/api/v1/pods", "{r:?}");
        assert_eq!(r.query.get("fieldSelector"), Some(&selector), "not node-scoped: {r:?}");
        assert_eq!(r.authorization.as_deref(), Some("Bearer stand-in-token"));
        if r.is_watch() {
            assert_eq!(r.query.get("allowWatchBookmarks").map(String::as_str), Some("true"), "{r:?}");
        }
    }
    assert!(resumed_from_bookmark, "no watch resumed from the version only a bookmark carried");
    assert!(agent.log().lines().all(|l| !l.contains("ERROR")), "errors in the log:\n{}", agent.log());
}

#[test]
fn forbidden_and_non_json_answers_are_logged_once_counted_and_ids_still_exported() {
    if !support::live_cgroups_available() {
        return;
    }
    let node = support::unique("node");
    let p = test_pod(
        "web-7d4b9c8f5-x2x9z",
        "shop",
        &node,
        Owner::Deployment { name: "web".into(), hash: "7d4b9c8f5".into() },
        vec![container("nginx", "nginx:1.25.3", 0)],
    );
    let cgroups = make_cgroups(&support::unique("podometer-k8stest"), &[&p]);
    let id = id_of(&p.containers[0]).to_owned();
    let api = KubeApi::start();
    api.apply(&pod(&p));
    api.set_mode(Mode::Forbidden);
    let started = Instant::now();
    let mut agent = Agent::start(&api, &node, "{initial_sync_timeout: 1s}", &cgroups);

    // 403: one clear error naming the verb, the resource and the ClusterRole, however many
    // attempts; counted; the container still exported with its ids.
    let (s, forbidden) = agent.ids_only_after_failures("the API refuses", &id, 3, "403 Forbidden");
    assert!(started.elapsed() >= Duration::from_millis(900), "start-up waited for the first list");
    assert_eq!(s.str("k8s.pod.uid"), Some(p.uid.as_str()));
    let log = agent.log();
    assert_eq!(forbidden.len(), 1, "one line for several refusals:\n{log}");
    let overlay = podometer::processors::metadata::k8s_api::RBAC_OVERLAY;
    for needle in
        ["ERROR", "refused to list pods", "ClusterRole", "get, list and watch", "`pods`", &node, overlay]
    {
        assert!(forbidden[0].contains(needle), "`{needle}` missing from: {}", forbidden[0]);
    }
    assert!(log.contains("has not synced yet"), "start-up said it gave up waiting:\n{log}");
    let refused = agent.metadata_errors();

    // An answer that is not JSON: its own line, counted.
    let not_json_at = now_ns();
    api.set_mode(Mode::NotJson);
    support::wait_until(
        "a log line for the HTML answer",
        Duration::from_secs(40),
        || agent.log().contains("not a Kubernetes JSON answer") && agent.metadata_errors() > refused,
        || agent.log(),
    );
    assert_eq!(agent.log().lines().filter(|l| l.contains("not a Kubernetes JSON answer")).count(), 1);
    // Every WARN line of the log, not only the agent's own: kube's client logs each answer it
    // cannot decode at WARN with the whole body, and must stay quiet.
    let log = agent.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    for line in &warnings {
        assert!(line.contains(" WARN podometer"), "a WARN line not from the agent: {line}");
        assert!(!line.contains("It works!"), "an answer's body in the log: {line}");
    }
    assert!(warnings.len() <= 3, "WARN lines are rate-limited: {warnings:#?}");
    assert_eq!(agent.log().lines().filter(|l| l.contains("403 Forbidden")).count(), 1, "still rate-limited");
    agent.wait_for("ids still exported after the HTML answers", Duration::from_secs(60), |seen| {
        latest_container(seen, &id)
            .is_some_and(|s| s.time_ns > not_json_at && s.str("k8s.pod.uid") == Some(p.uid.as_str()))
    });

    // The API comes back: names arrive without a restart.
    api.set_mode(Mode::Normal);
    agent.wait_for("names once the API answers", Duration::from_secs(45), |seen| {
        latest_container(seen, &id).is_some_and(|s| s.str("k8s.pod.name") == Some(p.name.as_str()))
    });
    let requests = api.requests();
    let selector = format!("spec.nodeName={node}");
    assert!(requests.iter().all(|r| r.query.get("fieldSelector") == Some(&selector)), "{requests:?}");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

#[test]
fn check_config_wants_node_name_unless_cluster_wide_and_k8s_api_takes_no_required_setting() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, top: &str, processor: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "{top}sources:\n  cgroups: {{}}\nprocessors:\n  k8s_api: {processor}\nexporters:\n  file: {{path: \"-\"}}\n\
                 pipelines:\n  main: {{sources: [cgroups], processors: [k8s_api], exporters: [file]}}\n"
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_podometer"))
            .arg("check-config")
            .arg("-c")
            .arg(path)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = check(&write("bare.yaml", "node_name: worker-1\n", "{}"));
    assert!(ok, "{out}");
    let (ok, out) = check(&write("no-node.yaml", "", "{}"));
    assert!(!ok);
    let line = out.lines().find(|l| l.contains("processors.k8s_api")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("no-node.yaml:") && line.contains("node_name") && line.contains("cluster_wide"),
        "{line}"
    );
    let (ok, out) = check(&write("wide.yaml", "", "{cluster_wide: true}"));
    assert!(ok, "{out}");
    let (ok, out) = check(&write("typo.yaml", "node_name: worker-1\n", "{label: [app]}"));
    assert!(!ok && out.contains("label"), "{out}");
}

#[test]
fn an_unreachable_api_is_logged_once_counted_and_ids_still_exported() {
    if !support::live_cgroups_available() {
        return;
    }
    let node = support::unique("node");
    let p = test_pod(
        "db-0",
        "shop",
        &node,
        Owner::StatefulSet("db".into()),
        vec![container("postgres", "postgres:16", 0)],
    );
    let cgroups = make_cgroups(&support::unique("podometer-k8stest"), &[&p]);
    let id = id_of(&p.containers[0]).to_owned();
    // A loopback port nobody listens on, held for the whole test.
    let closed = support::ClosedPort::new();
    let port = closed.port();
    let mut agent = Agent::start_with(
        &format!("http://127.0.0.1:{port}"),
        &node,
        "{initial_sync_timeout: 500ms}",
        &cgroups,
    );
    let (s, lines) =
        agent.ids_only_after_failures("no API answers", &id, 3, "Cannot reach the Kubernetes API");
    assert_eq!(s.str("k8s.pod.uid"), Some(p.uid.as_str()));
    assert_eq!(lines.len(), 1, "one line for several failures:\n{}", agent.log());
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "names the server: {}", lines[0]);
}

/// A pod with an annotation of `bytes` bytes (not allowlisted: it only makes the answers big).
fn padded(p: &TestPod, bytes: usize) -> k8s_openapi::api::core::v1::Pod {
    let mut p = p.clone();
    p.annotations.push(("example.com/padding".into(), "x".repeat(bytes)));
    pod(&p)
}

/// Answers larger than the bounds are not read whole: a list page over `max_list_bytes` fails
/// (counted, logged once naming the bound, ids still exported) until the pod that made it big is
/// gone; a watch event over `max_event_bytes` ends the watch, and the relist (under the page's
/// bound) brings the pod's names without a restart.
#[test]
fn list_pages_and_watch_events_past_their_bounds_are_not_read_whole() {
    if !support::live_cgroups_available() {
        return;
    }
    let node = support::unique("node");
    let small = test_pod(
        "web-1",
        "shop",
        &node,
        Owner::Deployment { name: "web".into(), hash: "7d4b9c8f5".into() },
        vec![container("nginx", "nginx:1.25.3", 0)],
    );
    let huge = test_pod(
        "huge-0",
        "shop",
        &node,
        Owner::StatefulSet("huge".into()),
        vec![container("app", "app:1", 0)],
    );
    let late = test_pod(
        "late-0",
        "shop",
        &node,
        Owner::StatefulSet("late".into()),
        vec![container("app", "app:1", 0)],
    );
    let cgroups = make_cgroups(&support::unique("podometer-k8stest"), &[&small, &huge, &late]);
    let (small_id, late_id) = (id_of(&small.containers[0]).to_owned(), id_of(&late.containers[0]).to_owned());
    let api = KubeApi::start();
    api.apply(&pod(&small));
    // 2 MiB in one pod: the list page is over a 1 MiB bound.
    api.apply(&padded(&huge, 2 << 20));
    let mut agent = Agent::start(
        &api,
        &node,
        "{initial_sync_timeout: 500ms, max_list_bytes: 1048576, max_event_bytes: 262144}",
        &cgroups,
    );
    let (_, bound) =
        agent.ids_only_after_failures("the list is over its bound", &small_id, 2, "passed its bound");
    let log = agent.log();
    assert_eq!(bound.len(), 1, "one line however many attempts:\n{log}");
    assert!(
        bound[0].contains("max_list_bytes (1048576 bytes)") && bound[0].contains("list pods"),
        "{}",
        bound[0]
    );

    // The big pod goes: the next list is read and names arrive.
    api.delete(&huge.uid);
    agent.wait_for("names once the list fits", Duration::from_secs(45), |seen| {
        latest_container(seen, &small_id).is_some_and(|s| s.str("k8s.pod.name") == Some("web-1"))
    });

    // A watch event over its bound (512 KiB against 256 KiB) but a page under the list's: the
    // watch stops, the relist reads the pod.
    let errors = agent.metadata_errors();
    api.apply(&padded(&late, 512 << 10));
    agent.wait_for("the late pod named through the relist", Duration::from_secs(60), |seen| {
        latest_container(seen, &late_id).is_some_and(|s| s.str("k8s.pod.name") == Some("late-0"))
    });
    support::wait_until(
        "the event over its bound counted",
        Duration::from_secs(10),
        || agent.metadata_errors() > errors,
        || agent.log(),
    );
    let watch_list = api.requests().iter().filter(|r| !r.is_watch()).count();
    assert!(watch_list >= 2, "no relist after the event over its bound");
    assert!(agent.log().contains("max_event_bytes (262144 bytes)"), "{}", agent.log());
}
