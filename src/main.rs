//! `recsys`: the one binary of the platform. It parses arguments, loads the config and wires the
//! tier libraries together; the logic lives in `offline/`, `nearline/`, `online/` and `shared/`.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 the publish gate refused a model.

mod client;
mod quickstart;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use recsys_offline::synth::{SynthSpec, SynthWorld};
use recsys_offline::train::{evaluate_only, TrainJob};
use recsys_offline::tuning::{TuneJob, TuningResult};
use recsys_shared::artifact::{ModelMirror, ModelRoot, RemoteModelRoot};
use recsys_shared::config::{Config, Protocol};
use recsys_shared::object_storage::{is_remote, RemoteLocation};

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

#[derive(Subcommand)]
enum BallistaCommand {
    /// A Ballista scheduler: plans the feature jobs' SQL into stages for the executors. Runs until
    /// Ctrl-C / SIGTERM.
    Scheduler {
        /// gRPC address the executors and the offline job connect to.
        #[arg(long, default_value = "127.0.0.1:50050")]
        listen: std::net::SocketAddr,
        /// `/metrics`, `/healthz`, `/readyz`.
        #[arg(long, default_value = "127.0.0.1:9450")]
        metrics_listen: String,
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
    },
}

#[derive(Subcommand)]
enum ImportCommand {
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

#[derive(Subcommand)]
enum OfflineCommand {
    /// Generate a synthetic catalog and interaction log with planted structure.
    Synth {
        /// Members (ids u0000000, u0000001, …).
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Catalog items (ids i000000, i000001, …), in genre clusters.
        #[arg(long, default_value_t = 2_000)]
        items: usize,
        /// Interaction events over the 90 days before 2026-11-01, with power-law popularity and
        /// activity.
        #[arg(long, default_value_t = 500_000)]
        interactions: usize,
        /// Seed: the same seed and sizes give the same files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory to write interactions.parquet and items.parquet into.
        #[arg(long)]
        output: PathBuf,
    },
    /// Build features, evaluate, fit, publish a new model version (prints one JSON line).
    Train(TrainArgs),
    /// Evaluate the configured model on a held-out split (prints one JSON line).
    Evaluate(EvaluateArgs),
    /// Search iALS hyper-parameters on validation members carved out of the training side
    /// (successive halving); the test members of `offline evaluate` score only the final fit.
    /// Writes tuning.json and trials.jsonl; prints one JSON line.
    Tune(TuneArgs),
    /// Write a self-contained HTML report of a published version: figures with 95 % intervals,
    /// Recall@k / NDCG@k curves against popularity and compared versions, figures by member
    /// activity, the tuning trials.
    Report {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to report [default: CURRENT].
        #[arg(long)]
        version: Option<String>,
        /// Versions to draw next to it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        compare: Vec<String>,
        /// The HTML file to write.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Take rate per variant of one experiment, from archived impressions and the events
    /// attributed to them (`request_id`): members, impressions, plays, take rate and plays per
    /// member with 95 % intervals, lift against the control with its p-value.
    ExperimentReport {
        /// Archived impressions (`recsys nearline archive --kind impressions`): a directory,
        /// file or object-storage URL.
        #[arg(long)]
        impressions: PathBuf,
        /// Archived events (`recsys nearline archive --kind events`).
        #[arg(long)]
        events: PathBuf,
        /// The experiment's name.
        #[arg(long)]
        experiment: String,
        /// Event types that count as taking a recommendation (repeatable) [default: play].
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// The variant the others are compared with [default: `control`, else the first].
        #[arg(long)]
        control: Option<String>,
    },
    /// Point CURRENT at an earlier (or later) published version.
    Rollback {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to make current.
        #[arg(long)]
        to: String,
    },
    /// List the published versions, the current one marked.
    Versions {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// Check every version's files against the sha256 sums in its manifest; a version that
        /// fails is listed as CORRUPT with the reason, and the command exits 1 if the current one
        /// does.
        #[arg(long)]
        verify: bool,
    },
    /// Training benchmark against the Python library `implicit`, and accuracy on MovieLens.
    Bench(recsys_offline::bench::BenchArgs),
    /// Quality against `implicit` per data set on the identical split: recsys default and tuned,
    /// implicit default and tuned with the same search time, with 95 % intervals.
    BenchQuality(recsys_offline::quality_bench::QualityBenchArgs),
    /// Load a published model's member vectors and histories into the feature store
    /// ([store] in the config). Run after each publish; idempotent.
    LoadStore {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to load [default: CURRENT].
        #[arg(long)]
        version: Option<String>,
        /// Load even if the store records that this version was loaded already.
        #[arg(long)]
        force: bool,
    },
    /// Write member profiles (the maturity limit the online tier filters by) into the feature
    /// store from JSON lines `{"user_id": "...", "max_maturity": "PG-13"}` (`null` lifts a
    /// limit). Every line is checked first; a bad one writes nothing and names its line.
    LoadProfiles {
        /// The profiles file (.jsonl).
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Args)]
struct AlsArgs {
    /// Latent factors [config: offline.als.factors, default 64].
    #[arg(long)]
    factors: Option<usize>,
    /// L2 regularisation λ [config: offline.als.regularization, default 0.1].
    #[arg(long)]
    regularization: Option<f32>,
    /// Confidence per unit of strength, c = 1 + α r [config: offline.als.alpha, default 10].
    #[arg(long)]
    alpha: Option<f32>,
    /// ALS iterations [config: offline.als.iterations, default 15].
    #[arg(long)]
    iterations: Option<usize>,
    /// Conjugate-gradient steps per solve [config: offline.als.cg_steps, default 3].
    #[arg(long)]
    cg_steps: Option<usize>,
    /// Threads, 0 = all cores [config: offline.als.threads, default 0].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct TrainArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Items (catalog) Parquet file or directory.
    #[arg(long)]
    items: PathBuf,
    /// The model root to publish into: a directory or an object-storage URL
    /// [config: model.root, default var/models].
    #[arg(long)]
    model_root: Option<PathBuf>,
    /// Ignore events after this instant (RFC 3339, YYYY-MM-DD, or epoch milliseconds).
    #[arg(long, value_parser = parse_instant)]
    as_of: Option<i64>,
    /// Publish without evaluating (the gate is skipped).
    #[arg(long)]
    skip_eval: bool,
    /// Move CURRENT even when the publish gate refuses.
    #[arg(long)]
    force: bool,
    /// Seed of the factor initialisation [config: offline.als.seed, default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Train with the setting a `recsys offline tune` run chose (its tuning.json or directory);
    /// recorded in the manifest. ALS flags given as well override it.
    #[arg(long)]
    params_from: Option<PathBuf>,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Args)]
struct TuneArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Time for the whole choice (90s, 10m, 1h30m): the search gets 85 % of it and stops after
    /// the trial in hand once that is spent, then the best settings are re-checked; the final
    /// fits run after it.
    #[arg(long, value_parser = recsys_offline::tuning::parse_duration)]
    budget: Option<std::time::Duration>,
    /// Settings drawn for the first rung [config: offline.tuning.trials, default 24].
    #[arg(long)]
    trials: Option<usize>,
    /// Seed of the draws and of the validation split.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Directory for tuning.json and trials.jsonl [default: <model.root>/tuning/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The model root, under which the default --out goes [config: model.root, default
    /// var/models].
    #[arg(long)]
    model_root: Option<PathBuf>,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Args)]
