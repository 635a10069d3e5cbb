//! Nothing to bypass (THREAT-MODEL.md): sockets the connect layer cannot judge are
//! not created, options that change the first hop are refused, and a packet-level
//! second line — on the workload's sockets (cgroup egress) and on its interface
//! (TC) — holds whatever produced a packet.

use super::*;
use aya_ebpf::macros::map;
use aya_ebpf::maps::PerCpuArray;

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
        Some((key, w)) => (key, decide::touched(w)),
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
        port: ((level as u16) << 8) | (name as u16 & 0xff),
        proto: decide::SOCKOPT_STAT_PROTO,
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

/// Something headers can be read from: `N` bytes at `offset`, false when the
/// packet is shorter.
pub(super) trait Bytes {
    fn bytes<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool;
    /// The same at an offset known when compiling: direct packet access (no
    /// helper call) when the bytes are in the linear part.
    fn fixed<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool;
}

/// Direct packet access at a constant offset, else the helper.
#[inline(always)]
fn read_fixed<const N: usize>(
    start: usize,
    end: usize,
    skb: *mut c_void,
    offset: usize,
    buf: &mut [u8; N],
) -> bool {
    if start + offset + N <= end {
        // SAFETY: inside [data, data_end), checked just above for the verifier.
        unsafe { *buf = core::ptr::read_unaligned((start + offset) as *const [u8; N]) };
        return true;
    }
    load_exact(skb, offset, buf)
}

/// Copies `N` bytes at `offset` with the helper (headers outside the linear part).
#[inline(always)]
fn load_exact<const N: usize>(skb: *mut c_void, offset: usize, buf: &mut [u8; N]) -> bool {
    // SAFETY: the helper writes at most N bytes into `buf`.
    unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb,
            offset as u32,
            buf.as_mut_ptr().cast(),
            N as u32,
        ) == 0
    }
}

impl Bytes for SkBuffContext {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool {
        load_exact(self.as_ptr(), offset, buf)
    }

    #[inline(always)]
    fn fixed<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool {
        let skb = self.skb.skb;
        // SAFETY: context fields (the packet's linear part).
        let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
        read_fixed(start, end, self.as_ptr(), offset, buf)
    }
}

impl Bytes for TcContext {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool {
        // (Direct packet access at the variable offsets of upper-layer headers
        // compiles to bounds checks the verifier does not follow.)
        load_exact(self.as_ptr(), offset, buf)
    }

    #[inline(always)]
    fn fixed<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool {
        read_fixed(self.data(), self.data_end(), self.as_ptr(), offset, buf)
    }
}

/// Which part of a fragmented datagram a packet is ([`Pkt::frag`]). Plain
/// integers: an enum with data leaves bytes the verifier sees as uninitialised.
pub(super) const FRAG_WHOLE: u8 = 0;
pub(super) const FRAG_FIRST: u8 = 1;
pub(super) const FRAG_LATER: u8 = 2;

/// Scratch space for the interface check's parsed packet (per CPU; one slot per
/// direction): the BPF stack of a call chain is 512 bytes in all.
#[map]
static EGRESS_SCRATCH: PerCpuArray<Pkt> = PerCpuArray::with_max_entries(2, 0);

/// The headers the checks and the counters need.
#[derive(Clone, Copy)]
pub(super) struct Pkt {
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// IPv6: hop limit; IPv4: TTL.
    pub hop_limit: u8,
    /// IPv6: the ICMPv6 (or other upper layer) follows the fixed header directly.
    pub plain: bool,
    /// IPv6: traffic class and flow label are zero.
    pub plain_header: bool,
    /// IPv6 payload length / IPv4 total length minus its header.
    pub ip_payload: u16,
    /// Where the upper-layer header starts, and its payload.
    pub l4_at: usize,
    pub payload_at: usize,
    /// IPv4 options or an IPv6 routing header.
    pub source_route: bool,
    /// `FRAG_*`, and the datagram's id when fragmented.
    pub frag: u8,
    pub frag_id: u32,
    /// The frame's link-layer source and destination (interface check).
    pub src_mac: u64,
    pub dst_mac: u64,
}

const NH_HOPOPTS: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_DSTOPTS: u8 = 60;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_ACK: u8 = 0x10;

