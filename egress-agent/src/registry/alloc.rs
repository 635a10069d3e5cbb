//! Automatic VIP allocation for address-less STATIC, DNS and DNS_ROUND_ROBIN hosts
//! (SPEC §4.5), deterministic and stable.
//!
//! The algorithm (also in ARCHITECTURE.md):
//!
//! 1. `status.addresses` (istiod's allocation) are used as they are: they are the
//!    same on every node. They, and every explicit `spec.addresses` IP inside the
//!    ranges, are reserved.
//! 2. Every other eligible (namespace, host) gets one IPv4 and one IPv6 address
//!    derived from one *slot*: the usable IPv4 addresses of the range (last octet
//!    1..254), numbered in order; the IPv6 address of slot with IPv4 offset `i`
//!    from the range start is `v6 range start + 0xf0f0_0000 + i`, so
//!    240.240.54.26 pairs with 2001:2::f0f0:361a as in Istio.
//! 3. A host's preferred slot is FNV-1a-32(`namespace/host`) mod the slot count.
//!    Hosts are placed oldest first (creationTimestamp, then namespace, then
//!    host); a host whose slot is taken takes the next free slot (linear probe).
//! 4. A host that already had an address (remembered in the state file) keeps it
//!    while it stays eligible and unreserved.
//!
//! So the same registry gives the same VIPs on every node and after restarts;
//! adding a host never moves an existing host (it is newer, so placed after, and
//! existing hosts keep their remembered slot); removing a host moves nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::config::Ranges;
use crate::istio::model::Resolution;
use crate::registry::Service;

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// May `s` get an automatic VIP?
pub fn eligible(s: &Service) -> bool {
    matches!(
        s.resolution,
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
    ) && !s.auto_allocate_opt_out
        && s.vips.is_empty()
        && s.cidrs.is_empty()
        && s.status_vips.is_empty()
        && !s.is_wildcard()
}

/// Remembered allocations: `namespace/host` → slot.
pub type Remembered = BTreeMap<String, u32>;

fn key(s: &Service) -> String {
    format!("{}/{}", s.namespace, s.host_key)
}

/// Fills `auto_vips` of every eligible service (which must be merged, in any
/// order). Returns the allocation to remember.
pub fn allocate(
    services: &mut [Arc<Service>],
    ranges: &Ranges,
    remembered: &Remembered,
) -> Remembered {
    let n = ranges.slots();
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    for s in services.iter() {
        for ip in s.vips.iter().chain(&s.status_vips) {
            if let Some(k) = ranges.slot_of(*ip) {
                taken.insert(k);
            }
        }
    }
    let mut order: Vec<usize> = (0..services.len())
        .filter(|&i| eligible(&services[i]))
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&services[a], &services[b]);
        (x.creation, &x.namespace, &x.host_key).cmp(&(y.creation, &y.namespace, &y.host_key))
    });
    let mut out = Remembered::new();
    let mut slot_of: BTreeMap<usize, u32> = BTreeMap::new();
    // Remembered slots first, oldest first.
    for &i in &order {
        if let Some(&k) = remembered.get(&key(&services[i]))
            && k < n
            && taken.insert(k)
        {
            slot_of.insert(i, k);
        }
    }
    for &i in &order {
        if slot_of.contains_key(&i) {
            continue;
        }
        let start = fnv1a32(key(&services[i]).as_bytes()) % n;
        let mut k = start;
        loop {
            if taken.insert(k) {
                slot_of.insert(i, k);
                break;
            }
            k = (k + 1) % n;
            if k == start {
                tracing::error!(host = %services[i].host, "VIP range exhausted: no automatic VIP");
                break;
            }
        }
    }
    for (i, k) in slot_of {
        let vips = vec![IpAddr::V4(ranges.v4_of(k)), IpAddr::V6(ranges.v6_of(k))];
        if services[i].auto_vips != vips {
            // Copies the service only when its VIPs change (it is shared with the store).
            Arc::make_mut(&mut services[i]).auto_vips = vips;
        }
        out.insert(key(&services[i]), k);
    }
    out
}

