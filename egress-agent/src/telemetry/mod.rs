//! What the agent reports: Prometheus metrics and the access log.

pub mod catalog;
pub mod events;
pub mod metrics;
