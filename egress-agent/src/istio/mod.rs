//! Istio resources as users write them: multi-document YAML files of
//! `networking.istio.io/{v1,v1beta1,v1alpha3}` objects, parsed into typed specs with
//! every problem reported against its file, resource and field.

pub mod hosts;
pub mod model;
pub mod traffic;
pub mod validate;
pub mod validate_traffic;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use crate::istio::traffic::{DestinationRuleSpec, SidecarSpec, VirtualServiceSpec};

/// The API versions that all serve the same schema (SPEC §0).
pub const API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Where a resource came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub doc: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.doc)
    }
}

/// `metadata` fields the agent uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    /// `creationTimestamp` in Unix seconds; 0 when absent.
    pub creation: i64,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    creation_timestamp: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Read only to bound their size (Kubernetes: 256 KiB in all).
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Kubernetes' limit on one object (etcd's request limit): a larger document is
/// rejected before it is parsed.
pub const MAX_DOCUMENT_BYTES: usize = 1536 * 1024;
/// The largest file read: many objects fit (the 100 000-entry bench registry is
/// 25 MiB); a larger file is rejected unread, its last good resources kept.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Kubernetes' limit on an object's annotations, keys and values together.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// The resource kinds the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ServiceEntry,
    DestinationRule,
    VirtualService,
    Sidecar,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ServiceEntry" => Some(Self::ServiceEntry),
            "DestinationRule" => Some(Self::DestinationRule),
            "VirtualService" => Some(Self::VirtualService),
            "Sidecar" => Some(Self::Sidecar),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Severity of a finding (SPEC §3.1). A note is neither: a field Istio accepts that
/// the agent does not enforce (an L7 setting), reported so nobody relies on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Note,
    Warning,
    Error,
}

/// One problem with one resource.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub level: Level,
    pub file: PathBuf,
    pub doc: usize,
    /// `None` when the document is not even a recognisable resource.
    pub kind: Option<String>,
    pub namespace: String,
    pub name: String,
    /// Field path, e.g. `spec.hosts[1]`.
    pub field: String,
    pub message: String,
    /// The SPEC rule id, when one applies (e.g. `SE-H3`).
    pub rule: Option<&'static str>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Note => "note",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        write!(
            f,
            "{level}: {} (document {})",
            self.file.display(),
            self.doc
        )?;
        if let Some(kind) = &self.kind {
            write!(f, ": {kind} {}/{}", self.namespace, self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(rule) = self.rule {
            write!(f, " [{rule}]")?;
        }
        Ok(())
    }
}

/// A parsed resource with its spec.
#[derive(Clone, Debug)]
pub struct Resource<S> {
    pub source: Source,
    pub api_version: String,
    pub meta: Meta,
    pub spec: S,
}

/// `spec` of a ServiceEntry (SPEC §2.1). Numbers are read wide so out-of-range
/// values reach validation with their value instead of failing to parse.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Option<ServicePort>>,
    pub location: Option<String>,
    pub resolution: Option<String>,
    pub endpoints: Option<Vec<Option<WorkloadEntry>>>,
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub number: Option<i64>,
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub target_port: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, i64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<i64>,
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `status` of a ServiceEntry: the auto-allocated addresses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryStatus {
    #[serde(default)]
    pub addresses: Vec<StatusAddress>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct StatusAddress {
    pub value: String,
    #[serde(default)]
    pub host: String,
}

/// A ServiceEntry with its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceEntry {
    pub spec: ServiceEntrySpec,
    pub status: ServiceEntryStatus,
}

/// Everything found in a set of files.
#[derive(Debug, Default)]
pub struct Documents {
    pub service_entries: Vec<Arc<Resource<ServiceEntry>>>,
    pub destination_rules: Vec<Arc<Resource<DestinationRuleSpec>>>,
    pub virtual_services: Vec<Arc<Resource<VirtualServiceSpec>>>,
    pub sidecars: Vec<Arc<Resource<SidecarSpec>>>,
    /// Problems found while reading (unparseable documents, unknown kinds).
    pub findings: Vec<Finding>,
    /// Files that could not be read or parsed as YAML at all, or hold a
    /// document whose identity cannot be read: what they held before is kept.
    pub broken_files: Vec<PathBuf>,
    /// Resources whose identity was read but not their content (a wrong type,
    /// an unknown field, a bad apiVersion): their last good version is kept.
    pub failed: Vec<(Kind, String, String, PathBuf)>,
}

