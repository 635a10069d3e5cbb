//! Revocation: when a destination leaves a workload's view (an entry removed or
//! edited, exportTo or a Sidecar changed, the policy switched to REGISTRY_ONLY,
//! the workload's namespace changed), the workload's established TCP connections
//! and connected UDP sockets to it are destroyed, not left running.
//!
//! For each network namespace of the node (of any process, or bind-mounted under
//! /run/netns: a socket stays in the namespace it was made in, whoever holds it
//! now), a thread enters it, lists the TCP and UDP sockets with `sock_diag`
//! (cookie, peer, cgroup), keeps those of the workloads' cgroups, and
//! judges each one as the kernel would before and after the change: a socket the
//! old state allowed and the new one refuses is doomed. A rewritten socket is
//! judged by what the application asked for (the VIP, from the socket's
//! original-destination entry), not the endpoint it was sent to. The doomed
//! cookies go into a map that a TCP and a UDP socket iterator read: for each
//! socket of the namespace the iterator calls `bpf_sock_destroy` on those in the
//! map (kernel ≥ 6.5). The application sees ECONNABORTED; its peer gets a RST.
//!
//! The iterator program is 15 instructions, assembled here: aya does not
//! relocate kernel-function calls. On a kernel without `bpf_sock_destroy` the
//! program does not load; the agent says so once and established connections
//! then run until they close (new ones are refused as always).
//!
//! Addresses learned from DNS answers (NONE and wildcard hosts) are judged by
//! the learned table: when their host leaves the view, the entries go and the
//! connections to them are revoked; a learned address whose TTL ends does not
//! revoke (a CDN answer churns while the connection is legitimate).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use egress_common::addr::{from_addr, to_addr};
use egress_common::decide::{Connect, Outcome};
use egress_common::{Action, OrigDest, PROTO_TCP, PROTO_UDP};

use crate::dataplane::compile::Desired;
use crate::dataplane::sim::Sim;
use crate::dataplane::workloads::Workload;
use crate::telemetry::catalog::Catalog;

/// One destroyed socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The [`egress_common::WORKLOADS_MAP`] key (the workload's cgroup id).
    pub workload_key: u64,
    /// The socket's own cgroup (the workload's or one below it).
    pub cgroup_id: u64,
    pub proto: u8,
    /// What the application connected to (the VIP of a rewritten socket).
    pub dest: IpAddr,
    pub port: u16,
    /// The service the old state matched (0: none, e.g. ALLOW_ANY).
    pub service_id: u32,
}

/// A socket as `sock_diag` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    pub proto: u8,
    pub v4: bool,
    pub dst: IpAddr,
    pub dport: u16,
    pub cgroup_id: u64,
}

/// Destroys sockets by cookie with `bpf_sock_destroy` from socket iterators.
pub struct Destroyer {
    doomed: OwnedFd,
    /// Iterator links: TCP, UDP.
    links: [OwnedFd; 2],
}

const DOOMED_MAX: u32 = 65_536;

impl Destroyer {
    /// Loads the iterator programs; fails where the kernel lacks
    /// `bpf_sock_destroy` (before 6.5) or socket iterators.
    pub fn load() -> io::Result<Self> {
        let btf = aya::Btf::from_sys_fs().map_err(io::Error::other)?;
        let id = |name: &str| {
            btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
                .map_err(|e| io::Error::other(format!("{name}: {e}")))
        };
        let destroy = id("bpf_sock_destroy")?;
        let doomed = crate::dataplane::bpfsys::map_create(
            crate::dataplane::bpfsys::MAP_TYPE_HASH,
            8,
            1,
            DOOMED_MAX,
        )?;
        let mut links = Vec::new();
        for iter in ["bpf_iter_tcp", "bpf_iter_udp"] {
            let code = program(doomed.as_raw_fd(), destroy);
            let prog = crate::dataplane::bpfsys::prog_load_iter(&code, id(iter)?)
                .map_err(|e| io::Error::other(format!("loading the {iter} program: {e}")))?;
            links.push(crate::dataplane::bpfsys::link_create(
                prog.as_fd(),
                0,
                crate::dataplane::bpfsys::attach::TRACE_ITER,
            )?);
        }
        let [tcp, udp]: [OwnedFd; 2] = links.try_into().expect("two links");
        Ok(Self {
            doomed,
            links: [tcp, udp],
        })
    }

    /// Destroys the sockets of the calling thread's network namespace whose
    /// cookies are in `cookies`.
    pub fn destroy_here(&self, cookies: &[u64]) -> io::Result<()> {
        for c in cookies {
            crate::dataplane::bpfsys::map_update(self.doomed.as_fd(), &c.to_ne_bytes(), &[1])?;
        }
        let mut result = Ok(());
        for link in &self.links {
            if let Err(e) = crate::dataplane::bpfsys::iter_run(link.as_fd()) {
                result = Err(e);
            }
        }
        for c in cookies {
            let _ = crate::dataplane::bpfsys::map_delete(self.doomed.as_fd(), &c.to_ne_bytes());
        }
        result
    }
}

