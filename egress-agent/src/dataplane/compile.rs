//! The pure step from the registry and workloads to the dataplane's desired state:
//! the exact `#[repr(C)]` entries each map should hold. No kernel here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use egress_common::addr::{Addr, is_v4_mapped, to_addr};
use egress_common::*;
use ipnet::IpNet;

use crate::config::{Config, OutboundMode, UnknownWorkloads};
use crate::dataplane::workloads::Workload;
use crate::dns::resolver::Resolved;
use crate::dns::table::{DnsClient, DnsTables, HostDns, ViewDns};
use crate::istio::model::Resolution;
use crate::registry::scope::{SidecarScope, select_sidecar, view};
use crate::registry::{EndpointAddress, Service};
pub use crate::telemetry::catalog::{ServiceMeta, WorkloadMeta};

/// The slots of a backend set: IPv4 backends first (`v4` of them), weights already
/// expanded into repeated slots. Compared by content so equal sets share one id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendSet {
    pub slots: Vec<Backend>,
    pub v4: u16,
}

/// What a [`SERVICES_MAP`] entry should say; the sync step turns `set` into an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    pub service_id: u32,
    pub kind: u8,
    pub set: Option<Arc<BackendSet>>,
}

/// What a [`CIDRS_MAP`] entry should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrTarget {
    pub service_id: u32,
    pub kind: u8,
    pub target_port: u16,
    pub set: Option<Arc<BackendSet>>,
}

/// A backend set as the maps refer to it: (set id, slots, IPv4 slots).
pub type SetRef = (u32, u16, u16);

impl ServiceTarget {
    /// The map value, given how the set is referred to.
    pub fn value(&self, (set_id, slots, v4_slots): SetRef) -> ServiceValue {
        ServiceValue {
            service_id: self.service_id,
            set_id,
            slots,
            v4_slots,
            kind: self.kind,
            _pad: [0; 3],
        }
    }
}

impl CidrTarget {
    /// The map value, given how the set is referred to.
    pub fn value(&self, (set_id, slots, v4_slots): SetRef) -> CidrValue {
        CidrValue {
            service_id: self.service_id,
            set_id,
            slots,
            v4_slots,
            target_port: self.target_port,
            kind: self.kind,
            _pad: 0,
        }
    }
}

/// An LPM key: prefix length (bits over the whole key) and data.
pub type CidrLpm = (u32, CidrKey);
pub type PolicyLpm = (u32, IpKey);

/// The desired content of every policy map, and the DNS proxy's tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub workloads: HashMap<u64, WorkloadValue>,
    /// Shared with the [`RegistryCache`]: a compile that only workloads
    /// changed hands the same tables on, and the sync skips them.
    pub services: Arc<HashMap<ServiceKey, ServiceTarget>>,
    pub cidrs: Arc<HashMap<CidrLpm, CidrTarget>>,
    pub policy_cidrs: HashMap<PolicyLpm, PolicyCidrValue>,
    /// [`DNS_MAP`]: where workloads' DNS goes.
    pub dns: DnsConfig,
    /// What the DNS proxy answers, per view.
    pub dns_tables: DnsTables,
    /// [`WORKLOAD_IPS_MAP`]: workloads by address, for traffic attribution.
    pub workload_ips: HashMap<Addr, WorkloadValue>,
    /// [`IFACES_MAP`]: workloads by interface index, for the interface check.
    pub ifaces: HashMap<u32, IfaceValue>,
    /// Every backend set once while compiling: entries with equal sets share
    /// one allocation (100 000 services over 250 endpoints: 250 sets). Empty
    /// once compiled.
    pub set_pool: std::collections::HashSet<Arc<BackendSet>>,
}

impl Desired {
    /// The shared copy of `set`.
    fn intern(&mut self, set: BackendSet) -> Arc<BackendSet> {
        if let Some(s) = self.set_pool.get(&set) {
            return s.clone();
        }
        let s = Arc::new(set);
        self.set_pool.insert(s.clone());
        s
    }
}

/// The names the resolver must follow: the hostname endpoints of DNS and
/// DNS_ROUND_ROBIN services, or the service host when it has no endpoints.
pub fn dns_names(services: &[Arc<Service>]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in services {
        if !matches!(s.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            continue;
        }
        if s.endpoints.is_empty() {
            if !s.is_wildcard() {
                out.insert(s.host_key.clone());
            }
            continue;
        }
        for e in &s.endpoints {
            if let EndpointAddress::Host(h) = &e.address {
                out.insert(crate::registry::host_key(h));
            }
        }
    }
    out
}

