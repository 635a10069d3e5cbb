//! The agent's own configuration file (the "mesh config"): outbound policy, where
//! to attach, which cgroups are workloads, where the ServiceEntry YAML lives.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// Errors reading the agent configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// Mesh-wide outbound policy for destinations not in the registry.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Istio's default: unknown destinations pass untouched.
    #[default]
    AllowAny,
    /// Unknown destinations are refused with EPERM.
    RegistryOnly,
}

impl OutboundMode {
    pub fn label(self) -> &'static str {
        match self {
            Self::AllowAny => "ALLOW_ANY",
            Self::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
}

/// One workload: a cgroup whose sockets are enforced, and who it is.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadConfig {
    /// cgroup v2 directory, absolute or relative to `cgroupPath`.
    pub cgroup: PathBuf,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The workload's IP (used for DNS and traffic attribution).
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// More addresses of the workload (dual stack).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The host side of the workload's veth: traffic counters attach there.
    #[serde(default)]
    pub interface: Option<String>,
    /// Audit mode for this workload only.
    #[serde(default)]
    pub audit: bool,
    /// Known and never enforced (Kubernetes: hostNetwork pods, opted-out pods,
    /// the agent's own): the unknown-workload default never holds it.
    #[serde(default)]
    pub untouched: bool,
    /// Socket kinds the connect layer cannot judge that this workload may create
    /// anyway (`icmp`, `raw`, `packet`, `udplite`, `sctp`, `other`).
    #[serde(default)]
    pub allow_sockets: Vec<SocketAllow>,
}

/// A socket kind re-allowed by `allowSockets` (THREAT-MODEL.md: each opens a
/// path the registry cannot judge; see config/agent.yaml).
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SocketAllow {
    /// ICMP/ICMPv6 "ping" sockets; their echo requests may go anywhere.
    Icmp,
    /// `SOCK_RAW`: any packet; the workload's packet-level interface check is off.
    Raw,
    /// `AF_PACKET`: any frame; the packet-level interface check is off.
    Packet,
    Udplite,
    Sctp,
    /// Any other AF_INET/AF_INET6 protocol or socket family.
    Other,
}

impl SocketAllow {
    /// The workload flag of this kind.
    pub fn flag(self) -> u32 {
        use egress_common::*;
        match self {
            Self::Icmp => WL_SOCK_ICMP,
            Self::Raw => WL_SOCK_RAW,
            Self::Packet => WL_SOCK_PACKET,
            Self::Udplite => WL_SOCK_UDPLITE,
            Self::Sctp => WL_SOCK_SCTP,
            Self::Other => WL_SOCK_OTHER,
        }
    }
}

/// What a cgroup under `cgroupPath` that is not a known workload gets.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum UnknownWorkloads {
    /// The mesh policy with an empty view: under REGISTRY_ONLY, nothing but DNS
    /// to the proxy (and excluded/cluster CIDRs).
    #[default]
    MeshPolicy,
    /// Left alone: for hosts whose attach point also holds processes that must
    /// never be enforced.
    Untouched,
}

/// The file as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    outbound_traffic_policy: OutboundTrafficPolicy,
    cgroup_path: Option<PathBuf>,
    service_entry_dir: Option<PathBuf>,
    #[serde(default)]
    workloads: Vec<WorkloadConfig>,
    excluded_cidrs: Option<Vec<String>>,
    #[serde(default)]
    cluster_cidrs: Vec<String>,
    #[serde(default)]
    fail_open: bool,
    #[serde(default)]
    audit: bool,
    #[serde(default)]
    audit_namespaces: Vec<String>,
    #[serde(default)]
    unknown_workloads: UnknownWorkloads,
    #[serde(default)]
    allow_sockets: Vec<SocketAllow>,
    #[serde(default)]
    allow_sockets_by_namespace: BTreeMap<String, Vec<SocketAllow>>,
    udp_enforcement: Option<bool>,
    #[serde(default)]
    access_log: RawAccessLog,
    metrics_address: Option<SocketAddr>,
    #[serde(default)]
    istio_compat: IstioCompat,
    #[serde(default)]
    vip_ranges: VipRanges,
    default_service_export_to: Option<Vec<String>>,
    root_namespace: Option<String>,
    instance: Option<String>,
    state_dir: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    #[serde(default)]
    on_exit: OnExit,
    revoke_established: Option<bool>,
    dns: Option<RawDns>,
    #[serde(default)]
    resolver: RawResolver,
    /// Present: Kubernetes mode.
    kubernetes: Option<RawKubernetes>,
    proc_path: Option<PathBuf>,
}

/// `kubernetes:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKubernetes {
    node_name: Option<String>,
    kubeconfig: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    #[serde(default)]
    cgroup_driver: RawDriver,
    mesh_config_map: Option<String>,
    excluded_namespaces: Option<Vec<String>>,
    pod_uid: Option<String>,
    pod_labels: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum RawDriver {
    #[default]
    Auto,
    Systemd,
    Cgroupfs,
}

