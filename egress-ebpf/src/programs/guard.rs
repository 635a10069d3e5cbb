//! Nothing to bypass (THREAT-MODEL.md): sockets the connect layer cannot judge are
//! not created, options that change the first hop are refused, and a packet-level
//! second line — on the workload's sockets (cgroup egress) and on its interface
//! (TC) — holds whatever produced a packet.

use super::*;

/// A socket's tag (socket-local storage), or null when it has none.
#[inline(always)]
pub(super) fn tag_of(sk: *mut c_void) -> *mut SockTag {
    // SAFETY: the map is a socket-storage map; `sk` is the context's socket.
    unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&EGRESS_SOCKTAGS).cast_mut().cast(),
            sk,
            core::ptr::null_mut(),
            0,
        )
        .cast()
    }
}

/// A socket's tag, created (from `init`) when it has none; null when the kernel
/// has no memory for it.
#[inline(always)]
fn tag_or_create(sk: *mut c_void, init: &mut SockTag) -> *mut SockTag {
    // SAFETY: as above; `init` is copied by the helper.
    let p: *mut SockTag = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&EGRESS_SOCKTAGS).cast_mut().cast(),
            sk,
            core::ptr::from_mut(init).cast(),
            aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
        .cast()
    };
    if p.is_null() {
        bump(Counter::SockTagFull);
    }
    p
}

/// The tag of a connect/sendmsg context's socket. A subflow the kernel opens for
/// an MPTCP connection (an address the server announced) has none of its own:
/// it is its connection's, whose socket the workload created.
#[inline(always)]
pub(super) fn sock_tag(ctx: &SockAddrContext) -> *mut SockTag {
    // SAFETY: the context's socket pointer.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let tag = tag_of(sk.cast());
    if !tag.is_null() {
        return tag;
    }
    // SAFETY: the helper checks the socket is an MPTCP subflow (else null).
    let msk = unsafe { aya_ebpf::helpers::generated::bpf_skc_to_mptcp_sock(sk.cast()) };
    if msk.is_null() {
        return tag;
    }
    tag_of(msk.cast())
}

/// Remembers that packets of this socket may go to this destination (what the
/// connect layer just allowed), so the packet-level check passes them at the
/// cost of one storage lookup.
#[inline(always)]
pub(super) fn tag_ok(tag: *mut SockTag, addr: &Addr, port: u16, proto: u8) {
    if tag.is_null() {
        return;
    }
    // SAFETY: this socket's storage; only its own syscalls and packets touch it.
    unsafe {
        (*tag).ok_addr = *addr;
        (*tag).ok_port = port;
        (*tag).ok_proto = proto;
        (*tag).flags |= TAG_OK;
    }
}

/// Marks a socket whose attempt was logged already (audited at connect).
#[inline(always)]
pub(super) fn tag_logged(tag: *mut SockTag) {
    if !tag.is_null() {
        // SAFETY: this socket's storage.
        unsafe { (*tag).flags |= TAG_LOGGED };
    }
}

// ---------------------------------------------------------------------------------
// socket(): what cannot be judged is not created.
// ---------------------------------------------------------------------------------

/// AF_INET/AF_INET6 sockets, after the kernel chose the protocol: tags the socket
/// with the cgroup it is created in, and refuses the kinds the connect layer
/// cannot judge.
#[cgroup_sock(sock_create)]
pub fn egress_sock_create(ctx: SockContext) -> i32 {
    or_fail(try_sock_create(&ctx), Counter::ErrSockCreate)
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext) -> Result<i32, ()> {
    let sk = ctx.sock;
    // SAFETY: context fields.
    let (family, ty, proto) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    let k = Kernel(Current);
    let (key, workload) = match decide::find_workload_key(&k) {
        Some((key, w)) => (key, Some(w)),
        None => (0, decide::unknown_default(&k)),
    };
    let mut tag = SockTag {
        cgroup_id: k.current_cgroup_id(),
        workload_key: key,
        flags: TAG_CREATED,
        ..SockTag::default()
    };
    let _ = tag_or_create(sk.cast(), &mut tag);
    let Some(w) = workload else {
        return Ok(VERDICT_ALLOW);
    };
    Ok(socket_verdict(&w, family, ty, proto))
}

