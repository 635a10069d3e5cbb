//! The link-layer rules of the interface check: what a workload may put on its
//! link besides IP packets the registry allows. Pure functions over header bytes,
//! unit-tested on the host; the TC program reads the bytes and calls them.
//!
//! A frame's link-layer destination decides who receives it: an IP packet for an
//! allowed address must go to the node (the interface's or its bridge's MAC,
//! which routes it) or to the neighbour the network announced for that address.
//! ARP and neighbour discovery carry no data of the workload's choosing beyond
//! their fixed fields.

use crate::addr::Addr;

/// Broadcast or multicast (the group bit of the first octet).
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// ARP over Ethernet for IPv4: hardware type 1, protocol 0x0800, lengths 6 and 4.
pub const ARP_LEN: usize = 28;
/// An Ethernet frame carrying ARP is at most the minimum frame (60 bytes without
/// the FCS): 14 + 28 + padding.
pub const ARP_FRAME_MAX: u32 = 60;

/// Is this a plain ARP request or reply of the workload (sender address its own,
/// or 0.0.0.0 for a probe), in a minimum-size frame? `own` says whether an IPv4
/// address (as v4-mapped [`Addr`]) belongs to the workload.
#[inline(always)]
pub fn arp_ok(arp: &[u8; ARP_LEN], frame_len: u32, own: impl Fn(&Addr) -> bool) -> bool {
    if frame_len > ARP_FRAME_MAX {
        return false;
    }
    let htype = u16::from_be_bytes([arp[0], arp[1]]);
    let ptype = u16::from_be_bytes([arp[2], arp[3]]);
    let oper = u16::from_be_bytes([arp[6], arp[7]]);
    if htype != 1 || ptype != 0x0800 || arp[4] != 6 || arp[5] != 4 || !(oper == 1 || oper == 2) {
        return false;
    }
    let sender = [arp[14], arp[15], arp[16], arp[17]];
    sender == [0, 0, 0, 0] || own(&crate::addr::v4_mapped(sender))
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
    /// The ICMPv6 directly follows the IPv6 header (no extension header).
    pub plain: bool,
    pub dst: Addr,
    /// The target address of a solicitation or advertisement.
    pub target: Addr,
}

/// Is this neighbour discovery the workload's kernel would send? Router and
/// neighbour solicitations and neighbour advertisements only, with hop limit 255,
/// no extension header, the size of their fixed fields plus a link-layer address
/// option (and a nonce); a solicitation goes to the target's solicited-node group
/// or (unreachability detection) to the target itself; an advertisement is about
/// one of the workload's own addresses (or a link-local one); a router
/// solicitation goes to all-routers. Redirects, router advertisements and MLD
/// from a workload are never needed.
#[inline(always)]
pub fn nd_ok(nd: &Nd, own: impl Fn(&Addr) -> bool) -> bool {
    if nd.hop_limit != 255 || !nd.plain {
        return false;
    }
    match nd.icmp_type {
        ICMPV6_ROUTER_SOLICIT => nd.payload_len <= 16 && nd.dst == ALL_ROUTERS,
        ICMPV6_NEIGHBOR_SOLICIT => {
            nd.payload_len <= 40 && (nd.dst == nd.target || nd.dst == solicited_node(&nd.target))
        }
        ICMPV6_NEIGHBOR_ADVERT => {
            nd.payload_len <= 32 && (own(&nd.target) || is_link_local_v6(&nd.target))
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

    fn arp(oper: u16, sender: [u8; 4]) -> [u8; ARP_LEN] {
        let mut b = [0u8; ARP_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&oper.to_be_bytes());
        b[14..18].copy_from_slice(&sender);
        b
    }

    #[test]
    fn arp_must_be_plain_small_and_from_the_workload() {
        let own = |x: &Addr| *x == a("198.18.0.2");
        assert!(arp_ok(&arp(1, [198, 18, 0, 2]), 42, own));
        assert!(arp_ok(&arp(2, [198, 18, 0, 2]), 60, own));
        assert!(arp_ok(&arp(1, [0, 0, 0, 0]), 42, own), "a probe");
        assert!(
            !arp_ok(&arp(1, [198, 18, 0, 2]), 61, own),
            "data after the ARP body"
        );
        assert!(
            !arp_ok(&arp(1, [198, 18, 0, 12]), 42, own),
            "someone else's address"
        );
        assert!(!arp_ok(&arp(3, [198, 18, 0, 2]), 42, own), "RARP");
        let mut odd = arp(1, [198, 18, 0, 2]);
        odd[5] = 16;
        assert!(!arp_ok(&odd, 42, own));
    }

    fn nd(icmp_type: u8, dst: &str, target: &str, len: u16) -> Nd {
        Nd {
            icmp_type,
            hop_limit: 255,
            payload_len: len,
            plain: true,
            dst: a(dst),
            target: a(target),
        }
    }

    #[test]
    fn neighbour_discovery_is_limited_to_what_a_kernel_sends() {
        let own = |x: &Addr| *x == a("2001:db8::2");
        assert!(nd_ok(&nd(135, "ff02::1:ff00:11", "2001:db8::11", 32), own));
        assert!(
            nd_ok(&nd(135, "2001:db8::11", "2001:db8::11", 32), own),
            "NUD"
        );
        assert!(
            !nd_ok(&nd(135, "2001:db8::12", "2001:db8::11", 32), own),
            "to another host"
        );
        assert!(
            !nd_ok(&nd(135, "ff02::1:ff00:11", "2001:db8::11", 900), own),
            "data in options"
        );
        assert!(nd_ok(&nd(136, "2001:db8::11", "2001:db8::2", 32), own));
        assert!(nd_ok(&nd(136, "ff02::1", "fe80::1", 32), own));
        assert!(
            !nd_ok(&nd(136, "2001:db8::11", "2001:db8::99", 32), own),
            "not its address"
        );
        assert!(nd_ok(&nd(133, "ff02::2", "::", 16), own));
        assert!(!nd_ok(&nd(133, "2001:db8::12", "::", 16), own));
        for t in [134, 137, 130, 131, 143] {
            assert!(!nd_ok(&nd(t, "ff02::1", "::", 16), own), "type {t}");
        }
        let mut hop = nd(135, "ff02::1:ff00:11", "2001:db8::11", 32);
        hop.hop_limit = 64;
        assert!(!nd_ok(&hop, own), "routed");
        let mut ext = nd(135, "ff02::1:ff00:11", "2001:db8::11", 32);
        ext.plain = false;
        assert!(!nd_ok(&ext, own), "behind an extension header");
    }

    #[test]
    fn a_frame_goes_to_the_node_or_to_the_announced_neighbour() {
        let m = |b: [u8; 6]| mac_u64(&b);
        let (gw, br) = (m([2, 0, 0, 0, 0, 1]), m([2, 0, 0, 0, 0, 2]));
        let ext1 = m([2, 0, 0, 0, 0, 0x11]);
        let ext2 = m([2, 0, 0, 0, 0, 0x12]);
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
            !next_hop_ok(m([0xff; 6]), &dst, (gw, br), 0),
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
    }
}
