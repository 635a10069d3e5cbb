//! `cargo xtask setup`: everything a fresh Debian 12 machine of this kind lacks to
//! build, test, demo and benchmark egress. Every step checks first and skips what is
//! already there, so a second run costs well under a few seconds.
//!
//! Only package registries are reachable: Debian's `rustc-web` (whose library source
//! ships as `rust-web-src`, which rustup's toolchains here lack) builds the eBPF
//! programs with `-Z build-std=core`, and `bpf-linker` is built from crates.io against
//! the LLVM that compiler links.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{run, sh_output};

/// Debian's compiler and cargo used for the BPF target (rustup's lack `rust-src`).
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Tools the tests, demo and benchmarks drive as real clients and peers.
const RUNTIME_PACKAGES: &[&str] = &[
    "iproute2",
    "curl",
    "dnsutils",
    "procps",
    "util-linux",
    "iptables",
    "nftables",
    "haproxy",
];

pub fn setup(with_runtime_tools: bool) -> Result<()> {
    if !is_root() {
        bail!("setup installs packages and mounts bpffs: run it as root");
    }
    let mut apt = Apt::default();
    apt.ensure(&["rustc-web", "cargo-web", "rust-web-src", "rust-web-clippy"])?;
    let llvm = debian_llvm_major()?;
    apt.ensure(&[&format!("llvm-{llvm}-dev"), "zlib1g-dev", "libzstd-dev"])?;
    if with_runtime_tools {
        apt.ensure(RUNTIME_PACKAGES)?;
    }
    ensure_bpf_linker(llvm)?;
    ensure_bpffs()?;
    Ok(())
}

fn is_root() -> bool {
    sh_output("id", &["-u"])
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn ensure(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("setup: installing {}", missing.join(" "));
        if !self.updated {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
    }
}

fn dpkg_installed(package: &str) -> bool {
    sh_output("dpkg-query", &["-W", "-f=${Status}", package])
        .map(|s| s.trim() == "install ok installed")
        .unwrap_or(false)
}

/// The LLVM major version Debian's rustc links; bpf-linker must use the same one.
pub fn debian_llvm_major() -> Result<u32> {
    let out = sh_output(DEBIAN_RUSTC, &["-vV"])?;
    out.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("no `LLVM version:` line in `{DEBIAN_RUSTC} -vV`:\n{out}"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
}

pub fn bpf_linker_path() -> PathBuf {
    cargo_home().join("bin").join("bpf-linker")
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    let bin = bpf_linker_path();
    // A stamp records the LLVM it was built against: a Debian update of rustc-web
    // can move LLVM, and a linker built for another LLVM emits unusable objects.
    let stamp = cargo_home().join(format!(".bpf-linker-{BPF_LINKER_VERSION}-llvm-{llvm}"));
    if bin.exists() && stamp.exists() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm}");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
        ]))?;
    std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn ensure_bpffs() -> Result<()> {
    let path = Path::new("/sys/fs/bpf");
    if Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::create_dir_all(path).ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
