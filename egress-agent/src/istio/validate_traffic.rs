//! Istio's validation of DestinationRules, VirtualServices and Sidecars (SPEC
//! §3.5–3.7), with notes for the L7 settings the agent accepts but does not enforce.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

pub use crate::config::parse_duration;
pub use crate::istio::hosts::{overlap as hosts_match, subset_of};
use crate::istio::traffic::*;
use crate::istio::validate::{
    ExportOf, Findings, export_to, is_dns1123_label, is_label_key, is_label_value,
    is_partial_wildcard, validate_fqdn, validate_wildcard_domain,
};
use crate::istio::{Finding, Resource, WorkloadSelector};

// ---------------------------------------------------------------------------------
// Durations and host matching helpers.
// ---------------------------------------------------------------------------------

/// `ValidateDuration`: at least 1 ms, whole milliseconds.
fn check_duration<S>(f: &mut Findings<'_, S>, rule: &'static str, field: &str, s: &str) {
    match parse_duration(s) {
        None => f.error(rule, field, format!("{s:?} is not a valid duration")),
        Some(ns) if ns < 1_000_000 => f.error(rule, field, "duration must be greater than 1ms"),
        Some(ns) if ns % 1_000_000 != 0 => {
            f.error(rule, field, "only durations to ms precision are supported")
        }
        _ => {}
    }
}

fn validate_labels<S>(
    f: &mut Findings<'_, S>,
    rule: &'static str,
    field: &str,
    labels: &BTreeMap<String, String>,
) {
    for (k, v) in labels {
        if !is_label_key(k) {
            f.error(rule, field, format!("invalid tag key: {k:?}"));
        }
        if !is_label_value(v) {
            f.error(
                rule,
                format!("{field}[{k}]"),
                format!("invalid tag value: {v:?}"),
            );
        }
    }
}

fn note_unread<S>(f: &mut Findings<'_, S>, unread: &Unread) {
    for key in unread.keys() {
        f.note(format!("spec.{key}"), "not read by egress; ignored");
    }
}

