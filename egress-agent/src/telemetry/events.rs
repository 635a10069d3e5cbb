//! Denied and audited connections, carried from the kernel on the ring buffer and
//! turned into one structured log record each.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aya::maps::{MapData, RingBuf};
use egress_common::addr::from_addr;
use egress_common::decide::transport_label;
use egress_common::{Action, Event, Layer, MatchKind, Reason};
use tokio::io::unix::AsyncFd;

use crate::telemetry::catalog::Catalog;

/// An event with its ids resolved to names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// RFC 3339 wall-clock time of the decision.
    pub time: String,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub pid: u32,
    pub process: String,
    pub cgroup_id: u64,
    pub namespace: String,
    pub workload: String,
    /// None for a refused `socket()` or `setsockopt()` (no destination yet).
    pub destination: Option<IpAddr>,
    pub port: Option<u16>,
    /// `tcp`, `udp`, `icmp`...; for a refused socket its kind (`raw`, `packet`,
    /// `icmp`, `udplite`, `sctp`, `other`); for a refused option `ip_options` or
    /// `ipv6_rthdr`.
    pub transport: &'static str,
    /// Where it was refused: `connect`, `socket`, `setsockopt`, `socket_packet`
    /// (a packet of a workload socket), `interface_packet` (a packet on the
    /// workload's interface).
    pub layer: &'static str,
    /// The registry host that matched, if any.
    pub host: Option<String>,
    #[serde(rename = "match")]
    pub matched: &'static str,
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (the clock of `bpf_ktime_get_boot_ns`).
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Decodes a raw ring-buffer record.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain data of this size; read_unaligned copes with alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Resolves an event against the catalog.
pub fn record(ev: &Event, catalog: &Catalog, now_boot_ns: u64, now: SystemTime) -> Record {
    let age = Duration::from_nanos(now_boot_ns.saturating_sub(ev.boot_ns));
    let time: chrono::DateTime<chrono::Utc> = (now - age).into();
    let comm_len = ev
        .comm
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(ev.comm.len());
    let layer = Layer::from_u8(ev.layer).unwrap_or(Layer::Connect);
    let (namespace, workload) = catalog
        .workload(ev.workload_id)
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    Record {
        time: time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        verdict: Action::from_u8(ev.action).map_or("unknown", |a| a.label()),
        reason: Reason::from_u8(ev.reason).map_or("unknown", |r| r.label()),
        pid: ev.pid,
        process: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
        cgroup_id: ev.cgroup_id,
        namespace,
        workload,
        destination: layer.has_destination().then(|| from_addr(&ev.addr)),
        port: layer.has_destination().then_some(ev.port),
        transport: transport_label(layer, u32::from(ev.family), ev.port, ev.proto),
        layer: layer.label(),
        host: (ev.service_id != 0)
            .then(|| catalog.service(ev.service_id).map(|s| s.host.clone()))
            .flatten(),
        matched: MatchKind::from_u8(ev.matched).map_or("unknown", |m| m.label()),
    }
}

/// Where access-log lines go.
pub enum Sink {
    Stdout,
    File(std::fs::File),
}

impl Sink {
    /// Opens the access log: a file (appended to) or standard output.
    pub fn open(path: Option<&std::path::Path>) -> std::io::Result<Self> {
        match path {
            None => Ok(Self::Stdout),
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Ok(Self::File(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                ))
            }
        }
    }

    /// Writes one JSON line (one write: lines of concurrent writers never mix).
    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        use std::io::Write;
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            Self::File(f) => f.write_all(&line),
        }
    }
}

/// Reads events until the ring buffer's fd fails; each becomes an access-log line
/// and a log record.
pub async fn run(
    ring: RingBuf<MapData>,
    catalog: Arc<RwLock<Catalog>>,
    sink: Arc<std::sync::Mutex<Sink>>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns it,
    // and always reports the same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let (now_boot, now) = (boot_ns(), SystemTime::now());
        while let Some(item) = ring.next() {
            let Some(ev) = decode(&item) else { continue };
            let rec = record(&ev, &catalog.read().expect("catalog lock"), now_boot, now);
            // The access log goes to its sink once, not also to the agent log.
            if let Err(e) = sink.lock().expect("sink lock").write(&rec) {
                tracing::error!("cannot write the access log: {e}");
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::catalog::WorkloadMeta;
    use egress_common::addr::to_addr;

    #[test]
    fn record_resolves_names_and_time() {
        let mut catalog = Catalog::default();
        catalog.workloads.insert(
            3,
            WorkloadMeta {
                namespace: "shop".into(),
                name: "web".into(),
                cgroup_id: 77,
                policy: crate::config::OutboundMode::RegistryOnly,
            },
        );
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let ev = Event {
            boot_ns: 5_000_000_000,
            cgroup_id: 77,
            pid: 4242,
            workload_id: 3,
            service_id: 0,
            addr: to_addr("192.0.2.1".parse().unwrap()),
            port: 22,
            proto: egress_common::PROTO_TCP,
            action: Action::Deny as u8,
            reason: Reason::RegistryOnly as u8,
            matched: 0,
            family: 4,
            comm,
            ..Event::default()
        };
        let bytes: [u8; size_of::<Event>()] = unsafe { std::mem::transmute(ev) };
        let ev = decode(&bytes).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        let r = record(&ev, &catalog, 15_000_000_000, now);
        assert_eq!(r.process, "curl");
        assert_eq!((r.namespace.as_str(), r.workload.as_str()), ("shop", "web"));
        assert_eq!(
            (r.verdict, r.reason, r.transport),
            ("denied", "registry_only", "tcp")
        );
        assert_eq!(r.destination, Some("192.0.2.1".parse::<IpAddr>().unwrap()));
        assert_eq!(r.time, "2023-11-14T22:13:20.000000Z");
        assert_eq!(r.host, None);
        assert!(decode(&bytes[..10]).is_none());
    }
}
