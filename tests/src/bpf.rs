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

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;

/// A pinned map, opened read-only by path (BPF_OBJ_GET), independently of the
/// agent: what the kernel holds.
pub struct PinnedMap(std::os::fd::OwnedFd);

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl PinnedMap {
    /// Opens the pin; `None` when it is not there.
    pub fn open(path: &Path) -> Option<Self> {
        use std::os::fd::FromRawFd;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
        let attr = ObjGetAttr {
            pathname: c.as_ptr() as u64,
            file_flags: 1 << 3, // BPF_F_RDONLY
            ..ObjGetAttr::default()
        };
        // SAFETY: BPF_OBJ_GET reads the path we own and returns a new fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &attr as *const ObjGetAttr,
                size_of::<ObjGetAttr>() as u32,
            )
        };
        // SAFETY: a fresh fd the kernel gave us.
        (fd >= 0).then(|| Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// The value for `key` (its bytes), if any; `value_size` is the map's.
    pub fn lookup(&self, key: &[u8], value_size: usize) -> Option<Vec<u8>> {
        let mut value = vec![0u8; value_size];
        let attr = ElemAttr {
            map_fd: self.0.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the kernel reads `key` and writes at most value_size bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &attr as *const ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        (rc == 0).then_some(value)
    }
}
