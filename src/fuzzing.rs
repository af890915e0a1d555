//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run by `scripts/fuzz.sh`) and of
//! the corpus replay test (`tests/fuzz_corpus.rs`, run by CI on stable). Each feeds arbitrary
//! bytes to the parsers of one kind of outside input, exactly as the agent calls them; a
//! finding is a panic, an abort, a hang or an allocation past the fuzzer's limit. Not an API.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;

use crate::exporters::otlp::queue;
use crate::exporters::otlp::transport;
use crate::model::AttrValue;
use crate::processors::metadata::{docker_api as docker, runtime_files as bundle};
use crate::sources::cgroups::parse as cg;
use crate::sources::netns::{peer, procfs};

/// A fuzz target's entry point.
pub type Entry = fn(&[u8]);

/// Every fuzz target, by name: the directory names under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("cgroup_file", cgroup_file),
    ("proc_file", proc_file),
    ("netlink", netlink),
    ("config_yaml", config_yaml),
    ("queue_segment", queue_segment),
    ("otlp_response", otlp_response),
    ("bundle_config", bundle_config),
    ("docker_api", docker_api),
    ("net_protocols", net_protocols),
];

/// The first byte picks the cgroup file format, the rest is the file's text (cgroup files are
/// read as UTF-8; anything else is `NotText` before a parser sees it).
pub fn cgroup_file(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 13 {
        0 => drop(cg::parse_single(text)),
        1 => drop(cg::parse_max_or_number(text)),
        2 => drop(cg::parse_v1_memory_limit(text)),
        3 => {
            let (user, sys) = text.split_once('\0').unwrap_or((text, text));
            let _ = cg::parse_cpuacct_usage_pair(user, sys);
            if let (Ok(u), Ok(s)) = (cg::parse_single(user), cg::parse_single(sys)) {
                let _ = cg::adjust_cputime(u.wrapping_add(s), u, s, (u / 2, s / 3));
            }
        }
        4 => drop(cg::parse_cpuacct_stat(text, 100)),
        5 => drop(cg::parse_v1_cpu_stat(text)),
        6 => drop(cg::parse_v2_cpu_stat(text)),
        7 => {
            if let Ok(stat) = cg::parse_v1_memory_stat(text) {
                let _ = cg::working_set(u64::MAX, &stat);
                let _ = cg::working_set(0, &stat);
            }
        }
        8 => drop(cg::parse_v2_memory_stat(text)),
        9 => drop(cg::parse_oom_kills(text)),
        10 => drop(cg::parse_v1_blkio(text)),
        11 => drop(cg::parse_v2_io_stat(text)),
        _ => drop(cg::parse_pressure(text)),
    }
}

/// The first byte picks `/proc/<pid>/net/dev`, `/proc/<pid>/stat` or `cgroup.procs`.
pub fn proc_file(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 3 {
        0 => drop(procfs::parse_net_dev(text)),
        1 => drop(procfs::parse_stat_starttime(text)),
        _ => drop(procfs::parse_procs(text)),
    }
}

/// The first byte picks `net/snmp`, `net/netstat`, `net/snmp6`, `net/sockstat` or
/// `net/sockstat6`; the counters parsed are turned into points as a sweep would.
pub fn net_protocols(data: &[u8]) {
    use crate::sources::netns::protocols::{
        ProtocolCounters, ProtocolFile, ProtocolMetricsConfig, ProtocolSelection,
    };
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let kind = ProtocolFile::ALL[usize::from(which) % ProtocolFile::ALL.len()];
    let mut counters = ProtocolCounters::default();
    let all = ProtocolMetricsConfig { include: vec![crate::glob::Glob::new("*")], exclude: Vec::new() };
    let selection = ProtocolSelection::new(&all);
    if selection.parse(kind, text, &mut counters).is_ok() {
        let mut points = Vec::new();
        selection.points(&crate::semconv::POD_NETWORK.protocols, &counters, &mut points);
    }
}

/// One rtnetlink datagram as the kernel would answer a request (sequence number 1), dump and
/// single answer both, and what the agent reads out of the messages; then as a pod's link
/// dump, of which only a few named links are decoded.
pub fn netlink(data: &[u8]) {
    for dump in [true, false] {
        let mut replies = Vec::new();
        let mut interrupted = false;
        let _ = peer::parse_datagram(data, 1, dump, &mut replies, &mut interrupted);
        let links: Vec<_> = replies
            .iter()
            .filter_map(|m| match m {
                netlink_packet_route::RouteNetlinkMessage::NewLink(l) => {
                    Some(peer::LinkRecord::from_message(l))
                }
                _ => None,
            })
            .collect();
        let _ = peer::match_host_peers(1, &links, &links);
    }
    // The pod side: only the named links are decoded, never more than named.
    let names = ["lo", "eth0", "vh0"];
    let mut links = Vec::new();
    let mut interrupted = false;
    let _ = peer::parse_link_datagram(data, 1, &names, &mut links, &mut interrupted);
    assert!(links.len() <= names.len());
    let _ = peer::match_host_peers(1, &links, &links);
}

