//! The link-layer rules of the interface check: what a workload may put on its
//! link besides IP packets the registry allows. Pure functions over header fields,
//! unit-tested on the host; the TC program reads the bytes and calls them.
//!
//! A frame's link-layer destination decides who receives it: an IP packet for an
//! allowed address must go to the node (the interface's or its bridge's MAC,
//! which routes it) or to the neighbour the network announced for that address.
//! ARP and neighbour discovery must be exactly what a kernel sends: fixed sizes,
//! no padding with data, link-layer addresses consistent with the frame, and
//! addressed to who asked or who is asked.
//!
//! What remains free is stated where it is: the address an ARP request or a
//! neighbour solicitation asks about (4 bytes of IPv4, 8 bytes of an IPv6
//! interface identifier on the workload's own /64), to the link.

use crate::addr::Addr;

/// Broadcast or multicast (the group bit of the first octet).
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// A MAC as an integer (the BPF verifier follows plain integers better than
/// byte arrays compared with wide loads); 0 is no address.
#[inline(always)]
pub fn mac_u64(m: &[u8; 6]) -> u64 {
    u64::from(m[0]) << 40
        | u64::from(m[1]) << 32
        | u64::from(m[2]) << 24
        | u64::from(m[3]) << 16
        | u64::from(m[4]) << 8
        | u64::from(m[5])
}

pub const BROADCAST_MAC: u64 = 0xffff_ffff_ffff;

/// ARP over Ethernet for IPv4: hardware type 1, protocol 0x0800, lengths 6 and 4.
pub const ARP_LEN: usize = 28;
/// A kernel's ARP frame: 14 + 28 bytes, or padded with zeros to the minimum
/// frame (60 bytes without the FCS).
pub const ARP_FRAME: u32 = 42;
pub const MIN_FRAME: u32 = 60;

/// An ARP frame of the workload, as the checks see it (the body apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpFrame {
    pub frame_len: u32,
    /// The frame is padded with zeros only (or not padded).
    pub padding_zero: bool,
    pub src_mac: u64,
    pub dst_mac: u64,
}

/// Is this a plain ARP request or reply of the workload? Its sender address is
/// its own (or 0.0.0.0 for a probe) and its sender MAC the frame's source; a
/// request asks with an empty target MAC, by broadcast or (re-probing) to the
/// node or the neighbour known for the target; a reply answers the neighbour
/// that asked (its MAC as target and frame destination). `neigh` gives the MAC
/// announced for an address (0: none), `node` the node's MACs.
#[inline(always)]
pub fn arp_ok(
    b: &[u8; ARP_LEN],
    a: &ArpFrame,
    own: impl Fn(&Addr) -> bool,
    neigh: impl Fn(&Addr) -> u64,
    node: (u64, u64),
) -> bool {
    if !(a.frame_len == ARP_FRAME || (a.frame_len == MIN_FRAME && a.padding_zero)) {
        return false;
    }
    let htype = u16::from_be_bytes([b[0], b[1]]);
    let ptype = u16::from_be_bytes([b[2], b[3]]);
    let oper = u16::from_be_bytes([b[6], b[7]]);
    if htype != 1 || ptype != 0x0800 || b[4] != 6 || b[5] != 4 {
        return false;
    }
    let sender_mac = mac_u64(&[b[8], b[9], b[10], b[11], b[12], b[13]]);
    let sender = [b[14], b[15], b[16], b[17]];
    let target_mac = mac_u64(&[b[18], b[19], b[20], b[21], b[22], b[23]]);
    let target = crate::addr::v4_mapped([b[24], b[25], b[26], b[27]]);
    if sender_mac != a.src_mac || !(sender == [0, 0, 0, 0] || own(&crate::addr::v4_mapped(sender)))
    {
        return false;
    }
    let known = neigh(&target);
    match oper {
        1 => {
            target_mac == 0
                && (a.dst_mac == BROADCAST_MAC
                    || a.dst_mac == node.0
                    || a.dst_mac == node.1
                    || (known != 0 && a.dst_mac == known))
        }
        2 => known != 0 && target_mac == known && a.dst_mac == known,
        _ => false,
    }
}

pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// An IPv6 neighbour-discovery message of the workload, as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nd {
    pub icmp_type: u8,
    pub hop_limit: u8,
    /// The IPv6 payload length (ICMPv6 header, body, options).
    pub payload_len: u16,
    /// The whole frame's length.
    pub frame_len: u32,
    /// The ICMPv6 directly follows the IPv6 header (no extension header).
    pub plain: bool,
    /// Traffic class and flow label are zero (as a kernel sends them).
    pub plain_header: bool,
    pub src: Addr,
    pub dst: Addr,
    /// The target address of a solicitation or advertisement.
    pub target: Addr,
    /// The option after the target (or after the router solicitation's
    /// reserved word), when the payload has room for one.
    pub option: [u8; 8],
    pub src_mac: u64,
    pub dst_mac: u64,
}

/// Is this neighbour discovery the workload's kernel would send? Router and
/// neighbour solicitations and neighbour advertisements only, with hop limit 255,
/// no extension header, a plain header, exactly the size of their fixed fields
/// and at most one link-layer address option — the frame's own source. A
/// solicitation is for an address of the workload's link (its /64 `prefix`, or
/// link-local) or its own (duplicate detection, from ::); it goes to the target's
/// solicited-node group or, checking reachability, to the target's announced
/// MAC. An advertisement is about one of the workload's own addresses (or the
/// link-local address it is sent from) and answers a neighbour that asked (its
/// announced MAC). Redirects, router advertisements and unsolicited
/// advertisements are never needed.
#[inline(always)]
pub fn nd_ok(
    nd: &Nd,
    own: impl Fn(&Addr) -> bool,
    neigh: impl Fn(&Addr) -> u64,
    prefix: &[u8; 8],
) -> bool {
    if nd.hop_limit != 255
        || !nd.plain
        || !nd.plain_header
        || nd.frame_len != 54 + u32::from(nd.payload_len)
    {
        return false;
    }
    // At most one option: the source's (1) or target's (2) link-layer address,
    // which is the frame's own source MAC.
    let fixed: u16 = if nd.icmp_type == ICMPV6_ROUTER_SOLICIT {
        8
    } else {
        24
    };
    let option_ok = |kind: u8| {
        nd.payload_len == fixed
            || (nd.payload_len == fixed + 8
                && nd.option[0] == kind
                && nd.option[1] == 1
                && mac_u64(&[
                    nd.option[2],
                    nd.option[3],
                    nd.option[4],
                    nd.option[5],
                    nd.option[6],
                    nd.option[7],
                ]) == nd.src_mac)
    };
    let unspecified = nd.src == [0u8; 16];
    if !(unspecified || own(&nd.src) || is_link_local_v6(&nd.src)) {
        return false;
    }
    match nd.icmp_type {
        ICMPV6_ROUTER_SOLICIT => {
            option_ok(1) && nd.dst == ALL_ROUTERS && nd.dst_mac == multicast_mac(&ALL_ROUTERS)
        }
        ICMPV6_NEIGHBOR_SOLICIT => {
            if unspecified {
                // Duplicate address detection: its own address (or the
                // link-local one it is taking); no option but a nonce (RFC 7527,
                // six bytes a kernel picks at random).
                let nonce_only = nd.payload_len == fixed
                    || (nd.payload_len == fixed + 8 && nd.option[0] == 14 && nd.option[1] == 1);
                return nonce_only
                    && (own(&nd.target) || is_link_local_v6(&nd.target))
                    && nd.dst == solicited_node(&nd.target)
                    && nd.dst_mac == multicast_mac(&nd.dst);
            }
            let on_link = is_link_local_v6(&nd.target)
                || (*prefix != [0u8; 8] && nd.target[..8] == prefix[..]);
            let addressed = if nd.dst == solicited_node(&nd.target) {
                nd.dst_mac == multicast_mac(&nd.dst)
            } else {
                let known = neigh(&nd.target);
                nd.dst == nd.target && known != 0 && nd.dst_mac == known
            };
            on_link && addressed && option_ok(1)
        }
        ICMPV6_NEIGHBOR_ADVERT => {
            let about_itself =
                own(&nd.target) || (is_link_local_v6(&nd.target) && nd.target == nd.src);
            let known = neigh(&nd.dst);
            about_itself
                && !is_multicast_ip(&nd.dst)
                && known != 0
                && nd.dst_mac == known
                && option_ok(2)
        }
        _ => false,
    }
}

