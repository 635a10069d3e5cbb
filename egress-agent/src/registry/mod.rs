//! The registry model (SPEC §4): valid ServiceEntries expanded into one `Service`
//! per (namespace, host), with addresses, ports and endpoints, merged as Istio merges
//! same-host entries within a namespace, in Istio's Service order.

pub mod alloc;

pub mod pipeline;
pub mod scope;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::istio::model::{Location, Protocol, Resolution};
use crate::istio::{Resource, ServiceEntry};

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    /// `targetPort`, when set.
    pub target_port: Option<u16>,
}

/// Where an endpoint is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndpointAddress {
    Ip(IpAddr),
    /// A hostname (DNS and DNS_ROUND_ROBIN only).
    Host(String),
    /// A `unix://` socket; a TCP connect cannot be sent there (deviation D5).
    Unix(String),
    /// No address, only a network: not reachable from this node.
    None,
}

/// One endpoint with its per-service-port target (SPEC §4.2 port precedence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    /// Service port number → endpoint port.
    pub targets: BTreeMap<u16, u16>,
    /// Load-balancing weight; 0 in the YAML counts as 1.
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

/// One registry service: an SE host in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    /// The host as written (labels and logs).
    pub host: String,
    /// Lower-cased, trailing dot removed (deviation D7): for matching.
    pub host_key: String,
    /// The (oldest) ServiceEntry it comes from.
    pub se_name: String,
    pub creation: i64,
    pub resolution: Resolution,
    pub location: Location,
    /// Explicit IP addresses, including `/32` and `/128` CIDRs.
    pub vips: Vec<IpAddr>,
    /// Explicit CIDRs wider than one address.
    pub cidrs: Vec<IpNet>,
    /// `status.addresses` for this host.
    pub status_vips: Vec<IpAddr>,
    /// Allocated by the agent (SPEC §4.5) when eligible; see `alloc`.
    pub auto_vips: Vec<IpAddr>,
    /// Label `networking.istio.io/enable-autoallocate-ip: "false"`.
    pub auto_allocate_opt_out: bool,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    /// `exportTo` as written; empty means the mesh default.
    pub export_to: Vec<String>,
    pub selector: Option<BTreeMap<String, String>>,
}

impl Service {
    /// Addresses that are this service's VIPs: explicit IPs, then `status`
    /// addresses, then automatic ones (SPEC §7.3 "effective VIP set").
    pub fn effective_vips(&self) -> impl Iterator<Item = &IpAddr> {
        self.vips
            .iter()
            .chain(&self.status_vips)
            .chain(&self.auto_vips)
    }

    /// Istio's Service order (SPEC §4.6): creation time, host, namespace, SE name.
    pub fn order_key(&self) -> (i64, &str, &str, &str) {
        (
            self.creation,
            &self.host_key,
            &self.namespace,
            &self.se_name,
        )
    }

    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with('*')
    }
}

pub use crate::istio::hosts::key as host_key;

