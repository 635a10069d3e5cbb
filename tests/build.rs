//! Builds the attacker-side client `tests/attack/escape.c` (plain libc, Linux
//! headers) into `$OUT_DIR/egress-escape` and exposes its path as
//! `EGRESS_ESCAPE_BIN` at compile time; and a variant of the eBPF programs (the
//! `upgrade-probe` feature) as `EGRESS_UPGRADE_OBJECT`, the "new version" the
//! lifecycle tests upgrade to.

use std::path::PathBuf;
use std::process::Command;

#[path = "../egress-agent/build_ebpf.rs"]
mod ebpf_build;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    for dir in ["egress-ebpf/src", "egress-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let built = ebpf_build::build(
        &root,
        &root.join("target").join("ebpf-upgrade-probe"),
        &["upgrade-probe"],
    );
    let variant = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"))
        .join("egress-upgrade-probe.bpf.o");
    std::fs::copy(&built, &variant).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    println!(
        "cargo:rustc-env=EGRESS_UPGRADE_OBJECT={}",
        variant.display()
    );

    let src = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("attack")
        .join("escape.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("egress-escape");
    println!("cargo:rerun-if-changed={}", src.display());
    let cc = "cc";
    let status = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(status.success(), "{cc} {} failed: {status}", src.display());
    println!("cargo:rustc-env=EGRESS_ESCAPE_BIN={}", out.display());
}
