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
    /// The index of `config.interface`, when it exists (the interface check).
    pub ifindex: Option<u32>,
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
                ifindex: c.interface.as_deref().and_then(crate::loader::ifindex),
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
