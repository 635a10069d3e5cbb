//! The classification of one `connect()` (SPEC §7.3–7.4), as a plain function over a
//! [`Dataplane`]: the eBPF programs implement the trait with real maps and helpers,
//! the host tests with in-memory tables.

use crate::addr::Addr;
use crate::maps::*;

/// What the decision needs from the kernel: the caller's cgroups and the maps.
pub trait Dataplane {
    /// The cgroup id of the calling task.
    fn current_cgroup_id(&self) -> u64;
    /// The id of the calling task's ancestor cgroup at `level` (0 = root), or 0 when
    /// the task's cgroup is shallower than `level`.
    fn ancestor_cgroup_id(&self, level: u32) -> u64;
    fn workload(&self, cgroup_id: u64) -> Option<WorkloadValue>;
    /// Longest-prefix match in [`POLICY_CIDRS_MAP`] (only consulted when nothing
    /// in the registry matched).
    fn policy_cidr(&self, addr: &Addr) -> Option<PolicyCidrValue>;
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    /// Longest-prefix match in [`CIDRS_MAP`] with the full key (prefix = all bits).
    fn cidr(&self, key: &CidrKey) -> Option<CidrValue>;
    fn backend(&self, key: &BackendKey) -> Option<Backend>;
    /// The DNS capture settings ([`DNS_MAP`]), if configured.
    fn dns(&self) -> Option<DnsConfig>;
    fn learned(&self, key: &LearnedKey) -> Option<LearnedValue>;
    /// The workload with this address ([`WORKLOAD_IPS_MAP`]).
    fn workload_by_ip(&self, addr: &Addr) -> Option<WorkloadValue>;
}

/// One `connect()` as the hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Destination, network byte order, IPv4 v4-mapped.
    pub addr: Addr,
    /// Destination port, host byte order.
    pub port: u16,
    pub proto: u8,
    /// The socket is AF_INET: only IPv4 backends can be used.
    pub v4_socket: bool,
    /// A uniformly random number for the backend pick.
    pub random: u32,
    /// `CLOCK_BOOTTIME` now, in nanoseconds (for learned-entry expiry).
    pub now_ns: u64,
    /// A `connect()` of a UDP socket (no data is sent by it).
    pub udp_connect: bool,
}

/// A classified `connect()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub workload: WorkloadValue,
    pub action: Action,
    pub reason: Reason,
    pub matched: MatchKind,
    /// 0 when no service matched.
    pub service_id: u32,
    /// Where to send the connection when `action == Rewrite`.
    pub backend: Backend,
}

/// The result of [`classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not an enforced workload, or an excluded destination: leave it alone, count
    /// nothing.
    Untouched,
    /// A workload's DNS query: send it to the agent's proxy at this address.
    Dns(Backend),
    Decided(Decision),
}

/// An internal inconsistency (a map entry referring to one that is missing). The
/// program answers with its failure verdict and bumps its error counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    MissingBackend,
}

/// The workload the calling task belongs to: its own cgroup, else the deepest
/// ancestor that is a workload, so a child cgroup cannot escape its pod.
#[inline(always)]
pub fn find_workload<D: Dataplane>(d: &D) -> Option<WorkloadValue> {
    find_workload_key(d).map(|(_, w)| w)
}

/// As [`find_workload`], with the cgroup id whose entry matched.
#[inline(always)]
pub fn find_workload_key<D: Dataplane>(d: &D) -> Option<(u64, WorkloadValue)> {
    let id = d.current_cgroup_id();
    if let Some(w) = d.workload(id) {
        return Some((id, w));
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        level -= 1;
        let id = d.ancestor_cgroup_id(level);
        if id != 0
            && let Some(w) = d.workload(id)
        {
            return Some((id, w));
        }
    }
    None
}

/// The `transport` an access-log line and a counter name: the IP protocol of a
/// connection or packet, the socket kind of a refused `socket()`, the option of
/// a refused `setsockopt()`. For [`Reason::SocketType`] in stats, `port` is
/// [`socket_stat_port`]; in events, `family` and `port` carry family and type.
pub fn transport_label(layer: Layer, family: u32, port: u16, proto: u8) -> &'static str {
    match layer {
        Layer::Socket => SocketKind::of(family, u32::from(port), u32::from(proto)).label(),
        Layer::Sockopt => match port {
            4 => "ip_options",
            6 => "ipv6_pktoptions",
            _ => "ipv6_rthdr",
        },
        _ => match proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_ICMP => "icmp",
            PROTO_ICMPV6 => "icmpv6",
            4 => "ipip",
            41 => "ipv6-in-ip",
            47 => "gre",
            50 => "esp",
            51 => "ah",
            132 => "sctp",
            136 => "udplite",
            PSEUDO_NON_IP => "non_ip",
            PSEUDO_ARP => "arp",
            _ => "other",
        },
    }
}

/// [`transport_label`] for a stats key (which has no layer: the reason says).
pub fn stat_transport(k: &StatKey) -> &'static str {
    match Reason::from_u8(k.reason) {
        Some(Reason::SocketType) => {
            let (family, ty) = socket_from_stat_port(k.port);
            transport_label(Layer::Socket, family, ty as u16, k.proto)
        }
        Some(Reason::SourceRoute) if k.proto == SOCKOPT_STAT_PROTO => {
            transport_label(Layer::Sockopt, 0, k.port & 0xff, 0)
        }
        _ => transport_label(Layer::Connect, 0, k.port, k.proto),
    }
}

/// Does a stats key's port field hold a destination port (not a refused
/// `socket()`'s family and type, or a refused option's name)?
pub fn stat_has_port(k: &StatKey) -> bool {
    match Reason::from_u8(k.reason) {
        Some(Reason::SocketType) => false,
        Some(Reason::SourceRoute) => k.proto != SOCKOPT_STAT_PROTO,
        _ => true,
    }
}

/// Pseudo protocol numbers (the experimental range of RFC 3692, never a real
/// packet's) that name non-IP frames refused on an interface.
pub const PSEUDO_NON_IP: u8 = 253;
pub const PSEUDO_ARP: u8 = 254;

/// The stats key's protocol of a refused `setsockopt()` (IP protocol 255 is
/// reserved: no packet carries it); its port is `level << 8 | optname`.
pub const SOCKOPT_STAT_PROTO: u8 = 255;

/// How a refused `socket()` is counted in the stats key's port: family and type.
#[inline(always)]
pub fn socket_stat_port(family: u32, ty: u32) -> u16 {
    ((family as u16 & 0xff) << 8) | (ty as u16 & 0xff)
}

/// The inverse of [`socket_stat_port`]: (family, type).
pub fn socket_from_stat_port(port: u16) -> (u32, u32) {
    (u32::from(port >> 8), u32::from(port & 0xff))
}

/// The default for a cgroup under the attach point that is not a known workload
/// (`unknownWorkloads`): `None` when such cgroups are left untouched.
#[inline(always)]
pub fn unknown_default<D: Dataplane>(d: &D) -> Option<WorkloadValue> {
    match d.workload(UNKNOWN_CGROUP) {
        Some(w) if w.flags & WL_UNTOUCHED == 0 => Some(w),
        _ => None,
    }
}

