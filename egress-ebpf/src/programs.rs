//! Maps and programs. Map statics are named exactly as the `*_MAP` constants of
//! `egress_common::maps`.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_NOEXIST, bpf_sock},
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_prandom_u32,
            bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_sk_fullsock, bpf_sk_storage_get,
            bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        },
    },
    macros::{
        btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, classifier, lsm_cgroup,
        map, sock_ops,
    },
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
    programs::{
        LsmContext, SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext,
        TcContext,
    },
};
use egress_common::{
    addr::{Addr, is_v4_mapped, v4_mapped, v4_octets},
    decide::{self, Connect, Dataplane, Decision, Outcome, PacketDest, SocketKind},
    link,
    maps::*,
};

mod guard;
use guard::{sock_tag, tag_logged, tag_ok};

#[map]
static EGRESS_WORKLOADS: HashMap<u64, WorkloadValue> =
    HashMap::with_max_entries(WORKLOADS_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICES_CAPACITY, BPF_F_NO_PREALLOC);

/// The upgrade-probe variant's services map has another shape: upgrading to it
/// migrates that map (a new one filled, then the programs switched).
#[cfg(not(feature = "upgrade-probe"))]
const SERVICES_CAPACITY: u32 = SERVICES_MAX;
#[cfg(feature = "upgrade-probe")]
const SERVICES_CAPACITY: u32 = SERVICES_MAX + 1;
#[map]
static EGRESS_BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(BACKENDS_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_CIDRS: LpmTrie<CidrKey, CidrValue> = LpmTrie::with_max_entries(CIDRS_MAX, 0);
#[map]
static EGRESS_POLCIDRS: LpmTrie<IpKey, PolicyCidrValue> =
    LpmTrie::with_max_entries(POLICY_CIDRS_MAX, 0);
#[map]
static EGRESS_SOCKORIG: LruHashMap<u64, OrigDest> =
    LruHashMap::with_max_entries(SOCK_ORIG_MAX, BPF_F_NO_COMMON_LRU);
#[map]
static EGRESS_STATS: PerCpuHashMap<StatKey, u64> =
    PerCpuHashMap::with_max_entries(STATS_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map]
static EGRESS_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
static EGRESS_DNS: Array<DnsConfig> = Array::with_max_entries(1, 0);
#[map]
static EGRESS_UDPNAT: LruHashMap<UdpNatKey, UdpNatValue> =
    LruHashMap::with_max_entries(UDP_NAT_MAX, BPF_F_NO_COMMON_LRU);
#[map]
static EGRESS_LEARNED: HashMap<LearnedKey, LearnedValue> =
    HashMap::with_max_entries(LEARNED_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_WLIPS: HashMap<Addr, WorkloadValue> =
    HashMap::with_max_entries(WORKLOADS_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_TRAFFIC: PerCpuHashMap<TrafficKey, TrafficValue> =
    PerCpuHashMap::with_max_entries(TRAFFIC_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_DNSRATE: PerCpuHashMap<u32, RateBucket> =
    PerCpuHashMap::with_max_entries(WORKLOADS_MAX, 0);
#[map]
static EGRESS_RATE: PerCpuHashMap<u32, RateBucket> =
    PerCpuHashMap::with_max_entries(WORKLOADS_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_IFACES: HashMap<u32, IfaceValue> =
    HashMap::with_max_entries(IFACES_MAX, BPF_F_NO_PREALLOC);
#[map]
static EGRESS_NEIGH: LruHashMap<NeighKey, NeighValue> = LruHashMap::with_max_entries(NEIGH_MAX, 0);
#[map]
static EGRESS_INBOUND: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(INBOUND_MAX, BPF_F_NO_COMMON_LRU);
#[map]
static EGRESS_FRAGS: LruHashMap<FragKey, u8> = LruHashMap::with_max_entries(FRAGS_MAX, 0);
#[btf_map]
static EGRESS_SOCKTAGS: SkStorage<SockTag> = SkStorage::new();

/// Load-time globals of the access-log rate limit (per workload, per CPU): the
/// cost of one event in nanoseconds (1 s / rate) and the burst credit.
#[unsafe(no_mangle)]
static EVENT_INTERVAL_NS: u64 = 100_000_000;
#[unsafe(no_mangle)]
static EVENT_BURST_NS: u64 = 2_000_000_000;

/// Load-time globals: the DNS query rate limit per workload (per CPU), as the
/// cost of one query in nanoseconds and the burst credit; 0: no limit.
#[unsafe(no_mangle)]
static DNS_INTERVAL_NS: u64 = 0;
#[unsafe(no_mangle)]
static DNS_BURST_NS: u64 = 0;

/// Load-time global: 1 lets a `connect()` through when the program fails internally,
/// 0 (the default) refuses it. Set by the agent with `EbpfLoader::set_global`.
#[unsafe(no_mangle)]
static FAIL_OPEN: u8 = 0;

const VERDICT_ALLOW: i32 = 1;
const VERDICT_DENY: i32 = 0;
/// getpeername/recvmsg hooks cannot refuse: their only verdict is 1.
const VERDICT_PASS: i32 = 1;

#[inline(always)]
fn connect_fail_verdict() -> i32 {
    // SAFETY: a load-time constant; read volatile so the loader's value is used.
    if unsafe { core::ptr::read_volatile(&FAIL_OPEN) } != 0 {
        VERDICT_ALLOW
    } else {
        VERDICT_DENY
    }
}

/// The verdict of an entry point: the decision, or on an internal error the
/// configured failure verdict, counted.
#[inline(always)]
fn or_fail<E>(decision: Result<i32, E>, err: Counter) -> i32 {
    decision.unwrap_or_else(|_| {
        bump(err);
        connect_fail_verdict()
    })
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(p) = EGRESS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}

/// Where a program finds "its" cgroup and that cgroup's ancestors.
trait Cgroups {
    fn id(&self) -> u64;
    fn ancestor(&self, level: u32) -> u64;
}

/// The calling task's cgroup.
struct Current;

impl Cgroups for Current {
    #[inline(always)]
    fn id(&self) -> u64 {
        // SAFETY: helper without arguments.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn ancestor(&self, level: u32) -> u64 {
        // SAFETY: helper with a plain integer argument.
        unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
    }
}

/// The cgroup of a packet's socket (whoever made the packet).
struct SkbSocket(*mut aya_ebpf::bindings::__sk_buff);

impl Cgroups for SkbSocket {
    #[inline(always)]
    fn id(&self) -> u64 {
        // SAFETY: the context's own skb.
        unsafe { bpf_skb_cgroup_id(self.0) }
    }

    #[inline(always)]
    fn ancestor(&self, level: u32) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_skb_ancestor_cgroup_id(self.0, level as i32) }
    }
}

/// The kernel as a `Dataplane`, with the cgroups of `C`.
struct Kernel<C>(C);

impl<C: Cgroups> Dataplane for Kernel<C> {
    #[inline(always)]
    fn current_cgroup_id(&self) -> u64 {
        self.0.id()
    }

    #[inline(always)]
    fn ancestor_cgroup_id(&self, level: u32) -> u64 {
        self.0.ancestor(level)
    }

    #[inline(always)]
    fn workload(&self, cgroup_id: u64) -> Option<WorkloadValue> {
        // SAFETY: the value is copied out immediately.
        unsafe { EGRESS_WORKLOADS.get(cgroup_id).copied() }
    }

    #[inline(always)]
    fn policy_cidr(&self, addr: &Addr) -> Option<PolicyCidrValue> {
        EGRESS_POLCIDRS
            .get(Key::new(128, IpKey { addr: *addr }))
            .copied()
    }

    #[inline(always)]
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        // SAFETY: the value is copied out immediately.
        unsafe { EGRESS_SERVICES.get(key).copied() }
    }

    #[inline(always)]
    fn cidr(&self, key: &CidrKey) -> Option<CidrValue> {
        EGRESS_CIDRS
            .get(Key::new(CIDR_FIXED_BITS + 128, *key))
            .copied()
    }

    #[inline(always)]
    fn backend(&self, key: &BackendKey) -> Option<Backend> {
        // SAFETY: the value is copied out immediately.
        unsafe { EGRESS_BACKENDS.get(key).copied() }
    }

    #[inline(always)]
    fn dns(&self) -> Option<DnsConfig> {
        EGRESS_DNS.get(0).copied()
    }

    #[inline(always)]
    fn learned(&self, key: &LearnedKey) -> Option<LearnedValue> {
        // SAFETY: the value is copied out immediately.
        unsafe { EGRESS_LEARNED.get(key).copied() }
    }

    #[inline(always)]
    fn workload_by_ip(&self, addr: &Addr) -> Option<WorkloadValue> {
        // SAFETY: the value is copied out immediately.
        unsafe { EGRESS_WLIPS.get(addr).copied() }
    }
}

/// May this workload log one more event now? (Per-CPU token bucket.)
#[inline(always)]
fn rate_ok(workload_id: u32, now_ns: u64) -> bool {
    // SAFETY: load-time constants; read volatile so the loader's values are used.
    let (interval, burst) = unsafe {
        (
            core::ptr::read_volatile(&EVENT_INTERVAL_NS),
            core::ptr::read_volatile(&EVENT_BURST_NS),
        )
    };
    bucket_ok(&EGRESS_RATE, workload_id, now_ns, interval, burst)
}

/// May this workload send one more DNS query to the proxy now? (Per-CPU
/// token bucket; always with no limit set.)
#[inline(always)]
fn dns_rate_ok(workload_id: u32, now_ns: u64) -> bool {
    // SAFETY: load-time constants; read volatile so the loader's values are used.
    let (interval, burst) = unsafe {
        (
            core::ptr::read_volatile(&DNS_INTERVAL_NS),
            core::ptr::read_volatile(&DNS_BURST_NS),
        )
    };
    interval == 0 || bucket_ok(&EGRESS_DNSRATE, workload_id, now_ns, interval, burst)
}

#[inline(always)]
fn bucket_ok(
    map: &PerCpuHashMap<u32, RateBucket>,
    workload_id: u32,
    now_ns: u64,
    interval: u64,
    burst: u64,
) -> bool {
    if let Some(b) = map.get_ptr_mut(workload_id) {
        // SAFETY: per-CPU value, only this CPU touches it while we run.
        return decide::rate_allow(unsafe { &mut *b }, now_ns, interval, burst);
    }
    let mut b = RateBucket {
        credit_ns: burst,
        last_ns: now_ns,
        dropped: 0,
    };
    let ok = decide::rate_allow(&mut b, now_ns, interval, burst);
    let _ = map.insert(workload_id, b, 0);
    ok
}

#[inline(always)]
fn count(key: &StatKey) {
    if let Some(p) = EGRESS_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe { *p += 1 };
        return;
    }
    if EGRESS_STATS.insert(key, 1u64, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created the entry between our lookup and insert.
    match EGRESS_STATS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(p) => unsafe { *p += 1 },
        None => bump(Counter::StatsFull),
    }
}

/// What an access-log event says about the attempt besides the decision.
struct Attempt {
    addr: Addr,
    port: u16,
    proto: u8,
    family: u8,
    layer: Layer,
    /// The calling task made the attempt (not a packet seen in softirq).
    task: bool,
}

#[inline(always)]
fn emit(d: &Decision, a: &Attempt) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !rate_ok(d.workload.workload_id, now) {
        bump(Counter::EventsRateLimited);
        return;
    }
    let Some(mut entry) = EGRESS_EVENTS.reserve::<Event>(0) else {
        bump(Counter::EventsDropped);
        return;
    };
    // Written in place in the ring buffer: an Event on the stack would cost the
    // packet programs stack they do not have.
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, written field by field before submit.
    unsafe {
        (*ev).boot_ns = now;
        (*ev).workload_id = d.workload.workload_id;
        (*ev).service_id = d.service_id;
        (*ev).addr = a.addr;
        (*ev).port = a.port;
        (*ev).proto = a.proto;
        (*ev).action = d.action as u8;
        (*ev).reason = d.reason as u8;
        (*ev).matched = d.matched as u8;
        (*ev).family = a.family;
        (*ev).layer = a.layer as u8;
        (*ev)._pad2 = [0; 4];
        (*ev).comm = [0; 16];
        if a.task {
            (*ev).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*ev).cgroup_id = bpf_get_current_cgroup_id();
            aya_ebpf::helpers::generated::bpf_get_current_comm(
                core::ptr::from_mut(&mut (*ev).comm).cast(),
                16,
            );
        } else {
            (*ev).pid = 0;
            (*ev).cgroup_id = 0;
        }
    }
    entry.submit(0);
}

