//! `[nearline]`: the streaming workers — their consumer group, batches and event checks (the
//! brokers and topics are `[kafka]`'s).

use serde::{Deserialize, Serialize};

use super::{first_problem, within};

/// The nearline workers: consumer group, batching, event validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NearlineConfig {
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
}

impl Default for NearlineConfig {
    fn default() -> Self {
        NearlineConfig {
            group_id: "recsys-nearline".into(),
            max_batch: 1000,
            batch_wait_ms: 5,
            concurrency: 32,
            max_future_skew_ms: 5 * 60 * 1000,
            max_past_skew_ms: 365 * 24 * 3600 * 1000,
            metrics_listen: "127.0.0.1:9465".into(),
            model_poll_ms: 1000,
            max_batch_retries: 60,
        }
    }
}

impl NearlineConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within("nearline.max_batch", self.max_batch, 1..=100_000)?;
        within("nearline.concurrency", self.concurrency, 1..=1024)?;
        within("nearline.model_poll_ms", self.model_poll_ms, 10..=3_600_000)?;
        first_problem(vec![
            (
                self.batch_wait_ms <= 60_000,
                "nearline.batch_wait_ms",
                "must be at most 60000",
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
        ])?;
        super::check_address("nearline.metrics_listen", &self.metrics_listen)?;
        Ok(())
    }
}