fn workload_selector<S>(
    f: &mut Findings<'_, S>,
    rule: &'static str,
    sel: &Option<WorkloadSelector>,
    what: &str,
) {
    if let Some(sel) = sel {
        for (k, v) in &sel.labels {
            if k.is_empty() {
                f.error(
                    rule,
                    "spec.workloadSelector.labels",
                    "empty key is not supported in selector",
                );
            } else if k.contains('*') || v.contains('*') {
                f.error(
                    rule,
                    "spec.workloadSelector.labels",
                    "wildcard is not supported in selector",
                );
            }
        }
        if sel.labels.is_empty() {
            f.warn(
                rule,
                "spec.workloadSelector",
                format!("{what}: workload selector specified without labels, will be applied to all services in namespace"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// DestinationRule (SPEC §3.5).
// ---------------------------------------------------------------------------------

pub fn destination_rule(res: &Resource<DestinationRuleSpec>) -> Vec<Finding> {
    let mut f = Findings::new(res, "DestinationRule");
    let spec = &res.spec;
    let host = spec.host.as_deref().unwrap_or("");
    if let Err(e) = validate_wildcard_domain(host) {
        f.error("DR-1", "spec.host", e);
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(&mut f, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let field = format!("spec.subsets[{i}]");
        let Some(s) = s else {
            f.error("DR-13", field, "subset may not be null");
            continue;
        };
        let name = s.name.as_deref().unwrap_or("");
        if !names.insert(name) {
            f.error(
                "DR-13",
                format!("{field}.name"),
                format!("duplicate subset names: {name}"),
            );
        }
        if name.is_empty() {
            f.error(
                "DR-13",
                format!("{field}.name"),
                "subset name cannot be empty",
            );
        } else if !is_dns1123_label(name) {
            f.error(
                "DR-13",
                format!("{field}.name"),
                format!("subset name is invalid: {name}"),
            );
        }
        validate_labels(&mut f, "DR-13", &format!("{field}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&mut f, &format!("{field}.trafficPolicy"), tp);
        }
    }
    export_to(
        &mut f,
        &spec.export_to,
        &res.meta.namespace,
        ExportOf::DestinationRule,
    );
    workload_selector(&mut f, "", &spec.workload_selector, "destination rule");
    note_unread(&mut f, &spec.unread);
    f.list
}

fn traffic_policy<S>(f: &mut Findings<'_, S>, field: &str, tp: &TrafficPolicy) {
    if tp.is_empty() {
        f.error("DR-2", field, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        f.error(
            "",
            field,
            "tunnel and proxyProtocol must not be specified at the same time",
        );
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(f, &format!("{field}.outlierDetection"), od);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(f, &format!("{field}.connectionPool"), cp);
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(f, &format!("{field}.loadBalancer"), lb);
    }
    if tp.tls.is_some() {
        f.note(
            format!("{field}.tls"),
            "TLS settings are L7: accepted, not enforced",
        );
    }
    for (i, p) in tp.port_level_settings.iter().flatten().enumerate() {
        let pf = format!("{field}.portLevelSettings[{i}]");
        let Some(p) = p else {
            f.error("DR-15", pf, "traffic policy may not be null");
            continue;
        };
        match p.port.as_ref().and_then(|p| p.number) {
            None => f.error(
                "DR-15",
                format!("{pf}.port"),
                "portTrafficPolicy must have valid port",
            ),
            Some(n) if !(1..=65535).contains(&n) => f.error(
                "DR-15",
                format!("{pf}.port.number"),
                format!("port number {n} must be in the range 1..65535"),
            ),
            _ => {}
        }
        if p.outlier_detection.is_none()
            && p.connection_pool.is_none()
            && p.load_balancer.is_none()
            && p.tls.is_none()
        {
            f.error(
                "DR-2",
                pf,
                "port traffic policy must have at least one field",
            );
            continue;
        }
        if let Some(od) = &p.outlier_detection {
            outlier_detection(f, &format!("{pf}.outlierDetection"), od);
        }
        if let Some(cp) = &p.connection_pool {
            connection_pool(f, &format!("{pf}.connectionPool"), cp);
        }
        if let Some(lb) = &p.load_balancer {
            load_balancer(f, &format!("{pf}.loadBalancer"), lb);
        }
    }
}

fn outlier_detection<S>(f: &mut Findings<'_, S>, field: &str, od: &OutlierDetection) {
    if let Some(d) = &od.base_ejection_time {
        check_duration(f, "DR-8", &format!("{field}.baseEjectionTime"), d);
    }
    if od.consecutive_errors.unwrap_or(0) != 0 {
        f.warn(
            "DR-6",
            format!("{field}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or \
             consecutive5xxErrors instead",
        );
    }
    if od.consecutive_local_origin_failures.unwrap_or(0) > 0
        && !od.split_external_local_origin_errors.unwrap_or(false)
    {
        f.error(
            "DR-7",
            format!("{field}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external \
             local origin errors is set to false",
        );
    }
    if let Some(d) = &od.interval {
        check_duration(f, "DR-8", &format!("{field}.interval"), d);
    }
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v
            && !(0..=100).contains(&v)
        {
            f.error(
                "DR-9",
                format!("{field}.{name}"),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
}

fn connection_pool<S>(f: &mut Findings<'_, S>, field: &str, cp: &ConnectionPool) {
    if cp.tcp.is_none() && cp.http.is_none() {
        f.error(
            "DR-3",
            field,
            "connection pool must have at least one field",
        );
        return;
    }
    if let Some(h) = &cp.http {
        for (name, v, msg) in [
            (
                "http1MaxPendingRequests",
                h.http1_max_pending_requests,
                "http1 max pending requests must be non-negative",
            ),
            (
                "http2MaxRequests",
                h.http2_max_requests,
                "http2 max requests must be non-negative",
            ),
            (
                "maxRequestsPerConnection",
                h.max_requests_per_connection,
                "max requests per connection must be non-negative",
            ),
            (
                "maxRetries",
                h.max_retries,
                "max retries must be non-negative",
            ),
            (
                "maxConcurrentStreams",
                h.max_concurrent_streams,
                "max concurrent streams must be non-negative",
            ),
        ] {
            if v.unwrap_or(0) < 0 {
                f.error("", format!("{field}.http.{name}"), msg);
            }
        }
        if let Some(d) = &h.idle_timeout {
            check_duration(f, "", &format!("{field}.http.idleTimeout"), d);
        }
        if h.h2_upgrade_policy.as_deref() == Some("UPGRADE") && h.use_client_protocol == Some(true)
        {
            f.error(
                "",
                format!("{field}.http"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        f.note(
            format!("{field}.http"),
            "HTTP pool settings are L7: accepted, not enforced",
        );
    }
    if let Some(t) = &cp.tcp {
        if t.max_connections.unwrap_or(0) < 0 {
            f.error(
                "DR-4",
                format!("{field}.tcp.maxConnections"),
                "max connections must be non-negative",
            );
        }
        for (name, d) in [
            ("connectTimeout", &t.connect_timeout),
            ("maxConnectionDuration", &t.max_connection_duration),
        ] {
            if let Some(d) = d {
                check_duration(f, "DR-5", &format!("{field}.tcp.{name}"), d);
            }
        }
        if let Some(d) = &t.idle_timeout
            && parse_duration(d) != Some(0)
        {
            check_duration(f, "DR-5", &format!("{field}.tcp.idleTimeout"), d);
        }
        if let Some(k) = &t.tcp_keepalive {
            for (name, d) in [("time", &k.time), ("interval", &k.interval)] {
                if let Some(d) = d {
                    check_duration(f, "DR-5", &format!("{field}.tcp.tcpKeepalive.{name}"), d);
                }
            }
        }
    }
}

fn is_prime(n: i64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2;
    while i * i <= n {
        if n % i == 0 {
            return false;
        }
        i += 1;
    }
    true
}

const SIMPLE_LB: &[&str] = &[
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
];

fn load_balancer<S>(f: &mut Findings<'_, S>, field: &str, lb: &LoadBalancer) {
    if let Some(simple) = &lb.simple
        && !SIMPLE_LB.contains(&simple.as_str())
    {
        f.error(
            "",
            format!("{field}.simple"),
            format!(
                "Unsupported value: {simple:?}: supported values: {}",
                SIMPLE_LB.join(", ")
            ),
        );
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        f.error(
            "DR-10",
            field,
            "Invalid value: \"object\": must validate one and only one schema (oneOf): simple and \
             consistentHash are exclusive",
        );
    }
    let Some(ch) = &lb.consistent_hash else {
        return;
    };
    if let Some(c) = &ch.http_cookie {
        if c.name.as_deref().unwrap_or("").is_empty() {
            f.error(
                "DR-12",
                format!("{field}.consistentHash.httpCookie"),
                "name required for HttpCookie",
            );
        }
        if let Some(ttl) = &c.ttl
            && parse_duration(ttl).is_none()
        {
            f.error(
                "DR-12",
                format!("{field}.consistentHash.httpCookie.ttl"),
                format!("{ttl:?} is not a valid duration"),
            );
        }
    }
    let min_ring = ch.minimum_ring_size.unwrap_or(0);
    if min_ring != 0 {
        f.warn(
            "DR-11",
            format!("{field}.consistentHash.minimumRingSize"),
            "consistent hash MinimumRingSize is deprecated, use ConsistentHash's RingHash configuration instead",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            f.error(
                "DR-12",
                format!("{field}.consistentHash"),
                "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            );
        }
    }
    if let Some(m) = &ch.maglev {
        let size = m.table_size.unwrap_or(0);
        let mf = format!("{field}.consistentHash.maglev.tableSize");
        if size == 0 {
            f.error("DR-12", mf, "tableSize must be set for maglev");
        } else if size >= 5_000_011 {
            f.error(
                "DR-12",
                mf,
                "tableSize must be less than 5000011 for maglev",
            );
        } else if !is_prime(size) {
            f.error("DR-12", mf, "tableSize must be a prime number for maglev");
        }
    }
}

// ---------------------------------------------------------------------------------
// VirtualService (SPEC §3.6).
// ---------------------------------------------------------------------------------

pub fn virtual_service(res: &Resource<VirtualServiceSpec>) -> Vec<Finding> {
    let mut f = Findings::new(res, "VirtualService");
    let spec = &res.spec;
    let applies_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    if spec.hosts.is_empty() {
        f.error(
            "VS-1",
            "spec.hosts",
            "virtual service must have at least one host",
        );
    }
    let mut all_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if let Err(e) = validate_wildcard_domain(h) {
            if h.parse::<IpAddr>().is_err() {
                f.error("VS-1", field, e);
                all_valid = false;
            }
        } else if applies_to_mesh && h == "*" {
            f.error(
                "VS-1",
                field,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_valid = false;
        }
    }
    if all_valid {
        for i in 0..spec.hosts.len() {
            for j in i + 1..spec.hosts.len() {
                if hosts_match(&spec.hosts[i], &spec.hosts[j]) {
                    f.error(
                        "VS-1",
                        "spec.hosts",
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            spec.hosts[i], spec.hosts[j]
                        ),
                    );
                }
            }
        }
    }
    let (http, tcp, tls) = (
        spec.http.as_deref().unwrap_or(&[]),
        spec.tcp.as_deref().unwrap_or(&[]),
        spec.tls.as_deref().unwrap_or(&[]),
    );
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        f.error(
            "VS-2",
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    if !http.is_empty() {
        f.note(
            "spec.http",
            "HTTP routes are L7: accepted, not enforced (deviation D3)",
        );
    }
    for (i, r) in tls.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        let Some(r) = r else { continue };
        if r.matches.is_empty() {
            f.error(
                "VS-8",
                format!("{field}.match"),
                "TLS route must have at least one match condition",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mf = format!("{field}.match[{j}]");
            let Some(m) = m else {
                f.error("VS-9", mf, "TLS match may not be null");
                continue;
            };
            if m.sni_hosts.is_empty() {
                f.error(
                    "VS-9",
                    format!("{mf}.sniHosts"),
                    "TLS match must have at least one SNI host",
                );
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                sni_host(&mut f, &format!("{mf}.sniHosts[{k}]"), sni, &spec.hosts);
            }
            l4_match(&mut f, &mf, m);
        }
        if r.route.is_empty() {
            f.error("VS-3", format!("{field}.route"), "TLS route is required");
        }
        route_destinations(&mut f, &format!("{field}.route"), &r.route);
    }
    for (i, r) in tcp.iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        let Some(r) = r else { continue };
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(m) = m {
                l4_match(&mut f, &format!("{field}.match[{j}]"), m);
            }
        }
        if r.route.is_empty() {
            f.error("VS-3", format!("{field}.route"), "TCP route is required");
        }
        route_destinations(&mut f, &format!("{field}.route"), &r.route);
    }
    export_to(
        &mut f,
        &spec.export_to,
        &res.meta.namespace,
        ExportOf::VirtualService,
    );
    let tcp_matches: Vec<Option<&[Option<L4Match>]>> = tcp
        .iter()
        .map(|r| r.as_ref().map(|r| r.matches.as_slice()))
        .collect();
    unreachable_rules(&mut f, "spec.tcp", &tcp_matches);
    let tls_matches: Vec<Option<&[Option<L4Match>]>> = tls
        .iter()
        .map(|r| r.as_ref().map(|r| r.matches.as_slice()))
        .collect();
    unreachable_rules(&mut f, "spec.tls", &tls_matches);
    note_unread(&mut f, &spec.unread);
    f.list
}

fn sni_host<S>(f: &mut Findings<'_, S>, field: &str, sni: &str, hosts: &[String]) {
    if let Err(e) = validate_wildcard_domain(sni) {
        if sni.parse::<IpAddr>().is_ok() {
            f.warn(
                "VS-11",
                field,
                format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
            );
        } else {
            f.error("VS-10", field, e);
        }
        return;
    }
    if !hosts.iter().any(|h| subset_of(sni, h)) {
        f.error(
            "VS-10",
            field,
            format!(
                "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                hosts.join(", ")
            ),
        );
    }
}

fn l4_match<S>(f: &mut Findings<'_, S>, field: &str, m: &L4Match) {
    for (i, s) in m.destination_subnets.iter().enumerate() {
        let sf = format!("{field}.destinationSubnets[{i}]");
        if s.contains('/') {
            if s.parse::<IpNet>().is_err() {
                f.error("VS-7", sf, format!("{s:?} is not a valid CIDR block"));
            }
        } else if s.parse::<IpAddr>().is_err() {
            f.error("VS-7", sf, format!("{s:?} is not a valid IP"));
        }
    }
    if let Some(p) = m.port
        && p != 0
        && !(1..=65535).contains(&p)
    {
        f.error(
            "VS-7",
            format!("{field}.port"),
            format!("port number {p} must be in the range 1..65535"),
        );
    }
    validate_labels(
        f,
        "VS-7",
        &format!("{field}.sourceLabels"),
        &m.source_labels,
    );
}

fn route_destinations<S>(
    f: &mut Findings<'_, S>,
    field: &str,
    routes: &[Option<RouteDestination>],
) {
    let mut total = 0i64;
    for (i, r) in routes.iter().enumerate() {
        let rf = format!("{field}[{i}]");
        let Some(r) = r else {
            f.error("", rf, "weight may not be nil");
            continue;
        };
        match &r.destination {
            None => f.error(
                "VS-4",
                format!("{rf}.destination"),
                "destination is required",
            ),
            Some(d) => {
                let host = d.host.as_deref().unwrap_or("");
                if host == "*" {
                    f.error(
                        "VS-4",
                        format!("{rf}.destination.host"),
                        format!("invalid destination host {host}"),
                    );
                } else if let Err(e) = validate_wildcard_domain(host) {
                    f.error("VS-4", format!("{rf}.destination.host"), e);
                }
                if let Some(s) = &d.subset
                    && !s.is_empty()
                    && !is_dns1123_label(s)
                {
                    f.error(
                        "VS-4",
                        format!("{rf}.destination.subset"),
                        format!("subset name is invalid: {s}"),
                    );
                }
                if let Some(n) = d.port.as_ref().and_then(|p| p.number)
                    && !(1..=65535).contains(&n)
                {
                    f.error(
                        "VS-4",
                        format!("{rf}.destination.port"),
                        format!("port number {n} must be in the range 1..65535"),
                    );
                }
            }
        }
        let w = r.weight.unwrap_or(0);
        if w < 0 {
            f.error("VS-5", format!("{rf}.weight"), format!("weight {w} < 0"));
        }
        total += w;
    }
    if routes.len() > 1 && total == 0 {
        f.error("VS-6", field, "total destination weight = 0");
    }
}

/// `analyzeUnreachable{TCP,TLS}Rules`: a second match-less rule, and rules (or
/// matches) that repeat earlier ones, are never used. (A matched rule after a
/// match-less one is not reported: Istio's analysis does not either.)
fn unreachable_rules<S>(
    f: &mut Findings<'_, S>,
    field: &str,
    rules: &[Option<&[Option<L4Match>]>],
) {
    let mut empty_seen = false;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (n, matches) in rules.iter().enumerate() {
        let Some(matches) = matches else { continue };
        if matches.is_empty() {
            if empty_seen {
                f.warn(
                    "VS-12",
                    format!("{field}[{n}]"),
                    format!(
                        "virtualService rule #{n} not used (only the last rule can have no matches)"
                    ),
                );
            }
            empty_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (m, mat) in matches.iter().enumerate() {
            let key = serde_json::to_string(mat).unwrap_or_default();
            if let Some(prior) = seen.get(&key) {
                duplicates += 1;
                f.warn(
                    "VS-12",
                    format!("{field}[{n}].match[{m}]"),
                    format!("match {m} of rule #{n} not used (duplicate/overlapping match in rule #{prior})"),
                );
            } else {
                seen.insert(key, n);
            }
        }
        if duplicates == matches.len() {
            f.warn(
                "VS-12",
                format!("{field}[{n}]"),
                format!("virtualService rule #{n} not used (all matches used by prior rules)"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Sidecar (SPEC §3.7).
// ---------------------------------------------------------------------------------

pub fn sidecar(res: &Resource<SidecarSpec>) -> Vec<Finding> {
    let mut f = Findings::new(res, "Sidecar");
    let spec = &res.spec;
    if spec.egress.is_none()
        && spec.ingress.is_none()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        f.error("SC-1", "spec", "sidecar: empty configuration provided");
        return f.list;
    }
    workload_selector(&mut f, "SC-8", &spec.workload_selector, "sidecar");
    if let Some(tp) = &spec.outbound_traffic_policy {
        let mode = tp.mode.as_deref().unwrap_or("REGISTRY_ONLY");
        match mode {
            "ALLOW_ANY" | "REGISTRY_ONLY" => {}
            "ALLOW_ANY_DYNAMIC_DNS" => f.error(
                "SC-6",
                "spec.outboundTrafficPolicy.mode",
                "ALLOW_ANY_DYNAMIC_DNS is only supported in MeshConfig",
            ),
            other => f.error(
                "",
                "spec.outboundTrafficPolicy.mode",
                format!("Unsupported value: {other:?}: supported values: \"REGISTRY_ONLY\", \"ALLOW_ANY\""),
            ),
        }
        if tp.egress_proxy.is_some() && mode != "ALLOW_ANY" {
            f.error(
                "SC-7",
                "spec.outboundTrafficPolicy.egressProxy",
                "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
            );
        }
    }
    let egress = spec.egress.as_deref().unwrap_or(&[]);
    let mut catch_all = false;
    let mut ports = BTreeSet::new();
    for (i, l) in egress.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        let Some(l) = l else {
            f.error("", field, "egress listener may not be null");
            continue;
        };
        match &l.port {
            None => {
                if catch_all {
                    f.error(
                        "SC-4",
                        field.clone(),
                        "sidecar: the egress can have only one listener with empty port",
                    );
                    continue;
                } else if i == egress.len() - 1 {
                    catch_all = true;
                } else {
                    f.error(
                        "SC-4",
                        field.clone(),
                        "sidecar: the egress listener with empty port should be the last listener in the list",
                    );
                }
            }
            Some(p) => {
                let n = p.number.unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    f.error(
                        "",
                        format!("{field}.port.number"),
                        format!("port number {n} must be in the range 1..65535"),
                    );
                } else if !ports.insert(n) {
                    f.error(
                        "",
                        format!("{field}.port"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
                if let Some(proto) = &p.protocol
                    && crate::istio::model::Protocol::parse(proto).is_none()
                {
                    f.error(
                        "",
                        format!("{field}.port.protocol"),
                        format!("unsupported protocol: {proto}"),
                    );
                }
            }
        }
        if l.hosts.is_empty() {
            f.error(
                "SC-2",
                format!("{field}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
            continue;
        }
        let mut by_ns: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (j, h) in l.hosts.iter().enumerate() {
            let hf = format!("{field}.hosts[{j}]");
            if let Some((ns, svc)) = h.split_once('/') {
                let ns = if ns == "." {
                    res.meta.namespace.as_str()
                } else {
                    ns
                };
                let set = by_ns.entry(ns.to_owned()).or_default();
                if (svc != "*" && (set.contains(svc) || set.contains("*")))
                    || (svc == "*" && !set.is_empty())
                {
                    f.warn("SC-5", hf.clone(), format!("duplicated egress host: {h}"));
                }
                set.insert(svc.to_owned());
            }
            egress_host(&mut f, &hf, h);
        }
        if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
            f.warn(
                "SC-5",
                format!("{field}.hosts"),
                "`*/*` host select all resources, no other hosts can be added",
            );
        }
    }
    if spec.ingress.is_some() {
        f.note(
            "spec.ingress",
            "inbound listeners are not used by an egress enforcer; ignored",
        );
    }
    note_unread(&mut f, &spec.unread);
    f.list
}

/// `validateNamespaceSlashWildcardHostname` for sidecars.
fn egress_host<S>(f: &mut Findings<'_, S>, field: &str, h: &str) {
    let Some((ns, name)) = h.split_once('/') else {
        f.error("SC-3", field, "host must be of form namespace/dnsName");
        return;
    };
    if ns.is_empty() || name.is_empty() {
        f.error(
            "SC-3",
            field,
            "config namespace and dnsName in host entry cannot be empty",
        );
        return;
    }
    let bare_ns = ns.strip_prefix('~').unwrap_or(ns);
    if ns != "*" && ns != "." && !bare_ns.is_empty() && !is_dns1123_label(bare_ns) {
        f.error(
            "SC-3",
            field,
            format!("invalid namespace value {ns:?} in sidecar"),
        );
    }
    if name != "*" && !name.contains('.') {
        f.error("SC-3", field, "short names (non FQDN) are not allowed");
    }
    if name == "*" {
        return;
    }
    if let Err(e) = validate_wildcard_domain(name) {
        f.error("SC-3", field, e);
    } else if is_partial_wildcard(name) {
        f.error(
            "SC-3",
            field,
            format!("partial wildcard {name:?} not allowed"),
        );
    } else if !name.starts_with('*') && validate_fqdn(name).is_err() {
        f.error("SC-3", field, format!("{name:?} is not a valid hostname"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(5_000_000_000));
        assert_eq!(parse_duration("100ms"), Some(100_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("0.5ms"), Some(500_000));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("abc"), None);
    }

    #[test]
    fn host_matching() {
        assert!(hosts_match("*.a.com", "b.a.com"));
        assert!(hosts_match("b.a.com", "*.a.com"));
        assert!(!hosts_match("a.com", "*.a.com"));
        assert!(hosts_match("*.a.com", "*.b.a.com"));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
    }
}
