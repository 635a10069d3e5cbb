//! The kernel/user contract of egress: map names, `#[repr(C)]` keys and values, the
//! verdict/reason/counter enums, and the pure decision logic the eBPF programs run.
//!
//! Built `no_std` for the BPF target; on the host it is an ordinary crate whose logic
//! is unit-tested against an in-memory [`decide::Dataplane`].
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod addr;
pub mod decide;
pub mod link;
pub mod maps;

pub use maps::*;
