//! What the DNS proxy answers, per view: compiled with the maps, from the same
//! views, so a name resolves exactly to what that workload may use.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One registry host as the proxy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostDns {
    /// The host as written.
    pub host: String,
    pub service_id: u32,
    /// VIPs to answer with, without asking upstream (empty: forward upstream).
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// When forwarded: the (port, protocol) pairs an answer's addresses become
    /// usable on, for the asking workload (SPEC §7.3 step 4).
    pub learn: Vec<(u16, u8)>,
}

impl HostDns {
    pub fn answers_locally(&self) -> bool {
        !self.v4.is_empty() || !self.v6.is_empty()
    }
}

/// The names of one view.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewDns {
    /// Exact hosts by matching key (lower case, no trailing dot).
    pub exact: HashMap<String, HostDns>,
    /// Wildcard hosts by suffix (`*.example.com` → `.example.com`; a partial
    /// wildcard `*foo.com` → `foo.com`), most specific (longest) first.
    pub wildcards: Vec<(String, HostDns)>,
}

impl ViewDns {
    /// The host a name belongs to: an exact host beats a wildcard, the most
    /// specific wildcard beats shorter ones (SPEC §3.2, §7.3).
    pub fn lookup(&self, name: &str) -> Option<&HostDns> {
        let key = crate::registry::host_key(name);
        if let Some(h) = self.exact.get(&key) {
            return Some(h);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| crate::istio::hosts::under_wildcard(&key, suffix))
            .map(|(_, h)| h)
    }
}

/// A workload the proxy can recognise by its source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsClient {
    pub workload_id: u32,
    pub view_id: u32,
    /// The workload's unknown destinations are refused (REGISTRY_ONLY, not
    /// audit): with `dns.refuseUnregistered`, so are names outside its view.
    pub registry_only: bool,
}

/// Everything the proxy needs, replaced after each compile.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsTables {
    pub clients: HashMap<IpAddr, DnsClient>,
    pub views: BTreeMap<u32, ViewDns>,
}

impl DnsTables {
    /// The view of the workload at `ip`, if it is a known workload.
    pub fn client(&self, ip: IpAddr) -> Option<(DnsClient, &ViewDns)> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let c = *self.clients.get(&ip)?;
        Some((c, self.views.get(&c.view_id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, id: u32) -> HostDns {
        HostDns {
            host: name.into(),
            service_id: id,
            ..HostDns::default()
        }
    }

    #[test]
    fn exact_beats_wildcards_and_longest_wildcard_wins() {
        let mut v = ViewDns::default();
        v.exact
            .insert("api.example.com".into(), host("api.example.com", 1));
        v.wildcards = vec![
            (".eu.example.com".into(), host("*.eu.example.com", 2)),
            (".example.com".into(), host("*.example.com", 3)),
        ];
        assert_eq!(v.lookup("API.example.com.").unwrap().service_id, 1);
        assert_eq!(v.lookup("x.eu.example.com").unwrap().service_id, 2);
        assert_eq!(v.lookup("a.b.example.com").unwrap().service_id, 3);
        assert!(
            v.lookup("example.com").is_none(),
            "*.example.com does not match example.com"
        );
        assert!(v.lookup("other.org").is_none());
    }

    #[test]
    fn tables_survive_their_copy_on_disk() {
        let mut v = ViewDns::default();
        v.exact
            .insert("api.example.com".into(), host("api.example.com", 1));
        v.wildcards = vec![(".example.com".into(), host("*.example.com", 3))];
        let mut t = DnsTables::default();
        t.views.insert(7, v);
        t.clients.insert(
            "2001:db8::2".parse().unwrap(),
            DnsClient {
                workload_id: 4,
                view_id: 7,
                registry_only: true,
            },
        );
        let back: DnsTables = serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.client("2001:db8::2".parse().unwrap())
                .unwrap()
                .1
                .lookup("x.example.com")
                .unwrap()
                .service_id,
            3
        );
    }
}