impl Documents {
    /// (kind, namespace, name) of every resource read.
    pub fn identities(&self) -> Vec<(Kind, String, String)> {
        let id = |k, m: &Meta| (k, m.namespace.clone(), m.name.clone());
        self.service_entries
            .iter()
            .map(|r| id(Kind::ServiceEntry, &r.meta))
            .chain(
                self.destination_rules
                    .iter()
                    .map(|r| id(Kind::DestinationRule, &r.meta)),
            )
            .chain(
                self.virtual_services
                    .iter()
                    .map(|r| id(Kind::VirtualService, &r.meta)),
            )
            .chain(self.sidecars.iter().map(|r| id(Kind::Sidecar, &r.meta)))
            .collect()
    }
}

impl Documents {
    /// Appends another set (resources are shared, not copied).
    pub fn extend(&mut self, o: &Documents) {
        self.service_entries
            .extend(o.service_entries.iter().cloned());
        self.destination_rules
            .extend(o.destination_rules.iter().cloned());
        self.virtual_services
            .extend(o.virtual_services.iter().cloned());
        self.sidecars.extend(o.sidecars.iter().cloned());
        self.findings.extend(o.findings.iter().cloned());
        self.broken_files.extend(o.broken_files.iter().cloned());
    }
}

/// The `*.yaml`/`*.yml` files below `dir`, recursively, sorted (dot files skipped).
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files = Vec::new();
    collect_yaml(dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Reads and parses one file into `docs`; an unreadable file is a finding and a
/// broken file.
pub fn read_file(file: &Path, docs: &mut Documents) {
    read_file_each(file, docs, &mut |_| {});
}

/// [`read_file`] with [`parse_file_each`]'s callback.
pub fn read_file_each(
    file: &Path,
    docs: &mut Documents,
    after_each: &mut dyn FnMut(&mut Documents),
) {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        let source = Source {
            file: file.to_owned(),
            doc: 0,
        };
        docs.findings.push(doc_error(
            &source,
            None,
            "",
            format!(
                "file of {} MiB: over the {} MiB limit; not read (split it)",
                size >> 20,
                MAX_FILE_BYTES >> 20
            ),
        ));
        docs.broken_files.push(file.to_owned());
        return;
    }
    match std::fs::read_to_string(file) {
        Ok(text) => parse_file_each(file, &text, docs, after_each),
        Err(e) => {
            let source = Source {
                file: file.to_owned(),
                doc: 0,
            };
            docs.findings
                .push(doc_error(&source, None, "", format!("cannot read: {e}")));
            docs.broken_files.push(file.to_owned());
        }
    }
}

/// Reads every `*.yaml`/`*.yml` file below `dir` (sorted, recursively).
pub fn load_dir(dir: &Path) -> Result<Documents, std::io::Error> {
    let mut docs = Documents::default();
    for file in yaml_files(dir)? {
        read_file(&file, &mut docs);
    }
    Ok(docs)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), std::io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses one file's documents into `docs`. A bad document becomes a finding; the
/// others are still read.
pub fn parse_file(file: &Path, text: &str, docs: &mut Documents) {
    parse_file_each(file, text, docs, &mut |_| {});
}

