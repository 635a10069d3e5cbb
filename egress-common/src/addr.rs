//! Address helpers. Every address in a map is 16 bytes in network byte order; IPv4
//! is stored v4-mapped (`::ffff:a.b.c.d`), so IPv4, IPv6 and v4-mapped IPv6 share one
//! code path.

/// An IPv6 or v4-mapped IPv4 address, network byte order.
pub type Addr = [u8; 16];

/// The v4-mapped form of an IPv4 address given as its four octets.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// True when `a` is a v4-mapped IPv4 address.
#[inline(always)]
pub fn is_v4_mapped(a: &Addr) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// The IPv4 octets of a v4-mapped address (meaningless for other addresses).
#[inline(always)]
pub fn v4_octets(a: &Addr) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// Prefix length, on the 128-bit scale, of an IPv4 prefix of `len` bits.
#[inline(always)]
pub const fn v4_prefix_on_v6(len: u8) -> u32 {
    96 + len as u32
}

#[cfg(not(target_arch = "bpf"))]
mod host {
    use std::net::{IpAddr, Ipv6Addr};

    use super::Addr;

    /// The map form of an address.
    pub fn to_addr(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => super::v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// The address a map entry stands for: v4-mapped entries come back as IPv4.
    pub fn from_addr(a: &Addr) -> IpAddr {
        let v6 = Ipv6Addr::from(*a);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
pub use host::{from_addr, to_addr};

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn v4_round_trips_through_mapped_form() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let a = to_addr(ip);
        assert!(is_v4_mapped(&a));
        assert_eq!(v4_octets(&a), [198, 51, 100, 7]);
        assert_eq!(from_addr(&a), ip);
    }

    #[test]
    fn v6_is_not_mapped() {
        let ip: IpAddr = "2001:2::1".parse().unwrap();
        let a = to_addr(ip);
        assert!(!is_v4_mapped(&a));
        assert_eq!(from_addr(&a), ip);
    }

    #[test]
    fn explicit_v4_mapped_v6_reads_back_as_v4() {
        let ip: IpAddr = "::ffff:240.240.0.1".parse().unwrap();
        assert_eq!(
            from_addr(&to_addr(ip)),
            "240.240.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
