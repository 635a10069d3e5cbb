//! Loads the eBPF object into the kernel, hands out its maps, and attaches the
//! programs through links pinned with the maps under the pin directory: they stay
//! attached when the agent exits or crashes (fail static), and the next agent
//! adopts them ([`load`], [`Loaded::attach`]); [`uninstall`] ends enforcement.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{
    Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
};
use aya::programs::{
    CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, LsmCgroup, SchedClassifier, SockOps,
};
use aya::{Ebpf, EbpfLoader};
use egress_common::addr::Addr;
use egress_common::*;

use crate::dataplane::compile::{CidrLpm, PolicyLpm};
use crate::dataplane::sync::{MapWriter, SyncError};

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

/// What a start found pinned and what it did with it.
#[derive(Clone, Debug, Default)]
pub struct Adoption {
    /// Maps opened from their pins, content kept.
    pub adopted_maps: Vec<String>,
    /// Maps created (nothing was pinned).
    pub new_maps: Vec<String>,
    /// Maps whose pinned layout differs: a new map is filled, then the programs
    /// switch to it, then the old one goes.
    pub migrated_maps: Vec<String>,
    /// Links found pinned whose program was replaced in place.
    pub updated_links: usize,
    /// ... of which the program's instructions differ (an upgrade).
    pub changed_programs: usize,
    /// Links created.
    pub new_links: usize,
}

impl Adoption {
    /// Did this start find an enforcing dataplane?
    pub fn adopted(&self) -> bool {
        self.updated_links > 0
    }
}

/// A loaded set of programs whose links and maps are pinned under the pin
/// directory. Dropping it closes the agent's descriptors only: what is pinned
/// stays attached and enforcing (fail static) until [`uninstall`].
pub struct Loaded {
    ebpf: Ebpf,
    attached_at: Option<PathBuf>,
    pin_path: PathBuf,
    /// Pinned links held open: pin file name → link.
    links: std::collections::BTreeMap<String, OwnedFd>,
    /// Interfaces with the packet line attached: name → ifindex.
    tc: std::collections::BTreeMap<String, u32>,
    /// The per-cgroup BPF LSM program loaded (the kernel runs the BPF LSM).
    lsm: bool,
    /// Map pins replaced by a migration, removed once the programs switched.
    retired: Vec<PathBuf>,
    pub adoption: Adoption,
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
    /// Where maps and links are pinned (`<pinDir>/<instance>`).
    pub pin_path: PathBuf,
    /// Load this object instead of the built-in one (development, upgrade tests).
    pub object: Option<Vec<u8>>,
    /// DNS queries a workload may send the proxy per second (per CPU); 0: no limit.
    pub dns_queries_per_second: u32,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// The record of what is pinned, beside the pins.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// [`MAP_LAYOUT_VERSION`] of the agent that pinned the maps.
    pub layout: u32,
    /// The agent version that last attached.
    pub agent: String,
    pub maps: std::collections::BTreeMap<String, crate::dataplane::bpfsys::MapShape>,
    /// Program name → tag (hex) of what the links run.
    pub programs: std::collections::BTreeMap<String, String>,
}

/// The pin holding the [`Layout`] (JSON in a one-entry array map: bpffs holds
/// nothing but bpf objects).
pub const LAYOUT_PIN: &str = "layout";

