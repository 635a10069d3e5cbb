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
    if let Some(w) = d.workload(d.current_cgroup_id()) {
        return Some(w);
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        level -= 1;
        let id = d.ancestor_cgroup_id(level);
        if id != 0
            && let Some(w) = d.workload(id)
        {
            return Some(w);
        }
    }
    None
}

/// Classifies one `connect()` (SPEC §7.3): excluded → VIP / endpoint → CIDR →
/// cluster-internal → the workload's policy for unknown destinations.
#[inline(always)]
pub fn classify<D: Dataplane>(d: &D, c: &Connect) -> Result<Outcome, Error> {
    let Some(workload) = find_workload(d) else {
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
    if let Some(r) = registry_match(d, c, decision) {
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
        if let Some(Ok(Outcome::Decided(t))) = registry_match(d, &tcp, decision)
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

/// The registry steps (SPEC §7.3 steps 2–4): VIP or endpoint, CIDR, learned.
/// `None` when nothing in the workload's view matches.
#[inline(always)]
fn registry_match<D: Dataplane>(
    d: &D,
    c: &Connect,
    mut decision: Decision,
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
        decision.service_id = svc.service_id;
        if svc.kind == SVC_ENDPOINT {
            decision.matched = MatchKind::Endpoint;
            return Some(Ok(Outcome::Decided(decision)));
        }
        decision.matched = MatchKind::Vip;
        return Some(pick(d, c, decision, svc.set_id, svc.slots, svc.v4_slots));
    }

    let ckey = CidrKey {
        view_id: workload.view_id,
        port: c.port,
        proto: c.proto,
        _pad: 0,
        addr: c.addr,
    };
    if let Some(cidr) = d.cidr(&ckey) {
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
    fn endpoint_address_is_allowed_as_is() {
        let f = world(WL_REGISTRY_ONLY);
        let d = decided(classify(&f, &conn("198.18.0.11", 8080, 0)));
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.matched, MatchKind::Endpoint);
        assert_eq!(d.reason, Reason::RegistryMatch);
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
        let d = decided(classify(&f, &conn("198.18.0.11", 8080, 0)));
        assert_eq!((d.action, d.matched), (Action::Allow, MatchKind::Endpoint));
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
        // A registry match inside the cluster range still wins.
        let d = decided(classify(&f, &conn("198.18.0.11", 8080, 0)));
        assert_eq!(d.matched, MatchKind::Endpoint);
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