/// The iterator program: for the iterated socket (`ctx->sk_common` of
/// `bpf_iter__tcp`, `ctx->udp_sk` of `bpf_iter__udp`, both at offset 8), look
/// its cookie up in the doomed map and call `bpf_sock_destroy` if it is there.
fn program(map_fd: i32, destroy_btf_id: u32) -> Vec<u64> {
    fn ins(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        u64::from(op)
            | u64::from(dst & 0xf | (src & 0xf) << 4) << 8
            | u64::from(off as u16) << 16
            | u64::from(imm as u32) << 32
    }
    const PSEUDO_MAP_FD: u8 = 1;
    const PSEUDO_KFUNC_CALL: u8 = 2;
    vec![
        ins(0x79, 6, 1, 8, 0),                  // 0: r6 = *(u64 *)(r1 + 8)
        ins(0x15, 6, 0, 11, 0),                 // 1: if r6 == 0 goto 13
        ins(0xbf, 1, 6, 0, 0),                  // 2: r1 = r6
        ins(0x85, 0, 0, 0, 46),                 // 3: call bpf_get_socket_cookie
        ins(0x7b, 10, 0, -8, 0),                // 4: *(u64 *)(r10 - 8) = r0
        ins(0xbf, 2, 10, 0, 0),                 // 5: r2 = r10
        ins(0x07, 2, 0, 0, -8),                 // 6: r2 += -8
        ins(0x18, 1, PSEUDO_MAP_FD, 0, map_fd), // 7: r1 = doomed map
        ins(0, 0, 0, 0, 0),                     // 8:   (second half of the 64-bit load)
        ins(0x85, 0, 0, 0, 1),                  // 9: call bpf_map_lookup_elem
        ins(0x15, 0, 0, 2, 0),                  // 10: if r0 == 0 goto 13
        ins(0xbf, 1, 6, 0, 0),                  // 11: r1 = r6
        ins(0x85, 0, PSEUDO_KFUNC_CALL, 0, destroy_btf_id as i32), // 12: bpf_sock_destroy(r1)
        ins(0xb7, 0, 0, 0, 0),                  // 13: r0 = 0
        ins(0x95, 0, 0, 0, 0),                  // 14: exit
    ]
}

/// Lists the TCP (established or connecting) and connected UDP sockets of the
/// calling thread's network namespace with `sock_diag`.
pub fn dump_sockets() -> io::Result<Vec<DiagSocket>> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Vec::new();
    const TCP_ESTABLISHED: u32 = 1;
    const TCP_SYN_SENT: u32 = 2;
    for (proto, states) in [
        (PROTO_TCP, 1 << TCP_ESTABLISHED | 1 << TCP_SYN_SENT),
        (PROTO_UDP, 1 << TCP_ESTABLISHED),
    ] {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            dump_one(sock.as_fd(), family, proto, states, &mut out)?;
        }
    }
    Ok(out)
}

