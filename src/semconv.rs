//! Every metric and attribute name the agent emits, in one place.
//!
//! Names follow the OpenTelemetry semantic conventions (`container.*`, `k8s.pod.*`,
//! `network.*`). Where the conventions have no name, the constant mirrors the nearest
//! `system.*` name or the OpenTelemetry Collector's docker_stats receiver, and its doc
//! comment says so; docs/metrics.md lists these deviations.

use crate::model::{MetricDesc, MetricKind};

// ---- resource attributes ----
pub const CONTAINER_ID: &str = "container.id";
pub const CONTAINER_RUNTIME_NAME: &str = "container.runtime.name";
pub const K8S_POD_UID: &str = "k8s.pod.uid";
/// Not in the conventions: the pod's QoS class as the kubelet's cgroup path names it.
pub const K8S_POD_QOS_CLASS: &str = "k8s.pod.qos_class";
/// Not in the conventions: the id of a Podman pod (`libpod_parent/<pod-id>`).
pub const PODMAN_POD_ID: &str = "podman.pod.id";
pub const HOST_NAME: &str = "host.name";

// ---- resource attributes set by the metadata processors (semantic conventions 1.42) ----
pub const K8S_POD_NAME: &str = "k8s.pod.name";
pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
pub const K8S_CONTAINER_RESTART_COUNT: &str = "k8s.container.restart_count";
pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
pub const K8S_DAEMONSET_NAME: &str = "k8s.daemonset.name";
pub const K8S_JOB_NAME: &str = "k8s.job.name";
pub const K8S_CRONJOB_NAME: &str = "k8s.cronjob.name";
/// Prefix of `k8s.pod.label.<key>`, for the keys a processor's allowlist names.
pub const K8S_POD_LABEL_PREFIX: &str = "k8s.pod.label.";
/// Prefix of `k8s.pod.annotation.<key>`, for the keys a processor's allowlist names.
pub const K8S_POD_ANNOTATION_PREFIX: &str = "k8s.pod.annotation.";
pub const CONTAINER_NAME: &str = "container.name";
pub const CONTAINER_IMAGE_NAME: &str = "container.image.name";
/// A string array: the image's tags.
pub const CONTAINER_IMAGE_TAGS: &str = "container.image.tags";
/// Prefix of `container.label.<key>`, for the keys a processor's allowlist names.
pub const CONTAINER_LABEL_PREFIX: &str = "container.label.";
/// Not in the conventions: the name of a Podman pod (mirrors `k8s.pod.name`).
pub const PODMAN_POD_NAME: &str = "podman.pod.name";
pub const K8S_NODE_NAME: &str = "k8s.node.name";

// ---- point attributes ----
pub const CPU_MODE: &str = "cpu.mode";
pub const DISK_IO_DIRECTION: &str = "disk.io.direction";
pub const SYSTEM_DEVICE: &str = "system.device";
pub const NETWORK_IO_DIRECTION: &str = "network.io.direction";
pub const NETWORK_INTERFACE_NAME: &str = "network.interface.name";
/// Not in the conventions: the host-side veth peer of a pod interface, found through netlink.
pub const NETWORK_INTERFACE_HOST_PEER: &str = "network.interface.host_peer";
/// Not in the conventions: `some` or `full`, as in the kernel's PSI files.
pub const PRESSURE_STALL_TYPE: &str = "pressure.stall.type";
/// `ipv4` or `ipv6`: which of the kernel's MIBs a UDP counter or a socket count comes from.
pub const NETWORK_TYPE: &str = "network.type";
/// `tcp` or `udp`.
pub const NETWORK_TRANSPORT: &str = "network.transport";
/// `established` or `time_wait`, as `system.network.connection.count` uses it.
pub const NETWORK_CONNECTION_STATE: &str = "network.connection.state";

pub const CPU_MODE_USER: &str = "user";
pub const CPU_MODE_SYSTEM: &str = "system";
pub const DIRECTION_READ: &str = "read";
pub const DIRECTION_WRITE: &str = "write";
pub const DIRECTION_RECEIVE: &str = "receive";
pub const DIRECTION_TRANSMIT: &str = "transmit";
pub const NETWORK_TYPE_IPV4: &str = "ipv4";
pub const NETWORK_TYPE_IPV6: &str = "ipv6";
pub const TRANSPORT_TCP: &str = "tcp";
pub const TRANSPORT_UDP: &str = "udp";
pub const CONNECTION_ESTABLISHED: &str = "established";
pub const CONNECTION_TIME_WAIT: &str = "time_wait";

/// The scope name on every OTLP request.
pub const SCOPE_NAME: &str = "podometer";