/// Kubernetes mode: pods of this node and Istio's resources from the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The node whose pods are enforced (`NODE_NAME` by default).
    pub node_name: String,
    /// A kubeconfig; none: in-cluster service account, else `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubelet's cgroup root (where `kubepods.slice` or `kubepods` is).
    pub cgroup_root: PathBuf,
    pub cgroup_driver: crate::k8s::cgroups::Driver,
    /// Istio's mesh ConfigMap in the root namespace; empty: not read.
    pub mesh_config_map: String,
    /// Namespaces never enforced.
    pub excluded_namespaces: Vec<String>,
    /// The agent's own pod (`POD_UID` by default): never enforced.
    pub pod_uid: Option<String>,
    /// Pods' own `egress.dev/*` labels (and Istio's sidecar annotation) count;
    /// false: only Namespace labels do (whoever may create a pod could opt it
    /// out otherwise).
    pub pod_labels: bool,
}

/// `onExit:` — what the agent leaves when it stops on SIGTERM or SIGINT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnExit {
    /// Programs stay attached and maps pinned with the last synced state (fail
    /// static); the next agent adopts them. A crash or `kill -9` always does this.
    #[default]
    Keep,
    /// Detach every program and remove every pin, as `egress-agent uninstall`
    /// does (test sandboxes, demos).
    Uninstall,
}

/// `accessLog:` — one JSON line per denied or audited attempt.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAccessLog {
    /// A file, or `-` for standard output (the default).
    path: Option<PathBuf>,
    /// Events per second each workload may log (per CPU), default 10.
    rate_per_second: Option<u32>,
    /// Events a workload may log at once after a quiet spell, default 20.
    burst: Option<u32>,
}

/// Where refusals are logged and how fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    pub rate_per_second: u32,
    pub burst: u32,
}

/// `dns:` — the proxy workloads' queries are redirected to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDns {
    /// Addresses the proxy listens on (UDP and TCP); workloads must reach them
    /// (the node's address). The first IPv4 and first IPv6 one receive the
    /// redirected queries.
    listen: Vec<SocketAddr>,
    /// Redirect every workload query to port 53 to the proxy (default true).
    capture: Option<bool>,
    /// Upstream resolvers for forwarded names (default: `resolver.upstream`).
    upstream: Option<Vec<SocketAddr>>,
    vip_ttl: Option<String>,
    learned_min_ttl: Option<String>,
    learned_max_ttl: Option<String>,
    upstream_timeout: Option<String>,
    /// REGISTRY_ONLY workloads get NXDOMAIN for names outside their view, never
    /// forwarded (no DNS tunnelling through the proxy). Default false.
    refuse_unregistered: Option<bool>,
    /// TCP: how long one message may take to arrive (default 5s).
    tcp_read_timeout: Option<String>,
    /// TCP connections at once, per source address and in total.
    tcp_per_source: Option<usize>,
    tcp_total: Option<usize>,
    /// UDP queries forwarded upstream at once, per source address and in total
    /// (answers that need no upstream are never limited).
    udp_per_source: Option<usize>,
    udp_total: Option<usize>,
    /// DNS queries one workload may send per second (per CPU, dropped in the
    /// kernel beyond it); 0: no limit. Default 2 000. Taken at start.
    queries_per_second: Option<u32>,
}

/// `resolver:` — the agent's own resolution of DNS endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawResolver {
    /// Default: the nameservers of /etc/resolv.conf.
    upstream: Option<Vec<SocketAddr>>,
    min_ttl: Option<String>,
    max_ttl: Option<String>,
    stale_limit: Option<String>,
    retry: Option<String>,
    timeout: Option<String>,
}

/// The DNS proxy settings, when `dns:` is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub capture: bool,
    pub proxy: DnsProxySettings,
}

/// The resolver settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    pub upstream: Vec<SocketAddr>,
    pub settings: ResolverSettings,
    pub timeout: std::time::Duration,
}

/// Istio behaviours that can be switched (SPEC §7.1).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioCompat {
    /// `PILOT_ENABLE_IP_AUTOALLOCATE`: address-less STATIC/DNS hosts get VIPs.
    #[serde(default = "yes")]
    pub auto_allocate: bool,
}

