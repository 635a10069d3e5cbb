//! The accepted configuration: the last good version of every resource. A reload
//! replaces what validates, keeps the previous version of what turned invalid
//! ("stale"), drops what was deleted, and never loses a resource because its file
//! is mid-write.
//!
//! Resources are kept converted (a ServiceEntry as its registry Services, a
//! Sidecar as its scope), not as parsed YAML: the raw specs are dropped once
//! validated, which keeps a 100 000-entry registry small. Files are re-read only
//! when they change ([`FileCache`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::istio::validate::{self, Context};
use crate::istio::validate_traffic;
use crate::istio::{self, Documents, Finding, Kind, Level, Resource};
use crate::registry::scope::SidecarScope;
use crate::registry::{self, Service};

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

/// What a resource contributes once accepted.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A ServiceEntry: one Service per host.
    Services(Vec<Arc<Service>>),
    Sidecar(Arc<SidecarScope>),
    /// DestinationRules and VirtualServices: validated, not enforced.
    Validated,
}

/// One resource of one read.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: Id,
    pub file: Arc<Path>,
    pub valid: bool,
    pub payload: Payload,
}

/// One read of the configuration directory.
#[derive(Debug, Default)]
pub struct Read {
    pub entries: Vec<Arc<Entry>>,
    /// Every finding: documents that are not resources, and every resource's.
    pub findings: Vec<Finding>,
    /// Files that could not be read or parsed at all.
    pub broken_files: Vec<PathBuf>,
    /// Documents that did not even parse into a resource (rejections too).
    pub unparsed: usize,
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

/// Validates and converts parsed documents.
pub fn read_documents(docs: &Documents, ctx: &Context) -> Read {
    let mut read = Read::default();
    read_into(docs, ctx, &mut read, &mut None);
    read
}

/// Adds `docs` to `read`; `last` shares one path allocation across a file.
fn read_into(docs: &Documents, ctx: &Context, read: &mut Read, last: &mut Option<Arc<Path>>) {
    read.findings.extend(docs.findings.iter().cloned());
    read.broken_files.extend(docs.broken_files.iter().cloned());
    // Documents that never became a resource; those whose identity is known
    // (`failed`) are entries below.
    read.unparsed += docs
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .count()
        .saturating_sub(docs.failed.len());
    let mut push =
        |id: Id, file: &Path, findings: Option<Vec<Finding>>, payload: &dyn Fn() -> Payload| {
            // None: the resource did not parse (its findings are the document's).
            let valid = findings
                .as_ref()
                .is_some_and(|f| !f.iter().any(|f| f.level == Level::Error));
            let file = match &*last {
                Some(p) if &**p == file => p.clone(),
                _ => {
                    let p: Arc<Path> = Arc::from(file);
                    *last = Some(p.clone());
                    p
                }
            };
            read.entries.push(Arc::new(Entry {
                id,
                file,
                valid,
                payload: if valid { payload() } else { Payload::Validated },
            }));
            read.findings.extend(findings.into_iter().flatten());
        };
    // Known resources whose content did not parse: invalid entries, so the
    // store keeps their last good version (their findings are in `docs`).
    for (kind, namespace, name, file) in &docs.failed {
        push(
            (*kind, namespace.clone(), name.clone()),
            file,
            None,
            &|| Payload::Validated,
        );
    }
    for r in &docs.service_entries {
        // Built with the exact length: these vectors live as long as the entry.
        let convert = || {
            let converted = registry::convert(r);
            let mut services = Vec::with_capacity(converted.len());
            services.extend(converted.into_iter().map(Arc::new));
            Payload::Services(services)
        };
        push(
            id(Kind::ServiceEntry, r),
            &r.source.file,
            Some(validate::service_entry(r, ctx)),
            &convert,
        );
    }
    for r in &docs.destination_rules {
        let f = validate_traffic::destination_rule(r);
        push(
            id(Kind::DestinationRule, r),
            &r.source.file,
            Some(f),
            &|| Payload::Validated,
        );
    }
    for r in &docs.virtual_services {
        let f = validate_traffic::virtual_service(r);
        push(
            id(Kind::VirtualService, r),
            &r.source.file,
            Some(f),
            &|| Payload::Validated,
        );
    }
    for r in &docs.sidecars {
        let scope = || Payload::Sidecar(Arc::new(SidecarScope::from_resource(r)));
        push(
            id(Kind::Sidecar, r),
            &r.source.file,
            Some(validate_traffic::sidecar(r)),
            &scope,
        );
    }
}

/// A file's identity for the cache: size, modification time, inode.
type Stamp = (u64, Option<std::time::SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), m.ino()))
}

