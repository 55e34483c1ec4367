use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// hyfleet: telemetry backend for hydrogen vehicle fleets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); also `HYFLEET_CONFIG`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest, rules, webhooks and the HTTP API.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run the fleet simulator against a broker.
    Simulate(hyfleet::sim::SimArgs),
    /// Run the whole system here: embedded broker, simulated fleet, API and dashboard.
    Demo,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = (cli.config, cli.command);
    Ok(())
}