impl Layout {
    pub fn read(dir: &Path) -> Option<Self> {
        let bytes = crate::dataplane::bpfsys::read_record(&dir.join(LAYOUT_PIN)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The pin name of a link. bpffs names have no dots.
fn link_pin(what: &str) -> String {
    format!("link_{}", what.replace('.', "_"))
}

/// Is `name` a map the object defines that is pinned (not a data section)?
fn pinned_map_names(obj: &aya_obj::Object) -> Vec<(String, crate::dataplane::bpfsys::MapShape)> {
    let mut out: Vec<_> = obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            (
                name.clone(),
                crate::dataplane::bpfsys::MapShape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            )
        })
        .collect();
    out.sort();
    out
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Makes the pin directory, on bpffs (mounting bpffs at /sys/fs/bpf when that is
/// where it should be and nothing is mounted).
fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    let bpffs = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs) && !crate::dataplane::bpfsys::is_bpffs(bpffs) {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(pin_err(
                dir,
                "/sys/fs/bpf is not a bpf filesystem and mounting one failed",
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, e))?;
    if !crate::dataplane::bpfsys::is_bpffs(dir) {
        return Err(pin_err(
            dir,
            "pinDir is not on a bpf filesystem (mount -t bpf bpf DIR, or use a directory under /sys/fs/bpf)",
        ));
    }
    Ok(())
}

/// Loads the programs and maps into the kernel, adopting what an earlier agent
/// pinned: a pinned map of the same layout is reused with its content; one whose
/// layout changed is replaced by a new map (migration). Nothing is attached or
/// detached here; see [`Loaded::attach`].
pub fn load(opts: LoadOptions) -> Result<(Loaded, PolicyMaps, TelemetryMaps), LoadError> {
    let dir = opts.pin_path.clone();
    prepare_pin_dir(&dir)?;
    let bytes: &[u8] = opts.object.as_deref().unwrap_or(EBPF_OBJECT);
    let obj = aya_obj::Object::parse(bytes)
        .map_err(|e| pin_err(&dir, format!("parsing the eBPF object: {e}")))?;
    let recorded = Layout::read(&dir);
    let mut adoption = Adoption::default();
    let mut retired = Vec::new();
    let names = pinned_map_names(&obj);
    for (name, want) in &names {
        let path = dir.join(name);
        let old = dir.join(format!("{name}_old"));
        // A migration an earlier start did not finish: the old programs still
        // hold that map; the pin itself is no longer needed.
        let _ = std::fs::remove_file(&old);
        let Ok(fd) = crate::dataplane::bpfsys::obj_get(&path) else {
            adoption.new_maps.push(name.clone());
            continue;
        };
        let same = crate::dataplane::bpfsys::map_shape(fd.as_fd()).is_ok_and(|s| s == *want)
            && recorded
                .as_ref()
                .is_some_and(|r| r.layout == MAP_LAYOUT_VERSION && r.maps.get(name) == Some(want));
        if same {
            adoption.adopted_maps.push(name.clone());
        } else {
            std::fs::rename(&path, &old).map_err(|e| pin_err(&path, e))?;
            retired.push(old);
            adoption.migrated_maps.push(name.clone());
        }
    }
    let fail_open = u8::from(opts.fail_open);
    let interval = opts.event_interval_ns.max(1);
    let burst = opts.event_burst_ns.max(interval);
    let paths: Vec<(String, PathBuf)> = names
        .iter()
        .map(|(n, _)| (n.clone(), dir.join(n)))
        .collect();
    // One second of credit: a workload may burst to its rate at once.
    let (dns_interval, dns_burst) = match u64::from(opts.dns_queries_per_second) {
        0 => (0u64, 0u64),
        rate => (1_000_000_000 / rate, 1_000_000_000),
    };
    let mut loader = EbpfLoader::new();
    loader
        .override_global("FAIL_OPEN", &fail_open, true)
        .override_global("EVENT_INTERVAL_NS", &interval, true)
        .override_global("EVENT_BURST_NS", &burst, true)
        .override_global("DNS_INTERVAL_NS", &dns_interval, true)
        .override_global("DNS_BURST_NS", &dns_burst, true);
    for (name, path) in &paths {
        loader.map_pin_path(name.as_str(), path.as_path());
    }
    let mut ebpf = loader.load(bytes)?;
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
        pinned.push(ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?);
    }
    let policy = PolicyMaps {
        workloads: take(&mut ebpf, WORKLOADS_MAP)?,
        services: take(&mut ebpf, SERVICES_MAP)?,
        backends: take(&mut ebpf, BACKENDS_MAP)?,
        cidrs: take(&mut ebpf, CIDRS_MAP)?,
        policy: take(&mut ebpf, POLICY_CIDRS_MAP)?,
        dns: take(&mut ebpf, DNS_MAP)?,
        workload_ips: take(&mut ebpf, WORKLOAD_IPS_MAP)?,
        ifaces: take(&mut ebpf, IFACES_MAP)?,
    };
    let telemetry = TelemetryMaps {
        stats: take(&mut ebpf, STATS_MAP)?,
        counters: take(&mut ebpf, COUNTERS_MAP)?,
        events: take(&mut ebpf, EVENTS_MAP)?,
        learned: take(&mut ebpf, LEARNED_MAP)?,
        traffic: take(&mut ebpf, TRAFFIC_MAP)?,
        rate: take(&mut ebpf, RATE_MAP)?,
    };
    Ok((
        Loaded {
            ebpf,
            attached_at: None,
            pin_path: dir,
            links: Default::default(),
            tc: Default::default(),
            lsm,
            retired,
            adoption,
            _pinned: pinned,
        },
        policy,
        telemetry,
    ))
}

/// Detaches every pinned link of the pin directory and removes every pin, the
/// directory, and its parent (`pinDir`) when no other instance uses it. What
/// `egress-agent uninstall` does; the only way enforcement ends.
pub fn uninstall(dir: &Path) -> std::io::Result<usize> {
    let mut detached = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    // Links first (enforcement ends), then the maps they used.
    for path in &files {
        let is_link = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"));
        if is_link && let Ok(fd) = crate::dataplane::bpfsys::obj_get(path) {
            if crate::dataplane::bpfsys::link_detach(fd.as_fd()).is_ok() {
                detached += 1;
            }
            std::fs::remove_file(path)?;
        }
    }
    for path in &files {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::remove_dir(dir)?;
    if let Some(parent) = dir.parent() {
        // Fails, as it should, while another instance's pins are there.
        let _ = std::fs::remove_dir(parent);
    }
    Ok(detached)
}

/// The cgroup programs in attach order, with their attach types. The second line
/// first: by the time connect() is judged, sockets are already tagged and packets
/// already checked.
const CGROUP_HOOKS: &[(&str, u32)] = {
    use crate::dataplane::bpfsys::attach::*;
    &[
        (SOCK_OPS, CGROUP_SOCK_OPS),
        (SKB_EGRESS, CGROUP_INET_EGRESS),
        (SETSOCKOPT, CGROUP_SETSOCKOPT),
        (SOCK_CREATE, CGROUP_INET_SOCK_CREATE),
        (LSM_SOCKET_CREATE, LSM_CGROUP),
        ("egress_connect4", CGROUP_INET4_CONNECT),
        ("egress_connect6", CGROUP_INET6_CONNECT),
        ("egress_getpeername4", CGROUP_INET4_GETPEERNAME),
        ("egress_getpeername6", CGROUP_INET6_GETPEERNAME),
        ("egress_sendmsg4", CGROUP_UDP4_SENDMSG),
        ("egress_sendmsg6", CGROUP_UDP6_SENDMSG),
        ("egress_recvmsg4", CGROUP_UDP4_RECVMSG),
        ("egress_recvmsg6", CGROUP_UDP6_RECVMSG),
    ]
};

impl Loaded {
    /// Attaches every program at the cgroup directory `path` through links pinned
    /// beside the maps. A link already pinned there (an earlier agent's) gets this
    /// agent's program in one `BPF_LINK_UPDATE`: the hook is never empty. A link
    /// pinned for another cgroup is replaced by a new one, created first. Links
    /// coexist with other programs attached at the cgroup.
    pub fn attach(&mut self, path: &Path) -> Result<(), LoadError> {
        let cgroup = File::open(path).map_err(|source| LoadError::Cgroup {
            path: path.to_owned(),
            source,
        })?;
        let cgroup_id =
            crate::dataplane::workloads::cgroup_id(path).map_err(|source| LoadError::Cgroup {
                path: path.to_owned(),
                source,
            })?;
        for &(name, attach_type) in CGROUP_HOOKS {
            if name == LSM_SOCKET_CREATE && !self.lsm {
                continue;
            }
            let pin = link_pin(name);
            if self.update_pinned(&pin, name, cgroup_id)? {
                continue;
            }
            self.create_link(&pin, name, cgroup.as_raw_fd() as u32, attach_type)?;
        }
        self.attached_at = Some(path.to_owned());
        self.finish_adoption();
        Ok(())
    }

    fn prog_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, LoadError> {
        let prog = self.ebpf.program(name).ok_or(LoadError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        Ok(prog
            .fd()
            .map_err(|source| LoadError::Program { name, source })?
            .as_fd())
    }

    /// Creates the link of program `name` at `target` and pins it as `pin`,
    /// replacing (and detaching) whatever link was pinned under that name before.
    fn create_link(
        &mut self,
        pin: &str,
        name: &'static str,
        target: u32,
        attach_type: u32,
    ) -> Result<(), LoadError> {
        let path = self.pin_path.join(pin);
        let prog = self.prog_fd(name)?;
        let link = crate::dataplane::bpfsys::link_create(prog, target, attach_type)
            .map_err(|e| pin_err(&path, format!("BPF_LINK_CREATE of {name}: {e}")))?;
        if let Ok(old) = crate::dataplane::bpfsys::obj_get(&path) {
            let _ = crate::dataplane::bpfsys::link_detach(old.as_fd());
        }
        let _ = std::fs::remove_file(&path);
        crate::dataplane::bpfsys::obj_pin(link.as_fd(), &path).map_err(|e| pin_err(&path, e))?;
        self.adoption.new_links += 1;
        self.links.insert(pin.to_owned(), link);
        Ok(())
    }

    /// Gives the pinned link `pin` this agent's program `name` if it is attached to
    /// `target`; `Ok(false)` if there is no such link (a stale pin is removed
    /// once its replacement is pinned).
    fn update_pinned(
        &mut self,
        pin: &str,
        name: &'static str,
        target: u64,
    ) -> Result<bool, LoadError> {
        let path = self.pin_path.join(pin);
        let Ok(fd) = crate::dataplane::bpfsys::obj_get(&path) else {
            return Ok(false);
        };
        let info =
            crate::dataplane::bpfsys::link_info(fd.as_fd()).map_err(|e| pin_err(&path, e))?;
        if !info.attached || info.target != target {
            return Ok(false);
        }
        let prog = self.prog_fd(name)?;
        let old_tag = crate::dataplane::bpfsys::prog_tag_by_id(info.prog_id).ok();
        let new_tag = crate::dataplane::bpfsys::prog_tag(prog.as_fd()).ok();
        crate::dataplane::bpfsys::link_update(fd.as_fd(), prog.as_fd())
            .map_err(|e| pin_err(&path, format!("BPF_LINK_UPDATE: {e}")))?;
        self.adoption.updated_links += 1;
        if old_tag != new_tag {
            self.adoption.changed_programs += 1;
        }
        self.links.insert(pin.to_owned(), fd);
        Ok(true)
    }

    /// Once every program runs on the new maps: removes retired map pins and
    /// records the layout beside the pins.
    fn finish_adoption(&mut self) {
        for old in self.retired.drain(..) {
            let _ = std::fs::remove_file(old);
        }
        let mut layout = Layout {
            layout: MAP_LAYOUT_VERSION,
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            ..Layout::default()
        };
        for (name, map) in self.ebpf.maps() {
            let _ = map;
            let Ok(fd) = crate::dataplane::bpfsys::obj_get(&self.pin_path.join(name)) else {
                continue;
            };
            if let Ok(shape) = crate::dataplane::bpfsys::map_shape(fd.as_fd()) {
                layout.maps.insert(name.to_owned(), shape);
            }
        }
        for name in ALL_MAPS {
            if let Ok(fd) = crate::dataplane::bpfsys::obj_get(&self.pin_path.join(name))
                && let Ok(shape) = crate::dataplane::bpfsys::map_shape(fd.as_fd())
            {
                layout.maps.insert((*name).to_owned(), shape);
            }
        }
        for (name, prog) in self.ebpf.programs() {
            if let Ok(fd) = prog.fd()
                && let Ok(tag) = crate::dataplane::bpfsys::prog_tag(fd.as_fd())
            {
                layout.programs.insert(
                    name.to_owned(),
                    tag.iter().map(|b| format!("{b:02x}")).collect(),
                );
            }
        }
        let path = self.pin_path.join(LAYOUT_PIN);
        let text = serde_json::to_vec(&layout).expect("serialisable");
        if let Err(e) = crate::dataplane::bpfsys::write_record(&path, &text) {
            tracing::warn!(file = %path.display(), "cannot record the map layout: {e}");
        }
    }

    /// AF_PACKET and other non-IP families are refused at `socket()`.
    pub fn refuses_packet_sockets(&self) -> bool {
        self.lsm
    }

    pub fn attached_at(&self) -> Option<&Path> {
        self.attached_at.as_deref()
    }

    /// Keeps the interface line attached to exactly `interfaces` (those that
    /// exist), through pinned TCX links: adopts or attaches on new or re-created
    /// interfaces, detaches from the others. Returns the interfaces that could not
    /// be attached, with the reason.
    pub fn sync_tc(&mut self, interfaces: &[String]) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let current: Vec<String> = self.tc.keys().cloned().collect();
        for name in current {
            let index = ifindex(&name);
            if !interfaces.contains(&name) || index != Some(self.tc[&name]) {
                let old = self.tc.remove(&name).expect("present");
                for dir in ["sent", "received"] {
                    let pin = link_pin(&format!("tc_{old}_{dir}"));
                    if let Some(fd) = self.links.remove(&pin) {
                        // A vanished interface took its link with it.
                        let _ = crate::dataplane::bpfsys::link_detach(fd.as_fd());
                    }
                    let _ = std::fs::remove_file(self.pin_path.join(pin));
                }
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
            let mut ok = true;
            for (dir, prog, at) in [
                (
                    "sent",
                    TC_SENT,
                    crate::dataplane::bpfsys::attach::TCX_INGRESS,
                ),
                (
                    "received",
                    TC_RECEIVED,
                    crate::dataplane::bpfsys::attach::TCX_EGRESS,
                ),
            ] {
                let pin = link_pin(&format!("tc_{index}_{dir}"));
                match self.update_pinned(&pin, prog, u64::from(index)) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        failed.push((name.clone(), e.to_string()));
                        ok = false;
                        break;
                    }
                }
                match self.create_link(&pin, prog, index, at) {
                    Ok(()) => {}
                    Err(e) => {
                        failed.push((name.clone(), format!("TCX attach failed: {e}")));
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                self.tc.insert(name.clone(), index);
            }
        }
        // Interface links an earlier agent pinned for interfaces no longer
        // configured (or gone): detached and unpinned.
        if let Ok(entries) = std::fs::read_dir(&self.pin_path) {
            for e in entries.flatten() {
                let pin = e.file_name().to_string_lossy().into_owned();
                if pin.starts_with("link_tc_") && !self.links.contains_key(&pin) {
                    if let Ok(fd) = crate::dataplane::bpfsys::obj_get(&e.path()) {
                        let _ = crate::dataplane::bpfsys::link_detach(fd.as_fd());
                    }
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        failed
    }

    /// Interfaces with traffic counters attached.
    pub fn tc_interfaces(&self) -> Vec<String> {
        self.tc.keys().cloned().collect()
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

impl PolicyMaps {
    /// Marks cgroups as known and untouched before any sync (Kubernetes mode:
    /// the agent's own pod, which an adopted state would otherwise hold to the
    /// fail-closed default — and so cut from the API server it waits for).
    /// Returns the entries written, for the syncer's view of the kernel.
    pub fn put_untouched(
        &mut self,
        cgroups: &[u64],
    ) -> Result<Vec<(u64, WorkloadValue)>, SyncError> {
        let value = WorkloadValue {
            workload_id: 0,
            view_id: 0,
            flags: egress_common::WL_UNTOUCHED,
            _pad: 0,
        };
        for id in cgroups {
            self.workloads
                .insert(id, value, 0)
                .map_err(map_err("write", WORKLOADS_MAP))?;
        }
        Ok(cgroups.iter().map(|id| (*id, value)).collect())
    }

    /// Reads what the kernel holds (an adopted dataplane), for [`crate::dataplane::sync::Syncer::adopt`].
    pub fn read(&self) -> Result<crate::dataplane::sync::KernelState, SyncError> {
        let e = |map| map_err("read", map);
        let mut k = crate::dataplane::sync::KernelState::default();
        for r in self.workloads.iter() {
            let (key, v) = r.map_err(e(WORKLOADS_MAP))?;
            k.workloads.insert(key, v);
        }
        for r in self.services.iter() {
            let (key, v) = r.map_err(e(SERVICES_MAP))?;
            k.services.insert(key, v);
        }
        for r in self.backends.iter() {
            let (key, v) = r.map_err(e(BACKENDS_MAP))?;
            k.backends.insert(key, v);
        }
        for r in self.cidrs.iter() {
            let (key, v) = r.map_err(e(CIDRS_MAP))?;
            k.cidrs.insert((key.prefix_len(), key.data()), v);
        }
        for r in self.policy.iter() {
            let (key, v) = r.map_err(e(POLICY_CIDRS_MAP))?;
            k.policy.insert((key.prefix_len(), key.data()), v);
        }
        k.dns = Some(self.dns.get(&0, 0).map_err(e(DNS_MAP))?);
        for r in self.workload_ips.iter() {
            let (key, v) = r.map_err(e(WORKLOAD_IPS_MAP))?;
            k.workload_ips.insert(key, v);
        }
        for r in self.ifaces.iter() {
            let (key, v) = r.map_err(e(IFACES_MAP))?;
            k.ifaces.insert(key, v);
        }
        Ok(k)
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
