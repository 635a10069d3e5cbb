//! egress agent: compiles Istio ServiceEntries into eBPF maps and keeps the kernel's
//! per-`connect()` enforcement in step with them.
//!
//! The folders are the architecture:
//! - [`config`]: the agent's own configuration (a leaf: it imports nothing of
//!   the agent).
//! - [`istio`]: Istio's resources read from YAML (parse), and validated as Istio
//!   validates them.
//! - [`registry`]: what validated resources mean: services and their hosts, the
//!   last good version of each resource ([`registry::store`]), VIP allocation,
//!   Sidecar scopes, and the reload pipeline that `run` and `explain` share.
//! - [`dataplane`]: the kernel side. [`dataplane::compile`] turns the registry
//!   and the workloads into the desired content of every map; the owner
//!   ([`dataplane::Owner`]) alone holds the loaded programs and maps: it applies
//!   desired state as a diff ([`dataplane::sync`]), writes what the DNS proxy
//!   learns, collects expired entries and revokes connections.
//! - [`dns`]: the DNS proxy the workloads' queries are captured to, and the
//!   resolver of DNS endpoints.
//! - [`telemetry`]: metrics (each subsystem registers its own families), the
//!   access log, and the catalog of names behind the ids the kernel reports.
//!
//! Imports go one way: `config` ← `istio` ← `registry` ← `dns` ← `dataplane`
//! (which also uses `telemetry`, itself on `config` and `istio` only); the
//! daemon and `cli` on top.
//! - [`agent`] is the daemon (`egress-agent run`); [`cli`] holds the other
//!   commands (`validate`, `explain`, `inspect`).

pub mod agent;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod istio;
pub mod k8s;
pub mod registry;
pub mod telemetry;