/// Counts, logs and answers a `socket()` of `w`.
#[inline(always)]
fn socket_verdict(w: &WorkloadValue, family: u32, ty: u32, proto: u32) -> i32 {
    let Some(d) = decide::socket_decision(w, SocketKind::of(family, ty, proto)) else {
        return VERDICT_ALLOW;
    };
    let attempt = Attempt {
        addr: [0; 16],
        port: ty as u16,
        proto: proto as u8,
        family: family as u8,
        layer: Layer::Socket,
        task: true,
    };
    count(&StatKey {
        workload_id: w.workload_id,
        service_id: 0,
        port: decide::socket_stat_port(family, ty),
        proto: proto as u8,
        action: d.action as u8,
        reason: d.reason as u8,
        matched: d.matched as u8,
        _pad: [0; 2],
    });
    emit(&d, &attempt);
    if d.action == Action::Deny {
        VERDICT_DENY
    } else {
        VERDICT_ALLOW
    }
}

/// Every other family (AF_PACKET above all), through the per-cgroup BPF LSM
/// (where the kernel runs the BPF LSM): AF_INET/AF_INET6 are judged by
/// `egress_sock_create` once their protocol is known.
#[lsm_cgroup(hook = "socket_create")]
pub fn egress_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let proto: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    let family = family as u32;
    if kern != 0 || family == decide::AF_INET || family == decide::AF_INET6 {
        return VERDICT_ALLOW;
    }
    let Some(w) = decide::current_workload(&Kernel(Current)) else {
        return VERDICT_ALLOW;
    };
    // The type carries SOCK_NONBLOCK/SOCK_CLOEXEC in its high bits.
    socket_verdict(&w, family, (ty & 0xf) as u32, proto as u32)
}

// ---------------------------------------------------------------------------------
// setsockopt(): no source routes.
// ---------------------------------------------------------------------------------

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const IP_OPTIONS: i32 = 4;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_RTHDR: i32 = 57;

/// IPv4 options (source routes among them) and IPv6 routing headers set on a
/// socket are refused for REGISTRY_ONLY workloads.
#[cgroup_sockopt(setsockopt)]
pub fn egress_setsockopt(ctx: SockoptContext) -> i32 {
    or_fail(try_setsockopt(&ctx), Counter::ErrSockopt)
}

#[inline(always)]
fn try_setsockopt(ctx: &SockoptContext) -> Result<i32, ()> {
    let o = ctx.sockopt;
    // SAFETY: context fields.
    let (level, name, len) = unsafe { ((*o).level, (*o).optname, (*o).optlen) };
    let source_route = match level {
        SOL_IP => name == IP_OPTIONS && len > 0,
        SOL_IPV6 => matches!(name, IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS) && len > 0,
        _ => false,
    };
    if !source_route {
        return Ok(VERDICT_ALLOW);
    }
    // SAFETY: the context's socket.
    let sk = unsafe { (*o).__bindgen_anon_1.sk };
    let k = Kernel(Current);
    let tag = tag_of(sk.cast());
    // SAFETY: this socket's storage, or null.
    let Some(w) = decide::socket_workload(&k, unsafe { tag.as_ref() }) else {
        return Ok(VERDICT_ALLOW);
    };
    let Some(d) = decide::source_route_decision(&w) else {
        return Ok(VERDICT_ALLOW);
    };
    // SAFETY: context field.
    let family = unsafe { (*sk).family };
    count(&StatKey {
        workload_id: w.workload_id,
        service_id: 0,
        port: name as u16,
        proto: level as u8,
        action: d.action as u8,
        reason: d.reason as u8,
        matched: d.matched as u8,
        _pad: [0; 2],
    });
    emit(
        &d,
        &Attempt {
            addr: [0; 16],
            port: name as u16,
            proto: level as u8,
            family: if family == decide::AF_INET6 { 6 } else { 4 },
            layer: Layer::Sockopt,
            task: true,
        },
    );
    Ok(if d.action == Action::Deny {
        VERDICT_DENY
    } else {
        VERDICT_ALLOW
    })
}

// ---------------------------------------------------------------------------------
// sock_ops: accepted sockets are marked, their replies go back to their peer.
// ---------------------------------------------------------------------------------

const SOCK_OPS_PASSIVE_ESTABLISHED: u32 = 5;

#[sock_ops]
pub fn egress_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == SOCK_OPS_PASSIVE_ESTABLISHED {
        // SAFETY: the context's full socket in this callback.
        let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
        if !sk.is_null() {
            let mut init = SockTag::default();
            let tag = tag_or_create(sk.cast(), &mut init);
            if !tag.is_null() {
                // SAFETY: this socket's storage.
                unsafe { (*tag).flags |= TAG_PASSIVE };
            }
        }
    }
    1
}

