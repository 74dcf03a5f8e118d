//! Where the feature jobs' SQL runs: DataFusion in this process, or an Apache Ballista cluster
//! (scheduler + executors, the distributed engine built on the same DataFusion version).
//!
//! The cluster's processes are this binary's own (`recsys ballista scheduler`, `recsys ballista
//! executor`), built from the `ballista-scheduler` and `ballista-executor` library crates: one
//! DataFusion build on client and executors, and executors that reach object storage with the
//! same `AWS_*` environment as the job.
//!
//! The same SQL files run on both engines and return the same tables. Tables the job builds in
//! memory on the local engine (the training table the popularity and history jobs read) are views
//! on the cluster, so no large table travels inside a query plan.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use ballista_core::object_store::{
    runtime_env_with_s3_support, session_config_with_s3_support, session_state_with_s3_support,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use recsys_shared::config::{BallistaConfig, Engine, OfflineConfig};

use crate::{OfflineError, Result};

/// Settings both engines share: no view types (the jobs read Utf8), `threads` partitions.
fn tune(config: SessionConfig, threads: usize) -> SessionConfig {
    config
        .with_target_partitions(threads)
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
}

/// The cluster `config` names, if the feature jobs run on one.
pub fn cluster(config: &OfflineConfig) -> Option<&BallistaConfig> {
    (config.engine == Engine::Ballista).then_some(&config.ballista)
}

/// A session in this process, or on the Ballista `cluster`.
pub async fn session(cluster: Option<&BallistaConfig>, threads: usize) -> Result<SessionContext> {
    match cluster {
        None => Ok(SessionContext::new_with_config(tune(
            SessionConfig::new(),
            threads,
        ))),
        Some(ballista) => {
            let config = tune(session_config_with_s3_support(), threads);
            let state = session_state_with_s3_support(config)
                .map_err(OfflineError::datafusion("configuring the Ballista session"))?;
            SessionContext::remote_with_state(&ballista.scheduler, state)
                .await
                .map_err(OfflineError::datafusion(format!(
                    "connecting to the Ballista scheduler {}",
                    ballista.scheduler
                )))
        }
    }
}

/// Runs a Ballista scheduler on `bind` until the process ends; an executor without a heartbeat
/// for `executor_timeout_seconds` is dead and its tasks run elsewhere.
pub async fn run_scheduler(bind: SocketAddr, executor_timeout_seconds: u64) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;

    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        executor_timeout_seconds,
        // Looked for at least three times per timeout (Ballista's default: every 15 s).
        expire_dead_executor_interval_seconds: (executor_timeout_seconds / 3).clamp(1, 15),
        no_executors_grace_period_seconds: executor_timeout_seconds,
        ..SchedulerConfig::default()
    }
    .with_override_config_producer(Arc::new(session_config_with_s3_support))
    .with_override_session_builder(Arc::new(session_state_with_s3_support));
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| OfflineError::Usage(format!("Ballista scheduler: {e}")))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| OfflineError::Usage(format!("Ballista scheduler on {bind}: {e}")))
}

/// What an executor needs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// `host:port`.
    pub scheduler: String,
    pub bind: std::net::IpAddr,
    /// What to advertise; `None`: the bind address, or the local address of the route to the
    /// scheduler when binding every interface.
    pub advertise_host: Option<String>,
    /// Arrow Flight port (shuffle data).
    pub port: u16,
    /// gRPC port (tasks from the scheduler).
    pub grpc_port: u16,
    /// Concurrent tasks. 0 = the CPU count.
    pub slots: usize,
    /// Shuffle files.
    pub work_dir: Option<std::path::PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_seconds: u64,
}

/// Runs a Ballista executor registered with `options.scheduler` until the process ends.
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};

    let bad = |problem: String| {
        OfflineError::Usage(format!("--scheduler {}: {problem}", options.scheduler))
    };
    let (host, port) = options
        .scheduler
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port".into()))?;
    let port: u16 = port.parse().map_err(|e| bad(format!("port: {e}")))?;
    let advertise = match &options.advertise_host {
        Some(host) => host.clone(),
        None if !options.bind.is_unspecified() => options.bind.to_string(),
        None => {
            let scheduler = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| bad(format!("cannot resolve: {e}")))?
                .next()
                .ok_or_else(|| bad("resolves to no address".into()))?;
            let probe = std::net::UdpSocket::bind((options.bind, 0))
                .and_then(|socket| socket.connect(scheduler).map(|_| socket))
                .and_then(|socket| socket.local_addr())
                .map_err(|e| bad(format!("no route: {e}")))?;
            probe.ip().to_string()
        }
    };
    tracing::info!(scheduler = %options.scheduler, %advertise, "starting the Ballista executor");
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind.to_string(),
        external_host: Some(advertise),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: host.to_string(),
        scheduler_port: port,
        work_dir: options
            .work_dir
            .as_ref()
            .map(|p| p.to_string_lossy().to_string()),
        executor_heartbeat_interval_seconds: options.heartbeat_seconds.max(1),
        ..ExecutorProcessConfig::default()
    };
    if options.slots > 0 {
        config.vcores = options.slots;
    }
    config.override_config_producer = Some(Arc::new(session_config_with_s3_support));
    config.override_runtime_producer = Some(Arc::new(runtime_env_with_s3_support));
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| OfflineError::Usage(format!("Ballista executor: {e}")))
}
