//! Prometheus metrics of the nearline workers, served with the health probes by
//! [`recsys_shared::ops::serve_http`] (`/readyz` is ready once a model is loaded and the consumer
//! runs).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Events by outcome: `applied`, `dead_lettered`.
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_nearline_events_total",
        "Events consumed, by outcome (applied, dead_lettered)",
        &["outcome"]
    )
    .expect("registers once")
});

/// Dead-lettered events by reason.
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_nearline_dead_letters_total",
        "Events sent to the dead-letter topic, by reason",
        &["reason"]
    )
    .expect("registers once")
});

/// Impression records applied (`feedback`).
pub static IMPRESSIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_nearline_impressions_total",
        "Impression records applied to members' feedback"
    )
    .expect("registers once")
});

/// Members per batch by outcome: `updated`, `unchanged` (a redelivery), `refolded`, `feedback`
/// (only the hidden items changed).
pub static MEMBERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_nearline_member_updates_total",
        "Member states per batch, by outcome (updated, unchanged, refolded, feedback)",
        &["outcome"]
    )
    .expect("registers once")
});

pub static FOLD_IN_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "recsys_nearline_fold_in_seconds",
        "Time of one member's fold-in (the ALS solve)",
        vec![0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]
    )
    .expect("registers once")
});

pub static BATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "recsys_nearline_batch_seconds",
        "Time to apply one batch durably (store and cache writes included)",
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]
    )
    .expect("registers once")
});

/// Batches that failed to apply (store unavailable) and were retried.
pub static BATCH_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_nearline_batch_retries_total",
        "Batches whose writes failed and were applied again"
    )
    .expect("registers once")
});

pub static COMMITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_nearline_commits_total",
        "Offset commits after a batch was durably applied"
    )
    .expect("registers once")
});

pub static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "recsys_nearline_consumer_lag",
        "Messages between the committed position and the partition's end",
        &["topic", "partition"]
    )
    .expect("registers once")
});

pub static REBALANCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_nearline_rebalances_total",
        "Partition assignments and revocations",
        &["kind"]
    )
    .expect("registers once")
});

pub static MODEL_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "recsys_nearline_model_version_info",
        "The model version events are folded in with (value 1)",
        &["version"]
    )
    .expect("registers once")
});

pub static MODEL_LOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_nearline_model_loads_total",
        "Model versions loaded, or refused",
        &["result"]
    )
    .expect("registers once")
});

/// Marks `version` as the one in use.
pub fn set_model_version(version: &str) {
    MODEL_VERSION.reset();
    MODEL_VERSION.with_label_values(&[version]).set(1);
}

/// 1 while the worker holds a batch it cannot finish (store or dead-letter topic failing): its
/// partitions are paused, the consumer keeps polling, `/readyz` answers 503.
pub static STALLED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "recsys_nearline_stalled",
        "1 while a batch is being retried with the partitions paused"
    )
    .expect("registers once")
});

/// Dead letters that could not be written and were retried.
pub static DEAD_LETTER_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_nearline_dead_letter_retries_total",
        "Dead letters the broker did not acknowledge, retried"
    )
    .expect("registers once")
});

/// Offset commits that failed after their retries (the batch is replayed by the partition's next
/// owner, which applying idempotently makes harmless).
pub static COMMIT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_nearline_commit_failures_total",
        "Offset commits that failed after retries"
    )
    .expect("registers once")
});
