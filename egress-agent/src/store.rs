//! The accepted configuration: the last good version of every resource. A reload
//! replaces what validates, keeps the previous version of what turned invalid
//! ("stale"), drops what was deleted, and never loses a resource because its file
//! is mid-write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::istio::{
    DestinationRuleSpec, Documents, Finding, Kind, Level, Resource, ServiceEntry, SidecarSpec,
    VirtualServiceSpec,
};
use crate::validate::{self, Context};
use crate::validate_traffic;

/// A resource's identity.
pub type Id = (Kind, String, String);

/// Counts after a load (SPEC §3.1; issue: loaded, rejected, stale).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Valid now and applied.
    pub loaded: usize,
    /// Invalid, never applied.
    pub rejected: usize,
    /// Invalid now; the last good version stays applied.
    pub stale: usize,
}

/// The result of one load.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub findings: Vec<Finding>,
    pub counts: Counts,
    /// Identities whose last good version is kept.
    pub stale: Vec<Id>,
    /// Rejected resources (for the rejected counter).
    pub rejected: Vec<Id>,
}

/// The last good version of each resource.
#[derive(Debug, Default)]
pub struct Store {
    pub service_entries: BTreeMap<Id, Resource<ServiceEntry>>,
    pub destination_rules: BTreeMap<Id, Resource<DestinationRuleSpec>>,
    pub virtual_services: BTreeMap<Id, Resource<VirtualServiceSpec>>,
    pub sidecars: BTreeMap<Id, Resource<SidecarSpec>>,
}

fn id<S>(kind: Kind, r: &Resource<S>) -> Id {
    (kind, r.meta.namespace.clone(), r.meta.name.clone())
}

/// Validates every resource of `docs`.
pub fn validate_all(docs: &Documents, ctx: &Context) -> Vec<(Id, Vec<Finding>)> {
    let mut out = Vec::new();
    for r in &docs.service_entries {
        out.push((id(Kind::ServiceEntry, r), validate::service_entry(r, ctx)));
    }
    for r in &docs.destination_rules {
        out.push((
            id(Kind::DestinationRule, r),
            validate_traffic::destination_rule(r),
        ));
    }
    for r in &docs.virtual_services {
        out.push((
            id(Kind::VirtualService, r),
            validate_traffic::virtual_service(r),
        ));
    }
    for r in &docs.sidecars {
        out.push((id(Kind::Sidecar, r), validate_traffic::sidecar(r)));
    }
    out
}

/// One kind's merge of new documents into the last good set.
fn merge_kind<S: Clone>(
    kind: Kind,
    good: &mut BTreeMap<Id, Resource<S>>,
    new: &[Resource<S>],
    invalid: &BTreeMap<Id, ()>,
    broken_files: &[PathBuf],
    report: &mut LoadReport,
) {
    let mut next = BTreeMap::new();
    for r in new {
        let key = id(kind, r);
        if invalid.contains_key(&key) {
            if let Some(old) = good.get(&key) {
                report.stale.push(key.clone());
                next.insert(key, old.clone());
            } else {
                report.rejected.push(key);
            }
        } else {
            next.insert(key, r.clone());
        }
    }
    // Resources of a file that cannot be read now are kept as they were.
    for (key, old) in good.iter() {
        if !next.contains_key(key) && broken_files.contains(&old.source.file) {
            report.stale.push(key.clone());
            next.insert(key.clone(), old.clone());
        }
    }
    *good = next;
}