impl Default for IstioCompat {
    fn default() -> Self {
        Self {
            auto_allocate: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VipRanges {
    #[serde(default = "default_v4_range")]
    ipv4: String,
    #[serde(default = "default_v6_range")]
    ipv6: String,
}

impl Default for VipRanges {
    fn default() -> Self {
        Self {
            ipv4: default_v4_range(),
            ipv6: default_v6_range(),
        }
    }
}

fn default_v4_range() -> String {
    "240.240.0.0/16".into()
}

fn default_v6_range() -> String {
    "2001:2::/48".into()
}

/// The configuration the agent runs with, paths resolved and defaults applied.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub outbound: OutboundMode,
    /// Where the programs attach: every socket below it is inspected, only workload
    /// cgroups' sockets are enforced.
    pub cgroup_path: PathBuf,
    /// Directory of ServiceEntry YAML (`*.yaml`, `*.yml`), read recursively.
    pub service_entry_dir: PathBuf,
    pub workloads: Vec<WorkloadConfig>,
    /// Never enforced nor counted (SPEC §7.1 `excludedCidrs`).
    pub excluded_cidrs: Vec<IpNet>,
    /// Allowed as `cluster-internal` after the registry steps.
    pub cluster_cidrs: Vec<IpNet>,
    /// Internal program errors let the connection through instead of refusing it.
    pub fail_open: bool,
    /// REGISTRY_ONLY denials are reported as `audit` and allowed (every workload).
    pub audit: bool,
    /// Audit mode for the workloads of these namespaces.
    pub audit_namespaces: Vec<String>,
    /// What cgroups under `cgroupPath` that are no known workload get.
    pub unknown_workloads: UnknownWorkloads,
    /// Socket kinds every workload may create anyway.
    pub allow_sockets: Vec<SocketAllow>,
    /// Socket kinds the workloads of a namespace may create anyway.
    pub allow_sockets_by_namespace: BTreeMap<String, Vec<SocketAllow>>,
    /// Enforce UDP other than DNS (SPEC §7.1 `udpEnforcement`, default true).
    pub udp_enforcement: bool,
    pub access_log: AccessLog,
    /// Prometheus `/metrics`, `/healthz`, `/readyz`; none when absent.
    pub metrics_address: Option<SocketAddr>,
    pub istio_compat: IstioCompat,
    /// Where automatic VIPs come from (SPEC §4.5).
    pub vip_ranges: Ranges,
    /// `meshConfig.defaultServiceExportTo` (default `["*"]`).
    pub default_export_to: Vec<String>,
    /// `meshConfig.rootNamespace` (default `istio-system`): its selector-less
    /// Sidecar applies to namespaces without their own.
    pub root_namespace: String,
    /// Names this agent's pins, state and run files (several agents may run).
    pub instance: String,
    /// Remembered VIP allocations live in `<stateDir>/<instance>/`.
    pub state_dir: PathBuf,
    /// Maps are pinned in `<pinDir>/<instance>/` for `egress-agent inspect`.
    pub pin_dir: PathBuf,
    /// The id → name catalog for `inspect` lives in `<runDir>/<instance>/`.
    pub run_dir: PathBuf,
    /// What SIGTERM/SIGINT leave behind.
    pub on_exit: OnExit,
    /// Destroy a workload's established connections to a destination that left
    /// its view (default true; it only acts on REGISTRY_ONLY refusals).
    pub revoke_established: bool,
    /// The DNS proxy; none when `dns:` is absent (no capture).
    pub dns: Option<DnsSettings>,
    pub resolver: ResolverConfig,
    /// Kubernetes mode when present.
    pub kubernetes: Option<KubernetesConfig>,
    /// The host's `/proc` (a container mounts it elsewhere).
    pub proc_path: PathBuf,
}

/// Loopback only: a workload talking to itself is never enforced. Link-local
/// destinations (cloud metadata at 169.254.169.254 among them) follow the
/// registry like any other address.
pub const DEFAULT_EXCLUDED: &[&str] = &["127.0.0.0/8", "::1/128"];

impl Config {
    /// Is this workload in audit mode (globally, by namespace, or itself)?
    pub fn audits(&self, w: &WorkloadConfig) -> bool {
        self.audit || w.audit || self.audit_namespaces.contains(&w.namespace)
    }

    /// The `WL_SOCK_*` flags of the socket kinds this workload may create.
    pub fn socket_flags(&self, w: &WorkloadConfig) -> u32 {
        self.allow_sockets
            .iter()
            .chain(w.allow_sockets.iter())
            .chain(
                self.allow_sockets_by_namespace
                    .get(&w.namespace)
                    .into_iter()
                    .flatten(),
            )
            .fold(0, |f, k| f | k.flag())
    }
}

impl WorkloadConfig {
    /// Every address of the workload.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip.into_iter().chain(self.ips.iter().copied())
    }
}

impl Config {
    /// The remembered VIP allocations.
    pub fn vip_state_file(&self) -> PathBuf {
        self.state_dir.join(&self.instance).join("vips.json")
    }

    /// Where this instance pins its maps.
    pub fn pin_path(&self) -> PathBuf {
        self.pin_dir.join(&self.instance)
    }

    /// The id assignments, kept with the pinned maps they number.
    pub fn ids_file(&self) -> PathBuf {
        self.state_dir.join(&self.instance).join("ids.json")
    }

