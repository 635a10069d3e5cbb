//! Visibility (SPEC §5): exportTo, Sidecar selection and egress imports, and the
//! per-hostname namespace choice (§4.4), giving the registry view of one
//! (namespace, Sidecar) pair.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::OutboundMode;
use crate::istio::{Resource, SidecarSpec};
use crate::registry::Service;

/// One egress listener of a Sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressListener {
    /// `None`: the catch-all listener for the other ports.
    pub port: Option<u16>,
    /// `(namespace, dnsName)`; namespace may be `*`, `.`, or `~`-prefixed (an
    /// exclusion).
    pub hosts: Vec<(String, String)>,
}

/// A valid Sidecar, as the views need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarScope {
    pub namespace: String,
    pub name: String,
    pub creation: i64,
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: no `egress` section (everything is imported, as with `*/*`).
    pub egress: Option<Vec<EgressListener>>,
    pub policy: Option<OutboundMode>,
}

impl SidecarScope {
    pub fn from_resource(r: &Resource<SidecarSpec>) -> Self {
        let egress = r.spec.egress.as_ref().map(|ls| {
            ls.iter()
                .flatten()
                .map(|l| EgressListener {
                    port: l.port.as_ref().and_then(|p| p.number).map(|n| n as u16),
                    hosts: l
                        .hosts
                        .iter()
                        .filter_map(|h| h.split_once('/'))
                        .map(|(ns, name)| (ns.to_owned(), crate::registry::host_key(name)))
                        .collect(),
                })
                .collect()
        });
        let policy = r
            .spec
            .outbound_traffic_policy
            .as_ref()
            .map(|p| match p.mode.as_deref() {
                Some("ALLOW_ANY") => OutboundMode::AllowAny,
                _ => OutboundMode::RegistryOnly,
            });
        Self {
            namespace: r.meta.namespace.clone(),
            name: r.meta.name.clone(),
            creation: r.meta.creation,
            selector: r.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            egress,
            policy,
        }
    }

    /// Is `s` imported on `port` for a workload in `client_ns` (SPEC §5.2)?
    pub fn imports(&self, s: &Service, port: u16, client_ns: &str) -> bool {
        let Some(listeners) = &self.egress else {
            return true;
        };
        let listener = listeners
            .iter()
            .find(|l| l.port == Some(port))
            .or_else(|| listeners.iter().find(|l| l.port.is_none()));
        let Some(l) = listener else {
            return false;
        };
        let ns_matches =
            |ns: &str| ns == "*" || (ns == "." && s.namespace == client_ns) || ns == s.namespace;
        let host_matches = |name: &str| crate::istio::hosts::subset_of(&s.host_key, name);
        let excluded = l.hosts.iter().any(|(ns, name)| {
            ns.strip_prefix('~')
                .is_some_and(|bare| (bare.is_empty() || ns_matches(bare)) && host_matches(name))
        });
        !excluded
            && l.hosts
                .iter()
                .any(|(ns, name)| !ns.starts_with('~') && ns_matches(ns) && host_matches(name))
    }
}

/// The Sidecar that applies to a workload (SPEC §5.2): selector Sidecars in its
/// namespace whose labels it has, oldest first; then the namespace's selector-less
/// one; then the root namespace's selector-less one.
pub fn select_sidecar<'a>(
    sidecars: &'a [SidecarScope],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<&'a SidecarScope> {
    let oldest = |it: Vec<&'a SidecarScope>| {
        it.into_iter()
            .min_by(|a, b| (a.creation, &a.name).cmp(&(b.creation, &b.name)))
    };
    let with_selector: Vec<_> = sidecars
        .iter()
        .filter(|s| s.namespace == namespace)
        .filter(|s| {
            s.selector
                .as_ref()
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect();
    if let Some(s) = oldest(with_selector) {
        return Some(s);
    }
    let plain = |ns: &str| -> Vec<&'a SidecarScope> {
        sidecars
            .iter()
            .filter(|s| s.namespace == ns && s.selector.is_none())
            .collect()
    };
    oldest(plain(namespace)).or_else(|| oldest(plain(root_namespace)))
}

