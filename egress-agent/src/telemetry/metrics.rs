//! Prometheus metrics: the per-CPU kernel counters summed and exposed with names,
//! never raw IPs, plus `/healthz` and `/readyz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use egress_common::{
    Action, Counter, DIR_SENT, MatchKind, PROTO_TCP, PROTO_UDP, RateBucket, Reason, StatKey,
    TrafficKey, TrafficValue,
};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::telemetry::catalog::Catalog;

/// Labels of `egress_connections_total` (SPEC §7.8).
pub const CONNECTION_LABELS: &[&str] = &[
    "source_namespace",
    "source_workload",
    "destination_service",
    "destination_service_namespace",
    "destination_subset",
    "destination_port",
    "destination_cluster",
    "destination_location",
    "transport",
    "match",
    "decision",
    "reason",
    "policy_mode",
];

/// Every metric the agent exports, by subsystem; each subsystem registers its
/// own families.
pub struct Metrics {
    pub registry: Registry,
    pub traffic: TrafficMetrics,
    pub dataplane: DataplaneMetrics,
    pub config: ConfigMetrics,
    pub dns: DnsMetrics,
    pub kubernetes: KubernetesMetrics,
    pub ready: AtomicBool,
}

/// Registers `c` and hands it back.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric names");
    c
}

/// What workloads did: classified connections, bytes and packets, the access log.
pub struct TrafficMetrics {
    pub connections: IntCounterVec,
    pub sent_bytes: IntCounterVec,
    pub received_bytes: IntCounterVec,
    pub sent_packets: IntCounterVec,
    pub received_packets: IntCounterVec,
    pub istio_opened: IntCounterVec,
    pub istio_sent_bytes: IntCounterVec,
    pub istio_received_bytes: IntCounterVec,
    pub access_log_dropped: IntCounterVec,
}

impl TrafficMetrics {
    /// Creates the subsystem's families and registers them in `registry`.
    fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let connections = IntCounterVec::new(
            Opts::new(
                "egress_connections_total",
                "Classified connect() calls by source workload, destination service and decision",
            ),
            CONNECTION_LABELS,
        )
        .expect("valid metric");
        let sent_bytes = counter(
            "egress_sent_bytes_total",
            "Payload bytes workloads sent, by destination service",
            TRAFFIC_LABELS,
        );
        let received_bytes = counter(
            "egress_received_bytes_total",
            "Payload bytes workloads received, by destination service",
            TRAFFIC_LABELS,
        );
        let sent_packets = counter(
            "egress_sent_packets_total",
            "Packets workloads sent, by destination service",
            TRAFFIC_LABELS,
        );
        let received_packets = counter(
            "egress_received_packets_total",
            "Packets workloads received, by destination service",
            TRAFFIC_LABELS,
        );
        let istio_opened = counter(
            "istio_tcp_connections_opened_total",
            "TCP connections opened (Istio-compatible)",
            ISTIO_LABELS,
        );
        let istio_sent_bytes = counter(
            "istio_tcp_sent_bytes_total",
            "TCP payload bytes sent (Istio-compatible)",
            ISTIO_LABELS,
        );
        let istio_received_bytes = counter(
            "istio_tcp_received_bytes_total",
            "TCP payload bytes received (Istio-compatible)",
            ISTIO_LABELS,
        );
        let access_log_dropped = counter(
            "egress_access_log_dropped_total",
            "Denied or audited attempts not logged because their workload exceeded the log rate",
            &["source_namespace", "source_workload"],
        );
        Self {
            connections: register(registry, connections),
            sent_bytes: register(registry, sent_bytes),
            received_bytes: register(registry, received_bytes),
            sent_packets: register(registry, sent_packets),
            received_packets: register(registry, received_packets),
            istio_opened: register(registry, istio_opened),
            istio_sent_bytes: register(registry, istio_sent_bytes),
            istio_received_bytes: register(registry, istio_received_bytes),
            access_log_dropped: register(registry, access_log_dropped),
        }
    }
}