/// The (address, endpoint port, weight) list of one service port (SPEC §4.2,
/// §7.4 step 4): STATIC endpoints as written; DNS endpoints (or the host itself)
/// expanded to every address of their current answer; DNS_ROUND_ROBIN the first.
fn endpoint_ips(
    s: &Service,
    port: &crate::registry::Port,
    resolved: &Resolved,
) -> Vec<(IpAddr, u16, u32)> {
    let own_port = port.target_port.unwrap_or(port.number);
    let answer = |name: &str| resolved.get(&crate::registry::host_key(name));
    let all = |a: &crate::dns::resolver::Answer| -> Vec<IpAddr> {
        a.v4.iter()
            .map(|ip| IpAddr::V4(*ip))
            .chain(a.v6.iter().map(|ip| IpAddr::V6(*ip)))
            .collect()
    };
    let first = |a: &crate::dns::resolver::Answer| -> Vec<IpAddr> {
        a.v4.first()
            .map(|ip| IpAddr::V4(*ip))
            .or_else(|| a.v6.first().map(|ip| IpAddr::V6(*ip)))
            .into_iter()
            .collect()
    };
    match s.resolution {
        Resolution::Static => s
            .endpoints
            .iter()
            .filter_map(|e| match e.address {
                EndpointAddress::Ip(ip) => Some((ip, e.targets[&port.number], e.weight)),
                _ => None,
            })
            .collect(),
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let pick = if s.resolution == Resolution::Dns {
                all
            } else {
                first
            };
            if s.endpoints.is_empty() {
                return answer(&s.host)
                    .map(|a| pick(a).into_iter().map(|ip| (ip, own_port, 1)).collect())
                    .unwrap_or_default();
            }
            let mut out = Vec::new();
            for e in &s.endpoints {
                let target = e.targets[&port.number];
                match &e.address {
                    EndpointAddress::Ip(ip) => out.push((*ip, target, e.weight)),
                    EndpointAddress::Host(h) => {
                        if let Some(a) = answer(h) {
                            out.extend(pick(a).into_iter().map(|ip| (ip, target, e.weight)));
                        }
                    }
                    _ => {}
                }
                if s.resolution == Resolution::DnsRoundRobin && !out.is_empty() {
                    break;
                }
            }
            out
        }
        Resolution::None | Resolution::DynamicDns => Vec::new(),
    }
}

/// Stable small integers for services, views and workloads. Kept across compiles so
/// an unchanged entry keeps its id (and its map entries stay untouched).
#[derive(Debug, Default)]
pub struct Ids {
    services: HashMap<(String, String), u32>,
    views: HashMap<String, u32>,
    workloads: HashMap<(String, String), u32>,
    /// Shared with the catalog (one copy for a large registry).
    pub service_meta: Arc<BTreeMap<u32, ServiceMeta>>,
    pub workload_meta: BTreeMap<u32, WorkloadMeta>,
}

/// [`Ids`] as stored in the state directory.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedIds {
    pub services: Vec<(String, String, u32)>,
    pub views: Vec<(String, u32)>,
    pub workloads: Vec<(String, String, u32)>,
}

impl SavedIds {
    /// Ids whose numbers are not dense from 1 are not restored (a hand-edited
    /// or damaged file): new ids would collide with them.
    pub fn is_dense(&self) -> bool {
        fn dense(mut ids: Vec<u32>) -> bool {
            ids.sort_unstable();
            ids.iter().enumerate().all(|(i, id)| *id == i as u32 + 1)
        }
        dense(self.services.iter().map(|e| e.2).collect())
            && dense(self.views.iter().map(|e| e.1).collect())
            && dense(self.workloads.iter().map(|e| e.2).collect())
    }
}

fn next_id<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> u32 {
    let n = map.len() as u32 + 1;
    *map.entry(key).or_insert(n)
}

impl Ids {
    fn service(&mut self, s: &Service, meta: &mut BTreeMap<u32, ServiceMeta>) -> u32 {
        let id = next_id(
            &mut self.services,
            (s.namespace.clone(), s.host_key.clone()),
        );
        meta.insert(
            id,
            ServiceMeta {
                namespace: s.namespace.clone(),
                host: s.host.clone(),
                se_name: s.se_name.clone(),
                location: s.location,
                resolution: s.resolution,
            },
        );
        id
    }

    /// The id assignments, to be saved: an agent that adopts a pinned dataplane
    /// restores them so that the entries it finds match what it compiles.
    pub fn saved(&self) -> SavedIds {
        let mut s = SavedIds {
            services: self
                .services
                .iter()
                .map(|((ns, h), id)| (ns.clone(), h.clone(), *id))
                .collect(),
            views: self.views.iter().map(|(k, id)| (k.clone(), *id)).collect(),
            workloads: self
                .workloads
                .iter()
                .map(|((ns, n), id)| (ns.clone(), n.clone(), *id))
                .collect(),
        };
        s.services.sort_by_key(|e| e.2);
        s.views.sort_by_key(|e| e.1);
        s.workloads.sort_by_key(|e| e.2);
        s
    }

