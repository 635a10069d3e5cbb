//! Names behind the ids the kernel reports: shared read-mostly by the telemetry
//! tasks, replaced after every compile.

use std::collections::BTreeMap;

use crate::compile::{Ids, ServiceMeta, WorkloadMeta};

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub services: BTreeMap<u32, ServiceMeta>,
    pub workloads: BTreeMap<u32, WorkloadMeta>,
}

impl Catalog {
    pub fn from_ids(ids: &Ids) -> Self {
        Self {
            services: ids.service_meta.clone(),
            workloads: ids.workload_meta.clone(),
        }
    }

    pub fn service(&self, id: u32) -> Option<&ServiceMeta> {
        self.services.get(&id)
    }

    pub fn workload(&self, id: u32) -> Option<&WorkloadMeta> {
        self.workloads.get(&id)
    }
}
