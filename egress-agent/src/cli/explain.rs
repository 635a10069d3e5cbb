//! `egress-agent explain`: the classification of one connection (SPEC §7.3–7.4),
//! step by step, computed by the same `decide::classify` the kernel runs, over the
//! same compiled entries the agent would write to the maps.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use egress_common::addr::{Addr, from_addr, is_v4_mapped, to_addr};
use egress_common::decide::{self, Connect, Dataplane, Outcome};
use egress_common::*;

use crate::config::Config;
use crate::dataplane::catalog::Catalog;
use crate::dataplane::compile::{BackendSet, Desired, Ids, compile};
use crate::dataplane::workloads::Workload;
use crate::istio;
use crate::registry::model::Transport;
use crate::registry::pipeline::{Registry, build_registry, validation_context};
use crate::registry::scope::{select_sidecar, view};
use crate::registry::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("--from {0:?}: expected NAMESPACE/WORKLOAD")]
    From(String),
    #[error("--to {0:?}: expected HOST_OR_IP:PORT or HOST_OR_IP:PORT/udp")]
    To(String),
    #[error("no workload {0} in {1}")]
    NoWorkload(String, String),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed `--to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

pub fn parse_target(s: &str) -> Result<Target, ExplainError> {
    let err = || ExplainError::To(s.to_owned());
    let (rest, transport) = match s.rsplit_once('/') {
        Some((r, "udp")) => (r, Transport::Udp),
        Some((r, "tcp")) => (r, Transport::Tcp),
        Some(_) => return Err(err()),
        None => (s, Transport::Tcp),
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(err)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| err())?;
    if host.is_empty() {
        return Err(err());
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        transport,
    })
}

/// The compiled maps in memory, answering like the kernel and noting each lookup.
pub(crate) struct Sim<'a> {
    desired: &'a Desired,
    sets: Vec<Arc<BackendSet>>,
    set_ids: HashMap<Arc<BackendSet>, u32>,
    cgroup: u64,
    catalog: &'a Catalog,
    trace: RefCell<Vec<String>>,
    /// The live learned table, when judging real sockets (revocation).
    learned: Option<&'a HashMap<LearnedKey, LearnedValue>>,
}

fn masked(a: &Addr, bits: u32) -> Addr {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        *b = a[i] & mask;
    }
    out
}

fn show_prefix(a: &Addr, bits_on_v6: u32) -> String {
    if is_v4_mapped(a) {
        format!("{}/{}", from_addr(a), bits_on_v6.saturating_sub(96))
    } else {
        format!("{}/{}", from_addr(a), bits_on_v6)
    }
}

impl<'a> Sim<'a> {
    /// How the kernel would classify `c` from the cgroup `cgroup` (no notes kept).
    pub(crate) fn judge(
        &mut self,
        cgroup: u64,
        c: &egress_common::decide::Connect,
    ) -> Result<egress_common::decide::Outcome, egress_common::decide::Error> {
        self.cgroup = cgroup;
        let out = egress_common::decide::classify(self, c);
        self.trace.get_mut().clear();
        out
    }

    pub(crate) fn new(desired: &'a Desired, cgroup: u64, catalog: &'a Catalog) -> Self {
        let mut sets = Vec::new();
        let mut set_ids = HashMap::new();
        let all = desired
            .services
            .values()
            .filter_map(|t| t.set.clone())
            .chain(desired.cidrs.values().filter_map(|t| t.set.clone()));
        for s in all {
            if let std::collections::hash_map::Entry::Vacant(e) = set_ids.entry(s) {
                sets.push(e.key().clone());
                e.insert(sets.len() as u32);
            }
        }
        Self {
            desired,
            sets,
            set_ids,
            cgroup,
            catalog,
            trace: RefCell::new(Vec::new()),
            learned: None,
        }
    }

    /// Answers learned-table lookups from `learned` (entries count whatever
    /// their expiry: a TTL ending is no reason to revoke).
    pub(crate) fn with_learned(mut self, learned: &'a HashMap<LearnedKey, LearnedValue>) -> Self {
        self.learned = Some(learned);
        self
    }

    fn note(&self, s: String) {
        self.trace.borrow_mut().push(s);
    }

    fn service_name(&self, id: u32) -> String {
        self.catalog
            .service(id)
            .map(|s| {
                format!(
                    "{} (namespace {}, ServiceEntry {})",
                    s.host, s.namespace, s.se_name
                )
            })
            .unwrap_or_else(|| format!("service #{id}"))
    }

    fn set_ref(&self, set: &Option<Arc<BackendSet>>) -> (u32, u16, u16) {
        match set {
            Some(s) => (self.set_ids[s], s.slots.len() as u16, s.v4),
            None => (0, 0, 0),
        }
    }

    fn describe_set(&self, set_id: u32) -> String {
        let Some(set) = self.sets.get(set_id.wrapping_sub(1) as usize) else {
            return "no backends".into();
        };
        let mut counts: Vec<(String, usize)> = Vec::new();
        for b in &set.slots {
            let name = match from_addr(&b.addr) {
                IpAddr::V6(v6) => format!("[{v6}]:{}", b.port),
                v4 => format!("{v4}:{}", b.port),
            };
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        let total = set.slots.len();
        counts
            .iter()
            .map(|(n, c)| {
                if counts.len() > 1 {
                    format!("{n} ({c}/{total} of picks)")
                } else {
                    n.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Dataplane for Sim<'_> {
    fn current_cgroup_id(&self) -> u64 {
        self.cgroup
    }

    fn ancestor_cgroup_id(&self, _level: u32) -> u64 {
        0
    }

    fn workload(&self, cgroup_id: u64) -> Option<WorkloadValue> {
        let w = self.desired.workloads.get(&cgroup_id).copied();
        if let Some(w) = w {
            let mode = if w.flags & WL_REGISTRY_ONLY != 0 {
                "REGISTRY_ONLY"
            } else {
                "ALLOW_ANY"
            };
            let audit = if w.flags & WL_AUDIT != 0 {
                ", audit mode"
            } else {
                ""
            };
            self.note(format!(
                "workload: enforced; view {} ({}), policy {mode}{audit}",
                w.view_id,
                self.catalog
                    .views
                    .get(&w.view_id)
                    .cloned()
                    .unwrap_or_default()
            ));
        }
        w
    }

    fn policy_cidr(&self, addr: &Addr) -> Option<PolicyCidrValue> {
        let hit = self
            .desired
            .policy_cidrs
            .iter()
            .filter(|((bits, k), _)| masked(addr, *bits) == k.addr)
            .max_by_key(|((bits, _), _)| *bits);
        match hit {
            Some(((bits, k), v)) => {
                let what = if v.kind == POLICY_EXCLUDED {
                    "excluded"
                } else {
                    "cluster-internal"
                };
                self.note(format!(
                    "excluded/cluster CIDRs: in {} ({what})",
                    show_prefix(&k.addr, *bits)
                ));
                Some(*v)
            }
            None => {
                self.note("excluded/cluster CIDRs: no match".into());
                None
            }
        }
    }

    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        let dest = format!(
            "{}/{}",
            sock(from_addr(&key.addr), key.port),
            proto_name(key.proto)
        );
        match self.desired.services.get(key) {
            Some(t) => {
                let (set_id, slots, v4_slots) = self.set_ref(&t.set);
                let what = if t.kind == SVC_VIP {
                    format!(
                        "a VIP of {}; backends: {}",
                        self.service_name(t.service_id),
                        self.describe_set(set_id)
                    )
                } else {
                    format!(
                        "an endpoint of {}: not a registry address (SPEC §7.3), so a \
                         direct connect() is judged by the steps below; its packets may \
                         go there when a VIP is rewritten to it",
                        self.service_name(t.service_id)
                    )
                };
                self.note(format!("VIP/endpoint table: {dest} is {what}"));
                Some(t.value((set_id, slots, v4_slots)))
            }
            None => {
                self.note(format!("VIP/endpoint table: {dest} not in this view"));
                None
            }
        }
    }

    fn cidr(&self, key: &CidrKey) -> Option<CidrValue> {
        let hit = self
            .desired
            .cidrs
            .iter()
            .filter(|((bits, k), _)| {
                k.view_id == key.view_id
                    && k.port == key.port
                    && k.proto == key.proto
                    && masked(&key.addr, bits - CIDR_FIXED_BITS) == k.addr
            })
            .max_by_key(|((bits, _), _)| *bits);
        match hit {
            Some(((bits, k), t)) => {
                let (set_id, slots, v4_slots) = self.set_ref(&t.set);
                let how = if t.kind == CIDR_BALANCE {
                    format!("balanced to {}", self.describe_set(set_id))
                } else if t.target_port != 0 {
                    format!("passed through with port rewritten to {}", t.target_port)
                } else {
                    "passed through as-is".into()
                };
                self.note(format!(
                    "CIDR table: in {} of {}, {how}",
                    show_prefix(&k.addr, bits - CIDR_FIXED_BITS),
                    self.service_name(t.service_id)
                ));
                Some(t.value((set_id, slots, v4_slots)))
            }
            None => {
                self.note("CIDR table: no match".into());
                None
            }
        }
    }

    fn dns(&self) -> Option<DnsConfig> {
        (self.desired.dns.flags & DNS_CAPTURE != 0).then_some(self.desired.dns)
    }

    fn learned(&self, key: &LearnedKey) -> Option<LearnedValue> {
        if let Some(table) = self.learned {
            return table.get(key).map(|v| LearnedValue {
                expires_ns: u64::MAX,
                ..*v
            });
        }
        self.note(
            "learned table: depends on this workload's live DNS answers (see `inspect`); \
             assumed not learned"
                .into(),
        );
        None
    }

    fn workload_by_ip(&self, addr: &Addr) -> Option<WorkloadValue> {
        self.desired.workload_ips.get(addr).copied()
    }

    fn backend(&self, key: &BackendKey) -> Option<Backend> {
        self.sets
            .get(key.set_id.wrapping_sub(1) as usize)
            .and_then(|s| s.slots.get(key.slot as usize))
            .copied()
    }
}

/// `ip:port`, with IPv6 in brackets.
fn sock(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

fn proto_name(p: u8) -> &'static str {
    if p == PROTO_UDP { "udp" } else { "tcp" }
}

/// Explains a connection from workload `from` (`namespace/name`) to `to`.
pub fn explain(config: &Config, from: &str, to: &str) -> Result<String, ExplainError> {
    let (ns, name) = from
        .split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| ExplainError::From(from.to_owned()))?;
    let target = parse_target(to)?;
    let mut store = Store::default();
    let docs = istio::load_dir(&config.service_entry_dir).map_err(|source| ExplainError::Read {
        path: config.service_entry_dir.clone(),
        source,
    })?;
    let load = store.load(&docs, &validation_context(config));
    let remembered = crate::registry::alloc::load_remembered(&config.vip_state_file());
    let (registry, _) = build_registry(config, &store, &remembered);

    // Every configured workload, with stand-in cgroup ids: views come out as the
    // agent builds them.
    let workloads: Vec<Workload> = config
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| Workload {
            cgroup_id: i as u64 + 1,
            config: w.clone(),
            iface: None,
        })
        .collect();
    let me = workloads
        .iter()
        .find(|w| w.config.namespace == ns && w.config.name == name)
        .ok_or_else(|| {
            ExplainError::NoWorkload(from.to_owned(), config.path.display().to_string())
        })?;
    let mut ids = Ids::default();
    // Resolve DNS endpoints now, as the agent would.
    let resolved = resolve_now(config, &registry);
    let desired = compile(
        config,
        &registry.services,
        &registry.sidecars,
        &workloads,
        &resolved,
        &mut ids,
    );
    let catalog = Catalog::from_ids(&ids);

    let mut out = String::new();
    let sidecar = select_sidecar(
        &registry.sidecars,
        ns,
        &me.config.labels,
        &config.root_namespace,
    );
    let _ = writeln!(
        out,
        "from: {ns}/{name} (cgroup {}), Sidecar: {}",
        me.config.cgroup.display(),
        sidecar.map_or("none (all visible services)".into(), |s| format!(
            "{}/{}",
            s.namespace, s.name
        ))
    );
    let _ = writeln!(
        out,
        "to:   {}:{}/{}",
        target.host,
        target.port,
        target.transport.as_str()
    );
    let _ = writeln!(
        out,
        "registry: {} resources loaded, {} rejected, {} stale",
        load.counts.loaded, load.counts.rejected, load.counts.stale
    );

    let ips: Vec<IpAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => dns_answer(&mut out, config, &registry, ns, sidecar, &target.host),
    };
    for ip in ips {
        let _ = writeln!(
            out,
            "\nconnect({}/{}):",
            sock(ip, target.port),
            target.transport.as_str()
        );
        let sim = Sim::new(&desired, me.cgroup_id, &catalog);
        let c = Connect {
            addr: to_addr(ip),
            port: target.port,
            proto: target.transport.proto(),
            v4_socket: ip.is_ipv4(),
            random: 0,
            now_ns: 0,
            udp_connect: false,
        };
        let result = decide::classify(&sim, &c);
        for (i, step) in sim.trace.borrow().iter().enumerate() {
            let _ = writeln!(out, "  {}. {step}", i + 1);
        }
        let verdict = match result {
            Ok(Outcome::Untouched) => {
                "untouched (excluded destination, or DNS to the agent's proxy)".to_owned()
            }
            Ok(Outcome::Dns(b)) => format!(
                "DNS query: redirected to the agent's DNS proxy at {}",
                sock(from_addr(&b.addr), b.port)
            ),
            Err(e) => format!("program error ({e:?}): the failure verdict applies"),
            Ok(Outcome::Decided(d)) => {
                let what = match d.action {
                    Action::Allow => "allowed as-is".to_owned(),
                    Action::Rewrite => {
                        let sv = sim.desired.services.get(&ServiceKey {
                            addr: c.addr,
                            view_id: d.workload.view_id,
                            port: c.port,
                            proto: c.proto,
                            _pad: 0,
                        });
                        match sv.and_then(|t| t.set.as_ref()) {
                            Some(set) => format!(
                                "rewritten to one of {}, picked at random per connection",
                                sim.describe_set(sim.set_ids[set])
                            ),
                            None => format!(
                                "rewritten to {}:{}",
                                from_addr(&d.backend.addr),
                                d.backend.port
                            ),
                        }
                    }
                    Action::Deny => "DENIED: connect() fails with EPERM".to_owned(),
                    Action::Audit => {
                        "allowed by audit mode (would be denied); logged as audit".to_owned()
                    }
                };
                let service = if d.service_id == 0 {
                    match d.reason {
                        Reason::AllowAny => "PassthroughCluster".to_owned(),
                        Reason::ClusterInternal => "cluster-internal".to_owned(),
                        _ => "BlackHoleCluster".to_owned(),
                    }
                } else {
                    catalog
                        .service(d.service_id)
                        .map_or_else(String::new, |s| s.host.clone())
                };
                format!(
                    "{what}\n  destination_service={service} match={} reason={}",
                    d.matched.label(),
                    d.reason.label()
                )
            }
        };
        let _ = writeln!(out, "  verdict: {verdict}");
    }
    Ok(out)
}

/// One resolution round of every DNS endpoint name (empty when it fails).
fn resolve_now(config: &Config, registry: &Registry) -> crate::dns::resolver::Resolved {
    use crate::dns::resolver::{HickoryResolve, Tracker};
    let names = crate::dataplane::compile::dns_names(&registry.services);
    if names.is_empty() {
        return Default::default();
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Default::default();
    };
    rt.block_on(async {
        let Ok(r) = HickoryResolve::new(&config.resolver.upstream, config.resolver.timeout) else {
            return Default::default();
        };
        let mut t = Tracker::new(config.resolver.settings);
        t.set_names(&names, std::time::Instant::now());
        let metrics = crate::telemetry::metrics::Metrics::new();
        crate::dns::resolver::refresh(&r, &mut t, &metrics).await;
        t.resolved()
    })
}

/// What the agent's DNS proxy would answer for `host` in this view (SPEC §7.5).
fn dns_answer(
    out: &mut String,
    config: &Config,
    registry: &Registry,
    ns: &str,
    sidecar: Option<&crate::registry::scope::SidecarScope>,
    host: &str,
) -> Vec<IpAddr> {
    let key = crate::registry::host_key(host);
    let in_view = view(&registry.services, ns, sidecar, &config.default_export_to);
    let exact = in_view.iter().find(|(s, _)| s.host_key == key);
    match exact {
        Some((s, _)) => {
            let vips: Vec<IpAddr> = s.effective_vips().copied().collect();
            if vips.is_empty() {
                let _ = writeln!(
                    out,
                    "DNS: {host} is {} in namespace {} ({} resolution, no VIP): the query goes upstream",
                    s.host,
                    s.namespace,
                    s.resolution.as_str()
                );
            } else {
                let list: Vec<String> = vips.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "DNS: {host} is a host of namespace {} ({}): the agent answers {}",
                    s.namespace,
                    s.resolution.as_str(),
                    list.join(", ")
                );
            }
            vips
        }
        None => {
            let _ = writeln!(
                out,
                "DNS: {host} is not a host in this workload's view: the query goes upstream, and \
                 connections to the answer are classified by address"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("api.example.com:443").unwrap(),
            Target {
                host: "api.example.com".into(),
                port: 443,
                transport: Transport::Tcp
            }
        );
        assert_eq!(
            parse_target("[2001:2::1]:53/udp").unwrap().host,
            "2001:2::1"
        );
        assert_eq!(
            parse_target("10.0.0.1:53/udp").unwrap().transport,
            Transport::Udp
        );
        assert!(parse_target("nohost").is_err());
        assert!(parse_target("a:1/sctp").is_err());
    }
}