    /// Ids as saved; ids are dense from 1, so new ones continue after them.
    pub fn restore(saved: SavedIds) -> Self {
        Self {
            services: saved
                .services
                .into_iter()
                .map(|(ns, h, id)| ((ns, h), id))
                .collect(),
            views: saved.views.into_iter().collect(),
            workloads: saved
                .workloads
                .into_iter()
                .map(|(ns, n, id)| ((ns, n), id))
                .collect(),
            ..Self::default()
        }
    }

    /// How many ids are assigned (a change means they are due to be saved).
    pub fn assigned(&self) -> usize {
        self.services.len() + self.views.len() + self.workloads.len()
    }

    fn view(&mut self, key: &str) -> u32 {
        next_id(&mut self.views, key.to_owned())
    }

    /// The names behind the ids, for the telemetry and `inspect`.
    pub fn catalog(&self) -> crate::telemetry::catalog::Catalog {
        crate::telemetry::catalog::Catalog {
            services: self.service_meta.clone(),
            workloads: self.workload_meta.clone(),
            views: self.view_names(),
        }
    }

    /// View id → its key (`namespace` or `namespace|sidecar`).
    pub fn view_names(&self) -> BTreeMap<u32, String> {
        self.views.iter().map(|(k, v)| (*v, k.clone())).collect()
    }

    fn workload(&mut self, w: &Workload, policy: OutboundMode) -> u32 {
        let id = next_id(
            &mut self.workloads,
            (w.config.namespace.clone(), w.config.name.clone()),
        );
        self.workload_meta.insert(
            id,
            WorkloadMeta {
                namespace: w.config.namespace.clone(),
                name: w.config.name.clone(),
                cgroup_id: w.cgroup_id,
                policy,
            },
        );
        id
    }
}

