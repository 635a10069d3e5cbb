#!/usr/bin/env python3
"""Average run time of the loaded egress programs, from the kernel's BPF stats.

Usage (as root, while something drives the programs, e.g. `cargo xtask bench --quick`):
    sysctl -w kernel.bpf_stats_enabled=1
    python3 bench/bpfstats.py SECONDS
    sysctl -w kernel.bpf_stats_enabled=0   # the stats cost ~30-40 ns per program run

Polls every program named egress* (BPF_PROG_GET_NEXT_ID / BPF_OBJ_GET_INFO_BY_FD) for
SECONDS and prints runs and average ns per run, summed over programs of one name.
"""
import ctypes, ctypes.util, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = 321
class Info(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8*8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char*16), ("ifindex", ctypes.c_uint32),
        ("gpl", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64), ("pad", ctypes.c_uint8*256)]
def bpf(cmd, attr):
    return libc.syscall(SYS_bpf, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
def progs():
    out = {}
    cur = 0
    while True:
        a = (ctypes.c_uint32*4)(cur, 0, 0, 0)
        if bpf(11, a) != 0: break
        cur = a[1]
        b = (ctypes.c_uint32*4)(cur, 0, 0, 0)
        fd = bpf(13, b)
        if fd < 0: continue
        info = Info()
        class GI(ctypes.Structure):
            _fields_=[("fd",ctypes.c_uint32),("len",ctypes.c_uint32),("info",ctypes.c_uint64)]
        gi = GI(fd, ctypes.sizeof(Info)-256, ctypes.addressof(info))
        if bpf(15, gi) == 0 and info.name.startswith(b"egress"):
            out[cur] = (info.name.decode(), info.run_time_ns, info.run_cnt)
        os.close(fd)
    return out
best = {}
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for id_, (n, t, c) in progs().items():
        best[id_] = (n, t, c)
    time.sleep(0.3)
agg = {}
for n, t, c in best.values():
    T, C = agg.get(n, (0, 0)); agg[n] = (T + t, C + c)
for n, (t, c) in sorted(agg.items()):
    print(f"{n:24} runs {c:9} avg {t/max(c,1):7.1f} ns")
