//! `egress-agent explain`: the classification of one connection (SPEC §7.3–7.4),
//! step by step, computed by the same `decide::classify` the kernel runs, over the
//! same compiled entries the agent would write to the maps.

use std::fmt::Write as _;
use std::net::IpAddr;

use egress_common::addr::{from_addr, to_addr};
use egress_common::decide::{self, Connect, Outcome};
use egress_common::*;

use crate::config::Config;
use crate::dataplane::compile::{Ids, compile};
use crate::dataplane::sim::{Sim, sock};
use crate::dataplane::workloads::Workload;
use crate::istio;
use crate::istio::model::Transport;
use crate::registry::pipeline::{Registry, build_registry, validation_context};
use crate::registry::scope::{select_sidecar, view};
use crate::registry::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("--from {0:?}: expected NAMESPACE/WORKLOAD")]
    From(String),
    #[error("--to {0:?}: expected HOST_OR_IP:PORT or HOST_OR_IP:PORT/udp")]
    To(String),
    #[error("no workload {0} in {1}")]
    NoWorkload(String, String),
    #[error("the API server: {0}")]
    Api(String),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed `--to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

pub fn parse_target(s: &str) -> Result<Target, ExplainError> {
    let err = || ExplainError::To(s.to_owned());
    let (rest, transport) = match s.rsplit_once('/') {
        Some((r, "udp")) => (r, Transport::Udp),
        Some((r, "tcp")) => (r, Transport::Tcp),
        Some(_) => return Err(err()),
        None => (s, Transport::Tcp),
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(err)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| err())?;
    if host.is_empty() {
        return Err(err());
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        transport,
    })
}

/// Explains a connection from workload `from` (`namespace/name`) to `to`.
pub fn explain(config: &Config, from: &str, to: &str) -> Result<String, ExplainError> {
    let (ns, name) = from
        .split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| ExplainError::From(from.to_owned()))?;
    let target = parse_target(to)?;
    // Kubernetes mode: the pods, resources and mesh settings the API server
    // has now, as the agent's watches see them.
    let cluster = match &config.kubernetes {
        Some(k) => Some(
            crate::k8s::watch::snapshot(
                k,
                &config.root_namespace,
                validation_context(config),
                std::time::Duration::from_secs(10),
            )
            .map_err(ExplainError::Api)?,
        ),
        None => None,
    };
    let mut config = config.clone();
    if let Some(mesh) = cluster
        .as_ref()
        .and_then(|c| c.mesh_text.values().next())
        .and_then(|t| crate::k8s::watch::Mesh::parse(t).ok())
    {
        mesh.apply_to(&mut config);
    }
    let config = &config;
    let mut store = Store::default();
    let docs = if cluster.is_some() && !config.service_entry_dir.exists() {
        istio::Documents::default()
    } else {
        istio::load_dir(&config.service_entry_dir).map_err(|source| ExplainError::Read {
            path: config.service_entry_dir.clone(),
            source,
        })?
    };
    let mut reads = vec![std::sync::Arc::new(crate::registry::store::read_documents(
        &docs,
        &validation_context(config),
    ))];
    reads.extend(cluster.iter().flat_map(|c| c.istio_reads()));
    let load = store.apply(&reads);
    let remembered = crate::registry::alloc::load_remembered(&config.vip_state_file());
    let (registry, _) = build_registry(config, &store, &remembered);

    // Every configured workload (and in Kubernetes mode every pod of the
    // node), with stand-in cgroup ids: views come out as the agent builds them.
    let mut configs = config.workloads.clone();
    if let (Some(c), Some(k)) = (&cluster, &config.kubernetes) {
        configs.extend(crate::k8s::pods::workloads(c, k, &|_| None));
    }
    let workloads: Vec<Workload> = configs
        .iter()
        .enumerate()
        .map(|(i, w)| Workload {
            cgroup_id: i as u64 + 1,
            config: w.clone(),
            iface: None,
        })
        .collect();
    let me = workloads
        .iter()
        .find(|w| w.config.namespace == ns && w.config.name == name)
        .ok_or_else(|| {
            ExplainError::NoWorkload(from.to_owned(), config.path.display().to_string())
        })?;
    let mut ids = Ids::default();
    // Resolve DNS endpoints now, as the agent would.
    let resolved = resolve_now(config, &registry);
    let desired = compile(
        config,
        &registry.services,
        &registry.sidecars,
        &workloads,
        &resolved,
        &mut ids,
    );
    let catalog = ids.catalog();

    let mut out = String::new();
    let sidecar = select_sidecar(
        &registry.sidecars,
        ns,
        &me.config.labels,
        &config.root_namespace,
    );
    let _ = writeln!(
        out,
        "from: {ns}/{name} (cgroup {}), Sidecar: {}",
        me.config.cgroup.display(),
        sidecar.map_or("none (all visible services)".into(), |s| format!(
            "{}/{}",
            s.namespace, s.name
        ))
    );
    let _ = writeln!(
        out,
        "to:   {}:{}/{}",
        target.host,
        target.port,
        target.transport.as_str()
    );
    let _ = writeln!(
        out,
        "registry: {} resources loaded, {} rejected, {} stale",
        load.counts.loaded, load.counts.rejected, load.counts.stale
    );

    let ips: Vec<IpAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => dns_answer(&mut out, config, &registry, ns, sidecar, &target.host),
    };
    for ip in ips {
        let _ = writeln!(
            out,
            "\nconnect({}/{}):",
            sock(ip, target.port),
            target.transport.as_str()
        );
        let sim = Sim::new(&desired, me.cgroup_id, &catalog);
        let c = Connect {
            addr: to_addr(ip),
            port: target.port,
            proto: target.transport.proto(),
            v4_socket: ip.is_ipv4(),
            random: 0,
            now_ns: 0,
            udp_connect: false,
        };
        let result = decide::classify(&sim, &c);
        for (i, step) in sim.trace.borrow().iter().enumerate() {
            let _ = writeln!(out, "  {}. {step}", i + 1);
        }
        let verdict = match result {
            Ok(Outcome::Untouched) => {
                "untouched (excluded destination, or DNS to the agent's proxy)".to_owned()
            }
            Ok(Outcome::Dns(b)) => format!(
                "DNS query: redirected to the agent's DNS proxy at {}",
                sock(from_addr(&b.addr), b.port)
            ),
            Err(e) => format!("program error ({e:?}): the failure verdict applies"),
            Ok(Outcome::Decided(d)) => {
                let what = match d.action {
                    Action::Allow => "allowed as-is".to_owned(),
                    Action::Rewrite => {
                        let sv = sim.desired.services.get(&ServiceKey {
                            addr: c.addr,
                            view_id: d.workload.view_id,
                            port: c.port,
                            proto: c.proto,
                            _pad: 0,
                        });
                        match sv.and_then(|t| t.set.as_ref()) {
                            Some(set) => format!(
                                "rewritten to one of {}, picked at random per connection",
                                sim.describe_set(sim.set_ids[set])
                            ),
                            None => format!(
                                "rewritten to {}:{}",
                                from_addr(&d.backend.addr),
                                d.backend.port
                            ),
                        }
                    }
                    Action::Deny => "DENIED: connect() fails with EPERM".to_owned(),
                    Action::Audit => {
                        "allowed by audit mode (would be denied); logged as audit".to_owned()
                    }
                };
                let service = if d.service_id == 0 {
                    match d.reason {
                        Reason::AllowAny => "PassthroughCluster".to_owned(),
                        Reason::ClusterInternal => "cluster-internal".to_owned(),
                        _ => "BlackHoleCluster".to_owned(),
                    }
                } else {
                    catalog
                        .service(d.service_id)
                        .map_or_else(String::new, |s| s.host.clone())
                };
                format!(
                    "{what}\n  destination_service={service} match={} reason={}",
                    d.matched.label(),
                    d.reason.label()
                )
            }
        };
        let _ = writeln!(out, "  verdict: {verdict}");
    }
    Ok(out)
}

/// One resolution round of every DNS endpoint name (empty when it fails).
fn resolve_now(config: &Config, registry: &Registry) -> crate::dns::resolver::Resolved {
    use crate::dns::resolver::{HickoryResolve, Tracker};
    let names = crate::dataplane::compile::dns_names(&registry.services);
    if names.is_empty() {
        return Default::default();
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Default::default();
    };
    rt.block_on(async {
        let Ok(r) = HickoryResolve::new(&config.resolver.upstream, config.resolver.timeout) else {
            return Default::default();
        };
        let mut t = Tracker::new(config.resolver.settings);
        t.set_names(&names, std::time::Instant::now());
        let metrics = crate::telemetry::metrics::Metrics::new();
        crate::dns::resolver::refresh(&r, &mut t, &metrics).await;
        t.resolved()
    })
}

/// What the agent's DNS proxy would answer for `host` in this view (SPEC §7.5).
fn dns_answer(
    out: &mut String,
    config: &Config,
    registry: &Registry,
    ns: &str,
    sidecar: Option<&crate::registry::scope::SidecarScope>,
    host: &str,
) -> Vec<IpAddr> {
    let key = crate::registry::host_key(host);
    let in_view = view(&registry.services, ns, sidecar, &config.default_export_to);
    let exact = in_view.iter().find(|(s, _)| s.host_key == key);
    match exact {
        Some((s, _)) => {
            let vips: Vec<IpAddr> = s.effective_vips().copied().collect();
            if vips.is_empty() {
                let _ = writeln!(
                    out,
                    "DNS: {host} is {} in namespace {} ({} resolution, no VIP): the query goes upstream",
                    s.host,
                    s.namespace,
                    s.resolution.as_str()
                );
            } else {
                let list: Vec<String> = vips.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "DNS: {host} is a host of namespace {} ({}): the agent answers {}",
                    s.namespace,
                    s.resolution.as_str(),
                    list.join(", ")
                );
            }
            vips
        }
        None => {
            let _ = writeln!(
                out,
                "DNS: {host} is not a host in this workload's view: the query goes upstream, and \
                 connections to the answer are classified by address"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("api.example.com:443").unwrap(),
            Target {
                host: "api.example.com".into(),
                port: 443,
                transport: Transport::Tcp
            }
        );
        assert_eq!(
            parse_target("[2001:2::1]:53/udp").unwrap().host,
            "2001:2::1"
        );
        assert_eq!(
            parse_target("10.0.0.1:53/udp").unwrap().transport,
            Transport::Udp
        );
        assert!(parse_target("nohost").is_err());
        assert!(parse_target("a:1/sctp").is_err());
    }
}