    /// `new` as a running agent applies it: everything but what only a start
    /// can change (where it attaches and pins, its own endpoints, load-time
    /// program settings), which keeps its running value. Returns the merged
    /// configuration and the fields that changed but wait for a restart.
    pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
        let mut pending = Vec::new();
        let mut merged = new;
        macro_rules! keep {
            ($field:ident, $name:literal) => {
                if merged.$field != self.$field {
                    pending.push($name);
                    merged.$field = self.$field.clone();
                }
            };
        }
        keep!(cgroup_path, "cgroupPath");
        keep!(instance, "instance");
        keep!(state_dir, "stateDir");
        keep!(pin_dir, "pinDir");
        keep!(run_dir, "runDir");
        keep!(metrics_address, "metricsAddress");
        keep!(fail_open, "failOpen");
        keep!(access_log, "accessLog");
        keep!(resolver, "resolver");
        keep!(kubernetes, "kubernetes");
        keep!(proc_path, "procPath");
        // DNS: everything is live but where the proxy listens, the kernel's
        // query rate (and whether it runs at all).
        match (&self.dns, &mut merged.dns) {
            (Some(old), Some(new)) => {
                if old.proxy.listen != new.proxy.listen {
                    pending.push("dns.listen");
                    new.proxy.listen = old.proxy.listen.clone();
                }
                if old.proxy.queries_per_second != new.proxy.queries_per_second {
                    pending.push("dns.queriesPerSecond");
                    new.proxy.queries_per_second = old.proxy.queries_per_second;
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                pending.push("dns");
                merged.dns = self.dns.clone();
            }
            _ => {}
        }
        (merged, pending)
    }

    /// The workload interfaces the interface line attaches to.
    pub fn interfaces(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter_map(|w| w.interface.clone())
            .collect()
    }

    /// The running agent's pid, for `inspect` and `uninstall`.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join(&self.instance).join("agent.pid")
    }

