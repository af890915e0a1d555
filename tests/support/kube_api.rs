//! An in-process stand-in for the Kubernetes API server's Pod list and watch, on loopback.
//!
//! Why a stand-in: a real kube-apiserver needs etcd and a control plane that cannot run on
//! these machines (see the project brief). This server implements the part of the protocol the
//! `k8s_api` processor uses, the way the real server behaves:
//! - `GET /api/v1/pods` lists, honouring `fieldSelector=spec.nodeName=<node>`, `limit` and
//!   `continue`, with the list's `metadata.resourceVersion`; a `resourceVersion` older than the
//!   compaction point answers HTTP 410 with a `Status` (reason `Expired`).
//! - `GET /api/v1/pods?watch=true&resourceVersion=R` streams (chunked, one JSON object per
//!   line) every change after R that matches the selector, then live changes, `BOOKMARK`s with
//!   the current version when `allowWatchBookmarks=true`, and ends after `timeoutSeconds` (or
//!   the server's own shorter cap). R older than the compaction point, or a compaction while
//!   the watch is open, gives one `ERROR` event with a 410 `Status`, then the end.
//! - Every request is recorded (path, query, Authorization) for the test to check.
//! - Failure modes: every request refused with 403 (RBAC), or answered with an HTML page.
//!
//! Pods are `k8s-openapi` `Pod` objects serialized as the real server would send them.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(|w| w == "true" || w == "1").unwrap_or(false)
    }
}

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 403 with the RBAC `Status` a real server sends.
    Forbidden,
    /// 200 with an HTML page, as a misconfigured proxy in front of the API would.
    NotJson,
}

#[derive(Debug, Clone)]
enum Change {
    Event {
        rv: u64,
        kind: &'static str,
        pod: Value,
    },
    /// The watch cache dropped history: open watches get a 410 ERROR event.
    Compacted,
}

