//! Loads the eBPF object into the kernel, hands out its maps, attaches the cgroup
//! programs, and detaches them when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::{
    Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
};
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt,
    LsmCgroup, SchedClassifier, SockOps, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};
use egress_common::addr::Addr;
use egress_common::*;

use crate::compile::{CidrLpm, PolicyLpm};
use crate::sync::{MapWriter, SyncError};

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress.bpf.o"));

/// TC programs: counted on the host side of each workload's veth.
pub const TC_SENT: &str = "egress_tc_sent";
pub const TC_RECEIVED: &str = "egress_tc_received";

/// The cgroup programs, all attached at the configured cgroup.
pub const PROGRAMS: &[&str] = &[
    "egress_connect4",
    "egress_connect6",
    "egress_getpeername4",
    "egress_getpeername6",
    "egress_sendmsg4",
    "egress_sendmsg6",
    "egress_recvmsg4",
    "egress_recvmsg6",
];

/// The second line (THREAT-MODEL.md), attached at the same cgroup: `socket()` of
/// AF_INET/AF_INET6, `setsockopt()`, accepted sockets, every packet of a socket.
pub const SOCK_CREATE: &str = "egress_sock_create";
pub const SETSOCKOPT: &str = "egress_setsockopt";
pub const SOCK_OPS: &str = "egress_sock_ops";
pub const SKB_EGRESS: &str = "egress_skb_egress";
/// Other families (AF_PACKET) through the per-cgroup BPF LSM.
pub const LSM_SOCKET_CREATE: &str = "egress_socket_create";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("pinning {}: {reason}", path.display())]
    Pin { path: PathBuf, reason: String },
    #[error("opening cgroup {}: {source}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The policy maps, written only by the sync step.
pub struct PolicyMaps {
    workloads: HashMap<MapData, u64, WorkloadValue>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    cidrs: LpmTrie<MapData, CidrKey, CidrValue>,
    policy: LpmTrie<MapData, IpKey, PolicyCidrValue>,
    dns: Array<MapData, DnsConfig>,
    workload_ips: HashMap<MapData, Addr, WorkloadValue>,
    ifaces: HashMap<MapData, u32, IfaceValue>,
}

/// The learned-destination map, written by the DNS proxy alone.
pub type LearnedMap = HashMap<MapData, LearnedKey, LearnedValue>;

/// The maps the programs write, read by the telemetry tasks.
pub struct TelemetryMaps {
    pub stats: PerCpuHashMap<MapData, StatKey, u64>,
    pub counters: PerCpuArray<MapData, u64>,
    pub events: RingBuf<MapData>,
    pub learned: LearnedMap,
    pub traffic: PerCpuHashMap<MapData, TrafficKey, TrafficValue>,
    pub rate: PerCpuHashMap<MapData, u32, RateBucket>,
}

/// A loaded (not yet attached) set of programs. Dropping it detaches everything
/// and removes the pins.
pub struct Loaded {
    ebpf: Ebpf,
    attached_at: Option<PathBuf>,
    pin_path: Option<PathBuf>,
    /// Interfaces with counters attached: name → (ifindex, sent link, received link).
    tc: std::collections::BTreeMap<String, (u32, SchedClassifierLinkId, SchedClassifierLinkId)>,
    /// The per-cgroup BPF LSM program loaded (the kernel runs the BPF LSM).
    lsm: bool,
    /// Maps only pinned (for inspect), never written by the agent.
    _pinned: Vec<aya::maps::Map>,
}

/// Settings fixed at load time.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub fail_open: bool,
    /// Access-log rate limit: nanoseconds per event, and burst credit.
    pub event_interval_ns: u64,
    pub event_burst_ns: u64,
    /// Pin every map in this directory (for `egress-agent inspect`).
    pub pin_path: Option<PathBuf>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str, pin: Option<&Path>) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    if let Some(dir) = pin {
        map.pin(dir.join(name)).map_err(|e| LoadError::Pin {
            path: dir.join(name),
            reason: e.to_string(),
        })?;
    }
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// Removes the pin files of `dir` (ours from an earlier run, or this run's),
/// the directory, and its parent (`pinDir`) when no other instance uses it.
fn unpin_all(dir: &Path) {
    for name in ALL_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        // Fails, as it should, while another instance's pins are there.
        let _ = std::fs::remove_dir(parent);
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(dir) = &self.pin_path {
            unpin_all(dir);
        }
    }
}

