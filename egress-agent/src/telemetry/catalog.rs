//! Names behind the ids the kernel reports: shared read-mostly by the telemetry
//! tasks, replaced after every compile, and written to a file for `inspect`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::OutboundMode;
use crate::istio::model::{Location, Resolution};

/// Who a service id is, for metrics, events and inspection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceMeta {
    pub namespace: String,
    pub host: String,
    pub se_name: String,
    pub location: Location,
    pub resolution: Resolution,
}

/// Who a workload id is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadMeta {
    pub namespace: String,
    pub name: String,
    pub cgroup_id: u64,
    /// The outbound policy it runs under.
    pub policy: OutboundMode,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub services: std::sync::Arc<BTreeMap<u32, ServiceMeta>>,
    pub workloads: BTreeMap<u32, WorkloadMeta>,
    /// View id → `namespace` or `namespace|sidecar-namespace/sidecar-name`.
    pub views: BTreeMap<u32, String>,
}

impl Catalog {
    pub fn service(&self, id: u32) -> Option<&ServiceMeta> {
        self.services.get(&id)
    }

    pub fn workload(&self, id: u32) -> Option<&WorkloadMeta> {
        self.workloads.get(&id)
    }

    /// Writes the catalog atomically (for `egress-agent inspect`).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("serialisable"))?;
        std::fs::rename(tmp, path)
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}
