//! `[nearline]`: the streaming workers — Kafka, batches, the fold-in's history, negative feedback.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::first_problem;

/// The nearline workers: Kafka, batching, event validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NearlineConfig {
    /// Kafka bootstrap servers, `host:port[,host:port…]`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// The member events. Default `recsys.events`.
    pub topic: String,
    /// Partitions of the events topic when a worker (or `produce`) creates it because it does
    /// not exist yet; an existing topic is left as it is. The most workers one group can use.
    /// Default 4.
    pub topic_partitions: i32,
    /// Where events that cannot be applied go, with the reason in a header.
    /// Default `recsys.events.dead-letter`.
    pub dead_letter_topic: String,
    /// Consumer group; scale out by starting more workers with the same group. Default
    /// `recsys-nearline`.
    pub group_id: String,
    /// At most this many events are applied (and committed) together. Default 1000.
    pub max_batch: usize,
    /// A batch closes this long after its first event at the latest. Default 5 ms.
    pub batch_wait_ms: u64,
    /// A batch's members are split into at most this many shards (of at least 64 members) that
    /// are applied concurrently, each read, folded in and written together, so one shard's
    /// fold-ins overlap another's store round trips. Also bounds the history trims in flight.
    /// Default 32.
    pub concurrency: usize,
    /// Events stamped further than this into the future are dead-lettered. Default 5 min.
    pub max_future_skew_ms: i64,
    /// Events older than this are dead-lettered. Default 365 days.
    pub max_past_skew_ms: i64,
    /// HTTP address of `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9465`.
    pub metrics_listen: String,
    /// How often `CURRENT` is checked for a new model. Default 1000 ms.
    pub model_poll_ms: u64,
    /// A batch that cannot be finished (store or dead-letter topic down) is retried this many
    /// times with backoff (100 ms doubling to 5 s), the partitions paused and the worker not
    /// ready; then the worker stops with an error, the batch uncommitted. Default 60 (~4.5 min).
    pub max_batch_retries: u32,
    /// Extra librdkafka properties for consumer and producer (`security.protocol`, …). Secret
    /// ones (`sasl.password`, `ssl.key.password`, …) are refused here: give them in
    /// `kafka_secret_files` or `kafka_secret_env`.
    pub kafka: BTreeMap<String, String>,
    /// librdkafka properties read from files: property → file (e.g. `"sasl.password" =
    /// "/run/secrets/kafka"`).
    pub kafka_secret_files: BTreeMap<String, PathBuf>,
    /// librdkafka properties read from environment variables: property → variable.
    pub kafka_secret_env: BTreeMap<String, String>,
}

impl Default for NearlineConfig {
    fn default() -> Self {
        NearlineConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "recsys.events".into(),
            topic_partitions: 4,
            dead_letter_topic: "recsys.events.dead-letter".into(),
            group_id: "recsys-nearline".into(),
            max_batch: 1000,
            batch_wait_ms: 5,
            concurrency: 32,
            max_future_skew_ms: 5 * 60 * 1000,
            max_past_skew_ms: 365 * 24 * 3600 * 1000,
            metrics_listen: "127.0.0.1:9465".into(),
            model_poll_ms: 1000,
            max_batch_retries: 60,
            kafka: BTreeMap::new(),
            kafka_secret_files: BTreeMap::new(),
            kafka_secret_env: BTreeMap::new(),
        }
    }
}

impl NearlineConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        first_problem(vec![
            (
                (1..=100_000).contains(&self.max_batch),
                "nearline.max_batch",
                "must be 1..=100000",
            ),
            (
                (1..=1024).contains(&self.concurrency),
                "nearline.concurrency",
                "must be 1..=1024",
            ),
            (
                self.batch_wait_ms <= 60_000,
                "nearline.batch_wait_ms",
                "must be at most 60000",
            ),
            (
                (1..=10_000).contains(&self.topic_partitions),
                "nearline.topic_partitions",
                "must be 1..=10000",
            ),
            (
                self.max_future_skew_ms >= 0,
                "nearline.max_future_skew_ms",
                "must be non-negative",
            ),
            (
                self.max_past_skew_ms >= 0,
                "nearline.max_past_skew_ms",
                "must be non-negative",
            ),
            (
                (10..=3_600_000).contains(&self.model_poll_ms),
                "nearline.model_poll_ms",
                "must be 10..=3600000",
            ),
            (
                !self.topic.is_empty() && self.topic != self.dead_letter_topic,
                "nearline.dead_letter_topic",
                "must differ from nearline.topic",
            ),
        ])?;
        super::check_address("nearline.metrics_listen", &self.metrics_listen)?;
        for key in self.kafka.keys() {
            if key.contains("password") || key.contains("secret") {
                return Err(format!(
                    "`nearline.kafka.\"{key}\"` is a secret: give it in `nearline.kafka_secret_files` or `nearline.kafka_secret_env`, not in the file"
                ));
            }
        }
        Ok(())
    }
}