/// Reads remembered allocations; a missing or unreadable file is an empty memory.
pub fn load_remembered(path: &Path) -> Remembered {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Writes remembered allocations atomically.
pub fn save_remembered(path: &Path, r: &Remembered) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(r).expect("serialisable"))?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::model::Location;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn svc(ns: &str, host: &str, creation: i64) -> Arc<Service> {
        Arc::new(Service {
            namespace: ns.into(),
            host: host.into(),
            host_key: host.into(),
            se_name: host.into(),
            creation,
            resolution: Resolution::Dns,
            location: Location::MeshExternal,
            vips: vec![],
            cidrs: vec![],
            status_vips: vec![],
            auto_vips: vec![],
            auto_allocate_opt_out: false,
            ports: vec![],
            endpoints: vec![],
            export_to: vec![],
            selector: None,
        })
    }

    fn vips(services: &[Arc<Service>]) -> BTreeMap<String, Vec<IpAddr>> {
        services
            .iter()
            .map(|s| (key(s), s.auto_vips.clone()))
            .collect()
    }

    #[test]
    fn slots_map_like_istio() {
        let r = Ranges::default();
        assert_eq!(r.slots(), 65024);
        let k = r.slot_of("240.240.54.26".parse().unwrap()).unwrap();
        assert_eq!(r.v4_of(k), "240.240.54.26".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.v6_of(k), "2001:2::f0f0:361a".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.slot_of("2001:2::f0f0:361a".parse().unwrap()), Some(k));
        assert_eq!(r.v4_of(0), "240.240.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.v4_of(253), "240.240.0.254".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.v4_of(254), "240.240.1.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.slot_of("240.240.1.0".parse().unwrap()), None);
        assert_eq!(r.slot_of("240.241.0.1".parse().unwrap()), None);
    }

    #[test]
    fn fnv_matches_the_worked_example() {
        assert_eq!(fnv1a32(b"shop/api.payments.example"), 1_791_880_163);
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let mut a = vec![
            svc("shop", "a.example", 1),
            svc("shop", "b.example", 2),
            svc("ops", "a.example", 3),
        ];
        let mut b = a.clone();
        b.reverse();
        allocate(&mut a, &Ranges::default(), &Remembered::new());
        allocate(&mut b, &Ranges::default(), &Remembered::new());
        assert_eq!(vips(&a), vips(&b));
        assert_ne!(
            a[0].auto_vips, a[2].auto_vips,
            "same host, other namespace: other VIP"
        );
        assert!(a.iter().all(|s| s.auto_vips.len() == 2));
    }

    #[test]
    fn adding_or_removing_unrelated_hosts_moves_nobody() {
        let ranges = Ranges::default();
        let base: Vec<Arc<Service>> = (0..300)
            .map(|i| svc("shop", &format!("h{i}.example"), i))
            .collect();
        let mut before = base.clone();
        let mem = allocate(&mut before, &ranges, &Remembered::new());
        // Add 300 newer hosts, without memory (a fresh node) and with it.
        let mut grown = base.clone();
        grown.extend((300..600).map(|i| svc("shop", &format!("h{i}.example"), i)));
        for memory in [Remembered::new(), mem.clone()] {
            let mut g = grown.clone();
            allocate(&mut g, &ranges, &memory);
            for (old, new) in before.iter().zip(&g) {
                assert_eq!(old.auto_vips, new.auto_vips, "{} moved", old.host);
            }
        }
        // Remove every other host: with memory, nobody else moves.
        let mut shrunk: Vec<Arc<Service>> = base.iter().step_by(2).cloned().collect();
        allocate(&mut shrunk, &ranges, &mem);
        for s in &shrunk {
            let old = before.iter().find(|o| o.host == s.host).unwrap();
            assert_eq!(old.auto_vips, s.auto_vips);
        }
    }

    #[test]
    fn collision_goes_to_the_older_host() {
        // A tiny range forces collisions.
        let ranges = Ranges {
            v4: "240.240.0.0/24".parse().unwrap(),
            v6: "2001:2::/48".parse().unwrap(),
        };
        let mut hosts: Vec<Arc<Service>> = (0..254)
            .map(|i| svc("shop", &format!("h{i}.example"), i))
            .collect();
        allocate(&mut hosts, &ranges, &Remembered::new());
        let all: BTreeSet<_> = hosts.iter().map(|s| s.auto_vips[0]).collect();
        assert_eq!(all.len(), 254, "every host got its own address");
        // The oldest host always has its preferred slot.
        let pref = fnv1a32(b"shop/h0.example") % ranges.slots();
        assert_eq!(hosts[0].auto_vips[0], IpAddr::V4(ranges.v4_of(pref)));
    }

    #[test]
    fn explicit_status_and_ineligible_hosts() {
        let ranges = Ranges::default();
        let mut with_status = svc("shop", "st.example", 1);
        let with_status_m = Arc::make_mut(&mut with_status);
        with_status_m.status_vips = vec!["240.240.0.7".parse().unwrap()];
        let mut none = svc("shop", "none.example", 1);
        let none_m = Arc::make_mut(&mut none);
        none_m.resolution = Resolution::None;
        let mut wildcard = svc("shop", "*.w.example", 1);
        let wildcard_m = Arc::make_mut(&mut wildcard);
        wildcard_m.resolution = Resolution::Static;
        let mut opted = svc("shop", "o.example", 1);
        let opted_m = Arc::make_mut(&mut opted);
        opted_m.auto_allocate_opt_out = true;
        let mut explicit = svc("shop", "e.example", 1);
        let explicit_m = Arc::make_mut(&mut explicit);
        explicit_m.vips = vec!["240.240.0.8".parse().unwrap()];
        let mut list = vec![with_status, none, wildcard, opted, explicit];
        allocate(&mut list, &ranges, &Remembered::new());
        assert!(list.iter().all(|s| s.auto_vips.is_empty()));
        // Reserved addresses are never handed out: remember a host onto one.
        let mut mem = Remembered::new();
        mem.insert(
            "shop/x.example".into(),
            ranges.slot_of("240.240.0.7".parse().unwrap()).unwrap(),
        );
        let mut list = vec![list[0].clone(), svc("shop", "x.example", 2)];
        allocate(&mut list, &ranges, &mem);
        assert_ne!(
            list[1].auto_vips[0],
            "240.240.0.7".parse::<IpAddr>().unwrap()
        );
    }
}
