//! Istio's validation of ServiceEntries (SPEC §3): the CRD layer and the webhook
//! layer, every finding reported with its field and rule, errors and warnings apart.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::istio::model::{Location, Protocol, Resolution};
use crate::istio::{Finding, Level, Resource, ServiceEntry};

/// Settings that change what is valid (SPEC §3.1 "Context").
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// `PILOT_ENABLE_IP_AUTOALLOCATE` (`istioCompat.autoAllocate`), on by default.
    pub auto_allocate: bool,
}

impl Default for Context {
    fn default() -> Self {
        Self {
            auto_allocate: true,
        }
    }
}

/// Collects findings for one resource.
pub struct Findings<'a, S> {
    res: &'a Resource<S>,
    kind: &'static str,
    pub list: Vec<Finding>,
}

impl<'a, S> Findings<'a, S> {
    pub fn new(res: &'a Resource<S>, kind: &'static str) -> Self {
        Self {
            res,
            kind,
            list: Vec::new(),
        }
    }

    pub fn push(
        &mut self,
        level: Level,
        rule: &'static str,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.list.push(Finding {
            level,
            file: self.res.source.file.clone(),
            doc: self.res.source.doc,
            kind: Some(self.kind.to_owned()),
            namespace: self.res.meta.namespace.clone(),
            name: self.res.meta.name.clone(),
            field: field.into(),
            message: msg.into(),
            rule: (!rule.is_empty()).then_some(rule),
        });
    }

    pub fn error(&mut self, rule: &'static str, field: impl Into<String>, msg: impl Into<String>) {
        self.push(Level::Error, rule, field, msg);
    }

    pub fn warn(&mut self, rule: &'static str, field: impl Into<String>, msg: impl Into<String>) {
        self.push(Level::Warning, rule, field, msg);
    }

    /// A field accepted but not enforced.
    pub fn note(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.push(Level::Note, "", field, msg);
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|f| f.level == Level::Error)
    }
}

// ---------------------------------------------------------------------------------
// Grammar (SPEC §3.2; istio pkg/config/validation/agent and pkg/config/labels).
// ---------------------------------------------------------------------------------

/// DNS-1123 label, either case: `^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`, ≤ 63.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `^(\*|(\*|\*-)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)$`, ≤ 63.
fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

fn dns1123_preconditions(domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// `ValidateDNS1123Labels`: the labels after the first.
fn validate_dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts[parts.len() - 1];
    if go_atoi_ok(tld) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// Go's `strconv.Atoi` success: optional sign, then at least one decimal digit.
fn go_atoi_ok(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) && digits.len() <= 19
}

/// `ValidateWildcardDomain`: wildcards only in the first label.
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => validate_dns1123_labels(rest),
        None => Ok(()),
    }
}

/// `ValidateFQDN`: the same grammar with no wildcard anywhere.
pub fn validate_fqdn(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    validate_dns1123_labels(domain)
}

/// A host with `*` that is not `*` itself and does not start with `*.`.
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host != "*" && !host.starts_with("*.")
}