/// As [`parse_file`], calling `after_each` once each document is in `docs`, so a
/// caller can take resources out one at a time (a large file is never held as
/// parsed YAML all at once).
pub fn parse_file_each(
    file: &Path,
    text: &str,
    docs: &mut Documents,
    after_each: &mut dyn FnMut(&mut Documents),
) {
    let refused = refused_documents(text);
    let blanked;
    let text = if refused.is_empty() {
        text
    } else {
        // Each refused document is left out (as an empty one), unparsed.
        let mut t = String::with_capacity(text.len());
        let mut from = 0;
        for (doc, start, end, why) in &refused {
            t.push_str(&text[from..*start]);
            t.push_str("--- null\n");
            from = *end;
            let source = Source {
                file: file.to_owned(),
                doc: *doc,
            };
            docs.findings
                .push(doc_error(&source, None, "", format!("{why}; not read")));
        }
        t.push_str(&text[from..]);
        docs.broken_files.push(file.to_owned());
        blanked = t;
        &blanked
    };
    let mut resources = 0;
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = Source {
            file: file.to_owned(),
            doc: i + 1,
        };
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                docs.findings
                    .push(doc_error(&source, None, "", format!("not valid YAML: {e}")));
                docs.broken_files.push(file.to_owned());
                // The YAML stream cannot be resynchronised after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        parse_document(source, value, docs);
        after_each(docs);
        resources += 1;
    }
    if resources == 0 {
        // An emptied file (or one only of comments): what it held stays until
        // the file is deleted. Writers that truncate then write pass through
        // this state.
        docs.broken_files.push(file.to_owned());
    }
}

/// The deepest nesting of flow collections (`{`, `[`) a document may have:
/// deeper ones are refused before parsing (the YAML parser's time grows with the
/// square of it; no Istio resource needs more than a few levels).
pub const MAX_FLOW_DEPTH: usize = 64;