const fn counter(name: &'static str, unit: &'static str, description: &'static str) -> MetricDesc {
    MetricDesc { name, unit, description, kind: MetricKind::Counter }
}
const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> MetricDesc {
    MetricDesc { name, unit, description, kind: MetricKind::Gauge }
}

/// One family of cgroup-derived metrics. Containers and pods carry the same measurements under
/// different prefixes (`container.*`, `k8s.pod.*`), so a source picks the family by what the
/// cgroup is and fills it the same way.
#[derive(Debug)]
pub struct CgroupFamily {
    pub cpu_time: MetricDesc,
    pub cpu_throttling_periods: MetricDesc,
    pub cpu_throttling_throttled_periods: MetricDesc,
    pub cpu_throttling_throttled_time: MetricDesc,
    pub memory_usage: MetricDesc,
    pub memory_working_set: MetricDesc,
    pub memory_rss: MetricDesc,
    pub memory_file: MetricDesc,
    pub memory_limit: MetricDesc,
    pub memory_oom_kills: MetricDesc,
    pub disk_io: MetricDesc,
    pub disk_operations: MetricDesc,
    pub pids_count: MetricDesc,
    pub pids_limit: MetricDesc,
    pub cpu_pressure: MetricDesc,
    pub memory_pressure: MetricDesc,
    pub io_pressure: MetricDesc,
}

/// Network metrics of one network namespace, on a pod's or a container's Resource.
#[derive(Debug)]
pub struct NetworkFamily {
    pub io: MetricDesc,
    pub errors: MetricDesc,
    pub packets: MetricDesc,
    pub dropped: MetricDesc,
    /// The namespace's TCP and UDP counters, on the same Resource.
    pub protocols: ProtocolFamily,
}

macro_rules! cgroup_family {
    ($prefix:literal) => {
        CgroupFamily {
            cpu_time: counter(concat!($prefix, ".cpu.time"), "s", "CPU time consumed, by mode."),
            // docker_stats receiver names; the conventions have none for CFS throttling.
            cpu_throttling_periods: counter(
                concat!($prefix, ".cpu.throttling_data.periods"),
                "{period}",
                "CFS enforcement periods that elapsed while the group was runnable.",
            ),
            cpu_throttling_throttled_periods: counter(
                concat!($prefix, ".cpu.throttling_data.throttled_periods"),
                "{period}",
                "CFS periods in which the group was throttled.",
            ),
            cpu_throttling_throttled_time: counter(
                concat!($prefix, ".cpu.throttling_data.throttled_time"),
                "s",
                "Total time the group was throttled.",
            ),
            memory_usage: gauge(
                concat!($prefix, ".memory.usage"),
                "By",
                "Memory charged to the cgroup, page cache included.",
            ),
            memory_working_set: gauge(
                concat!($prefix, ".memory.working_set"),
                "By",
                "Usage minus inactive file pages, as the kubelet computes it.",
            ),
            memory_rss: gauge(concat!($prefix, ".memory.rss"), "By", "Anonymous and swap-cache memory."),
            memory_file: gauge(
                concat!($prefix, ".memory.file"),
                "By",
                "Page cache (file-backed memory) charged to the cgroup.",
            ),
            memory_limit: gauge(
                concat!($prefix, ".memory.usage.limit"),
                "By",
                "Memory limit of the cgroup; absent when unlimited.",
            ),
            memory_oom_kills: counter(
                concat!($prefix, ".memory.oom_kills"),
                "{kill}",
                "Processes killed by the OOM killer in this cgroup.",
            ),
            disk_io: counter(
                concat!($prefix, ".disk.io"),
                "By",
                "Bytes read from and written to block devices.",
            ),
            disk_operations: counter(
                concat!($prefix, ".disk.operations"),
                "{operation}",
                "Block device operations (mirrors system.disk.operations).",
            ),
            pids_count: gauge(concat!($prefix, ".pids.count"), "{process}", "Tasks currently in the cgroup."),
            pids_limit: gauge(
                concat!($prefix, ".pids.limit"),
                "{process}",
                "Maximum tasks allowed; absent when unlimited.",
            ),
            cpu_pressure: counter(
                concat!($prefix, ".cpu.pressure.stall_time"),
                "s",
                "Time tasks stalled waiting for CPU (PSI), by stall type.",
            ),
            memory_pressure: counter(
                concat!($prefix, ".memory.pressure.stall_time"),
                "s",
                "Time tasks stalled waiting for memory (PSI), by stall type.",
            ),
            io_pressure: counter(
                concat!($prefix, ".io.pressure.stall_time"),
                "s",
                "Time tasks stalled waiting for I/O (PSI), by stall type.",
            ),
        }
    };
}