/// A workload entry as enforcement sees it: `None` for one known and left
/// alone ([`WL_UNTOUCHED`]: a hostNetwork or opted-out pod, the agent's own).
#[inline(always)]
pub fn touched(w: WorkloadValue) -> Option<WorkloadValue> {
    if w.flags & WL_UNTOUCHED == 0 {
        Some(w)
    } else {
        None
    }
}

/// The workload of the calling task's cgroup, else the unknown-workload default.
#[inline(always)]
pub fn current_workload<D: Dataplane>(d: &D) -> Option<WorkloadValue> {
    match find_workload(d) {
        Some(w) => touched(w),
        None => unknown_default(d),
    }
}

/// The workload a socket belongs to: the one of the cgroup it was created in
/// (its tag), not the caller's — a process that left the pod, or a kernel worker
/// acting for the socket, does not change it. Untagged sockets (created before the
/// programs were attached, or by the kernel) are judged by the caller's cgroup.
/// Anything unknown gets the unknown-workload default.
#[inline(always)]
pub fn socket_workload<D: Dataplane>(d: &D, tag: Option<&SockTag>) -> Option<WorkloadValue> {
    if let Some(t) = tag
        && t.flags & TAG_CREATED != 0
    {
        if t.workload_key != 0
            && let Some(w) = d.workload(t.workload_key)
        {
            return touched(w);
        }
        if t.cgroup_id != d.current_cgroup_id() {
            // Used away from where it was made: its creator's cgroup decides.
            return match d.workload(t.cgroup_id) {
                Some(w) => touched(w),
                None => unknown_default(d),
            };
        }
    }
    current_workload(d)
}

/// The socket kinds the connect/sendmsg layer cannot judge, named for the
/// `allowSockets` switch and the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// TCP, MPTCP, UDP (the hooks judge them), UNIX and NETLINK (no IP traffic).
    Judged,
    /// ICMP/ICMPv6 "ping" datagram sockets.
    Icmp,
    /// `SOCK_RAW` of AF_INET/AF_INET6.
    Raw,
    /// AF_PACKET.
    Packet,
    UdpLite,
    Sctp,
    /// Any other AF_INET/AF_INET6 protocol, any other family.
    Other,
}

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;
pub const AF_PACKET: u32 = 17;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
pub const SOCK_SEQPACKET: u32 = 5;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_SCTP: u32 = 132;
const IPPROTO_UDPLITE: u32 = 136;

impl SocketKind {
    /// The kind of socket `socket(family, ty, proto)` makes (`proto` 0 is the
    /// type's default: TCP for streams, UDP for datagrams).
    #[inline(always)]
    pub fn of(family: u32, ty: u32, proto: u32) -> Self {
        match family {
            AF_UNIX | AF_NETLINK => return Self::Judged,
            AF_PACKET => return Self::Packet,
            AF_INET | AF_INET6 => {}
            _ => return Self::Other,
        }
        match (ty, proto) {
            (SOCK_RAW, _) => Self::Raw,
            (SOCK_STREAM, 0 | IPPROTO_TCP | PROTO_MPTCP) => Self::Judged,
            (SOCK_DGRAM, 0 | IPPROTO_UDP) => Self::Judged,
            (SOCK_DGRAM, IPPROTO_ICMP | IPPROTO_ICMPV6) => Self::Icmp,
            (SOCK_DGRAM, IPPROTO_UDPLITE) => Self::UdpLite,
            (SOCK_STREAM | SOCK_SEQPACKET, IPPROTO_SCTP) => Self::Sctp,
            _ => Self::Other,
        }
    }

    /// The workload flag that re-allows this kind.
    #[inline(always)]
    pub const fn allow_flag(self) -> u32 {
        match self {
            Self::Judged => 0,
            Self::Icmp => WL_SOCK_ICMP,
            Self::Raw => WL_SOCK_RAW,
            Self::Packet => WL_SOCK_PACKET,
            Self::UdpLite => WL_SOCK_UDPLITE,
            Self::Sctp => WL_SOCK_SCTP,
            Self::Other => WL_SOCK_OTHER,
        }
    }

    /// The name in `allowSockets` and in the access log's `transport`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Judged => "judged",
            Self::Icmp => "icmp",
            Self::Raw => "raw",
            Self::Packet => "packet",
            Self::UdpLite => "udplite",
            Self::Sctp => "sctp",
            Self::Other => "other",
        }
    }
}

/// May this workload create such a socket? `None`: yes, untouched. Otherwise
/// the decision (deny, or audit in audit mode). Only REGISTRY_ONLY workloads are
/// held to it: under ALLOW_ANY nothing is refused anyway.
#[inline(always)]
pub fn socket_decision(w: &WorkloadValue, kind: SocketKind) -> Option<Decision> {
    if kind == SocketKind::Judged
        || w.flags & WL_REGISTRY_ONLY == 0
        || w.flags & kind.allow_flag() != 0
    {
        return None;
    }
    Some(deny(
        Decision {
            workload: *w,
            action: Action::Deny,
            reason: Reason::SocketType,
            matched: MatchKind::None,
            service_id: 0,
            backend: Backend::default(),
        },
        Reason::SocketType,
    ))
}

/// A refusal of something that changes the first hop (a source route), for a
/// REGISTRY_ONLY workload; `None` otherwise.
#[inline(always)]
pub fn source_route_decision(w: &WorkloadValue) -> Option<Decision> {
    if w.flags & WL_REGISTRY_ONLY == 0 {
        return None;
    }
    Some(deny(
        Decision {
            workload: *w,
            action: Action::Deny,
            reason: Reason::SourceRoute,
            matched: MatchKind::None,
            service_id: 0,
            backend: Backend::default(),
        },
        Reason::SourceRoute,
    ))
}

/// Classifies one `connect()` (SPEC §7.3) of the calling task's cgroup.
#[inline(always)]
pub fn classify<D: Dataplane>(d: &D, c: &Connect) -> Result<Outcome, Error> {
    classify_as(d, current_workload(d), c)
}

