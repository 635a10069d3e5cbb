//! DNS: the resolver that follows the records of DNS and DNS_ROUND_ROBIN entries,
//! and the proxy that answers workloads' queries (VIPs for registry hosts, upstream
//! answers for the rest, learning the addresses of NONE and wildcard hosts into
//! the kernel before the answer is released).

pub mod proxy;
pub mod resolver;
pub mod table;

pub use table::{DnsTables, HostDns, ViewDns};