/// Each file's validated and converted resources, kept between reloads: a file
/// is read again only when its size, modification time or inode changed.
#[derive(Default)]
pub struct FileCache {
    files: BTreeMap<PathBuf, (Stamp, Arc<Read>)>,
}

/// Reads one file, validating and converting each document as soon as it is
/// parsed (the parsed YAML of a large file is never all in memory).
fn read_one(file: &Path, ctx: &Context) -> Read {
    let mut read = Read::default();
    let mut docs = Documents::default();
    let mut last = None;
    let mut drain = |d: &mut Documents| read_into(&std::mem::take(d), ctx, &mut read, &mut last);
    istio::read_file_each(file, &mut docs, &mut drain);
    drain(&mut docs);
    read.entries.shrink_to_fit();
    read
}

/// Reads one resource's text that did not come from a file (an API object,
/// JSON); `file` names it in findings.
pub fn read_text(file: &Path, text: &str, ctx: &Context) -> Read {
    let mut read = Read::default();
    let mut docs = Documents::default();
    let mut last = None;
    let mut drain = |d: &mut Documents| read_into(&std::mem::take(d), ctx, &mut read, &mut last);
    istio::parse_file_each(file, text, &mut docs, &mut drain);
    drain(&mut docs);
    read.entries.shrink_to_fit();
    read
}

impl FileCache {
    /// Reads `dir` (`*.yaml`, `*.yml`, recursively, sorted), reusing unchanged
    /// files: one shared [`Read`] per file.
    pub fn load_dir(&mut self, dir: &Path, ctx: &Context) -> std::io::Result<Vec<Arc<Read>>> {
        let files = istio::yaml_files(dir)?;
        self.files.retain(|p, _| files.contains(p));
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let st = stamp(&file);
            let cached = matches!((st, self.files.get(&file)), (Some(a), Some((b, _))) if a == *b);
            if !cached {
                let read = Arc::new(read_one(&file, ctx));
                match st {
                    Some(st) if read.broken_files.is_empty() => {
                        self.files.insert(file.clone(), (st, read.clone()));
                    }
                    // Not cached: read again next time.
                    _ => {
                        self.files.remove(&file);
                    }
                }
                out.push(read);
                continue;
            }
            out.push(self.files[&file].1.clone());
        }
        Ok(out)
    }
}

/// The last good version of each resource.
#[derive(Debug, Default)]
pub struct Store {
    pub entries: BTreeMap<Id, Arc<Entry>>,
}

impl Store {
    /// Applies a fresh read of the configuration (one [`Read`] per file).
    pub fn apply(&mut self, reads: &[Arc<Read>]) -> LoadReport {
        let mut report = LoadReport {
            findings: reads
                .iter()
                .flat_map(|r| r.findings.iter().cloned())
                .collect(),
            ..LoadReport::default()
        };
        let mut next = BTreeMap::new();
        let mut loaded = 0;
        for e in reads.iter().flat_map(|r| &r.entries) {
            if e.valid {
                loaded += 1;
                next.insert(e.id.clone(), e.clone());
            } else if let Some(old) = self.entries.get(&e.id) {
                report.stale.push(e.id.clone());
                next.insert(e.id.clone(), old.clone());
            } else {
                report.rejected.push(e.id.clone());
            }
        }
        // Resources of a file that cannot be read now are kept as they were.
        let broken: Vec<&PathBuf> = reads.iter().flat_map(|r| &r.broken_files).collect();
        for (key, old) in &self.entries {
            if !next.contains_key(key) && broken.iter().any(|f| f.as_path() == &*old.file) {
                report.stale.push(key.clone());
                next.insert(key.clone(), old.clone());
            }
        }
        self.entries = next;
        report.counts = Counts {
            loaded,
            rejected: report.rejected.len() + reads.iter().map(|r| r.unparsed).sum::<usize>(),
            stale: report.stale.len(),
        };
        report
    }

