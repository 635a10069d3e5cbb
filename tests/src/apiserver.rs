//! A small Kubernetes API server for the tests: no kube-apiserver can run on these
//! machines, so the agent's Kubernetes mode is driven against this one. It speaks the
//! real wire protocol (JSON over plain HTTP/1.1) for the kinds the agent reads — core
//! `Pod`, `Namespace`, `ConfigMap`, `Node` and Istio's `ServiceEntry`,
//! `DestinationRule`, `VirtualService`, `Sidecar` of `networking.istio.io` — and its
//! fidelity is checked with real clients (kubectl, Python's `kubernetes`) in
//! `tests/tests/apiserver.rs`.
//!
//! What it does as the real API server does:
//! - discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`,
//!   an empty `/openapi/v2` and `/openapi/v3`); aggregated discovery is answered with the
//!   legacy documents (plain `application/json`), from which client-go falls back;
//! - lists with a global `resourceVersion`, `limit`/`continue` pages that are a
//!   consistent snapshot (an expired `continue` is a 410 `Expired` Status carrying a
//!   fresh token), `resourceVersionMatch=Exact` from the kept history, label selectors
//!   (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`) and field selectors with
//!   the fields the real server supports for each kind;
//! - watches (`watch=true|1|True`): events strictly after `resourceVersion`, or the
//!   current objects as synthetic `ADDED` for `""`/`"0"`; selectors applied to each
//!   event with an object that starts matching sent as `ADDED` and one that stops
//!   matching as `DELETED` (its previous state with the event's resourceVersion);
//!   `BOOKMARK`s every [`ApiServer::set_bookmark_interval`] with
//!   `allowWatchBookmarks=true`; `timeoutSeconds` ends the stream cleanly; a watch from
//!   a version older than the history is answered 200 with one `ERROR` event holding a
//!   410 `Expired` Status, then the stream ends (as the watch cache does: kube-rs
//!   relists on that, but retries the same version forever on an HTTP 410);
//!   `sendInitialEvents=true` (streaming lists) with the `k8s.io/initial-events-end`
//!   bookmark;
//! - built-in kinds' list items carry no `kind`/`apiVersion` (as the real server encodes
//!   typed lists), custom resources' items do; single objects and watch events always do;
//! - an update that changes nothing is a no-op (no new resourceVersion, no event);
//!   uid and creationTimestamp are kept across updates; custom resources count spec
//!   changes in `metadata.generation` (the built-in kinds here have none); namespaces
//!   get the `kubernetes.io/metadata.name` label and `status.phase: Active`;
//! - `POST`/`PUT`/`PATCH` (merge patch; strategic merge patch handled as a merge patch)
//!   and `DELETE` of single objects, so `kubectl apply/delete` work; creating in a
//!   namespace that does not exist is a 404 (NamespaceLifecycle); other verbs 405;
//!   protobuf bodies (kubectl's typed `create` generators send them) a 415 Status;
//!   `/openapi/v2` asked in protobuf is an empty (valid) protobuf document, which is
//!   what kubectl's client-side validation needs.
//!
//! Not done: server-side `Table`s (kubectl falls back to NAME/AGE columns), protobuf,
//! server-side apply, JSON patch, subresources (`/status`), graceful deletion (apply a
//! `deletionTimestamp`, then delete, to play it), admission and defaulting.
//!
//! The bearer token is ignored. [`ApiServer::stop`] is an API outage: the port refuses
//! connections and every open connection and watch is cut; [`ApiServer::restart`]
//! serves the same objects and history on the same port.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// The Kubernetes version this server says it is (`/version`): the one the agent's
/// k8s-openapi feature targets.
pub const KUBE_VERSION: (&str, &str) = ("1", "33");
const ISTIO: &str = "networking.istio.io";
/// What every `with_istio_versions` default serves, in Kubernetes' version priority.
pub const DEFAULT_ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

// ---------------------------------------------------------------------------------
// Kinds

#[derive(Debug)]
struct KindDef {
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    /// "" for the core group.
    group: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    /// Field selector labels beyond metadata.name (and metadata.namespace when namespaced).
    fields: &'static [&'static str],
}

const NAMESPACE: usize = 1;
const KINDS: &[KindDef] = &[
    KindDef {
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        group: "",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    KindDef {
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        group: "",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        fields: &["status.phase"],
    },
    KindDef {
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        group: "",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        fields: &[],
    },
    KindDef {
        kind: "Node",
        plural: "nodes",
        singular: "node",
        group: "",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        fields: &["spec.unschedulable"],
    },
    KindDef {
        kind: "ServiceEntry",
        plural: "serviceentries",
        singular: "serviceentry",
        group: ISTIO,
        namespaced: true,
        short_names: &["se"],
        categories: &["istio-io", "networking-istio-io"],
        fields: &[],
    },
    KindDef {
        kind: "DestinationRule",
        plural: "destinationrules",
        singular: "destinationrule",
        group: ISTIO,
        namespaced: true,
        short_names: &["dr"],
        categories: &["istio-io", "networking-istio-io"],
        fields: &[],
    },
    KindDef {
        kind: "VirtualService",
        plural: "virtualservices",
        singular: "virtualservice",
        group: ISTIO,
        namespaced: true,
        short_names: &["vs"],
        categories: &["istio-io", "networking-istio-io"],
        fields: &[],
    },
    KindDef {
        kind: "Sidecar",
        plural: "sidecars",
        singular: "sidecar",
        group: ISTIO,
        namespaced: true,
        short_names: &[],
        categories: &["istio-io", "networking-istio-io"],
        fields: &[],
    },
];

/// A kind by its Kind, plural, singular or short name (case-insensitive).
fn kind_index(name: &str) -> Option<usize> {
    let n = name.to_ascii_lowercase();
    KINDS.iter().position(|k| {
        k.kind.eq_ignore_ascii_case(&n)
            || k.plural == n
            || k.singular == n
            || k.short_names.contains(&n.as_str())
    })
}

fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((g, _)) => g,
        None => "",
    }
}

fn api_version(kd: &KindDef, version: &str) -> String {
    if kd.group.is_empty() {
        version.to_string()
    } else {
        format!("{}/{version}", kd.group)
    }
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, u64, u64) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u64>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    let (class, minor_s) = if tail.is_empty() {
        return (3, major, 0);
    } else if let Some(m) = tail.strip_prefix("beta") {
        (2, m)
    } else if let Some(m) = tail.strip_prefix("alpha") {
        (1, m)
    } else {
        return (0, 0, 0);
    };
    match minor_s.parse::<u64>() {
        Ok(minor) => (class, major, minor),
        Err(_) if minor_s.is_empty() => (class, major, 0),
        Err(_) => (0, 0, 0),
    }
}

// ---------------------------------------------------------------------------------
// Selectors

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone)]
struct LabelReq {
    key: String,
    op: LabelOp,
    values: Vec<String>,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Vec<LabelReq>);

#[derive(Debug, PartialEq, Clone)]
enum Tok {
    Id(String),
    Open,
    Close,
    Comma,
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    In,
    NotIn,
}

