//! The few `bpf(2)` commands aya does not expose for pinned links: open a pin,
//! swap a link's program atomically (`BPF_LINK_UPDATE`), detach a link, and read
//! link, program and map information. Plus the bpffs check for `pinDir`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_ITER_CREATE: u32 = 33;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_LINK_CREATE: u32 = 28;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_LINK_DETACH: u32 = 34;

/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `union bpf_attr` is at most this large for the commands used here; the kernel
/// requires the unused tail to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn put_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised, properly sized `union bpf_attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens a pinned object (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut a).map(owned)
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Pins an object (`BPF_OBJ_PIN`).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64)
        .put_u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// Attach types (`enum bpf_attach_type`).
pub mod attach {
    pub const CGROUP_INET_EGRESS: u32 = 1;
    pub const CGROUP_INET_SOCK_CREATE: u32 = 2;
    pub const CGROUP_SOCK_OPS: u32 = 3;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP6_SENDMSG: u32 = 15;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_SETSOCKOPT: u32 = 22;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
    pub const LSM_CGROUP: u32 = 43;
    pub const TCX_INGRESS: u32 = 46;
    pub const TCX_EGRESS: u32 = 47;
    pub const TRACE_ITER: u32 = 28;
}

pub const MAP_TYPE_HASH: u32 = 1;

/// Creates a map (`BPF_MAP_CREATE`).
pub fn map_create(map_type: u32, key_size: u32, value_size: u32, max: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, map_type)
        .put_u32(4, key_size)
        .put_u32(8, value_size)
        .put_u32(12, max);
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

/// Writes one entry (`BPF_MAP_UPDATE_ELEM`, any flag).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32)
        .put_u64(8, key.as_ptr() as u64)
        .put_u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Deletes one entry (`BPF_MAP_DELETE_ELEM`).
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32)
        .put_u64(8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut a).map(drop)
}

/// Loads an iterator program (`BPF_PROG_TYPE_TRACING`, `BPF_TRACE_ITER`) for
/// the iterator whose `bpf_iter_*` function has BTF id `attach_btf_id`. The
/// error carries the verifier's last line.
pub fn prog_load_iter(insns: &[u64], attach_btf_id: u32) -> io::Result<OwnedFd> {
    const PROG_TYPE_TRACING: u32 = 26;
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = Attr::new();
    a.put_u32(0, PROG_TYPE_TRACING)
        .put_u32(4, insns.len() as u32)
        .put_u64(8, insns.as_ptr() as u64)
        .put_u64(16, license.as_ptr() as u64)
        .put_u32(24, 1)
        .put_u32(28, log.len() as u32)
        .put_u64(32, log.as_mut_ptr() as u64)
        .put_u32(68, attach::TRACE_ITER)
        .put_u32(108, attach_btf_id);
    a.0[48..62].copy_from_slice(b"egress_revoke\0");
    bpf(BPF_PROG_LOAD, &mut a).map(owned).map_err(|e| {
        let text = String::from_utf8_lossy(&log);
        let last = text
            .trim_end_matches('\0')
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_owned();
        io::Error::new(e.kind(), format!("{e}: {last}"))
    })
}

/// Runs an iterator once over what it iterates (`BPF_ITER_CREATE`, read to the
/// end), in the calling thread's network namespace.
pub fn iter_run(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    let fd = bpf(BPF_ITER_CREATE, &mut a).map(owned)?;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into our own buffer from our own descriptor.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Ok(()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => {}
        }
    }
}

/// Creates a link (`BPF_LINK_CREATE`) of `prog` at `target`: a cgroup directory's
/// descriptor, or an interface index for TCX.
pub fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32)
        .put_u32(4, target)
        .put_u32(8, attach_type);
    bpf(BPF_LINK_CREATE, &mut a).map(owned)
}

/// Replaces the program of a link in one step (`BPF_LINK_UPDATE`): every hook
/// runs either the old or the new program, never none.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32)
        .put_u32(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

/// Detaches a link from its hook whoever holds it (`BPF_LINK_DETACH`).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut a).map(drop)
}

