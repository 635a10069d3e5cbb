//! Builds the eBPF programs (`egress-ebpf`) for `bpfel-unknown-none` with Debian's
//! rustc-web toolchain and `-Z build-std=core` (rustup's toolchains here have no
//! `rust-src`), and hands the object to the agent through `OUT_DIR`.
//! `cargo xtask setup` installs that toolchain and bpf-linker.

use std::path::PathBuf;

#[path = "build_ebpf.rs"]
mod ebpf_build;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for dir in ["egress-ebpf/src", "egress-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in [
        "egress-ebpf/Cargo.toml",
        "egress-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=EGRESS_EBPF_OBJECT");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("egress.bpf.o");

    // A prebuilt object (e.g. from `cargo xtask build-ebpf`) may be supplied.
    if let Ok(obj) = std::env::var("EGRESS_EBPF_OBJECT") {
        std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copying {obj}: {e}"));
        return;
    }
    let built = ebpf_build::build(&root, &root.join("target").join("ebpf"), &[]);
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}