// ---------------------------------------------------------------------------------
// Packet parsing shared by the socket and interface checks.
// ---------------------------------------------------------------------------------

/// Something headers can be read from.
pub(super) trait Bytes {
    fn bytes(&self, offset: usize, buf: &mut [u8]) -> bool;
}

/// Copies `buf.len()` bytes (a constant at every call site, as the verifier
/// wants) from `offset` of the packet; false when the packet is shorter.
#[inline(always)]
fn load_exact(skb: *mut c_void, offset: usize, buf: &mut [u8]) -> bool {
    // SAFETY: the helper writes at most `buf.len()` bytes into `buf`.
    unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb,
            offset as u32,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
        ) == 0
    }
}

impl Bytes for SkBuffContext {
    #[inline(always)]
    fn bytes(&self, offset: usize, buf: &mut [u8]) -> bool {
        load_exact(self.as_ptr(), offset, buf)
    }
}

impl Bytes for TcContext {
    #[inline(always)]
    fn bytes(&self, offset: usize, buf: &mut [u8]) -> bool {
        load_exact(self.as_ptr(), offset, buf)
    }
}

/// Which part of a fragmented datagram a packet is ([`Pkt::frag`]). Plain
/// integers: an enum with data leaves bytes the verifier sees as uninitialised.
pub(super) const FRAG_WHOLE: u8 = 0;
pub(super) const FRAG_FIRST: u8 = 1;
pub(super) const FRAG_LATER: u8 = 2;

/// The headers the checks need.
pub(super) struct Pkt {
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// IPv4 options or an IPv6 routing header.
    pub source_route: bool,
    /// `FRAG_*`, and the datagram's id when fragmented.
    pub frag: u8,
    pub frag_id: u32,
}

const NH_HOPOPTS: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_DSTOPTS: u8 = 60;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_ACK: u8 = 0x10;