/// TCP and UDP health of one network namespace (`/proc/<pid>/net/{snmp,netstat,snmp6,sockstat,
/// sockstat6}`), on the same Resource as its network I/O. The conventions name none of these per
/// container or pod: the names extend `<prefix>.network.*` the way `system.network.*` does, and
/// the gauges mirror `system.network.connection.count`. Each doc comment names the kernel
/// counter; `docs/network-health.md` lists them with their files.
#[derive(Debug)]
pub struct ProtocolFamily {
    /// `Tcp: InSegs` (receive), `Tcp: OutSegs` (transmit).
    pub tcp_segments: MetricDesc,
    /// `Tcp: RetransSegs`.
    pub tcp_retransmitted: MetricDesc,
    /// `Tcp: InErrs`.
    pub tcp_errors: MetricDesc,
    /// `Tcp: OutRsts` (transmit), `Tcp: EstabResets` (receive: what `netstat -s` calls
    /// "connection resets received"; the kernel keeps no count of RST segments received).
    pub tcp_resets: MetricDesc,
    /// `Tcp: ActiveOpens`.
    pub tcp_active_opens: MetricDesc,
    /// `Tcp: PassiveOpens`.
    pub tcp_passive_opens: MetricDesc,
    /// `Tcp: AttemptFails`.
    pub tcp_failed_opens: MetricDesc,
    /// `TcpExt: ListenOverflows`.
    pub tcp_listen_overflows: MetricDesc,
    /// `TcpExt: ListenDrops`.
    pub tcp_listen_drops: MetricDesc,
    /// `TcpExt: TCPSynRetrans`.
    pub tcp_syn_retransmitted: MetricDesc,
    /// `TcpExt: TCPTimeouts`.
    pub tcp_timeouts: MetricDesc,
    /// `Udp: InDatagrams`/`OutDatagrams` (`network.type` ipv4), `Udp6InDatagrams`/
    /// `Udp6OutDatagrams` (ipv6).
    pub udp_datagrams: MetricDesc,
    /// `Udp: NoPorts`, `Udp6NoPorts`.
    pub udp_no_port: MetricDesc,
    /// `Udp: InErrors`, `Udp6InErrors`.
    pub udp_errors: MetricDesc,
    /// `Udp: RcvbufErrors` (receive), `SndbufErrors` (transmit), and their `Udp6` twins.
    pub udp_buffer_errors: MetricDesc,
    /// `Tcp: CurrEstab` (`established`: ESTABLISHED and CLOSE-WAIT, as RFC 1213 counts them),
    /// sockstat's `tw` (`time_wait`).
    pub connections: MetricDesc,
    /// sockstat's and sockstat6's `inuse`, by `network.transport` and `network.type`.
    pub sockets: MetricDesc,
}

macro_rules! protocol_family {
    ($prefix:literal) => {
        ProtocolFamily {
            tcp_segments: counter(
                concat!($prefix, ".network.tcp.segment.count"),
                "{segment}",
                "TCP segments received and sent (retransmissions excluded from sent), by direction.",
            ),
            tcp_retransmitted: counter(
                concat!($prefix, ".network.tcp.segment.retransmitted"),
                "{segment}",
                "TCP segments retransmitted.",
            ),
            tcp_errors: counter(
                concat!($prefix, ".network.tcp.segment.errors"),
                "{segment}",
                "TCP segments received in error (bad checksum and the like).",
            ),
            tcp_resets: counter(
                concat!($prefix, ".network.tcp.reset.count"),
                "{reset}",
                "TCP resets sent (transmit) and connections reset from ESTABLISHED or CLOSE-WAIT (receive).",
            ),
            tcp_active_opens: counter(
                concat!($prefix, ".network.tcp.open.active"),
                "{connection}",
                "TCP connections opened by this namespace (SYN sent).",
            ),
            tcp_passive_opens: counter(
                concat!($prefix, ".network.tcp.open.passive"),
                "{connection}",
                "TCP connections accepted by a listener (SYN received).",
            ),
            tcp_failed_opens: counter(
                concat!($prefix, ".network.tcp.open.failed"),
                "{connection}",
                "TCP connection attempts that failed.",
            ),
            tcp_listen_overflows: counter(
                concat!($prefix, ".network.tcp.listen.overflows"),
                "{connection}",
                "Connections dropped because a listener's accept queue was full.",
            ),
            tcp_listen_drops: counter(
                concat!($prefix, ".network.tcp.listen.drops"),
                "{connection}",
                "Connection requests a listener dropped for any reason, overflows included.",
            ),
            tcp_syn_retransmitted: counter(
                concat!($prefix, ".network.tcp.syn.retransmitted"),
                "{segment}",
                "SYN and SYN-ACK segments retransmitted.",
            ),
            tcp_timeouts: counter(
                concat!($prefix, ".network.tcp.timeouts"),
                "{timeout}",
                "TCP retransmission timer expiries.",
            ),
            udp_datagrams: counter(
                concat!($prefix, ".network.udp.datagram.count"),
                "{datagram}",
                "UDP datagrams delivered and sent, by direction and network.type.",
            ),
            udp_no_port: counter(
                concat!($prefix, ".network.udp.no_port"),
                "{datagram}",
                "UDP datagrams received for a port nobody listens on.",
            ),
            udp_errors: counter(
                concat!($prefix, ".network.udp.errors"),
                "{datagram}",
                "UDP datagrams received that could not be delivered, buffer errors included.",
            ),
            udp_buffer_errors: counter(
                concat!($prefix, ".network.udp.buffer_errors"),
                "{datagram}",
                "UDP datagrams dropped because a socket's receive buffer was full (receive) or its send buffer could not take them (transmit).",
            ),
            connections: gauge(
                concat!($prefix, ".network.connection.count"),
                "{connection}",
                "TCP connections by state (mirrors system.network.connection.count).",
            ),
            sockets: gauge(
                concat!($prefix, ".network.socket.count"),
                "{socket}",
                "Sockets in use, by network.transport and network.type.",
            ),
        }
    };
}