/// Classifies one `connect()` (SPEC §7.3) for `workload` (`None`: untouched):
/// excluded → VIP / CIDR / learned → cluster-internal → the workload's policy
/// for unknown destinations. A service endpoint's own address is not a registry
/// address (as Istio's listeners behave): it falls through to the policy.
#[inline(always)]
pub fn classify_as<D: Dataplane>(
    d: &D,
    workload: Option<WorkloadValue>,
    c: &Connect,
) -> Result<Outcome, Error> {
    let Some(workload) = workload else {
        return Ok(Outcome::Untouched);
    };
    if c.port == DNS_PORT
        && let Some(dns) = d.dns()
        && dns.flags & DNS_CAPTURE != 0
    {
        return Ok(dns_redirect(&dns, c));
    }
    if c.proto == PROTO_UDP && workload.flags & WL_UDP == 0 {
        return Ok(Outcome::Untouched);
    }
    let decision = Decision {
        workload,
        action: Action::Allow,
        reason: Reason::RegistryMatch,
        matched: MatchKind::None,
        service_id: 0,
        backend: Backend::default(),
    };
    // The registry first: the agent never puts an address of an excluded CIDR
    // in it, so this order equals SPEC §7.3's and spares the common case (a VIP)
    // the LPM lookup of the excluded and cluster CIDRs.
    if let Some(r) = registry_match(d, c, decision, false) {
        return r;
    }
    let mut cluster = false;
    if let Some(p) = d.policy_cidr(&c.addr) {
        if p.kind == POLICY_EXCLUDED {
            return Ok(Outcome::Untouched);
        }
        cluster = p.kind == POLICY_CLUSTER;
    }
    // getaddrinfo() connect()s a UDP socket to every address it got, on the
    // service port, to pick source addresses (RFC 6724): a destination allowed
    // over TCP on that port is let through untouched, not counted as refused.
    if c.proto == PROTO_UDP && c.udp_connect {
        let tcp = Connect {
            proto: PROTO_TCP,
            ..*c
        };
        if let Some(Ok(Outcome::Decided(t))) = registry_match(d, &tcp, decision, false)
            && matches!(t.action, Action::Allow | Action::Rewrite)
        {
            return Ok(Outcome::Untouched);
        }
    }
    let mut decision = decision;
    if cluster {
        decision.reason = Reason::ClusterInternal;
        return Ok(Outcome::Decided(decision));
    }
    if workload.flags & WL_REGISTRY_ONLY != 0 {
        return Ok(Outcome::Decided(deny(decision, Reason::RegistryOnly)));
    }
    decision.reason = Reason::AllowAny;
    Ok(Outcome::Decided(decision))
}

/// One packet as the packet-level check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketDest {
    /// Destination, network byte order, IPv4 v4-mapped.
    pub addr: Addr,
    /// Destination port, host byte order (0 for ICMP).
    pub port: u16,
    pub proto: u8,
}

/// The packet-level second line: may a packet of `w` go to `p`? Where a
/// `connect()` may lead, its packets may go: the DNS proxy, excluded and
/// cluster CIDRs, a service endpoint (where a VIP is rewritten to), a
/// pass-through CIDR (also on its `targetPort`), a learned address. A VIP itself
/// is never a packet's destination (connect rewrote it). Returns the service id
/// matched (0: none) when allowed.
#[inline(always)]
pub fn packet_allowed<D: Dataplane>(
    d: &D,
    w: &WorkloadValue,
    p: &PacketDest,
    now_ns: u64,
) -> Option<u32> {
    if w.flags & WL_REGISTRY_ONLY == 0 {
        return Some(0);
    }
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return None;
    }
    if p.proto == PROTO_UDP && w.flags & WL_UDP == 0 {
        return Some(0);
    }
    if let Some(dns) = d.dns()
        && dns.flags & DNS_CAPTURE != 0
        && p.port == dns.port
        && (p.addr == dns.proxy_v4 || (dns.flags & DNS_HAS_V6 != 0 && p.addr == dns.proxy_v6))
    {
        return Some(0);
    }
    let key = ServiceKey {
        addr: p.addr,
        view_id: w.view_id,
        port: p.port,
        proto: p.proto,
        _pad: 0,
    };
    if let Some(svc) = d.service(&key)
        && svc.kind == SVC_ENDPOINT
    {
        return Some(svc.service_id);
    }
    let ckey = CidrKey {
        view_id: w.view_id,
        port: p.port,
        proto: p.proto,
        _pad: 0,
        addr: p.addr,
    };
    if let Some(cidr) = d.cidr(&ckey)
        && cidr.kind != CIDR_BALANCE
    {
        return Some(cidr.service_id);
    }
    let lkey = LearnedKey {
        addr: p.addr,
        workload_id: w.workload_id,
        port: p.port,
        proto: p.proto,
        _pad: 0,
    };
    if let Some(l) = d.learned(&lkey)
        && l.expires_ns > now_ns
    {
        return Some(l.service_id);
    }
    if d.policy_cidr(&p.addr).is_some() {
        return Some(0);
    }
    None
}

/// A packet-level refusal for `reason`, or its audited form.
#[inline(always)]
pub fn packet_decision(w: &WorkloadValue, reason: Reason) -> Decision {
    deny(
        Decision {
            workload: *w,
            action: Action::Deny,
            reason,
            matched: MatchKind::None,
            service_id: 0,
            backend: Backend::default(),
        },
        reason,
    )
}

/// Is `addr` in an excluded CIDR (loopback by default)?
#[inline(always)]
pub fn excluded<D: Dataplane>(d: &D, addr: &Addr) -> bool {
    d.policy_cidr(addr)
        .is_some_and(|p| p.kind == POLICY_EXCLUDED)
}

/// The registry steps (SPEC §7.3 steps 2–4): VIP or endpoint, CIDR, learned.
/// `None` when nothing in the workload's view matches.
#[inline(always)]
fn registry_match<D: Dataplane>(
    d: &D,
    c: &Connect,
    mut decision: Decision,
    endpoints: bool,
) -> Option<Result<Outcome, Error>> {
    let workload = decision.workload;
    let key = ServiceKey {
        addr: c.addr,
        view_id: workload.view_id,
        port: c.port,
        proto: c.proto,
        _pad: 0,
    };
    if let Some(svc) = d.service(&key) {
        if svc.kind == SVC_ENDPOINT {
            if endpoints {
                decision.service_id = svc.service_id;
                decision.matched = MatchKind::Endpoint;
                return Some(Ok(Outcome::Decided(decision)));
            }
        } else {
            decision.service_id = svc.service_id;
            decision.matched = MatchKind::Vip;
            return Some(pick(d, c, decision, svc.set_id, svc.slots, svc.v4_slots));
        }
    }

    let ckey = CidrKey {
        view_id: workload.view_id,
        port: c.port,
        proto: c.proto,
        _pad: 0,
        addr: c.addr,
    };
    if let Some(cidr) = d.cidr(&ckey)
        && cidr.kind != CIDR_PACKET_ONLY
    {
        decision.service_id = cidr.service_id;
        decision.matched = MatchKind::Cidr;
        if cidr.kind == CIDR_BALANCE {
            return Some(pick(d, c, decision, cidr.set_id, cidr.slots, cidr.v4_slots));
        }
        if cidr.target_port != 0 && cidr.target_port != c.port {
            decision.action = Action::Rewrite;
            decision.backend = Backend {
                addr: c.addr,
                port: cidr.target_port,
                _pad: [0; 2],
            };
        }
        return Some(Ok(Outcome::Decided(decision)));
    }

    let lkey = LearnedKey {
        addr: c.addr,
        workload_id: workload.workload_id,
        port: c.port,
        proto: c.proto,
        _pad: 0,
    };
    if let Some(l) = d.learned(&lkey)
        && l.expires_ns > c.now_ns
    {
        decision.service_id = l.service_id;
        decision.matched = MatchKind::Dns;
        return Some(Ok(Outcome::Decided(decision)));
    }
    None
}