/// Loads the programs and maps into the kernel.
pub fn load(opts: LoadOptions) -> Result<(Loaded, PolicyMaps, TelemetryMaps), LoadError> {
    let pin_path = opts.pin_path.clone();
    let loaded = load_pinned(opts);
    if loaded.is_err()
        && let Some(dir) = &pin_path
    {
        // Nothing half-pinned is left behind by a start that failed.
        unpin_all(dir);
    }
    loaded
}

fn load_pinned(opts: LoadOptions) -> Result<(Loaded, PolicyMaps, TelemetryMaps), LoadError> {
    let fail_open = u8::from(opts.fail_open);
    let pin = opts.pin_path.as_deref();
    if let Some(dir) = pin {
        unpin_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| LoadError::Pin {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
    }
    let interval = opts.event_interval_ns.max(1);
    let burst = opts.event_burst_ns.max(interval);
    let mut ebpf = EbpfLoader::new()
        .override_global("FAIL_OPEN", &fail_open, true)
        .override_global("EVENT_INTERVAL_NS", &interval, true)
        .override_global("EVENT_BURST_NS", &burst, true)
        .load(EBPF_OBJECT)?;
    for name in [TC_SENT, TC_RECEIVED] {
        program::<SchedClassifier>(&mut ebpf, name)?
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    for name in PROGRAMS {
        program::<CgroupSockAddr>(&mut ebpf, name)?
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    with_program::<CgroupSock>(&mut ebpf, SOCK_CREATE, |p| p.load())?;
    with_program::<CgroupSockopt>(&mut ebpf, SETSOCKOPT, |p| p.load())?;
    with_program::<SockOps>(&mut ebpf, SOCK_OPS, |p| p.load())?;
    with_program::<CgroupSkb>(&mut ebpf, SKB_EGRESS, |p| p.load())?;
    let lsm = load_lsm(&mut ebpf);
    let mut pinned = Vec::new();
    for name in [INBOUND_MAP, FRAGS_MAP, NEIGH_MAP] {
        let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
        if let Some(dir) = pin {
            map.pin(dir.join(name)).map_err(|e| LoadError::Pin {
                path: dir.join(name),
                reason: e.to_string(),
            })?;
        }
        pinned.push(map);
    }
    let policy = PolicyMaps {
        workloads: take(&mut ebpf, WORKLOADS_MAP, pin)?,
        services: take(&mut ebpf, SERVICES_MAP, pin)?,
        backends: take(&mut ebpf, BACKENDS_MAP, pin)?,
        cidrs: take(&mut ebpf, CIDRS_MAP, pin)?,
        policy: take(&mut ebpf, POLICY_CIDRS_MAP, pin)?,
        dns: take(&mut ebpf, DNS_MAP, pin)?,
        workload_ips: take(&mut ebpf, WORKLOAD_IPS_MAP, pin)?,
        ifaces: take(&mut ebpf, IFACES_MAP, pin)?,
    };
    let telemetry = TelemetryMaps {
        stats: take(&mut ebpf, STATS_MAP, pin)?,
        counters: take(&mut ebpf, COUNTERS_MAP, pin)?,
        events: take(&mut ebpf, EVENTS_MAP, pin)?,
        learned: take(&mut ebpf, LEARNED_MAP, pin)?,
        traffic: take(&mut ebpf, TRAFFIC_MAP, pin)?,
        rate: take(&mut ebpf, RATE_MAP, pin)?,
    };
    Ok((
        Loaded {
            ebpf,
            attached_at: None,
            pin_path: opts.pin_path.clone(),
            tc: Default::default(),
            lsm,
            _pinned: pinned,
        },
        policy,
        telemetry,
    ))
}

impl Loaded {
    /// Attaches every program at the cgroup directory `path` as a BPF link. Links
    /// always coexist with other programs attached there (the kernel rejects the
    /// multi-attach flag on link creation: the default mode is the right one).
    pub fn attach(&mut self, path: &Path) -> Result<(), LoadError> {
        let cgroup = File::open(path).map_err(|source| LoadError::Cgroup {
            path: path.to_owned(),
            source,
        })?;
        // The second line first: by the time connect() is judged, sockets are
        // already tagged and packets already checked.
        let single = CgroupAttachMode::Single;
        let ebpf = &mut self.ebpf;
        with_program::<SockOps>(ebpf, SOCK_OPS, |p| p.attach(&cgroup, single).map(drop))?;
        with_program::<CgroupSkb>(ebpf, SKB_EGRESS, |p| {
            p.attach(&cgroup, CgroupSkbAttachType::Egress, single)
                .map(drop)
        })?;
        with_program::<CgroupSockopt>(ebpf, SETSOCKOPT, |p| p.attach(&cgroup, single).map(drop))?;
        with_program::<CgroupSock>(ebpf, SOCK_CREATE, |p| p.attach(&cgroup, single).map(drop))?;
        if self.lsm {
            with_program::<LsmCgroup>(ebpf, LSM_SOCKET_CREATE, |p| p.attach(&cgroup).map(drop))?;
        }
        for name in PROGRAMS {
            program::<CgroupSockAddr>(&mut self.ebpf, name)?
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program { name, source })?;
        }
        self.attached_at = Some(path.to_owned());
        Ok(())
    }

    /// AF_PACKET and other non-IP families are refused at `socket()`.
    pub fn refuses_packet_sockets(&self) -> bool {
        self.lsm
    }

    pub fn attached_at(&self) -> Option<&Path> {
        self.attached_at.as_deref()
    }

    /// Keeps the traffic counters attached to exactly `interfaces` (those that
    /// exist): attaches to new or re-created ones, detaches from the others.
    /// Returns the interfaces that could not be attached, with the reason.
    pub fn sync_tc(&mut self, interfaces: &[String]) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let current: Vec<String> = self.tc.keys().cloned().collect();
        for name in current {
            let index = ifindex(&name);
            if !interfaces.contains(&name) || index != Some(self.tc[&name].0) {
                let (_, sent, received) = self.tc.remove(&name).expect("present");
                // A vanished interface took its links with it; detach errors
                // then only say so.
                let _ = self.classifier(TC_SENT).detach(sent);
                let _ = self.classifier(TC_RECEIVED).detach(received);
            }
        }
        for name in interfaces {
            if self.tc.contains_key(name) {
                continue;
            }
            let Some(index) = ifindex(name) else {
                failed.push((name.clone(), "no such interface (yet)".to_owned()));
                continue;
            };
            let sent = self.classifier(TC_SENT).attach(name, TcAttachType::Ingress);
            let received = self
                .classifier(TC_RECEIVED)
                .attach(name, TcAttachType::Egress);
            match (sent, received) {
                (Ok(s), Ok(r)) => {
                    self.tc.insert(name.clone(), (index, s, r));
                }
                (s, r) => {
                    if let Ok(s) = s {
                        let _ = self.classifier(TC_SENT).detach(s);
                    }
                    if let Ok(r) = r {
                        let _ = self.classifier(TC_RECEIVED).detach(r);
                    }
                    failed.push((name.clone(), "TCX attach failed".to_owned()));
                }
            }
        }
        failed
    }

    /// Interfaces with traffic counters attached.
    pub fn tc_interfaces(&self) -> Vec<String> {
        self.tc.keys().cloned().collect()
    }

    fn classifier(&mut self, name: &'static str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .expect("loaded")
            .try_into()
            .expect("a classifier")
    }
}

/// Runs `f` (load, attach) on a program of the object, naming it in the error.
fn with_program<'a, P: 'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    f: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    f(program::<P>(ebpf, name)?).map_err(|source| LoadError::Program { name, source })
}

