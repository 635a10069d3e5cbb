//! Builds the eBPF programs (`egress-ebpf`) for `bpfel-unknown-none` with Debian's
//! rustc-web toolchain and `-Z build-std=core` (rustup's toolchains here have no
//! `rust-src`), and hands the object to the agent through `OUT_DIR`.
//! `cargo xtask setup` installs that toolchain and bpf-linker.

use std::path::PathBuf;
use std::process::Command;

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

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
    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !std::path::Path::new(tool).exists() {
            panic!(
                "{tool} is missing: the eBPF programs build with Debian's rustc-web toolchain. \
                 Run `cargo xtask setup` (as root) first."
            );
        }
    }
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(DEBIAN_CARGO);
    // The outer cargo's settings must not leak into the inner build for another
    // target with another compiler.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOC"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .current_dir(&root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", DEBIAN_RUSTC)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .args([
            "build",
            "--package",
            "egress-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .status()
        .expect("running Debian's cargo for the eBPF build");
    if !status.success() {
        panic!("building egress-ebpf failed ({status})");
    }
    let built = target_dir.join("bpfel-unknown-none/release/egress");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}
