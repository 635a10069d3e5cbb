//! What the agent needs to know of a network interface, from the kernel's
//! rtnetlink (in the agent's own network namespace, whatever /sys shows): its
//! index, its MAC, and the bridge it is a port of.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MASTER: u16 = 10;

/// An interface as the interface check needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    /// The bridge it is a port of (its index), if any.
    pub master: Option<u32>,
}

/// Sends one rtnetlink request (its header's length already set) and returns
/// the first reply message.
fn ask(req: &[u8]) -> std::io::Result<Vec<u8>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sending our buffer on our socket (to the kernel: no address needed).
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: receiving into our buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The (type, payload) attributes of one message, from offset `at` (past its
/// fixed header); a malformed one ends the walk.
fn attributes(msg: &[u8], mut at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if at + 4 > msg.len() {
            return None;
        }
        let alen = u16::from_ne_bytes(msg[at..at + 2].try_into().unwrap()) as usize;
        let aty = u16::from_ne_bytes(msg[at + 2..at + 4].try_into().unwrap()) & 0x3fff;
        if alen < 4 || at + alen > msg.len() {
            return None;
        }
        let data = &msg[at + 4..at + alen];
        at += (alen + 3) & !3;
        Some((aty, data))
    })
}

/// Asks the kernel about interface `index`.
pub fn link(index: u32) -> std::io::Result<Link> {
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, type 0, index, flags 0, change 0.
    req[20..24].copy_from_slice(&(index as i32).to_ne_bytes());
    parse_newlink(&ask(&req)?, index)
}

/// Reads the reply to an RTM_GETLINK.
fn parse_newlink(msg: &[u8], index: u32) -> std::io::Result<Link> {
    let bad = |why: &str| std::io::Error::other(format!("rtnetlink: {why}"));
    if msg.len() < 16 {
        return Err(bad("short reply"));
    }
    let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
    let ty = u16::from_ne_bytes(msg[4..6].try_into().unwrap());
    if ty == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(msg[16..20].try_into().unwrap_or([0; 4]));
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    if ty != RTM_NEWLINK || len > msg.len() || len < 32 {
        return Err(bad("unexpected reply"));
    }
    let mut link = Link {
        index,
        ..Link::default()
    };
    for (aty, data) in attributes(&msg[..len], 32) {
        match aty {
            IFLA_ADDRESS if data.len() == 6 => link.mac.copy_from_slice(data),
            IFLA_MASTER if data.len() == 4 => {
                link.master = Some(u32::from_ne_bytes(data.try_into().unwrap()))
            }
            _ => {}
        }
    }
    Ok(link)
}

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

/// The interface the node's routes send `ip` out of, when it is a direct
/// route (no gateway): the host side of a pod's link, as CNIs that route to
/// each pod (Calico, Cilium, the ptp plugin) set it up.
pub fn direct_route_oif(ip: std::net::IpAddr) -> std::io::Result<Option<u32>> {
    let (family, addr): (u8, Vec<u8>) = match ip {
        std::net::IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let len = 16 + 12 + 4 + addr.len();
    let mut req = vec![0u8; len];
    req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // rtmsg: family, dst_len (a host route), the rest 0.
    req[16] = family;
    req[17] = (addr.len() * 8) as u8;
    let at = 28;
    req[at..at + 2].copy_from_slice(&((4 + addr.len()) as u16).to_ne_bytes());
    req[at + 2..at + 4].copy_from_slice(&RTA_DST.to_ne_bytes());
    req[at + 4..].copy_from_slice(&addr);
    let reply = ask(&req)?;
    let msg = reply.as_slice();
    if msg.len() < 28 {
        return Err(std::io::Error::other("rtnetlink: short reply"));
    }
    let ty = u16::from_ne_bytes(msg[4..6].try_into().unwrap());
    if ty == NLMSG_ERROR {
        // No route (ENETUNREACH and the like): not a pod of this node.
        return Ok(None);
    }
    if ty != RTM_NEWROUTE {
        return Err(std::io::Error::other("rtnetlink: unexpected reply"));
    }
    let len = (u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize).min(msg.len());
    let (mut oif, mut gateway) = (None, false);
    for (aty, data) in attributes(&msg[..len], 28) {
        match aty {
            RTA_OIF if data.len() == 4 => oif = Some(u32::from_ne_bytes(data.try_into().unwrap())),
            RTA_GATEWAY => gateway = true,
            _ => {}
        }
    }
    Ok(if gateway { None } else { oif })
}

/// The name of interface `index`.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE long, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The host side of the link of the pod at `ip`: the interface of a direct
/// route to it, unless that is loopback or a bridge (shared by every pod on
/// it: the per-pod check would not fit).
pub fn pod_interface(ip: std::net::IpAddr) -> Option<String> {
    let index = direct_route_oif(ip).ok()??;
    let name = name_of(index)?;
    if name == "lo"
        || Path::new("/sys/class/net")
            .join(&name)
            .join("bridge")
            .exists()
    {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_a_zero_mac_and_no_master() {
        let l = link(1).expect("rtnetlink works without privileges");
        assert_eq!(l.index, 1);
        assert_eq!(l.mac, [0; 6]);
        assert_eq!(l.master, None);
    }

    #[test]
    fn loopback_addresses_are_no_pod_link() {
        // 127.0.0.1 routes through lo (local table): never a pod's interface.
        assert_eq!(pod_interface("127.0.0.1".parse().unwrap()), None);
        assert_eq!(name_of(1).as_deref(), Some("lo"));
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        assert!(link(u32::MAX - 7).is_err());
    }
}