/// ff02::2
pub const ALL_ROUTERS: Addr = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The solicited-node multicast group of an address (ff02::1:ffXX:XXXX).
#[inline(always)]
pub fn solicited_node(a: &Addr) -> Addr {
    [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, a[13], a[14], a[15],
    ]
}

/// The Ethernet group address of an IPv6 multicast address (33:33 + its last
/// 32 bits), as [`mac_u64`].
#[inline(always)]
pub fn multicast_mac(a: &Addr) -> u64 {
    mac_u64(&[0x33, 0x33, a[12], a[13], a[14], a[15]])
}

/// fe80::/10
#[inline(always)]
pub fn is_link_local_v6(a: &Addr) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// ff00::/8 or 224.0.0.0/4 (v4-mapped).
#[inline(always)]
pub fn is_multicast_ip(a: &Addr) -> bool {
    if crate::addr::is_v4_mapped(a) {
        a[12] & 0xf0 == 0xe0
    } else {
        a[0] == 0xff
    }
}

/// May a frame to link-layer address `dst_mac` carry an IP packet for `dst`?
/// To the node (its MACs), or to the neighbour announced for that very address
/// (`neigh`, 0: none); a group address only with a multicast IP destination.
/// MACs as [`mac_u64`].
#[inline(always)]
pub fn next_hop_ok(dst_mac: u64, dst: &Addr, node_macs: (u64, u64), neigh: u64) -> bool {
    if dst_mac & (1 << 40) != 0 {
        return is_multicast_ip(dst);
    }
    dst_mac == node_macs.0 || dst_mac == node_macs.1 || (neigh != 0 && neigh == dst_mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::to_addr;
    use std::net::IpAddr;

    fn a(s: &str) -> Addr {
        to_addr(s.parse::<IpAddr>().unwrap())
    }

    const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const EXT1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
    const EXT2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
    const NODE: (u64, u64) = (0x0200_0000_0001, 0x0200_0000_0003);

    struct Arp {
        body: [u8; ARP_LEN],
        frame: ArpFrame,
    }

    fn arp(oper: u16, sender: [u8; 4], target_mac: [u8; 6], target: [u8; 4], dst: u64) -> Arp {
        let mut b = [0u8; ARP_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&oper.to_be_bytes());
        b[8..14].copy_from_slice(&POD_MAC);
        b[14..18].copy_from_slice(&sender);
        b[18..24].copy_from_slice(&target_mac);
        b[24..28].copy_from_slice(&target);
        Arp {
            body: b,
            frame: ArpFrame {
                frame_len: ARP_FRAME,
                padding_zero: true,
                src_mac: mac_u64(&POD_MAC),
                dst_mac: dst,
            },
        }
    }

    #[test]
    fn arp_is_what_a_kernel_sends_and_nothing_more() {
        let own = |x: &Addr| *x == a("198.18.0.2");
        let neigh = |x: &Addr| {
            if *x == a("198.18.0.11") {
                mac_u64(&EXT1_MAC)
            } else {
                0
            }
        };
        let arp_ok = |x: &Arp, own, neigh, node| super::arp_ok(&x.body, &x.frame, own, neigh, node);
        let (me, ext1) = ([198, 18, 0, 2], [198, 18, 0, 11]);
        let req = arp(1, me, [0; 6], ext1, BROADCAST_MAC);
        assert!(arp_ok(&req, own, neigh, NODE));
        assert!(
            arp_ok(
                &arp(1, [0; 4], [0; 6], ext1, BROADCAST_MAC),
                own,
                neigh,
                NODE
            ),
            "probe"
        );
        assert!(
            arp_ok(
                &arp(1, me, [0; 6], ext1, mac_u64(&EXT1_MAC)),
                own,
                neigh,
                NODE
            ),
            "re-probe"
        );
        assert!(
            !arp_ok(
                &arp(1, me, [0; 6], ext1, mac_u64(&EXT2_MAC)),
                own,
                neigh,
                NODE
            ),
            "to someone else"
        );
        assert!(
            !arp_ok(&arp(1, me, [9; 6], ext1, BROADCAST_MAC), own, neigh, NODE),
            "data in the target MAC"
        );
        assert!(!arp_ok(
            &arp(1, [198, 18, 0, 12], [0; 6], ext1, BROADCAST_MAC),
            own,
            neigh,
            NODE
        ));
        let reply = arp(2, me, EXT1_MAC, ext1, mac_u64(&EXT1_MAC));
        assert!(arp_ok(&reply, own, neigh, NODE), "answers who asked");
        assert!(!arp_ok(
            &arp(2, me, EXT2_MAC, ext1, mac_u64(&EXT2_MAC)),
            own,
            neigh,
            NODE
        ));
        assert!(!arp_ok(
            &arp(2, me, EXT1_MAC, ext1, BROADCAST_MAC),
            own,
            neigh,
            NODE
        ));
        let mut padded = arp(1, me, [0; 6], ext1, BROADCAST_MAC);
        padded.frame.frame_len = MIN_FRAME;
        assert!(arp_ok(&padded, own, neigh, NODE));
        padded.frame.padding_zero = false;
        assert!(!arp_ok(&padded, own, neigh, NODE), "data in the padding");
        let mut long = arp(1, me, [0; 6], ext1, BROADCAST_MAC);
        long.frame.frame_len = 61;
        assert!(!arp_ok(&long, own, neigh, NODE));
        let mut forged = arp(1, me, [0; 6], ext1, BROADCAST_MAC);
        forged.frame.src_mac = mac_u64(&EXT2_MAC);
        assert!(
            !arp_ok(&forged, own, neigh, NODE),
            "sender MAC is not the frame's"
        );
        let mut odd = arp(1, me, [0; 6], ext1, BROADCAST_MAC);
        odd.body[5] = 16;
        assert!(!arp_ok(&odd, own, neigh, NODE));
    }

    fn nd(icmp_type: u8, src: &str, dst: &str, target: &str, option: bool) -> Nd {
        let dst = a(dst);
        let fixed = if icmp_type == ICMPV6_ROUTER_SOLICIT {
            8
        } else {
            24
        };
        let payload_len = if option { fixed + 8 } else { fixed };
        let kind = if icmp_type == ICMPV6_NEIGHBOR_ADVERT {
            2
        } else {
            1
        };
        Nd {
            icmp_type,
            hop_limit: 255,
            payload_len,
            frame_len: 54 + u32::from(payload_len),
            plain: true,
            plain_header: true,
            src: a(src),
            dst,
            target: a(target),
            option: [
                kind, 1, POD_MAC[0], POD_MAC[1], POD_MAC[2], POD_MAC[3], POD_MAC[4], POD_MAC[5],
            ],
            src_mac: mac_u64(&POD_MAC),
            dst_mac: if dst[0] == 0xff {
                multicast_mac(&dst)
            } else {
                mac_u64(&EXT1_MAC)
            },
        }
    }

    const PREFIX: [u8; 8] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0];

    #[test]
    fn neighbour_discovery_is_what_a_kernel_sends_and_nothing_more() {
        let own = |x: &Addr| *x == a("2001:db8::2");
        let neigh = |x: &Addr| {
            if *x == a("2001:db8::11") || *x == a("fe80::11") {
                mac_u64(&EXT1_MAC)
            } else {
                0
            }
        };
        let ok = |n: &Nd| nd_ok(n, own, neigh, &PREFIX);
        // Address resolution of a neighbour of its link.
        assert!(ok(&nd(
            135,
            "2001:db8::2",
            "ff02::1:ff00:11",
            "2001:db8::11",
            true
        )));
        assert!(ok(&nd(135, "fe80::2", "ff02::1:ff00:1", "fe80::1", true)));
        // Reachability check of a known neighbour.
        assert!(ok(&nd(
            135,
            "2001:db8::2",
            "2001:db8::11",
            "2001:db8::11",
            true
        )));
        // Duplicate address detection of its own address.
        assert!(ok(&nd(135, "::", "ff02::1:ff00:2", "2001:db8::2", false)));
        assert!(ok(&nd(
            135,
            "::",
            "ff02::1:ff5b:598e",
            "fe80::5b:598e",
            false
        )));
        assert!(
            !ok(&nd(135, "::", "ff02::1:ff00:99", "2001:db9::99", false)),
            "someone else's"
        );
        assert!(
            !ok(&nd(135, "::", "ff02::1:ff00:2", "2001:db8::2", true)),
            "DAD has no option"
        );
        // A target made of data: off its /64.
        assert!(!ok(&nd(
            135,
            "2001:db8::2",
            "ff02::1:ff65:6c6c",
            "2001:db9:6865:6c6c::6c6c",
            true
        )));
        // To another host than the target's.
        let mut elsewhere = nd(135, "2001:db8::2", "2001:db8::11", "2001:db8::11", true);
        elsewhere.dst_mac = mac_u64(&EXT2_MAC);
        assert!(!ok(&elsewhere));
        assert!(!ok(&nd(
            135,
            "2001:db8::2",
            "2001:db8::12",
            "2001:db8::11",
            true
        )));
        // Data in a trailer, in options, in the flow label, a forged option MAC.
        let mut trailer = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        trailer.frame_len += 1200;
        assert!(!ok(&trailer));
        let mut options = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        options.payload_len = 900;
        options.frame_len = 954;
        assert!(!ok(&options));
        let mut flow = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        flow.plain_header = false;
        assert!(!ok(&flow));
        let mut mac = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        mac.option[7] = 0x66;
        assert!(!ok(&mac));
        let mut wrong_group = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        wrong_group.dst_mac = mac_u64(&EXT2_MAC);
        assert!(!ok(&wrong_group));
        // Advertisements: about itself, to the neighbour that asked.
        assert!(ok(&nd(
            136,
            "2001:db8::2",
            "2001:db8::11",
            "2001:db8::2",
            true
        )));
        assert!(ok(&nd(136, "fe80::2", "fe80::11", "fe80::2", true)));
        assert!(
            !ok(&nd(136, "fe80::6c6c", "fe80::11", "fe80::6865", true)),
            "a target made of data"
        );
        assert!(
            !ok(&nd(136, "2001:db8::2", "2001:db8::12", "2001:db8::2", true)),
            "nobody asked"
        );
        assert!(
            !ok(&nd(136, "2001:db8::2", "ff02::1", "2001:db8::2", true)),
            "unsolicited"
        );
        assert!(!ok(&nd(
            136,
            "2001:db8::2",
            "2001:db8::11",
            "2001:db8::99",
            true
        )));
        // Router solicitation to all routers; nothing else of the kind.
        assert!(ok(&nd(133, "fe80::2", "ff02::2", "::", true)));
        assert!(!ok(&nd(133, "fe80::2", "2001:db8::12", "::", true)));
        for t in [134, 137, 130, 131, 143] {
            assert!(!ok(&nd(t, "fe80::2", "ff02::1", "::", false)), "type {t}");
        }
        let mut hop = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        hop.hop_limit = 64;
        assert!(!ok(&hop), "routed");
        let mut ext = nd(135, "2001:db8::2", "ff02::1:ff00:11", "2001:db8::11", true);
        ext.plain = false;
        assert!(!ok(&ext), "behind an extension header");
        assert!(
            !ok(&nd(
                135,
                "2001:db8::12",
                "ff02::1:ff00:11",
                "2001:db8::11",
                true
            )),
            "a forged source"
        );
    }

    #[test]
    fn a_frame_goes_to_the_node_or_to_the_announced_neighbour() {
        let m = |b: [u8; 6]| mac_u64(&b);
        let (gw, br) = (m([2, 0, 0, 0, 0, 1]), m([2, 0, 0, 0, 0, 2]));
        let ext1 = m(EXT1_MAC);
        let ext2 = m(EXT2_MAC);
        let dst = a("198.18.0.11");
        assert!(next_hop_ok(gw, &dst, (gw, br), 0));
        assert!(next_hop_ok(br, &dst, (gw, br), 0));
        assert!(next_hop_ok(ext1, &dst, (gw, br), ext1));
        assert!(
            !next_hop_ok(ext2, &dst, (gw, br), ext1),
            "routed via another host"
        );
        assert!(!next_hop_ok(ext2, &dst, (gw, br), 0));
        assert!(
            !next_hop_ok(BROADCAST_MAC, &dst, (gw, br), 0),
            "unicast IP to everyone"
        );
        assert!(next_hop_ok(
            m([0x01, 0, 0x5e, 0, 0, 1]),
            &a("224.0.0.1"),
            (gw, br),
            0
        ));
        assert!(next_hop_ok(
            m([0x33, 0x33, 0, 0, 0, 1]),
            &a("ff02::1"),
            (gw, br),
            0
        ));
        assert!(is_group_mac(&[0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(
            multicast_mac(&a("ff02::1:ff00:11")),
            m([0x33, 0x33, 0xff, 0, 0, 0x11])
        );
    }
}
