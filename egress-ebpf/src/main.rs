//! egress eBPF programs: cgroup `connect4/6` classify and rewrite or refuse each
//! `connect()`, cgroup `getpeername4/6` make a rewritten socket report the address the
//! application asked for. Each program is a thin shell over `egress_common::decide`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs exist only for the BPF target; on the host this crate is checked
    // and linted, never run.
}

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

/// GPL-compatible license, required for the helpers the programs call.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