fn lex_labels(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let special = |c: char| "!=(),<>".contains(c);
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let tok = match two.as_str() {
            "==" => Some(Tok::DoubleEq),
            "!=" => Some(Tok::NotEq),
            _ => None,
        };
        if let Some(t) = tok {
            out.push(t);
            i += 2;
            continue;
        }
        let t = match c {
            '(' => Some(Tok::Open),
            ')' => Some(Tok::Close),
            ',' => Some(Tok::Comma),
            '!' => Some(Tok::Not),
            '=' => Some(Tok::Eq),
            '>' => Some(Tok::Gt),
            '<' => Some(Tok::Lt),
            _ => None,
        };
        if let Some(t) = t {
            out.push(t);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        out.push(match word.as_str() {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Id(word),
        });
    }
    Ok(out)
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A label value: at most 63 characters, alphanumeric at both ends, `-_.` inside.
fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.starts_with(is_alnum)
            && v.ends_with(is_alnum)
            && v.chars().all(|c| is_alnum(c) || "-_.".contains(c)))
}

fn valid_dns_subdomain(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 253
        && p.split('.').all(|l| {
            !l.is_empty()
                && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A qualified name: `[prefix/]name`, the prefix a DNS subdomain, the name a label value.
fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(valid_dns_subdomain) && !name.is_empty() && valid_label_value(name)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let toks = lex_labels(s)?;
        let mut reqs = Vec::new();
        let mut i = 0;
        let bad = |what: &str| Err(format!("unable to parse requirement: {what}"));
        while i < toks.len() {
            let mut not = false;
            if toks[i] == Tok::Not {
                not = true;
                i += 1;
            }
            let Some(Tok::Id(key)) = toks.get(i).cloned() else {
                return bad(&format!("found '{:?}', expected: identifier", toks.get(i)));
            };
            if !valid_label_key(&key) {
                return Err(format!(
                    "unable to parse requirement: <nil>: Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                ));
            }
            i += 1;
            if not {
                reqs.push(LabelReq {
                    key,
                    op: LabelOp::DoesNotExist,
                    values: vec![],
                });
            } else {
                match toks.get(i) {
                    None | Some(Tok::Comma) => reqs.push(LabelReq {
                        key,
                        op: LabelOp::Exists,
                        values: vec![],
                    }),
                    Some(t @ (Tok::Eq | Tok::DoubleEq | Tok::NotEq | Tok::Gt | Tok::Lt)) => {
                        let op = match t {
                            Tok::NotEq => LabelOp::NotIn,
                            Tok::Gt => LabelOp::Gt,
                            Tok::Lt => LabelOp::Lt,
                            _ => LabelOp::In,
                        };
                        i += 1;
                        let value = match toks.get(i) {
                            Some(Tok::Id(v)) => {
                                i += 1;
                                v.clone()
                            }
                            None | Some(Tok::Comma) => String::new(),
                            Some(other) => {
                                return bad(&format!("found '{other:?}', expected: identifier"));
                            }
                        };
                        if matches!(op, LabelOp::Gt | LabelOp::Lt) {
                            if value.parse::<i64>().is_err() {
                                return bad(&format!(
                                    "for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                                ));
                            }
                        } else if !valid_label_value(&value) {
                            return Err(format!(
                                "unable to parse requirement: values[0][{key}]: Invalid value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                            ));
                        }
                        reqs.push(LabelReq {
                            key,
                            op,
                            values: vec![value],
                        });
                    }
                    Some(t @ (Tok::In | Tok::NotIn)) => {
                        let op = if *t == Tok::In {
                            LabelOp::In
                        } else {
                            LabelOp::NotIn
                        };
                        i += 1;
                        if toks.get(i) != Some(&Tok::Open) {
                            return bad("found ..., expected: '('");
                        }
                        i += 1;
                        let mut values = Vec::new();
                        loop {
                            match toks.get(i) {
                                Some(Tok::Id(v)) => {
                                    if !valid_label_value(v) {
                                        return bad(&format!("invalid label value: {v:?}"));
                                    }
                                    values.push(v.clone());
                                    i += 1;
                                    match toks.get(i) {
                                        Some(Tok::Comma) => i += 1,
                                        Some(Tok::Close) => {
                                            i += 1;
                                            break;
                                        }
                                        _ => return bad("found ..., expected: ',' or ')'"),
                                    }
                                }
                                Some(Tok::Close) => {
                                    i += 1;
                                    break;
                                }
                                _ => return bad("found ..., expected: ',', ')' or identifier"),
                            }
                        }
                        if values.is_empty() {
                            return bad(&format!(
                                "{key}: for 'in', 'notin' operators, values set can't be empty"
                            ));
                        }
                        reqs.push(LabelReq { key, op, values });
                    }
                    Some(other) => {
                        return bad(&format!(
                            "found '{other:?}', expected: in, notin, =, ==, !=, gt, lt"
                        ));
                    }
                }
            }
            match toks.get(i) {
                None => break,
                Some(Tok::Comma) => {
                    i += 1;
                    if i == toks.len() {
                        return bad("found '', expected: identifier after ','");
                    }
                }
                Some(other) => return bad(&format!("found '{other:?}', expected: ','")),
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.0.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match r.op {
                LabelOp::Exists => v.is_some(),
                LabelOp::DoesNotExist => v.is_none(),
                LabelOp::In => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                LabelOp::NotIn => v.is_none_or(|v| r.values.iter().all(|x| x != v)),
                LabelOp::Gt | LabelOp::Lt => {
                    let want: i64 = r.values[0].parse().unwrap_or(0);
                    match v.and_then(|v| v.parse::<i64>().ok()) {
                        Some(have) if r.op == LabelOp::Gt => have > want,
                        Some(have) => have < want,
                        None => false,
                    }
                }
            }
        })
    }
}

/// A parsed field selector (`a=b,c!=d`, `\` escapes `,`, `=`, `!` and `\`).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        if s.is_empty() {
            return Ok(FieldSelector(terms));
        }
        // Split on unescaped commas.
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut esc = false;
        for c in s.chars() {
            if esc {
                cur.push('\\');
                cur.push(c);
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == ',' {
                parts.push(std::mem::take(&mut cur));
            } else {
                cur.push(c);
            }
        }
        if esc {
            cur.push('\\');
        }
        parts.push(cur);
        for part in parts {
            let chars: Vec<char> = part.chars().collect();
            let mut found = None;
            let mut i = 0;
            while i < chars.len() {
                if chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                let rest: String = chars[i..].iter().collect();
                if rest.starts_with("!=") {
                    found = Some((i, 2, false));
                } else if rest.starts_with("==") {
                    found = Some((i, 2, true));
                } else if rest.starts_with('=') {
                    found = Some((i, 1, true));
                }
                if found.is_some() {
                    break;
                }
                i += 1;
            }
            let Some((at, len, eq)) = found else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let key: String = chars[..at].iter().collect::<String>().trim().to_string();
            let raw: String = chars[at + len..].iter().collect();
            if key.is_empty() {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            }
            let mut value = String::new();
            let mut it = raw.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    match it.next() {
                        Some(e @ ('\\' | ',' | '=' | '!')) => value.push(e),
                        _ => {
                            return Err(format!(
                                "invalid field selector: '{s}': invalid escape sequence"
                            ));
                        }
                    }
                } else {
                    value.push(c);
                }
            }
            terms.push((key, eq, value));
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every field label must be one the kind supports (else 400, as the real server).
    fn check(&self, kd: &KindDef) -> Result<(), String> {
        for (k, _, _) in &self.0 {
            if field_value(kd, &Value::Null, k).is_none() {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(())
    }

    fn matches(&self, kd: &KindDef, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let have = field_value(kd, obj, k).unwrap_or_default();
            (have == *v) == *eq
        })
    }
}

fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    let mut v = obj;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or("")
}

/// The value of a selectable field, `None` when the kind does not support it.
fn field_value(kd: &KindDef, obj: &Value, field: &str) -> Option<String> {
    let s = |path: &[&str]| Some(str_at(obj, path).to_string());
    match field {
        "metadata.name" => s(&["metadata", "name"]),
        "metadata.namespace" if kd.namespaced => s(&["metadata", "namespace"]),
        f if !kd.fields.contains(&f) => None,
        "spec.hostNetwork" => Some(
            obj["spec"]["hostNetwork"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
        ),
        "spec.unschedulable" => Some(
            obj["spec"]["unschedulable"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
        ),
        "status.podIP" => match obj["status"]["podIPs"][0]["ip"].as_str() {
            Some(ip) => Some(ip.to_string()),
            None => s(&["status", "podIP"]),
        },
        f => {
            let path: Vec<&str> = f.split('.').collect();
            s(&path)
        }
    }
}

#[derive(Debug, Clone)]
struct Filter {
    kind: usize,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let kd = &KINDS[self.kind];
        if let Some(ns) = &self.namespace
            && str_at(obj, &["metadata", "namespace"]) != ns
        {
            return false;
        }
        self.labels.matches(obj["metadata"]["labels"].as_object()) && self.fields.matches(kd, obj)
    }
}

// ---------------------------------------------------------------------------------
// The store

#[derive(Debug)]
struct HistEvent {
    rv: u64,
    kind: usize,
    key: String,
    /// The object before the event (None for a creation).
    prev: Option<Arc<Value>>,
    /// The object after the event; for a deletion, the last state with the event's
    /// resourceVersion.
    obj: Arc<Value>,
    deleted: bool,
}

enum Msg {
    Line(Bytes),
    End,
}

struct Watcher {
    filter: Filter,
    version: String,
    tx: mpsc::UnboundedSender<Msg>,
}

struct Store {
    rv: u64,
    /// Events strictly after `floor` are all in `history`.
    floor: u64,
    objects: Vec<BTreeMap<String, Arc<Value>>>,
    history: Vec<HistEvent>,
    watchers: Vec<Watcher>,
}

fn obj_key(kd: &KindDef, ns: &str, name: &str) -> String {
    if kd.namespaced {
        format!("{ns}/{name}")
    } else {
        name.to_string()
    }
}

/// The object as served at `version`: apiVersion and kind set; for a list item of a
/// built-in kind both are left out, as the real server encodes typed lists.
fn render(kd: &KindDef, version: &str, obj: &Value, list_item: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if !(list_item && kd.group.is_empty()) {
            let mut out = Map::new();
            out.insert("apiVersion".into(), Value::String(api_version(kd, version)));
            out.insert("kind".into(), Value::String(kd.kind.into()));
            out.extend(std::mem::take(m));
            return Value::Object(out);
        }
    }
    o
}

/// One watch event: `{"type":...,"object":...}` and a newline, as the server frames them.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut b = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut b, object).expect("json");
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

fn bookmark_object(kd: &KindDef, version: &str, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if kd.group.is_empty() {
        // A typed object's zero creationTimestamp, as the real server encodes it.
        meta["creationTimestamp"] = Value::Null;
    }
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": kd.kind, "apiVersion": api_version(kd, version), "metadata": meta})
}

/// The watch event a watcher sees for a stored event, as the watch cache converts it.
fn convert_event(w: &Watcher, e: &HistEvent) -> Option<Bytes> {
    if e.kind != w.filter.kind {
        return None;
    }
    let kd = &KINDS[e.kind];
    let cur = !e.deleted && w.filter.matches(&e.obj);
    let old = e.prev.as_ref().is_some_and(|p| w.filter.matches(p));
    let (typ, obj) = match (cur, old) {
        (true, false) => ("ADDED", (*e.obj).clone()),
        (true, true) => ("MODIFIED", (*e.obj).clone()),
        (false, true) => {
            let mut o = (**e.prev.as_ref().expect("prev")).clone();
            o["metadata"]["resourceVersion"] = Value::String(e.rv.to_string());
            ("DELETED", o)
        }
        (false, false) => return None,
    };
    Some(event_line(typ, &render(kd, &w.version, &obj, false)))
}

impl Store {
    fn new() -> Store {
        Store {
            rv: 1,
            floor: 1,
            objects: KINDS.iter().map(|_| BTreeMap::new()).collect(),
            history: Vec::new(),
            watchers: Vec::new(),
        }
    }

    fn record(&mut self, e: HistEvent) {
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in &self.watchers {
            if let Some(line) = convert_event(w, &e) {
                let _ = w.tx.send(Msg::Line(line));
            }
        }
        self.history.push(e);
    }

    /// The objects of a kind as they were at `rv` (which must be ≥ floor).
    fn state_at(&self, kind: usize, rv: u64) -> BTreeMap<String, Arc<Value>> {
        let mut state = self.objects[kind].clone();
        for e in self.history.iter().rev() {
            if e.rv <= rv {
                break;
            }
            if e.kind != kind {
                continue;
            }
            match &e.prev {
                Some(p) => {
                    state.insert(e.key.clone(), p.clone());
                }
                None => {
                    state.remove(&e.key);
                }
            }
        }
        state
    }

    /// Creates or replaces; returns the object as stored and whether it changed.
    fn put(&mut self, kind: usize, mut obj: Value) -> Result<(Arc<Value>, bool), String> {
        let kd = &KINDS[kind];
        if !obj.is_object() {
            return Err("the object is not a JSON object".into());
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let name = str_at(&obj, &["metadata", "name"]).to_string();
        if name.is_empty() {
            return Err("metadata.name: Required value: name is required".into());
        }
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        let ns = if kd.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let key = obj_key(kd, &ns, &name);
        let prev = self.objects[kind].get(&key).cloned();
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.remove("resourceVersion");
        meta.remove("selfLink");
        match &prev {
            Some(p) => {
                // uid and creationTimestamp are immutable; generation counts spec changes.
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = p["metadata"].get(k) {
                        meta.insert(k.into(), v.clone());
                    }
                }
                if let Some(g) = p["metadata"].get("generation") {
                    meta.insert("generation".into(), g.clone());
                }
            }
            None => {
                if !meta.get("uid").is_some_and(Value::is_string) {
                    meta.insert("uid".into(), Value::String(random_uuid()));
                }
                if !meta.get("creationTimestamp").is_some_and(Value::is_string) {
                    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
                }
                // Custom resources count spec changes in metadata.generation; of the
                // built-in kinds here, none does (pods only with a 1.34+ feature).
                if !kd.group.is_empty() && !meta.contains_key("generation") {
                    meta.insert("generation".into(), json!(1));
                }
            }
        }
        if kd.kind == "Namespace" {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert(
                    "kubernetes.io/metadata.name".into(),
                    Value::String(name.clone()),
                );
            }
            if !obj["status"]["phase"].is_string() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        obj.as_object_mut().expect("object").remove("apiVersion");
        obj.as_object_mut().expect("object").remove("kind");
        if let Some(p) = &prev {
            if !kd.group.is_empty() && p["spec"] != obj["spec"] {
                let g = p["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
                obj["metadata"]["generation"] = json!(g);
            }
            let mut same = (**p).clone();
            same["metadata"]
                .as_object_mut()
                .expect("meta")
                .remove("resourceVersion");
            if same == obj {
                return Ok((p.clone(), false));
            }
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let obj = Arc::new(obj);
        self.objects[kind].insert(key.clone(), obj.clone());
        self.record(HistEvent {
            rv: self.rv,
            kind,
            key,
            prev,
            obj: obj.clone(),
            deleted: false,
        });
        Ok((obj, true))
    }

    fn remove(&mut self, kind: usize, ns: &str, name: &str) -> Option<Arc<Value>> {
        let kd = &KINDS[kind];
        let key = obj_key(kd, ns, name);
        let prev = self.objects[kind].remove(&key)?;
        self.rv += 1;
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let last = Arc::new(last);
        self.record(HistEvent {
            rv: self.rv,
            kind,
            key,
            prev: Some(prev),
            obj: last.clone(),
            deleted: true,
        });
        Some(last)
    }
}

fn random_uuid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now as RFC 3339 UTC with seconds, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------
// The server state shared by the HTTP side and the test side

struct Inner {
    store: Mutex<Store>,
    /// Served networking.istio.io versions, preferred first.
    istio_versions: Vec<String>,
    bookmark_interval: Mutex<Duration>,
    requests: Mutex<Vec<String>>,
    conns: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    next_conn: AtomicU64,
    port: u16,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a connection from the table when its task ends or is aborted.
struct ConnGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.inner.conns).remove(&self.id);
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(full(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

/// A `Status` object, as the API server reports failures.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn err(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (code, status(code, reason, message, None))
}

fn not_found_path() -> (u16, Value) {
    (
        404,
        status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        ),
    )
}

fn not_found(kd: &KindDef, name: &str) -> (u16, Value) {
    let mut details = json!({"name": name, "kind": kd.plural});
    if !kd.group.is_empty() {
        details["group"] = Value::String(kd.group.into());
    }
    let res = if kd.group.is_empty() {
        kd.plural.to_string()
    } else {
        format!("{}.{}", kd.plural, kd.group)
    };
    (
        404,
        status(
            404,
            "NotFound",
            &format!("{res} \"{name}\" not found"),
            Some(details),
        ),
    )
}

fn invalid_options(kind: &str, field: &str, message: &str) -> (u16, Value) {
    let details = json!({
        "group": "meta.k8s.io", "kind": kind,
        "causes": [{"reason": "FieldValueForbidden", "message": message, "field": field}],
    });
    (
        422,
        status(
            422,
            "Invalid",
            &format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {message}"),
            Some(details),
        ),
    )
}

fn expired(message: &str) -> Value {
    status(410, "Expired", message, None)
}

#[derive(Default, Debug)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    /// Go's strconv.ParseBool, as the server decodes boolean parameters.
    fn flag(&self, k: &str) -> Result<bool, (u16, Value)> {
        match self.get(k) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(err(
                400,
                "BadRequest",
                &format!("invalid boolean value {v:?} for {k}"),
            )),
        }
    }
}

#[derive(Debug)]
enum Route {
    Version,
    Api,
    ApiGroupVersion(String, String),
    Apis,
    ApiGroup,
    OpenApiV2,
    OpenApiV3,
    Collection {
        kind: usize,
        version: String,
        namespace: Option<String>,
        watch_path: bool,
    },
    Object {
        kind: usize,
        version: String,
        namespace: Option<String>,
        name: String,
    },
}

impl Inner {
    fn served(&self, group: &str, version: &str) -> bool {
        if group.is_empty() {
            version == "v1"
        } else {
            group == ISTIO && self.istio_versions.iter().any(|v| v == version)
        }
    }

    fn route(&self, path: &str) -> Option<Route> {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let segs: Vec<&str> = if segs == [""] { vec![] } else { segs };
        let (group, version, rest) = match segs.as_slice() {
            ["version"] => return Some(Route::Version),
            ["api"] => return Some(Route::Api),
            ["apis"] => return Some(Route::Apis),
            ["openapi", "v2"] => return Some(Route::OpenApiV2),
            ["openapi", "v3"] => return Some(Route::OpenApiV3),
            ["apis", g] if *g == ISTIO => return Some(Route::ApiGroup),
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        if !self.served(group, version) {
            return None;
        }
        let (watch_path, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            r => (false, r),
        };
        let find = |plural: &str| {
            KINDS
                .iter()
                .position(|k| k.group == group && k.plural == plural)
        };
        let version = version.to_string();
        let r = match rest {
            [] => {
                if watch_path {
                    return None;
                }
                Route::ApiGroupVersion(group.to_string(), version)
            }
            [plural] => Route::Collection {
                kind: find(plural)?,
                version,
                namespace: None,
                watch_path,
            },
            ["namespaces", ns, plural] if find(plural).is_some_and(|k| KINDS[k].namespaced) => {
                Route::Collection {
                    kind: find(plural)?,
                    version,
                    namespace: Some(ns.to_string()),
                    watch_path,
                }
            }
            ["namespaces", ns, plural, name]
                if find(plural).is_some_and(|k| KINDS[k].namespaced) =>
            {
                Route::Object {
                    kind: find(plural)?,
                    version,
                    namespace: Some(ns.to_string()),
                    name: name.to_string(),
                }
            }
            [plural, name] if find(plural).is_some_and(|k| !KINDS[k].namespaced) => Route::Object {
                kind: find(plural)?,
                version,
                namespace: None,
                name: name.to_string(),
            },
            _ => return None,
        };
        if watch_path && matches!(r, Route::Object { .. }) {
            return None;
        }
        Some(r)
    }

    fn discovery_resources(&self, group: &str, version: &str) -> Value {
        let resources: Vec<Value> = KINDS
            .iter()
            .filter(|k| k.group == group)
            .map(|k| {
                let mut r = json!({
                    "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                });
                if !k.short_names.is_empty() {
                    r["shortNames"] = json!(k.short_names);
                }
                if !k.categories.is_empty() {
                    r["categories"] = json!(k.categories);
                }
                r
            })
            .collect();
        json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
            "resources": resources,
        })
    }

    fn api_group(&self) -> Value {
        let versions: Vec<Value> = self
            .istio_versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{ISTIO}/{v}"), "version": v}))
            .collect();
        json!({
            "name": ISTIO, "versions": versions.clone(),
            "preferredVersion": versions[0].clone(),
        })
    }

    /// GET of a collection (not a watch).
    fn list(
        &self,
        kind: usize,
        version: &str,
        namespace: Option<&str>,
        q: &Query,
    ) -> Result<Value, (u16, Value)> {
        let kd = &KINDS[kind];
        let filter = self.filter(kind, namespace, q)?;
        let rv_param = q.get("resourceVersion").unwrap_or("");
        let rv_match = q.get("resourceVersionMatch").unwrap_or("");
        let cont = q.get("continue").unwrap_or("");
        let limit = match q.get("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| err(400, "BadRequest", &format!("invalid limit {l:?}")))?
                .max(0) as usize,
        };
        if !rv_match.is_empty() {
            if rv_param.is_empty() {
                return Err(invalid_options(
                    "ListOptions",
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if !cont.is_empty() {
                return Err(invalid_options(
                    "ListOptions",
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if rv_match != "Exact" && rv_match != "NotOlderThan" {
                return Err(invalid_options(
                    "ListOptions",
                    "resourceVersionMatch",
                    &format!(
                        "Unsupported value: \"{rv_match}\": supported values: \"Exact\", \"NotOlderThan\""
                    ),
                ));
            }
            if rv_match == "Exact" && rv_param == "0" {
                return Err(invalid_options(
                    "ListOptions",
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if !cont.is_empty() && !rv_param.is_empty() && rv_param != "0" {
            return Err(err(
                400,
                "BadRequest",
                "specifying resource version is not allowed when using continue",
            ));
        }
        let store = lock(&self.store);
        let requested: Option<u64> = match rv_param {
            "" | "0" => None,
            s => Some(s.parse::<u64>().map_err(|_| {
                err(
                    400,
                    "BadRequest",
                    &format!(
                        "invalid resource version: strconv.ParseUint: parsing {s:?}: invalid syntax"
                    ),
                )
            })?),
        };
        if let Some(r) = requested
            && r > store.rv
        {
            let details = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
            return Err((
                504,
                status(
                    504,
                    "Timeout",
                    &format!("Too large resource version: {r}, current: {}", store.rv),
                    Some(details),
                ),
            ));
        }
        // Which snapshot, and from which key on.
        let (snap_rv, start_after) = if !cont.is_empty() {
            let (rv, start) = decode_continue(cont).ok_or_else(|| {
                err(
                    400,
                    "BadRequest",
                    "continue key is not valid: the continue token could not be decoded",
                )
            })?;
            if rv < store.floor {
                let mut st = expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                );
                st["metadata"] = json!({"continue": encode_continue(store.rv, &start)});
                return Err((410, st));
            }
            (rv, Some(start))
        } else if rv_match == "Exact" {
            let r = requested.expect("checked");
            if r < store.floor {
                return Err((
                    410,
                    expired("The resourceVersion for the provided list is too old."),
                ));
            }
            (r, None)
        } else {
            (store.rv, None)
        };
        let state = if snap_rv == store.rv {
            store.objects[kind].clone()
        } else {
            store.state_at(kind, snap_rv)
        };
        drop(store);
        let mut items = Vec::new();
        let mut next_key = None;
        let mut remaining = 0usize;
        let range = state
            .iter()
            .filter(|(k, _)| start_after.as_ref().is_none_or(|s| *k > s));
        for (k, o) in range {
            if !filter.matches(o) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                if next_key.is_none() {
                    next_key = Some(items_last_key(&items, kd));
                }
                remaining += 1;
                continue;
            }
            let _ = k;
            items.push(render(kd, version, o, true));
        }
        let mut meta = json!({"resourceVersion": snap_rv.to_string()});
        if let Some(last) = next_key {
            meta["continue"] = Value::String(encode_continue(snap_rv, &last));
            if filter.labels.is_empty() && filter.fields.is_empty() {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": format!("{}List", kd.kind),
            "apiVersion": api_version(kd, version),
            "metadata": meta,
            "items": items,
        }))
    }

    fn filter(
        &self,
        kind: usize,
        namespace: Option<&str>,
        q: &Query,
    ) -> Result<Filter, (u16, Value)> {
        let kd = &KINDS[kind];
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| err(400, "BadRequest", &e))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
            .map_err(|e| err(400, "BadRequest", &e))?;
        fields.check(kd).map_err(|e| err(400, "BadRequest", &e))?;
        Ok(Filter {
            kind,
            namespace: namespace.map(str::to_string),
            labels,
            fields,
        })
    }
}

fn items_last_key(items: &[Value], kd: &KindDef) -> String {
    let last = items.last().expect("a full page");
    obj_key(
        kd,
        str_at(last, &["metadata", "namespace"]),
        str_at(last, &["metadata", "name"]),
    )
}

/// The continue token: opaque to clients; like the real one, base64 of the snapshot's
/// resourceVersion and the key the next page starts after.
fn encode_continue(rv: u64, start_after: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start_after}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    if v["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let rv = v["rv"].as_u64()?;
    let start = v["start"].as_str()?.strip_suffix('\u{0}')?.to_string();
    Some((rv, start))
}

/// The body of a watch: events pushed by the store (in order, under its lock),
/// bookmarks, and the end after `timeoutSeconds`.
struct WatchStream {
    inner: Arc<Inner>,
    rx: mpsc::UnboundedReceiver<Msg>,
    kind: usize,
    version: String,
    bookmarks: bool,
    next_bookmark: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl WatchStream {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, WatchStream)> {
        let bm = self.bookmarks.then_some(self.next_bookmark);
        tokio::select! {
            biased;
            msg = self.rx.recv() => match msg {
                Some(Msg::Line(b)) => Some((Ok(Frame::data(b)), self)),
                Some(Msg::End) | None => None,
            },
            _ = sleep_until_opt(self.deadline) => None,
            _ = sleep_until_opt(bm) => {
                // Under the store's lock nothing can be in flight: every event up to
                // the current version has been received, so the bookmark's version
                // never runs ahead of the events sent on this stream.
                let inner = self.inner.clone();
                let store = lock(&inner.store);
                match self.rx.try_recv() {
                    Ok(Msg::Line(b)) => return Some((Ok(Frame::data(b)), self)),
                    Ok(Msg::End) => return None,
                    Err(_) => {}
                }
                let rv = store.rv;
                drop(store);
                let interval = *lock(&self.inner.bookmark_interval);
                self.next_bookmark = tokio::time::Instant::now() + interval;
                let kd = &KINDS[self.kind];
                let line = event_line("BOOKMARK", &bookmark_object(kd, &self.version, rv, false));
                Some((Ok(Frame::data(line)), self))
            }
        }
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    lock(&inner.requests).push(format!("{} {pq}", req.method()));
    let resp = match serve(&inner, req).await {
        Ok(r) => r,
        Err((code, body)) => json_response(code, &body),
    };
    Ok(resp)
}

async fn serve(inner: &Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, (u16, Value)> {
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let route = inner.route(&path).ok_or_else(not_found_path)?;
    let method = req.method().clone();
    let read_only = |r: &Route| -> Result<(), (u16, Value)> {
        let _ = r;
        if method != Method::GET {
            return Err((
                405,
                status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    Some(json!({})),
                ),
            ));
        }
        Ok(())
    };
    match route {
        Route::Version => {
            read_only(&route)?;
            let (major, minor) = KUBE_VERSION;
            Ok(json_response(
                200,
                &json!({
                    "major": major, "minor": minor,
                    "emulationMajor": major, "emulationMinor": minor,
                    "gitVersion": format!("v{major}.{minor}.0"),
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
                    "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64",
                }),
            ))
        }
        Route::Api => {
            read_only(&route)?;
            Ok(json_response(
                200,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", inner.port)}],
                }),
            ))
        }
        Route::Apis => {
            read_only(&route)?;
            Ok(json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [inner.api_group()]}),
            ))
        }
        Route::ApiGroup => {
            read_only(&route)?;
            let mut g = inner.api_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Ok(json_response(200, &g))
        }
        Route::ApiGroupVersion(ref g, ref v) => {
            read_only(&route)?;
            Ok(json_response(200, &inner.discovery_resources(g, v)))
        }
        Route::OpenApiV2 => {
            read_only(&route)?;
            let accept = req
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.contains("protobuf") {
                // kubectl's client-side validation asks for the protobuf encoding; an
                // empty message is a valid, empty OpenAPI document.
                return Ok(Response::builder()
                    .status(200)
                    .header(
                        "Content-Type",
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    )
                    .body(full(Bytes::new()))
                    .expect("response"));
            }
            let (major, minor) = KUBE_VERSION;
            Ok(json_response(
                200,
                &json!({
                    "swagger": "2.0",
                    "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
                    "paths": {}, "definitions": {},
                }),
            ))
        }
        Route::OpenApiV3 => {
            read_only(&route)?;
            Ok(json_response(200, &json!({"paths": {}})))
        }
        Route::Collection {
            kind,
            version,
            namespace,
            watch_path,
        } => {
            if method != Method::GET && method != Method::POST {
                return Err((
                    405,
                    status(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                        Some(json!({})),
                    ),
                ));
            }
            if method == Method::POST {
                if watch_path {
                    return Err(not_found_path());
                }
                let body = read_body(req).await?;
                return create(inner, kind, &version, namespace.as_deref(), body);
            }
            if watch_path || q.flag("watch")? {
                watch(inner, kind, &version, namespace.as_deref(), &q)
            } else {
                Ok(json_response(
                    200,
                    &inner.list(kind, &version, namespace.as_deref(), &q)?,
                ))
            }
        }
        Route::Object {
            kind,
            version,
            namespace,
            name,
        } => {
            let kd = &KINDS[kind];
            let ns = namespace.clone().unwrap_or_default();
            match method {
                Method::GET => {
                    let store = lock(&inner.store);
                    let o = store.objects[kind].get(&obj_key(kd, &ns, &name)).cloned();
                    drop(store);
                    match o {
                        Some(o) => Ok(json_response(200, &render(kd, &version, &o, false))),
                        None => Err(not_found(kd, &name)),
                    }
                }
                Method::DELETE => {
                    let mut store = lock(&inner.store);
                    match store.remove(kind, &ns, &name) {
                        Some(last) => {
                            drop(store);
                            Ok(json_response(200, &render(kd, &version, &last, false)))
                        }
                        None => Err(not_found(kd, &name)),
                    }
                }
                Method::PUT | Method::PATCH => {
                    let ctype = req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = read_body(req).await?;
                    update(
                        inner,
                        kind,
                        &version,
                        &ns,
                        &name,
                        body,
                        method == Method::PATCH,
                        &ctype,
                    )
                }
                _ => Err((
                    405,
                    status(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                        Some(json!({})),
                    ),
                )),
            }
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Value, (u16, Value)> {
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.is_empty() && !ctype.starts_with("application/json") && !ctype.contains("patch+json")
    {
        // No protobuf here: client-go falls back to JSON on a 415.
        let msg = format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (not {ctype})"
        );
        return Err((
            415,
            status(415, "UnsupportedMediaType", &msg, Some(json!({}))),
        ));
    }
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| err(400, "BadRequest", &format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| err(400, "BadRequest", &format!("the body is not JSON: {e}")))
}

fn check_identity(kd: &KindDef, version: &str, obj: &Value) -> Result<(), (u16, Value)> {
    let av = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    if (!av.is_empty() && av != api_version(kd, version)) || (!kind.is_empty() && kind != kd.kind) {
        return Err(err(
            400,
            "BadRequest",
            &format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                api_version(kd, version)
            ),
        ));
    }
    Ok(())
}

fn create(
    inner: &Inner,
    kind: usize,
    version: &str,
    namespace: Option<&str>,
    mut obj: Value,
) -> Result<Response<Body>, (u16, Value)> {
    let kd = &KINDS[kind];
    check_identity(kd, version, &obj)?;
    if kd.namespaced {
        let Some(ns) = namespace else {
            return Err(not_found_path());
        };
        let given = str_at(&obj, &["metadata", "namespace"]).to_string();
        if !given.is_empty() && given != ns {
            return Err(err(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        obj["metadata"]["namespace"] = Value::String(ns.to_string());
    }
    let name = str_at(&obj, &["metadata", "name"]).to_string();
    let mut store = lock(&inner.store);
    if let Some(ns) = namespace
        && kd.namespaced
        && !store.objects[NAMESPACE].contains_key(ns)
    {
        // The NamespaceLifecycle admission plugin.
        return Err(not_found(&KINDS[NAMESPACE], ns));
    }
    if store.objects[kind].contains_key(&obj_key(kd, namespace.unwrap_or(""), &name)) {
        let res = if kd.group.is_empty() {
            kd.plural.to_string()
        } else {
            format!("{}.{}", kd.plural, kd.group)
        };
        return Err((
            409,
            status(
                409,
                "AlreadyExists",
                &format!("{res} \"{name}\" already exists"),
                Some(json!({"name": name, "kind": kd.plural})),
            ),
        ));
    }
    let (o, _) = store.put(kind, obj).map_err(|e| err(422, "Invalid", &e))?;
    drop(store);
    Ok(json_response(201, &render(kd, version, &o, false)))
}

/// JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
fn update(
    inner: &Inner,
    kind: usize,
    version: &str,
    ns: &str,
    name: &str,
    body: Value,
    patch: bool,
    ctype: &str,
) -> Result<Response<Body>, (u16, Value)> {
    let kd = &KINDS[kind];
    let mut store = lock(&inner.store);
    let cur = store.objects[kind].get(&obj_key(kd, ns, name)).cloned();
    let new = if patch {
        let Some(cur) = cur else {
            return Err(not_found(kd, name));
        };
        if !(ctype.starts_with("application/merge-patch+json")
            || ctype.starts_with("application/strategic-merge-patch+json"))
        {
            return Err((
                415,
                status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (not {ctype})"
                    ),
                    None,
                ),
            ));
        }
        let mut o = (*cur).clone();
        merge_patch(&mut o, &body);
        o
    } else {
        check_identity(kd, version, &body)?;
        let Some(cur) = cur else {
            return Err(not_found(kd, name));
        };
        let want = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let have = cur["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !want.is_empty() && want != have {
            return Err((
                409,
                status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        kd.plural
                    ),
                    Some(json!({"name": name, "kind": kd.plural})),
                ),
            ));
        }
        body
    };
    if str_at(&new, &["metadata", "name"]) != name {
        return Err(err(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        ));
    }
    let mut new = new;
    if kd.namespaced {
        new["metadata"]["namespace"] = Value::String(ns.to_string());
    }
    let (o, _) = store.put(kind, new).map_err(|e| err(422, "Invalid", &e))?;
    drop(store);
    Ok(json_response(200, &render(kd, version, &o, false)))
}

fn watch(
    inner: &Arc<Inner>,
    kind: usize,
    version: &str,
    namespace: Option<&str>,
    q: &Query,
) -> Result<Response<Body>, (u16, Value)> {
    let kd = &KINDS[kind];
    let filter = inner.filter(kind, namespace, q)?;
    let rv_param = q.get("resourceVersion").unwrap_or("").to_string();
    let rv_match = q.get("resourceVersionMatch").unwrap_or("");
    let bookmarks = q.flag("allowWatchBookmarks")?;
    let send_initial = q
        .get("sendInitialEvents")
        .map(|_| q.flag("sendInitialEvents"))
        .transpose()?;
    match send_initial {
        Some(_) if rv_match != "NotOlderThan" => {
            return Err(invalid_options(
                "ListOptions",
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        Some(true) if !bookmarks => {
            return Err(invalid_options(
                "ListOptions",
                "allowWatchBookmarks",
                "allowWatchBookmarks must be set to true when sendInitialEvents is true",
            ));
        }
        None if !rv_match.is_empty() => {
            return Err(invalid_options(
                "ListOptions",
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        _ => {}
    }
    let timeout = match q.get("timeoutSeconds") {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| err(400, "BadRequest", &format!("invalid timeoutSeconds {t:?}")))?,
        ),
    };
    let requested: Option<u64> = match rv_param.as_str() {
        "" | "0" => None,
        s => Some(s.parse::<u64>().map_err(|_| {
            err(
                400,
                "BadRequest",
                &format!(
                    "invalid resource version: strconv.ParseUint: parsing {s:?}: invalid syntax"
                ),
            )
        })?),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut store = lock(&inner.store);
        if let Some(r) = requested
            && r > store.rv
        {
            let details = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
            return Err((
                504,
                status(
                    504,
                    "Timeout",
                    &format!("Too large resource version: {r}, current: {}", store.rv),
                    Some(details),
                ),
            ));
        }
        let w = Watcher {
            filter: filter.clone(),
            version: version.to_string(),
            tx: tx.clone(),
        };
        // Synthetic ADDED of the current state: for "" and "0" (and streaming lists),
        // unless sendInitialEvents=false says not to.
        let mut expired_now = false;
        let initial = match send_initial {
            Some(b) => b,
            None => requested.is_none(),
        };
        if initial {
            for o in store.objects[kind].values() {
                if filter.matches(o) {
                    let _ = tx.send(Msg::Line(event_line(
                        "ADDED",
                        &render(kd, version, o, false),
                    )));
                }
            }
            if send_initial == Some(true) {
                let _ = tx.send(Msg::Line(event_line(
                    "BOOKMARK",
                    &bookmark_object(kd, version, store.rv, true),
                )));
            }
        } else if let Some(r) = requested {
            if r < store.floor {
                // As the watch cache: 200, one ERROR event, the end of the stream.
                let msg = format!("too old resource version: {r} ({})", store.floor);
                let _ = tx.send(Msg::Line(event_line("ERROR", &expired(&msg))));
                let _ = tx.send(Msg::End);
                expired_now = true;
            } else {
                for e in store.history.iter().filter(|e| e.rv > r) {
                    if let Some(line) = convert_event(&w, e) {
                        let _ = tx.send(Msg::Line(line));
                    }
                }
            }
        }
        if !expired_now {
            store.watchers.push(w);
        }
    }
    let now = tokio::time::Instant::now();
    let stream = WatchStream {
        inner: inner.clone(),
        rx,
        kind,
        version: version.to_string(),
        bookmarks,
        next_bookmark: now + *lock(&inner.bookmark_interval),
        deadline: timeout.map(|t| now + Duration::from_secs(t)),
    };
    drop(tx);
    let body = StreamBody::new(futures::stream::unfold(stream, WatchStream::next));
    Ok(Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(BodyExt::boxed(body))
        .expect("response"))
}

// ---------------------------------------------------------------------------------
// The public side

/// The test API server: see the module documentation.
pub struct ApiServer {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    /// The accept loop while serving.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// While stopped: the port, bound but not listening (connections are refused and
    /// no other socket can take it).
    reserved: Mutex<Option<socket2::Socket>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn bind_port(port: u16) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.set_reuse_port(true).expect("SO_REUSEPORT");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
    s
}

async fn accept_loop(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn_inner = inner.clone();
        let mut conns = lock(&inner.conns);
        let task = tokio::spawn(async move {
            let _guard = ConnGuard {
                inner: conn_inner.clone(),
                id,
            };
            let svc = hyper::service::service_fn(move |req| handle(conn_inner.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
        conns.insert(id, task.abort_handle());
    }
}

impl ApiServer {
    /// Serves on 127.0.0.1, an ephemeral port, plain HTTP, with every Istio version.
    pub fn start() -> ApiServer {
        ApiServer::with_istio_versions(DEFAULT_ISTIO_VERSIONS)
    }

    /// Serves only these `networking.istio.io` versions (the preferred one is the
    /// newest by Kubernetes' version priority).
    pub fn with_istio_versions(versions: &[&str]) -> ApiServer {
        assert!(
            !versions.is_empty(),
            "serve at least one networking.istio.io version"
        );
        let mut vs: Vec<String> = versions.iter().map(|s| s.to_string()).collect();
        vs.sort_by(|a, b| version_priority(b).cmp(&version_priority(a)).then(a.cmp(b)));
        vs.dedup();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-apiserver")
            .enable_all()
            .build()
            .expect("tokio runtime");
        let handle = rt.handle().clone();
        let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let _ = rt.block_on(rx);
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn the API server thread");
        let socket = bind_port(0);
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("local port");
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new()),
            istio_versions: vs,
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            requests: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            port,
        });
        let server = ApiServer {
            inner,
            handle,
            listener: Mutex::new(None),
            reserved: Mutex::new(Some(socket)),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    /// The Istio versions served, preferred first.
    pub fn istio_versions(&self) -> Vec<String> {
        self.inner.istio_versions.clone()
    }

    /// Writes a kubeconfig for this server: cluster `egress-test` at [`Self::url`], a
    /// token user (any token is accepted), current-context set, namespace `default`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: egress-test\n  cluster:\n    server: {}\n\
             users:\n- name: egress-test\n  user:\n    token: egress-test-token\n\
             contexts:\n- name: egress-test\n  context:\n    cluster: egress-test\n    user: egress-test\n    namespace: default\n\
             current-context: egress-test\npreferences: {{}}\n",
            self.url()
        );
        std::fs::write(path, cfg).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Creates or replaces the object (by group of its apiVersion, kind, namespace,
    /// name) and returns its new resourceVersion. Sets uid (kept across updates; random
    /// on create unless given), resourceVersion, creationTimestamp (on create unless
    /// given), generation, and namespace `default` for namespaced kinds. An update that
    /// changes nothing is a no-op and returns the current resourceVersion.
    pub fn apply(&self, obj: Value) -> u64 {
        let av = obj["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("apply: no apiVersion in {obj}"));
        let kind_name = obj["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("apply: no kind in {obj}"));
        let group = group_of(av);
        let kind = KINDS
            .iter()
            .position(|k| k.kind == kind_name && k.group == group)
            .unwrap_or_else(|| {
                panic!("apply: the test API server has no kind {kind_name} in group {group:?}")
            });
        let mut store = lock(&self.inner.store);
        let (o, _) = store
            .put(kind, obj)
            .unwrap_or_else(|e| panic!("apply: {e}"));
        o["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("resourceVersion")
    }

    /// Deletes the object; emits DELETED with its last state and a new resourceVersion.
    /// `kind` is a Kind, plural, singular or short name. False if there was none.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let k = kind_index(kind).unwrap_or_else(|| panic!("delete: unknown kind {kind}"));
        let ns = if KINDS[k].namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        lock(&self.inner.store).remove(k, ns, name).is_some()
    }

    /// The stored object (apiVersion as applied: the group's first served version for
    /// Istio kinds), or None.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let k = kind_index(kind).unwrap_or_else(|| panic!("get: unknown kind {kind}"));
        let kd = &KINDS[k];
        let ns = if kd.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        let o = lock(&self.inner.store).objects[k]
            .get(&obj_key(kd, ns, name))
            .cloned()?;
        let version = if kd.group.is_empty() {
            "v1".to_string()
        } else {
            self.inner.istio_versions[0].clone()
        };
        Some(render(kd, &version, &o, false))
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// How often watches with allowWatchBookmarks=true get a BOOKMARK (default 1 s);
    /// applies to the next bookmark of each watch.
    pub fn set_bookmark_interval(&self, d: Duration) {
        *lock(&self.inner.bookmark_interval) = d;
    }

    /// An API outage: the port refuses connections and every open connection and
    /// watch is cut. Returns once all are closed.
    pub fn stop(&self) {
        self.halt(true);
    }

    fn halt(&self, keep_port: bool) {
        let mut listener = lock(&self.listener);
        let Some(task) = listener.take() else { return };
        // Keep the port: bound (SO_REUSEPORT beside the listener), not listening. Taken
        // before the listener closes, so that no outgoing connection of another test
        // gets it as its ephemeral port in between.
        if keep_port {
            *lock(&self.reserved) = Some(bind_port(self.inner.port));
        }
        task.abort();
        for (_, c) in lock(&self.inner.conns).iter() {
            c.abort();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !task.is_finished() || !lock(&self.inner.conns).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the test API server's connections did not close"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Listens again on the same port, with the same objects and history.
    pub fn restart(&self) {
        let mut listener = lock(&self.listener);
        if listener.is_some() {
            return;
        }
        let socket = lock(&self.reserved).take().expect("a reserved port");
        socket.listen(1024).expect("listen");
        socket.set_nonblocking(true).expect("nonblocking");
        let std_listener: std::net::TcpListener = socket.into();
        let inner = self.inner.clone();
        *listener = Some(self.handle.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            accept_loop(inner, l).await;
        }));
    }

    /// Forgets the event history: watches from, and lists (Exact, continue) at, a
    /// version before now get 410 Gone (reason Expired).
    pub fn compact(&self) {
        let mut store = lock(&self.inner.store);
        store.floor = store.rv;
        store.history.clear();
    }

    /// "METHOD path?query" of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner.requests).clone()
    }

    /// Watch streams open now.
    pub fn watchers(&self) -> usize {
        let mut store = lock(&self.inner.store);
        store.watchers.retain(|w| !w.tx.is_closed());
        store.watchers.len()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.halt(false);
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let l = |s: &str| {
            json!(
                s.split(',')
                    .filter(|x| !x.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), json!(v))
                    })
                    .collect::<Map<_, _>>()
            )
        };
        let m = |sel: &str, labels: &str| {
            LabelSelector::parse(sel)
                .unwrap()
                .matches(l(labels).as_object())
        };
        assert!(m("", ""));
        assert!(m("app=x", "app=x,b=c"));
        assert!(m("app==x", "app=x"));
        assert!(!m("app=x", "app=y"));
        assert!(m("app!=x", "b=c"));
        assert!(!m("app!=x", "app=x"));
        assert!(m("app in (x, y),tier notin (db)", "app=y,tier=web"));
        assert!(!m("app in (x,y)", "tier=web"));
        assert!(m("tier notin (db)", "app=y"));
        assert!(m("app", "app=z"));
        assert!(!m("app", "b=z"));
        assert!(m("!app", "b=z"));
        assert!(!m("!app", "app=z"));
        assert!(m("n>3,n<10", "n=5"));
        assert!(m("example.com/team=a", "example.com/team=a"));
        assert!(m("app=", "app="));
        for bad in [
            "app in ()",
            "app=x,",
            "a b",
            "app=x y",
            "-a=b",
            "n>x",
            "app in (x",
            "=x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn field_selectors() {
        let kd = &KINDS[0];
        let pod = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"nodeName": "node-a"}, "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}});
        let m = |s: &str| {
            let f = FieldSelector::parse(s).unwrap();
            f.check(kd).unwrap();
            f.matches(kd, &pod)
        };
        assert!(m("spec.nodeName=node-a"));
        assert!(m("spec.nodeName==node-a,metadata.namespace=n"));
        assert!(!m("spec.nodeName!=node-a"));
        assert!(m(
            "status.phase!=Pending,status.podIP=10.0.0.1,spec.hostNetwork=false"
        ));
        assert!(m("metadata.name=a"));
        assert!(FieldSelector::parse("spec.nodeName").is_err());
        assert!(
            FieldSelector::parse("spec.foo=x")
                .unwrap()
                .check(kd)
                .is_err()
        );
        assert_eq!(
            FieldSelector::parse(r"metadata.name=a\,b").unwrap().0[0].2,
            "a,b"
        );
        assert!(
            FieldSelector::parse("metadata.namespace=x")
                .unwrap()
                .check(&KINDS[1])
                .is_err()
        );
    }

    #[test]
    fn versions_and_tokens() {
        let mut v = vec!["v1alpha3", "v1", "v1beta1", "v2alpha1"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, ["v1", "v1beta1", "v2alpha1", "v1alpha3"]);
        assert_eq!(
            decode_continue(&encode_continue(42, "ns/a")),
            Some((42, "ns/a".to_string()))
        );
        assert_eq!(now_rfc3339().len(), 20);
    }
}