/// A program of the object by name, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Loads the per-cgroup LSM program that refuses AF_PACKET and other non-IP
/// families at `socket()`. Optional: where the kernel does not run the BPF LSM or
/// refuses `BPF_LSM_CGROUP` programs, the agent says so and the frames such
/// sockets send are still dropped by the interface check.
fn load_lsm(ebpf: &mut Ebpf) -> bool {
    if !bpf_lsm_active() {
        tracing::warn!(
            "the kernel does not run the BPF LSM (no \"bpf\" in /sys/kernel/security/lsm): \
             AF_PACKET sockets cannot be refused at socket(); the frames they send are dropped \
             on workload interfaces (workloads[].interface)"
        );
        return false;
    }
    let loaded = aya::Btf::from_sys_fs()
        .map_err(|e| e.to_string())
        .and_then(|btf| {
            program::<LsmCgroup>(ebpf, LSM_SOCKET_CREATE)
                .map_err(|e| e.to_string())?
                .load("socket_create", &btf)
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok(()) => true,
        Err(e) => {
            let first = e.lines().next().unwrap_or_default().to_owned();
            tracing::warn!(
                "the kernel refused the per-cgroup LSM program ({first}): AF_PACKET sockets \
                 cannot be refused at socket(); the frames they send are dropped on workload \
                 interfaces (workloads[].interface)"
            );
            false
        }
    }
}

/// Does the kernel run the BPF LSM (needed for `lsm_cgroup` programs to fire)?
pub fn bpf_lsm_active() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|l| l.trim().split(',').any(|m| m == "bpf"))
}

