//! Why `k8s_api` keeps its own list-then-watch loop (`src/processors/metadata/k8s_api/watch.rs`)
//! instead of `kube::runtime::watcher`: both run here on the same stand-in API server
//! (`support/kube_api.rs`), through the same kube client with the same bounds layer, and the
//! requests each sends are counted.
//!
//! A watch event over `max_event_bytes`: the watcher watches again from the same version,
//! meets the same event, and never lists, so the pod never gets its names; the loop lists
//! (under the page's larger bound) and moves past it.
#[path = "support/k8s_pods.rs"]
mod k8s_pods;
#[path = "support/kube_api.rs"]
mod kube_api;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_pods::{container, pod, Owner, TestPod};
use kube::runtime::{watcher, WatchStreamExt};
use kube_api::KubeApi;
use podometer::processors::metadata::k8s_api::bounded::{BoundLayer, Limits};
use podometer::processors::metadata::k8s_api::cache::PodCache;
use podometer::processors::metadata::k8s_api::pods::Allowlist;
use podometer::processors::metadata::k8s_api::watch::Watch;
use podometer::processors::metadata::{Readiness, SharedSnapshot};

const NODE: &str = "node-1";

fn test_pod(name: &str, padding: usize) -> Pod {
    let mut p = TestPod {
        name: name.into(),
        namespace: "shop".into(),
        uid: k8s_pods::random_uid(),
        node: NODE.into(),
        owner: Owner::StatefulSet(name.into()),
        labels: Vec::new(),
        annotations: Vec::new(),
        init_containers: Vec::new(),
        containers: vec![container("app", "app:1", 0)],
        runtime: "containerd".into(),
    };
    if padding > 0 {
        p.annotations.push(("example.com/padding".into(), "x".repeat(padding)));
    }
    pod(&p)
}

async fn client(api: &KubeApi, dir: &std::path::Path) -> kube::Client {
    let path = dir.join("kubeconfig");
    api.write_kubeconfig(&path, "token");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    // The agent's bounds: 256 KiB per watch event, 64 MiB per list page.
    let limits = Limits { list_bytes: 64 << 20, event_bytes: 256 << 10 };
    kube::client::ClientBuilder::try_from(config).unwrap().with_layer(&BoundLayer(limits)).build()
}

/// kube's watcher as its docs use it: node-scoped, with its default backoff; returns the
/// names of the pods it delivered.
async fn kube_watcher(client: kube::Client, seen: Arc<std::sync::Mutex<Vec<String>>>) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE}"));
    let stream = watcher(kube::Api::<Pod>::all(client), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
            seen.lock().unwrap().push(p.metadata.name.unwrap_or_default());
        }
    }
}

fn our_loop(client: kube::Client) -> (impl Future<Output = ()>, Arc<SharedSnapshot>) {
    let shared = SharedSnapshot::new();
    let watch = Watch {
        api: kube::Api::<Pod>::all(client),
        node_name: Some(NODE.into()),
        allow: Allowlist::default(),
        cache: PodCache::new(Duration::from_secs(60)),
        shared: Arc::clone(&shared),
        readiness: Readiness::new(),
        server: "stand-in".into(),
    };
    (watch.run(), shared)
}

/// (lists, watches) the server received.
fn counts(api: &KubeApi) -> (usize, usize) {
    let requests = api.requests();
    let watches = requests.iter().filter(|r| r.is_watch()).count();
    (requests.len() - watches, watches)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn an_event_over_its_bound_stops_the_watcher_for_good_and_the_loop_relists() {
    let dir = tempfile::tempdir().unwrap();
    let run_for = Duration::from_secs(8);
    // (lists after the big event, whether the big pod arrived)
    let measure = |ours: bool| {
        let api = KubeApi::start();
        api.apply(&test_pod("web-0", 0));
        runtime().block_on(async {
            let client = client(&api, dir.path()).await;
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (run, shared): (std::pin::Pin<Box<dyn Future<Output = ()>>>, _) = if ours {
                let (run, shared) = our_loop(client);
                (Box::pin(run), Some(shared))
            } else {
                (Box::pin(kube_watcher(client, Arc::clone(&seen))), None)
            };
            let mut run = run;
            // Listed and watching.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut run).await;
            let (lists_before, _) = counts(&api);
            // 512 KiB in one event, against 256 KiB.
            api.apply(&test_pod("big-0", 512 << 10));
            let _ = tokio::time::timeout(run_for, &mut run).await;
            let (lists_after, watches) = counts(&api);
            let arrived = match shared {
                Some(shared) => format!("{:?}", shared.load()).contains("big-0"),
                None => seen.lock().unwrap().iter().any(|n| n == "big-0"),
            };
            (lists_after - lists_before, watches, arrived)
        })
    };
    let (watcher_relists, watcher_watches, watcher_got_it) = measure(false);
    let (loop_relists, loop_watches, loop_got_it) = measure(true);
    eprintln!(
        "one event over max_event_bytes, {run_for:?} after it: kube's watcher relisted {watcher_relists} times \
         ({watcher_watches} watches, pod named: {watcher_got_it}), our loop {loop_relists} times \
         ({loop_watches} watches, pod named: {loop_got_it})"
    );
    assert!(loop_relists >= 1 && loop_got_it, "our loop did not relist past the event");
    assert!(
        watcher_relists == 0 && !watcher_got_it,
        "kube's watcher relists past an event over its bound now: the reason watch.rs gives is gone"
    );
}