struct EvaluateArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Evaluation protocol [config: offline.evaluation.protocol, default strong-generalization].
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Fraction of eligible members held out [config: offline.evaluation.heldout_fraction, default 0.2].
    #[arg(long)]
    heldout_fraction: Option<f64>,
    /// Seed of the split [config: offline.evaluation.seed, default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Write the exact split to DIR/{train,foldin,target}.parquet.
    #[arg(long)]
    export_split: Option<PathBuf>,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    StrongGeneralization,
    LeaveLastOut,
}

#[derive(Subcommand)]
enum NearlineCommand {
    /// Consume member events (one member of a consumer group) and fold them into member vectors,
    /// until Ctrl-C / SIGTERM; the batch in hand is finished and committed first.
    Run {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The consumer group; workers of one group share the partitions
        /// [config: nearline.group_id, default recsys-nearline].
        #[arg(long)]
        group_id: Option<String>,
        /// /metrics, /healthz, /readyz address [config: nearline.metrics_listen, default
        /// 127.0.0.1:9465].
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Stop after consuming this many events (for tests and benchmarks).
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// Send events from JSON lines (.jsonl) or Parquet (.parquet, the interactions schema) to the
    /// events topic, keyed by member. Rows without an event_id get one derived from their fields.
    /// With `--kind impressions`, send impression records (JSON lines, as the online tier logs
    /// them) to the impressions topic instead.
    Produce {
        /// The events (or impressions) file.
        #[arg(long)]
        input: PathBuf,
        /// What the file holds. Impressions go to `--topic` or online.impressions.topic.
        #[arg(long, value_enum, default_value = "events")]
        kind: RecordKindArg,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Encode records as JSON instead of protobuf.
        #[arg(long)]
        json: bool,
        /// Records per second (0 = as fast as the broker takes them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Partitions of the topic when it does not exist yet and is created
        /// [default: nearline.topic_partitions].
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Throughput with one and two workers, and freshness against the online tier (starts its
    /// own Tansu broker, redis-server, workers and server; prints figures).
    Bench(recsys_nearline::bench::BenchArgs),
    /// Write the events or impressions topic to Parquet files the offline job reads
    /// (`<output>/partition=<p>/<first offset>.parquet`), each record exactly once: files are
    /// renamed into place, then the offsets committed. Runs until Ctrl-C / SIGTERM, or until the
    /// topic has been idle for `--until-idle-seconds`.
    Archive {
        /// What the topic holds.
        #[arg(long, value_enum)]
        kind: RecordKindArg,
        /// The topic [default: nearline.topic for events, online.impressions.topic for
        /// impressions].
        #[arg(long)]
        topic: Option<String>,
        /// The archive directory.
        #[arg(long)]
        output: PathBuf,
        /// Kafka bootstrap servers [config: nearline.brokers, default 127.0.0.1:9092].
        #[arg(long)]
        brokers: Option<String>,
        /// The consumer group [default: recsys-archive-<kind>].
        #[arg(long, alias = "group")]
        group_id: Option<String>,
        /// A partition's file is closed at this many records...
        #[arg(long, default_value_t = 500_000)]
        max_records: usize,
        /// ...or this many seconds after its first record.
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
        /// Stop once no record has come for this long (a batch run); default: run until stopped.
        #[arg(long)]
        until_idle_seconds: Option<f64>,
        /// /metrics, /healthz, /readyz address; none when unset.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RecordKindArg {
    Events,
    Impressions,
}

#[derive(clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers [config: nearline.brokers, default 127.0.0.1:9092].
    #[arg(long)]
    brokers: Option<String>,
    /// The events topic [config: nearline.topic, default recsys.events].
    #[arg(long)]
    topic: Option<String>,
}

impl KafkaArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(b) = &self.brokers {
            config.nearline.brokers = b.clone();
        }
        if let Some(t) = &self.topic {
            config.nearline.topic = t.clone();
        }
    }
}

#[derive(Subcommand)]
enum OnlineCommand {
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
    Bench(recsys_online::bench::BenchArgs),
    /// Overload and fault benchmark: open-loop load at twice saturation for minutes (admitted
    /// p99, shed latency, RSS, panics), then a flood of made-up ids and a cancel storm against a
    /// frozen Redis store (RSS before and after).
    Soak(recsys_online::soak::SoakArgs),
}

fn parse_instant(s: &str) -> std::result::Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        // A date means the end of that day: its events are included.
        return Ok(d
            .and_hms_milli_opt(23, 59, 59, 999)
            .expect("valid")
            .and_utc()
            .timestamp_millis());
    }
    Err(format!(
        "{s:?} is not RFC 3339 (2026-11-01T00:00:00Z), a date (2026-11-01) or epoch milliseconds"
    ))
}