/// Documents of `text` refused before parsing: (number from 1, start, end,
/// why). Too large ([`MAX_DOCUMENT_BYTES`]) or nested too deep
/// ([`MAX_FLOW_DEPTH`]). Documents start at a line beginning with `---` (a
/// document marker cannot appear anywhere else at the start of a line).
fn refused_documents(text: &str) -> Vec<(usize, usize, usize, String)> {
    let mut out = Vec::new();
    let mut doc = 1;
    let mut start = 0;
    let mut pos = 0;
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut finish = |doc: usize, start: usize, end: usize, deepest: usize| {
        if end - start > MAX_DOCUMENT_BYTES {
            out.push((
                doc,
                start,
                end,
                format!(
                    "document of {} KiB: over Kubernetes' {} KiB object limit",
                    (end - start) / 1024,
                    MAX_DOCUMENT_BYTES / 1024
                ),
            ));
        } else if deepest > MAX_FLOW_DEPTH {
            out.push((
                doc,
                start,
                end,
                format!("collections nested deeper than {MAX_FLOW_DEPTH} levels"),
            ));
        }
    };
    for line in text.split_inclusive('\n') {
        if pos > 0 && line.starts_with("---") {
            finish(doc, start, pos, deepest);
            doc += 1;
            start = pos;
            depth = 0;
            deepest = 0;
        }
        // Flow nesting, outside quotes and comments (a quoted scalar does not
        // span a document marker; a conservative count is enough).
        // A quote opens a scalar, and `#` a comment, only where a token
        // starts (`it's` and `a#b` are plain scalars).
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in line.chars() {
            let token_start = prev.is_whitespace() || matches!(prev, ',' | '[' | '{' | ':');
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') if token_start => quote = Some(c),
                (None, '#') if prev.is_whitespace() => break,
                (None, '{' | '[') => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                (None, '}' | ']') => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
        pos += line.len();
    }
    finish(doc, start, text.len(), deepest);
    out
}

fn doc_error(source: &Source, kind: Option<&str>, field: &str, message: String) -> Finding {
    Finding {
        level: Level::Error,
        file: source.file.clone(),
        doc: source.doc,
        kind: kind.map(str::to_owned),
        namespace: String::new(),
        name: String::new(),
        field: field.to_owned(),
        message,
        rule: None,
    }
}

fn parse_document(source: Source, value: serde_yaml::Value, docs: &mut Documents) {
    let get_str = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let api_version = get_str("apiVersion").unwrap_or_default();
    let Some(kind_str) = get_str("kind") else {
        docs.findings
            .push(doc_error(&source, None, "kind", "missing `kind`".into()));
        // Which resource this was is unknown: the file's last good ones stay.
        docs.broken_files.push(source.file.clone());
        return;
    };
    let Some(kind) = Kind::parse(&kind_str) else {
        let mut f = doc_error(
            &source,
            Some(&kind_str),
            "kind",
            format!(
                "kind {kind_str} is not read by egress (expected ServiceEntry, DestinationRule, \
                 VirtualService or Sidecar); ignored"
            ),
        );
        f.level = Level::Warning;
        docs.findings.push(f);
        return;
    };
    let meta_value = value
        .get("metadata")
        .cloned()
        .unwrap_or(serde_yaml::Value::Null);
    let raw_meta: RawMeta = if meta_value.is_null() {
        RawMeta::default()
    } else {
        match serde_path_to_error::deserialize(meta_value) {
            Ok(m) => m,
            Err(e) => {
                docs.findings.push(doc_error(
                    &source,
                    Some(&kind_str),
                    &format!("metadata.{}", e.path()),
                    e.inner().to_string(),
                ));
                docs.broken_files.push(source.file.clone());
                return;
            }
        }
    };
    let mut meta = Meta {
        name: raw_meta.name.unwrap_or_default(),
        namespace: raw_meta.namespace.unwrap_or_else(|| "default".into()),
        creation: 0,
        labels: raw_meta.labels,
    };
    let fail = |field: &str, message: String, meta: &Meta| Finding {
        level: Level::Error,
        file: source.file.clone(),
        doc: source.doc,
        kind: Some(kind_str.clone()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field: field.to_owned(),
        message,
        rule: None,
    };
    if meta.name.is_empty() {
        docs.findings
            .push(fail("metadata.name", "Required value".into(), &meta));
        docs.broken_files.push(source.file.clone());
        return;
    }
    // From here on the resource is known: whatever fails keeps its last good
    // version in force.
    let failed = (
        kind,
        meta.namespace.clone(),
        meta.name.clone(),
        source.file.clone(),
    );
    let annotations: usize = raw_meta
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotations > MAX_ANNOTATION_BYTES {
        docs.findings.push(fail(
            "metadata.annotations",
            format!(
                "annotations of {} KiB: over Kubernetes' {} KiB limit",
                annotations / 1024,
                MAX_ANNOTATION_BYTES / 1024
            ),
            &meta,
        ));
        docs.failed.push(failed);
        return;
    }
    if !API_VERSIONS.contains(&api_version.as_str()) {
        docs.findings.push(fail(
            "apiVersion",
            format!(
                "apiVersion {api_version:?} is not one of {}",
                API_VERSIONS.join(", ")
            ),
            &meta,
        ));
        docs.failed.push(failed);
        return;
    }
    if let Some(ts) = raw_meta.creation_timestamp {
        match chrono::DateTime::parse_from_rfc3339(&ts) {
            Ok(t) => meta.creation = t.timestamp(),
            Err(e) => {
                docs.findings.push(fail(
                    "metadata.creationTimestamp",
                    format!("{ts:?} is not an RFC 3339 time: {e}"),
                    &meta,
                ));
                docs.failed.push(failed);
                return;
            }
        }
    }
    let spec_value = value
        .get("spec")
        .cloned()
        .unwrap_or(serde_yaml::Value::Null);
    if spec_value.is_null() {
        let mut f = fail("spec", "Required value".into(), &meta);
        f.rule = (kind == Kind::ServiceEntry).then_some("SE-S1");
        docs.findings.push(f);
        docs.failed.push(failed);
        return;
    }
    fn typed<T: DeserializeOwned>(
        v: serde_yaml::Value,
        prefix: &str,
    ) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v)
            .map_err(|e| (format!("{prefix}.{}", e.path()), e.inner().to_string()))
    }
    fn make<S>(source: &Source, api_version: &str, meta: &Meta, spec: S) -> Arc<Resource<S>> {
        Arc::new(Resource {
            source: source.clone(),
            api_version: api_version.to_owned(),
            meta: meta.clone(),
            spec,
        })
    }
    let (src, api) = (&source, api_version.as_str());
    let result =
        match kind {
            Kind::ServiceEntry => typed(spec_value, "spec").and_then(|spec| {
                let status = match value.get("status").cloned() {
                    None | Some(serde_yaml::Value::Null) => ServiceEntryStatus::default(),
                    Some(v) => typed(v, "status")?,
                };
                docs.service_entries
                    .push(make(src, api, &meta, ServiceEntry { spec, status }));
                Ok(())
            }),
            Kind::DestinationRule => typed(spec_value, "spec")
                .map(|s| docs.destination_rules.push(make(src, api, &meta, s))),
            Kind::VirtualService => typed(spec_value, "spec")
                .map(|s| docs.virtual_services.push(make(src, api, &meta, s))),
            Kind::Sidecar => {
                typed(spec_value, "spec").map(|s| docs.sidecars.push(make(src, api, &meta, s)))
            }
        };
    if let Err((field, message)) = result {
        docs.findings.push(fail(&field, message, &meta));
        docs.failed.push(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Documents {
        let mut d = Documents::default();
        parse_file(Path::new("se.yaml"), text, &mut d);
        d
    }

    #[test]
    fn reads_all_three_api_versions_from_one_file() {
        let mut text = String::new();
        for (i, v) in API_VERSIONS.iter().enumerate() {
            text.push_str(&format!(
                "apiVersion: {v}\nkind: ServiceEntry\nmetadata: {{name: se{i}, namespace: shop}}\n\
                 spec:\n  hosts: [h{i}.example.com]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n---\n"
            ));
        }
        let d = parse(&text);
        assert!(d.findings.is_empty(), "{:?}", d.findings);
        assert_eq!(d.service_entries.len(), 3);
        assert_eq!(d.service_entries[2].meta.name, "se2");
        assert_eq!(d.service_entries[2].source.doc, 3);
        assert_eq!(d.service_entries[1].meta.namespace, "shop");
    }

    #[test]
    fn bad_document_does_not_hide_the_next_one() {
        let d = parse(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad}\n\
             spec: {hosts: [a.example], ports: [{number: seven, name: x}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: good}\n\
             spec: {hosts: [b.example]}\n",
        );
        assert_eq!(d.service_entries.len(), 1);
        assert_eq!(d.service_entries[0].meta.name, "good");
        assert_eq!(d.findings.len(), 1);
        let f = &d.findings[0];
        assert_eq!(f.name, "bad");
        assert_eq!(f.field, "spec.ports[0].number");
        assert_eq!(f.namespace, "default");
    }

    #[test]
    fn unknown_spec_field_is_an_error_naming_it() {
        let d = parse(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: x}\n\
             spec: {hosts: [a.example], adresses: [1.2.3.4]}\n",
        );
        assert!(d.service_entries.is_empty());
        assert!(
            d.findings[0].message.contains("adresses"),
            "{}",
            d.findings[0]
        );
    }

    #[test]
    fn creation_timestamp_and_status_are_read() {
        let d = parse(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {name: x, creationTimestamp: \"2024-05-01T10:00:00Z\"}\n\
             spec: {hosts: [a.example]}\n\
             status: {addresses: [{value: 240.240.0.9, host: a.example}]}\n",
        );
        let se = &d.service_entries[0];
        assert_eq!(se.meta.creation, 1714557600);
        assert_eq!(se.spec.status.addresses[0].value, "240.240.0.9");
    }

    #[test]
    fn wrong_api_version_and_missing_spec_are_errors() {
        let d = parse(
            "apiVersion: networking.istio.io/v2\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [a]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: y}\n",
        );
        assert!(d.service_entries.is_empty());
        assert_eq!(d.findings.len(), 2);
        assert_eq!(d.findings[0].field, "apiVersion");
        assert_eq!(d.findings[1].rule, Some("SE-S1"));
    }
}