    /// The catalog written for `inspect`.
    pub fn catalog_file(&self) -> PathBuf {
        self.run_dir.join(&self.instance).join("catalog.json")
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let text = &expand_env(text, &|name| std::env::var(name).ok()).map_err(|name| {
            ConfigError::Invalid {
                path: path.to_owned(),
                field: format!("${{{name}}}"),
                reason: "the environment variable is not set".into(),
            }
        })?;
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let kubernetes = match raw.kubernetes {
            None => None,
            Some(k) => Some(kubernetes(k, &invalid)?),
        };
        let cgroup_path = match (raw.cgroup_path, &kubernetes) {
            (Some(p), _) => p,
            // The kubelet's pods: every pod cgroup is below.
            (None, Some(k)) => crate::k8s::cgroups::pods_root(&k.cgroup_root, k.cgroup_driver),
            (None, None) => cgroup2_mount().ok_or_else(|| {
                invalid(
                    "cgroupPath",
                    "not set and no cgroup2 mount found in /proc/mounts".into(),
                )
            })?,
        };
        let service_entry_dir = base.join(
            raw.service_entry_dir
                .unwrap_or_else(|| PathBuf::from("serviceentries")),
        );
        let parse_cidrs = |field: &str, list: &[String]| -> Result<Vec<IpNet>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| parse_net(s).map_err(|e| invalid(&format!("{field}[{i}]"), e)))
                .collect()
        };
        let excluded_cidrs = match &raw.excluded_cidrs {
            Some(list) => parse_cidrs("excludedCidrs", list)?,
            None => {
                let defaults: Vec<String> =
                    DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect();
                parse_cidrs("excludedCidrs", &defaults)?
            }
        };
        let cluster_cidrs = parse_cidrs("clusterCidrs", &raw.cluster_cidrs)?;
        let mut workloads = raw.workloads;
        let mut seen = std::collections::BTreeSet::new();
        for (i, w) in workloads.iter_mut().enumerate() {
            if w.namespace.is_empty() || w.name.is_empty() {
                return Err(invalid(
                    &format!("workloads[{i}]"),
                    "namespace and name are required".into(),
                ));
            }
            if w.cgroup.is_relative() {
                w.cgroup = cgroup_path.join(&w.cgroup);
            }
            if w.interface.is_some() && w.ip.is_none() && w.ips.is_empty() {
                return Err(invalid(
                    &format!("workloads[{i}].interface"),
                    "needs the workload's addresses (ip/ips): the interface check accepts \
                     only packets from them"
                        .into(),
                ));
            }
            if !seen.insert(w.cgroup.clone()) {
                return Err(invalid(
                    &format!("workloads[{i}].cgroup"),
                    format!("{} is listed twice", w.cgroup.display()),
                ));
            }
        }
        let v4: ipnet::Ipv4Net = raw.vip_ranges.ipv4.parse().map_err(|_| {
            invalid(
                "vipRanges.ipv4",
                format!("{:?} is not an IPv4 CIDR", raw.vip_ranges.ipv4),
            )
        })?;
        if v4.prefix_len() > 24 {
            return Err(invalid("vipRanges.ipv4", "must be a /24 or wider".into()));
        }
        let v6: ipnet::Ipv6Net = raw.vip_ranges.ipv6.parse().map_err(|_| {
            invalid(
                "vipRanges.ipv6",
                format!("{:?} is not an IPv6 CIDR", raw.vip_ranges.ipv6),
            )
        })?;
        if v6.prefix_len() > 96 {
            return Err(invalid("vipRanges.ipv6", "must be a /96 or wider".into()));
        }
        let instance = raw.instance.unwrap_or_else(|| "default".into());
        if instance.is_empty()
            || !instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "instance",
                format!("{instance:?}: use letters, digits, - and _"),
            ));
        }
        let duration = |field: &str,
                        v: &Option<String>,
                        default: u64|
         -> Result<std::time::Duration, ConfigError> {
            match v {
                None => Ok(std::time::Duration::from_millis(default)),
                Some(s) => parse_duration(s)
                    .filter(|ns| *ns >= 0)
                    .map(|ns| std::time::Duration::from_nanos(ns as u64))
                    .ok_or_else(|| {
                        invalid(
                            field,
                            format!("{s:?} is not a duration (e.g. 30s, 500ms, 1h)"),
                        )
                    }),
            }
        };
        let r = &raw.resolver;
        let resolver = ResolverConfig {
            upstream: r.upstream.clone().unwrap_or_else(system_upstream),
            settings: ResolverSettings {
                min_ttl: duration("resolver.minTtl", &r.min_ttl, 1_000)?,
                max_ttl: duration("resolver.maxTtl", &r.max_ttl, 300_000)?,
                stale_limit: duration("resolver.staleLimit", &r.stale_limit, 3_600_000)?,
                retry: duration("resolver.retry", &r.retry, 5_000)?,
            },
            timeout: duration("resolver.timeout", &r.timeout, 2_000)?,
        };
        let dns = match &raw.dns {
            None => None,
            Some(d) => {
                if d.listen.is_empty() {
                    return Err(invalid(
                        "dns.listen",
                        "at least one address is required".into(),
                    ));
                }
                if !d.listen.iter().any(SocketAddr::is_ipv4) {
                    return Err(invalid("dns.listen", "an IPv4 address is required".into()));
                }
                if d.listen.iter().any(|a| a.port() != d.listen[0].port()) {
                    return Err(invalid(
                        "dns.listen",
                        "every address must use the same port".into(),
                    ));
                }
                Some(DnsSettings {
                    capture: d.capture.unwrap_or(true),
                    proxy: DnsProxySettings {
                        listen: d.listen.clone(),
                        upstream: d
                            .upstream
                            .clone()
                            .unwrap_or_else(|| resolver.upstream.clone()),
                        vip_ttl: duration("dns.vipTtl", &d.vip_ttl, 30_000)?.as_secs() as u32,
                        learned_min_ttl: duration("dns.learnedMinTtl", &d.learned_min_ttl, 30_000)?,
                        learned_max_ttl: duration(
                            "dns.learnedMaxTtl",
                            &d.learned_max_ttl,
                            3_600_000,
                        )?,
                        upstream_timeout: duration(
                            "dns.upstreamTimeout",
                            &d.upstream_timeout,
                            2_000,
                        )?,
                        refuse_unregistered: d.refuse_unregistered.unwrap_or(false),
                        tcp_read_timeout: duration(
                            "dns.tcpReadTimeout",
                            &d.tcp_read_timeout,
                            5_000,
                        )?,
                        tcp_per_source: d.tcp_per_source.unwrap_or(16).max(1),
                        tcp_total: d.tcp_total.unwrap_or(1024).max(1),
                        udp_per_source: d.udp_per_source.unwrap_or(64).max(1),
                        udp_total: d.udp_total.unwrap_or(1024).max(1),
                        queries_per_second: d.queries_per_second.unwrap_or(2_000),
                    },
                })
            }
        };
        Ok(Config {
            dns,
            resolver,
            istio_compat: raw.istio_compat,
            vip_ranges: Ranges {
                v4: v4.trunc(),
                v6: v6.trunc(),
            },
            default_export_to: raw
                .default_service_export_to
                .unwrap_or_else(|| vec!["*".into()]),
            root_namespace: raw.root_namespace.unwrap_or_else(|| "istio-system".into()),
            instance,
            // All three resolve the same way: absolute, or relative to this file.
            state_dir: base.join(raw.state_dir.unwrap_or_else(|| "/var/lib/egress".into())),
            pin_dir: base.join(raw.pin_dir.unwrap_or_else(|| "/sys/fs/bpf/egress".into())),
            run_dir: base.join(raw.run_dir.unwrap_or_else(|| "/run/egress".into())),
            on_exit: raw.on_exit,
            revoke_established: raw.revoke_established.unwrap_or(true),
            path: path.to_owned(),
            outbound: raw.outbound_traffic_policy.mode,
            cgroup_path,
            service_entry_dir,
            workloads,
            excluded_cidrs,
            cluster_cidrs,
            fail_open: raw.fail_open,
            audit: raw.audit,
            audit_namespaces: raw.audit_namespaces,
            unknown_workloads: raw.unknown_workloads,
            allow_sockets: raw.allow_sockets,
            allow_sockets_by_namespace: raw.allow_sockets_by_namespace,
            udp_enforcement: raw.udp_enforcement.unwrap_or(true),
            access_log: AccessLog {
                path: raw
                    .access_log
                    .path
                    .filter(|p| p.as_os_str() != "-")
                    .map(|p| base.join(p)),
                rate_per_second: raw.access_log.rate_per_second.unwrap_or(10).max(1),
                burst: raw.access_log.burst.unwrap_or(20).max(1),
            },
            metrics_address: raw.metrics_address,
            kubernetes,
            proc_path: raw.proc_path.unwrap_or_else(|| "/proc".into()),
        })
    }
}