fn info(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u32(4, buf.len() as u32)
        .put_u64(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map(drop)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// What `struct bpf_link_info` says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// cgroup links: the cgroup id; TCX links: the interface index.
    pub target: u64,
    /// 0 once the link was detached (its cgroup or interface went away).
    pub attached: bool,
}

pub const LINK_TYPE_CGROUP: u32 = 3;
pub const LINK_TYPE_TCX: u32 = 11;

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut b = [0u8; 64];
    info(link, &mut b)?;
    let link_type = u32_at(&b, 0);
    let (target, attached) = match link_type {
        // union at offset 16: cgroup { u64 cgroup_id; u32 attach_type }
        LINK_TYPE_CGROUP => {
            let id = u64_at(&b, 16);
            (id, id != 0)
        }
        // tcx { u32 ifindex; u32 attach_type }
        LINK_TYPE_TCX => {
            let i = u64::from(u32_at(&b, 16));
            (i, i != 0)
        }
        _ => (0, true),
    };
    Ok(LinkInfo {
        link_type,
        id: u32_at(&b, 4),
        prog_id: u32_at(&b, 8),
        target,
        attached,
    })
}

/// The tag (hash of the instructions) of a loaded program.
pub fn prog_tag(prog: BorrowedFd<'_>) -> io::Result<[u8; 8]> {
    // struct bpf_prog_info { u32 type; u32 id; u8 tag[8]; ... }
    let mut b = [0u8; 256];
    info(prog, &mut b)?;
    Ok(b[8..16].try_into().expect("8 bytes"))
}

/// The tag of the program with this id.
pub fn prog_tag_by_id(id: u32) -> io::Result<[u8; 8]> {
    let mut a = Attr::new();
    a.put_u32(0, id);
    let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut a)?);
    use std::os::fd::AsFd;
    prog_tag(fd.as_fd())
}

/// The shape of a map: what must match for a pinned map to be reused.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// `struct bpf_map_info { u32 type, id, key_size, value_size, max_entries, map_flags; ... }`
pub fn map_shape(map: BorrowedFd<'_>) -> io::Result<MapShape> {
    let mut b = [0u8; 128];
    info(map, &mut b)?;
    Ok(MapShape {
        map_type: u32_at(&b, 0),
        key_size: u32_at(&b, 8),
        value_size: u32_at(&b, 12),
        max_entries: u32_at(&b, 16),
        flags: u32_at(&b, 20),
    })
}

/// bpffs holds only bpf objects (and names without dots): a small record is
/// kept as the one value of a pinned array map.
pub const RECORD_SIZE: u32 = 16 * 1024;

/// Writes `bytes` (at most [`RECORD_SIZE`]) as a pinned one-entry array at `path`.
pub fn write_record(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > RECORD_SIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "record too large",
        ));
    }
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(_) => {
            // BPF_MAP_TYPE_ARRAY, key u32, one value.
            let mut a = Attr::new();
            a.put_u32(0, 2)
                .put_u32(4, 4)
                .put_u32(8, RECORD_SIZE)
                .put_u32(12, 1);
            let fd = bpf(BPF_MAP_CREATE, &mut a).map(owned)?;
            use std::os::fd::AsFd;
            obj_pin(fd.as_fd(), path)?;
            fd
        }
    };
    let mut value = vec![0u8; RECORD_SIZE as usize];
    value[..bytes.len()].copy_from_slice(bytes);
    let key = 0u32;
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u64(8, &key as *const u32 as u64)
        .put_u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Reads a record [`write_record`] wrote (trailing zeros removed).
pub fn read_record(path: &Path) -> io::Result<Vec<u8>> {
    let fd = obj_get(path)?;
    let mut value = vec![0u8; RECORD_SIZE as usize];
    let key = 0u32;
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u64(8, &key as *const u32 as u64)
        .put_u64(16, value.as_mut_ptr() as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut a)?;
    let end = value.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    value.truncate(end);
    Ok(value)
}

/// Is `path` on a bpf filesystem?
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}