/// Expands endpoints (address, port, weight) into slots, IPv4 first.
pub fn backend_set(mut endpoints: Vec<(IpAddr, u16, u32)>) -> BackendSet {
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let g = endpoints.iter().fold(0u32, |g, e| gcd(g, e.2.max(1)));
    let mut counts: Vec<u64> = endpoints
        .iter()
        .map(|e| u64::from(e.2.max(1) / g.max(1)))
        .collect();
    let total: u64 = counts.iter().sum();
    let max = u64::from(MAX_BACKEND_SLOTS);
    if total > max {
        for c in &mut counts {
            *c = (*c * max / total).max(1);
        }
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (e, n) in endpoints.iter().zip(counts) {
        let b = Backend {
            addr: to_addr(e.0),
            port: e.1,
            _pad: [0; 2],
        };
        let dest = if is_v4_mapped(&b.addr) {
            &mut v4
        } else {
            &mut v6
        };
        for _ in 0..n {
            dest.push(b);
        }
    }
    let n4 = v4.len() as u16;
    v4.extend(v6);
    BackendSet { slots: v4, v4: n4 }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Prefix length of `net` over a [`CidrKey`].
pub fn cidr_prefix(net: &IpNet) -> u32 {
    CIDR_FIXED_BITS + prefix_on_v6(net)
}

/// Prefix length of `net` on the 128-bit (v4-mapped) scale.
pub fn prefix_on_v6(net: &IpNet) -> u32 {
    match net {
        IpNet::V4(n) => egress_common::addr::v4_prefix_on_v6(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    }
}

/// The name metrics and the access log give cgroups that are no known workload
/// (with an empty namespace).
pub const UNKNOWN_WORKLOAD_NAME: &str = "unknown";

/// Compiles the registry and workloads into the desired map content.
pub fn compile(
    config: &Config,
    services: &[Arc<Service>],
    sidecars: &[SidecarScope],
    workloads: &[Workload],
    resolved: &Resolved,
    ids: &mut Ids,
) -> Desired {
    compile_cached(
        config,
        services,
        sidecars,
        workloads,
        resolved,
        ids,
        &mut RegistryCache::default(),
        None,
    )
}

/// A registry generation and the scopes with workloads (`namespace` or
/// `namespace|sidecar-namespace/name`).
type CacheKey = (u64, Vec<String>);

/// What the registry compiled to for one set of views, kept for the next
/// compile: when only workloads changed (a pod came or went in a namespace
/// that already had one), the services, CIDRs and DNS names are the same.
#[derive(Default)]
pub struct RegistryCache {
    /// The registry's generation and the scopes (namespace, Sidecar) with
    /// workloads.
    key: Option<CacheKey>,
    /// Each scope's view.
    view_of: BTreeMap<String, u32>,
    services: Arc<HashMap<ServiceKey, ServiceTarget>>,
    cidrs: Arc<HashMap<CidrLpm, CidrTarget>>,
    dns_views: BTreeMap<u32, ViewDns>,
}

/// As [`compile`], reusing what `cache` holds when `generation` (which the
/// caller changes with anything but the workloads: services, Sidecars,
/// configuration, resolved addresses) and the views are those it was made for.
#[allow(clippy::too_many_arguments)]
pub fn compile_cached(
    config: &Config,
    services: &[Arc<Service>],
    sidecars: &[SidecarScope],
    workloads: &[Workload],
    resolved: &Resolved,
    ids: &mut Ids,
    cache: &mut RegistryCache,
    generation: Option<u64>,
) -> Desired {
    let mut d = Desired::default();
    // Names are rebuilt each time: what is gone is no longer in the catalog.
    ids.workload_meta.clear();
    if let Some(dns) = &config.dns {
        let v4 = dns
            .proxy
            .listen
            .iter()
            .find(|a| a.is_ipv4())
            .expect("validated");
        let v6 = dns.proxy.listen.iter().find(|a| a.is_ipv6());
        d.dns = DnsConfig {
            proxy_v4: to_addr(v4.ip()),
            proxy_v6: v6.map(|a| to_addr(a.ip())).unwrap_or_default(),
            port: v4.port(),
            flags: if dns.capture { DNS_CAPTURE } else { 0 }
                | if v6.is_some() { DNS_HAS_V6 } else { 0 },
        };
    }
    for net in &config.excluded_cidrs {
        d.policy_cidrs.insert(
            (
                prefix_on_v6(net),
                IpKey {
                    addr: to_addr(net.network()),
                },
            ),
            PolicyCidrValue {
                kind: POLICY_EXCLUDED,
            },
        );
    }
    for net in &config.cluster_cidrs {
        d.policy_cidrs
            .entry((
                prefix_on_v6(net),
                IpKey {
                    addr: to_addr(net.network()),
                },
            ))
            .or_insert(PolicyCidrValue {
                kind: POLICY_CLUSTER,
            });
    }

    // Cgroups under the attach point that are no known workload (yet): the mesh
    // policy over an empty view, or untouched.
    let mut unknown = if config.udp_enforcement { WL_UDP } else { 0 };
    if config.outbound == OutboundMode::RegistryOnly {
        unknown |= WL_REGISTRY_ONLY;
    }
    if config.audit {
        unknown |= WL_AUDIT;
    }
    if config.unknown_workloads == UnknownWorkloads::Untouched {
        unknown |= WL_UNTOUCHED;
    }
    for k in &config.allow_sockets {
        unknown |= k.flag();
    }
    ids.workload_meta.insert(
        UNKNOWN_WORKLOAD_ID,
        WorkloadMeta {
            namespace: String::new(),
            name: UNKNOWN_WORKLOAD_NAME.into(),
            cgroup_id: UNKNOWN_CGROUP,
            policy: config.outbound,
        },
    );
    d.workloads.insert(
        UNKNOWN_CGROUP,
        WorkloadValue {
            workload_id: UNKNOWN_WORKLOAD_ID,
            view_id: EMPTY_VIEW_ID,
            flags: unknown,
            _pad: 0,
        },
    );

    // What each (namespace, Sidecar) with a workload on this node sees. Those
    // that see exactly the same services on the same ports share one view
    // (every namespace without a Sidecar or services of its own, when the
    // registry is exported everywhere): the maps hold each view once.
    let scope_of = |w: &Workload| {
        let ns = &w.config.namespace;
        let sidecar = select_sidecar(sidecars, ns, &w.config.labels, &config.root_namespace);
        let key = match sidecar {
            Some(sc) => format!("{ns}|{}/{}", sc.namespace, sc.name),
            None => ns.clone(),
        };
        (key, ns.clone(), sidecar)
    };
    let mut scopes: BTreeMap<String, (String, Option<&SidecarScope>)> = BTreeMap::new();
    for w in workloads {
        let (key, ns, sc) = scope_of(w);
        scopes.entry(key).or_insert((ns, sc));
    }
    let key = generation.map(|g| (g, scopes.keys().cloned().collect::<Vec<_>>()));
    let hit = key.is_some() && cache.key == key;
    // View id of each scope, and (on a miss) each view's services.
    let mut view_of: BTreeMap<String, u32> = BTreeMap::new();
    let mut views: BTreeMap<u32, Vec<(&Service, Vec<u16>)>> = BTreeMap::new();
    if hit {
        view_of = cache.view_of.clone();
    } else {
        let mut by_content: HashMap<Vec<(usize, Vec<u16>)>, u32> = HashMap::new();
        // A namespace without a Sidecar that no service lives in or names in
        // its exportTo sees what every such namespace sees: computed once.
        let mut named: HashSet<&str> = HashSet::new();
        for s in services {
            named.insert(s.namespace.as_str());
            named.extend(s.export_to.iter().map(String::as_str));
        }
        named.extend(config.default_export_to.iter().map(String::as_str));
        let mut generic: Option<u32> = None;
        // Scopes in key order: the first of a group names its view.
        for (key, (ns, sc)) in &scopes {
            let plain = sc.is_none() && !named.contains(ns.as_str());
            if plain && let Some(id) = generic {
                view_of.insert(key.clone(), id);
                continue;
            }
            let content = view(services, ns, *sc, &config.default_export_to);
            let sig: Vec<(usize, Vec<u16>)> = content
                .iter()
                .map(|(s, p)| (*s as *const Service as usize, p.clone()))
                .collect();
            let id = match by_content.get(&sig) {
                Some(id) => *id,
                None => {
                    let id = ids.view(key);
                    by_content.insert(sig, id);
                    views.insert(id, content);
                    id
                }
            };
            if plain {
                generic = Some(id);
            }
            view_of.insert(key.clone(), id);
        }
    }
    for w in workloads {
        let (key, _, sidecar) = scope_of(w);
        let view_id = view_of[&key];
        let policy = sidecar.and_then(|sc| sc.policy).unwrap_or(config.outbound);
        let mut flags = 0;
        if policy == OutboundMode::RegistryOnly {
            flags |= WL_REGISTRY_ONLY;
        }
        if config.audits(&w.config) {
            flags |= WL_AUDIT;
        }
        if config.udp_enforcement {
            flags |= WL_UDP;
        }
        flags |= config.socket_flags(&w.config);
        if w.config.addresses().next().is_some() {
            flags |= WL_HAS_ADDR;
        }
        if w.config.untouched {
            flags |= WL_UNTOUCHED;
        }
        let workload_id = ids.workload(w, policy);
        let value = WorkloadValue {
            workload_id,
            view_id,
            flags,
            _pad: 0,
        };
        d.workloads.insert(w.cgroup_id, value);
        if let Some(i) = w.iface {
            d.ifaces.insert(
                i.index,
                IfaceValue {
                    workload: value,
                    mac: i.mac,
                    bridge_mac: i.bridge_mac,
                    _pad: [0; 4],
                    v6_prefix: w
                        .config
                        .addresses()
                        .find_map(|a| match a {
                            IpAddr::V6(v6) => Some(v6.octets()),
                            IpAddr::V4(_) => None,
                        })
                        .map_or([0; 8], |o| {
                            let mut p = [0u8; 8];
                            p.copy_from_slice(&o[..8]);
                            p
                        }),
                },
            );
        }
        for ip in w.config.addresses() {
            d.dns_tables.clients.insert(
                ip,
                DnsClient {
                    workload_id,
                    view_id,
                    // Audit mode refuses nothing, names included.
                    registry_only: flags & WL_REGISTRY_ONLY != 0 && flags & WL_AUDIT == 0,
                },
            );
            d.workload_ips.insert(
                to_addr(ip),
                WorkloadValue {
                    workload_id,
                    view_id,
                    flags,
                    _pad: 0,
                },
            );
        }
    }

    if hit {
        d.services = cache.services.clone();
        d.cidrs = cache.cidrs.clone();
        d.dns_tables.views = cache.dns_views.clone();
        d.set_pool = Default::default();
        return d;
    }
    // Sized up front: growing tables of a large registry would double the peak.
    let entries: usize = services
        .iter()
        .map(|s| {
            s.ports.len()
                * (s.vips.len() + s.status_vips.len() + s.auto_vips.len() + s.endpoints.len())
        })
        .sum();
    Arc::make_mut(&mut d.services).reserve(entries);
    let mut meta = BTreeMap::new();
    let service_ids: HashMap<(&str, &str), u32> = services
        .iter()
        .map(|s| {
            (
                (s.namespace.as_str(), s.host_key.as_str()),
                ids.service(s, &mut meta),
            )
        })
        .collect();
    ids.service_meta = Arc::new(meta);
    // The proxy's tables only when there is a proxy: they are large for a large
    // registry.
    let dns_proxy = config.dns.is_some();
    for (view_id, content) in &views {
        let mut names = ViewDns::default();
        for (s, ports) in content {
            let id = service_ids[&(s.namespace.as_str(), s.host_key.as_str())];
            compile_service(config, &mut d, *view_id, s, id, ports, resolved);
            if dns_proxy {
                add_names(&mut names, s, id, ports);
            }
        }
        // Most specific wildcard first; equal lengths keep Service order.
        names
            .wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        d.dns_tables.views.insert(*view_id, names);
    }
    d.set_pool = Default::default();
    *cache = RegistryCache {
        key,
        view_of,
        services: d.services.clone(),
        cidrs: d.cidrs.clone(),
        dns_views: d.dns_tables.views.clone(),
    };
    d
}

/// What the DNS proxy answers for `s` in one view (SPEC §7.5): explicit IP
/// addresses or automatic VIPs answer locally (CIDRs never do); otherwise the
/// name is forwarded and its answer learned on the service's imported ports.
fn add_names(names: &mut ViewDns, s: &Service, service_id: u32, ports: &[u16]) {
    let vips: Vec<IpAddr> = s.effective_vips().copied().collect();
    let learn: Vec<(u16, u8)> = s
        .ports
        .iter()
        .filter(|p| ports.contains(&p.number))
        // SPEC §7.3 step 4: with a VIP only HTTP-family ports match by name.
        .filter(|p| vips.is_empty() || p.protocol.is_http())
        .map(|p| (p.number, p.protocol.transport().proto()))
        .collect();
    let host = HostDns {
        host: s.host.clone(),
        service_id,
        v4: vips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect(),
        v6: vips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect(),
        learn,
    };
    if !host.answers_locally() && host.learn.is_empty() {
        return;
    }
    match crate::istio::hosts::wildcard_suffix(&s.host_key) {
        Some(suffix) => {
            if !names.wildcards.iter().any(|(x, _)| x == suffix) {
                names.wildcards.push((suffix.to_owned(), host));
            }
        }
        None => {
            names.exact.entry(s.host_key.clone()).or_insert(host);
        }
    }
}

/// Adds one service's entries to one view. Services arrive in Service order, so
/// an address:port already taken keeps its first owner (Istio's "first wins").
/// Is `ip` inside an excluded CIDR? Such addresses never enter the registry
/// maps: the kernel consults the excluded CIDRs only after the registry.
fn excluded(config: &Config, ip: &IpAddr) -> bool {
    config.excluded_cidrs.iter().any(|n| n.contains(ip))
}

fn compile_service(
    config: &Config,
    d: &mut Desired,
    view_id: u32,
    s: &Service,
    service_id: u32,
    ports: &[u16],
    resolved: &Resolved,
) {
    for port in s.ports.iter().filter(|p| ports.contains(&p.number)) {
        let proto = port.protocol.transport().proto();
        let endpoint_ips = endpoint_ips(s, port, resolved);
        match s.resolution {
            Resolution::None => {
                let target_port = port.target_port.unwrap_or(0);
                let nets = s
                    .vips
                    .iter()
                    .map(|ip| IpNet::from(*ip))
                    .chain(s.cidrs.iter().copied());
                let not_excluded = |n: &IpNet| !config.excluded_cidrs.iter().any(|x| x.contains(n));
                for net in nets.filter(not_excluded) {
                    let declared = CidrTarget {
                        service_id,
                        kind: CIDR_PASSTHROUGH,
                        target_port,
                        set: None,
                    };
                    // A declared port wins over another port's targetPort.
                    Arc::make_mut(&mut d.cidrs)
                        .entry(cidr_key(view_id, port.number, proto, &net))
                        .and_modify(|t| {
                            if t.kind == CIDR_PACKET_ONLY {
                                *t = declared.clone();
                            }
                        })
                        .or_insert(declared);
                    // Where the rewritten connections' packets go: the packet
                    // check must let them pass, connect() must not.
                    if target_port != 0 && target_port != port.number {
                        Arc::make_mut(&mut d.cidrs)
                            .entry(cidr_key(view_id, target_port, proto, &net))
                            .or_insert(CidrTarget {
                                service_id,
                                kind: CIDR_PACKET_ONLY,
                                target_port: 0,
                                set: None,
                            });
                    }
                }
            }
            Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => {
                let set = d.intern(backend_set(endpoint_ips.clone()));
                for ip in s.effective_vips().filter(|ip| !excluded(config, ip)) {
                    let key = ServiceKey {
                        addr: to_addr(*ip),
                        view_id,
                        port: port.number,
                        proto,
                        _pad: 0,
                    };
                    Arc::make_mut(&mut d.services)
                        .entry(key)
                        .or_insert(ServiceTarget {
                            service_id,
                            kind: SVC_VIP,
                            set: Some(set.clone()),
                        });
                }
                for net in s
                    .cidrs
                    .iter()
                    .filter(|n| !config.excluded_cidrs.iter().any(|x| x.contains(*n)))
                {
                    Arc::make_mut(&mut d.cidrs)
                        .entry(cidr_key(view_id, port.number, proto, net))
                        .or_insert(CidrTarget {
                            service_id,
                            kind: CIDR_BALANCE,
                            target_port: 0,
                            set: Some(set.clone()),
                        });
                }
                for (ip, eport, _) in endpoint_ips.iter().filter(|e| !excluded(config, &e.0)) {
                    let key = ServiceKey {
                        addr: to_addr(*ip),
                        view_id,
                        port: *eport,
                        proto,
                        _pad: 0,
                    };
                    Arc::make_mut(&mut d.services)
                        .entry(key)
                        .or_insert(ServiceTarget {
                            service_id,
                            kind: SVC_ENDPOINT,
                            set: None,
                        });
                }
            }
            // Dynamic DNS needs the SNI or Host header: matched by learned
            // addresses only (deviation D4).
            Resolution::DynamicDns => {}
        }
    }
}

fn cidr_key(view_id: u32, port: u16, proto: u8, net: &IpNet) -> CidrLpm {
    (
        cidr_prefix(net),
        CidrKey {
            view_id,
            port,
            proto,
            _pad: 0,
            addr: to_addr(net.network()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{Documents, parse_file};
    use crate::registry::{convert, merge};
    use std::path::Path;

    fn config(mode: &str) -> Config {
        Config::parse(
            Path::new("/etc/egress/agent.yaml"),
            &format!("cgroupPath: /cg\noutboundTrafficPolicy: {{mode: {mode}}}\n"),
        )
        .unwrap()
    }

    fn registry(text: &str) -> Vec<Arc<Service>> {
        let mut d = Documents::default();
        parse_file(Path::new("t.yaml"), text, &mut d);
        merge(
            d.service_entries
                .iter()
                .flat_map(|r| convert(r))
                .map(Arc::new)
                .collect(),
        )
        .0
    }

    fn workload(cg: u64, ns: &str, name: &str) -> Workload {
        Workload {
            cgroup_id: cg,
            config: crate::config::WorkloadConfig {
                cgroup: format!("/cg/{name}").into(),
                namespace: ns.into(),
                name: name.into(),
                labels: Default::default(),
                ip: None,
                ips: vec![],
                interface: None,
                audit: false,
                untouched: false,
                allow_sockets: vec![],
            },
            iface: None,
        }
    }

    const STATIC_SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: ops}
spec:
  hosts: [legacy.internal]
  addresses: [240.240.1.1, "2001:2::1"]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints:
  - {address: 198.18.0.11}
  - {address: 198.18.0.12, weight: 2}
"#;

    #[test]
    fn namespaces_that_see_the_same_share_one_view_and_a_workload_change_reuses_the_tables() {
        // `legacy` is exported everywhere; `own` only to shop.
        let se = format!(
            "{STATIC_SE}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: own, namespace: shop}}\nspec: {{hosts: [own.internal], \
             addresses: [240.240.9.9], exportTo: [\".\"], resolution: STATIC, \
             ports: [{{number: 80, name: http, protocol: HTTP}}], endpoints: [{{address: 198.18.0.13}}]}}\n"
        );
        let services = registry(&se);
        let mut ids = Ids::default();
        let mut cache = RegistryCache::default();
        let cfg = config("REGISTRY_ONLY");
        let pods = vec![
            workload(10, "shop", "web"),
            workload(11, "team-a", "batch"),
            workload(12, "team-b", "cron"),
        ];
        let compile = |pods: &[Workload], ids: &mut Ids, cache: &mut RegistryCache| {
            compile_cached(
                &cfg,
                &services,
                &[],
                pods,
                &Resolved::default(),
                ids,
                cache,
                Some(1),
            )
        };
        let d = compile(&pods, &mut ids, &mut cache);
        let view = |d: &Desired, cg: u64| d.workloads[&cg].view_id;
        assert_eq!(view(&d, 11), view(&d, 12), "same services: one view");
        assert_ne!(view(&d, 10), view(&d, 11), "shop sees its own entry too");
        let views: BTreeSet<u32> = d.services.keys().map(|k| k.view_id).collect();
        assert_eq!(views.len(), 2);
        // Another pod in a namespace already there: the same tables, shared.
        let mut more = pods.clone();
        more.push(workload(13, "team-a", "batch-2"));
        let d2 = compile(&more, &mut ids, &mut cache);
        assert!(Arc::ptr_eq(&d.services, &d2.services));
        assert_eq!(view(&d2, 13), view(&d, 11));
        // A new namespace is a new scope: compiled again (and it joins the
        // shared view).
        more.push(workload(14, "team-c", "api"));
        let d3 = compile(&more, &mut ids, &mut cache);
        assert!(!Arc::ptr_eq(&d.services, &d3.services));
        assert_eq!(view(&d3, 14), view(&d3, 11));
        assert_eq!(*d3.services, *d.services);
    }

    #[test]
    fn static_vips_share_one_weighted_backend_set_and_endpoints_are_allowed() {
        let mut ids = Ids::default();
        let d = compile(
            &config("REGISTRY_ONLY"),
            &registry(STATIC_SE),
            &[],
            &[workload(10, "shop", "web")],
            &Resolved::default(),
            &mut ids,
        );
        let wl = d.workloads[&10];
        assert_eq!(wl.flags, WL_REGISTRY_ONLY | WL_UDP);
        let key = |ip: &str, port| ServiceKey {
            addr: to_addr(ip.parse().unwrap()),
            view_id: wl.view_id,
            port,
            proto: PROTO_TCP,
            _pad: 0,
        };
        let v4 = &d.services[&key("240.240.1.1", 80)];
        let v6 = &d.services[&key("2001:2::1", 80)];
        assert_eq!(v4.kind, SVC_VIP);
        assert_eq!(v4.set, v6.set);
        let set = v4.set.as_ref().unwrap();
        assert_eq!(set.v4, 3, "weights 1 and 2 give three slots");
        assert!(set.slots.iter().all(|b| b.port == 8080));
        assert_eq!(
            set.slots
                .iter()
                .filter(|b| b.addr == to_addr("198.18.0.12".parse().unwrap()))
                .count(),
            2
        );
        assert_eq!(d.services[&key("198.18.0.11", 8080)].kind, SVC_ENDPOINT);
        assert!(!d.services.contains_key(&key("198.18.0.11", 80)));
        assert_eq!(ids.service_meta[&v4.service_id].host, "legacy.internal");
    }

    #[test]
    fn none_addresses_are_passthrough_cidrs_with_target_port() {
        let mut ids = Ids::default();
        let d = compile(
            &config("REGISTRY_ONLY"),
            &registry(
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partners, namespace: ops}
spec:
  hosts: [partners.example]
  addresses: [203.0.113.0/24, 192.0.2.9]
  ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}, {number: 53, name: dns, protocol: UDP}]
"#,
            ),
            &[],
            &[workload(10, "shop", "web")],
            &Resolved::default(),
            &mut ids,
        );
        // 2 addresses × (443, 53) declared, and 2 × 8443 for the packets of the
        // connections rewritten to targetPort.
        assert_eq!(d.cidrs.len(), 6);
        let packet_only: Vec<_> = d
            .cidrs
            .iter()
            .filter(|(_, t)| t.kind == CIDR_PACKET_ONLY)
            .map(|((_, k), _)| k.port)
            .collect();
        assert_eq!(packet_only, vec![8443, 8443]);
        let (prefix, key) = d
            .cidrs
            .keys()
            .find(|(p, k)| *p == CIDR_FIXED_BITS + 96 + 24 && k.port == 443)
            .unwrap();
        assert_eq!(*prefix, 64 + 120);
        assert_eq!(key.addr, to_addr("203.0.113.0".parse().unwrap()));
        assert_eq!(d.cidrs[&(*prefix, *key)].target_port, 8443);
        assert!(
            d.cidrs
                .keys()
                .any(|(p, k)| *p == 64 + 128 && k.proto == PROTO_UDP)
        );
    }

    #[test]
    fn export_to_limits_views() {
        let mut ids = Ids::default();
        let text = STATIC_SE.replace(
            "resolution: STATIC",
            "resolution: STATIC\n  exportTo: [shop]",
        );
        let d = compile(
            &config("ALLOW_ANY"),
            &registry(&text),
            &[],
            &[workload(10, "shop", "web"), workload(11, "other", "batch")],
            &Resolved::default(),
            &mut ids,
        );
        let shop = d.workloads[&10].view_id;
        let other = d.workloads[&11].view_id;
        assert_ne!(shop, other);
        assert!(d.services.keys().any(|k| k.view_id == shop));
        assert!(!d.services.keys().any(|k| k.view_id == other));
        assert_eq!(d.workloads[&11].flags, WL_UDP);
    }

    #[test]
    fn first_service_in_order_owns_a_shared_vip() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: ops, creationTimestamp: "2024-01-02T00:00:00Z"}
spec: {hosts: [b.example], addresses: [240.240.9.9], resolution: STATIC, ports: [{number: 80, name: p, protocol: TCP}], endpoints: [{address: 198.18.0.12}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: ops, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: [z.example], addresses: [240.240.9.9], resolution: STATIC, ports: [{number: 80, name: p, protocol: TCP}], endpoints: [{address: 198.18.0.11}]}
"#;
        let mut ids = Ids::default();
        let d = compile(
            &config("ALLOW_ANY"),
            &registry(text),
            &[],
            &[workload(1, "ops", "w")],
            &Resolved::default(),
            &mut ids,
        );
        let vip = d
            .services
            .iter()
            .find(|(k, _)| k.addr == to_addr("240.240.9.9".parse().unwrap()))
            .unwrap()
            .1;
        assert_eq!(
            ids.service_meta[&vip.service_id].host, "z.example",
            "the older entry wins"
        );
    }

    #[test]
    fn ids_are_stable_across_compiles() {
        let mut ids = Ids::default();
        let reg = registry(STATIC_SE);
        let a = compile(
            &config("ALLOW_ANY"),
            &reg,
            &[],
            &[workload(1, "ops", "w")],
            &Resolved::default(),
            &mut ids,
        );
        let b = compile(
            &config("ALLOW_ANY"),
            &reg,
            &[],
            &[workload(1, "ops", "w")],
            &Resolved::default(),
            &mut ids,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn weights_are_reduced_and_bounded() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let s = backend_set(vec![(ip("192.0.2.1"), 1, 50), (ip("192.0.2.2"), 1, 100)]);
        assert_eq!(s.slots.len(), 3);
        let s = backend_set(vec![(ip("192.0.2.1"), 1, 1), (ip("192.0.2.2"), 1, 100_000)]);
        assert!(s.slots.len() <= MAX_BACKEND_SLOTS as usize);
        assert!(s.slots.iter().any(|b| b.addr == to_addr(ip("192.0.2.1"))));
        let s = backend_set(vec![(ip("2001:db8::1"), 1, 1), (ip("192.0.2.2"), 1, 1)]);
        assert_eq!(s.v4, 1);
        assert_eq!(s.slots[0].addr, to_addr(ip("192.0.2.2")));
    }
}