fn dump_one(
    sock: BorrowedFd<'_>,
    family: u8,
    proto: u8,
    states: u32,
    out: &mut Vec<DiagSocket>,
) -> io::Result<()> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const INET_DIAG_CGROUP_ID: u16 = 21;
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[16] = family;
    req[17] = proto;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: sending our own buffer on our socket (to the kernel, pid 0).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into our own buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 || off + len > n {
                break;
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    // A protocol without diag support (module not loaded) lists nothing.
                    if err == -libc::ENOENT {
                        return Ok(());
                    }
                    return Err(io::Error::from_raw_os_error(-err));
                }
                _ => {
                    let msg = &buf[off + 16..off + len];
                    if let Some(s) = parse_msg(msg, proto, INET_DIAG_CGROUP_ID) {
                        out.push(s);
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// `struct inet_diag_msg` and its attributes.
fn parse_msg(m: &[u8], proto: u8, cgroup_attr: u16) -> Option<DiagSocket> {
    if m.len() < 72 {
        return None;
    }
    let family = m[0];
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let dst = if family == libc::AF_INET as u8 {
        IpAddr::from(<[u8; 4]>::try_from(&m[24..28]).ok()?)
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&m[24..40]).ok()?)
    };
    let cookie = u64::from(u32::from_ne_bytes(m[44..48].try_into().ok()?))
        | u64::from(u32::from_ne_bytes(m[48..52].try_into().ok()?)) << 32;
    let mut cgroup_id = 0;
    let mut off = 72;
    while off + 4 <= m.len() {
        let len = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([m[off + 2], m[off + 3]]);
        if len < 4 || off + len > m.len() {
            break;
        }
        if ty == cgroup_attr && len >= 12 {
            cgroup_id = u64::from_ne_bytes(m[off + 4..off + 12].try_into().ok()?);
        }
        off += (len + 3) & !3;
    }
    // A v4-mapped peer of an IPv6 socket is the IPv4 address it reaches.
    let dst = match dst {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Some(DiagSocket {
        cookie,
        proto,
        v4: family == libc::AF_INET as u8,
        dst,
        dport,
        cgroup_id,
    })
}

/// The learned table before and after a change: entries of a host that left
/// the workload's view are gone from `after`.
#[derive(Debug, Default)]
pub struct Learned {
    pub before: HashMap<egress_common::LearnedKey, egress_common::LearnedValue>,
    pub after: HashMap<egress_common::LearnedKey, egress_common::LearnedValue>,
}

/// The learned entries `desired` no longer allows: their workload is gone, or
/// the host they were learned for is no longer in its view.
pub fn stale_learned(
    desired: &Desired,
    learned: &HashMap<egress_common::LearnedKey, egress_common::LearnedValue>,
) -> Vec<egress_common::LearnedKey> {
    if learned.is_empty() {
        return Vec::new();
    }
    let views: HashMap<u32, u32> = desired
        .workloads
        .values()
        .map(|w| (w.workload_id, w.view_id))
        .collect();
    let visible: HashMap<u32, HashSet<u32>> = desired
        .dns_tables
        .views
        .iter()
        .map(|(id, v)| {
            let ids = v
                .exact
                .values()
                .chain(v.wildcards.iter().map(|(_, h)| h))
                .map(|h| h.service_id)
                .collect();
            (*id, ids)
        })
        .collect();
    learned
        .iter()
        .filter(|(k, v)| {
            !views
                .get(&k.workload_id)
                .and_then(|view| visible.get(view))
                .is_some_and(|ids| ids.contains(&v.service_id))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Finds and destroys what a change of desired state revokes.
pub struct Revoker {
    destroyer: Destroyer,
    /// The host's /proc (`procPath`): whose processes' namespaces are searched.
    proc_path: PathBuf,
    /// Socket cookie → original destination of rewritten sockets (pinned map).
    sock_orig: aya::maps::HashMap<aya::maps::MapData, u64, OrigDest>,
}

impl Revoker {
    /// Loads the destroyer and opens the original-destination map pinned in
    /// `pins`.
    pub fn new(pins: &Path, proc_path: &Path) -> io::Result<Self> {
        let destroyer = Destroyer::load()?;
        let data = aya::maps::MapData::from_pin(pins.join(egress_common::SOCK_ORIG_MAP))
            .map_err(io::Error::other)?;
        let sock_orig = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(io::Error::other)?;
        Ok(Self {
            destroyer,
            proc_path: proc_path.to_owned(),
            sock_orig,
        })
    }

    /// Destroys the sockets of `workloads` that `old` allowed and `new` refuses.
    /// Returns what it destroyed, and the namespaces it could not search.
    pub fn revoke(
        &self,
        old: &Desired,
        new: &Desired,
        learned: &Learned,
        workloads: &[Workload],
    ) -> (Vec<Revoked>, Vec<(PathBuf, String)>) {
        // Every cgroup of a workload, its own and those below it, → its key.
        let mut owner: HashMap<u64, u64> = HashMap::new();
        for w in workloads {
            walk_cgroup(&w.config.cgroup, &mut |_, id| {
                owner.insert(id, w.cgroup_id);
            });
        }
        // Every network namespace of the node: a socket stays in the one it was
        // made in, whoever holds it now (a process that left for a namespace of
        // its own, a process outside the pod it was passed to).
        let netns = node_netns(&self.proc_path);
        let catalog = Catalog::default();
        let mut failed = Vec::new();
        let mut revoked = Vec::new();
        std::thread::scope(|scope| {
            let handles: Vec<_> = netns
                .values()
                .map(|path| {
                    let (owner, catalog) = (&owner, &catalog);
                    (
                        path.clone(),
                        scope.spawn(move || -> io::Result<Vec<Revoked>> {
                            enter_netns(path)?;
                            let sockets = dump_sockets()?;
                            let mut old_sim =
                                Sim::new(old, 0, catalog).with_learned(&learned.before);
                            let mut new_sim =
                                Sim::new(new, 0, catalog).with_learned(&learned.after);
                            let mut doomed = Vec::new();
                            let mut found = Vec::new();
                            for s in sockets {
                                let Some(&key) = owner.get(&s.cgroup_id) else {
                                    continue;
                                };
                                if let Some(r) = self.judge(&mut old_sim, &mut new_sim, key, &s) {
                                    doomed.push(s.cookie);
                                    found.push(r);
                                }
                            }
                            if !doomed.is_empty() {
                                self.destroyer.destroy_here(&doomed)?;
                            }
                            Ok(found)
                        }),
                    )
                })
                .collect();
            for (path, h) in handles {
                match h.join() {
                    Ok(Ok(found)) => revoked.extend(found),
                    Ok(Err(e)) => failed.push((path, e.to_string())),
                    Err(_) => failed.push((path, "the revocation thread panicked".into())),
                }
            }
        });
        (revoked, failed)
    }

    /// Is `s` allowed by the old state and refused by the new one?
    fn judge(
        &self,
        old: &mut Sim<'_>,
        new: &mut Sim<'_>,
        key: u64,
        s: &DiagSocket,
    ) -> Option<Revoked> {
        let (addr, port) = match self.sock_orig.get(&s.cookie, 0) {
            Ok(o) => (o.orig_addr, o.orig_port),
            Err(_) => (to_addr(s.dst), s.dport),
        };
        let c = Connect {
            addr,
            port,
            proto: s.proto,
            v4_socket: s.v4,
            random: 0,
            now_ns: 0,
            udp_connect: false,
        };
        let before = old.judge(key, &c).ok()?;
        let after = new.judge(key, &c).ok()?;
        let allowed = |o: &Outcome| match o {
            Outcome::Decided(d) => d.action != Action::Deny,
            Outcome::Untouched | Outcome::Dns(_) => true,
        };
        let refused = matches!(after, Outcome::Decided(d) if d.action == Action::Deny);
        if !(allowed(&before) && refused) {
            return None;
        }
        let service_id = match before {
            Outcome::Decided(d) => d.service_id,
            _ => 0,
        };
        Some(Revoked {
            workload_key: key,
            cgroup_id: s.cgroup_id,
            proto: s.proto,
            dest: from_addr(&addr),
            port,
            service_id,
        })
    }
}

fn enter_netns(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns on this thread only, with a namespace descriptor we opened.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The network namespaces of the node, one path each: those of every process,
/// and those bind-mounted under /run/netns (a namespace no process is in).
/// `proc` is the host's /proc (mounted elsewhere in a container).
fn node_netns(proc: &Path) -> BTreeMap<u64, PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(m) = std::fs::metadata(&path) {
            out.entry(m.ino()).or_insert(path);
        }
    };
    if let Ok(entries) = std::fs::read_dir(proc) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                add(e.path().join("ns/net"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            add(e.path());
        }
    }
    out
}

/// Calls `f` for `dir` and every cgroup below it, with its id.
fn walk_cgroup(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
    let Ok(id) = crate::dataplane::workloads::cgroup_id(dir) else {
        return;
    };
    f(dir, id);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_cgroup(&e.path(), f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::table::{HostDns, ViewDns};
    use egress_common::{LearnedKey, LearnedValue, WorkloadValue};

    fn key(workload_id: u32, last: u8) -> LearnedKey {
        LearnedKey {
            addr: to_addr(IpAddr::from([203, 0, 113, last])),
            workload_id,
            port: 443,
            proto: PROTO_TCP,
            _pad: 0,
        }
    }

    #[test]
    fn learned_entries_of_hosts_out_of_view_are_stale() {
        let mut d = Desired::default();
        // Workload 1 sees view 10 with the wildcard host of service 7; workload 2
        // sees view 20 without it; workload 3 is gone.
        for (cg, wl, view) in [(100, 1, 10), (200, 2, 20)] {
            d.workloads.insert(
                cg,
                WorkloadValue {
                    workload_id: wl,
                    view_id: view,
                    flags: 0,
                    _pad: 0,
                },
            );
        }
        let mut v = ViewDns::default();
        v.wildcards.push((
            ".googleapis.com".into(),
            HostDns {
                host: "*.googleapis.com".into(),
                service_id: 7,
                ..HostDns::default()
            },
        ));
        d.dns_tables.views.insert(10, v);
        d.dns_tables.views.insert(20, ViewDns::default());
        let value = |service_id| LearnedValue {
            service_id,
            _pad: 0,
            expires_ns: 1,
        };
        let learned: HashMap<LearnedKey, LearnedValue> = [
            (key(1, 1), value(7)),
            (key(1, 2), value(8)),
            (key(2, 3), value(7)),
            (key(3, 4), value(7)),
        ]
        .into_iter()
        .collect();
        let mut stale = stale_learned(&d, &learned);
        stale.sort_by_key(|k| k.addr);
        // Kept: workload 1's entry for service 7 (expired or not: a TTL is no
        // reason here).
        assert_eq!(stale, [key(1, 2), key(2, 3), key(3, 4)]);
    }
}
