//! The agent's own configuration file (the "mesh config"): outbound policy, where
//! to attach, which cgroups are workloads, where the ServiceEntry YAML lives.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// Errors reading the agent configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// Mesh-wide outbound policy for destinations not in the registry.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Istio's default: unknown destinations pass untouched.
    #[default]
    AllowAny,
    /// Unknown destinations are refused with EPERM.
    RegistryOnly,
}

impl OutboundMode {
    pub fn label(self) -> &'static str {
        match self {
            Self::AllowAny => "ALLOW_ANY",
            Self::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
}

/// One workload: a cgroup whose sockets are enforced, and who it is.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadConfig {
    /// cgroup v2 directory, absolute or relative to `cgroupPath`.
    pub cgroup: PathBuf,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The workload's IP (used for DNS and traffic attribution).
    #[serde(default)]
    pub ip: Option<IpAddr>,
}

/// The file as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    outbound_traffic_policy: OutboundTrafficPolicy,
    cgroup_path: Option<PathBuf>,
    service_entry_dir: Option<PathBuf>,
    #[serde(default)]
    workloads: Vec<WorkloadConfig>,
    excluded_cidrs: Option<Vec<String>>,
    #[serde(default)]
    cluster_cidrs: Vec<String>,
    #[serde(default)]
    fail_open: bool,
    #[serde(default)]
    audit: bool,
    metrics_address: Option<SocketAddr>,
}

/// The configuration the agent runs with, paths resolved and defaults applied.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub outbound: OutboundMode,
    /// Where the programs attach: every socket below it is inspected, only workload
    /// cgroups' sockets are enforced.
    pub cgroup_path: PathBuf,
    /// Directory of ServiceEntry YAML (`*.yaml`, `*.yml`), read recursively.
    pub service_entry_dir: PathBuf,
    pub workloads: Vec<WorkloadConfig>,
    /// Never enforced nor counted (SPEC §7.1 `excludedCidrs`).
    pub excluded_cidrs: Vec<IpNet>,
    /// Allowed as `cluster-internal` after the registry steps.
    pub cluster_cidrs: Vec<IpNet>,
    /// Internal program errors let the connection through instead of refusing it.
    pub fail_open: bool,
    /// REGISTRY_ONLY denials are reported as `audit` and allowed.
    pub audit: bool,
    /// Prometheus `/metrics`, `/healthz`, `/readyz`; none when absent.
    pub metrics_address: Option<SocketAddr>,
}

/// Loopback and link-local: the node talking to itself is never enforced.
pub const DEFAULT_EXCLUDED: &[&str] = &["127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10"];

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let cgroup_path = match raw.cgroup_path {
            Some(p) => p,
            None => cgroup2_mount().ok_or_else(|| {
                invalid(
                    "cgroupPath",
                    "not set and no cgroup2 mount found in /proc/mounts".into(),
                )
            })?,
        };
        let service_entry_dir = base.join(
            raw.service_entry_dir
                .unwrap_or_else(|| PathBuf::from("serviceentries")),
        );
        let parse_cidrs = |field: &str, list: &[String]| -> Result<Vec<IpNet>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| parse_net(s).map_err(|e| invalid(&format!("{field}[{i}]"), e)))
                .collect()
        };
        let excluded_cidrs = match &raw.excluded_cidrs {
            Some(list) => parse_cidrs("excludedCidrs", list)?,
            None => {
                let defaults: Vec<String> =
                    DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect();
                parse_cidrs("excludedCidrs", &defaults)?
            }
        };
        let cluster_cidrs = parse_cidrs("clusterCidrs", &raw.cluster_cidrs)?;
        let mut workloads = raw.workloads;
        let mut seen = std::collections::BTreeSet::new();
        for (i, w) in workloads.iter_mut().enumerate() {
            if w.namespace.is_empty() || w.name.is_empty() {
                return Err(invalid(
                    &format!("workloads[{i}]"),
                    "namespace and name are required".into(),
                ));
            }
            if w.cgroup.is_relative() {
                w.cgroup = cgroup_path.join(&w.cgroup);
            }
            if !seen.insert(w.cgroup.clone()) {
                return Err(invalid(
                    &format!("workloads[{i}].cgroup"),
                    format!("{} is listed twice", w.cgroup.display()),
                ));
            }
        }
        Ok(Config {
            path: path.to_owned(),
            outbound: raw.outbound_traffic_policy.mode,
            cgroup_path,
            service_entry_dir,
            workloads,
            excluded_cidrs,
            cluster_cidrs,
            fail_open: raw.fail_open,
            audit: raw.audit,
            metrics_address: raw.metrics_address,
        })
    }
}

/// An IP (as a host prefix) or a CIDR.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    s.parse::<IpNet>()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_config_and_resolves_paths() {
        let text = r#"
outboundTrafficPolicy: {mode: REGISTRY_ONLY}
cgroupPath: /sys/fs/cgroup/unified/egress-test
serviceEntryDir: entries
workloads:
  - cgroup: pod-a
    namespace: shop
    name: frontend
    labels: {app: web}
    ip: 198.18.0.2
  - cgroup: /sys/fs/cgroup/unified/other
    namespace: ops
    name: batch
clusterCidrs: [10.96.0.0/12]
"#;
        let c = Config::parse(Path::new("/etc/egress/agent.yaml"), text).unwrap();
        assert_eq!(c.outbound, OutboundMode::RegistryOnly);
        assert_eq!(c.service_entry_dir, Path::new("/etc/egress/entries"));
        assert_eq!(
            c.workloads[0].cgroup,
            Path::new("/sys/fs/cgroup/unified/egress-test/pod-a")
        );
        assert_eq!(
            c.workloads[1].cgroup,
            Path::new("/sys/fs/cgroup/unified/other")
        );
        assert_eq!(c.workloads[0].ip, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(c.excluded_cidrs.len(), DEFAULT_EXCLUDED.len());
        assert_eq!(
            c.cluster_cidrs,
            vec!["10.96.0.0/12".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn default_policy_is_allow_any() {
        let c = Config::parse(Path::new("a.yaml"), "cgroupPath: /x\n").unwrap();
        assert_eq!(c.outbound, OutboundMode::AllowAny);
    }

    #[test]
    fn typo_is_rejected_with_the_field() {
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\noutbondTrafficPolicy: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a.yaml"), "{err}");
        assert!(err.contains("outbondTrafficPolicy"), "{err}");
    }

    #[test]
    fn bad_cidr_names_the_field() {
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\nclusterCidrs: [10.0.0.0/99]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("clusterCidrs[0]"), "{err}");
    }

    #[test]
    fn bad_mode_is_rejected() {
        let err = Config::parse(
            Path::new("a.yaml"),
            "cgroupPath: /x\noutboundTrafficPolicy: {mode: DENY}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("DENY"), "{err}");
    }
}