/// `kubernetes:` with its defaults.
fn kubernetes(
    k: RawKubernetes,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<KubernetesConfig, ConfigError> {
    use crate::k8s::cgroups::{Driver, detect_driver};
    let node_name = k
        .node_name
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            invalid(
                "kubernetes.nodeName",
                "not set and NODE_NAME is not in the environment (the downward API's \
                 spec.nodeName)"
                    .into(),
            )
        })?;
    let cgroup_root = match k.cgroup_root {
        Some(p) => p,
        None => cgroup2_mount().ok_or_else(|| {
            invalid(
                "kubernetes.cgroupRoot",
                "not set and no cgroup2 mount found in /proc/mounts".into(),
            )
        })?,
    };
    let cgroup_driver = match k.cgroup_driver {
        RawDriver::Systemd => Driver::Systemd,
        RawDriver::Cgroupfs => Driver::Cgroupfs,
        RawDriver::Auto => detect_driver(&cgroup_root).ok_or_else(|| {
            invalid(
                "kubernetes.cgroupDriver",
                format!(
                    "auto: neither kubepods.slice (systemd) nor kubepods (cgroupfs) is under {}; \
                     set cgroupRoot or the driver",
                    cgroup_root.display()
                ),
            )
        })?,
    };
    Ok(KubernetesConfig {
        node_name,
        kubeconfig: k.kubeconfig,
        cgroup_root,
        cgroup_driver,
        mesh_config_map: k.mesh_config_map.unwrap_or_else(|| "istio".into()),
        excluded_namespaces: k
            .excluded_namespaces
            .unwrap_or_else(|| vec!["kube-system".into()]),
        pod_labels: k.pod_labels.unwrap_or(true),
        pod_uid: k
            .pod_uid
            .or_else(|| std::env::var("POD_UID").ok())
            .filter(|u| !u.is_empty()),
    })
}

/// Replaces every `${NAME}` with `lookup(NAME)`, outside YAML comments; the
/// name of the first one that is not set is the error. `$${` writes `${`.
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (code, comment) = line.split_at(comment_start(line));
        out.push_str(&expand_line(code, lookup)?);
        out.push_str(comment);
    }
    Ok(out)
}

/// Where a YAML comment begins on `line` (its length if none): a `#` at the
/// start or after a blank, outside quotes.
fn comment_start(line: &str) -> usize {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return i,
            _ => {}
        }
        prev = c;
    }
    line.len()
}

fn expand_line(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i]);
            out.push('{');
            rest = &rest[i + 2..];
            continue;
        }
        let Some(end) = rest[i + 2..].find('}') else {
            break;
        };
        let name = &rest[i + 2..i + 2 + end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..i]);
        if valid {
            out.push_str(&lookup(name).ok_or_else(|| name.to_owned())?);
        } else {
            out.push_str(&rest[i..i + 3 + end]);
        }
        rest = &rest[i + 3 + end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An IP (as a host prefix) or a CIDR.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    s.parse::<IpNet>()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

// ---------------------------------------------------------------------------------
// Settings other parts of the agent take from here (the config is a leaf).
// ---------------------------------------------------------------------------------

/// The ranges VIPs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

impl Default for Ranges {
    fn default() -> Self {
        Self {
            v4: "240.240.0.0/16".parse().unwrap(),
            v6: "2001:2::/48".parse().unwrap(),
        }
    }
}

impl Ranges {
    /// Usable IPv4 addresses (last octet 1..254). The range must be /24 or wider.
    pub fn slots(&self) -> u32 {
        let blocks = 1u64 << (24 - u32::from(self.v4.prefix_len().min(24)));
        (blocks * 254).min(u64::from(u32::MAX)) as u32
    }

    /// Offset from the range start of slot `k`'s IPv4 address.
    fn offset(k: u32) -> u32 {
        (k / 254) * 256 + (k % 254) + 1
    }

    pub fn v4_of(&self, k: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.v4.network()) + Self::offset(k))
    }

    pub fn v6_of(&self, k: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.v6.network()) + 0xf0f0_0000 + u128::from(Self::offset(k)))
    }

    /// The slot an address stands for, if it is one of ours.
    pub fn slot_of(&self, ip: IpAddr) -> Option<u32> {
        let offset = match ip {
            IpAddr::V4(a) if self.v4.contains(&a) => u32::from(a) - u32::from(self.v4.network()),
            IpAddr::V6(a) if self.v6.contains(&a) => {
                let off = u128::from(a).checked_sub(u128::from(self.v6.network()) + 0xf0f0_0000)?;
                u32::try_from(off).ok()?
            }
            _ => return None,
        };
        let (block, last) = (offset / 256, offset % 256);
        if last == 0 || last == 255 {
            return None;
        }
        let k = block * 254 + last - 1;
        (k < self.slots()).then_some(k)
    }
}

