//! `egress-agent validate PATH...`: Istio's verdict on every resource in the files,
//! as text or JSON. Exit status 0 when nothing is invalid, 1 otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::istio::validate::Context;
use crate::istio::{self, Documents, Finding, Level};
use crate::registry::store::validate_all;

/// One resource's verdict.
#[derive(Debug, Serialize)]
pub struct ResourceVerdict {
    pub file: PathBuf,
    pub doc: usize,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `valid`, `warning` (valid with warnings) or `invalid`.
    pub verdict: &'static str,
    pub findings: Vec<Finding>,
}

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Report {
    pub valid: bool,
    pub resources: Vec<ResourceVerdict>,
    /// Problems of documents that are not resources (bad YAML, unknown kinds).
    pub documents: Vec<Finding>,
}

fn collect(path: &Path, docs: &mut Documents) -> std::io::Result<()> {
    if path.is_dir() {
        let d = istio::load_dir(path)?;
        docs.service_entries.extend(d.service_entries);
        docs.destination_rules.extend(d.destination_rules);
        docs.virtual_services.extend(d.virtual_services);
        docs.sidecars.extend(d.sidecars);
        docs.findings.extend(d.findings);
    } else {
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            ));
        }
        // The agent's own reading: same size limits, same findings.
        istio::read_file(path, docs);
    }
    Ok(())
}

fn verdict(findings: &[Finding]) -> &'static str {
    if findings.iter().any(|f| f.level == Level::Error) {
        "invalid"
    } else if findings.iter().any(|f| f.level == Level::Warning) {
        "warning"
    } else {
        "valid"
    }
}

/// Validates every resource under `paths`.
pub fn validate_paths(paths: &[PathBuf], ctx: &Context) -> std::io::Result<Report> {
    let mut docs = Documents::default();
    for p in paths {
        collect(p, &mut docs)?;
    }
    let mut by_doc: BTreeMap<(PathBuf, usize), Vec<Finding>> = BTreeMap::new();
    for (_, findings) in validate_all(&docs, ctx) {
        for f in findings {
            by_doc.entry((f.file.clone(), f.doc)).or_default().push(f);
        }
    }
    let mut resources = Vec::new();
    let mut add = |kind: &str, source: &istio::Source, meta: &istio::Meta| {
        let findings = by_doc
            .remove(&(source.file.clone(), source.doc))
            .unwrap_or_default();
        resources.push(ResourceVerdict {
            file: source.file.clone(),
            doc: source.doc,
            kind: kind.into(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            verdict: verdict(&findings),
            findings,
        });
    };
    for r in &docs.service_entries {
        add("ServiceEntry", &r.source, &r.meta);
    }
    for r in &docs.destination_rules {
        add("DestinationRule", &r.source, &r.meta);
    }
    for r in &docs.virtual_services {
        add("VirtualService", &r.source, &r.meta);
    }
    for r in &docs.sidecars {
        add("Sidecar", &r.source, &r.meta);
    }
    resources.sort_by(|a, b| (&a.file, a.doc).cmp(&(&b.file, b.doc)));
    let valid = resources.iter().all(|r| r.verdict != "invalid")
        && docs.findings.iter().all(|f| f.level != Level::Error);
    Ok(Report {
        valid,
        resources,
        documents: docs.findings,
    })
}

/// Human-readable form.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    for f in &r.documents {
        out.push_str(&format!("{f}\n"));
    }
    for res in &r.resources {
        out.push_str(&format!(
            "{} (document {}): {} {}/{}: {}\n",
            res.file.display(),
            res.doc,
            res.kind,
            res.namespace,
            res.name,
            res.verdict
        ));
        for f in &res.findings {
            let level = match f.level {
                Level::Error => "error",
                Level::Warning => "warning",
                Level::Note => "note",
            };
            out.push_str(&format!("  {level}: {}: {}", f.field, f.message));
            if let Some(rule) = f.rule {
                out.push_str(&format!(" [{rule}]"));
            }
            out.push('\n');
        }
    }
    let count = |v: &str| r.resources.iter().filter(|x| x.verdict == v).count();
    out.push_str(&format!(
        "{} resources: {} valid, {} valid with warnings, {} invalid{}\n",
        r.resources.len(),
        count("valid"),
        count("warning"),
        count("invalid"),
        if r.documents.iter().any(|f| f.level == Level::Error) {
            "; some documents could not be read"
        } else {
            ""
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_exit_status() {
        let dir = std::env::temp_dir().join(format!("egress-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mixed.yaml");
        std::fs::write(
            &file,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ok, namespace: a}\n\
             spec: {hosts: [ok.example], ports: [{number: 443, name: tls, protocol: TLS}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: warn, namespace: a}\n\
             spec: {hosts: [\"*foo.example\"], ports: [{number: 443, name: tls, protocol: TLS}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad, namespace: a}\n\
             spec: {hosts: [\"*\"]}\n",
        )
        .unwrap();
        let r = validate_paths(&[file], &Context::default()).unwrap();
        let verdicts: Vec<_> = r
            .resources
            .iter()
            .map(|x| (x.name.as_str(), x.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [("ok", "valid"), ("warn", "warning"), ("bad", "invalid")]
        );
        assert!(!r.valid);
        let text = render_text(&r);
        assert!(text.contains("partial wildcard"), "{text}");
        assert!(
            text.contains("3 resources: 1 valid, 1 valid with warnings, 1 invalid"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
