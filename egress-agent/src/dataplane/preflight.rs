//! Kernel and host checks before anything is loaded, each failing with what to do.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("egress-agent must run as root (it loads eBPF programs and attaches them to cgroups)")]
    NotRoot,
    #[error(
        "{}: not a cgroup v2 directory (cgroup2 is mounted at {}): set `cgroupPath` to a directory of the cgroup2 hierarchy",
        path.display(),
        mount.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "no cgroup2 mount".into())
    )]
    NotCgroup2 {
        path: std::path::PathBuf,
        mount: Option<std::path::PathBuf>,
    },
    #[error(
        "kernel BTF (/sys/kernel/btf/vmlinux) is missing: a kernel built with CONFIG_DEBUG_INFO_BTF is required"
    )]
    NoBtf,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Is `path` a directory on a cgroup2 filesystem?
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC && path.is_dir()
}

/// Checks that the agent can load and attach at `cgroup_path`.
pub fn check(cgroup_path: &Path) -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::NotRoot);
    }
    if !is_cgroup2(cgroup_path) {
        return Err(PreflightError::NotCgroup2 {
            path: cgroup_path.to_owned(),
            mount: crate::config::cgroup2_mount(),
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_is_not_cgroup2() {
        assert!(!is_cgroup2(&std::env::temp_dir()));
        assert!(!is_cgroup2(Path::new("/nonexistent")));
    }
}