    /// Applies parsed documents (validating them): for tests and one-shot tools.
    pub fn load(&mut self, docs: &Documents, ctx: &Context) -> LoadReport {
        self.apply(&[Arc::new(read_documents(docs, ctx))])
    }

    /// Every accepted service (unmerged).
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.entries.values().flat_map(|e| match &e.payload {
            Payload::Services(s) => s.as_slice(),
            _ => &[],
        })
    }

    /// Every accepted Sidecar.
    pub fn sidecars(&self) -> impl Iterator<Item = &Arc<SidecarScope>> {
        self.entries.values().filter_map(|e| match &e.payload {
            Payload::Sidecar(s) => Some(s),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::parse_file;

    fn docs(file: &str, text: &str) -> Documents {
        let mut d = Documents::default();
        parse_file(Path::new(file), text, &mut d);
        d
    }

    const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: ns}\n\
        spec: {hosts: [a.example], addresses: [240.240.1.1], resolution: STATIC, ports: [{number: 80, name: http}]}\n";

    fn counts(loaded: usize, rejected: usize, stale: usize) -> Counts {
        Counts {
            loaded,
            rejected,
            stale,
        }
    }

    fn vips(s: &Store) -> Vec<String> {
        s.services()
            .flat_map(|x| x.vips.iter().map(ToString::to_string))
            .collect()
    }

    /// Every kind of error in a resource keeps its last good version: one
    /// guarantee, whatever failed.
    #[test]
    fn every_kind_of_error_keeps_the_last_good_version() {
        let other = GOOD
            .replace("name: a,", "name: b,")
            .replace("a.example", "b.example")
            .replace("240.240.1.1", "240.240.1.2");
        let both = format!("{GOOD}---\n{other}");
        let broken: Vec<(&str, String)> = vec![
            (
                "unknown field",
                GOOD.replace("resolution: STATIC", "resolution: STATIC, resolutoin: DNS"),
            ),
            (
                "wrong type",
                GOOD.replace("addresses: [240.240.1.1]", "addresses: 240"),
            ),
            ("bad YAML", GOOD.replace("spec: {", "spec: {{")),
            ("Istio rule", GOOD.replace("name: http", "name: Bad_Name")),
            (
                "wrong apiVersion",
                GOOD.replace("networking.istio.io/v1", "networking.istio.io/v9"),
            ),
            (
                "spec removed",
                GOOD.split("spec:").next().unwrap().to_owned(),
            ),
            ("name removed", GOOD.replace("name: a, ", "")),
            ("kind removed", GOOD.replace("kind: ServiceEntry\n", "")),
            (
                "oversize annotations",
                GOOD.replace(
                    "namespace: ns}",
                    &format!(
                        "namespace: ns, annotations: {{big: {}}}}}",
                        "x".repeat(300 * 1024)
                    ),
                ),
            ),
            (
                "nesting bomb",
                GOOD.replace(
                    "resolution: STATIC",
                    &format!(
                        "resolution: STATIC, x: {}1{}",
                        "{a: ".repeat(30_000),
                        "}".repeat(30_000)
                    ),
                ),
            ),
            ("emptied file", String::new()),
            ("comments only", "# nothing here\n".to_owned()),
            (
                "oversize document",
                GOOD.replace(
                    "resolution: STATIC",
                    &format!(
                        "resolution: STATIC, description: {}",
                        "x".repeat(1600 * 1024)
                    ),
                ),
            ),
        ];
        for (what, bad) in broken {
            let mut s = Store::default();
            let ctx = Context::default();
            assert_eq!(s.load(&docs("a.yaml", &both), &ctx).counts, counts(2, 0, 0));
            // The broken version of `a` next to an unchanged `b`; an emptied
            // file is the whole file.
            let emptied = bad.trim_start().is_empty() || bad.trim_start().starts_with('#');
            let text = if emptied {
                bad.clone()
            } else {
                format!("{bad}\n---\n{other}")
            };
            let started = std::time::Instant::now();
            let report = s.load(&docs("a.yaml", &text), &ctx);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{what}: parsed for {:?}",
                started.elapsed()
            );
            let mut v = vips(&s);
            v.sort();
            assert_eq!(
                v,
                ["240.240.1.1", "240.240.1.2"],
                "{what}: {:?}",
                report.findings
            );
            if emptied {
                continue;
            }
            assert!(
                report.findings.iter().any(|f| f.level == Level::Error),
                "{what}: no error reported"
            );
            let f = report
                .findings
                .iter()
                .find(|f| f.level == Level::Error)
                .unwrap();
            assert_eq!(f.file, Path::new("a.yaml"), "{what}");
        }
    }

    #[test]
    fn invalid_update_keeps_last_good_version_as_stale() {
        let mut s = Store::default();
        let ctx = Context::default();
        assert_eq!(s.load(&docs("a.yaml", GOOD), &ctx).counts, counts(1, 0, 0));
        let bad = GOOD.replace("name: http", "name: Bad_Name");
        assert_eq!(s.load(&docs("a.yaml", &bad), &ctx).counts, counts(0, 0, 1));
        assert_eq!(
            s.services().next().unwrap().ports[0].name,
            "http",
            "the old version"
        );
        // Fixed again: the new version replaces the stale one.
        let fixed = GOOD.replace("240.240.1.1", "240.240.1.2");
        assert_eq!(
            s.load(&docs("a.yaml", &fixed), &ctx).counts,
            counts(1, 0, 0)
        );
        assert_eq!(vips(&s), ["240.240.1.2"]);
    }

    #[test]
    fn never_valid_resource_is_rejected_and_deleted_resource_goes() {
        let mut s = Store::default();
        let ctx = Context::default();
        let bad = GOOD.replace("name: http", "name: Bad_Name");
        assert_eq!(s.load(&docs("a.yaml", &bad), &ctx).counts, counts(0, 1, 0));
        assert_eq!(s.services().count(), 0);
        s.load(&docs("a.yaml", GOOD), &ctx);
        s.load(&Documents::default(), &ctx);
        assert_eq!(s.services().count(), 0, "a deleted resource is removed");
    }

    #[test]
    fn a_file_that_does_not_parse_keeps_what_it_held() {
        let mut s = Store::default();
        let ctx = Context::default();
        s.load(&docs("a.yaml", GOOD), &ctx);
        let r = s.load(&docs("a.yaml", "apiVersion: [unclosed\n"), &ctx);
        assert_eq!(r.counts.stale, 1);
        assert_eq!(s.services().count(), 1);
    }

    #[test]
    fn file_cache_rereads_only_changed_files() {
        let dir = std::env::temp_dir().join(format!("egress-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = Context::default();
        std::fs::write(dir.join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.join("b.yaml"), GOOD.replace("name: a,", "name: b,")).unwrap();
        let mut cache = FileCache::default();
        let first = cache.load_dir(&dir, &ctx).unwrap();
        assert_eq!(first.iter().map(|r| r.entries.len()).sum::<usize>(), 2);
        // b changes (size too), a does not: a's entry is the very same allocation.
        std::fs::write(dir.join("b.yaml"), GOOD.replace("name: a,", "name: bb,")).unwrap();
        let second = cache.load_dir(&dir, &ctx).unwrap();
        assert!(
            Arc::ptr_eq(&first[0], &second[0]),
            "a.yaml was not read again"
        );
        assert!(!Arc::ptr_eq(&first[1], &second[1]));
        assert_eq!(second[1].entries[0].id.2, "bb");
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert_eq!(cache.load_dir(&dir, &ctx).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
