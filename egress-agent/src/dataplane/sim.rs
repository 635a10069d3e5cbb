//! The compiled maps in memory, answering lookups as the kernel would: what
//! `explain` walks (noting each lookup) and what revocation judges real sockets
//! with, through the same `decide::classify` the programs run.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use egress_common::addr::{Addr, from_addr, is_v4_mapped};
use egress_common::decide::Dataplane;
use egress_common::*;

use crate::dataplane::compile::{BackendSet, Desired};
use crate::telemetry::catalog::Catalog;

/// The compiled maps in memory, answering like the kernel and noting each lookup.
pub struct Sim<'a> {
    pub desired: &'a Desired,
    sets: Vec<Arc<BackendSet>>,
    pub set_ids: HashMap<Arc<BackendSet>, u32>,
    cgroup: u64,
    catalog: &'a Catalog,
    /// Each lookup, in words (for `explain`).
    pub trace: RefCell<Vec<String>>,
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
    pub fn judge(
        &mut self,
        cgroup: u64,
        c: &egress_common::decide::Connect,
    ) -> Result<egress_common::decide::Outcome, egress_common::decide::Error> {
        self.cgroup = cgroup;
        let out = egress_common::decide::classify(self, c);
        self.trace.get_mut().clear();
        out
    }

    pub fn new(desired: &'a Desired, cgroup: u64, catalog: &'a Catalog) -> Self {
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
    pub fn with_learned(mut self, learned: &'a HashMap<LearnedKey, LearnedValue>) -> Self {
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

    pub fn describe_set(&self, set_id: u32) -> String {
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
pub fn sock(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

pub fn proto_name(p: u8) -> &'static str {
    if p == PROTO_UDP { "udp" } else { "tcp" }
}