impl Pkt {
    pub(super) const EMPTY: Pkt = Pkt {
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        hop_limit: 0,
        plain: true,
        plain_header: true,
        ip_payload: 0,
        l4_at: 0,
        payload_at: 0,
        source_route: false,
        frag: FRAG_WHOLE,
        frag_id: 0,
        src_mac: 0,
        dst_mac: 0,
    };
}

/// Parses an IPv4 (`v6` false) or IPv6 packet starting at `base` into `p`;
/// false when its headers cannot be read.
#[inline(always)]
pub(super) fn parse_ip<B: Bytes>(b: &B, base: usize, v6: bool, p: &mut Pkt) -> bool {
    *p = Pkt::EMPTY;
    let mut l4 = base;
    if !v6 {
        let mut h = [0u8; 20];
        if !b.fixed(base, &mut h) {
            return false;
        }
        let ihl = usize::from(h[0] & 0x0f) * 4;
        p.source_route = ihl > 20;
        p.proto = h[9];
        p.hop_limit = h[8];
        p.ip_payload = u16::from_be_bytes([h[2], h[3]]).saturating_sub(ihl as u16);
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
        if !b.fixed(base, &mut h) {
            return false;
        }
        let mut nh = h[6];
        p.hop_limit = h[7];
        p.plain_header = h[0] & 0x0f == 0 && h[1] == 0 && h[2] == 0 && h[3] == 0;
        p.ip_payload = u16::from_be_bytes([h[4], h[5]]);
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
                    p.plain = false;
                    let mut e = [0u8; 2];
                    if !b.bytes(l4, &mut e) {
                        return false;
                    }
                    nh = e[0];
                    l4 += (usize::from(e[1]) + 1) * 8;
                }
                NH_ROUTING => {
                    p.plain = false;
                    p.source_route = true;
                    break;
                }
                NH_FRAGMENT => {
                    p.plain = false;
                    let mut e = [0u8; 8];
                    if !b.bytes(l4, &mut e) {
                        return false;
                    }
                    nh = e[0];
                    let off = u16::from_be_bytes([e[2], e[3]]);
                    p.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                    l4 += 8;
                    if off & 0xfff8 != 0 {
                        // What follows is the middle of the datagram, not headers.
                        p.frag = FRAG_LATER;
                        break;
                    }
                    p.frag = if off & 1 != 0 { FRAG_FIRST } else { FRAG_WHOLE };
                }
                _ => break,
            }
        }
        p.proto = nh;
    }
    p.l4_at = l4;
    p.payload_at = l4;
    if p.frag == FRAG_LATER || p.source_route {
        return true;
    }
    // The common case: no IPv4 options, no IPv6 extension header, so the
    // upper-layer header is at a fixed offset (read without a helper call).
    let fixed_l4 = if v6 { base + 40 } else { base + 20 };
    match p.proto {
        PROTO_TCP => {
            let mut t = [0u8; 14];
            let read = if l4 == fixed_l4 {
                b.fixed(fixed_l4, &mut t)
            } else {
                b.bytes(l4, &mut t)
            };
            if read {
                p.sport = u16::from_be_bytes([t[0], t[1]]);
                p.dport = u16::from_be_bytes([t[2], t[3]]);
                p.tcp_flags = t[13];
                p.payload_at = l4 + usize::from(t[12] >> 4) * 4;
            }
        }
        PROTO_UDP => {
            let mut t = [0u8; 4];
            let read = if l4 == fixed_l4 {
                b.fixed(fixed_l4, &mut t)
            } else {
                b.bytes(l4, &mut t)
            };
            if read {
                p.sport = u16::from_be_bytes([t[0], t[1]]);
                p.dport = u16::from_be_bytes([t[2], t[3]]);
                p.payload_at = l4 + 8;
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
    true
}

/// Counts and logs a packet-level refusal (or audit) of `w`.
#[inline(never)]
fn refuse_packet(w: &WorkloadValue, reason: Reason, p: &Pkt, layer: Layer, log: bool) {
    let d = &decide::packet_decision(w, reason);
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

/// Is `addr` one of this workload's own addresses?
#[inline(always)]
fn own_address(w: &WorkloadValue, addr: &Addr) -> bool {
    // SAFETY: the value is copied out immediately.
    unsafe { EGRESS_WLIPS.get(addr).copied() }.is_some_and(|o| o.workload_id == w.workload_id)
}

/// Pseudo protocol numbers (from the experimental range, RFC 3692) that name
/// non-IP frames in the access log and the counters.
const PSEUDO_NON_IP: u8 = decide::PSEUDO_NON_IP;
const PSEUDO_ARP: u8 = decide::PSEUDO_ARP;

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
    let mut p = Pkt::EMPTY;
    if !parse_ip(ctx, 0, v6, &mut p) {
        // Headers that cannot be read (an extension header running past the
        // end): a packet's making, dropped whatever `failOpen` says.
        bump(Counter::ErrSkbEgress);
        bump(Counter::PacketsDropped);
        return Ok(SKB_DROP);
    }
    if p.proto == PROTO_UDP && to_dns_proxy(&p) {
        // A workload's queries to the proxy, at most its rate: a flood from one
        // pod is dropped here, before it fills the proxy's socket for all.
        let k = Kernel(SkbSocket(skb));
        if let Some(w) = decide::find_workload(&k).and_then(decide::touched) {
            // SAFETY: helper without arguments.
            let now = unsafe { bpf_ktime_get_boot_ns() };
            if !dns_rate_ok(w.workload_id, now) {
                bump(Counter::DnsRateLimited);
                return Ok(SKB_DROP);
            }
        }
    }
    let tag = tag_of(sk.cast());
    if !tag.is_null() {
        // SAFETY: this socket's storage.
        let t = unsafe { &*tag };
        if t.flags & TAG_OK != 0
            && !p.source_route
            && t.ok_src == p.src
            && t.ok_addr == p.dst
            && t.ok_port == p.dport
            && t.ok_proto == p.proto
        {
            return Ok(SKB_PASS);
        }
    }
    let k = Kernel(SkbSocket(skb));
    let w = match decide::find_workload(&k) {
        Some(w) => match decide::touched(w) {
            Some(w) => w,
            None => return Ok(SKB_PASS),
        },
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
                refuse_packet(&w, Reason::SourceRoute, &p, Layer::SocketPacket, first);
            }
            if d.action == Action::Deny {
                return Ok(SKB_DROP);
            }
        }
        return Ok(SKB_PASS);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let dest = PacketDest {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
    };
    // Only the workload's own addresses as source (a socket bound to a foreign
    // address with IP_FREEBIND/IP_TRANSPARENT, or SNAT in the pod, would send
    // replies of others to wherever it likes), but for what stays on the host.
    if w.flags & WL_HAS_ADDR != 0 && !own_address(&w, &p.src) && !decide::excluded(&k, &p.dst) {
        let d = decide::packet_decision(&w, Reason::Spoofed);
        let first = log_once(tag);
        if d.action == Action::Deny || first {
            refuse_packet(&w, Reason::Spoofed, &p, Layer::SocketPacket, first);
        }
        return Ok(if d.action == Action::Deny {
            SKB_DROP
        } else {
            SKB_PASS
        });
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
    if decide::packet_allowed(&k, &w, &dest, now).is_some() {
        tag_ok(tag, &p.dst, p.dport, p.proto);
        if !tag.is_null() {
            // SAFETY: this socket's storage.
            unsafe { (*tag).ok_src = p.src };
        }
        return Ok(SKB_PASS);
    }
    let d = decide::packet_decision(&w, Reason::PacketCheck);
    let first = log_once(tag);
    if d.action == Action::Audit && !first {
        // Audited once per socket (or at its connect()): the rest pass quietly.
        return Ok(SKB_PASS);
    }
    refuse_packet(&w, Reason::PacketCheck, &p, Layer::SocketPacket, first);
    Ok(if d.action == Action::Deny {
        SKB_DROP
    } else {
        SKB_PASS
    })
}

/// Is the packet a DNS query to the agent's proxy (capture on)?
#[inline(always)]
fn to_dns_proxy(p: &Pkt) -> bool {
    let Some(dns) = EGRESS_DNS.get(0) else {
        return false;
    };
    dns.flags & DNS_CAPTURE != 0
        && p.dport == dns.port
        && (p.dst == dns.proxy_v4 || (dns.flags & DNS_HAS_V6 != 0 && p.dst == dns.proxy_v6))
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
// The interface check: every frame the workload's network namespace emits (host
// side of its veth, ingress), whatever made it — a raw or packet socket, a
// tunnel or TUN device in the pod, a kernel-made packet, a rewritten destination
// or next hop. Judged for the workload of the interface, not the packet's
// claimed source. Stateless but for the flows a remote end opened (their replies
// pass), first fragments, and the neighbours the network announced.
// ---------------------------------------------------------------------------------

const TC_ACT_SHOT: i32 = 2;
const ETH_P_ARP: u16 = 0x0806;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// What the interface check decided for a frame from the workload (`Pkt` holds
/// the parsed packet where there is one). Plain integers throughout: the
/// verifier rejects reading bytes an enum variant leaves unset.
#[derive(Clone, Copy)]
struct Verdict {
    /// `V_*`.
    kind: u8,
    /// With `V_DROP`: the [`Reason`], and whether the packet was parsed.
    reason: u8,
    parsed: u8,
    /// With `V_COUNT`: the service the packet was allowed for.
    service_id: u32,
}

/// Pass, not an IP packet to count (ARP, neighbour discovery, a fragment).
const V_PASS: u8 = 0;
/// Pass, and count the packet.
const V_COUNT: u8 = 1;
const V_DROP: u8 = 2;
/// Drop without an access-log line (multicast listener reports).
const V_DROP_QUIET: u8 = 3;
/// Neighbour discovery, to be judged by `nd_verdict`.
const V_ND: u8 = 4;
/// `check_sent`'s answer for neighbour discovery (not a TC verdict).
const ND_PENDING: i32 = 100;

impl Verdict {
    const PASS: Verdict = Verdict {
        kind: V_PASS,
        reason: 0,
        parsed: 0,
        service_id: 0,
    };

    #[inline(always)]
    fn count(service_id: u32) -> Self {
        Verdict {
            kind: V_COUNT,
            service_id,
            ..Self::PASS
        }
    }

    #[inline(always)]
    fn drop(reason: Reason, parsed: bool) -> Self {
        Verdict {
            kind: V_DROP,
            reason: reason as u8,
            parsed: u8::from(parsed),
            service_id: 0,
        }
    }
}

/// Host-side veth ingress: what the workload sends — checked, then counted.
#[inline(always)]
pub(super) fn tc_sent(ctx: &TcContext) -> Result<i32, ()> {
    // SAFETY: context field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out immediately.
    let iface = unsafe { EGRESS_IFACES.get(ifindex).copied() };
    let w = iface.map(|i| i.workload);
    let enforced = w.is_some_and(|w| {
        w.flags & WL_REGISTRY_ONLY != 0 && w.flags & (WL_AUDIT | WL_SOCK_RAW | WL_SOCK_PACKET) == 0
    });
    let (Some(iface), true) = (iface, enforced) else {
        // Not held here (ALLOW_ANY, audit mode, raw or packet sockets allowed):
        // counted only.
        count_frame(ctx, DIR_SENT);
        return Ok(TCX_NEXT);
    };
    let mut ethertype = [0u8; 2];
    if ctx.fixed(12, &mut ethertype) && u16::from_be_bytes(ethertype) == ETH_P_ARP {
        let verdict = arp_check(ctx, ifindex, &iface);
        if verdict == TC_ACT_SHOT
            && let Some(p) = EGRESS_SCRATCH.get_ptr_mut(u32::from(DIR_SENT))
        {
            // SAFETY: this CPU's slot, filled by arp_check.
            refuse_packet(
                &iface.workload,
                Reason::PacketCheck,
                unsafe { &*p },
                Layer::InterfacePacket,
                true,
            );
        }
        return Ok(verdict);
    }
    let verdict = check_sent(ctx, ifindex, &iface);
    if verdict != ND_PENDING {
        return Ok(verdict);
    }
    let Some(p) = EGRESS_SCRATCH.get_ptr_mut(u32::from(DIR_SENT)) else {
        return Ok(TC_ACT_SHOT);
    };
    // SAFETY: this CPU's slot, filled by check_sent.
    let p = unsafe { &*p };
    if nd_verdict(ctx, ifindex, &iface, p) == 1 {
        return Ok(TCX_NEXT);
    }
    refuse_packet(
        &iface.workload,
        Reason::PacketCheck,
        p,
        Layer::InterfacePacket,
        true,
    );
    Ok(TC_ACT_SHOT)
}

/// [`parse_ip`] of a frame, in a function of its own (its buffers off the
/// caller's stack); 1 when parsed.
#[inline(never)]
fn parse_tc(ctx: &TcContext, v6: bool, p: &mut Pkt) -> i32 {
    i32::from(parse_ip(ctx, ETH_HLEN, v6, p))
}

/// The MAC announced to the workload for `addr` on `ifindex` (0: none).
#[inline(always)]
fn announced(ifindex: u32, addr: &Addr) -> u64 {
    let key = NeighKey {
        ifindex,
        _pad: 0,
        addr: *addr,
    };
    // SAFETY: the value is copied out immediately.
    match unsafe { EGRESS_NEIGH.get(key) } {
        Some(n) => link::mac_u64(&n.mac),
        None => 0,
    }
}

/// An ARP frame of the workload: passed when it is what a kernel sends, else
/// dropped and logged. (Functions of their own, so their buffers do not add to
/// the stack of the others.)
#[inline(never)]
fn arp_check(ctx: &TcContext, ifindex: u32, iface: &IfaceValue) -> i32 {
    let mut eth = [0u8; 12];
    let mut arp = [0u8; link::ARP_LEN];
    if !ctx.fixed(0, &mut eth) || !ctx.bytes(ETH_HLEN, &mut arp) {
        bump(Counter::PacketsDropped);
        return TC_ACT_SHOT;
    }
    let frame_len = ctx.len();
    let mut padding = [0u8; 18];
    let frame = link::ArpFrame {
        frame_len,
        padding_zero: frame_len != link::MIN_FRAME
            || (ctx.bytes(42, &mut padding) && padding == [0u8; 18]),
        dst_mac: link::mac_u64(&[eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]),
        src_mac: link::mac_u64(&[eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]),
    };
    let node = (link::mac_u64(&iface.mac), link::mac_u64(&iface.bridge_mac));
    let w = &iface.workload;
    if link::arp_ok(
        &arp,
        &frame,
        |x| own_address(w, x),
        |x| announced(ifindex, x),
        node,
    ) {
        return TCX_NEXT;
    }
    if let Some(p) = EGRESS_SCRATCH.get_ptr_mut(u32::from(DIR_SENT)) {
        // SAFETY: this CPU's slot for the sent direction.
        let p = unsafe { &mut *p };
        *p = Pkt::EMPTY;
        p.proto = PSEUDO_ARP;
        p.dst = v4_mapped([arp[24], arp[25], arp[26], arp[27]]);
    }
    TC_ACT_SHOT
}

/// A neighbour-discovery message of the workload: 1 when it is what a kernel
/// sends.
#[inline(never)]
fn nd_verdict(ctx: &TcContext, ifindex: u32, iface: &IfaceValue, p: &Pkt) -> i32 {
    let mut target = [0u8; 16];
    let mut option = [0u8; 8];
    let fixed = if p.icmp_type == link::ICMPV6_ROUTER_SOLICIT {
        8
    } else {
        if !ctx.bytes(p.l4_at + 8, &mut target) {
            return 0;
        }
        24
    };
    if p.ip_payload > fixed && !ctx.bytes(p.l4_at + usize::from(fixed), &mut option) {
        return 0;
    }
    let nd = link::Nd {
        icmp_type: p.icmp_type,
        hop_limit: p.hop_limit,
        payload_len: p.ip_payload,
        frame_len: ctx.len(),
        plain: p.plain,
        plain_header: p.plain_header,
        src: p.src,
        dst: p.dst,
        target,
        option,
        src_mac: p.src_mac,
        dst_mac: p.dst_mac,
    };
    let w = &iface.workload;
    i32::from(link::nd_ok(
        &nd,
        |a| own_address(w, a),
        |a| announced(ifindex, a),
        &iface.v6_prefix,
    ))
}

/// Judges, counts or refuses one frame of an enforced workload; the TC verdict.
/// (A function of its own for the stack's sake, returning a plain integer: the
/// verifier refuses a returned pointer to the caller's stack.)
#[inline(never)]
fn check_sent(ctx: &TcContext, ifindex: u32, iface: &IfaceValue) -> i32 {
    let Some(p) = EGRESS_SCRATCH.get_ptr_mut(u32::from(DIR_SENT)) else {
        bump(Counter::ErrTcEnforce);
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's slot for the sent direction; a TC program does not
    // nest with itself on one CPU.
    let p = unsafe { &mut *p };
    let Ok(v) = judge_sent(ctx, ifindex, iface, p) else {
        // Headers that cannot be read are a pod's making, not an internal
        // error: dropped whatever `failOpen` says.
        bump(Counter::ErrTcEnforce);
        bump(Counter::PacketsDropped);
        return TC_ACT_SHOT;
    };
    match v.kind {
        V_PASS => TCX_NEXT,
        V_COUNT => {
            count_packet(ctx, iface.workload.workload_id, v.service_id, p, DIR_SENT);
            TCX_NEXT
        }
        V_DROP_QUIET => {
            bump(Counter::MldDropped);
            TC_ACT_SHOT
        }
        V_ND => ND_PENDING,
        _ => {
            if v.parsed != 0 {
                let reason = Reason::from_u8(v.reason).unwrap_or(Reason::PacketCheck);
                refuse_packet(&iface.workload, reason, p, Layer::InterfacePacket, true);
            } else {
                bump(Counter::PacketsDropped);
            }
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn judge_sent(
    ctx: &TcContext,
    ifindex: u32,
    iface: &IfaceValue,
    p: &mut Pkt,
) -> Result<Verdict, ()> {
    let w = &iface.workload;
    let mut eth = [0u8; 14];
    if !ctx.fixed(0, &mut eth) {
        return Err(());
    }
    let dst_mac = link::mac_u64(&[eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]);
    let src_mac = link::mac_u64(&[eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]);
    let node = (link::mac_u64(&iface.mac), link::mac_u64(&iface.bridge_mac));
    // SAFETY: context field. A tag the kernel took off into the packet's
    // metadata: VLAN frames are not IP the registry can judge.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        p.proto = PSEUDO_NON_IP;
        return Ok(Verdict::drop(Reason::PacketCheck, true));
    }
    let v6 = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        // MPLS, PPPoE, anything a device in the pod could frame: not IP the
        // registry can judge.
        _ => {
            p.proto = PSEUDO_NON_IP;
            return Ok(Verdict::drop(Reason::PacketCheck, true));
        }
    };
    if parse_tc(ctx, v6, p) == 0 {
        return Err(());
    }
    p.src_mac = src_mac;
    p.dst_mac = dst_mac;
    // Multicast listener reports: the pod's kernel sends them by itself when its
    // addresses come up; their group addresses are the only data they carry, and
    // nothing in a pod needs them. Dropped and counted, not logged.
    if p.proto == PROTO_ICMPV6 && matches!(p.icmp_type, 130..=132 | 143) {
        return Ok(Verdict {
            kind: V_DROP_QUIET,
            ..Verdict::PASS
        });
    }
    // Neighbour discovery: exactly what a kernel sends, and nothing else of
    // ICMPv6's link-local kind (router advertisements, redirects).
    if p.proto == PROTO_ICMPV6 && (133..=137).contains(&p.icmp_type) {
        // Judged by nd_verdict, called from the program's top for the stack.
        return Ok(Verdict {
            kind: V_ND,
            ..Verdict::PASS
        });
    }
    // Its own addresses only: a forged source would have others answer to
    // wherever it likes (the DNS proxy, any allowed server, ICMP errors).
    if !own_address(w, &p.src) {
        return Ok(Verdict::drop(Reason::Spoofed, true));
    }
    if p.source_route {
        return Ok(Verdict::drop(Reason::SourceRoute, true));
    }
    // The frame goes to the node, which routes, or to the neighbour the network
    // announced for this very address: not routed through another host.
    if !link::next_hop_ok(dst_mac, &p.dst, node, announced(ifindex, &p.dst)) {
        return Ok(Verdict::drop(Reason::PacketCheck, true));
    }
    if p.frag == FRAG_LATER {
        let key = frag_key(p);
        // SAFETY: presence test only.
        return Ok(if unsafe { EGRESS_FRAGS.get(key) }.is_some() {
            Verdict::PASS
        } else {
            Verdict::drop(Reason::PacketCheck, true)
        });
    }
    let service_id = allowed_dest(w, p);
    if service_id < 0 {
        return Ok(Verdict::drop(Reason::PacketCheck, true));
    }
    Ok(Verdict::count(service_id as u32))
}

/// Where the workload's packet may go: the service it is allowed for (0: none
/// in particular), or -1. A first fragment allowed lets its later ones follow.
#[inline(never)]
fn allowed_dest(w: &WorkloadValue, p: &Pkt) -> i64 {
    let allowed = match p.proto {
        PROTO_ICMP | PROTO_ICMPV6 => {
            let reply = matches!(
                (p.proto, p.icmp_type),
                (
                    PROTO_ICMP,
                    ICMP_ECHO_REPLY | ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
                ) | (
                    PROTO_ICMPV6,
                    ICMPV6_DEST_UNREACH..=ICMPV6_PARAMPROB | ICMPV6_ECHO_REPLY
                )
            );
            let request = matches!(
                (p.proto, p.icmp_type),
                (PROTO_ICMP, ICMP_ECHO_REQUEST) | (PROTO_ICMPV6, ICMPV6_ECHO_REQUEST)
            );
            if (request && w.flags & WL_SOCK_ICMP != 0) || (reply && inbound(p, 0, 0)) {
                Some(0)
            } else {
                None
            }
        }
        PROTO_TCP | PROTO_UDP => {
            let dest = PacketDest {
                addr: p.dst,
                port: p.dport,
                proto: p.proto,
            };
            // SAFETY: helper without arguments.
            let now = unsafe { bpf_ktime_get_boot_ns() };
            match decide::packet_allowed(&Kernel(Current), w, &dest, now) {
                Some(s) => Some(s),
                None if inbound(p, p.sport, p.dport) => Some(0),
                None => None,
            }
        }
        // A tunnel's outer packet, any other protocol: nothing the registry
        // allows.
        _ => None,
    };
    let Some(service_id) = allowed else {
        return -1;
    };
    if p.frag == FRAG_FIRST {
        let _ = EGRESS_FRAGS.insert(frag_key(p), 1u8, 0);
    }
    i64::from(service_id)
}

#[inline(always)]
fn frag_key(p: &Pkt) -> FragKey {
    FragKey {
        src: p.src,
        dst: p.dst,
        id: p.frag_id,
        proto: p.proto,
        _pad: [0; 3],
    }
}

/// Did the remote end open this flow (`local_port`/`remote_port` 0: any flow
/// with that peer, for ICMP replies and errors)?
#[inline(never)]
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

/// Host-side veth egress: what the workload receives. Flows a remote end opens
/// (a TCP SYN, a UDP datagram, an echo request) are remembered, so are the
/// neighbours the network announces (ARP, neighbour advertisements); then the
/// packet is counted.
#[inline(always)]
pub(super) fn tc_received(ctx: &TcContext) {
    // SAFETY: context field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out immediately.
    let held = unsafe { EGRESS_IFACES.get(ifindex).copied() }
        .is_some_and(|i| i.workload.flags & WL_REGISTRY_ONLY != 0);
    if !held {
        count_frame(ctx, DIR_RECEIVED);
        return;
    }
    let mut eth = [0u8; 14];
    if !ctx.fixed(0, &mut eth) {
        return;
    }
    let v6 = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_ARP => {
            let mut arp = [0u8; link::ARP_LEN];
            if ctx.bytes(ETH_HLEN, &mut arp) && (arp[7] == 2 || arp[7] == 1) {
                // The sender of a request or reply: where its address is reached.
                let sender = v4_mapped([arp[14], arp[15], arp[16], arp[17]]);
                let mac = [arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]];
                learn(ifindex, &sender, mac);
            }
            return;
        }
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return,
    };
    let Some(p) = EGRESS_SCRATCH.get_ptr_mut(u32::from(DIR_RECEIVED)) else {
        return;
    };
    // SAFETY: this CPU's slot for the received direction.
    let p = unsafe { &mut *p };
    if !parse_ip(ctx, ETH_HLEN, v6, p) {
        return;
    }
    if p.proto == PROTO_ICMPV6
        && (p.icmp_type == link::ICMPV6_NEIGHBOR_ADVERT
            || p.icmp_type == link::ICMPV6_NEIGHBOR_SOLICIT)
    {
        learn_nd(ctx, ifindex, p);
    }
    record_inbound(p);
    count_parsed(ctx, DIR_RECEIVED, p);
}

/// Learns the neighbour a solicitation or advertisement to the workload names.
#[inline(never)]
fn learn_nd(ctx: &TcContext, ifindex: u32, p: &Pkt) {
    {
        // Target address, then a link-layer address option: the target's in an
        // advertisement (type 2), the sender's in a solicitation (type 1).
        let mut nd = [0u8; 32];
        if ctx.bytes(p.l4_at, &mut nd) && nd[25] == 1 {
            let mac = [nd[26], nd[27], nd[28], nd[29], nd[30], nd[31]];
            if nd[24] == 2 && p.icmp_type == link::ICMPV6_NEIGHBOR_ADVERT {
                let mut target = [0u8; 16];
                let mut i = 0;
                while i < 16 {
                    target[i] = nd[8 + i];
                    i += 1;
                }
                learn(ifindex, &target, mac);
            } else if nd[24] == 1 && p.icmp_type == link::ICMPV6_NEIGHBOR_SOLICIT {
                learn(ifindex, &p.src, mac);
            }
        }
    }
}

#[inline(always)]
fn learn(ifindex: u32, addr: &Addr, mac: [u8; 6]) {
    let key = NeighKey {
        ifindex,
        _pad: 0,
        addr: *addr,
    };
    let _ = EGRESS_NEIGH.insert(key, NeighValue { mac, _pad: [0; 2] }, 0);
}

#[inline(never)]
fn record_inbound(p: &Pkt) {
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

/// Counts a frame whose workload and service are not known yet: attributed by
/// its workload address and remote end.
#[inline(never)]
fn count_frame(ctx: &TcContext, dir: u8) {
    let mut eth = [0u8; 2];
    if !ctx.fixed(12, &mut eth) {
        return;
    }
    let v6 = match u16::from_be_bytes(eth) {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return,
    };
    let mut p = Pkt::EMPTY;
    if parse_ip(ctx, ETH_HLEN, v6, &mut p) {
        count_parsed(ctx, dir, &p);
    }
}

/// Counts a parsed packet, attributed by its workload address and remote end.
#[inline(never)]
fn count_parsed(ctx: &TcContext, dir: u8, p: &Pkt) {
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return;
    }
    let (local, remote, remote_port) = if dir == DIR_SENT {
        (p.src, p.dst, p.dport)
    } else {
        (p.dst, p.src, p.sport)
    };
    let Some((workload_id, service_id)) =
        decide::attribute(&Kernel(Current), &local, &remote, remote_port, p.proto)
    else {
        return;
    };
    count_packet(ctx, workload_id, service_id, p, dir);
}

/// Adds one packet and its L4 payload to the traffic counters.
#[inline(never)]
fn count_packet(ctx: &TcContext, workload_id: u32, service_id: u32, p: &Pkt, dir: u8) {
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return;
    }
    let remote_port = if dir == DIR_SENT { p.dport } else { p.sport };
    let payload = (ctx.len() as u64).saturating_sub(p.payload_at as u64);
    let key = TrafficKey {
        workload_id,
        service_id,
        port: remote_port,
        proto: p.proto,
        dir,
    };
    if let Some(v) = EGRESS_TRAFFIC.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU touches it while we run.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += payload;
        }
        return;
    }
    let v = TrafficValue {
        packets: 1,
        bytes: payload,
    };
    if EGRESS_TRAFFIC.insert(key, v, BPF_NOEXIST as u64).is_err() {
        match EGRESS_TRAFFIC.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(c) => unsafe {
                (*c).packets += 1;
                (*c).bytes += payload;
            },
            None => bump(Counter::TrafficFull),
        }
    }
}
