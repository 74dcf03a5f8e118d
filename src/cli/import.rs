//! `recsys import`: public data sets into the input schema.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum ImportCommand {
    /// MovieLens 100K, 1M or a CSV release (latest, 20M, 25M, 32M) → interactions.parquet + items.parquet.
    Movielens {
        /// Directory holding u.data + u.item, ratings.dat + movies.dat, or ratings.csv + movies.csv.
        #[arg(long)]
        input: PathBuf,
        /// Directory to write interactions.parquet and items.parquet into.
        #[arg(long)]
        output: PathBuf,
    },
}

/// Runs one `recsys import` command.
pub(crate) fn run(command: &ImportCommand) -> Result<ExitCode> {
    match command {
        ImportCommand::Movielens { input, output } => {
            let summary = recsys_offline::movielens::import(input, output)
                .with_context(|| format!("importing MovieLens from {}", input.display()))?;
            println!(
                "{}",
                serde_json::json!({
                    "release": format!("{:?}", summary.release),
                    "interactions": summary.interactions,
                    "items": summary.items,
                    "output": output,
                })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
