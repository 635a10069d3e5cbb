//! Names behind the ids the kernel reports: shared read-mostly by the telemetry
//! tasks, replaced after every compile, and written to a file for `inspect`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dataplane::compile::{Ids, ServiceMeta, WorkloadMeta};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub services: std::sync::Arc<BTreeMap<u32, ServiceMeta>>,
    pub workloads: BTreeMap<u32, WorkloadMeta>,
    /// View id → `namespace` or `namespace|sidecar-namespace/sidecar-name`.
    pub views: BTreeMap<u32, String>,
}

impl Catalog {
    pub fn from_ids(ids: &Ids) -> Self {
        Self {
            services: ids.service_meta.clone(),
            workloads: ids.workload_meta.clone(),
            views: ids.view_names(),
        }
    }

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
