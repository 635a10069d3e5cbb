//! The eBPF build, shared by the agent's build script (the object it embeds) and
//! the tests' (a variant object for upgrade tests): Debian's rustc-web toolchain
//! for `bpfel-unknown-none` with `-Z build-std=core`.

use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Builds `egress-ebpf` with `features` in `target_dir`; returns the object's path.
pub fn build(root: &Path, target_dir: &Path, features: &[&str]) -> PathBuf {
    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !std::path::Path::new(tool).exists() {
            panic!(
                "{tool} is missing: the eBPF programs build with Debian's rustc-web toolchain. \
                 Run `cargo xtask setup` (as root) first."
            );
        }
    }
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
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", DEBIAN_RUSTC)
        .env("CARGO_TARGET_DIR", target_dir)
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
        .args(features.iter().flat_map(|f| ["--features", f]))
        .status()
        .expect("running Debian's cargo for the eBPF build");
    if !status.success() {
        panic!("building egress-ebpf failed ({status})");
    }
    target_dir.join("bpfel-unknown-none/release/egress")
}