struct Inner {
    rv: u64,
    /// Watches and lists older than this get 410.
    oldest_rv: u64,
    /// By UID.
    pods: BTreeMap<String, Value>,
    history: Vec<(u64, &'static str, Value)>,
    requests: Vec<Recorded>,
    mode: Mode,
    /// Resource versions sent in BOOKMARKs.
    bookmarks: Vec<u64>,
    /// The server ends a watch after this long whatever `timeoutSeconds` says.
    watch_cap: Duration,
    bookmark_every: Duration,
}

#[derive(Clone)]
pub struct KubeApi {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
    pub url: String,
    stop: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

fn node_of(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

/// The node a `fieldSelector` names: `Ok(None)` for no selector; an error for a selector the
/// stand-in does not implement (the test then fails on it rather than serving everything).
fn node_selector(query: &HashMap<String, String>) -> Result<Option<String>, String> {
    match query.get("fieldSelector").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(sel) => match sel.strip_prefix("spec.nodeName=") {
            Some(node) if !node.contains(',') => Ok(Some(node.to_owned())),
            _ => Err(format!("unsupported fieldSelector {sel}")),
        },
    }
}

impl KubeApi {
    /// Starts the server on an OS-chosen loopback port, on its own runtime thread.
    pub fn start() -> KubeApi {
        let (changes, _) = broadcast::channel(1024);
        let inner = Arc::new(Mutex::new(Inner {
            rv: 1000,
            oldest_rv: 0,
            pods: BTreeMap::new(),
            history: Vec::new(),
            requests: Vec::new(),
            mode: Mode::Normal,
            bookmarks: Vec::new(),
            watch_cap: Duration::from_secs(3600),
            bookmark_every: Duration::from_millis(200),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let api = KubeApi { inner, changes, url, stop: Arc::new(Mutex::new(Some(stop_tx))) };
        let state = api.clone();
        std::thread::Builder::new()
            .name("kube-api-stand-in".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let app = Router::new().fallback(handle).with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
            })
            .unwrap();
        api
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Ends every watch after `cap` (a real server ends them after `timeoutSeconds`).
    pub fn set_watch_cap(&self, cap: Duration) {
        self.lock().watch_cap = cap;
    }

    fn change(&self, kind: &'static str, mut pod: Value, keep_history: bool) -> u64 {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().expect("pod has a uid").to_owned();
        if kind == "DELETED" {
            inner.pods.remove(&uid);
        } else {
            inner.pods.insert(uid, pod.clone());
        }
        if keep_history {
            inner.history.push((rv, kind, pod.clone()));
            let _ = self.changes.send(Change::Event { rv, kind, pod });
        }
        rv
    }

    /// Creates or replaces a pod (ADDED or MODIFIED to watchers); returns its resourceVersion.
    pub fn apply(&self, pod: &Pod) -> u64 {
        let value = serde_json::to_value(pod).unwrap();
        let uid = pod.metadata.uid.clone().expect("pod has a uid");
        let kind = if self.lock().pods.contains_key(&uid) { "MODIFIED" } else { "ADDED" };
        self.change(kind, value, true)
    }

    /// Deletes a pod (DELETED to watchers).
    pub fn delete(&self, uid: &str) -> u64 {
        let pod = self.lock().pods.get(uid).cloned().expect("no such pod");
        self.change("DELETED", pod, true)
    }

    /// Adds a pod whose event the watch cache has already dropped, then compacts: only a
    /// relist can find it, and open watches get `410 Gone`.
    pub fn add_and_compact(&self, pod: &Pod) {
        let value = serde_json::to_value(pod).unwrap();
        self.change("ADDED", value, false);
        self.compact();
    }

    /// Drops all history: watches from any version seen so far get `410 Gone`.
    pub fn compact(&self) {
        let mut inner = self.lock();
        // The current version stays valid: a list now answers it, and watching from it works.
        inner.oldest_rv = inner.rv;
        inner.history.clear();
        let _ = self.changes.send(Change::Compacted);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn bookmarks(&self) -> Vec<u64> {
        self.lock().bookmarks.clone()
    }

    /// A kubeconfig file for a client of this server, with a bearer token.
    pub fn write_kubeconfig(&self, path: &std::path::Path, token: &str) {
        write_kubeconfig(path, &self.url, token);
    }

    fn list(&self, query: &HashMap<String, String>) -> Response {
        let node = match node_selector(query) {
            Ok(node) => node,
            Err(e) => return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &e)),
        };
        let inner = self.lock();
        if let Some(rv) = query.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()) {
            if rv != 0 && rv < inner.oldest_rv {
                let msg = format!("too old resource version: {rv} ({})", inner.oldest_rv);
                return json_response(StatusCode::GONE, &status(410, "Expired", &msg));
            }
        }
        let mut items: Vec<&Value> =
            inner.pods.values().filter(|p| node.as_deref().is_none_or(|n| node_of(p) == Some(n))).collect();
        items.sort_by_key(|p| (p["metadata"]["namespace"].to_string(), p["metadata"]["name"].to_string()));
        let start: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize =
            query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let page: Vec<Value> = items[start.min(end)..end]
            .iter()
            .map(|p| {
                // List items carry no kind/apiVersion on the wire.
                let mut p = (*p).clone();
                if let Some(o) = p.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                p
            })
            .collect();
        let mut metadata = json!({"resourceVersion": inner.rv.to_string()});
        if end < items.len() {
            metadata["continue"] = json!(end.to_string());
            metadata["remainingItemCount"] = json!(items.len() - end);
        }
        json_response(
            StatusCode::OK,
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page}),
        )
    }

