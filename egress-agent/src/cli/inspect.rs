//! `egress-agent inspect`: the live maps of a running agent, read from their pins
//! and named with the agent's catalog — what the kernel enforces right now.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap};
use egress_common::addr::{Addr, from_addr, is_v4_mapped};
use egress_common::*;
use serde::Serialize;

use crate::telemetry::catalog::Catalog;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no running agent for this instance: {} ({reason})", path.display())]
    NotRunning { path: PathBuf, reason: String },
    #[error("map {name}: {reason}")]
    Map { name: &'static str, reason: String },
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T, InspectError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| InspectError::NotRunning {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let map = Map::from_map_data(data).map_err(|e| InspectError::Map {
        name,
        reason: e.to_string(),
    })?;
    T::try_from(map).map_err(|e| InspectError::Map {
        name,
        reason: e.to_string(),
    })
}

fn addr(a: &Addr) -> String {
    match from_addr(a) {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

fn prefix(a: &Addr, bits_on_v6: u32) -> String {
    if is_v4_mapped(a) {
        format!("{}/{}", from_addr(a), bits_on_v6.saturating_sub(96))
    } else {
        format!("{}/{}", from_addr(a), bits_on_v6)
    }
}

fn proto(p: u8) -> &'static str {
    if p == PROTO_UDP { "udp" } else { "tcp" }
}

#[derive(Debug, Serialize)]
pub struct WorkloadRow {
    pub cgroup_id: u64,
    pub workload: String,
    pub view: String,
    pub policy: &'static str,
    pub audit: bool,
}

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub view: String,
    pub destination: String,
    pub service: String,
    pub kind: &'static str,
    pub backends: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CidrRow {
    pub view: String,
    pub cidr: String,
    pub port: String,
    pub service: String,
    pub kind: String,
    pub backends: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TrafficRow {
    pub workload: String,
    pub service: String,
    pub port: u16,
    pub transport: &'static str,
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct StatRow {
    pub workload: String,
    pub service: String,
    pub port: u16,
    pub transport: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
    pub count: u64,
}

/// Everything `inspect` shows.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub pins: PathBuf,
    /// The pid of the agent that owns the pins, when one is running. None: the
    /// pinned programs enforce the last synced state with no agent (fail
    /// static); nothing is learned or reloaded until an agent starts.
    pub owner_pid: Option<u32>,
    pub workloads: Vec<WorkloadRow>,
    pub services: Vec<ServiceRow>,
    pub cidrs: Vec<CidrRow>,
    pub policy_cidrs: Vec<(String, &'static str)>,
    pub counters: BTreeMap<&'static str, u64>,
    pub connections: Vec<StatRow>,
    pub traffic: Vec<TrafficRow>,
}

/// Reads the live maps pinned in `pins`, named with the catalog at `catalog`.
pub fn snapshot(
    pins: &Path,
    catalog: &Path,
    owner_pid: Option<u32>,
) -> Result<Snapshot, InspectError> {
    let cat = Catalog::read(catalog).unwrap_or_default();
    let view = |id: u32| {
        cat.views
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    };
    let service = |id: u32| {
        cat.service(id)
            .map(|s| format!("{}/{}", s.namespace, s.host))
            .unwrap_or_else(|| {
                if id == 0 {
                    "-".into()
                } else {
                    format!("#{id}")
                }
            })
    };
    let workload = |id: u32| {
        cat.workload(id)
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .unwrap_or_else(|| format!("#{id}"))
    };

    let wl: HashMap<MapData, u64, WorkloadValue> = open(pins, WORKLOADS_MAP)?;
    let svc: HashMap<MapData, ServiceKey, ServiceValue> = open(pins, SERVICES_MAP)?;
    let be: HashMap<MapData, BackendKey, Backend> = open(pins, BACKENDS_MAP)?;
    let cidrs: LpmTrie<MapData, CidrKey, CidrValue> = open(pins, CIDRS_MAP)?;
    let pol: LpmTrie<MapData, IpKey, PolicyCidrValue> = open(pins, POLICY_CIDRS_MAP)?;
    let stats: PerCpuHashMap<MapData, StatKey, u64> = open(pins, STATS_MAP)?;
    let counters: PerCpuArray<MapData, u64> = open(pins, COUNTERS_MAP)?;
    let traffic_map: PerCpuHashMap<MapData, TrafficKey, TrafficValue> = open(pins, TRAFFIC_MAP)?;

    let backends = |set_id: u32, slots: u16| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for slot in 0..u32::from(slots) {
            if let Ok(b) = be.get(&BackendKey { set_id, slot }, 0) {
                let s = format!("{}:{}", addr(&b.addr), b.port);
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out
    };

    let mut workloads: Vec<WorkloadRow> = wl
        .iter()
        .flatten()
        .map(|(cg, v)| {
            let unknown = cg == UNKNOWN_CGROUP;
            WorkloadRow {
                cgroup_id: cg,
                workload: if unknown {
                    "(unknown cgroups)".into()
                } else {
                    workload(v.workload_id)
                },
                view: if unknown {
                    "(empty)".into()
                } else {
                    view(v.view_id)
                },
                policy: if v.flags & WL_UNTOUCHED != 0 {
                    "untouched"
                } else if v.flags & WL_REGISTRY_ONLY != 0 {
                    "REGISTRY_ONLY"
                } else {
                    "ALLOW_ANY"
                },
                audit: v.flags & WL_AUDIT != 0,
            }
        })
        .collect();
    // The default for unknown cgroups last.
    workloads.sort_by(|a, b| {
        (a.cgroup_id == UNKNOWN_CGROUP, &a.workload)
            .cmp(&(b.cgroup_id == UNKNOWN_CGROUP, &b.workload))
    });

    let mut services: Vec<ServiceRow> = svc
        .iter()
        .flatten()
        .map(|(k, v)| ServiceRow {
            view: view(k.view_id),
            destination: format!("{}:{}/{}", addr(&k.addr), k.port, proto(k.proto)),
            service: service(v.service_id),
            kind: if v.kind == SVC_VIP { "vip" } else { "endpoint" },
            backends: if v.kind == SVC_VIP {
                backends(v.set_id, v.slots)
            } else {
                vec![]
            },
        })
        .collect();
    services.sort_by(|a, b| {
        (&a.view, &a.service, &a.destination).cmp(&(&b.view, &b.service, &b.destination))
    });

    let mut cidr_rows: Vec<CidrRow> = cidrs
        .iter()
        .flatten()
        .map(|(k, v)| {
            let bits = k.prefix_len();
            let data = k.data();
            CidrRow {
                view: view(data.view_id),
                cidr: prefix(&data.addr, bits - CIDR_FIXED_BITS),
                port: format!("{}/{}", data.port, proto(data.proto)),
                service: service(v.service_id),
                kind: if v.kind == CIDR_BALANCE {
                    "balance".into()
                } else if v.target_port != 0 {
                    format!("passthrough, port → {}", v.target_port)
                } else {
                    "passthrough".into()
                },
                backends: if v.kind == CIDR_BALANCE {
                    backends(v.set_id, v.slots)
                } else {
                    vec![]
                },
            }
        })
        .collect();
    cidr_rows.sort_by(|a, b| (&a.view, &a.cidr, &a.port).cmp(&(&b.view, &b.cidr, &b.port)));

    let policy_cidrs = pol
        .iter()
        .flatten()
        .map(|(k, v)| {
            (
                prefix(&k.data().addr, k.prefix_len()),
                if v.kind == POLICY_EXCLUDED {
                    "excluded"
                } else {
                    "cluster-internal"
                },
            )
        })
        .collect();

    let mut counter_map = BTreeMap::new();
    for c in Counter::ALL {
        if let Ok(v) = counters.get(&(c as u32), 0) {
            counter_map.insert(c.name(), v.iter().sum());
        }
    }
    let mut connections: Vec<StatRow> = stats
        .iter()
        .flatten()
        .map(|(k, v)| StatRow {
            workload: workload(k.workload_id),
            service: if k.service_id == 0 {
                match Reason::from_u8(k.reason) {
                    Some(Reason::AllowAny) => "PassthroughCluster".into(),
                    Some(Reason::ClusterInternal) => "cluster-internal".into(),
                    _ => "BlackHoleCluster".into(),
                }
            } else {
                service(k.service_id)
            },
            port: k.port,
            transport: proto(k.proto),
            decision: Action::from_u8(k.action).map_or("?", |a| a.label()),
            reason: Reason::from_u8(k.reason).map_or("?", |r| r.label()),
            count: v.iter().sum(),
        })
        .collect();
    connections
        .sort_by(|a, b| (&a.workload, &a.service, a.port).cmp(&(&b.workload, &b.service, b.port)));

    let mut traffic: Vec<TrafficRow> = traffic_map
        .iter()
        .flatten()
        .map(|(k, v)| TrafficRow {
            workload: workload(k.workload_id),
            service: if k.service_id == 0 {
                "PassthroughCluster".into()
            } else {
                service(k.service_id)
            },
            port: k.port,
            transport: proto(k.proto),
            direction: if k.dir == DIR_SENT {
                "sent"
            } else {
                "received"
            },
            packets: v.iter().map(|x| x.packets).sum(),
            bytes: v.iter().map(|x| x.bytes).sum(),
        })
        .collect();
    traffic.sort_by(|a, b| {
        (&a.workload, &a.service, a.port, a.direction).cmp(&(
            &b.workload,
            &b.service,
            b.port,
            b.direction,
        ))
    });
    Ok(Snapshot {
        traffic,
        owner_pid,
        pins: pins.to_owned(),
        workloads,
        services,
        cidrs: cidr_rows,
        policy_cidrs,
        counters: counter_map,
        connections,
    })
}

pub fn render_text(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "live maps pinned at {}", s.pins.display());
    match s.owner_pid {
        Some(pid) => {
            let _ = writeln!(o, "owned by the running agent, pid {pid}\n");
        }
        None => {
            let _ = writeln!(
                o,
                "no agent is running: the pinned programs enforce the last synced state \
                 (fail static); `egress-agent run` adopts them, `egress-agent uninstall` removes them\n"
            );
        }
    }
    let _ = writeln!(o, "workloads ({}):", WORKLOADS_MAP);
    for w in &s.workloads {
        let audit = if w.audit { ", audit" } else { "" };
        let _ = writeln!(
            o,
            "  cgroup {:<8} {:<28} view {:<24} {}{audit}",
            w.cgroup_id, w.workload, w.view, w.policy
        );
    }
    let _ = writeln!(
        o,
        "\nVIPs and endpoints ({}, {}):",
        SERVICES_MAP, BACKENDS_MAP
    );
    for r in &s.services {
        let to = if r.kind == "vip" {
            format!("→ {}", r.backends.join(", "))
        } else {
            "allowed as-is".into()
        };
        let _ = writeln!(
            o,
            "  [{}] {:<32} {:<8} {:<36} {to}",
            r.view, r.destination, r.kind, r.service
        );
    }
    let _ = writeln!(o, "\nCIDRs ({}):", CIDRS_MAP);
    for r in &s.cidrs {
        let to = if r.backends.is_empty() {
            String::new()
        } else {
            format!(" → {}", r.backends.join(", "))
        };
        let _ = writeln!(
            o,
            "  [{}] {:<24} {:<10} {:<36} {}{to}",
            r.view, r.cidr, r.port, r.service, r.kind
        );
    }
    let _ = writeln!(o, "\nexcluded and cluster CIDRs ({}):", POLICY_CIDRS_MAP);
    for (c, k) in &s.policy_cidrs {
        let _ = writeln!(o, "  {c:<24} {k}");
    }
    let _ = writeln!(o, "\nconnections ({}):", STATS_MAP);
    for c in &s.connections {
        let _ = writeln!(
            o,
            "  {:<28} → {:<36} {:>5}/{} {:<9} {:<16} {}",
            c.workload, c.service, c.port, c.transport, c.decision, c.reason, c.count
        );
    }
    let _ = writeln!(o, "\ntraffic ({}):", TRAFFIC_MAP);
    for t in &s.traffic {
        let _ = writeln!(
            o,
            "  {:<28} → {:<36} {:>5}/{} {:<8} {:>10} packets {:>14} bytes",
            t.workload, t.service, t.port, t.transport, t.direction, t.packets, t.bytes
        );
    }
    let _ = writeln!(o, "\nkernel counters ({}):", COUNTERS_MAP);
    for (k, v) in &s.counters {
        let _ = writeln!(o, "  {k:<22} {v}");
    }
    o
}
