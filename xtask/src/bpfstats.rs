//! The kernel's own accounting of the loaded programs (`kernel.bpf_stats_enabled`):
//! runs and run time per egress program, read with the BPF syscall (the same as
//! `bench/bpfstats.py`). The bench uses it for the per-program cost of every layer.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `struct bpf_prog_info` up to `run_cnt` (the kernel fills what fits).
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    ty: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut [u32]) -> libc::c_long {
    // SAFETY: `attr` is a buffer of the size passed; the kernel reads and writes
    // only within it.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    }
}

/// Runs and run time (ns) of every loaded program whose name starts with
/// `egress_`, summed by name (the kernel keeps 15 characters of it).
pub fn snapshot() -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut id = 0u32;
    loop {
        let mut a = [id, 0, 0, 0];
        if bpf(BPF_PROG_GET_NEXT_ID, &mut a) != 0 {
            break;
        }
        id = a[1];
        let mut b = [id, 0, 0, 0];
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut b);
        if fd < 0 {
            continue;
        }
        let mut info = ProgInfo::default();
        let ptr = std::ptr::from_mut(&mut info) as u64;
        let mut c = [
            fd as u32,
            std::mem::size_of::<ProgInfo>() as u32,
            ptr as u32,
            (ptr >> 32) as u32,
        ];
        let rc = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut c);
        // SAFETY: closing the fd we were given.
        unsafe { libc::close(fd as i32) };
        if rc != 0 {
            continue;
        }
        let len = info.name.iter().position(|&c| c == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&info.name[..len]).into_owned();
        if name.starts_with("egress_") {
            let e = out.entry(name).or_default();
            e.0 += info.run_cnt;
            e.1 += info.run_time_ns;
        }
    }
    Ok(out)
}

/// Turns the kernel's per-program statistics on until dropped (they cost a
/// clock read per run, so only the profiling phase has them).
pub struct Enabled {
    before: String,
}

impl Enabled {
    pub fn new() -> Result<Self> {
        let before = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing {STATS_SYSCTL}"))?;
        Ok(Self { before })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, self.before.trim());
    }
}

/// The difference of two snapshots: per program, runs and average ns per run.
pub fn delta(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, f64)> {
    after
        .iter()
        .filter_map(|(name, (runs, ns))| {
            let (r0, n0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = runs.saturating_sub(r0);
            (runs > 0).then(|| {
                (
                    name.clone(),
                    (runs, ns.saturating_sub(n0) as f64 / runs as f64),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_averages_only_what_ran_in_between() {
        let before = BTreeMap::from([
            ("egress_a".to_owned(), (10, 1000)),
            ("egress_b".to_owned(), (5, 50)),
        ]);
        let after = BTreeMap::from([
            ("egress_a".to_owned(), (30, 5000)),
            ("egress_b".to_owned(), (5, 50)),
            ("egress_c".to_owned(), (4, 400)),
        ]);
        let d = delta(&before, &after);
        assert_eq!(d["egress_a"], (20, 200.0));
        assert_eq!(d["egress_c"], (4, 100.0));
        assert!(!d.contains_key("egress_b"));
    }
}