    fn watch(&self, query: &HashMap<String, String>) -> Response {
        let node = match node_selector(query) {
            Ok(node) => node,
            Err(e) => return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &e)),
        };
        let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
        let matches = move |pod: &Value| node.as_deref().is_none_or(|n| node_of(pod) == Some(n));
        fn line(kind: &str, object: &Value) -> String {
            format!("{}\n", json!({"type": kind, "object": object}))
        }
        let gone = move |from: u64, oldest: u64| {
            let msg = format!("too old resource version: {from} ({oldest})");
            line("ERROR", &status(410, "Expired", &msg))
        };
        // Subscribe and read the history under one lock so no change falls in between.
        let (mut live, backlog, cap, every, mut seen) = {
            let inner = self.lock();
            let live = self.changes.subscribe();
            let backlog: Vec<String> = if from != 0 && from < inner.oldest_rv {
                vec![gone(from, inner.oldest_rv)]
            } else {
                inner
                    .history
                    .iter()
                    .filter(|(rv, _, pod)| *rv > from && matches(pod))
                    .map(|(_, kind, pod)| line(kind, pod))
                    .collect()
            };
            (live, backlog, inner.watch_cap, inner.bookmark_every, inner.rv)
        };
        let this = self.clone();
        tokio::spawn(async move {
            let ends = tokio::time::Instant::now() + timeout.min(cap);
            let expired = backlog.first().is_some_and(|l| l.contains("\"ERROR\""));
            for l in backlog {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            let mut tick = tokio::time::interval(every);
            loop {
                let out = tokio::select! {
                    _ = tokio::time::sleep_until(ends) => return,
                    // A bookmark promises every change up to its version was sent: the last
                    // change this watch has seen (matching or not), never the server's newest.
                    _ = tick.tick(), if bookmarks => {
                        this.lock().bookmarks.push(seen);
                        line("BOOKMARK", &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": seen.to_string()}}))
                    }
                    change = live.recv() => match change {
                        Ok(Change::Event { rv, kind, pod }) => {
                            seen = seen.max(rv);
                            if rv <= from || !matches(&pod) {
                                continue;
                            }
                            line(kind, &pod)
                        }
                        Ok(Change::Compacted) => {
                            let oldest = this.lock().oldest_rv;
                            let _ = tx.send(Ok(gone(from, oldest))).await;
                            return;
                        }
                        Err(_) => return,
                    },
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("transfer-encoding", "chunked")
            .body(body)
            .unwrap()
    }

    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

async fn handle(State(api): State<KubeApi>, uri: Uri, headers: HeaderMap) -> Response {
    let query = parse_query(uri.query().unwrap_or_default());
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mode = {
        let mut inner = api.lock();
        inner.requests.push(Recorded { path: uri.path().to_owned(), query: query.clone(), authorization });
        inner.mode
    };
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match mode {
        Mode::Forbidden => {
            let verb = if watch { "watch" } else { "list" };
            let msg = format!(
                "pods is forbidden: User \"system:serviceaccount:monitoring:podometer\" cannot {verb} resource \
                 \"pods\" in API group \"\" at the cluster scope"
            );
            let mut body = status(403, "Forbidden", &msg);
            body["details"] = json!({"kind": "pods"});
            return json_response(StatusCode::FORBIDDEN, &body);
        }
        Mode::NotJson => {
            return (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body><h1>It works!</h1></body></html>\n",
            )
                .into_response();
        }
        Mode::Normal => {}
    }
    if uri.path() != "/api/v1/pods" {
        let msg = format!("the server could not find the requested resource ({})", uri.path());
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &msg));
    }
    if watch {
        api.watch(&query)
    } else {
        api.list(&query)
    }
}

/// A kubeconfig file for a client of the server at `url`, with a bearer token.
pub fn write_kubeconfig(path: &std::path::Path, url: &str, token: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {url}\n\
         contexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: agent\n\
         current-context: stand-in\nusers:\n- name: agent\n  user:\n    token: {token}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// `a=b&c=d%3De` → {a: b, c: d=e}.
fn parse_query(query: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 3;
                            continue;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b'+' => out.push(b' '),
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}
