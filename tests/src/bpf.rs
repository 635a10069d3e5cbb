//! Asking the kernel what is attached to a cgroup (BPF_PROG_QUERY), independently
//! of the agent.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

const BPF_PROG_QUERY: libc::c_long = 16;

/// `enum bpf_attach_type` values the agent uses.
pub const CGROUP_INET4_CONNECT: u32 = 10;
pub const CGROUP_INET6_CONNECT: u32 = 11;
pub const CGROUP_UDP4_SENDMSG: u32 = 14;
pub const CGROUP_UDP6_SENDMSG: u32 = 15;
pub const CGROUP_UDP4_RECVMSG: u32 = 19;
pub const CGROUP_UDP6_RECVMSG: u32 = 20;
pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
pub const CGROUP_INET6_GETPEERNAME: u32 = 30;

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Number of programs attached directly at `cgroup` for `attach_type`.
pub fn attached_count(cgroup: &Path, attach_type: u32) -> u32 {
    let f = File::open(cgroup).unwrap_or_else(|e| panic!("open {}: {e}", cgroup.display()));
    let mut attr = QueryAttr {
        target_fd: f.as_raw_fd() as u32,
        attach_type,
        ..QueryAttr::default()
    };
    // SAFETY: BPF_PROG_QUERY with a zero prog_ids pointer only writes prog_cnt
    // (and flags) into the attr we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            size_of::<QueryAttr>() as u32,
        )
    };
    assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    attr.prog_cnt
}