/// The index of a network interface in the agent's namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(aya::maps::MapError) -> SyncError {
    move |e| SyncError {
        op,
        map,
        reason: e.to_string(),
    }
}

/// Removing an entry that is already gone is not an error.
fn removed(r: Result<(), aya::maps::MapError>, map: &'static str) -> Result<(), SyncError> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err("delete from", map)(e)),
    }
}

impl MapWriter for PolicyMaps {
    fn put_workload(&mut self, k: u64, v: WorkloadValue) -> Result<(), SyncError> {
        self.workloads
            .insert(k, v, 0)
            .map_err(map_err("write to", WORKLOADS_MAP))
    }
    fn del_workload(&mut self, k: u64) -> Result<(), SyncError> {
        removed(self.workloads.remove(&k), WORKLOADS_MAP)
    }
    fn put_service(&mut self, k: ServiceKey, v: ServiceValue) -> Result<(), SyncError> {
        self.services
            .insert(k, v, 0)
            .map_err(map_err("write to", SERVICES_MAP))
    }
    fn del_service(&mut self, k: ServiceKey) -> Result<(), SyncError> {
        removed(self.services.remove(&k), SERVICES_MAP)
    }
    fn put_backend(&mut self, k: BackendKey, v: Backend) -> Result<(), SyncError> {
        self.backends
            .insert(k, v, 0)
            .map_err(map_err("write to", BACKENDS_MAP))
    }
    fn del_backend(&mut self, k: BackendKey) -> Result<(), SyncError> {
        removed(self.backends.remove(&k), BACKENDS_MAP)
    }
    fn put_cidr(&mut self, (prefix, k): CidrLpm, v: CidrValue) -> Result<(), SyncError> {
        self.cidrs
            .insert(&Key::new(prefix, k), v, 0)
            .map_err(map_err("write to", CIDRS_MAP))
    }
    fn del_cidr(&mut self, (prefix, k): CidrLpm) -> Result<(), SyncError> {
        removed(self.cidrs.remove(&Key::new(prefix, k)), CIDRS_MAP)
    }
    fn put_policy(&mut self, (prefix, k): PolicyLpm, v: PolicyCidrValue) -> Result<(), SyncError> {
        self.policy
            .insert(&Key::new(prefix, k), v, 0)
            .map_err(map_err("write to", POLICY_CIDRS_MAP))
    }
    fn del_policy(&mut self, (prefix, k): PolicyLpm) -> Result<(), SyncError> {
        removed(self.policy.remove(&Key::new(prefix, k)), POLICY_CIDRS_MAP)
    }
    fn put_dns(&mut self, v: DnsConfig) -> Result<(), SyncError> {
        self.dns.set(0, v, 0).map_err(map_err("write to", DNS_MAP))
    }
    fn put_workload_ip(&mut self, k: Addr, v: WorkloadValue) -> Result<(), SyncError> {
        self.workload_ips
            .insert(k, v, 0)
            .map_err(map_err("write to", WORKLOAD_IPS_MAP))
    }
    fn del_workload_ip(&mut self, k: Addr) -> Result<(), SyncError> {
        removed(self.workload_ips.remove(&k), WORKLOAD_IPS_MAP)
    }
    fn put_iface(&mut self, k: u32, v: IfaceValue) -> Result<(), SyncError> {
        self.ifaces
            .insert(k, v, 0)
            .map_err(map_err("write to", IFACES_MAP))
    }
    fn del_iface(&mut self, k: u32) -> Result<(), SyncError> {
        removed(self.ifaces.remove(&k), IFACES_MAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_defines_every_map_and_program() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parse the embedded object");
        for name in ALL_MAPS {
            assert!(obj.maps.contains_key(*name), "map {name} missing");
        }
        for name in PROGRAMS.iter().chain(&[
            TC_SENT,
            TC_RECEIVED,
            SOCK_CREATE,
            SETSOCKOPT,
            SOCK_OPS,
            SKB_EGRESS,
            LSM_SOCKET_CREATE,
        ]) {
            assert!(obj.programs.contains_key(*name), "program {name} missing");
        }
    }
}