impl AlsArgs {
    fn apply(&self, config: &mut Config) {
        let als = &mut config.offline.als;
        if let Some(v) = self.factors {
            als.factors = v;
        }
        if let Some(v) = self.regularization {
            als.regularization = v;
        }
        if let Some(v) = self.alpha {
            als.alpha = v;
        }
        if let Some(v) = self.iterations {
            als.iterations = v;
        }
        if let Some(v) = self.cg_steps {
            als.cg_steps = v;
        }
        if let Some(v) = self.threads {
            als.threads = v;
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    Ok(Config::load(cli.config.as_deref())?)
}

fn validated(config: Config) -> Result<Config> {
    config
        .validate()
        .map_err(|problem| anyhow::anyhow!("command-line options: {problem}"))?;
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The remote model root `root` names, if it is an object-storage URL.
fn remote_root(root: &std::path::Path) -> Result<Option<RemoteModelRoot>> {
    let text = root.to_string_lossy();
    if !is_remote(&text) {
        return Ok(None);
    }
    Ok(Some(RemoteModelRoot::new(RemoteLocation::parse(&text)?)))
}

/// When the model root is on object storage: mirrors it into `model.cache_dir` (the first poll
/// now, then every `every`) and points the config at the cache, which the tiers load from as from
/// any local root. The task stops when the handle is dropped.
async fn mirror_remote_root(
    config: &mut Config,
    every: std::time::Duration,
) -> Result<Option<AbortOnDrop>> {
    let Some(remote) = remote_root(&config.model.root)? else {
        return Ok(None);
    };
    tracing::info!(root = %remote.url(), cache = %config.model.cache_dir.display(),
        "model root on object storage; mirroring into the cache");
    let mut mirror = ModelMirror::new(remote, &config.model.cache_dir, config.model.keep_versions);
    mirror.poll().await;
    config.model.root = config.model.cache_dir.clone();
    Ok(Some(AbortOnDrop(mirror.spawn(every))))
}

/// A background task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One line of `recsys offline versions`: the sizes and the evaluation of a version.
/// One line of `offline versions`: sizes, then each evaluation figure to 4 decimals
/// (`recall@20 0.3165 (popularity 0.1120)`).
fn version_summary(m: &recsys_shared::artifact::Manifest) -> String {
    let figures = m.evaluation.as_ref().map(|e| {
        e.metrics
            .iter()
            .map(|(name, value)| match e.popularity.get(name) {
                Some(p) => format!("{name} {value:.4} (popularity {p:.4})"),
                None => format!("{name} {value:.4}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    format!(
        "{} members, {} items{}",
        m.rows.members,
        m.rows.items,
        figures
            .filter(|f| !f.is_empty())
            .map(|f| format!("; {f}"))
            .unwrap_or_default()
    )
}

/// `recsys offline versions` for an object-storage root; `verify` checks every file's presence
/// and size (sha256 is checked by every reader after download).
async fn list_remote_versions(remote: &RemoteModelRoot, verify: bool) -> Result<()> {
    let current = remote.current_version().await?;
    let mut current_corrupt = None;
    for version in remote.versions().await? {
        let is_current = Some(&version) == current.as_ref();
        let marker = if is_current { "*" } else { " " };
        let manifest = if verify {
            remote.check_sizes(&version).await
        } else {
            remote.manifest(&version).await
        };
        match manifest {
            Ok(m) => println!("{marker} {version}  {}", version_summary(&m)),
            Err(e) => {
                println!("{marker} {version}  CORRUPT: {e}");
                if is_current {
                    current_corrupt = Some(e);
                }
            }
        }
    }
    if let Some(e) = current_corrupt {
        anyhow::bail!("the current version is corrupt ({e}); `recsys offline rollback --to <version>` moves CURRENT");
    }
    Ok(())
}

/// A Ballista scheduler or executor with the operations endpoint, until a signal.
async fn run_ballista(command: &BallistaCommand) -> Result<()> {
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
            BallistaCommand::Scheduler { listen, .. } => {
                recsys_offline::engine::run_scheduler(*listen).await
            }
            BallistaCommand::Executor {
                scheduler,
                bind,
                advertise_host,
                flight_port,
                grpc_port,
                slots,
                work_dir,
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

async fn load_store(
    config: &Config,
    root: &ModelRoot,
    version: Option<&str>,
    force: bool,
) -> Result<()> {
    use recsys_store::{bulk, features::FeatureStore};
    let kv = recsys_store::open(&config.store)
        .await
        .with_context(|| format!("opening the {} store", config.store.backend.name()))?;
    let store = FeatureStore::new(kv, config.store.history_cap);
    let version = match version {
        Some(v) => v.to_string(),
        None => root
            .current_version()?
            .with_context(|| format!("{}: no CURRENT version", root.path().display()))?,
    };
    if !force && bulk::is_loaded(&store, &version).await? {
        tracing::info!(%version, "already loaded; nothing to do (--force reloads)");
        println!(
            "{}",
            serde_json::json!({"model_version": version, "already_loaded": true})
        );
        return Ok(());
    }
    let report = bulk::load_model_features_with_progress(root, &version, &store).await?;
    tracing::info!(
        members = report.members,
        backend = store.backend(),
        "store loaded"
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Import(ImportCommand::Movielens { input, output }) => {
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
        Command::Offline(OfflineCommand::Synth {
            users,
            items,
            interactions,
            seed,
            output,
        }) => {
            let spec = SynthSpec {
                users: *users,
                items: *items,
                interactions: *interactions,
                seed: *seed,
            };
            SynthWorld::new(spec)?.write(output)?;
            println!(
                "{}",
                serde_json::json!({"output": output, "users": users, "items": items, "interactions": interactions, "seed": seed})
            );
        }
        Command::Offline(OfflineCommand::Train(args)) => {
            let mut config = load_config(&cli)?;
            let tuning = match &args.params_from {
                Some(path) => {
                    let result = TuningResult::read(path)?;
                    config.offline.als = result.best.apply(&config.offline.als);
                    Some(result.provenance(path))
                }
                None => None,
            };
            args.als.apply(&mut config);
            if let Some(seed) = args.seed {
                config.offline.als.seed = seed;
            }
            if let Some(root) = &args.model_root {
                config.model.root = root.clone();
            }
            let job = TrainJob {
                interactions: args.interactions.clone(),
                items: args.items.clone(),
                config: validated(config)?,
                as_of_ms: args.as_of,
                skip_eval: args.skip_eval,
                force: args.force,
                tuning,
            };
            let outcome = job.run()?;
            if outcome.gate_refused {
                tracing::error!(gate = %outcome.gate, version = %outcome.version, "CURRENT not moved; rerun with --force to publish anyway");
            } else {
                tracing::info!(gate = %outcome.gate, version = %outcome.version, "published");
            }
            println!("{}", serde_json::to_string(&outcome)?);
            if outcome.gate_refused {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Offline(OfflineCommand::Evaluate(args)) => {
            let mut config = load_config(&cli)?;
            args.als.apply(&mut config);
            let evaluation = &mut config.offline.evaluation;
            if let Some(p) = args.protocol {
                evaluation.protocol = match p {
                    ProtocolArg::StrongGeneralization => Protocol::StrongGeneralization,
                    ProtocolArg::LeaveLastOut => Protocol::LeaveLastOut,
                };
            }
            if let Some(f) = args.heldout_fraction {
                evaluation.heldout_fraction = f;
            }
            if let Some(s) = args.seed {
                evaluation.seed = s;
            }
            let config = validated(config)?;
            let result = evaluate_only(&args.interactions, &config, args.export_split.as_deref())?;
            println!("{}", serde_json::to_string(&result)?);
        }
        Command::Offline(OfflineCommand::Tune(args)) => {
            let mut config = load_config(&cli)?;
            args.als.apply(&mut config);
            if let Some(t) = args.trials {
                config.offline.tuning.trials = t;
            }
            if let Some(root) = &args.model_root {
                config.model.root = root.clone();
            }
            let config = validated(config)?;
            let out = args.out.clone().unwrap_or_else(|| {
                config
                    .model
                    .root
                    .join("tuning")
                    .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string())
            });
            let job = TuneJob {
                trials: config.offline.tuning.trials,
                budget: args.budget,
                seed: args.seed,
                out: out.clone(),
            };
            let result = recsys_offline::tuning::tune_log(&args.interactions, &config, &job)?;
            eprintln!(
                "tuned {} on the test members: {:.4} (defaults {:.4}); recall@20 {:.4} (defaults {:.4}); written to {}",
                result.metric,
                result.test.metrics[&result.metric],
                result.test_defaults.metrics[&result.metric],
                result.test.metrics["recall@20"],
                result.test_defaults.metrics["recall@20"],
                out.display()
            );
            println!(
                "{}",
                serde_json::json!({
                    "out": out,
                    "best": result.best,
                    "validation": result.validation,
                    "test": result.test.metrics,
                    "test_intervals": result.test.intervals,
                    "test_defaults": result.test_defaults.metrics,
                    // A trial is one drawn setting; each is scored at every rung it reaches.
                    "trials": result.settings_tried(),
                    "scored_rungs": result.trials.len(),
                    "budget_exhausted": result.budget_exhausted,
                    "search_seconds": result.search_seconds,
                })
            );
        }
        Command::Offline(OfflineCommand::Report {
            model_root,
            version,
            compare,
            out,
        }) => {
            let config = load_config(&cli)?;
            let job = recsys_offline::report::ReportJob {
                model_root: model_root.clone().unwrap_or(config.model.root),
                version: version.clone(),
                compare: compare.clone(),
                out: out.clone(),
            };
            let version = recsys_offline::report::write_report(&job)?;
            println!(
                "{}",
                serde_json::json!({"report": out, "version": version, "compared": compare})
            );
        }
        Command::Offline(OfflineCommand::ExperimentReport {
            impressions,
            events,
            experiment,
            event_types,
            control,
        }) => {
            use recsys_offline::experiment_report::{self, ReportRequest};
            use recsys_offline::input::InputTable;
            let impressions = InputTable::discover(impressions)?;
            let events = InputTable::discover(events)?;
            let request = ReportRequest {
                experiment: experiment.clone(),
                positive_events: event_types.clone(),
                control: control.clone(),
            };
            let report =
                runtime()?.block_on(experiment_report::run(&impressions, &events, &request))?;
            report.print();
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Offline(OfflineCommand::Rollback { model_root, to }) => {
            let mut config = load_config(&cli)?;
            if let Some(root) = model_root {
                config.model.root = root.clone();
            }
            let mut destination = recsys_offline::publish::Destination::open(&config.model)?;
            let previous = destination.rollback(to)?;
            println!(
                "{}",
                serde_json::json!({"current": to, "previous": previous})
            );
        }
        Command::Offline(OfflineCommand::Versions { model_root, verify }) => {
            let config = load_config(&cli)?;
            let root = model_root.clone().unwrap_or(config.model.root);
            if let Some(remote) = remote_root(&root)? {
                runtime()?.block_on(list_remote_versions(&remote, *verify))?;
                return Ok(ExitCode::SUCCESS);
            }
            let root = ModelRoot::new(root);
            let current = root.current_version()?;
            let mut current_corrupt = None;
            for version in root.versions()? {
                let is_current = Some(&version) == current.as_ref();
                let marker = if is_current { "*" } else { " " };
                let checked = if *verify {
                    root.verify(&version).map(|_| ())
                } else {
                    Ok(())
                };
                if let Err(e) = checked {
                    println!("{marker} {version}  CORRUPT: {e}");
                    if is_current {
                        current_corrupt = Some(e);
                    }
                    continue;
                }
                let summary = match root.manifest(&version) {
                    Ok(m) => version_summary(&m),
                    Err(e) => format!("unreadable: {e}"),
                };
                println!("{marker} {version}  {summary}");
            }
            if let Some(e) = current_corrupt {
                anyhow::bail!(
                    "the current version is corrupt ({e}); servers keep or fall back to the newest intact one; `recsys offline rollback --to <version>` moves CURRENT"
                );
            }
        }
        Command::Offline(OfflineCommand::BenchQuality(args)) => {
            let config = validated(load_config(&cli)?)?;
            recsys_offline::quality_bench::run(args, &config)?;
        }
        Command::Offline(OfflineCommand::Bench(args)) => {
            if args.features {
                let rows = recsys_offline::feature_bench::run(
                    &args.feature_events,
                    args.rounds,
                    args.threads,
                    &args.peer,
                )?;
                println!("{}", serde_json::json!({ "feature_jobs": rows }));
            } else {
                recsys_offline::bench::run(args)?;
            }
        }
        Command::Nearline(NearlineCommand::Run {
            model_root,
            kafka,
            group_id,
            metrics_listen,
            max_events,
        }) => {
            let mut config = load_config(&cli)?;
            kafka.apply(&mut config);
            if let Some(root) = model_root {
                config.model.root = root.clone();
            }
            if let Some(g) = group_id {
                config.nearline.group_id = g.clone();
            }
            if let Some(l) = metrics_listen {
                config.nearline.metrics_listen = l.clone();
            }
            let mut config = validated(config)?;
            let report = runtime()?.block_on(async {
                let poll = std::time::Duration::from_millis(config.nearline.model_poll_ms);
                let _mirror = mirror_remote_root(&mut config, poll).await?;
                recsys_nearline::worker::serve(
                    &config,
                    recsys_nearline::worker::WorkerOptions {
                        model_root: config.model.root.clone(),
                        max_events: *max_events,
                    },
                    shutdown_signal(),
                )
                .await
                .map_err(anyhow::Error::from)
            })?;
            println!(
                "{}",
                serde_json::json!({
                    "events": report.events,
                    "applied": report.applied,
                    "dead_lettered": report.dead_lettered,
                    "batches": report.batches,
                })
            );
        }
        Command::Nearline(NearlineCommand::Bench(args)) => {
            runtime()?
                .block_on(recsys_nearline::bench::run(args))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        Command::Nearline(NearlineCommand::Archive {
            kind,
            topic,
            output,
            brokers,
            group_id,
            max_records,
            max_seconds,
            until_idle_seconds,
            metrics_listen,
        }) => {
            use recsys_nearline::archive::{self, ArchiveKind, ArchiveOptions};
            let mut config = load_config(&cli)?;
            if let Some(b) = brokers {
                config.nearline.brokers = b.clone();
            }
            let config = validated(config)?;
            let kind = match kind {
                RecordKindArg::Events => ArchiveKind::Events,
                RecordKindArg::Impressions => ArchiveKind::Impressions,
            };
            let topic = topic.clone().unwrap_or_else(|| match kind {
                ArchiveKind::Events => config.nearline.topic.clone(),
                ArchiveKind::Impressions => config.online.impressions.topic.clone(),
            });
            let options = ArchiveOptions {
                kind,
                topic,
                output: output.clone(),
                group: group_id
                    .clone()
                    .unwrap_or_else(|| format!("recsys-archive-{}", kind.name())),
                max_records: (*max_records).max(1),
                max_age: Duration::from_secs(*max_seconds),
                until_idle: until_idle_seconds.map(Duration::from_secs_f64),
            };
            let report = runtime()?.block_on(async {
                if let Some(addr) = metrics_listen {
                    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
                    let bound =
                        recsys_shared::ops::serve_http(addr, ready, "not ready", shutdown_signal())
                            .await
                            .with_context(|| format!("--metrics-listen {addr}"))?;
                    tracing::info!(%bound, "metrics");
                }
                archive::run(&config, &options, shutdown_signal())
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Nearline(NearlineCommand::Produce {
            input,
            kind: RecordKindArg::Impressions,
            kafka,
            rate,
            partitions,
            ..
        }) => {
            use recsys_nearline::produce;
            let mut config = load_config(&cli)?;
            let topic = kafka
                .topic
                .clone()
                .unwrap_or_else(|| config.online.impressions.topic.clone());
            if let Some(brokers) = &kafka.brokers {
                config.nearline.brokers = brokers.clone();
            }
            let config = validated(config)?;
            let impressions = produce::read_impressions(input)?;
            let seconds = runtime()?.block_on(async {
                let producer = produce::connect(&config, produce::BROKER_CHECK).await?;
                let p = partitions.unwrap_or(config.nearline.topic_partitions);
                recsys_nearline::kafka::ensure_topics(&config, &[(topic.as_str(), p)]).await?;
                produce::produce_impressions(&producer, &topic, &impressions, *rate, 10_000).await
            })?;
            println!(
                "{}",
                serde_json::json!({
                    "impressions": impressions.len(),
                    "topic": topic,
                    "seconds": seconds,
                    "impressions_per_second": impressions.len() as f64 / seconds.max(1e-9),
                })
            );
        }
        Command::Nearline(NearlineCommand::Produce {
            input,
            kind: RecordKindArg::Events,
            kafka,
            json,
            rate,
            partitions,
        }) => {
            use recsys_nearline::produce;
            let mut config = load_config(&cli)?;
            kafka.apply(&mut config);
            let config = validated(config)?;
            // Every event is checked as a worker would check it before anything is sent.
            let rules = recsys_nearline::event::EventRules::from_config(&config);
            let now_ms = chrono::Utc::now().timestamp_millis();
            let events = produce::read_events(input, |e| rules.validate(e, None, now_ms))?;
            let encoding = if *json {
                produce::Encoding::Json
            } else {
                produce::Encoding::Protobuf
            };
            let seconds = runtime()?.block_on(async {
                let producer = produce::connect(&config, produce::BROKER_CHECK).await?;
                let p = partitions.unwrap_or(config.nearline.topic_partitions);
                recsys_nearline::kafka::ensure_topics(
                    &config,
                    &[(config.nearline.topic.as_str(), p)],
                )
                .await?;
                produce::produce_all(
                    &producer,
                    &config.nearline.topic,
                    &events,
                    encoding,
                    *rate,
                    10_000,
                )
                .await
            })?;
            println!(
                "{}",
                serde_json::json!({
                    "events": events.len(),
                    "topic": config.nearline.topic,
                    "seconds": seconds,
                    "events_per_second": events.len() as f64 / seconds.max(1e-9),
                })
            );
        }
        Command::Offline(OfflineCommand::LoadProfiles { input }) => {
            use recsys_store::{features::FeatureStore, profiles};
            let config = validated(load_config(&cli)?)?;
            let report = runtime()?.block_on(async {
                let kv = recsys_store::open(&config.store).await.with_context(|| {
                    format!("opening the {} store", config.store.backend.name())
                })?;
                let store = FeatureStore::new(kv, config.store.history_cap);
                let report =
                    profiles::load_profiles(input, &store, &config.online.maturity).await?;
                anyhow::Ok(report)
            })?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Offline(OfflineCommand::LoadStore {
            model_root,
            version,
            force,
        }) => {
            let mut config = load_config(&cli)?;
            if let Some(root) = model_root {
                config.model.root = root.clone();
            }
            runtime()?.block_on(async {
                // An object-storage root is mirrored into the cache first (the poll interval is
                // moot: the command ends after one load).
                let _mirror =
                    mirror_remote_root(&mut config, std::time::Duration::from_secs(3600)).await?;
                let root = ModelRoot::new(&config.model.root);
                load_store(&config, &root, version.as_deref(), *force).await
            })?;
        }
        Command::Online(OnlineCommand::Serve {
            model_root,
            listen,
            metrics_listen,
        }) => {
            let mut config = load_config(&cli)?;
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
        Command::Online(OnlineCommand::Bench(args)) => {
            runtime()?
                .block_on(recsys_online::bench::run(args))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        Command::Online(OnlineCommand::Soak(args)) => {
            runtime()?
                .block_on(recsys_online::soak::run(args))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        Command::Ballista(command) => {
            // Ballista's planners recurse deeply over plans (its own binaries use 32 MiB stacks).
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_stack_size(32 << 20)
                .build()
                .context("starting the async runtime")?
                .block_on(run_ballista(command))?;
        }
        Command::Quickstart(args) => {
            let config = load_config(&cli)?;
            quickstart::run(args, config, shutdown_signal())?;
        }
        Command::Client { connection, call } => {
            runtime()?.block_on(client::run(connection, call))?;
        }
    }
    Ok(ExitCode::SUCCESS)
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