/// Where a DNS query goes: the proxy itself is left alone (queries to it always
/// pass); anything else on port 53 is sent to the proxy of the socket's family.
#[inline(always)]
fn dns_redirect(dns: &DnsConfig, c: &Connect) -> Outcome {
    if c.addr == dns.proxy_v4 || (dns.flags & DNS_HAS_V6 != 0 && c.addr == dns.proxy_v6) {
        return Outcome::Untouched;
    }
    let use_v6 = !c.v4_socket && !crate::addr::is_v4_mapped(&c.addr) && dns.flags & DNS_HAS_V6 != 0;
    Outcome::Dns(Backend {
        addr: if use_v6 { dns.proxy_v6 } else { dns.proxy_v4 },
        port: dns.port,
        _pad: [0; 2],
    })
}

/// Rewrites to a random slot of a backend set; an empty set refuses.
#[inline(always)]
fn pick<D: Dataplane>(
    d: &D,
    c: &Connect,
    mut decision: Decision,
    set_id: u32,
    all_slots: u16,
    v4_slots: u16,
) -> Result<Outcome, Error> {
    let slots = if c.v4_socket { v4_slots } else { all_slots };
    if slots == 0 {
        return Ok(Outcome::Decided(deny(decision, Reason::NoEndpoints)));
    }
    let slot = c.random % slots as u32;
    let backend = d
        .backend(&BackendKey { set_id, slot })
        .ok_or(Error::MissingBackend)?;
    decision.action = Action::Rewrite;
    decision.backend = backend;
    Ok(Outcome::Decided(decision))
}

/// Who a packet between a workload address and a remote end belongs to, for the
/// traffic counters: the workload, and the service whose endpoint, CIDR or learned
/// address the remote end is (0: not in the registry). `None`: not a workload.
#[inline(always)]
pub fn attribute<D: Dataplane>(
    d: &D,
    workload_addr: &Addr,
    remote: &Addr,
    remote_port: u16,
    proto: u8,
) -> Option<(u32, u32)> {
    let w = d.workload_by_ip(workload_addr)?;
    let key = ServiceKey {
        addr: *remote,
        view_id: w.view_id,
        port: remote_port,
        proto,
        _pad: 0,
    };
    if let Some(s) = d.service(&key) {
        return Some((w.workload_id, s.service_id));
    }
    let ckey = CidrKey {
        view_id: w.view_id,
        port: remote_port,
        proto,
        _pad: 0,
        addr: *remote,
    };
    if let Some(c) = d.cidr(&ckey) {
        return Some((w.workload_id, c.service_id));
    }
    let lkey = LearnedKey {
        addr: *remote,
        workload_id: w.workload_id,
        port: remote_port,
        proto,
        _pad: 0,
    };
    let service_id = d.learned(&lkey).map_or(0, |l| l.service_id);
    Some((w.workload_id, service_id))
}

/// Token-bucket step for the access-log rate limit: true when an event may be
/// emitted. `interval_ns` is the cost of one event, `burst_ns` the credit cap.
#[inline(always)]
pub fn rate_allow(b: &mut RateBucket, now_ns: u64, interval_ns: u64, burst_ns: u64) -> bool {
    let earned = now_ns.saturating_sub(b.last_ns);
    b.last_ns = now_ns;
    let credit = b.credit_ns.saturating_add(earned);
    b.credit_ns = if credit > burst_ns { burst_ns } else { credit };
    if b.credit_ns >= interval_ns {
        b.credit_ns -= interval_ns;
        true
    } else {
        b.dropped += 1;
        false
    }
}

/// A denial, or its audited form when the workload is in audit mode.
#[inline(always)]
fn deny(mut d: Decision, reason: Reason) -> Decision {
    d.reason = reason;
    d.action = if d.workload.flags & WL_AUDIT != 0 {
        Action::Audit
    } else {
        Action::Deny
    };
    d
}

/// The stats key a decision is counted under.
#[inline(always)]
pub fn stat_key(d: &Decision, c: &Connect) -> StatKey {
    StatKey {
        workload_id: d.workload.workload_id,
        service_id: d.service_id,
        port: c.port,
        proto: c.proto,
        action: d.action as u8,
        reason: d.reason as u8,
        matched: d.matched as u8,
        _pad: [0; 2],
    }
}