/// Socket families as the hooks see them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[inline(always)]
fn read_addr(ctx: &SockAddrContext, family: Family) -> Addr {
    let sa = ctx.sock_addr;
    match family {
        // SAFETY: ctx fields the verifier allows 4-byte reads of.
        Family::V4 => v4_mapped(unsafe { (*sa).user_ip4 }.to_ne_bytes()),
        Family::V6 => {
            let mut a = [0u8; 16];
            let mut i = 0;
            while i < 4 {
                // SAFETY: as above; one 4-byte read per word.
                let w = unsafe { core::ptr::read_volatile(&(*sa).user_ip6[i]) };
                let b = w.to_ne_bytes();
                a[i * 4] = b[0];
                a[i * 4 + 1] = b[1];
                a[i * 4 + 2] = b[2];
                a[i * 4 + 3] = b[3];
                i += 1;
            }
            a
        }
    }
}

#[inline(always)]
fn write_addr(ctx: &SockAddrContext, family: Family, addr: &Addr, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields writable by connect/getpeername programs, 4-byte stores.
    unsafe {
        match family {
            Family::V4 => (*sa).user_ip4 = u32::from_ne_bytes(v4_octets(addr)),
            Family::V6 => {
                let mut i = 0;
                while i < 4 {
                    let w = u32::from_ne_bytes([
                        addr[i * 4],
                        addr[i * 4 + 1],
                        addr[i * 4 + 2],
                        addr[i * 4 + 3],
                    ]);
                    core::ptr::write_volatile(&mut (*sa).user_ip6[i], w);
                    i += 1;
                }
            }
        }
        (*sa).user_port = u32::from(port.to_be());
    }
}