/// The DNS proxy's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsProxySettings {
    pub listen: Vec<SocketAddr>,
    pub upstream: Vec<SocketAddr>,
    /// TTL of VIP answers.
    pub vip_ttl: u32,
    /// Clamp of learned entries' lifetime (SPEC §7.1 `dnsLearnedMinTtl/MaxTtl`).
    pub learned_min_ttl: Duration,
    pub learned_max_ttl: Duration,
    pub upstream_timeout: Duration,
    /// NXDOMAIN for names outside a REGISTRY_ONLY workload's view (not forwarded).
    pub refuse_unregistered: bool,
    /// TCP: the longest one message may take to arrive.
    pub tcp_read_timeout: Duration,
    /// TCP connections at once per source address, and in total.
    pub tcp_per_source: usize,
    pub tcp_total: usize,
    /// UDP queries forwarded upstream at once, per source address and in total.
    pub udp_per_source: usize,
    pub udp_total: usize,
    /// DNS queries per second and workload (per CPU); 0: no limit.
    pub queries_per_second: u32,
}

/// The resolver's refresh settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long a last good answer stays in use while resolution fails.
    pub stale_limit: Duration,
    /// Delay before retrying a failed resolution.
    pub retry: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            stale_limit: Duration::from_secs(3600),
            retry: Duration::from_secs(5),
        }
    }
}