/// A config file with `${env:…}` references; three variables are set.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| match name {
        "A" => Some("value".to_owned()),
        "EMPTY" => Some(String::new()),
        "NESTED" => Some("${env:A}".to_owned()),
        _ => None,
    };
    if let Ok(config) = crate::config::parse("fuzz.yaml", text, env) {
        let _ = config.describe();
    }
}

/// A disk-queue segment file as recovery reads it.
pub fn queue_segment(data: &[u8]) {
    let scan = queue::scan_segment(data);
    // What recovery keeps must lie inside the file, in order, without overlap.
    let mut end = 0u64;
    for r in &scan.records {
        assert!(r.offset >= end && r.index < scan.count, "records overlap: {scan:?}");
        end = r.offset + queue::RECORD_HEADER as u64 + u64::from(r.len);
        assert!(end <= data.len() as u64, "a record runs past the file: {scan:?}");
    }
    assert!(scan.good_len <= data.len() as u64 && scan.good_len >= end, "{scan:?}");
}

/// An OTLP receiver's answer: first byte the HTTP status class and gRPC code, then the
/// `Retry-After` value, the `Location`, the body (NUL-separated).
pub fn otlp_response(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(3, |b| *b == 0);
    let retry_after = parts.next().map(String::from_utf8_lossy);
    let location = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let status = 100 + u16::from(which) * 2 % 500;
    let _ = transport::http_outcome(status, retry_after.as_deref(), location.as_deref(), Some(body), now);
    let _ = transport::http_outcome(status, retry_after.as_deref(), None, None, now);
    let _ = ExportMetricsServiceResponse::decode(body);
    let message = String::from_utf8_lossy(rest);
    let status = tonic::Status::with_details(
        tonic::Code::from_i32(i32::from(which % 20)),
        message.into_owned(),
        Bytes::copy_from_slice(body),
    );
    let _ = transport::grpc_failure(&status);
}

/// A runtime's bundle `config.json` (first byte even) or a containers/storage
/// `containers.json` (odd), read as `runtime_files` reads them: UTF-8 text, parsed, then named
/// the containerd (CRI and not) and CRI-O ways, the image reference parsed.
pub fn bundle_config(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if which % 2 == 1 {
        for entry in bundle::parse_store(text).into_iter().flat_map(|store| store.into_values()) {
            if let Some(image) = entry.image {
                image_parts_come_from(&image);
            }
        }
        return;
    }
    let Ok(config) = bundle::parse_bundle(text) else { return };
    for names in [bundle::containerd_names(&config, true), bundle::containerd_names(&config, false)]
        .into_iter()
        .chain([bundle::crio_names(&config)])
        .flatten()
    {
        if let Some(image) = &names.image {
            image_parts_come_from(image);
        }
    }
}

/// The parts of an image reference are cut out of it (the tag may be the default one).
fn image_parts_come_from(image: &str) {
    if let Some(parts) = crate::processors::metadata::parse_image_reference(image) {
        assert!(image.trim().starts_with(parts.name), "{image}");
        let tag_written = parts
            .tag
            .is_none_or(|t| t == crate::processors::metadata::image_ref::DEFAULT_TAG || image.contains(t));
        assert!(tag_written && parts.digest.is_none_or(|d| image.contains(d)), "{image}");
    }
}

/// The Docker Engine API's answers (NUL-separated): `/version`, `/containers/json`, Podman's
/// `/libpod/containers/json`, the `/events` lines, applied by the `docker_api` task's own code
/// (its list, event and publication steps over recorded answers). What it keeps is bounded:
/// 64-hex container ids, values of at most the kept length, pods only of cached containers,
/// and the cache's two copies agree.
pub fn docker_api(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let (version, list, libpod, events) = (next(), next(), next(), next());
    let labels = ["app".to_owned(), "com.docker.compose.project".to_owned()];
    let snapshot = docker::replay_answers(version, list, libpod, events, &labels);
    let fits = |v: &AttrValue| match v {
        AttrValue::Str(s) => s.len() <= docker::MAX_ATTRIBUTE_LEN,
        AttrValue::StrArray(a) => a.iter().all(|s| s.len() <= docker::MAX_ATTRIBUTE_LEN),
        _ => true,
    };
    for (id, meta) in &snapshot.containers {
        assert!(crate::model::is_container_id(id), "kept id {id:?}");
        assert!(meta.attributes.iter().all(|(_, v)| fits(v)), "{meta:?}");
    }
    // Only pods a cached container names are kept (fuzz/regressions/docker_api holds the
    // input that once kept a pod no container named).
    for (key, pod) in &snapshot.pods {
        assert!(snapshot.containers.values().any(|c| c.pod.as_ref() == Some(key)), "orphan pod {key}");
        assert!(pod.attributes.iter().all(|(_, v)| fits(v)), "{pod:?}");
    }
}
