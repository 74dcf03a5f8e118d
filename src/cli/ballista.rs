//! `recsys ballista`: the Apache Ballista scheduler and executor processes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::shutdown_signal;

#[derive(Subcommand)]
pub(crate) enum BallistaCommand {
    /// A Ballista scheduler: plans the feature jobs' SQL into stages for the executors. Runs until
    /// Ctrl-C / SIGTERM.
    Scheduler {
        /// gRPC address the executors and the offline job connect to.
        #[arg(long, default_value = "127.0.0.1:50050")]
        listen: std::net::SocketAddr,
        /// `/metrics`, `/healthz`, `/readyz`.
        #[arg(long, default_value = "127.0.0.1:9450")]
        metrics_listen: String,
        /// An executor silent this long is dead: its running tasks go to the others. Keep it
        /// above two of the executors' `--heartbeat-seconds`.
        #[arg(long, default_value_t = 180)]
        executor_timeout_seconds: u64,
    },
    /// A Ballista executor: runs query stages, reading inputs (local paths or object storage with
    /// the `AWS_*` environment) and serving shuffle data over Arrow Flight. Runs until Ctrl-C /
    /// SIGTERM.
    Executor {
        /// The scheduler's gRPC address, `host:port`.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Host the scheduler and other executors reach this one at [default: the bind address,
        /// or when that is 0.0.0.0 the local address of the route to the scheduler].
        #[arg(long)]
        advertise_host: Option<String>,
        /// Arrow Flight port (shuffle data).
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// gRPC port (tasks from the scheduler).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Concurrent tasks (0 = the CPU count).
        #[arg(long, default_value_t = 0)]
        slots: usize,
        /// Directory for shuffle files [default: a temporary directory].
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// `/metrics`, `/healthz`, `/readyz`.
        #[arg(long, default_value = "127.0.0.1:9451")]
        metrics_listen: String,
        /// Seconds between heartbeats to the scheduler (how soon a lost executor can be noticed).
        #[arg(long, default_value_t = 60)]
        heartbeat_seconds: u64,
    },
}

/// A Ballista scheduler or executor with the operations endpoint, until a signal.
pub(crate) async fn run(command: &BallistaCommand) -> Result<()> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let ready = Arc::new(AtomicBool::new(true));
    let (metrics, role) = match command {
        BallistaCommand::Scheduler { metrics_listen, .. } => (metrics_listen, "scheduler"),
        BallistaCommand::Executor { metrics_listen, .. } => (metrics_listen, "executor"),
    };
    let bound = recsys_shared::ops::serve_http(metrics, ready, "not ready", shutdown_signal())
        .await
        .with_context(|| format!("binding the metrics endpoint {metrics}"))?;
    tracing::info!(%bound, role, "Ballista {role} operations endpoint");
    let process = async {
        match command {
            BallistaCommand::Scheduler {
                listen,
                executor_timeout_seconds,
                ..
            } => recsys_offline::engine::run_scheduler(*listen, *executor_timeout_seconds).await,
            BallistaCommand::Executor {
                scheduler,
                bind,
                advertise_host,
                flight_port,
                grpc_port,
                slots,
                work_dir,
                heartbeat_seconds,
                ..
            } => {
                recsys_offline::engine::run_executor(recsys_offline::engine::ExecutorOptions {
                    scheduler: scheduler.clone(),
                    bind: *bind,
                    advertise_host: advertise_host.clone(),
                    port: *flight_port,
                    grpc_port: *grpc_port,
                    slots: *slots,
                    work_dir: work_dir.clone(),
                    heartbeat_seconds: *heartbeat_seconds,
                })
                .await
            }
        }
    };
    tokio::select! {
        result = process => result.map_err(anyhow::Error::from),
        _ = shutdown_signal() => {
            tracing::info!(role, "stopping");
            Ok(())
        }
    }
}
