//! Applies a [`Desired`] state to the maps as a diff: only changed entries are
//! written, new entries go in before stale ones are deleted, and a changed backend
//! set is written under a new id and switched in by one write of the entry that
//! points at it. Never clear-and-reload.

use std::collections::HashMap;
use std::sync::Arc;

use egress_common::addr::Addr;
use egress_common::*;

use crate::dataplane::compile::{BackendSet, CidrLpm, Desired, PolicyLpm};

/// Writes to the policy maps. Implemented over aya maps by the loader, and in
/// memory by the tests.
pub trait MapWriter {
    fn put_workload(&mut self, k: u64, v: WorkloadValue) -> Result<(), SyncError>;
    fn del_workload(&mut self, k: u64) -> Result<(), SyncError>;
    fn put_service(&mut self, k: ServiceKey, v: ServiceValue) -> Result<(), SyncError>;
    fn del_service(&mut self, k: ServiceKey) -> Result<(), SyncError>;
    fn put_backend(&mut self, k: BackendKey, v: Backend) -> Result<(), SyncError>;
    fn del_backend(&mut self, k: BackendKey) -> Result<(), SyncError>;
    fn put_cidr(&mut self, k: CidrLpm, v: CidrValue) -> Result<(), SyncError>;
    fn del_cidr(&mut self, k: CidrLpm) -> Result<(), SyncError>;
    fn put_policy(&mut self, k: PolicyLpm, v: PolicyCidrValue) -> Result<(), SyncError>;
    fn del_policy(&mut self, k: PolicyLpm) -> Result<(), SyncError>;
    fn put_dns(&mut self, v: DnsConfig) -> Result<(), SyncError>;
    fn put_workload_ip(&mut self, k: Addr, v: WorkloadValue) -> Result<(), SyncError>;
    fn del_workload_ip(&mut self, k: Addr) -> Result<(), SyncError>;
    fn put_iface(&mut self, k: u32, v: IfaceValue) -> Result<(), SyncError>;
    fn del_iface(&mut self, k: u32) -> Result<(), SyncError>;
}

#[derive(Debug, thiserror::Error)]
#[error("{op} {map}: {reason}")]
pub struct SyncError {
    pub op: &'static str,
    pub map: &'static str,
    pub reason: String,
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub deleted: usize,
}

/// The entries known to be in the kernel, and the backend sets by content.
#[derive(Debug, Default)]
pub struct Syncer {
    workloads: HashMap<u64, WorkloadValue>,
    services: HashMap<ServiceKey, ServiceValue>,
    cidrs: HashMap<CidrLpm, CidrValue>,
    policy: HashMap<PolicyLpm, PolicyCidrValue>,
    sets: HashMap<Arc<BackendSet>, u32>,
    next_set: u32,
    dns: Option<DnsConfig>,
    workload_ips: HashMap<Addr, WorkloadValue>,
    ifaces: HashMap<u32, IfaceValue>,
    /// Backend entries found in the kernel that nothing points to (a sync an
    /// earlier agent did not finish, or sets only the previous programs still
    /// use through a map being migrated): deleted by the first sync after
    /// [`Syncer::release_orphans`].
    orphans: Vec<BackendKey>,
    orphans_held: bool,
    /// Endpoint entries no longer wanted, with when they stopped being wanted:
    /// deleted [`ENDPOINT_GRACE`] later ([`Syncer::retire`]) unless wanted again.
    retiring: Vec<(ServiceKey, std::time::Instant)>,
    /// The service and CIDR tables of the last complete sync: the same tables
    /// again (only workloads changed) are not compared entry by entry.
    synced_registry: Option<RegistryTables>,
}

type RegistryTables = (
    Arc<HashMap<ServiceKey, crate::dataplane::compile::ServiceTarget>>,
    Arc<HashMap<CidrLpm, crate::dataplane::compile::CidrTarget>>,
);

