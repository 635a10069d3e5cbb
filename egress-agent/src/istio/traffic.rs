//! The L4-relevant parts of DestinationRule, VirtualService and Sidecar specs
//! (SPEC §1, §3.5–3.7). L7-only fields (TLS settings, HTTP pools and routes, ...)
//! are kept as raw values: validated where Istio validates them, never enforced.
//! Numbers are read wide so out-of-range values reach validation.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use crate::istio::WorkloadSelector;

/// Fields present in a spec that the agent does not read (reported as ignored).
pub type Unread = BTreeMap<String, Value>;

// ---------------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: Option<String>,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Option<Subset>>,
    #[serde(default)]
    pub export_to: Vec<String>,
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(flatten)]
    pub unread: Unread,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// L7 (TLS origination): not enforced.
    pub tls: Option<Value>,
    pub port_level_settings: Option<Vec<Option<PortTrafficPolicy>>>,
    pub tunnel: Option<Value>,
    pub proxy_protocol: Option<Value>,
    pub retry_budget: Option<Value>,
}

impl TrafficPolicy {
    /// True when no field is set (`trafficPolicy: {}`).
    pub fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
            && self.port_level_settings.is_none()
            && self.tunnel.is_none()
            && self.proxy_protocol.is_none()
            && self.retry_budget.is_none()
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHash>,
    pub locality_lb_setting: Option<Value>,
    pub warmup_duration_secs: Option<Value>,
    pub warmup: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<Maglev>,
    pub minimum_ring_size: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: Option<String>,
    pub path: Option<String>,
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    pub minimum_ring_size: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Maglev {
    pub table_size: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<String>,
    pub idle_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    pub probes: Option<i64>,
    pub time: Option<String>,
    pub interval: Option<String>,
}

/// L7 pool settings: validated as Istio does, not enforced.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<String>,
    pub h2_upgrade_policy: Option<String>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_errors: Option<i64>,
    pub consecutive_5xx_errors: Option<i64>,
    pub consecutive_gateway_errors: Option<i64>,
    pub consecutive_local_origin_failures: Option<i64>,
    pub split_external_local_origin_errors: Option<bool>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub min_health_percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

// ---------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    /// L7 routes: not enforced (deviation D3).
    pub http: Option<Vec<Value>>,
    pub tls: Option<Vec<Option<TlsRoute>>>,
    pub tcp: Option<Vec<Option<TcpRoute>>>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(flatten)]
    pub unread: Unread,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Match {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<i64>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
    /// Only in tls matches.
    #[serde(default)]
    pub sni_hosts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<Option<L4Match>>,
    #[serde(default)]
    pub route: Vec<Option<RouteDestination>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<Option<L4Match>>,
    #[serde(default)]
    pub route: Vec<Option<RouteDestination>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: Option<String>,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

// ---------------------------------------------------------------------------------
// Sidecar
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    pub workload_selector: Option<WorkloadSelector>,
    /// Inbound: not used by an egress enforcer.
    pub ingress: Option<Vec<Value>>,
    pub egress: Option<Vec<Option<EgressListener>>>,
    pub outbound_traffic_policy: Option<SidecarOutboundPolicy>,
    pub inbound_connection_pool: Option<Value>,
    #[serde(flatten)]
    pub unread: Unread,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressListener {
    pub port: Option<SidecarPort>,
    pub bind: Option<String>,
    pub capture_mode: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPort {
    pub number: Option<i64>,
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub target_port: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarOutboundPolicy {
    pub mode: Option<String>,
    pub egress_proxy: Option<Value>,
}
