//! Prometheus metrics: the per-CPU kernel counters summed and exposed with names,
//! never raw IPs, plus `/healthz` and `/readyz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use egress_common::{Action, Counter, MatchKind, PROTO_UDP, Reason, StatKey};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::catalog::Catalog;

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

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntCounterVec,
    pub kernel_counters: IntCounterVec,
    pub config_rejected: IntCounterVec,
    pub config_warnings: IntCounterVec,
    pub resources: IntGaugeVec,
    pub map_entries: IntGaugeVec,
    pub syncs: IntCounterVec,
    pub sync_duration_us: IntGauge,
    pub dns_queries: IntCounterVec,
    pub dns_upstream_seconds: Histogram,
    pub dns_learned_entries: IntGauge,
    pub dns_resolutions: IntCounterVec,
    pub dns_stale: IntGauge,
    pub dns_resolved_names: IntGauge,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let connections = IntCounterVec::new(
            Opts::new(
                "egress_connections_total",
                "Classified connect() calls by source workload, destination service and decision",
            ),
            CONNECTION_LABELS,
        )
        .expect("valid metric");
        let kernel_counters = IntCounterVec::new(
            Opts::new(
                "egress_kernel_events_total",
                "Kernel-side error and drop counters (program errors, dropped events, full maps)",
            ),
            &["counter"],
        )
        .expect("valid metric");
        let config_rejected = IntCounterVec::new(
            Opts::new(
                "egress_config_rejected_total",
                "Resources rejected by validation",
            ),
            &["kind", "namespace", "name"],
        )
        .expect("valid metric");
        let config_warnings = IntCounterVec::new(
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
        let dns_queries = IntCounterVec::new(
            Opts::new(
                "egress_dns_queries_total",
                "Workload DNS queries by result: vip (answered locally), forwarded, learned \
                 (forwarded, addresses learned), servfail, malformed, learn_failed",
            ),
            &["result"],
        )
        .expect("valid metric");
        let dns_upstream_seconds = Histogram::with_opts(
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
        let dns_learned_entries = IntGauge::new(
            "egress_dns_learned_entries",
            "Destinations workloads may use because a DNS answer named a registry host",
        )
        .expect("valid metric");
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "egress_dns_resolutions_total",
                "Resolutions of DNS/DNS_ROUND_ROBIN endpoints by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let dns_stale = IntGauge::new(
            "egress_dns_stale_answers",
            "Names served from their last good answer because resolution fails",
        )
        .expect("valid metric");
        let dns_resolved_names = IntGauge::new(
            "egress_dns_resolved_names",
            "Names of DNS/DNS_ROUND_ROBIN endpoints with a usable answer",
        )
        .expect("valid metric");
        for c in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(kernel_counters.clone()),
            Box::new(config_rejected.clone()),
            Box::new(config_warnings.clone()),
            Box::new(resources.clone()),
            Box::new(map_entries.clone()),
            Box::new(syncs.clone()),
            Box::new(sync_duration_us.clone()),
            Box::new(dns_queries.clone()),
            Box::new(dns_upstream_seconds.clone()),
            Box::new(dns_learned_entries.clone()),
            Box::new(dns_resolutions.clone()),
            Box::new(dns_stale.clone()),
            Box::new(dns_resolved_names.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Arc::new(Self {
            registry,
            connections,
            kernel_counters,
            config_rejected,
            config_warnings,
            resources,
            map_entries,
            syncs,
            sync_duration_us,
            dns_queries,
            dns_upstream_seconds,
            dns_learned_entries,
            dns_resolutions,
            dns_stale,
            dns_resolved_names,
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
        k.port.to_string(),
        cluster,
        location.to_owned(),
        if k.proto == PROTO_UDP { "udp" } else { "tcp" }.to_owned(),
        MatchKind::from_u8(k.matched)
            .map_or("unknown", |m| m.label())
            .to_owned(),
        action.map_or("unknown", |a| a.label()).to_owned(),
        reason.map_or("unknown", |r| r.label()).to_owned(),
        policy.to_owned(),
    ]
}

/// Folds the kernel's per-CPU counters into the Prometheus counters.
pub struct StatsPoller {
    stats: PerCpuHashMap<MapData, StatKey, u64>,
    counters: PerCpuArray<MapData, u64>,
    seen: HashMap<StatKey, u64>,
    seen_counters: Vec<u64>,
}

impl StatsPoller {
    pub fn new(
        stats: PerCpuHashMap<MapData, StatKey, u64>,
        counters: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self {
            stats,
            counters,
            seen: HashMap::new(),
            seen_counters: vec![0; Counter::COUNT as usize],
        }
    }

    /// Reads the maps once and adds what moved since the last poll.
    pub fn poll(&mut self, metrics: &Metrics, catalog: &Catalog) {
        for item in self.stats.iter() {
            let Ok((key, values)) = item else { continue };
            let total: u64 = values.iter().sum();
            let last = self.seen.insert(key, total).unwrap_or(0);
            if total > last {
                let labels = connection_labels(&key, catalog);
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                metrics
                    .connections
                    .with_label_values(&refs)
                    .inc_by(total - last);
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
                    .kernel_counters
                    .with_label_values(&[c.name()])
                    .inc_by(total - *last);
                *last = total;
            }
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
    use crate::compile::{ServiceMeta, WorkloadMeta};
    use crate::config::OutboundMode;
    use crate::model::{Location, Resolution};

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
        c.services.insert(
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
        m.connections.with_label_values(&refs).inc();
        let text = m.render();
        assert!(text.contains("egress_connections_total{"), "{text}");
        assert!(text.contains("decision=\"denied\""), "{text}");
    }
}