/// How long an endpoint entry outlives its last VIP: the packets of a
/// connection rewritten to it just before the change still pass the packet line.
pub const ENDPOINT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the kernel holds in the policy maps, read back when an agent adopts a
/// pinned dataplane.
#[derive(Debug, Default)]
pub struct KernelState {
    pub workloads: HashMap<u64, WorkloadValue>,
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: HashMap<BackendKey, Backend>,
    pub cidrs: HashMap<CidrLpm, CidrValue>,
    pub policy: HashMap<PolicyLpm, PolicyCidrValue>,
    pub dns: Option<DnsConfig>,
    pub workload_ips: HashMap<Addr, WorkloadValue>,
    pub ifaces: HashMap<u32, IfaceValue>,
}

impl KernelState {
    pub fn entries(&self) -> usize {
        self.workloads.len()
            + self.services.len()
            + self.backends.len()
            + self.cidrs.len()
            + self.policy.len()
            + self.workload_ips.len()
            + self.ifaces.len()
    }
}

impl Syncer {
    /// A syncer that knows `kernel` is in the maps: the next sync writes only
    /// what differs from it. Backend sets are rebuilt from the entries that point
    /// at them; set entries nothing points at are kept until the programs run on
    /// the new maps ([`Syncer::release_orphans`]).
    pub fn adopt(kernel: KernelState) -> Self {
        let mut s = Self::new();
        let mut refs: Vec<(u32, u16, u16)> = kernel
            .services
            .values()
            .map(|v| (v.set_id, v.slots, v.v4_slots))
            .chain(
                kernel
                    .cidrs
                    .values()
                    .map(|v| (v.set_id, v.slots, v.v4_slots)),
            )
            .filter(|(id, _, _)| *id != 0)
            .collect();
        refs.sort_unstable();
        refs.dedup();
        let mut used = std::collections::HashSet::new();
        for (id, slots, v4) in refs {
            let set: Option<Vec<Backend>> = (0..u32::from(slots))
                .map(|slot| {
                    kernel
                        .backends
                        .get(&BackendKey { set_id: id, slot })
                        .copied()
                })
                .collect();
            // A set referenced with two lengths cannot happen (sets are written
            // once under an id); keep the first reading.
            if let Some(slots) = set
                && used.insert(id)
            {
                s.sets.insert(Arc::new(BackendSet { slots, v4 }), id);
            }
            s.next_set = s.next_set.max(id + 1);
        }
        for k in kernel.backends.keys() {
            s.next_set = s.next_set.max(k.set_id + 1);
            if !used.contains(&k.set_id) {
                s.orphans.push(*k);
            }
        }
        s.workloads = kernel.workloads;
        s.services = kernel.services;
        s.cidrs = kernel.cidrs;
        s.policy = kernel.policy;
        s.dns = kernel.dns;
        s.workload_ips = kernel.workload_ips;
        s.ifaces = kernel.ifaces;
        s.orphans_held = true;
        s
    }

    /// Deletes the endpoint entries retired at least [`ENDPOINT_GRACE`] before
    /// `now` that no sync wanted again since.
    pub fn retire(
        &mut self,
        w: &mut impl MapWriter,
        now: std::time::Instant,
    ) -> Result<usize, SyncError> {
        let mut deleted = 0;
        let mut keep = Vec::new();
        for (k, since) in std::mem::take(&mut self.retiring) {
            if self.services.contains_key(&k) {
                continue;
            }
            if now.duration_since(since) < ENDPOINT_GRACE {
                keep.push((k, since));
                continue;
            }
            if let Err(e) = w.del_service(k) {
                keep.push((k, since));
                self.retiring.extend(keep);
                return Err(e);
            }
            deleted += 1;
        }
        self.retiring = keep;
        Ok(deleted)
    }

    /// The programs now read only the maps this syncer writes: backend entries
    /// nothing points at may go (next sync).
    pub fn release_orphans(&mut self) {
        self.orphans_held = false;
    }

