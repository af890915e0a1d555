//! Heap the `k8s_api` processor keeps per pod: its compact cache plus the snapshot it
//! publishes for the sweep thread, measured with a counting global allocator over 500
//! realistic pods (a Deployment's, a StatefulSet's, a DaemonSet's, a CronJob's Job's, a plain
//! Job's and static pods, two containers each, init containers on the Jobs, the labels and
//! annotations a real cluster puts on them, managedFields), with an allowlist of two labels
//! and one annotation. Budget: ≤ 4 KiB per pod. Also prints the time to build the snapshot
//! the watch publishes after each batch of events.
//!
//! `cargo bench --bench k8s_api_cache` (a second); `cargo test` runs it as a smoke test, which
//! checks the budget too.

#[path = "../tests/support/k8s_pods.rs"]
mod k8s_pods;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use k8s_pods::{container, pod, Owner, TestPod};
use podometer::processors::metadata::k8s_api::cache::PodCache;
use podometer::processors::metadata::k8s_api::pods::{compact, Allowlist};

/// Bytes currently allocated through the global allocator.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PODS: usize = 500;
const BUDGET_PER_POD: isize = 4096;

fn realistic(i: usize) -> TestPod {
    let (name, namespace, owner) = match i % 6 {
        0 => (
            format!("checkout-api-6f9c7d8b5d-{:05x}", i),
            "shop",
            Owner::Deployment { name: "checkout-api".into(), hash: "6f9c7d8b5d".into() },
        ),
        1 => (format!("postgres-{i}"), "data", Owner::StatefulSet("postgres".into())),
        2 => (format!("fluent-bit-{:05x}", i), "logging", Owner::DaemonSet("fluent-bit".into())),
        3 => (
            format!("nightly-report-29384710-{:05x}", i),
            "batch",
            Owner::CronJob { name: "nightly-report".into(), minute: 29384710 },
        ),
        4 => (format!("db-migrate-{:05x}", i), "shop", Owner::Job("db-migrate".into())),
        _ => (
            format!("kube-proxy-node-{i}"),
            "kube-system",
            Owner::Static { node: "worker-17.example.internal".into(), hash: format!("{:032x}", i) },
        ),
    };
    let app = name.split('-').next().unwrap().to_owned();
    TestPod {
        name,
        namespace: namespace.into(),
        uid: k8s_pods::random_uid(),
        node: "worker-17.example.internal".into(),
        owner,
        labels: vec![
            ("app".into(), app.clone()),
            ("app.kubernetes.io/name".into(), app.clone()),
            ("app.kubernetes.io/instance".into(), format!("{app}-prod")),
            ("app.kubernetes.io/version".into(), "2.14.1".into()),
            ("app.kubernetes.io/part-of".into(), "storefront".into()),
            ("app.kubernetes.io/managed-by".into(), "Helm".into()),
        ],
        annotations: vec![
            ("team".into(), "payments".into()),
            ("prometheus.io/scrape".into(), "true".into()),
            ("prometheus.io/port".into(), "9090".into()),
            (
                "checksum/config".into(),
                "9f2c1e7d4b8a6c3e5f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e".into(),
            ),
        ],
        init_containers: if matches!(i % 6, 3 | 4) {
            vec![container("wait-for-db", "busybox:1.36.1", 0)]
        } else {
            vec![]
        },
        containers: vec![
            container(&app, &format!("registry.example.com/storefront/{app}:2.14.1"), (i % 3) as i32),
            container("istio-proxy", "docker.io/istio/proxyv2:1.22.3", 0),
        ],
        runtime: "containerd".into(),
    }
}

fn main() {
    let pods: Vec<_> = (0..PODS).map(|i| pod(&realistic(i))).collect();
    let wire: usize = pods.iter().map(|p| serde_json::to_vec(p).unwrap().len()).sum();
    let allow = Allowlist {
        labels: vec!["app".into(), "app.kubernetes.io/version".into()],
        annotations: vec!["team".into()],
    };

    let before = LIVE.load(Ordering::SeqCst);
    let mut cache = PodCache::new(Duration::from_secs(60));
    for p in &pods {
        cache.upsert(compact(p, &allow).expect("a realistic pod compacts"));
    }
    // Published: the sweep thread's handle shares the cache's snapshot, no copy.
    let published = cache.snapshot();
    let total = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(published.pods.len(), PODS);
    assert_eq!(published.containers.len(), PODS * 2 + PODS / 3);

    // What a batch of watch events costs: the copy-on-write of the published snapshot.
    let started = Instant::now();
    let rounds = 50;
    for _ in 0..rounds {
        std::hint::black_box((*published).clone());
    }
    let per_copy = started.elapsed() / rounds;

    let per_pod = total / PODS as isize;
    println!(
        "k8s_api cache, {PODS} realistic pods ({} B of JSON each on the wire): {per_pod} B/pod held \
         (cache and published snapshot, one copy; budget {BUDGET_PER_POD}); copy-on-write per event batch \
         {:.0} µs ({:.2} µs/pod)",
        wire / PODS,
        per_copy.as_secs_f64() * 1e6,
        per_copy.as_secs_f64() * 1e6 / PODS as f64,
    );
    assert!(per_pod <= BUDGET_PER_POD, "{per_pod} B per pod is over the {BUDGET_PER_POD} B budget");
    drop(published);
    drop(cache);
}
