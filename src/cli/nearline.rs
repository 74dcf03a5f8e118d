//! `recsys nearline`: the Kafka workers, the archive, producing events, and the benchmark.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use recsys_shared::config::Config;

use super::{load_config, mirror_remote_root, runtime, shutdown_signal, validated};

#[derive(Subcommand)]
pub(crate) enum NearlineCommand {
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
        /// What the file holds. Impressions go to `--topic` or kafka.impressions_topic.
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
        /// [default: kafka.events_partitions].
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Throughput with one and two workers, and freshness against the online tier (starts its
    /// own Tansu broker, redis-server, workers and server; prints figures).
    Bench(recsys_bench::nearline::BenchArgs),
    /// Write the events or impressions topic to Parquet files the offline job reads
    /// (`<output>/partition=<p>/<first offset>.parquet`), each record exactly once: files are
    /// renamed into place, then the offsets committed. Runs until Ctrl-C / SIGTERM, or until the
    /// topic has been idle for `--until-idle-seconds`.
    Archive {
        /// What the topic holds.
        #[arg(long, value_enum)]
        kind: RecordKindArg,
        /// The topic [default: kafka.events_topic for events, kafka.impressions_topic for
        /// impressions].
        #[arg(long)]
        topic: Option<String>,
        /// The archive directory.
        #[arg(long)]
        output: PathBuf,
        /// Kafka bootstrap servers [config: kafka.brokers, default 127.0.0.1:9092].
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
pub(crate) enum RecordKindArg {
    Events,
    Impressions,
}

#[derive(clap::Args)]
pub(crate) struct KafkaArgs {
    /// Kafka bootstrap servers [config: kafka.brokers, default 127.0.0.1:9092].
    #[arg(long)]
    brokers: Option<String>,
    /// The events topic [config: kafka.events_topic, default recsys.events].
    #[arg(long)]
    topic: Option<String>,
}

impl KafkaArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(b) = &self.brokers {
            config.kafka.brokers = b.clone();
        }
        if let Some(t) = &self.topic {
            config.kafka.events_topic = t.clone();
        }
    }
}

/// Runs one `recsys nearline` command.
pub(crate) fn run(command: &NearlineCommand, config_path: Option<&Path>) -> Result<ExitCode> {
    match command {
        NearlineCommand::Run {
            model_root,
            kafka,
            group_id,
            metrics_listen,
            max_events,
        } => {
            let mut config = load_config(config_path)?;
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
        NearlineCommand::Bench(args) => {
            runtime()?
                .block_on(recsys_bench::nearline::run(args))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        NearlineCommand::Archive {
            kind,
            topic,
            output,
            brokers,
            group_id,
            max_records,
            max_seconds,
            until_idle_seconds,
            metrics_listen,
        } => {
            use recsys_nearline::archive::{self, ArchiveKind, ArchiveOptions};
            let mut config = load_config(config_path)?;
            if let Some(b) = brokers {
                config.kafka.brokers = b.clone();
            }
            let config = validated(config)?;
            let kind = match kind {
                RecordKindArg::Events => ArchiveKind::Events,
                RecordKindArg::Impressions => ArchiveKind::Impressions,
            };
            let topic = topic.clone().unwrap_or_else(|| match kind {
                ArchiveKind::Events => config.kafka.events_topic.clone(),
                ArchiveKind::Impressions => config.kafka.impressions_topic.clone(),
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
        NearlineCommand::Produce {
            input,
            kind: RecordKindArg::Impressions,
            kafka,
            rate,
            partitions,
            ..
        } => {
            use recsys_nearline::produce;
            let mut config = load_config(config_path)?;
            let topic = kafka
                .topic
                .clone()
                .unwrap_or_else(|| config.kafka.impressions_topic.clone());
            if let Some(brokers) = &kafka.brokers {
                config.kafka.brokers = brokers.clone();
            }
            let config = validated(config)?;
            let impressions = produce::read_impressions(input)?;
            let seconds = runtime()?.block_on(async {
                let producer = produce::connect(&config, produce::BROKER_CHECK).await?;
                let p = partitions.unwrap_or(config.kafka.events_partitions);
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
        NearlineCommand::Produce {
            input,
            kind: RecordKindArg::Events,
            kafka,
            json,
            rate,
            partitions,
        } => {
            use recsys_nearline::produce;
            let mut config = load_config(config_path)?;
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
                let p = partitions.unwrap_or(config.kafka.events_partitions);
                recsys_nearline::kafka::ensure_topics(
                    &config,
                    &[(config.kafka.events_topic.as_str(), p)],
                )
                .await?;
                produce::produce_all(
                    &producer,
                    &config.kafka.events_topic,
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
                    "topic": config.kafka.events_topic,
                    "seconds": seconds,
                    "events_per_second": events.len() as f64 / seconds.max(1e-9),
                })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