    pub fn new() -> Self {
        Self {
            next_set: 1,
            ..Self::default()
        }
    }

    /// Number of entries per map, for gauges and logs.
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            (WORKLOADS_MAP, self.workloads.len()),
            (SERVICES_MAP, self.services.len()),
            (BACKENDS_MAP, self.sets.keys().map(|s| s.slots.len()).sum()),
            (CIDRS_MAP, self.cidrs.len()),
            (POLICY_CIDRS_MAP, self.policy.len()),
        ]
    }

    /// Brings the maps to `desired`. On error the maps hold a mix of old and new
    /// entries that is consistent entry by entry; the next sync completes the job.
    pub fn sync(
        &mut self,
        desired: &Desired,
        w: &mut impl MapWriter,
    ) -> Result<SyncStats, SyncError> {
        let mut st = SyncStats::default();
        let same_registry = self.synced_registry.take().is_some_and(|(s, c)| {
            Arc::ptr_eq(&s, &desired.services) && Arc::ptr_eq(&c, &desired.cidrs)
        });

        // 1. Backend sets first: every set a new entry points to exists before it.
        let mut wanted: Vec<&Arc<BackendSet>> = if same_registry {
            Vec::new()
        } else {
            desired
                .services
                .values()
                .filter_map(|t| t.set.as_ref())
                .chain(desired.cidrs.values().filter_map(|t| t.set.as_ref()))
                .collect()
        };
        wanted.sort_by_key(|s| Arc::as_ptr(s));
        wanted.dedup_by_key(|s| Arc::as_ptr(s));
        for set in wanted {
            if self.sets.contains_key(set) {
                continue;
            }
            let id = self.next_set;
            self.next_set += 1;
            for (slot, b) in set.slots.iter().enumerate() {
                w.put_backend(
                    BackendKey {
                        set_id: id,
                        slot: slot as u32,
                    },
                    *b,
                )?;
                st.written += 1;
            }
            self.sets.insert(set.clone(), id);
        }
        let set_ref = |set: &Option<Arc<BackendSet>>| -> (u32, u16, u16) {
            match set {
                Some(s) => (self.sets[s], s.slots.len() as u16, s.v4),
                None => (0, 0, 0),
            }
        };

        if self.dns != Some(desired.dns) {
            w.put_dns(desired.dns)?;
            self.dns = Some(desired.dns);
            st.written += 1;
        }

        // 2. Upserts, the workloads last so a new workload starts with its view.
        let mut policy_puts = Vec::new();
        for (k, v) in &desired.policy_cidrs {
            if self.policy.get(k) != Some(v) {
                policy_puts.push((*k, *v));
            }
        }
        let mut cidr_puts = Vec::new();
        let mut service_puts = Vec::new();
        if !same_registry {
            for (k, t) in desired.cidrs.iter() {
                let v = t.value(set_ref(&t.set));
                if self.cidrs.get(k) != Some(&v) {
                    cidr_puts.push((*k, v));
                }
            }
            for (k, t) in desired.services.iter() {
                let v = t.value(set_ref(&t.set));
                if self.services.get(k) != Some(&v) {
                    service_puts.push((*k, v));
                }
            }
        }
        self.services.reserve(service_puts.len());
        self.cidrs.reserve(cidr_puts.len());
        for (k, v) in policy_puts {
            w.put_policy(k, v)?;
            self.policy.insert(k, v);
            st.written += 1;
        }
        for (k, v) in cidr_puts {
            w.put_cidr(k, v)?;
            self.cidrs.insert(k, v);
            st.written += 1;
        }
        for (k, v) in service_puts {
            w.put_service(k, v)?;
            self.services.insert(k, v);
            st.written += 1;
        }
        for (k, v) in &desired.workloads {
            if self.workloads.get(k) != Some(v) {
                w.put_workload(*k, *v)?;
                self.workloads.insert(*k, *v);
                st.written += 1;
            }
        }
        for (k, v) in &desired.workload_ips {
            if self.workload_ips.get(k) != Some(v) {
                w.put_workload_ip(*k, *v)?;
                self.workload_ips.insert(*k, *v);
                st.written += 1;
            }
        }
        let gone: Vec<Addr> = self
            .workload_ips
            .keys()
            .filter(|k| !desired.workload_ips.contains_key(*k))
            .copied()
            .collect();
        for k in gone {
            w.del_workload_ip(k)?;
            self.workload_ips.remove(&k);
            st.deleted += 1;
        }
        for (k, v) in &desired.ifaces {
            if self.ifaces.get(k) != Some(v) {
                w.put_iface(*k, *v)?;
                self.ifaces.insert(*k, *v);
                st.written += 1;
            }
        }
        let gone: Vec<u32> = self
            .ifaces
            .keys()
            .filter(|k| !desired.ifaces.contains_key(*k))
            .copied()
            .collect();
        for k in gone {
            w.del_iface(k)?;
            self.ifaces.remove(&k);
            st.deleted += 1;
        }

        // 3. Deletions: workloads first (they stop being enforced), then entries
        // nobody wants, then backend sets nothing points to any more.
        let gone: Vec<u64> = self
            .workloads
            .keys()
            .filter(|k| !desired.workloads.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            w.del_workload(k)?;
            self.workloads.remove(&k);
            st.deleted += 1;
        }
        let gone: Vec<ServiceKey> = if same_registry {
            Vec::new()
        } else {
            self.services
                .keys()
                .filter(|k| !desired.services.contains_key(k))
                .copied()
                .collect()
        };
        for k in gone {
            let v = self.services.remove(&k).expect("known");
            if v.kind == SVC_ENDPOINT {
                // A connect() rewritten to this endpoint just before the switch
                // may still have its first packets on the way through the packet
                // line: the entry goes a moment later.
                self.retiring.push((k, std::time::Instant::now()));
                continue;
            }
            w.del_service(k)?;
            st.deleted += 1;
        }
        let gone: Vec<CidrLpm> = if same_registry {
            Vec::new()
        } else {
            self.cidrs
                .keys()
                .filter(|k| !desired.cidrs.contains_key(k))
                .copied()
                .collect()
        };
        for k in gone {
            w.del_cidr(k)?;
            self.cidrs.remove(&k);
            st.deleted += 1;
        }
        let gone: Vec<PolicyLpm> = self
            .policy
            .keys()
            .filter(|k| !desired.policy_cidrs.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            w.del_policy(k)?;
            self.policy.remove(&k);
            st.deleted += 1;
        }
        let unused: Vec<(Arc<BackendSet>, u32)> = if same_registry {
            Vec::new()
        } else {
            let in_use: std::collections::HashSet<u32> = self
                .services
                .values()
                .map(|v| v.set_id)
                .chain(self.cidrs.values().map(|v| v.set_id))
                .collect();
            self.sets
                .iter()
                .filter(|(_, id)| !in_use.contains(id))
                .map(|(s, id)| (s.clone(), *id))
                .collect()
        };
        for (set, id) in unused {
            for slot in 0..set.slots.len() {
                w.del_backend(BackendKey {
                    set_id: id,
                    slot: slot as u32,
                })?;
                st.deleted += 1;
            }
            self.sets.remove(&set);
        }
        while !self.orphans_held
            && let Some(k) = self.orphans.pop()
        {
            if let Err(e) = w.del_backend(k) {
                self.orphans.push(k);
                return Err(e);
            }
            st.deleted += 1;
        }
        self.synced_registry = Some((desired.services.clone(), desired.cidrs.clone()));
        Ok(st)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::dataplane::compile::{ServiceTarget, backend_set};
    use std::net::IpAddr;

    /// In-memory maps that also record the order of operations.
    #[derive(Default)]
    pub struct MemMaps {
        pub workloads: HashMap<u64, WorkloadValue>,
        pub services: HashMap<ServiceKey, ServiceValue>,
        pub backends: HashMap<BackendKey, Backend>,
        pub cidrs: HashMap<CidrLpm, CidrValue>,
        pub policy: HashMap<PolicyLpm, PolicyCidrValue>,
        pub log: Vec<String>,
    }

    impl MapWriter for MemMaps {
        fn put_workload(&mut self, k: u64, v: WorkloadValue) -> Result<(), SyncError> {
            self.log.push(format!("put workload {k}"));
            self.workloads.insert(k, v);
            Ok(())
        }
        fn del_workload(&mut self, k: u64) -> Result<(), SyncError> {
            self.log.push(format!("del workload {k}"));
            self.workloads.remove(&k);
            Ok(())
        }
        fn put_service(&mut self, k: ServiceKey, v: ServiceValue) -> Result<(), SyncError> {
            // A service must never point at a set that is not fully written.
            for slot in 0..v.slots as u32 {
                assert!(self.backends.contains_key(&BackendKey {
                    set_id: v.set_id,
                    slot
                }));
            }
            self.log.push(format!("put service {}", k.port));
            self.services.insert(k, v);
            Ok(())
        }
        fn del_service(&mut self, k: ServiceKey) -> Result<(), SyncError> {
            self.log.push(format!("del service {}", k.port));
            self.services.remove(&k);
            Ok(())
        }
        fn put_backend(&mut self, k: BackendKey, v: Backend) -> Result<(), SyncError> {
            self.log
                .push(format!("put backend {}/{}", k.set_id, k.slot));
            self.backends.insert(k, v);
            Ok(())
        }
        fn del_backend(&mut self, k: BackendKey) -> Result<(), SyncError> {
            // Nothing may still point at a set being deleted.
            assert!(!self.services.values().any(|s| s.set_id == k.set_id));
            self.log
                .push(format!("del backend {}/{}", k.set_id, k.slot));
            self.backends.remove(&k);
            Ok(())
        }
        fn put_cidr(&mut self, k: CidrLpm, v: CidrValue) -> Result<(), SyncError> {
            self.cidrs.insert(k, v);
            Ok(())
        }
        fn del_cidr(&mut self, k: CidrLpm) -> Result<(), SyncError> {
            self.cidrs.remove(&k);
            Ok(())
        }
        fn put_policy(&mut self, k: PolicyLpm, v: PolicyCidrValue) -> Result<(), SyncError> {
            self.policy.insert(k, v);
            Ok(())
        }
        fn del_policy(&mut self, k: PolicyLpm) -> Result<(), SyncError> {
            self.policy.remove(&k);
            Ok(())
        }
        fn put_dns(&mut self, _v: DnsConfig) -> Result<(), SyncError> {
            Ok(())
        }
        fn put_workload_ip(&mut self, _k: Addr, _v: WorkloadValue) -> Result<(), SyncError> {
            Ok(())
        }
        fn put_iface(&mut self, _k: u32, _v: IfaceValue) -> Result<(), SyncError> {
            Ok(())
        }
        fn del_iface(&mut self, _k: u32) -> Result<(), SyncError> {
            Ok(())
        }
        fn del_workload_ip(&mut self, _k: Addr) -> Result<(), SyncError> {
            Ok(())
        }
    }

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            addr: [1; 16],
            view_id: 1,
            port,
            proto: PROTO_TCP,
            _pad: 0,
        }
    }

    fn set(ips: &[&str]) -> Arc<BackendSet> {
        Arc::new(backend_set(
            ips.iter()
                .map(|s| (s.parse::<IpAddr>().unwrap(), 80, 1))
                .collect(),
        ))
    }

    fn desired(entries: &[(u16, Arc<BackendSet>)]) -> Desired {
        let mut d = Desired::default();
        d.workloads.insert(
            5,
            WorkloadValue {
                workload_id: 1,
                view_id: 1,
                flags: 0,
                _pad: 0,
            },
        );
        for (port, s) in entries {
            Arc::make_mut(&mut d.services).insert(
                key(*port),
                ServiceTarget {
                    service_id: 1,
                    kind: SVC_VIP,
                    set: Some(s.clone()),
                },
            );
        }
        d
    }

    /// What the in-memory maps hold, as an adopting agent reads it.
    fn kernel(m: &MemMaps) -> KernelState {
        KernelState {
            workloads: m.workloads.clone(),
            services: m.services.clone(),
            backends: m.backends.clone(),
            cidrs: m.cidrs.clone(),
            policy: m.policy.clone(),
            dns: Some(DnsConfig::default()),
            ..KernelState::default()
        }
    }

    #[test]
    fn adopted_state_equal_to_desired_writes_nothing() {
        let mut first = Syncer::new();
        let mut m = MemMaps::default();
        let d = desired(&[
            (80, set(&["192.0.2.1", "192.0.2.2"])),
            (81, set(&["192.0.2.3"])),
        ]);
        first.sync(&d, &mut m).unwrap();
        // A new agent adopts what the first one left in the kernel.
        let mut second = Syncer::adopt(kernel(&m));
        m.log.clear();
        let st = second.sync(&d, &mut m).unwrap();
        assert_eq!(st, SyncStats::default(), "{:?}", m.log);
        assert!(m.log.is_empty());
    }

    #[test]
    fn adopted_state_is_reconciled_as_a_diff() {
        let mut first = Syncer::new();
        let mut m = MemMaps::default();
        first
            .sync(
                &desired(&[(80, set(&["192.0.2.1"])), (81, set(&["192.0.2.3"]))]),
                &mut m,
            )
            .unwrap();
        let kept_set = m.services[&key(80)].set_id;
        let gone_set = m.services[&key(81)].set_id;
        // A backend set entry nothing points at (a crash mid-sync).
        m.backends.insert(
            BackendKey {
                set_id: 40,
                slot: 0,
            },
            m.backends[&BackendKey {
                set_id: kept_set,
                slot: 0,
            }],
        );
        let mut second = Syncer::adopt(kernel(&m));
        m.log.clear();
        // 81 goes, 82 comes, 80 stays as it is. The unreferenced set stays
        // until the programs are switched.
        second
            .sync(
                &desired(&[(80, set(&["192.0.2.1"])), (81, set(&["192.0.2.3"]))]),
                &mut m,
            )
            .unwrap();
        assert!(m.backends.contains_key(&BackendKey {
            set_id: 40,
            slot: 0
        }));
        assert!(m.log.is_empty(), "{:?}", m.log);
        second.release_orphans();
        let st = second
            .sync(
                &desired(&[(80, set(&["192.0.2.1"])), (82, set(&["192.0.2.4"]))]),
                &mut m,
            )
            .unwrap();
        assert_eq!(
            m.services[&key(80)].set_id,
            kept_set,
            "untouched entry kept"
        );
        let new_set = m.services[&key(82)].set_id;
        assert!(new_set > 40, "new set ids do not reuse adopted ones");
        assert_eq!(
            m.log,
            vec![
                format!("put backend {new_set}/0"),
                "put service 82".to_owned(),
                "del service 81".to_owned(),
                format!("del backend {gone_set}/0"),
                "del backend 40/0".to_owned(),
            ]
        );
        assert_eq!(st.written, 2);
        assert_eq!(st.deleted, 3);
        assert!(!m.backends.contains_key(&BackendKey {
            set_id: 40,
            slot: 0
        }));
    }

    #[test]
    fn endpoint_entries_outlive_their_vip_by_the_grace_period() {
        let mut s = Syncer::new();
        let mut m = MemMaps::default();
        let mut d = desired(&[(80, set(&["192.0.2.1"]))]);
        Arc::make_mut(&mut d.services).insert(
            key(8080),
            ServiceTarget {
                service_id: 1,
                kind: SVC_ENDPOINT,
                set: None,
            },
        );
        s.sync(&d, &mut m).unwrap();
        assert!(m.services.contains_key(&key(8080)));
        // The endpoint is no longer wanted: still there right after the sync...
        Arc::make_mut(&mut d.services).remove(&key(8080));
        s.sync(&d, &mut m).unwrap();
        let start = std::time::Instant::now();
        assert!(m.services.contains_key(&key(8080)));
        assert_eq!(s.retire(&mut m, start).unwrap(), 0);
        assert!(m.services.contains_key(&key(8080)));
        // ...and gone after the grace period.
        assert_eq!(s.retire(&mut m, start + ENDPOINT_GRACE).unwrap(), 1);
        assert!(!m.services.contains_key(&key(8080)));
        // Wanted again within the grace period: kept.
        Arc::make_mut(&mut d.services).insert(
            key(8080),
            ServiceTarget {
                service_id: 1,
                kind: SVC_ENDPOINT,
                set: None,
            },
        );
        s.sync(&d, &mut m).unwrap();
        Arc::make_mut(&mut d.services).remove(&key(8080));
        s.sync(&d, &mut m).unwrap();
        Arc::make_mut(&mut d.services).insert(
            key(8080),
            ServiceTarget {
                service_id: 1,
                kind: SVC_ENDPOINT,
                set: None,
            },
        );
        s.sync(&d, &mut m).unwrap();
        assert_eq!(s.retire(&mut m, start + 2 * ENDPOINT_GRACE).unwrap(), 0);
        assert!(m.services.contains_key(&key(8080)));
    }

    #[test]
    fn unchanged_state_writes_nothing() {
        let mut s = Syncer::new();
        let mut m = MemMaps::default();
        let d = desired(&[(80, set(&["192.0.2.1"]))]);
        let first = s.sync(&d, &mut m).unwrap();
        assert_eq!(first.written, 4, "backend, service, workload, DNS settings");
        m.log.clear();
        let again = s.sync(&d, &mut m).unwrap();
        assert_eq!(again, SyncStats::default());
        assert!(m.log.is_empty());
    }

    #[test]
    fn changed_set_is_written_under_a_new_id_then_switched_then_old_deleted() {
        let mut s = Syncer::new();
        let mut m = MemMaps::default();
        s.sync(&desired(&[(80, set(&["192.0.2.1"]))]), &mut m)
            .unwrap();
        let old_id = m.services[&key(80)].set_id;
        m.log.clear();
        s.sync(&desired(&[(80, set(&["192.0.2.1", "192.0.2.2"]))]), &mut m)
            .unwrap();
        let new_id = m.services[&key(80)].set_id;
        assert_ne!(old_id, new_id);
        assert_eq!(
            m.log,
            vec![
                format!("put backend {new_id}/0"),
                format!("put backend {new_id}/1"),
                "put service 80".to_owned(),
                format!("del backend {old_id}/0"),
            ]
        );
        assert_eq!(m.backends.len(), 2);
    }

    #[test]
    fn equal_sets_are_shared_and_removal_cleans_up() {
        let mut s = Syncer::new();
        let mut m = MemMaps::default();
        let shared = set(&["192.0.2.1"]);
        s.sync(
            &desired(&[(80, shared.clone()), (81, set(&["192.0.2.1"]))]),
            &mut m,
        )
        .unwrap();
        assert_eq!(m.services[&key(80)].set_id, m.services[&key(81)].set_id);
        assert_eq!(m.backends.len(), 1);
        let mut empty = desired(&[]);
        empty.workloads.clear();
        let st = s.sync(&empty, &mut m).unwrap();
        assert_eq!(st.deleted, 4);
        assert!(m.services.is_empty() && m.backends.is_empty() && m.workloads.is_empty());
        assert_eq!(m.log.last().unwrap(), "del backend 1/0");
    }
}