/// Parses an IPv4 (`v6` false) or IPv6 packet starting at `base`.
#[inline(always)]
pub(super) fn parse_ip<B: Bytes>(b: &B, base: usize, v6: bool) -> Option<Pkt> {
    let mut p = Pkt {
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        source_route: false,
        frag: FRAG_WHOLE,
        frag_id: 0,
    };
    let mut l4 = base;
    if !v6 {
        let mut h = [0u8; 20];
        if !b.bytes(base, &mut h) {
            return None;
        }
        let ihl = usize::from(h[0] & 0x0f) * 4;
        p.source_route = ihl > 20;
        p.proto = h[9];
        p.frag_id = u32::from(u16::from_be_bytes([h[4], h[5]]));
        let frag = u16::from_be_bytes([h[6], h[7]]);
        p.frag = if frag & 0x1fff != 0 {
            FRAG_LATER
        } else if frag & 0x2000 != 0 {
            FRAG_FIRST
        } else {
            FRAG_WHOLE
        };
        p.src = v4_mapped([h[12], h[13], h[14], h[15]]);
        p.dst = v4_mapped([h[16], h[17], h[18], h[19]]);
        l4 += if ihl < 20 { 20 } else { ihl };
    } else {
        let mut h = [0u8; 40];
        if !b.bytes(base, &mut h) {
            return None;
        }
        let mut nh = h[6];
        let mut i = 0;
        while i < 16 {
            p.src[i] = h[8 + i];
            p.dst[i] = h[24 + i];
            i += 1;
        }
        l4 += 40;
        let mut n = 0;
        while n < 4 {
            n += 1;
            match nh {
                NH_HOPOPTS | NH_DSTOPTS => {
                    let mut e = [0u8; 2];
                    if !b.bytes(l4, &mut e) {
                        return None;
                    }
                    nh = e[0];
                    l4 += (usize::from(e[1]) + 1) * 8;
                }
                NH_ROUTING => {
                    p.source_route = true;
                    break;
                }
                NH_FRAGMENT => {
                    let mut e = [0u8; 8];
                    if !b.bytes(l4, &mut e) {
                        return None;
                    }
                    nh = e[0];
                    let off = u16::from_be_bytes([e[2], e[3]]);
                    p.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                    p.frag = if off & 0xfff8 != 0 {
                        FRAG_LATER
                    } else if off & 1 != 0 {
                        FRAG_FIRST
                    } else {
                        FRAG_WHOLE
                    };
                    l4 += 8;
                }
                _ => break,
            }
        }
        p.proto = nh;
    }
    if p.frag == FRAG_LATER || p.source_route {
        return Some(p);
    }
    match p.proto {
        PROTO_TCP => {
            let mut t = [0u8; 14];
            if b.bytes(l4, &mut t) {
                p.sport = u16::from_be_bytes([t[0], t[1]]);
                p.dport = u16::from_be_bytes([t[2], t[3]]);
                p.tcp_flags = t[13];
            }
        }
        PROTO_UDP => {
            let mut t = [0u8; 4];
            if b.bytes(l4, &mut t) {
                p.sport = u16::from_be_bytes([t[0], t[1]]);
                p.dport = u16::from_be_bytes([t[2], t[3]]);
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let mut t = [0u8; 1];
            if b.bytes(l4, &mut t) {
                p.icmp_type = t[0];
            }
        }
        _ => {}
    }
    Some(p)
}

/// Counts and logs a packet-level refusal (or audit) of `w`.
#[inline(always)]
fn refuse_packet(d: &Decision, p: &Pkt, layer: Layer, log: bool) {
    count(&StatKey {
        workload_id: d.workload.workload_id,
        service_id: 0,
        port: p.dport,
        proto: p.proto,
        action: d.action as u8,
        reason: d.reason as u8,
        matched: d.matched as u8,
        _pad: [0; 2],
    });
    if d.action == Action::Deny {
        bump(Counter::PacketsDropped);
    }
    if log {
        emit(
            d,
            &Attempt {
                addr: p.dst,
                port: p.dport,
                proto: p.proto,
                family: if is_v4_mapped(&p.dst) { 4 } else { 6 },
                layer,
                task: layer == Layer::SocketPacket,
            },
        );
    }
}

const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;
const TCP_LISTEN: u32 = 10;
const ETH_P_IP_BE: u32 = 0x0008;
const ETH_P_IPV6_BE: u32 = 0xdd86;

// ---------------------------------------------------------------------------------
// The socket check: every packet of a workload socket (cgroup egress), by the
// socket's own cgroup — a kernel worker's subflow or a migrated process included.
// ---------------------------------------------------------------------------------

#[cgroup_skb(egress)]
pub fn egress_skb_egress(ctx: SkBuffContext) -> i32 {
    or_fail(try_skb_egress(&ctx), Counter::ErrSkbEgress)
}

#[inline(always)]
fn try_skb_egress(ctx: &SkBuffContext) -> Result<i32, ()> {
    let skb = ctx.skb.skb;
    // SAFETY: context fields.
    let (sk, protocol) = unsafe { ((*skb).__bindgen_anon_2.sk, (*skb).protocol) };
    if sk.is_null() {
        return Ok(SKB_PASS);
    }
    // SAFETY: a socket pointer of the context.
    let sk: *mut bpf_sock = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return Ok(SKB_PASS);
    }
    let v6 = match protocol {
        ETH_P_IP_BE => false,
        ETH_P_IPV6_BE => true,
        _ => return Ok(SKB_PASS),
    };
    let Some(p) = parse_ip(ctx, 0, v6) else {
        return Err(());
    };
    let tag = tag_of(sk.cast());
    if !tag.is_null() {
        // SAFETY: this socket's storage.
        let t = unsafe { &*tag };
        if t.flags & TAG_OK != 0
            && !p.source_route
            && t.ok_addr == p.dst
            && t.ok_port == p.dport
            && t.ok_proto == p.proto
        {
            return Ok(SKB_PASS);
        }
    }
    let k = Kernel(SkbSocket(skb));
    let w = match decide::find_workload(&k) {
        Some(w) => w,
        None => match decide::unknown_default(&k) {
            Some(w) => w,
            None => return Ok(SKB_PASS),
        },
    };
    if w.flags & WL_REGISTRY_ONLY == 0 {
        return Ok(SKB_PASS);
    }
    // SAFETY: fields of a full socket.
    let (ty, state, sk_dport) = unsafe { ((*sk).type_, (*sk).state, (*sk).dst_port) };
    let log_once = |tag: *mut SockTag| -> bool {
        if tag.is_null() {
            return true;
        }
        // SAFETY: this socket's storage.
        unsafe {
            let first = (*tag).flags & TAG_LOGGED == 0;
            (*tag).flags |= TAG_LOGGED;
            first
        }
    };
    if p.source_route {
        if let Some(d) = decide::source_route_decision(&w) {
            let first = log_once(tag);
            if d.action == Action::Deny || first {
                refuse_packet(&d, &p, Layer::SocketPacket, first);
            }
            if d.action == Action::Deny {
                return Ok(SKB_DROP);
            }
        }
        return Ok(SKB_PASS);
    }
    if (ty == decide::SOCK_RAW && w.flags & WL_SOCK_RAW != 0)
        || ((p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6) && w.flags & WL_SOCK_ICMP != 0)
    {
        return Ok(SKB_PASS);
    }
    if p.proto == PROTO_TCP {
        if state == TCP_LISTEN {
            // SYN-ACKs of the listener's pending connections.
            return Ok(SKB_PASS);
        }
        if !tag.is_null()
            // SAFETY: this socket's storage.
            && unsafe { (*tag).flags } & TAG_PASSIVE != 0
            && u16::from_be(sk_dport) == p.dport
            && sk_peer(sk, v6) == p.dst
        {
            return Ok(SKB_PASS);
        }
    }
    let dest = PacketDest {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if decide::packet_allowed(&k, &w, &dest, now).is_some() {
        tag_ok(tag, &p.dst, p.dport, p.proto);
        return Ok(SKB_PASS);
    }
    let d = decide::packet_decision(&w);
    let first = log_once(tag);
    if d.action == Action::Audit && !first {
        // Audited once per socket (or at its connect()): the rest pass quietly.
        return Ok(SKB_PASS);
    }
    refuse_packet(&d, &p, Layer::SocketPacket, first);
    Ok(if d.action == Action::Deny {
        SKB_DROP
    } else {
        SKB_PASS
    })
}

/// The peer address of a full socket, network order, IPv4 v4-mapped.
#[inline(always)]
fn sk_peer(sk: *mut bpf_sock, v6: bool) -> Addr {
    // SAFETY: fields of a full socket, 4-byte reads.
    unsafe {
        if !v6 {
            return v4_mapped((*sk).dst_ip4.to_ne_bytes());
        }
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = core::ptr::read_volatile(&(*sk).dst_ip6[i]).to_ne_bytes();
            a[i * 4] = w[0];
            a[i * 4 + 1] = w[1];
            a[i * 4 + 2] = w[2];
            a[i * 4 + 3] = w[3];
            i += 1;
        }
        a
    }
}

