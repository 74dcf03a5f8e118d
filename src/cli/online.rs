//! `recsys online`: the ranking server, its load benchmark and soak.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{load_config, mirror_remote_root, runtime, shutdown_signal, validated};

#[derive(Subcommand)]
pub(crate) enum OnlineCommand {
    /// Serve recsys.v1.Ranking until Ctrl-C / SIGTERM, hot-swapping models as CURRENT moves.
    Serve {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// gRPC address [config: online.listen, default 127.0.0.1:50051].
        #[arg(long)]
        listen: Option<String>,
        /// /metrics, /healthz, /readyz address [config: online.metrics_listen, default 127.0.0.1:9464].
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Load generator and scoring benchmark against NumPy (prints figures and ratios).
    Bench(Box<recsys_bench::online::BenchArgs>),
    /// Overload and fault benchmark: open-loop load at twice saturation for minutes (admitted
    /// p99, shed latency, RSS, panics), then a flood of made-up ids and a cancel storm against a
    /// frozen Redis store (RSS before and after).
    Soak(recsys_bench::soak::SoakArgs),
}

/// Runs one `recsys online` command.
pub(crate) fn run(command: &OnlineCommand, config_path: Option<&Path>) -> Result<ExitCode> {
    match command {
        OnlineCommand::Serve {
            model_root,
            listen,
            metrics_listen,
        } => {
            let mut config = load_config(config_path)?;
            if let Some(root) = model_root {
                config.model.root = root.clone();
            }
            if let Some(l) = listen {
                config.online.listen = l.clone();
            }
            if let Some(l) = metrics_listen {
                config.online.metrics_listen = l.clone();
            }
            let mut config = validated(config)?;
            runtime()?.block_on(async {
                let poll = std::time::Duration::from_millis(config.online.model_poll_ms);
                let _mirror = mirror_remote_root(&mut config, poll).await?;
                let server = recsys_online::server::start(&config).await?;
                server.run_until(shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
        }
        OnlineCommand::Bench(args) => {
            runtime()?
                .block_on(recsys_bench::online::run(args))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        OnlineCommand::Soak(args) => {
            runtime()?
                .block_on(recsys_bench::soak::run(args))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