/// The nameservers of /etc/resolv.conf (port 53).
pub fn system_upstream() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses a duration as Kubernetes/Go writes it (`10s`, `1.5s`, `100ms`, `1m30s`,
/// `0.5ms`) into nanoseconds.
pub fn parse_duration(s: &str) -> Option<i128> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: i128 = 0;
    let mut any = false;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() {
            return None;
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let unit_ns: i128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut value = int.checked_mul(unit_ns)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let frac_val: i128 = frac[..digits as usize].parse().ok()?;
            value += frac_val * unit_ns / 10i128.pow(digits);
        }
        total = total.checked_add(value)?;
        rest = tail;
        any = true;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_applies_what_is_live_and_keeps_what_needs_a_start() {
        let path = Path::new("/etc/egress/agent.yaml");
        let old = Config::parse(
            path,
            "cgroupPath: /x\noutboundTrafficPolicy: {mode: ALLOW_ANY}\nfailOpen: false\n\
             dns: {listen: [\"198.18.0.1:53\"], upstream: [\"198.18.0.14:53\"]}\n",
        )
        .unwrap();
        let new = Config::parse(
            path,
            "cgroupPath: /y\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\nfailOpen: true\n\
             audit: true\npinDir: /sys/fs/bpf/other\n\
             dns: {listen: [\"198.18.0.9:53\"], upstream: [\"198.18.0.15:53\"], vipTtl: 7s}\n",
        )
        .unwrap();
        let (merged, pending) = old.reloaded(new);
        // Live: the policy, audit, the DNS proxy's settings but where it listens.
        assert_eq!(merged.outbound, OutboundMode::RegistryOnly);
        assert!(merged.audit);
        let dns = merged.dns.as_ref().unwrap();
        assert_eq!(dns.proxy.vip_ttl, 7);
        assert_eq!(dns.proxy.upstream, ["198.18.0.15:53".parse().unwrap()]);
        // Start-only: kept, and named.
        assert_eq!(merged.cgroup_path, Path::new("/x"));
        assert!(!merged.fail_open);
        assert_eq!(merged.pin_dir, Path::new("/sys/fs/bpf/egress"));
        assert_eq!(dns.proxy.listen, ["198.18.0.1:53".parse().unwrap()]);
        let mut pending = pending;
        pending.sort();
        assert_eq!(pending, ["cgroupPath", "dns.listen", "failOpen", "pinDir"]);
    }

    #[test]
    fn state_pin_and_run_dirs_resolve_against_the_file() {
        let c = Config::parse(
            Path::new("/etc/egress/agent.yaml"),
            "cgroupPath: /x\nstateDir: s\npinDir: /sys/fs/bpf/p\nrunDir: r\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/egress/s"));
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/p"));
        assert_eq!(c.run_dir, Path::new("/etc/egress/r"));
    }

    #[test]
    fn parses_full_config_and_resolves_paths() {
        let text = r#"
outboundTrafficPolicy: {mode: REGISTRY_ONLY}
cgroupPath: /sys/fs/cgroup/unified/egress-test
serviceEntryDir: entries
workloads:
  - cgroup: pod-a
    namespace: shop
    name: frontend
    labels: {app: web}
    ip: 198.18.0.2
  - cgroup: /sys/fs/cgroup/unified/other
    namespace: ops
    name: batch
clusterCidrs: [10.96.0.0/12]
"#;
        let c = Config::parse(Path::new("/etc/egress/agent.yaml"), text).unwrap();
        assert_eq!(c.outbound, OutboundMode::RegistryOnly);
        assert_eq!(c.service_entry_dir, Path::new("/etc/egress/entries"));
        assert_eq!(
            c.workloads[0].cgroup,
            Path::new("/sys/fs/cgroup/unified/egress-test/pod-a")
        );
        assert_eq!(
            c.workloads[1].cgroup,
            Path::new("/sys/fs/cgroup/unified/other")
        );
        assert_eq!(c.workloads[0].ip, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(c.excluded_cidrs.len(), DEFAULT_EXCLUDED.len());
        assert_eq!(
            c.cluster_cidrs,
            vec!["10.96.0.0/12".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn socket_switches_combine_global_namespace_and_workload() {
        let text = r#"
cgroupPath: /x
allowSockets: [udplite]
allowSocketsByNamespace: {ops: [icmp]}
workloads:
  - {cgroup: a, namespace: ops, name: probe, allowSockets: [raw]}
  - {cgroup: b, namespace: shop, name: web}
"#;
        let c = Config::parse(Path::new("a.yaml"), text).unwrap();
        use egress_common::*;
        assert_eq!(
            c.socket_flags(&c.workloads[0]),
            WL_SOCK_UDPLITE | WL_SOCK_ICMP | WL_SOCK_RAW
        );
        assert_eq!(c.socket_flags(&c.workloads[1]), WL_SOCK_UDPLITE);
        assert_eq!(c.unknown_workloads, UnknownWorkloads::MeshPolicy);
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\nallowSockets: [ping]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ping"), "{err}");
    }

    #[test]
    fn link_local_is_not_excluded_by_default() {
        let c = Config::parse(Path::new("a.yaml"), "cgroupPath: /x\n").unwrap();
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(!c.excluded_cidrs.iter().any(|n| n.contains(&metadata)));
        assert!(
            c.excluded_cidrs
                .iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()))
        );
        let c = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\nunknownWorkloads: untouched\n",
        )
        .unwrap();
        assert_eq!(c.unknown_workloads, UnknownWorkloads::Untouched);
    }

    #[test]
    fn environment_variables_are_replaced() {
        let env = |n: &str| match n {
            "NODE_NAME" => Some("node-a".to_owned()),
            "HOST_IP" => Some("10.0.0.7".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand_env(
                "nodeName: ${NODE_NAME}\nlisten: [\"${HOST_IP}:15053\"]",
                &env
            )
            .unwrap(),
            "nodeName: node-a\nlisten: [\"10.0.0.7:15053\"]"
        );
        assert_eq!(
            expand_env("a: $${NODE_NAME} ${x-y} ${", &env).unwrap(),
            "a: ${NODE_NAME} ${x-y} ${"
        );
        assert_eq!(
            expand_env("a: ${UNSET_ONE}", &env).unwrap_err(),
            "UNSET_ONE"
        );
        let err = Config::parse(
            Path::new("/etc/egress/agent.yaml"),
            "cgroupPath: /x\ninstance: ${EGRESS_TEST_SURELY_UNSET}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/egress/agent.yaml")
                && err.contains("${EGRESS_TEST_SURELY_UNSET}")
                && err.contains("not set"),
            "{err}"
        );
    }

    #[test]
    fn kubernetes_mode_attaches_at_the_kubelets_pods() {
        let c = Config::parse(
            Path::new("a.yaml"),
            "kubernetes:\n  nodeName: node-a\n  cgroupRoot: /sys/fs/cgroup\n  cgroupDriver: systemd\n",
        )
        .unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(k.node_name, "node-a");
        assert_eq!(k.excluded_namespaces, vec!["kube-system".to_owned()]);
        assert_eq!(k.mesh_config_map, "istio");
        assert_eq!(c.cgroup_path, Path::new("/sys/fs/cgroup/kubepods.slice"));
        let c = Config::parse(
            Path::new("a.yaml"),
            "kubernetes:\n  nodeName: n\n  cgroupRoot: /r\n  cgroupDriver: cgroupfs\n",
        )
        .unwrap();
        assert_eq!(c.cgroup_path, Path::new("/r/kubepods"));
        // auto finds neither layout under a root without pods.
        let err = Config::parse(
            Path::new("a.yaml"),
            "kubernetes:\n  nodeName: n\n  cgroupRoot: /nonexistent/root\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kubernetes.cgroupDriver"), "{err}");
        // The file mode has none of it.
        assert!(
            Config::parse(Path::new("a.yaml"), "cgroupPath: /x\n")
                .unwrap()
                .kubernetes
                .is_none()
        );
    }

    #[test]
    fn default_policy_is_allow_any() {
        let c = Config::parse(Path::new("a.yaml"), "cgroupPath: /x\n").unwrap();
        assert_eq!(c.outbound, OutboundMode::AllowAny);
    }

    #[test]
    fn typo_is_rejected_with_the_field() {
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\noutbondTrafficPolicy: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a.yaml"), "{err}");
        assert!(err.contains("outbondTrafficPolicy"), "{err}");
    }

    #[test]
    fn bad_cidr_names_the_field() {
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\nclusterCidrs: [10.0.0.0/99]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("clusterCidrs[0]"), "{err}");
    }

    #[test]
    fn bad_mode_is_rejected() {
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\noutboundTrafficPolicy: {mode: DENY}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("DENY"), "{err}");
    }
}