/// The kernel side: syncs, map fill, kernel error counters, revocations, interfaces.
pub struct DataplaneMetrics {
    pub kernel_counters: IntCounterVec,
    pub revoked: IntCounterVec,
    pub map_entries: IntGaugeVec,
    pub syncs: IntCounterVec,
    pub sync_duration_us: IntGauge,
    pub map_capacity: IntGaugeVec,
    pub interfaces: IntGauge,
}

impl DataplaneMetrics {
    /// Creates the subsystem's families and registers them in `registry`.
    fn new(registry: &Registry) -> Self {
        let kernel_counters = IntCounterVec::new(
            Opts::new(
                "egress_kernel_events_total",
                "Kernel-side error and drop counters (program errors, dropped events, full maps)",
            ),
            &["counter"],
        )
        .expect("valid metric");
        let revoked = IntCounterVec::new(
            Opts::new(
                "egress_revoked_connections_total",
                "Established TCP connections and connected UDP sockets destroyed because their \
                 destination left the workload's view",
            ),
            &["source_namespace", "source_workload", "destination_service"],
        )
        .expect("valid metric");
        let map_entries = IntGaugeVec::new(
            Opts::new(
                "egress_map_entries",
                "Entries the agent keeps in each eBPF map",
            ),
            &["map"],
        )
        .expect("valid metric");
        let syncs = IntCounterVec::new(
            Opts::new("egress_syncs_total", "Dataplane syncs by result"),
            &["result"],
        )
        .expect("valid metric");
        let sync_duration_us = IntGauge::new(
            "egress_sync_duration_microseconds",
            "Duration of the last dataplane sync",
        )
        .expect("valid metric");
        let map_capacity = IntGaugeVec::new(
            Opts::new(
                "egress_map_capacity",
                "Capacity of each eBPF map (fill level: egress_map_entries / this)",
            ),
            &["map"],
        )
        .expect("valid metric");
        for (name, cap) in [
            (egress_common::WORKLOADS_MAP, egress_common::WORKLOADS_MAX),
            (egress_common::SERVICES_MAP, egress_common::SERVICES_MAX),
            (egress_common::BACKENDS_MAP, egress_common::BACKENDS_MAX),
            (egress_common::CIDRS_MAP, egress_common::CIDRS_MAX),
            (
                egress_common::POLICY_CIDRS_MAP,
                egress_common::POLICY_CIDRS_MAX,
            ),
            (egress_common::LEARNED_MAP, egress_common::LEARNED_MAX),
        ] {
            map_capacity.with_label_values(&[name]).set(i64::from(cap));
        }
        let interfaces = IntGauge::new(
            "egress_traffic_interfaces",
            "Workload interfaces with traffic counters attached",
        )
        .expect("valid metric");
        Self {
            kernel_counters: register(registry, kernel_counters),
            revoked: register(registry, revoked),
            map_entries: register(registry, map_entries),
            syncs: register(registry, syncs),
            sync_duration_us: register(registry, sync_duration_us),
            map_capacity: register(registry, map_capacity),
            interfaces: register(registry, interfaces),
        }
    }
}

/// The configuration: resources by state, rejections, warnings, reloads.
pub struct ConfigMetrics {
    pub rejected: IntCounterVec,
    pub reloads: IntCounterVec,
    pub warnings: IntCounterVec,
    pub resources: IntGaugeVec,
}

