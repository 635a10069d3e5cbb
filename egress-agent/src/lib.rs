//! egress agent: compiles Istio ServiceEntries into eBPF maps and keeps the kernel's
//! per-`connect()` enforcement in step with them.
//!
//! Data flow: [`config`] and [`istio`] (read) → [`validate`] → [`registry`] (model) →
//! [`workloads`] → [`compile`] (desired map content) → [`sync`] (diff) → [`loader`]
//! (kernel); [`events`] and [`metrics`] carry what the kernel saw back out.

pub mod agent;
pub mod alloc;
pub mod bpfsys;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod compile;
pub mod config;
pub mod dns;
pub mod events;
pub mod explain;
pub mod inspect;
pub mod istio;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod preflight;
pub mod registry;
pub mod revoke;
pub mod scope;
pub mod store;
pub mod sync;
pub mod traffic;
pub mod validate;
pub mod validate_traffic;
pub mod workloads;
