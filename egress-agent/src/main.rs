use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use egress_agent::cli::{Cli, Command, Output, init_logging};
use egress_agent::config::Config;
use egress_agent::istio::validate;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(egress_agent::agent::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            paths,
            config,
            output,
            no_auto_allocate,
        } => {
            if let Some(path) = config {
                let c = Config::load(&path)?;
                eprintln!(
                    "{}: valid ({}, {})",
                    path.display(),
                    c.outbound.label(),
                    match &c.kubernetes {
                        Some(k) => format!("Kubernetes mode, node {}", k.node_name),
                        None => "file mode".into(),
                    }
                );
                if paths.is_empty() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let ctx = validate::Context {
                auto_allocate: !no_auto_allocate,
            };
            let report = egress_agent::cli::check::validate_paths(&paths, &ctx)?;
            match output {
                Output::Text => print!("{}", egress_agent::cli::check::render_text(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Explain { config, from, to } => {
            let config = Config::load(&config)?;
            print!(
                "{}",
                egress_agent::cli::explain::explain(&config, &from, &to)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { config } => {
            let config = Config::load(&config)?;
            if let Some(pid) = egress_agent::agent::running_pid(&config) {
                eprintln!(
                    "note: agent pid {pid} is still running; it keeps its own descriptors but \
                     its programs are detached now"
                );
            }
            let pins = config.pin_path();
            let detached = egress_agent::agent::uninstall(&config)?;
            println!(
                "uninstalled {}: {detached} links detached, pins removed",
                pins.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { config, output } => {
            let config = Config::load(&config)?;
            let snap = egress_agent::cli::inspect::snapshot(
                &config.pin_path(),
                &config.catalog_file(),
                egress_agent::agent::running_pid(&config),
            )?;
            match output {
                Output::Text => print!("{}", egress_agent::cli::inspect::render_text(&snap)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&snap)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