/// Kubernetes label key: optional DNS-subdomain prefix (≤ 253) + `/` + name (≤ 63).
pub fn is_label_key(key: &str) -> bool {
    match key.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// Lower-case DNS subdomain: dot-separated lower-case labels, ≤ 253 in all.
fn is_dns_subdomain(s: &str) -> bool {
    let lower_label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    !s.is_empty() && s.len() <= 253 && s.split('.').all(lower_label)
}

/// `(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, ≤ 63.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Label value: empty, or a label name.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

// ---------------------------------------------------------------------------------
// ServiceEntry (SPEC §3.3).
// ---------------------------------------------------------------------------------

/// Validates a ServiceEntry. The resource is valid iff no finding is an error.
pub fn service_entry(res: &Resource<ServiceEntry>, ctx: &Context) -> Vec<Finding> {
    let mut f = Findings::new(res, "ServiceEntry");
    let spec = &res.spec.spec;

    let resolution = match Resolution::parse(spec.resolution.as_deref()) {
        Ok(r) => r,
        Err(v) => {
            f.error(
                "",
                "spec.resolution",
                format!(
                    "Unsupported value: {v:?}: supported values: \"NONE\", \"STATIC\", \"DNS\", \
                     \"DNS_ROUND_ROBIN\", \"DYNAMIC_DNS\""
                ),
            );
            return f.list;
        }
    };
    if let Err(v) = Location::parse(spec.location.as_deref()) {
        f.error(
            "",
            "spec.location",
            format!(
                "Unsupported value: {v:?}: supported values: \"MESH_EXTERNAL\", \"MESH_INTERNAL\""
            ),
        );
    }

    // Selector problems return at once with only that error (SPEC §3.1).
    if let Some(sel) = &spec.workload_selector {
        for (k, v) in &sel.labels {
            if k.is_empty() {
                f.error(
                    "SE-W2",
                    "spec.workloadSelector.labels",
                    "empty key is not supported in selector",
                );
                return f.list;
            }
            if k.contains('*') || v.contains('*') {
                f.error(
                    "SE-W2",
                    format!("spec.workloadSelector.labels[{k}]"),
                    "wildcard is not supported in selector",
                );
                return f.list;
            }
        }
        if sel.labels.is_empty() {
            f.warn(
                "SE-W3",
                "spec.workloadSelector",
                "service entry: workload selector specified without labels, will be applied to all \
                 services in namespace",
            );
        }
        if spec.endpoints.is_some() {
            f.error(
                "SE-W1",
                "spec",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }

    // Hosts.
    let hosts = spec.hosts.as_deref().unwrap_or(&[]);
    if hosts.is_empty() {
        f.error(
            "SE-H1",
            "spec.hosts",
            "service entry must have at least one host",
        );
    }
    if hosts.len() > 256 {
        f.error("", "spec.hosts", "Too many: must have at most 256 items");
    }
    for (i, host) in hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            f.error(
                "SE-H2",
                field,
                "invalid host * (hostname cannot be wildcard)",
            );
            continue;
        }
        if let Err(e) = validate_wildcard_domain(host) {
            f.error("SE-H3", field.clone(), e);
        }
        if resolution != Resolution::DynamicDns && is_partial_wildcard(host) {
            f.warn(
                "SE-H4",
                field,
                format!("partial wildcard {host:?} not allowed"),
            );
        }
    }

    // Addresses.
    if spec.addresses.len() > 256 {
        f.error(
            "",
            "spec.addresses",
            "Too many: must have at most 256 items",
        );
    }
    let mut has_cidr = false;
    for (i, a) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        if a.len() > 64 {
            f.error("SE-A1", field, "Too long: may not be longer than 64");
            continue;
        }
        has_cidr |= a.contains('/');
        // Istio's ValidateIPSubnet: exactly one slash makes it a CIDR.
        if a.matches('/').count() == 1 {
            if a.parse::<IpNet>().is_err() {
                f.error("SE-A1", field, format!("{a:?} is not a valid CIDR block"));
            }
        } else if a.parse::<IpAddr>().is_err() {
            f.error("SE-A1", field, format!("{a} is not a valid IP"));
        }
    }
    if has_cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        f.error(
            "SE-A2",
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    // Ports.
    if spec.ports.len() > 256 {
        f.error("", "spec.ports", "Too many: must have at most 256 items");
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut declared: Vec<(String, Protocol)> = Vec::new();
    let auto_applies = ctx.auto_allocate
        && resolution != Resolution::None
        && !opted_out_of_auto_allocation(res)
        && spec.addresses.is_empty();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(p) = p else {
            f.error("SE-P1", field, "service entry port may not be null");
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        if !is_dns1123_label(&name) {
            f.error(
                "SE-P6",
                format!("{field}.name"),
                format!("invalid port name: {name:?}"),
            );
        }
        if !name.is_empty() && !names.insert(name.clone()) {
            f.error(
                "SE-P2",
                format!("{field}.name"),
                format!("service entry port name {name:?} already defined (Duplicate value)"),
            );
        }
        match p.number {
            Some(n) if (1..=65535).contains(&n) => {
                if !numbers.insert(n) {
                    f.error(
                        "SE-P3",
                        format!("{field}.number"),
                        format!("service entry port {n} already defined (port number cannot be duplicated)"),
                    );
                }
            }
            n => f.error(
                "SE-P4",
                format!("{field}.number"),
                format!(
                    "port number {} must be in the range 1..65535",
                    n.unwrap_or(0)
                ),
            ),
        }
        if let Some(t) = p.target_port
            && !(1..=65535).contains(&t)
        {
            f.error(
                "SE-P5",
                format!("{field}.targetPort"),
                format!("port number {t} must be in the range 1..65535"),
            );
        }
        let raw_proto = p.protocol.clone().unwrap_or_default();
        let proto = match Protocol::parse(&raw_proto) {
            Some(proto) => proto,
            None => {
                f.error(
                    "SE-P7",
                    format!("{field}.protocol"),
                    format!("unsupported protocol: {raw_proto}"),
                );
                Protocol::Unset
            }
        };
        if !auto_applies
            && spec.addresses.is_empty()
            && (raw_proto.is_empty() || raw_proto == "TCP")
        {
            f.warn(
                "SE-A3",
                field.clone(),
                "addresses are required for ports serving TCP (or unset) protocol when IP \
                 Autoallocation is not enabled",
            );
        }
        declared.push((name, proto));
    }

    // Several hosts with non-HTTP, non-TLS ports.
    if resolution != Resolution::None
        && hosts.len() > 1
        && declared.iter().any(|(_, p)| !p.is_http() && !p.is_tls())
    {
        f.error(
            "SE-M1",
            "spec.hosts",
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }

    let endpoints = spec.endpoints.as_deref();
    let n_endpoints = endpoints.map_or(0, <[_]>::len);
    if n_endpoints > 4096 {
        f.error(
            "",
            "spec.endpoints",
            "Too many: must have at most 4096 items",
        );
    }
    let has_unix = endpoints
        .unwrap_or(&[])
        .iter()
        .flatten()
        .any(|e| e.address.as_deref().unwrap_or("").starts_with("unix://"));
    if has_unix && spec.ports.len() != 1 {
        f.error(
            "SE-E5",
            "spec.ports",
            "exactly 1 service port required for unix endpoints",
        );
    }

    match resolution {
        Resolution::None => {
            if n_endpoints > 0 {
                f.error(
                    "SE-R1",
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none (NONE mode cannot set endpoints)",
                );
            }
            if spec.workload_selector.is_some() {
                f.warn(
                    "SE-R2",
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, e) in endpoints.unwrap_or(&[]).iter().enumerate() {
                let field = format!("spec.endpoints[{i}]");
                let Some(e) = e else {
                    f.error("SE-E9", field, "endpoint cannot be nil");
                    continue;
                };
                let addr = e.address.as_deref().unwrap_or("");
                if addr.is_empty() {
                    match e.network.as_deref().unwrap_or("") {
                        "" => f.error("SE-E1", format!("{field}.address"), "address is required"),
                        net => f.warn(
                            "SE-E2",
                            format!("{field}.address"),
                            format!("address is unset with network {net:?}"),
                        ),
                    }
                } else if let Some(path) = addr.strip_prefix("unix://") {
                    validate_unix(&mut f, &field, path);
                    if !e.ports.is_empty() {
                        f.error(
                            "SE-E4",
                            format!("{field}.ports"),
                            format!("unix endpoint {addr} must not include ports (UDS may not include ports)"),
                        );
                    }
                } else if addr.parse::<IpAddr>().is_err() {
                    f.error(
                        "SE-E6",
                        format!("{field}.address"),
                        format!("endpoint address {addr:?} is not a valid IP address"),
                    );
                }
                endpoint_ports_and_labels(&mut f, &field, e, &declared, "SE-E7", "SE-E8");
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if n_endpoints == 0 && hosts.iter().any(|h| validate_fqdn(h).is_err()) {
                f.error(
                    "SE-R4",
                    "spec.hosts",
                    "hosts must be FQDN or contain only prefix wildcards if no endpoints are provided \
                     for resolution mode DNS",
                );
            }
            if resolution == Resolution::DnsRoundRobin && n_endpoints > 1 {
                f.error(
                    "SE-R5",
                    "spec.endpoints",
                    "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN \
                     (DNS_ROUND_ROBIN mode cannot have multiple endpoints)",
                );
            }
            for (i, e) in endpoints.unwrap_or(&[]).iter().enumerate() {
                let field = format!("spec.endpoints[{i}]");
                let Some(e) = e else {
                    f.error("SE-E9", field, "endpoint cannot be nil");
                    continue;
                };
                let addr = e.address.as_deref().unwrap_or("");
                if addr.parse::<IpAddr>().is_err() && validate_fqdn(addr).is_err() {
                    f.error(
                        "SE-R6",
                        format!("{field}.address"),
                        format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                    );
                }
                endpoint_ports_and_labels(&mut f, &field, e, &declared, "SE-R7", "SE-R7");
            }
            if !spec.addresses.is_empty()
                && hosts.len() > 1
                && declared.iter().any(|(_, p)| p.is_tcp())
            {
                f.warn(
                    "SE-R8",
                    "spec.hosts",
                    "service entry can not have more than one host specified simultaneously with \
                     address and tcp port",
                );
            }
        }
        Resolution::DynamicDns => {
            if hosts.iter().any(|h| !h.starts_with('*')) {
                f.error(
                    "SE-R9a",
                    "spec.hosts",
                    "host must be wildcarded for resolution mode DYNAMIC_DNS",
                );
            }
            if !spec.addresses.is_empty() {
                f.error(
                    "SE-R9b",
                    "spec.addresses",
                    "addresses cannot be set for resolution type DYNAMIC_DNS",
                );
            }
            if spec.endpoints.is_some() {
                f.error(
                    "SE-R9c",
                    "spec.endpoints",
                    "endpoints cannot be set for resolution type DYNAMIC_DNS",
                );
            }
            for (i, (_, p)) in declared.iter().enumerate() {
                if !matches!(
                    p,
                    Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
                ) {
                    f.error(
                        "SE-R9d",
                        format!("spec.ports[{i}].protocol"),
                        "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type \
                         DYNAMIC_DNS",
                    );
                }
            }
            let location = Location::parse(spec.location.as_deref()).unwrap_or_default();
            let waypoint = res.meta.labels.get("istio.io/use-waypoint");
            if location == Location::MeshInternal && waypoint.is_some_and(|w| w != "none") {
                f.error(
                    "SE-R9e",
                    "spec.location",
                    "location MESH_INTERNAL with resolution type DYNAMIC_DNS is not supported when \
                     using waypoints",
                );
            }
        }
    }

    export_to(
        &mut f,
        &spec.export_to,
        &res.meta.namespace,
        ExportOf::ServiceEntry,
    );
    f.list
}

fn validate_unix<S>(f: &mut Findings<'_, S>, field: &str, path: &str) {
    let field = format!("{field}.address");
    if path.is_empty() {
        f.error("SE-E3", field, "unix address must not be empty");
    } else if !(path.starts_with('/') || path.starts_with('@')) {
        f.error(
            "SE-E3",
            field,
            format!("{path:?} is not an absolute path to a file (UDS must be an absolute path or abstract socket)"),
        );
    } else if path.ends_with('/') {
        f.error(
            "SE-E3",
            field,
            format!("{path:?} is not an absolute path to a file (UDS may not be a dir)"),
        );
    }
}

fn endpoint_ports_and_labels<S>(
    f: &mut Findings<'_, S>,
    field: &str,
    e: &crate::istio::WorkloadEntry,
    declared: &[(String, Protocol)],
    port_rule: &'static str,
    label_rule: &'static str,
) {
    for (name, port) in &e.ports {
        let pf = format!("{field}.ports[{name}]");
        if !is_dns1123_label(name) {
            f.error(
                port_rule,
                pf.clone(),
                format!("invalid port name: {name:?} (port name must be valid)"),
            );
        } else if !declared.iter().any(|(n, _)| n == name) {
            f.error(
                port_rule,
                pf.clone(),
                format!("endpoint port {port} is not defined by the service entry (port {name:?})"),
            );
        }
        if !(1..=65535).contains(port) {
            f.error(
                port_rule,
                pf,
                format!("port number {port} must be in the range 1..65535 (port must be between 1-65535)"),
            );
        }
    }
    for (k, v) in &e.labels {
        if !is_label_key(k) {
            f.error(
                label_rule,
                format!("{field}.labels"),
                format!("invalid tag key: {k:?}"),
            );
        }
        if !is_label_value(v) {
            f.error(
                label_rule,
                format!("{field}.labels[{k}]"),
                format!("invalid tag value: {v:?}"),
            );
        }
    }
}

/// Whose exportTo is checked: ServiceEntries may export to no one (`~`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportOf {
    ServiceEntry,
    DestinationRule,
    VirtualService,
}

/// exportTo rules (SE-X1..X4, DR-14, VS-13).
pub fn export_to<S>(f: &mut Findings<'_, S>, list: &[String], namespace: &str, of: ExportOf) {
    let mut seen = BTreeSet::new();
    let allow_none = of == ExportOf::ServiceEntry;
    let (dup, bad, public, none) = match of {
        ExportOf::ServiceEntry => ("SE-X1", "SE-X2", "SE-X3", "SE-X4"),
        ExportOf::DestinationRule => ("DR-14", "DR-14", "DR-14", "DR-14"),
        ExportOf::VirtualService => ("VS-13", "VS-13", "VS-13", "VS-13"),
    };
    for (i, e) in list.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        if e == "~" && !allow_none {
            f.error(
                none,
                field.clone(),
                "exportTo ~ (none) is not allowed for Istio configuration objects",
            );
        }
        if e != "." && e != "*" && e != "~" && !is_dns1123_label(e) {
            f.error(
                bad,
                field.clone(),
                format!(
                    "only .,*, or a valid DNS 1123 label is allowed as exportTo entry (got {e:?})"
                ),
            );
        }
        if !seen.insert(e.as_str()) {
            f.error(
                dup,
                field,
                format!("duplicate entries in exportTo for entry {e}"),
            );
        }
    }
    if seen.contains(".") && seen.contains(namespace) {
        f.error(
            dup,
            "spec.exportTo",
            format!("duplicate entries in exportTo: . and current namespace {namespace}"),
        );
    }
    if seen.contains("*") && seen.len() > 1 {
        f.error(
            public,
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if allow_none && seen.contains("~") && seen.len() > 1 {
        f.error(
            none,
            "spec.exportTo",
            "cannot export service entry to no one (~) and someone",
        );
    }
}

/// The label `networking.istio.io/enable-autoallocate-ip: "false"` (any case).
pub fn opted_out_of_auto_allocation<S>(res: &Resource<S>) -> bool {
    res.meta
        .labels
        .get("networking.istio.io/enable-autoallocate-ip")
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_grammar() {
        assert!(validate_wildcard_domain("api.stripe.com").is_ok());
        assert!(validate_wildcard_domain("*.googleapis.com").is_ok());
        assert!(validate_wildcard_domain("*foo.com").is_ok());
        assert!(validate_wildcard_domain("*-foo.com").is_ok());
        assert!(validate_wildcard_domain("inventory").is_ok());
        assert!(validate_wildcard_domain("Example.COM.").is_ok());
        let e = validate_wildcard_domain("198.51.100.7").unwrap_err();
        assert_eq!(
            e,
            r#"domain name "51.100.7" invalid (top level domain "7" cannot be all-numeric)"#
        );
        let e = validate_wildcard_domain("a.*.com").unwrap_err();
        assert!(e.contains(r#"(label "*" invalid)"#), "{e}");
        let e = validate_wildcard_domain("under_score.com").unwrap_err();
        assert!(e.contains("invalid (label"), "{e}");
        assert_eq!(
            validate_wildcard_domain("").unwrap_err(),
            "empty domain name not allowed"
        );
        assert!(
            validate_wildcard_domain(&"a".repeat(256))
                .unwrap_err()
                .contains("too long")
        );
        assert!(validate_fqdn("*.a.com").is_err());
        assert!(validate_fqdn("a.com").is_ok());
    }

    #[test]
    fn partial_wildcards() {
        assert!(is_partial_wildcard("*foo.com"));
        assert!(!is_partial_wildcard("*.foo.com"));
        assert!(!is_partial_wildcard("*"));
        assert!(!is_partial_wildcard("foo.com"));
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_key("app"));
        assert!(is_label_key("example.com/tier"));
        assert!(!is_label_key("-app"));
        assert!(!is_label_key("Example.com/tier"));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_x"));
        assert!(!is_label_value("bad value"));
    }
}