/// Services of one ServiceEntry, before same-host merging. The entry must be valid.
pub fn convert(res: &Resource<ServiceEntry>) -> Vec<Service> {
    let spec = &res.spec.spec;
    let resolution = Resolution::parse(spec.resolution.as_deref()).unwrap_or_default();
    let location = Location::parse(spec.location.as_deref()).unwrap_or_default();
    let ports: Vec<Port> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| Port {
            number: p.number.unwrap_or(0) as u16,
            name: p.name.clone().unwrap_or_default(),
            protocol: Protocol::parse(p.protocol.as_deref().unwrap_or(""))
                .unwrap_or(Protocol::Unset),
            target_port: p.target_port.filter(|t| *t > 0).map(|t| t as u16),
        })
        .collect();
    let mut vips = Vec::new();
    let mut cidrs = Vec::new();
    for a in &spec.addresses {
        if let Ok(ip) = a.parse::<IpAddr>() {
            vips.push(ip);
        } else if let Ok(net) = a.parse::<IpNet>() {
            if net.prefix_len() == net.max_prefix_len() {
                vips.push(net.addr());
            } else {
                cidrs.push(net.trunc());
            }
        }
    }
    let endpoints: Vec<Endpoint> = spec
        .endpoints
        .iter()
        .flatten()
        .flatten()
        .map(|e| {
            let raw = e.address.as_deref().unwrap_or("");
            let address = if raw.is_empty() {
                EndpointAddress::None
            } else if let Some(path) = raw.strip_prefix("unix://") {
                EndpointAddress::Unix(path.to_owned())
            } else if let Ok(ip) = raw.parse::<IpAddr>() {
                EndpointAddress::Ip(ip)
            } else {
                EndpointAddress::Host(raw.to_owned())
            };
            let targets = ports
                .iter()
                .map(|p| {
                    let own = e
                        .ports
                        .get(&p.name)
                        .copied()
                        .filter(|v| *v > 0)
                        .map(|v| v as u16);
                    (p.number, own.or(p.target_port).unwrap_or(p.number))
                })
                .collect();
            Endpoint {
                address,
                targets,
                weight: e.weight.filter(|w| *w > 0).map_or(1, |w| w as u32),
                labels: e.labels.clone(),
            }
        })
        .collect();
    let hosts = spec.hosts.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(hosts.len());
    out.extend(hosts.iter().map(|host| {
        let key = host_key(host);
        let status_vips = res
            .spec
            .status
            .addresses
            .iter()
            .filter(|s| s.host.is_empty() || host_key(&s.host) == key)
            .filter_map(|s| s.value.parse().ok())
            .collect();
        Service {
            namespace: res.meta.namespace.clone(),
            host: host.clone(),
            host_key: key,
            se_name: res.meta.name.clone(),
            creation: res.meta.creation,
            resolution,
            location,
            vips: vips.clone(),
            cidrs: cidrs.clone(),
            status_vips,
            auto_vips: Vec::new(),
            auto_allocate_opt_out: crate::istio::validate::opted_out_of_auto_allocation(res),
            ports: ports.clone(),
            endpoints: endpoints.clone(),
            export_to: spec.export_to.clone(),
            selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()),
        }
    }));
    out
}

/// A warning raised while merging (SPEC §4.3 `conflicting resolution`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeWarning {
    pub namespace: String,
    pub host: String,
    pub se_name: String,
    pub message: String,
}

