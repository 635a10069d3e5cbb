//! The kernel side: compile the desired content of every map, load and attach
//! the programs (pinned, adopted across restarts), apply desired state as a
//! diff, revoke connections whose destination left a view.

pub mod bpfsys;
pub mod compile;
pub mod loader;
pub mod maglev;
pub mod netlink;
pub mod outlier;
pub mod owner;
pub mod preflight;
pub mod revoke;
pub mod sim;
pub mod sync;
pub mod workloads;