macro_rules! network_family {
    ($prefix:literal) => {
        NetworkFamily {
            io: counter(
                concat!($prefix, ".network.io"),
                "By",
                "Bytes received and transmitted, by interface.",
            ),
            errors: counter(
                concat!($prefix, ".network.errors"),
                "{error}",
                "Receive and transmit errors, by interface.",
            ),
            // Mirror system.network.packet.count / system.network.packet.dropped.
            packets: counter(
                concat!($prefix, ".network.packet.count"),
                "{packet}",
                "Packets received and transmitted, by interface.",
            ),
            dropped: counter(
                concat!($prefix, ".network.packet.dropped"),
                "{packet}",
                "Packets dropped, by interface.",
            ),
            protocols: protocol_family!($prefix),
        }
    };
}

pub static CONTAINER: CgroupFamily = cgroup_family!("container");
pub static POD: CgroupFamily = cgroup_family!("k8s.pod");
pub static CONTAINER_NETWORK: NetworkFamily = network_family!("container");
pub static POD_NETWORK: NetworkFamily = network_family!("k8s.pod");

// ---- netns source (additive) ----
/// Not in the conventions: resource attribute, `true` on a pod or container that uses the
/// host's network namespace (`hostNetwork: true`), when the netns source's `host_network` is
/// `mark`. Such resources get no network series.
pub const PODOMETER_HOST_NETWORK: &str = "podometer.host_network";
/// `true` on a container found in a user's delegated cgroup subtree (rootless Podman or
/// Docker): its id and names are that user's word. No semantic convention says rootless.
pub const PODOMETER_CONTAINER_ROOTLESS: &str = "podometer.container.rootless";
/// The uid owning a rootless container's delegated subtree, as semconv's `user.id` (a string).
pub const USER_ID: &str = "user.id";

// ---- processes source (sidecar view) ----
/// Not in the conventions: the cgroup path of processes whose path names no container id
/// (the agent's own container in a private cgroup namespace shows `/`).
pub const PODOMETER_CGROUP_PATH: &str = "podometer.cgroup.path";

/// Sums over the live processes of one container, read from `/proc/<pid>/*` by the
/// `processes` source; named `container.processes.*` so they are never mistaken for the
/// cgroup's own accounting (see the source's module docs for what they miss).
pub struct ProcessesFamily {
    pub cpu_time: MetricDesc,
    pub memory_rss: MetricDesc,
    pub count: MetricDesc,
}

pub static CONTAINER_PROCESSES: ProcessesFamily = ProcessesFamily {
    cpu_time: counter(
        "container.processes.cpu.time",
        "s",
        "CPU time of the container's live processes and the children they waited for, from /proc/<pid>/stat.",
    ),
    memory_rss: gauge(
        "container.processes.memory.rss",
        "By",
        "Sum of VmRSS of the container's live processes; shared pages counted once per process.",
    ),
    count: gauge(
        "container.processes.count",
        "{process}",
        "Live processes of the container visible to the agent.",
    ),
};