/// `IsServiceVisible` (SPEC §5.1) with the mesh default for an empty exportTo.
pub fn visible(s: &Service, client_ns: &str, default_export: &[String]) -> bool {
    let list = if s.export_to.is_empty() {
        default_export
    } else {
        &s.export_to
    };
    list.iter()
        .any(|e| e == "*" || e == client_ns || (e == "." && s.namespace == client_ns))
}

/// The services of one view, in Service order: visible, imported (on at least
/// one port), and one namespace per hostname (SPEC §4.4 [AGENT] keys).
pub fn view<'a>(
    services: &'a [Arc<Service>],
    client_ns: &str,
    sidecar: Option<&SidecarScope>,
    default_export: &[String],
) -> Vec<(&'a Service, Vec<u16>)> {
    let mut by_host: BTreeMap<&str, (&'a Service, Vec<u16>)> = BTreeMap::new();
    let rank = |s: &Service| {
        let own = s.namespace != client_ns;
        let by_name = !s.export_to.iter().any(|e| e == client_ns);
        (
            own,
            by_name,
            s.creation,
            s.namespace.clone(),
            s.se_name.clone(),
        )
    };
    for s in services {
        if !visible(s, client_ns, default_export) {
            continue;
        }
        let ports: Vec<u16> = s
            .ports
            .iter()
            .map(|p| p.number)
            .filter(|&p| sidecar.is_none_or(|sc| sc.imports(s, p, client_ns)))
            .collect();
        // A service without ports still claims its hostname when imported.
        let imported = !ports.is_empty()
            || (s.ports.is_empty()
                && sidecar.is_none_or(|sc| sc.egress.is_none() || sc.imports(s, 0, client_ns)));
        if !imported {
            continue;
        }
        match by_host.get(s.host_key.as_str()) {
            Some((cur, _)) if rank(cur) <= rank(s) => {}
            _ => {
                by_host.insert(&s.host_key, (s, ports));
            }
        }
    }
    let mut out: Vec<(&Service, Vec<u16>)> = by_host.into_values().collect();
    out.sort_by(|a, b| a.0.order_key().cmp(&b.0.order_key()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{Documents, parse_file};
    use crate::registry::{convert, merge};
    use std::path::Path;

    fn registry(text: &str) -> (Vec<Arc<Service>>, Vec<SidecarScope>) {
        let mut d = Documents::default();
        parse_file(Path::new("t.yaml"), text, &mut d);
        assert!(d.findings.is_empty(), "{:?}", d.findings);
        let services = merge(
            d.service_entries
                .iter()
                .flat_map(|r| convert(r))
                .map(Arc::new)
                .collect(),
        )
        .0;
        (
            services,
            d.sidecars
                .iter()
                .map(|r| SidecarScope::from_resource(r))
                .collect(),
        )
    }

    fn se(name: &str, ns: &str, host: &str, export: &str, created: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\n\
             spec: {{hosts: [{host}], resolution: STATIC, exportTo: {export}, \
             ports: [{{number: 443, name: tls, protocol: TLS}}, {{number: 80, name: http, protocol: HTTP}}]}}\n---\n"
        )
    }

    fn names(v: &[(&Service, Vec<u16>)]) -> Vec<String> {
        v.iter()
            .map(|(s, _)| format!("{}/{}", s.namespace, s.host))
            .collect()
    }

    const ALL: &[String] = &[];

    fn star() -> Vec<String> {
        vec!["*".into()]
    }

    #[test]
    fn export_to_values() {
        let text = [
            se("a", "shop", "dot.example", "[.]", "2024-01-01T00:00:00Z"),
            se(
                "b",
                "shop",
                "named.example",
                "[team-a]",
                "2024-01-01T00:00:00Z",
            ),
            se(
                "c",
                "shop",
                "none.example",
                "[\"~\"]",
                "2024-01-01T00:00:00Z",
            ),
            se(
                "d",
                "shop",
                "public.example",
                "[\"*\"]",
                "2024-01-01T00:00:00Z",
            ),
            se("e", "shop", "default.example", "[]", "2024-01-01T00:00:00Z"),
        ]
        .concat();
        let (s, _) = registry(&text);
        let in_shop = names(&view(&s, "shop", None, &star()));
        assert_eq!(
            in_shop,
            [
                "shop/default.example",
                "shop/dot.example",
                "shop/public.example"
            ]
        );
        let in_team = names(&view(&s, "team-a", None, &star()));
        assert_eq!(
            in_team,
            [
                "shop/default.example",
                "shop/named.example",
                "shop/public.example"
            ]
        );
        // A mesh default of "." keeps unannotated entries at home.
        let in_other = names(&view(&s, "other", None, &[".".to_string()]));
        assert_eq!(in_other, ["shop/public.example"]);
        let _ = ALL;
    }

    #[test]
    fn one_namespace_per_hostname() {
        let text = [
            se(
                "old",
                "alpha",
                "api.example",
                "[\"*\"]",
                "2024-01-01T00:00:00Z",
            ),
            se(
                "new",
                "beta",
                "api.example",
                "[\"*\"]",
                "2024-02-01T00:00:00Z",
            ),
            se(
                "named",
                "gamma",
                "api.example",
                "[client]",
                "2024-03-01T00:00:00Z",
            ),
        ]
        .concat();
        let (s, _) = registry(&text);
        // Own namespace first.
        assert_eq!(
            names(&view(&s, "beta", None, &star())),
            ["beta/api.example"]
        );
        // Exported by name before public, whatever the age.
        assert_eq!(
            names(&view(&s, "client", None, &star())),
            ["gamma/api.example"]
        );
        // Otherwise the oldest.
        assert_eq!(
            names(&view(&s, "other", None, &star())),
            ["alpha/api.example"]
        );
    }

    #[test]
    fn sidecar_egress_hosts_and_ports() {
        let mut text = [
            se(
                "a",
                "shop",
                "api.example",
                "[\"*\"]",
                "2024-01-01T00:00:00Z",
            ),
            se("b", "ops", "mon.example", "[\"*\"]", "2024-01-01T00:00:00Z"),
            se(
                "c",
                "ops",
                "secret.example",
                "[\"*\"]",
                "2024-01-01T00:00:00Z",
            ),
        ]
        .concat();
        text.push_str(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\n\
             spec:\n  egress:\n  - port: {number: 443, protocol: TLS, name: tls}\n    hosts: [\"./*\", \"ops/mon.example\"]\n\
             \x20 - hosts: [\"ops/*\", \"~ops/secret.example\"]\n",
        );
        let (s, sidecars) = registry(&text);
        let sc = select_sidecar(&sidecars, "shop", &BTreeMap::new(), "istio-system").unwrap();
        let v = view(&s, "shop", Some(sc), &star());
        let got: Vec<(String, Vec<u16>)> =
            v.iter().map(|(s, p)| (s.host.clone(), p.clone())).collect();
        assert_eq!(
            got,
            [
                ("api.example".to_string(), vec![443]),
                ("mon.example".to_string(), vec![443, 80]),
            ]
        );
    }

    #[test]
    fn sidecar_selection_order() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: root, namespace: istio-system}\n\
             spec: {egress: [{hosts: [\"*/*\"]}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: ns-wide, namespace: shop}\n\
             spec: {egress: [{hosts: [\"./*\"]}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: web-only, namespace: shop}\n\
             spec: {workloadSelector: {labels: {app: web}}, outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n";
        let (_, sc) = registry(text);
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let pick = |ns: &str, l: &BTreeMap<String, String>| {
            select_sidecar(&sc, ns, l, "istio-system").map(|s| s.name.clone())
        };
        assert_eq!(pick("shop", &web).as_deref(), Some("web-only"));
        assert_eq!(pick("shop", &BTreeMap::new()).as_deref(), Some("ns-wide"));
        assert_eq!(pick("other", &web).as_deref(), Some("root"));
        let web_only = sc.iter().find(|s| s.name == "web-only").unwrap();
        assert_eq!(web_only.policy, Some(OutboundMode::RegistryOnly));
    }
}
