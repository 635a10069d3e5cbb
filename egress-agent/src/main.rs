use anyhow::Context;
use clap::Parser;
use egress_agent::cli::{Cli, Command, init_logging};
use egress_agent::config::Config;

fn main() -> anyhow::Result<()> {
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
        }
    }
    Ok(())
}