impl Store {
    /// Applies a fresh read of the configuration.
    pub fn load(&mut self, docs: &Documents, ctx: &Context) -> LoadReport {
        let mut report = LoadReport {
            findings: docs.findings.clone(),
            ..LoadReport::default()
        };
        let mut invalid = BTreeMap::new();
        for (key, findings) in validate_all(docs, ctx) {
            if findings.iter().any(|f| f.level == Level::Error) {
                invalid.insert(key, ());
            }
            report.findings.extend(findings);
        }
        let broken = &docs.broken_files;
        merge_kind(
            Kind::ServiceEntry,
            &mut self.service_entries,
            &docs.service_entries,
            &invalid,
            broken,
            &mut report,
        );
        merge_kind(
            Kind::DestinationRule,
            &mut self.destination_rules,
            &docs.destination_rules,
            &invalid,
            broken,
            &mut report,
        );
        merge_kind(
            Kind::VirtualService,
            &mut self.virtual_services,
            &docs.virtual_services,
            &invalid,
            broken,
            &mut report,
        );
        merge_kind(
            Kind::Sidecar,
            &mut self.sidecars,
            &docs.sidecars,
            &invalid,
            broken,
            &mut report,
        );
        // Documents that did not even parse into a resource are rejections too.
        let unparsed = docs
            .findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count();
        report.counts = Counts {
            loaded: docs.identities().len() - invalid.len(),
            rejected: report.rejected.len() + unparsed,
            stale: report.stale.len(),
        };
        report
    }

    pub fn service_entry_list(&self) -> Vec<&Resource<ServiceEntry>> {
        self.service_entries.values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::parse_file;
    use std::path::Path;

    fn docs(file: &str, text: &str) -> Documents {
        let mut d = Documents::default();
        parse_file(Path::new(file), text, &mut d);
        d
    }

    const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: ns}\n\
        spec: {hosts: [a.example], addresses: [240.240.1.1], resolution: STATIC, ports: [{number: 80, name: http}]}\n";

    #[test]
    fn invalid_update_keeps_last_good_version_as_stale() {
        let mut s = Store::default();
        let ctx = Context::default();
        let r = s.load(&docs("a.yaml", GOOD), &ctx);
        assert_eq!(
            r.counts,
            Counts {
                loaded: 1,
                rejected: 0,
                stale: 0
            }
        );
        let bad = GOOD.replace("name: http", "name: Bad_Name");
        let r = s.load(&docs("a.yaml", &bad), &ctx);
        assert_eq!(
            r.counts,
            Counts {
                loaded: 0,
                rejected: 0,
                stale: 1
            }
        );
        let kept = &s.service_entries[&(Kind::ServiceEntry, "ns".into(), "a".into())];
        assert_eq!(
            kept.spec.spec.ports[0].as_ref().unwrap().name.as_deref(),
            Some("http")
        );
        // Fixed again: the new version replaces the stale one.
        let fixed = GOOD.replace("240.240.1.1", "240.240.1.2");
        let r = s.load(&docs("a.yaml", &fixed), &ctx);
        assert_eq!(
            r.counts,
            Counts {
                loaded: 1,
                rejected: 0,
                stale: 0
            }
        );
        let now = &s.service_entries[&(Kind::ServiceEntry, "ns".into(), "a".into())];
        assert_eq!(now.spec.spec.addresses, vec!["240.240.1.2"]);
    }

    #[test]
    fn never_valid_resource_is_rejected_and_deleted_resource_goes() {
        let mut s = Store::default();
        let ctx = Context::default();
        let bad = GOOD.replace("name: http", "name: Bad_Name");
        let r = s.load(&docs("a.yaml", &bad), &ctx);
        assert_eq!(
            r.counts,
            Counts {
                loaded: 0,
                rejected: 1,
                stale: 0
            }
        );
        assert!(s.service_entries.is_empty());
        s.load(&docs("a.yaml", GOOD), &ctx);
        s.load(&Documents::default(), &ctx);
        assert!(
            s.service_entries.is_empty(),
            "a deleted resource is removed"
        );
    }

    #[test]
    fn a_file_that_does_not_parse_keeps_what_it_held() {
        let mut s = Store::default();
        let ctx = Context::default();
        s.load(&docs("a.yaml", GOOD), &ctx);
        let r = s.load(&docs("a.yaml", "apiVersion: [unclosed\n"), &ctx);
        assert_eq!(r.counts.stale, 1);
        assert_eq!(s.service_entries.len(), 1);
    }
}