impl ConfigMetrics {
    /// Creates the subsystem's families and registers them in `registry`.
    fn new(registry: &Registry) -> Self {
        let rejected = IntCounterVec::new(
            Opts::new(
                "egress_config_rejected_total",
                "Resources rejected by validation",
            ),
            &["kind", "namespace", "name"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "egress_config_reloads_total",
                "Reloads of the agent's configuration file (SIGHUP or an edit), by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let warnings = IntCounterVec::new(
            Opts::new(
                "egress_config_warnings_total",
                "Resources applied with validation warnings",
            ),
            &["kind", "namespace", "name"],
        )
        .expect("valid metric");
        let resources = IntGaugeVec::new(
            Opts::new(
                "egress_config_resources",
                "Resources by state: loaded, rejected, stale (last good version kept)",
            ),
            &["state"],
        )
        .expect("valid metric");
        Self {
            rejected: register(registry, rejected),
            reloads: register(registry, reloads),
            warnings: register(registry, warnings),
            resources: register(registry, resources),
        }
    }
}

/// Kubernetes mode: the API server's watches.
pub struct KubernetesMetrics {
    pub watch_up: IntGaugeVec,
    pub events: IntCounterVec,
    pub errors: IntCounterVec,
    pub pods: IntGaugeVec,
}

impl KubernetesMetrics {
    /// Creates the subsystem's families and registers them in `registry`.
    fn new(registry: &Registry) -> Self {
        let watch_up = IntGaugeVec::new(
            Opts::new(
                "egress_kubernetes_watch_up",
                "1 while the watch of a resource is connected and has listed; 0 while the \
                 API server cannot be reached (the last good state stays enforced)",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "egress_kubernetes_watch_events_total",
                "Watch events received, by resource",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "egress_kubernetes_watch_errors_total",
                "Watch failures (connection lost, 410 Gone and relist, refused), by resource",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let pods = IntGaugeVec::new(
            Opts::new(
                "egress_kubernetes_pods",
                "Pods of this node by state: enforced, untouched (hostNetwork, opted out, the \
                 agent's own), pending (cgroup not there yet)",
            ),
            &["state"],
        )
        .expect("valid metric");
        Self {
            watch_up: register(registry, watch_up),
            events: register(registry, events),
            errors: register(registry, errors),
            pods: register(registry, pods),
        }
    }
}

/// The DNS proxy and the resolver of DNS endpoints.
pub struct DnsMetrics {
    pub queries: IntCounterVec,
    pub upstream_seconds: Histogram,
    pub learned_entries: IntGauge,
    pub resolutions: IntCounterVec,
    pub stale: IntGauge,
    pub resolved_names: IntGauge,
}

impl DnsMetrics {
    /// Creates the subsystem's families and registers them in `registry`.
    fn new(registry: &Registry) -> Self {
        let queries = IntCounterVec::new(
            Opts::new(
                "egress_dns_queries_total",
                "Workload DNS queries by result: vip (answered locally), forwarded, learned \
                 (forwarded, addresses learned), servfail, malformed, learn_failed",
            ),
            &["result"],
        )
        .expect("valid metric");
        let upstream_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "egress_dns_upstream_seconds",
                "Latency of forwarded queries to the upstream resolver",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let learned_entries = IntGauge::new(
            "egress_dns_learned_entries",
            "Destinations workloads may use because a DNS answer named a registry host",
        )
        .expect("valid metric");
        let resolutions = IntCounterVec::new(
            Opts::new(
                "egress_dns_resolutions_total",
                "Resolutions of DNS/DNS_ROUND_ROBIN endpoints by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let stale = IntGauge::new(
            "egress_dns_stale_answers",
            "Names served from their last good answer because resolution fails",
        )
        .expect("valid metric");
        let resolved_names = IntGauge::new(
            "egress_dns_resolved_names",
            "Names of DNS/DNS_ROUND_ROBIN endpoints with a usable answer",
        )
        .expect("valid metric");
        Self {
            queries: register(registry, queries),
            upstream_seconds: register(registry, upstream_seconds),
            learned_entries: register(registry, learned_entries),
            resolutions: register(registry, resolutions),
            stale: register(registry, stale),
            resolved_names: register(registry, resolved_names),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        Arc::new(Self {
            traffic: TrafficMetrics::new(&registry),
            dataplane: DataplaneMetrics::new(&registry),
            config: ConfigMetrics::new(&registry),
            dns: DnsMetrics::new(&registry),
            kubernetes: KubernetesMetrics::new(&registry),
            registry,
            ready: AtomicBool::new(false),
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

/// The label values of one stats key.
pub fn connection_labels(k: &StatKey, catalog: &Catalog) -> Vec<String> {
    let action = Action::from_u8(k.action);
    let reason = Reason::from_u8(k.reason);
    let (src_ns, src_wl, policy) = match catalog.workload(k.workload_id) {
        Some(w) => (w.namespace.clone(), w.name.clone(), w.policy.label()),
        None => ("unknown".into(), "unknown".into(), "unknown"),
    };
    let service = (k.service_id != 0)
        .then(|| catalog.service(k.service_id))
        .flatten();
    let (dst, dst_ns, cluster, location) = match (service, reason) {
        (Some(s), _) => (
            s.host.clone(),
            s.namespace.clone(),
            format!("outbound|{}||{}", k.port, s.host),
            s.location.as_str(),
        ),
        (None, Some(Reason::ClusterInternal)) => (
            "cluster-internal".into(),
            "unknown".into(),
            "cluster-internal".into(),
            "unknown",
        ),
        (None, Some(Reason::AllowAny)) => (
            "PassthroughCluster".into(),
            "unknown".into(),
            "PassthroughCluster".into(),
            "unknown",
        ),
        (None, _) => (
            "BlackHoleCluster".into(),
            "unknown".into(),
            "BlackHoleCluster".into(),
            "unknown",
        ),
    };
    vec![
        src_ns,
        src_wl,
        dst,
        dst_ns,
        String::new(),
        // A refused socket() or setsockopt() has no destination port.
        if egress_common::decide::stat_has_port(k) {
            k.port.to_string()
        } else {
            String::new()
        },
        cluster,
        location.to_owned(),
        egress_common::decide::stat_transport(k).to_owned(),
        MatchKind::from_u8(k.matched)
            .map_or("unknown", |m| m.label())
            .to_owned(),
        action.map_or("unknown", |a| a.label()).to_owned(),
        reason.map_or("unknown", |r| r.label()).to_owned(),
        policy.to_owned(),
    ]
}

/// Labels of the traffic families (`egress_{sent,received}_{bytes,packets}_total`).
pub const TRAFFIC_LABELS: &[&str] = &[
    "source_namespace",
    "source_workload",
    "destination_service",
    "destination_service_namespace",
    "destination_port",
    "transport",
];

/// Labels of Istio's TCP families, so dashboards built for Istio work unchanged.
pub const ISTIO_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
];

/// (name, namespace) of a service id; 0 is PassthroughCluster (traffic that was
/// allowed without a registry match).
fn destination(catalog: &Catalog, service_id: u32) -> (String, String) {
    match catalog.service(service_id) {
        Some(s) => (s.host.clone(), s.namespace.clone()),
        None => ("PassthroughCluster".into(), "unknown".into()),
    }
}

fn workload_names(catalog: &Catalog, id: u32) -> Option<(String, String)> {
    catalog
        .workload(id)
        .map(|w| (w.namespace.clone(), w.name.clone()))
}

fn transport(proto: u8) -> &'static str {
    if proto == PROTO_UDP { "udp" } else { "tcp" }
}

/// Folds the kernel's per-CPU counters into the Prometheus counters, and drops
/// the series (and kernel entries) of workloads that are gone.
pub struct StatsPoller {
    stats: PerCpuHashMap<MapData, StatKey, u64>,
    counters: PerCpuArray<MapData, u64>,
    traffic: PerCpuHashMap<MapData, TrafficKey, TrafficValue>,
    rate: PerCpuHashMap<MapData, u32, RateBucket>,
    seen: HashMap<StatKey, u64>,
    seen_traffic: HashMap<TrafficKey, (u64, u64)>,
    seen_dropped: HashMap<u32, u64>,
    seen_counters: Vec<u64>,
    /// Every series written, by workload id, to remove them when it goes.
    series: HashMap<u32, Vec<(Family, Vec<String>)>>,
}

/// The families with per-workload series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    Connections,
    SentBytes,
    ReceivedBytes,
    SentPackets,
    ReceivedPackets,
    IstioOpened,
    IstioSent,
    IstioReceived,
    Dropped,
}

impl StatsPoller {
    pub fn new(
        stats: PerCpuHashMap<MapData, StatKey, u64>,
        counters: PerCpuArray<MapData, u64>,
        traffic: PerCpuHashMap<MapData, TrafficKey, TrafficValue>,
        rate: PerCpuHashMap<MapData, u32, RateBucket>,
    ) -> Self {
        Self {
            stats,
            counters,
            traffic,
            rate,
            seen: HashMap::new(),
            seen_traffic: HashMap::new(),
            seen_dropped: HashMap::new(),
            seen_counters: vec![0; Counter::COUNT as usize],
            series: HashMap::new(),
        }
    }

    fn vec(metrics: &Metrics, f: Family) -> &IntCounterVec {
        match f {
            Family::Connections => &metrics.traffic.connections,
            Family::SentBytes => &metrics.traffic.sent_bytes,
            Family::ReceivedBytes => &metrics.traffic.received_bytes,
            Family::SentPackets => &metrics.traffic.sent_packets,
            Family::ReceivedPackets => &metrics.traffic.received_packets,
            Family::IstioOpened => &metrics.traffic.istio_opened,
            Family::IstioSent => &metrics.traffic.istio_sent_bytes,
            Family::IstioReceived => &metrics.traffic.istio_received_bytes,
            Family::Dropped => &metrics.traffic.access_log_dropped,
        }
    }

    fn add(&mut self, metrics: &Metrics, f: Family, workload: u32, labels: Vec<String>, n: u64) {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        Self::vec(metrics, f).with_label_values(&refs).inc_by(n);
        let list = self.series.entry(workload).or_default();
        if !list.iter().any(|(g, l)| *g == f && *l == labels) {
            list.push((f, labels));
        }
    }

    /// Reads the maps once and adds what moved since the last poll.
    pub fn poll(&mut self, metrics: &Metrics, catalog: &Catalog) {
        let stats: Vec<(StatKey, u64)> = self
            .stats
            .iter()
            .flatten()
            .map(|(k, v)| (k, v.iter().sum()))
            .collect();
        for (key, total) in stats {
            let last = self.seen.insert(key, total).unwrap_or(0);
            if total <= last || catalog.workload(key.workload_id).is_none() {
                continue;
            }
            let n = total - last;
            let labels = connection_labels(&key, catalog);
            self.add(metrics, Family::Connections, key.workload_id, labels, n);
            let opened = matches!(
                Action::from_u8(key.action),
                Some(Action::Allow | Action::Rewrite | Action::Audit)
            );
            if key.proto == PROTO_TCP
                && opened
                && let Some((ns, wl)) = workload_names(catalog, key.workload_id)
            {
                let (dst, dst_ns) = match (key.service_id, Reason::from_u8(key.reason)) {
                    (0, Some(Reason::ClusterInternal)) => {
                        ("cluster-internal".into(), "unknown".into())
                    }
                    (id, _) => destination(catalog, id),
                };
                let labels = vec!["source".into(), wl, ns, dst.clone(), dst, dst_ns];
                self.add(metrics, Family::IstioOpened, key.workload_id, labels, n);
            }
        }

        let traffic: Vec<(TrafficKey, (u64, u64))> = self
            .traffic
            .iter()
            .flatten()
            .map(|(k, v)| {
                let (p, b) = v
                    .iter()
                    .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes));
                (k, (p, b))
            })
            .collect();
        for (key, (packets, bytes)) in traffic {
            let (lp, lb) = self
                .seen_traffic
                .insert(key, (packets, bytes))
                .unwrap_or((0, 0));
            let Some((ns, wl)) = workload_names(catalog, key.workload_id) else {
                continue;
            };
            let (dst, dst_ns) = destination(catalog, key.service_id);
            let labels = vec![
                ns.clone(),
                wl.clone(),
                dst.clone(),
                dst_ns.clone(),
                key.port.to_string(),
                transport(key.proto).into(),
            ];
            let sent = key.dir == DIR_SENT;
            let (bytes_f, packets_f, istio_f) = if sent {
                (Family::SentBytes, Family::SentPackets, Family::IstioSent)
            } else {
                (
                    Family::ReceivedBytes,
                    Family::ReceivedPackets,
                    Family::IstioReceived,
                )
            };
            if bytes > lb {
                self.add(
                    metrics,
                    bytes_f,
                    key.workload_id,
                    labels.clone(),
                    bytes - lb,
                );
                if key.proto == PROTO_TCP {
                    let il = vec!["source".into(), wl, ns, dst.clone(), dst, dst_ns];
                    self.add(metrics, istio_f, key.workload_id, il, bytes - lb);
                }
            }
            if packets > lp {
                self.add(metrics, packets_f, key.workload_id, labels, packets - lp);
            }
        }

        let rate: Vec<(u32, u64)> = self
            .rate
            .iter()
            .flatten()
            .map(|(k, v)| (k, v.iter().map(|b| b.dropped).sum()))
            .collect();
        for (workload, dropped) in rate {
            let last = self.seen_dropped.insert(workload, dropped).unwrap_or(0);
            if dropped > last
                && let Some((ns, wl)) = workload_names(catalog, workload)
            {
                self.add(
                    metrics,
                    Family::Dropped,
                    workload,
                    vec![ns, wl],
                    dropped - last,
                );
            }
        }

        for c in Counter::ALL {
            let Ok(values) = self.counters.get(&(c as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let last = &mut self.seen_counters[c as usize];
            if total > *last {
                metrics
                    .dataplane
                    .kernel_counters
                    .with_label_values(&[c.name()])
                    .inc_by(total - *last);
                *last = total;
            }
        }
        self.prune(metrics, catalog);
    }

    /// Removes every series and kernel counter of workloads no longer configured.
    fn prune(&mut self, metrics: &Metrics, catalog: &Catalog) {
        let gone: Vec<u32> = self
            .series
            .keys()
            .chain(self.seen.keys().map(|k| &k.workload_id))
            .chain(self.seen_traffic.keys().map(|k| &k.workload_id))
            .filter(|id| catalog.workload(**id).is_none())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for id in gone {
            for (f, labels) in self.series.remove(&id).unwrap_or_default() {
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = Self::vec(metrics, f).remove_label_values(&refs);
            }
            let keys: Vec<StatKey> = self
                .seen
                .keys()
                .filter(|k| k.workload_id == id)
                .copied()
                .collect();
            for k in keys {
                let _ = self.stats.remove(&k);
                self.seen.remove(&k);
            }
            let keys: Vec<TrafficKey> = self
                .seen_traffic
                .keys()
                .filter(|k| k.workload_id == id)
                .copied()
                .collect();
            for k in keys {
                let _ = self.traffic.remove(&k);
                self.seen_traffic.remove(&k);
            }
            let _ = self.rate.remove(&id);
            self.seen_dropped.remove(&id);
        }
    }
}

/// Polls the kernel counters every `every` until the task is dropped.
pub async fn poll_loop(
    mut poller: StatsPoller,
    metrics: Arc<Metrics>,
    catalog: Arc<RwLock<Catalog>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let catalog = catalog.read().expect("catalog lock").clone();
        poller.poll(&metrics, &catalog);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use axum::{Router, http::StatusCode, routing::get};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let m = metrics.clone();
    let r = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutboundMode;
    use crate::istio::model::{Location, Resolution};
    use crate::telemetry::catalog::{ServiceMeta, WorkloadMeta};

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.workloads.insert(
            1,
            WorkloadMeta {
                namespace: "shop".into(),
                name: "web".into(),
                cgroup_id: 9,
                policy: OutboundMode::RegistryOnly,
            },
        );
        std::sync::Arc::make_mut(&mut c.services).insert(
            2,
            ServiceMeta {
                namespace: "ops".into(),
                host: "legacy.internal".into(),
                se_name: "legacy".into(),
                location: Location::MeshInternal,
                resolution: Resolution::Static,
            },
        );
        c
    }

    fn key(service_id: u32, action: Action, reason: Reason, matched: MatchKind) -> StatKey {
        StatKey {
            workload_id: 1,
            service_id,
            port: 80,
            proto: egress_common::PROTO_TCP,
            action: action as u8,
            reason: reason as u8,
            matched: matched as u8,
            _pad: [0; 2],
        }
    }

    #[test]
    fn labels_name_the_service_and_never_an_ip() {
        let l = connection_labels(
            &key(2, Action::Rewrite, Reason::RegistryMatch, MatchKind::Vip),
            &catalog(),
        );
        assert_eq!(
            l,
            [
                "shop",
                "web",
                "legacy.internal",
                "ops",
                "",
                "80",
                "outbound|80||legacy.internal",
                "MESH_INTERNAL",
                "tcp",
                "vip",
                "rewritten",
                "registry_match",
                "REGISTRY_ONLY"
            ]
        );
        let l = connection_labels(
            &key(0, Action::Deny, Reason::RegistryOnly, MatchKind::None),
            &catalog(),
        );
        assert_eq!(l[2], "BlackHoleCluster");
        assert_eq!(l[6], "BlackHoleCluster");
        let l = connection_labels(
            &key(0, Action::Allow, Reason::AllowAny, MatchKind::None),
            &catalog(),
        );
        assert_eq!(l[2], "PassthroughCluster");
    }

    #[test]
    fn render_contains_registered_families() {
        let m = Metrics::new();
        let labels = connection_labels(
            &key(0, Action::Deny, Reason::RegistryOnly, MatchKind::None),
            &catalog(),
        );
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        m.traffic.connections.with_label_values(&refs).inc();
        let text = m.render();
        assert!(text.contains("egress_connections_total{"), "{text}");
        assert!(text.contains("decision=\"denied\""), "{text}");
    }
}

#[cfg(test)]
mod dashboard {
    use super::*;

    /// Every metric the shipped Grafana dashboard queries is one the agent exports.
    #[test]
    fn dashboard_queries_only_exported_metrics() {
        let m = Metrics::new();
        // Touch one series of every labelled family so all are gathered.
        let touch = |v: &IntCounterVec, n: usize| v.with_label_values(&vec!["x"; n]).inc();
        touch(&m.traffic.connections, CONNECTION_LABELS.len());
        for v in [
            &m.traffic.sent_bytes,
            &m.traffic.received_bytes,
            &m.traffic.sent_packets,
            &m.traffic.received_packets,
        ] {
            touch(v, TRAFFIC_LABELS.len());
        }
        for v in [
            &m.traffic.istio_opened,
            &m.traffic.istio_sent_bytes,
            &m.traffic.istio_received_bytes,
        ] {
            touch(v, ISTIO_LABELS.len());
        }
        touch(&m.traffic.access_log_dropped, 2);
        touch(&m.dataplane.kernel_counters, 1);
        touch(&m.config.rejected, 3);
        touch(&m.config.warnings, 3);
        touch(&m.dns.queries, 1);
        touch(&m.dns.resolutions, 1);
        touch(&m.dataplane.syncs, 1);
        m.config.resources.with_label_values(&["loaded"]).set(1);
        m.dataplane.map_entries.with_label_values(&["x"]).set(1);
        m.dns.upstream_seconds.observe(0.001);
        let exported: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/grafana-dashboard.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut exprs = Vec::new();
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                exprs.push(t["expr"].as_str().unwrap().to_owned());
            }
        }
        assert!(exprs.len() >= 15);
        for e in &exprs {
            let names = e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("egress_") || w.starts_with("istio_"));
            for name in names {
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .unwrap_or(name);
                assert!(
                    exported.iter().any(|x| x == base),
                    "{name} (in {e}) is not exported: {exported:?}"
                );
            }
        }
    }
}