/// The address `getpeername()` should report for a socket: the original
/// destination when the kernel's peer is still the backend it was rewritten to.
#[inline(always)]
pub fn peer_to_report(orig: &OrigDest, peer: &Addr, peer_port: u16) -> Option<(Addr, u16)> {
    if orig.backend_addr == *peer && orig.backend_port == peer_port {
        Some((orig.orig_addr, orig.orig_port))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;

    use super::*;
    use crate::addr::to_addr;

    /// In-memory dataplane. CIDR tables are (prefix bits on the 128-bit scale, key
    /// with masked address) lists searched longest first, as the LPM trie does.
    #[derive(Default)]
    struct Fake {
        cgroup: u64,
        ancestors: Vec<u64>,
        workloads: HashMap<u64, WorkloadValue>,
        policy: Vec<(u32, Addr, PolicyCidrValue)>,
        services: HashMap<ServiceKey, ServiceValue>,
        cidrs: Vec<(u32, CidrKey, CidrValue)>,
        backends: HashMap<BackendKey, Backend>,
        dns: Option<DnsConfig>,
        learned: HashMap<LearnedKey, LearnedValue>,
        workload_ips: HashMap<Addr, WorkloadValue>,
    }

    fn masked(a: &Addr, bits: u32) -> Addr {
        let mut out = [0u8; 16];
        for i in 0..16 {
            let b = bits.saturating_sub(i as u32 * 8).min(8);
            let mask = if b == 0 { 0 } else { 0xffu8 << (8 - b) };
            out[i] = a[i] & mask;
        }
        out
    }

    impl Dataplane for Fake {
        fn current_cgroup_id(&self) -> u64 {
            self.cgroup
        }
        fn ancestor_cgroup_id(&self, level: u32) -> u64 {
            self.ancestors.get(level as usize).copied().unwrap_or(0)
        }
        fn workload(&self, id: u64) -> Option<WorkloadValue> {
            self.workloads.get(&id).copied()
        }
        fn policy_cidr(&self, addr: &Addr) -> Option<PolicyCidrValue> {
            self.policy
                .iter()
                .filter(|(bits, net, _)| masked(addr, *bits) == *net)
                .max_by_key(|(bits, _, _)| *bits)
                .map(|(_, _, v)| *v)
        }
        fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
            self.services.get(key).copied()
        }
        fn cidr(&self, key: &CidrKey) -> Option<CidrValue> {
            self.cidrs
                .iter()
                .filter(|(bits, k, _)| {
                    k.view_id == key.view_id
                        && k.port == key.port
                        && k.proto == key.proto
                        && masked(&key.addr, *bits) == k.addr
                })
                .max_by_key(|(bits, _, _)| *bits)
                .map(|(_, _, v)| *v)
        }
        fn backend(&self, key: &BackendKey) -> Option<Backend> {
            self.backends.get(key).copied()
        }
        fn dns(&self) -> Option<DnsConfig> {
            self.dns
        }
        fn learned(&self, key: &LearnedKey) -> Option<LearnedValue> {
            self.learned.get(key).copied()
        }
        fn workload_by_ip(&self, addr: &Addr) -> Option<WorkloadValue> {
            self.workload_ips.get(addr).copied()
        }
    }

    fn a(s: &str) -> Addr {
        to_addr(s.parse::<IpAddr>().unwrap())
    }

    const POD_CG: u64 = 100;

    fn world(flags: u32) -> Fake {
        let mut f = Fake {
            cgroup: POD_CG,
            ..Fake::default()
        };
        f.workloads.insert(
            POD_CG,
            WorkloadValue {
                workload_id: 7,
                view_id: 1,
                flags,
                _pad: 0,
            },
        );
        // VIP 240.240.0.1:80 → two backends (one v4, one v6).
        f.services.insert(
            svc_key("240.240.0.1", 80),
            ServiceValue {
                service_id: 3,
                set_id: 9,
                slots: 2,
                v4_slots: 1,
                kind: SVC_VIP,
                _pad: [0; 3],
            },
        );
        f.backends.insert(
            BackendKey { set_id: 9, slot: 0 },
            Backend {
                addr: a("198.18.0.11"),
                port: 8080,
                _pad: [0; 2],
            },
        );
        f.backends.insert(
            BackendKey { set_id: 9, slot: 1 },
            Backend {
                addr: a("2001:db8::12"),
                port: 8080,
                _pad: [0; 2],
            },
        );
        f.services.insert(
            svc_key("198.18.0.11", 8080),
            ServiceValue {
                service_id: 3,
                kind: SVC_ENDPOINT,
                ..ServiceValue::default()
            },
        );
        f.cidrs.push((
            96 + 24,
            CidrKey {
                view_id: 1,
                port: 443,
                proto: PROTO_TCP,
                _pad: 0,
                addr: a("203.0.113.0"),
            },
            CidrValue {
                service_id: 4,
                kind: CIDR_PASSTHROUGH,
                ..CidrValue::default()
            },
        ));
        f.policy.push((
            96 + 8,
            a("127.0.0.0"),
            PolicyCidrValue {
                kind: POLICY_EXCLUDED,
            },
        ));
        f
    }

    fn svc_key(addr: &str, port: u16) -> ServiceKey {
        ServiceKey {
            addr: a(addr),
            view_id: 1,
            port,
            proto: PROTO_TCP,
            _pad: 0,
        }
    }

    fn conn(addr: &str, port: u16, random: u32) -> Connect {
        let ad = a(addr);
        Connect {
            addr: ad,
            port,
            proto: PROTO_TCP,
            v4_socket: crate::addr::is_v4_mapped(&ad),
            random,
            now_ns: 1_000,
            udp_connect: false,
        }
    }

    fn decided(o: Result<Outcome, Error>) -> Decision {
        match o {
            Ok(Outcome::Decided(d)) => d,
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    #[test]
    fn vip_is_rewritten_to_a_v4_backend_on_a_v4_socket() {
        let f = world(WL_REGISTRY_ONLY);
        for random in [0, 1, 2, 3, u32::MAX] {
            let d = decided(classify(&f, &conn("240.240.0.1", 80, random)));
            assert_eq!(d.action, Action::Rewrite);
            assert_eq!(d.matched, MatchKind::Vip);
            assert_eq!(d.service_id, 3);
            assert_eq!(d.backend.addr, a("198.18.0.11"));
            assert_eq!(d.backend.port, 8080);
        }
    }

    #[test]
    fn v6_socket_picks_among_all_slots() {
        let f = world(WL_REGISTRY_ONLY);
        let mut c = conn("240.240.0.1", 80, 1);
        c.v4_socket = false; // a v4-mapped destination on an AF_INET6 socket
        let d = decided(classify(&f, &c));
        assert_eq!(d.backend.addr, a("2001:db8::12"));
        c.random = 2;
        let d = decided(classify(&f, &c));
        assert_eq!(d.backend.addr, a("198.18.0.11"));
    }

    #[test]
    fn vip_on_unregistered_port_is_unknown() {
        let f = world(WL_REGISTRY_ONLY);
        let d = decided(classify(&f, &conn("240.240.0.1", 81, 0)));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.reason, Reason::RegistryOnly);
        assert_eq!(d.matched, MatchKind::None);
        assert_eq!(d.service_id, 0);
    }

    #[test]
    fn endpoint_address_is_not_a_registry_address_but_its_packets_pass() {
        let f = world(WL_REGISTRY_ONLY);
        let d = decided(classify(&f, &conn("198.18.0.11", 8080, 0)));
        assert_eq!(
            (d.action, d.reason, d.matched, d.service_id),
            (Action::Deny, Reason::RegistryOnly, MatchKind::None, 0)
        );
        // Where a rewritten VIP connection goes, its packets may go.
        let w = f.workloads[&POD_CG];
        let p = PacketDest {
            addr: a("198.18.0.11"),
            port: 8080,
            proto: PROTO_TCP,
        };
        assert_eq!(packet_allowed(&f, &w, &p, 0), Some(3));
        // A VIP itself is never a packet's destination, nor another port.
        let vip = PacketDest {
            addr: a("240.240.0.1"),
            port: 80,
            ..p
        };
        assert_eq!(packet_allowed(&f, &w, &vip, 0), None);
        let other = PacketDest { port: 22, ..p };
        assert_eq!(packet_allowed(&f, &w, &other, 0), None);
    }

    #[test]
    fn packet_check_follows_cidrs_learned_dns_and_policy() {
        let mut f = world(WL_REGISTRY_ONLY | WL_UDP);
        f.dns = Some(DnsConfig {
            proxy_v4: a("198.18.0.1"),
            port: 53,
            flags: DNS_CAPTURE,
            ..DnsConfig::default()
        });
        let w = f.workloads[&POD_CG];
        let at = |addr: &str, port: u16, proto: u8| PacketDest {
            addr: a(addr),
            port,
            proto,
        };
        assert_eq!(
            packet_allowed(&f, &w, &at("203.0.113.9", 443, PROTO_TCP), 0),
            Some(4)
        );
        assert_eq!(
            packet_allowed(&f, &w, &at("198.18.0.1", 53, PROTO_UDP), 0),
            Some(0)
        );
        assert_eq!(
            packet_allowed(&f, &w, &at("198.18.0.1", 54, PROTO_UDP), 0),
            None
        );
        assert_eq!(
            packet_allowed(&f, &w, &at("127.0.0.1", 5432, PROTO_TCP), 0),
            Some(0)
        );
        assert_eq!(
            packet_allowed(&f, &w, &at("192.0.2.1", 22, PROTO_TCP), 0),
            None
        );
        // Not TCP or UDP (a tunnel, ICMP): nothing the registry allows.
        assert_eq!(packet_allowed(&f, &w, &at("203.0.113.9", 0, 47), 0), None);
        f.learned.insert(
            LearnedKey {
                addr: a("192.0.2.1"),
                workload_id: 7,
                port: 22,
                proto: PROTO_TCP,
                _pad: 0,
            },
            LearnedValue {
                service_id: 9,
                _pad: 0,
                expires_ns: 100,
            },
        );
        assert_eq!(
            packet_allowed(&f, &w, &at("192.0.2.1", 22, PROTO_TCP), 50),
            Some(9)
        );
        assert_eq!(
            packet_allowed(&f, &w, &at("192.0.2.1", 22, PROTO_TCP), 150),
            None
        );
        // A NONE entry's targetPort: its packets pass, a connect() does not.
        f.cidrs.push((
            96 + 24,
            CidrKey {
                view_id: 1,
                port: 8443,
                proto: PROTO_TCP,
                _pad: 0,
                addr: a("203.0.113.0"),
            },
            CidrValue {
                service_id: 4,
                kind: CIDR_PACKET_ONLY,
                ..CidrValue::default()
            },
        ));
        assert_eq!(
            packet_allowed(&f, &w, &at("203.0.113.9", 8443, PROTO_TCP), 0),
            Some(4)
        );
        let d = decided(classify(&f, &conn("203.0.113.9", 8443, 0)));
        assert_eq!(d.action, Action::Deny);
        // ALLOW_ANY: everything.
        let any = WorkloadValue { flags: 0, ..w };
        assert_eq!(
            packet_allowed(&f, &any, &at("192.0.2.1", 1, 47), 0),
            Some(0)
        );
    }

    #[test]
    fn unknown_cgroups_get_the_default_unless_untouched() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.cgroup = 555;
        f.ancestors = vec![1, 2, 555];
        assert_eq!(
            classify(&f, &conn("192.0.2.1", 22, 0)),
            Ok(Outcome::Untouched)
        );
        let default = WorkloadValue {
            workload_id: UNKNOWN_WORKLOAD_ID,
            view_id: EMPTY_VIEW_ID,
            flags: WL_REGISTRY_ONLY,
            _pad: 0,
        };
        f.workloads.insert(UNKNOWN_CGROUP, default);
        let d = decided(classify(&f, &conn("192.0.2.1", 22, 0)));
        assert_eq!(
            (d.workload.workload_id, d.action),
            (UNKNOWN_WORKLOAD_ID, Action::Deny)
        );
        // The empty view has no VIP.
        let d = decided(classify(&f, &conn("240.240.0.1", 80, 0)));
        assert_eq!(d.action, Action::Deny);
        f.workloads.insert(
            UNKNOWN_CGROUP,
            WorkloadValue {
                flags: WL_REGISTRY_ONLY | WL_UNTOUCHED,
                ..default
            },
        );
        assert_eq!(
            classify(&f, &conn("192.0.2.1", 22, 0)),
            Ok(Outcome::Untouched)
        );
    }

    #[test]
    fn a_socket_belongs_to_the_cgroup_it_was_created_in() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.workloads.insert(
            UNKNOWN_CGROUP,
            WorkloadValue {
                workload_id: UNKNOWN_WORKLOAD_ID,
                view_id: EMPTY_VIEW_ID,
                flags: 0,
                _pad: 0,
            },
        );
        let made_in_pod = SockTag {
            cgroup_id: POD_CG,
            workload_key: POD_CG,
            flags: TAG_CREATED,
            ..SockTag::default()
        };
        // Used by a process that moved out to a cgroup the agent does not know.
        f.cgroup = 555;
        f.ancestors = vec![1, 555];
        assert_eq!(
            socket_workload(&f, Some(&made_in_pod)).unwrap().workload_id,
            7
        );
        // Made in a child cgroup of the pod (matched key = the pod).
        let made_in_child = SockTag {
            cgroup_id: 999,
            ..made_in_pod
        };
        assert_eq!(
            socket_workload(&f, Some(&made_in_child))
                .unwrap()
                .workload_id,
            7
        );
        // Made where no workload was known, used elsewhere: its creator's cgroup
        // decides, else the default; never the caller's.
        let stranger = SockTag {
            cgroup_id: 4242,
            workload_key: 0,
            flags: TAG_CREATED,
            ..SockTag::default()
        };
        f.cgroup = POD_CG;
        assert_eq!(
            socket_workload(&f, Some(&stranger)).unwrap().workload_id,
            UNKNOWN_WORKLOAD_ID
        );
        // Made where no workload was known yet, used there once it is known.
        let early = SockTag {
            cgroup_id: POD_CG,
            ..stranger
        };
        assert_eq!(socket_workload(&f, Some(&early)).unwrap().workload_id, 7);
        // Untagged (made before the programs were attached, or by the kernel):
        // the caller's cgroup.
        assert_eq!(socket_workload(&f, None).unwrap().workload_id, 7);
        f.cgroup = 555;
        assert_eq!(
            socket_workload(&f, None).unwrap().workload_id,
            UNKNOWN_WORKLOAD_ID
        );
    }

    #[test]
    fn socket_kinds_the_connect_layer_cannot_judge() {
        use SocketKind::*;
        let table = [
            (AF_INET, SOCK_STREAM, 0, Judged),
            (AF_INET, SOCK_STREAM, 6, Judged),
            (AF_INET6, SOCK_STREAM, PROTO_MPTCP, Judged),
            (AF_INET, SOCK_DGRAM, 17, Judged),
            (AF_INET6, SOCK_DGRAM, 0, Judged),
            (AF_UNIX, SOCK_STREAM, 0, Judged),
            (AF_NETLINK, SOCK_RAW, 0, Judged),
            (AF_INET, SOCK_RAW, 17, Raw),
            (AF_INET6, SOCK_RAW, 255, Raw),
            (AF_PACKET, SOCK_DGRAM, 0x0008, Packet),
            (AF_PACKET, SOCK_RAW, 0, Packet),
            (AF_INET, SOCK_DGRAM, 1, Icmp),
            (AF_INET6, SOCK_DGRAM, 58, Icmp),
            (AF_INET, SOCK_DGRAM, 136, UdpLite),
            (AF_INET, SOCK_STREAM, 132, Sctp),
            (AF_INET6, SOCK_SEQPACKET, 132, Sctp),
            (AF_INET, 6, 33, Other),
            (AF_INET, SOCK_STREAM, 33, Other),
            (44, SOCK_RAW, 0, Other),
        ];
        for (family, ty, proto, want) in table {
            assert_eq!(
                SocketKind::of(family, ty, proto),
                want,
                "{family}/{ty}/{proto}"
            );
        }
        let w = WorkloadValue {
            workload_id: 7,
            view_id: 1,
            flags: WL_REGISTRY_ONLY,
            _pad: 0,
        };
        let d = socket_decision(&w, Raw).unwrap();
        assert_eq!((d.action, d.reason), (Action::Deny, Reason::SocketType));
        assert_eq!(socket_decision(&w, Judged), None);
        let ping_ok = WorkloadValue {
            flags: WL_REGISTRY_ONLY | WL_SOCK_ICMP,
            ..w
        };
        assert_eq!(socket_decision(&ping_ok, Icmp), None);
        assert!(socket_decision(&ping_ok, Raw).is_some());
        let audit = WorkloadValue {
            flags: WL_REGISTRY_ONLY | WL_AUDIT,
            ..w
        };
        assert_eq!(
            socket_decision(&audit, Packet).unwrap().action,
            Action::Audit
        );
        // ALLOW_ANY refuses nothing.
        assert_eq!(socket_decision(&WorkloadValue { flags: 0, ..w }, Raw), None);
        assert_eq!(
            source_route_decision(&WorkloadValue { flags: 0, ..w }),
            None
        );
        assert_eq!(
            source_route_decision(&w).unwrap().reason,
            Reason::SourceRoute
        );
    }

    #[test]
    fn transports_name_family_protocol_and_option() {
        assert_eq!(transport_label(Layer::Socket, AF_INET, 3, 17), "raw");
        assert_eq!(transport_label(Layer::Socket, AF_PACKET, 2, 0), "packet");
        assert_eq!(transport_label(Layer::Socket, AF_INET, 2, 1), "icmp");
        assert_eq!(transport_label(Layer::Sockopt, 4, 4, 0), "ip_options");
        assert_eq!(transport_label(Layer::Sockopt, 6, 57, 41), "ipv6_rthdr");
        assert_eq!(transport_label(Layer::Sockopt, 6, 6, 41), "ipv6_pktoptions");
        assert_eq!(transport_label(Layer::InterfacePacket, 4, 0, 4), "ipip");
        let sockopt = StatKey {
            port: 41 << 8 | 57,
            proto: SOCKOPT_STAT_PROTO,
            reason: Reason::SourceRoute as u8,
            ..StatKey::default()
        };
        assert_eq!(stat_transport(&sockopt), "ipv6_rthdr");
        assert!(!stat_has_port(&sockopt));
        // A packet-level source route of an IPv6-in-IPv4 packet is a packet.
        let packet = StatKey {
            port: 0,
            proto: 41,
            reason: Reason::SourceRoute as u8,
            ..StatKey::default()
        };
        assert_eq!(stat_transport(&packet), "ipv6-in-ip");
        assert!(stat_has_port(&packet));
        assert_eq!(
            transport_label(Layer::SocketPacket, 4, 80, PROTO_TCP),
            "tcp"
        );
        assert_eq!(transport_label(Layer::InterfacePacket, 6, 0, 58), "icmpv6");
        let k = StatKey {
            port: socket_stat_port(AF_INET6, SOCK_DGRAM),
            proto: 136,
            reason: Reason::SocketType as u8,
            ..StatKey::default()
        };
        assert_eq!(stat_transport(&k), "udplite");
        assert_eq!(socket_from_stat_port(k.port), (AF_INET6, SOCK_DGRAM));
    }

    #[test]
    fn cidr_allows_any_address_inside_on_its_port() {
        let f = world(WL_REGISTRY_ONLY);
        let d = decided(classify(&f, &conn("203.0.113.77", 443, 0)));
        assert_eq!(
            (d.action, d.matched, d.service_id),
            (Action::Allow, MatchKind::Cidr, 4)
        );
        let d = decided(classify(&f, &conn("203.0.114.1", 443, 0)));
        assert_eq!(d.action, Action::Deny);
    }

    #[test]
    fn cidr_target_port_rewrites_the_port_only() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.cidrs[0].2.target_port = 8443;
        let d = decided(classify(&f, &conn("203.0.113.77", 443, 0)));
        assert_eq!(d.action, Action::Rewrite);
        assert_eq!(d.backend.addr, a("203.0.113.77"));
        assert_eq!(d.backend.port, 8443);
    }

    #[test]
    fn static_cidr_balances_to_backends_unless_destination_is_an_endpoint() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.cidrs.push((
            96 + 16,
            CidrKey {
                view_id: 1,
                port: 8080,
                proto: PROTO_TCP,
                _pad: 0,
                addr: a("198.18.0.0"),
            },
            CidrValue {
                service_id: 5,
                set_id: 9,
                slots: 2,
                v4_slots: 1,
                kind: CIDR_BALANCE,
                ..CidrValue::default()
            },
        ));
        let d = decided(classify(&f, &conn("198.18.3.3", 8080, 0)));
        assert_eq!(
            (d.action, d.matched, d.service_id),
            (Action::Rewrite, MatchKind::Cidr, 5)
        );
        assert_eq!(d.backend.addr, a("198.18.0.11"));
        // An endpoint inside the CIDR is balanced like any address of it.
        let d = decided(classify(&f, &conn("198.18.0.11", 8080, 0)));
        assert_eq!((d.action, d.matched), (Action::Rewrite, MatchKind::Cidr));
    }

    #[test]
    fn allow_any_passes_unknown_and_audit_marks_registry_only() {
        let f = world(0);
        let d = decided(classify(&f, &conn("192.0.2.1", 22, 0)));
        assert_eq!((d.action, d.reason), (Action::Allow, Reason::AllowAny));
        let f = world(WL_REGISTRY_ONLY | WL_AUDIT);
        let d = decided(classify(&f, &conn("192.0.2.1", 22, 0)));
        assert_eq!((d.action, d.reason), (Action::Audit, Reason::RegistryOnly));
    }

    #[test]
    fn excluded_and_foreign_cgroups_are_untouched() {
        let f = world(WL_REGISTRY_ONLY);
        assert_eq!(
            classify(&f, &conn("127.0.0.1", 5432, 0)),
            Ok(Outcome::Untouched)
        );
        let mut f = world(WL_REGISTRY_ONLY);
        f.cgroup = 555;
        f.ancestors = vec![1, 2, 555];
        assert_eq!(
            classify(&f, &conn("192.0.2.1", 22, 0)),
            Ok(Outcome::Untouched)
        );
    }

    #[test]
    fn child_cgroup_inherits_its_pods_workload() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.cgroup = 999;
        f.ancestors = vec![1, 50, POD_CG, 999];
        let d = decided(classify(&f, &conn("192.0.2.1", 22, 0)));
        assert_eq!(d.workload.workload_id, 7);
        assert_eq!(d.action, Action::Deny);
    }

    #[test]
    fn cluster_cidr_allows_after_registry_steps() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.policy.push((
            96 + 16,
            a("198.18.0.0"),
            PolicyCidrValue {
                kind: POLICY_CLUSTER,
            },
        ));
        let d = decided(classify(&f, &conn("198.18.5.5", 22, 0)));
        assert_eq!(
            (d.action, d.reason),
            (Action::Allow, Reason::ClusterInternal)
        );
        // An endpoint's own address is no registry match: cluster-internal.
        let d = decided(classify(&f, &conn("198.18.0.11", 8080, 0)));
        assert_eq!(
            (d.matched, d.reason),
            (MatchKind::None, Reason::ClusterInternal)
        );
    }

    #[test]
    fn empty_backend_set_denies_with_no_endpoints() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.services
            .get_mut(&svc_key("240.240.0.1", 80))
            .unwrap()
            .v4_slots = 0;
        let d = decided(classify(&f, &conn("240.240.0.1", 80, 0)));
        assert_eq!((d.action, d.reason), (Action::Deny, Reason::NoEndpoints));
    }

    #[test]
    fn missing_backend_is_an_error() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.backends.clear();
        assert_eq!(
            classify(&f, &conn("240.240.0.1", 80, 0)),
            Err(Error::MissingBackend)
        );
    }

    fn with_dns(mut f: Fake) -> Fake {
        f.dns = Some(DnsConfig {
            proxy_v4: a("198.18.0.1"),
            proxy_v6: a("2001:db8::1"),
            port: 53,
            flags: DNS_CAPTURE | DNS_HAS_V6,
        });
        f
    }

    #[test]
    fn dns_queries_go_to_the_proxy_of_the_right_family() {
        let f = with_dns(world(WL_REGISTRY_ONLY));
        let proxy = |o: Result<Outcome, Error>| match o {
            Ok(Outcome::Dns(b)) => (b.addr, b.port),
            other => panic!("expected a redirect, got {other:?}"),
        };
        assert_eq!(
            proxy(classify(&f, &conn("10.255.255.53", 53, 0))),
            (a("198.18.0.1"), 53)
        );
        // Loopback resolvers too: DNS capture comes before the excluded CIDRs.
        assert_eq!(
            proxy(classify(&f, &conn("127.0.0.53", 53, 0))),
            (a("198.18.0.1"), 53)
        );
        assert_eq!(
            proxy(classify(&f, &conn("2001:4860::8888", 53, 0))),
            (a("2001:db8::1"), 53)
        );
        let mut c = conn("192.0.2.53", 53, 0);
        c.v4_socket = false;
        assert_eq!(
            proxy(classify(&f, &c)),
            (a("198.18.0.1"), 53),
            "v4-mapped on a v6 socket"
        );
        // The proxy itself always passes; other ports are not DNS.
        assert_eq!(
            classify(&f, &conn("198.18.0.1", 53, 0)),
            Ok(Outcome::Untouched)
        );
        assert_eq!(
            decided(classify(&f, &conn("192.0.2.53", 54, 0))).action,
            Action::Deny
        );
        // Not a workload: not captured.
        let mut g = with_dns(world(WL_REGISTRY_ONLY));
        g.cgroup = 5;
        assert_eq!(
            classify(&g, &conn("192.0.2.53", 53, 0)),
            Ok(Outcome::Untouched)
        );
    }

    #[test]
    fn learned_destinations_allow_until_they_expire() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.learned.insert(
            LearnedKey {
                addr: a("192.0.2.9"),
                workload_id: 7,
                port: 443,
                proto: PROTO_TCP,
                _pad: 0,
            },
            LearnedValue {
                service_id: 11,
                _pad: 0,
                expires_ns: 5_000,
            },
        );
        let d = decided(classify(&f, &conn("192.0.2.9", 443, 0)));
        assert_eq!(
            (d.action, d.matched, d.service_id),
            (Action::Allow, MatchKind::Dns, 11)
        );
        // Other port of the same address: not learned.
        assert_eq!(
            decided(classify(&f, &conn("192.0.2.9", 80, 0))).action,
            Action::Deny
        );
        // Expired.
        let mut c = conn("192.0.2.9", 443, 0);
        c.now_ns = 5_000;
        assert_eq!(decided(classify(&f, &c)).action, Action::Deny);
    }

    #[test]
    fn udp_is_enforced_only_with_the_udp_flag() {
        let mut c = conn("192.0.2.1", 5000, 0);
        c.proto = PROTO_UDP;
        let f = world(WL_REGISTRY_ONLY);
        assert_eq!(classify(&f, &c), Ok(Outcome::Untouched));
        let f = world(WL_REGISTRY_ONLY | WL_UDP);
        assert_eq!(decided(classify(&f, &c)).action, Action::Deny);
    }

    #[test]
    fn udp_connect_probe_of_a_tcp_destination_is_untouched() {
        let f = world(WL_REGISTRY_ONLY | WL_UDP);
        // getaddrinfo's source-address probe of a VIP: untouched.
        let mut c = conn("240.240.0.1", 80, 0);
        c.proto = PROTO_UDP;
        c.udp_connect = true;
        assert_eq!(classify(&f, &c), Ok(Outcome::Untouched));
        // Sending to it is still refused.
        c.udp_connect = false;
        assert_eq!(decided(classify(&f, &c)).action, Action::Deny);
        // A UDP connect to something TCP would not reach is refused.
        let mut c = conn("192.0.2.1", 80, 0);
        c.proto = PROTO_UDP;
        c.udp_connect = true;
        assert_eq!(decided(classify(&f, &c)).action, Action::Deny);
    }

    #[test]
    fn traffic_is_attributed_to_workload_and_service() {
        let mut f = world(WL_REGISTRY_ONLY);
        f.workload_ips.insert(a("198.18.0.2"), f.workloads[&POD_CG]);
        let pod = a("198.18.0.2");
        // A backend (endpoint entry), a CIDR, and an unknown remote.
        assert_eq!(
            attribute(&f, &pod, &a("198.18.0.11"), 8080, PROTO_TCP),
            Some((7, 3))
        );
        assert_eq!(
            attribute(&f, &pod, &a("203.0.113.5"), 443, PROTO_TCP),
            Some((7, 4))
        );
        assert_eq!(
            attribute(&f, &pod, &a("192.0.2.99"), 443, PROTO_TCP),
            Some((7, 0))
        );
        assert_eq!(
            attribute(&f, &a("198.18.0.99"), &a("198.18.0.11"), 8080, PROTO_TCP),
            None
        );
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let mut b = RateBucket::default();
        let (interval, burst) = (100, 300);
        // Long idle: a full burst of three.
        let now = 10_000;
        let allowed = (0..10)
            .filter(|_| rate_allow(&mut b, now, interval, burst))
            .count();
        assert_eq!(allowed, 3);
        assert_eq!(b.dropped, 7);
        // 250 ns later: two more intervals earned.
        let allowed = (0..10)
            .filter(|_| rate_allow(&mut b, now + 250, interval, burst))
            .count();
        assert_eq!(allowed, 2);
    }

    #[test]
    fn getpeername_reports_original_only_for_the_backend() {
        let o = OrigDest {
            orig_addr: a("240.240.0.1"),
            backend_addr: a("198.18.0.11"),
            orig_port: 80,
            backend_port: 8080,
        };
        assert_eq!(
            peer_to_report(&o, &a("198.18.0.11"), 8080),
            Some((a("240.240.0.1"), 80))
        );
        assert_eq!(peer_to_report(&o, &a("198.18.0.12"), 8080), None);
    }
}
