//! Command line: `egress-agent run --config FILE`, and the commands beside the
//! daemon: `validate` ([`check`]), `explain`, `inspect`.

pub mod check;
pub mod explain;
pub mod inspect;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "egress-agent",
    version,
    about = "Kernel-enforced egress control from Istio ServiceEntries"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enforce the registry until SIGTERM/SIGINT.
    Run {
        /// Agent configuration (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate Istio resources as Istio does. Exit status 0: valid (warnings are
    /// printed), 1: something is invalid.
    Validate {
        /// Files or directories of YAML.
        #[arg(required_unless_present = "config")]
        paths: Vec<PathBuf>,
        /// The agent's configuration file too (`${VAR}` taken from the
        /// environment, as the agent would).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Validate as with `PILOT_ENABLE_IP_AUTOALLOCATE=false`.
        #[arg(long)]
        no_auto_allocate: bool,
    },
    /// Show how a connection would be classified, step by step, from the same
    /// compiled state the kernel gets.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// NAMESPACE/WORKLOAD as in the config's `workloads:`.
        #[arg(long)]
        from: String,
        /// HOST_OR_IP:PORT, with /udp for UDP.
        #[arg(long)]
        to: String,
    },
    /// End enforcement: detach every program the instance pinned and remove its
    /// pins. Stopping the agent does not (fail static); this does.
    Uninstall {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Dump the live maps of a running agent in readable form.
    Inspect {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Sets up `tracing`, with `RUST_LOG` filtering (default `info`) and `log` records
/// (from aya) bridged in.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