#[inline(always)]
fn read_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: ctx field; the port sits in network byte order in the low 16 bits.
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16)
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper reading the socket behind ctx.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Remembers where a redirected UDP socket's datagrams really go, so replies can
/// be made to come from the address the application used.
#[inline(always)]
fn remember_udp(ctx: &SockAddrContext, to: &Backend, orig: &Addr, orig_port: u16) {
    let key = UdpNatKey {
        cookie: cookie(ctx),
        addr: to.addr,
        port: to.port,
        _pad: [0; 6],
    };
    let value = UdpNatValue {
        addr: *orig,
        port: orig_port,
        _pad: [0; 2],
    };
    if EGRESS_UDPNAT.insert(key, value, 0).is_err() {
        bump(Counter::UdpNatFull);
    }
}

/// Remembers a connected socket's original peer for getpeername().
#[inline(always)]
fn remember_peer(ctx: &SockAddrContext, to: &Backend, orig: &Addr, orig_port: u16) {
    let value = OrigDest {
        orig_addr: *orig,
        backend_addr: to.addr,
        orig_port,
        backend_port: to.port,
    };
    if EGRESS_SOCKORIG.insert(cookie(ctx), value, 0).is_err() {
        bump(Counter::SockOrigFull);
    }
}

/// Reads the destination of a connect/sendmsg.
#[inline(always)]
fn destination(ctx: &SockAddrContext, family: Family, proto: u8) -> Connect {
    Connect {
        addr: read_addr(ctx, family),
        port: read_port(ctx),
        proto,
        v4_socket: family == Family::V4,
        // SAFETY: helpers without arguments.
        random: unsafe { bpf_get_prandom_u32() },
        // SAFETY: as above.
        now_ns: unsafe { bpf_ktime_get_boot_ns() },
        udp_connect: false,
    }
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: Family) -> Result<i32, decide::Error> {
    // SAFETY: ctx field read.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(VERDICT_ALLOW);
    }
    let mut c = destination(ctx, family, proto);
    c.udp_connect = proto == PROTO_UDP;
    // A connected socket answers getpeername() with the address it connected to.
    enforce(ctx, family, &c, true)
}