/// Merges same (namespace, host) services (SPEC §4.3 [AGENT]) and returns them in
/// Service order. Services are shared: only a merged one is copied.
pub fn merge(mut services: Vec<Arc<Service>>) -> (Vec<Arc<Service>>, Vec<MergeWarning>) {
    services.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut out: Vec<Arc<Service>> = Vec::with_capacity(services.len());
    let mut index: HashMap<(String, String), usize> = HashMap::with_capacity(services.len());
    let mut warnings = Vec::new();
    for s in services {
        let key = (s.namespace.clone(), s.host_key.clone());
        let Some(&i) = index.get(&key) else {
            index.insert(key, out.len());
            out.push(s);
            continue;
        };
        let oldest = Arc::make_mut(&mut out[i]);
        let same_resolution = oldest.resolution == s.resolution;
        if !same_resolution {
            warnings.push(MergeWarning {
                namespace: s.namespace.clone(),
                host: s.host.clone(),
                se_name: s.se_name.clone(),
                message: format!(
                    "conflicting resolution: {} here, {} in the older ServiceEntry {}; its new ports \
                     are dropped",
                    s.resolution.as_str(),
                    oldest.resolution.as_str(),
                    oldest.se_name
                ),
            });
        }
        for ip in &s.vips {
            if !oldest.vips.contains(ip) {
                oldest.vips.push(*ip);
            }
        }
        for net in &s.cidrs {
            if !oldest.cidrs.contains(net) {
                oldest.cidrs.push(*net);
            }
        }
        for ip in &s.status_vips {
            if !oldest.status_vips.contains(ip) {
                oldest.status_vips.push(*ip);
            }
        }
        if same_resolution {
            for p in &s.ports {
                if !oldest.ports.iter().any(|o| o.number == p.number) {
                    oldest.ports.push(p.clone());
                }
            }
        }
        if oldest.resolution == Resolution::DnsRoundRobin {
            // One DNS_RR endpoint per port: the older entry's wins (SPEC §4.3).
            if oldest.endpoints.is_empty() {
                oldest.endpoints = s.endpoints.clone();
            }
        } else if same_resolution {
            oldest.endpoints.extend(s.endpoints.iter().cloned());
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{Documents, parse_file};
    use std::path::Path;

    fn services(text: &str) -> Vec<Arc<Service>> {
        let mut d = Documents::default();
        parse_file(Path::new("t.yaml"), text, &mut d);
        assert!(d.findings.is_empty(), "{:?}", d.findings);
        d.service_entries
            .iter()
            .flat_map(|r| convert(r))
            .map(Arc::new)
            .collect()
    }

    #[test]
    fn endpoint_port_precedence() {
        let s = services(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.internal]
  addresses: [240.240.1.1]
  resolution: STATIC
  ports:
  - {number: 5432, name: pg, protocol: TCP, targetPort: 6432}
  - {number: 9187, name: metrics, protocol: HTTP}
  - {number: 8080, name: admin, protocol: HTTP}
  endpoints:
  - address: 198.18.0.11
    ports: {pg: 7432, admin: 0}
    weight: 3
  - address: 198.18.0.12
"#,
        );
        let e = &s[0].endpoints;
        assert_eq!(e[0].targets[&5432], 7432, "endpoint port map wins");
        assert_eq!(e[0].targets[&9187], 9187, "number when nothing else");
        assert_eq!(e[0].targets[&8080], 8080, "a 0 in the map is ignored");
        assert_eq!(e[1].targets[&5432], 6432, "targetPort next");
        assert_eq!(e[0].weight, 3);
        assert_eq!(e[1].weight, 1);
    }

    #[test]
    fn hosts_and_addresses_expand_and_host_cidrs_are_vips() {
        let s = services(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: ops}
spec:
  hosts: [a.example, B.Example.]
  addresses: [203.0.113.5/32, 198.51.100.0/24, "2001:2::5"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
"#,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].host_key, "b.example");
        assert_eq!(
            s[0].vips,
            vec![
                "203.0.113.5".parse::<IpAddr>().unwrap(),
                "2001:2::5".parse().unwrap()
            ]
        );
        assert_eq!(
            s[0].cidrs,
            vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn same_host_merges_oldest_first() {
        let s = services(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: newer, namespace: shop, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  hosts: [pay.example]
  addresses: [240.240.2.2]
  resolution: STATIC
  ports: [{number: 443, name: tls2, protocol: TLS}, {number: 8443, name: alt, protocol: TLS}]
  endpoints: [{address: 198.18.0.22}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: older, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [pay.example]
  addresses: [240.240.1.1]
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 198.18.0.21}]
"#,
        );
        let (merged, warnings) = merge(s);
        assert!(warnings.is_empty());
        assert_eq!(merged.len(), 1);
        let m = &merged[0];
        assert_eq!(m.se_name, "older");
        assert_eq!(m.ports.len(), 2);
        assert_eq!(m.ports[0].name, "tls", "the oldest definition of 443 wins");
        assert_eq!(m.vips.len(), 2);
        assert_eq!(m.endpoints.len(), 2);
    }

    #[test]
    fn conflicting_resolution_drops_new_ports_with_a_warning() {
        let s = services(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: [x.example], addresses: [240.240.1.1], resolution: STATIC, ports: [{number: 1, name: a}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: shop, creationTimestamp: "2024-01-02T00:00:00Z"}
spec: {hosts: [x.example], resolution: NONE, ports: [{number: 2, name: b}]}
"#,
        );
        let (merged, warnings) = merge(s);
        assert_eq!(merged[0].ports.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.contains("conflicting resolution"));
    }
}