// ---------------------------------------------------------------------------------
// The interface check: every packet the workload's network namespace emits
// (host side of its veth, ingress), whatever made it — a raw or packet socket,
// a tunnel device in the pod, a kernel-made packet, a rewritten destination.
// Stateless but for the flows a remote end opened (their replies pass).
// ---------------------------------------------------------------------------------

const TC_ACT_SHOT: i32 = 2;
const ETH_P_ARP: u16 = 0x0806;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Checks one packet from the workload; `TCX_NEXT` or `TC_ACT_SHOT`.
#[inline(always)]
pub(super) fn tc_enforce(ctx: &TcContext) -> Result<i32, ()> {
    // SAFETY: context field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out immediately.
    let Some(w) = (unsafe { EGRESS_IFACES.get(ifindex).copied() }) else {
        return Ok(TCX_NEXT);
    };
    // Audit mode: the socket and connect layers record what would be refused;
    // the interface only ever records what it drops.
    if w.flags & WL_REGISTRY_ONLY == 0 || w.flags & (WL_AUDIT | WL_SOCK_RAW | WL_SOCK_PACKET) != 0 {
        return Ok(TCX_NEXT);
    }
    let mut eth = [0u8; 2];
    if !ctx.bytes(12, &mut eth) {
        return Err(());
    }
    let v6 = match u16::from_be_bytes(eth) {
        ETH_P_ARP => return Ok(TCX_NEXT),
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        // VLAN, MPLS, PPPoE, anything a device in the pod could frame: not IP
        // the registry can judge.
        _ => {
            bump(Counter::PacketsDropped);
            return Ok(TC_ACT_SHOT);
        }
    };
    let Some(p) = parse_ip(ctx, ETH_HLEN, v6) else {
        return Err(());
    };
    let k = Kernel(Current);
    let shot = |d: Decision, p: &Pkt| -> i32 {
        refuse_packet(&d, p, Layer::InterfacePacket, true);
        if d.action == Action::Deny {
            TC_ACT_SHOT
        } else {
            TCX_NEXT
        }
    };
    if p.source_route {
        if let Some(d) = decide::source_route_decision(&w) {
            return Ok(shot(d, &p));
        }
        return Ok(TCX_NEXT);
    }
    if p.frag == FRAG_LATER {
        let key = FragKey {
            src: p.src,
            dst: p.dst,
            id: p.frag_id,
            proto: p.proto,
            _pad: [0; 3],
        };
        // SAFETY: the value is copied out immediately.
        if unsafe { EGRESS_FRAGS.get(key) }.is_some() {
            return Ok(TCX_NEXT);
        }
        return Ok(shot(decide::packet_decision(&w), &p));
    }
    // Replies to what a remote end opened, from the workload's own address only.
    // SAFETY: the value is copied out immediately.
    let own =
        unsafe { EGRESS_WLIPS.get(p.src).copied() }.is_some_and(|o| o.workload_id == w.workload_id);
    match p.proto {
        PROTO_ICMPV6 if (130..=137).contains(&p.icmp_type) || p.icmp_type == 143 => {
            // Neighbour discovery and MLD: link-local, never routed.
            return Ok(TCX_NEXT);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if w.flags & WL_SOCK_ICMP != 0 || (own && inbound(&p, 0, 0)) {
                return Ok(TCX_NEXT);
            }
            return Ok(shot(decide::packet_decision(&w), &p));
        }
        _ => {}
    }
    if own && inbound(&p, p.sport, p.dport) {
        return Ok(TCX_NEXT);
    }
    let dest = PacketDest {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if decide::packet_allowed(&k, &w, &dest, now).is_some() {
        if p.frag == FRAG_FIRST {
            let key = FragKey {
                src: p.src,
                dst: p.dst,
                id: p.frag_id,
                proto: p.proto,
                _pad: [0; 3],
            };
            let _ = EGRESS_FRAGS.insert(key, 1u8, 0);
        }
        return Ok(TCX_NEXT);
    }
    Ok(shot(decide::packet_decision(&w), &p))
}

/// Did the remote end open this flow (`local_port`/`remote_port` 0: any flow
/// with that peer)?
#[inline(always)]
fn inbound(p: &Pkt, local_port: u16, remote_port: u16) -> bool {
    let key = FlowKey {
        local: p.src,
        remote: p.dst,
        local_port,
        remote_port,
        proto: if local_port == 0 { 0 } else { p.proto },
        _pad: [0; 3],
    };
    // SAFETY: the value is only tested for presence.
    unsafe { EGRESS_INBOUND.get(key) }.is_some()
}

/// Records flows a remote end opens towards a workload (host side of its veth,
/// egress): a TCP SYN, a UDP datagram, an ICMP echo request.
#[inline(always)]
pub(super) fn tc_record_inbound(ctx: &TcContext) {
    // SAFETY: context field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out immediately.
    let Some(w) = (unsafe { EGRESS_IFACES.get(ifindex).copied() }) else {
        return;
    };
    if w.flags & WL_REGISTRY_ONLY == 0 {
        return;
    }
    let mut eth = [0u8; 2];
    if !ctx.bytes(12, &mut eth) {
        return;
    }
    let v6 = match u16::from_be_bytes(eth) {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return,
    };
    let Some(p) = parse_ip(ctx, ETH_HLEN, v6) else {
        return;
    };
    let opens = match p.proto {
        PROTO_TCP => p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        PROTO_UDP => true,
        PROTO_ICMP => p.icmp_type == ICMP_ECHO_REQUEST,
        PROTO_ICMPV6 => p.icmp_type == ICMPV6_ECHO_REQUEST,
        _ => false,
    };
    if !opens || p.frag == FRAG_LATER {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut key = FlowKey {
        local: p.dst,
        remote: p.src,
        local_port: 0,
        remote_port: 0,
        proto: 0,
        _pad: [0; 3],
    };
    // SAFETY: presence test only.
    if unsafe { EGRESS_INBOUND.get(key) }.is_none() {
        let _ = EGRESS_INBOUND.insert(key, now, 0);
    }
    if p.proto == PROTO_TCP || p.proto == PROTO_UDP {
        key.local_port = p.dport;
        key.remote_port = p.sport;
        key.proto = p.proto;
        // SAFETY: presence test only.
        if unsafe { EGRESS_INBOUND.get(key) }.is_none() {
            let _ = EGRESS_INBOUND.insert(key, now, 0);
        }
    }
}