/// Unconnected UDP sends: DNS queries go to the proxy; other datagrams are
/// classified like a connect() (each send is one classification).
#[inline(always)]
fn try_sendmsg(ctx: &SockAddrContext, family: Family) -> Result<i32, decide::Error> {
    enforce(ctx, family, &destination(ctx, family, PROTO_UDP), false)
}

/// Classifies a destination and applies the decision to the socket address:
/// DNS to the proxy, a VIP to its backend (remembering the original for
/// getpeername() when `connected`, and for UDP replies), refusals with an event.
#[inline(always)]
fn enforce(
    ctx: &SockAddrContext,
    family: Family,
    c: &Connect,
    connected: bool,
) -> Result<i32, decide::Error> {
    let udp = c.proto == PROTO_UDP;
    let k = Kernel(Current);
    let tag = sock_tag(ctx);
    // SAFETY: a socket-storage value of this socket, or null.
    let workload = decide::socket_workload(&k, unsafe { tag.as_ref() });
    let d = match decide::classify_as(&k, workload, c)? {
        Outcome::Untouched => return Ok(VERDICT_ALLOW),
        Outcome::Dns(to) => {
            if connected {
                remember_peer(ctx, &to, &c.addr, c.port);
                tag_ok(tag, &to.addr, to.port, c.proto);
            }
            if udp {
                remember_udp(ctx, &to, &c.addr, c.port);
            }
            write_addr(ctx, family, &to.addr, to.port);
            bump(Counter::DnsRedirected);
            return Ok(VERDICT_ALLOW);
        }
        Outcome::Decided(d) => d,
    };
    count(&decide::stat_key(&d, c));
    let attempt = Attempt {
        addr: c.addr,
        port: c.port,
        proto: c.proto,
        family: if family == Family::V4 { 4 } else { 6 },
        layer: Layer::Connect,
        task: true,
    };
    match d.action {
        Action::Allow => {
            if connected {
                tag_ok(tag, &c.addr, c.port, c.proto);
            }
            Ok(VERDICT_ALLOW)
        }
        Action::Rewrite => {
            // A v6 socket reaches an IPv4 backend through its v4-mapped form; a v4
            // socket only ever gets IPv4 backends (classify picks among v4 slots).
            if family == Family::V4 && !is_v4_mapped(&d.backend.addr) {
                return Err(decide::Error::MissingBackend);
            }
            if connected {
                remember_peer(ctx, &d.backend, &c.addr, c.port);
                tag_ok(tag, &d.backend.addr, d.backend.port, c.proto);
            }
            if udp {
                remember_udp(ctx, &d.backend, &c.addr, c.port);
            }
            write_addr(ctx, family, &d.backend.addr, d.backend.port);
            Ok(VERDICT_ALLOW)
        }
        Action::Audit => {
            emit(&d, &attempt);
            // Its packets are the same attempt: the packet check stays quiet.
            tag_logged(tag);
            Ok(VERDICT_ALLOW)
        }
        Action::Deny => {
            emit(&d, &attempt);
            Ok(VERDICT_DENY)
        }
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    or_fail(try_sendmsg(&ctx, Family::V4), Counter::ErrSendmsg4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    or_fail(try_sendmsg(&ctx, Family::V6), Counter::ErrSendmsg6)
}

/// Replies of redirected UDP appear to come from where the application sent.
#[inline(always)]
fn try_recvmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    let key = UdpNatKey {
        cookie: cookie(ctx),
        addr: read_addr(ctx, family),
        port: read_port(ctx),
        _pad: [0; 6],
    };
    // SAFETY: the value is copied out immediately.
    if let Some(orig) = unsafe { EGRESS_UDPNAT.get(key).copied() } {
        if family == Family::V4 && !is_v4_mapped(&orig.addr) {
            bump(Counter::ErrRecvmsg4);
            return VERDICT_PASS;
        }
        write_addr(ctx, family, &orig.addr, orig.port);
    }
    VERDICT_PASS
}

#[cgroup_sock_addr(recvmsg4)]
pub fn egress_recvmsg4(ctx: SockAddrContext) -> i32 {
    try_recvmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn egress_recvmsg6(ctx: SockAddrContext) -> i32 {
    try_recvmsg(&ctx, Family::V6)
}

#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    #[cfg(feature = "upgrade-probe")]
    bump(Counter::UpgradeProbe);
    or_fail(try_connect(&ctx, Family::V4), Counter::ErrConnect4)
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    or_fail(try_connect(&ctx, Family::V6), Counter::ErrConnect6)
}

#[inline(always)]
fn try_getpeername(ctx: &SockAddrContext, family: Family) -> Result<i32, ()> {
    // SAFETY: the value is copied out immediately.
    let Some(orig) = (unsafe { EGRESS_SOCKORIG.get(cookie(ctx)).copied() }) else {
        return Ok(VERDICT_PASS);
    };
    let peer = read_addr(ctx, family);
    if let Some((addr, port)) = decide::peer_to_report(&orig, &peer, read_port(ctx)) {
        if family == Family::V4 && !is_v4_mapped(&addr) {
            // An IPv4 socket cannot report an IPv6 address; never happens since a
            // v4 socket's original destination is IPv4.
            return Err(());
        }
        write_addr(ctx, family, &addr, port);
    }
    Ok(VERDICT_PASS)
}

#[cgroup_sock_addr(getpeername4)]
pub fn egress_getpeername4(ctx: SockAddrContext) -> i32 {
    match try_getpeername(&ctx, Family::V4) {
        Ok(v) => v,
        Err(()) => {
            bump(Counter::ErrGetpeername4);
            VERDICT_PASS
        }
    }
}

#[cgroup_sock_addr(getpeername6)]
pub fn egress_getpeername6(ctx: SockAddrContext) -> i32 {
    match try_getpeername(&ctx, Family::V6) {
        Ok(v) => v,
        Err(()) => {
            bump(Counter::ErrGetpeername6);
            VERDICT_PASS
        }
    }
}

// ---------------------------------------------------------------------------------
// Traffic counters: TC on the host side of each workload's veth. Packets from the
// workload arrive there as ingress ("sent"), packets to it leave as egress
// ("received"). Counted per (workload, service, remote port, protocol).
// ---------------------------------------------------------------------------------

/// TCX: let the next program (or the default action) decide.
const TCX_NEXT: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Host-side veth ingress: the frames the workload sends — checked against its
/// view (the interface line), then counted.
#[classifier]
pub fn egress_tc_sent(ctx: TcContext) -> i32 {
    match guard::tc_sent(&ctx) {
        Ok(v) => v,
        Err(()) => {
            bump(Counter::ErrTcEnforce);
            if connect_fail_verdict() == VERDICT_ALLOW {
                TCX_NEXT
            } else {
                2
            }
        }
    }
}

/// Host-side veth egress: the frames the workload receives — flows a remote end
/// opens and the neighbours the network announces are remembered, then counted.
#[classifier]
pub fn egress_tc_received(ctx: TcContext) -> i32 {
    guard::tc_received(&ctx);
    TCX_NEXT
}
