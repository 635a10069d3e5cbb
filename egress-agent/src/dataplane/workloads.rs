//! Workload identity: which cgroup (kernel side) and which IP (userspace side) is
//! which namespace/workload. Today from the static `workloads:` list.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::WorkloadConfig;

/// A workload whose cgroup exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub cgroup_id: u64,
    pub config: WorkloadConfig,
    /// `config.interface`, when it exists: its index and the node-side MACs (its
    /// own and its bridge's), for the interface check.
    pub iface: Option<Iface>,
}

/// The node side of a workload's link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub mac: [u8; 6],
    /// The MAC of the bridge the interface is a port of (its own MAC if none).
    pub bridge_mac: [u8; 6],
}

/// Looks an interface up in the agent's network namespace.
pub fn iface(name: &str) -> Option<Iface> {
    let index = crate::dataplane::loader::ifindex(name)?;
    let link = crate::dataplane::netlink::link(index).ok()?;
    let bridge_mac = link
        .master
        .and_then(|m| crate::dataplane::netlink::link(m).ok())
        .map_or(link.mac, |b| b.mac);
    Some(Iface {
        index,
        mac: link.mac,
        bridge_mac,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("workload {namespace}/{name}: cgroup {}: {source}", path.display())]
pub struct WorkloadError {
    pub namespace: String,
    pub name: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The cgroup v2 id of a cgroup directory: its inode number on cgroup2 (64-bit).
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a cgroup directory",
        ));
    }
    Ok(meta.ino())
}

/// Resolves every configured workload; those whose cgroup is missing are returned
/// as errors (and retried on the next sync), the others are enforced.
pub fn resolve(configs: &[WorkloadConfig]) -> (Vec<Workload>, Vec<WorkloadError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for c in configs {
        match cgroup_id(&c.cgroup) {
            Ok(id) => ok.push(Workload {
                cgroup_id: id,
                config: c.clone(),
                iface: c.interface.as_deref().and_then(iface),
            }),
            Err(source) => errors.push(WorkloadError {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                path: c.cgroup.clone(),
                source,
            }),
        }
    }
    (ok, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cgroup_is_reported_with_its_workload() {
        let cfg = WorkloadConfig {
            cgroup: "/nonexistent/egress-test".into(),
            namespace: "shop".into(),
            name: "web".into(),
            labels: Default::default(),
            ip: None,
            ips: vec![],
            interface: None,
            audit: false,
            untouched: false,
            allow_sockets: vec![],
        };
        let (ok, err) = resolve(&[cfg]);
        assert!(ok.is_empty());
        let msg = err[0].to_string();
        assert!(
            msg.contains("shop/web") && msg.contains("/nonexistent/egress-test"),
            "{msg}"
        );
    }

    #[test]
    fn directory_inode_is_the_id() {
        let dir = std::env::temp_dir();
        assert_eq!(
            cgroup_id(&dir).unwrap(),
            std::fs::metadata(&dir).unwrap().ino()
        );
    }
}
