//! `recsys`: the one binary of the platform. It parses arguments, loads the config and wires the
//! tier libraries together; the logic lives in `offline/`, `nearline/`, `online/` and `shared/`.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 the publish gate refused a model.

mod cli;
mod client;
mod quickstart;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use cli::{ballista::BallistaCommand, import::ImportCommand, nearline::NearlineCommand};
use cli::{offline::OfflineCommand, online::OnlineCommand};

#[derive(Parser)]
#[command(
    name = "recsys",
    version,
    about = "Three-tier recommendation platform: offline training, nearline fold-in, online ranking",
    after_help = "New here? Start with `recsys quickstart`: the whole platform in one process, no \
                  services. Then `recsys client homepage --user ID` asks the API it serves."
)]
struct Cli {
    /// TOML configuration file; `RECSYS__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, env = "RECSYS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr (filter with RECSYS_LOG, e.g. `RECSYS_LOG=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Convert public data sets into the input schema.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Offline tier: batch jobs that build features, train, evaluate and publish models.
    #[command(subcommand)]
    Offline(OfflineCommand),
    /// Nearline tier: Kafka workers folding member events into their vectors.
    #[command(subcommand)]
    Nearline(NearlineCommand),
    /// Online tier: the gRPC ranking API.
    #[command(subcommand)]
    Online(OnlineCommand),
    /// The whole platform in one process on embedded defaults, no services: train, serve, fold a
    /// member's events in, print their homepage before and after; serves until Ctrl-C.
    Quickstart(quickstart::QuickstartArgs),
    /// Ask a running server from the terminal: Rank, Homepage or SimilarItems, with TLS and an
    /// API key (no .proto files or other tools needed).
    Client {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        call: client::ClientCommand,
    },
    /// Apache Ballista cluster processes for the feature jobs (`offline.engine = "ballista"`).
    #[command(subcommand)]
    Ballista(BallistaCommand),
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config_path = cli.config.as_deref();
    match &cli.command {
        Command::Import(command) => cli::import::run(command),
        Command::Offline(command) => cli::offline::run(command, config_path),
        Command::Nearline(command) => cli::nearline::run(command, config_path),
        Command::Online(command) => cli::online::run(command, config_path),
        Command::Ballista(command) => {
            // Ballista's planners recurse deeply over plans (its own binaries use 32 MiB stacks).
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_stack_size(32 << 20)
                .build()
                .context("starting the async runtime")?
                .block_on(cli::ballista::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Quickstart(args) => {
            let config = cli::load_config(config_path)?;
            quickstart::run(args, config, cli::shutdown_signal())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client { connection, call } => {
            // A command whose output is read by a pipe ends like any Unix tool when the reader
            // goes (`recsys client … | head`): by SIGPIPE, quietly, not by a panic on the next
            // print. Only here: the services keep ignoring it, as Rust sets it up.
            // SAFETY: restoring a signal's default disposition before any thread is started.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            cli::runtime()?.block_on(client::run(connection, call))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The quickstart prints its own narrative on stdout; its logs default to warnings only.
    let default_filter = match cli.command {
        Command::Quickstart(_) | Command::Client { .. } => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECSYS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
