//! Prometheus metrics of the online tier, served with the health probes by
//! [`recsys_shared::ops::serve_http`] (`/readyz` is ready once a model is loaded).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};

/// Requests by RPC, gRPC status code name and transport (`grpc`, `rest`).
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_rpc_requests_total",
        "Ranking API requests by method, status code and transport",
        &["rpc", "code", "transport"]
    )
    .expect("registers once")
});

/// Server-side latency by RPC, status and transport.
pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "recsys_rpc_latency_seconds",
        "Ranking API latency from arrival by method, status code and transport",
        &["rpc", "code", "transport"],
        vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002,
            0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
        ]
    )
    .expect("registers once")
});

/// Time a request spends on its experiments, by part: `allocation` (the member's variants and
/// the catalog they choose) and `impressions` (building the impression record and handing it to
/// the log; only when impressions are on).
pub static EXPERIMENT_WORK: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "recsys_experiment_work_seconds",
        "Time a request spends on experiment allocation and impression logging, by part",
        &["part"],
        vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3]
    )
    .expect("registers once")
});

/// Records the time since `started` as `part` of [`EXPERIMENT_WORK`].
pub fn experiment_work(part: &str, started: std::time::Instant) {
    EXPERIMENT_WORK
        .with_label_values(&[part])
        .observe(started.elapsed().as_secs_f64());
}

/// Members scored per pass of a batched scan (`online.batch`).
pub static SCAN_BATCH_MEMBERS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "recsys_scan_batch_members",
        "Member vectors scored in one pass over the item codes",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    )
    .expect("registers once")
});

/// Time a member vector waited for its batched scan to start.
pub static SCAN_QUEUE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "recsys_scan_queue_seconds",
        "Time a request waited in the scan queue before its pass started",
        vec![1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1]
    )
    .expect("registers once")
});

/// Where member vectors came from (`cache`, `store`, `fold_in`, `cold_start`) and `degraded`.
pub static VECTOR_SOURCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_member_vector_source_total",
        "Ranked members by where their vector came from",
        &["source"]
    )
    .expect("registers once")
});

/// 1 for the model version being served.
pub static MODEL_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "recsys_model_version_info",
        "The model version being served (value 1)",
        &["version"]
    )
    .expect("registers once")
});

pub static CATALOG_ITEMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("recsys_catalog_items", "Items in the served catalog")
        .expect("registers once")
});

/// Model loads by result: `swapped`, `refused` (invalid or corrupt version).
pub static MODEL_SWAPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_model_swaps_total",
        "Model versions loaded and swapped in, or refused",
        &["result"]
    )
    .expect("registers once")
});

/// Ranking requests being worked on (holding one of `online.max_in_flight` slots).
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("recsys_rpc_in_flight", "Ranking requests being worked on")
        .expect("registers once")
});

/// Ranking requests waiting for a slot.
pub static QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("recsys_rpc_queued", "Ranking requests waiting for a slot")
        .expect("registers once")
});

/// Requests answered without being worked on: `queue_full` (RESOURCE_EXHAUSTED at once),
/// `deadline_in_queue` (DEADLINE_EXCEEDED while queued).
pub static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_rpc_shed_total",
        "Ranking requests shed before any work, by reason",
        &["reason"]
    )
    .expect("registers once")
});

/// Open client connections, and those closed at once because `online.max_connections` were open.
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("recsys_grpc_connections", "Open gRPC client connections")
        .expect("registers once")
});

pub static CONNECTIONS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_grpc_connections_refused_total",
        "Connections closed at once because online.max_connections were open"
    )
    .expect("registers once")
});

/// Connections closed before they opened: past `online.opening_timeout_ms`, or displaced by a
/// newcomer while every slot was taken.
pub static CONNECTIONS_CLOSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_grpc_connections_closed_total",
        "Connections closed before they sent their opening, by reason (opening_timeout, displaced)",
        &["reason"]
    )
    .expect("registers once")
});

/// Ranking answers per experiment and variant (Rank and Homepage).
pub static EXPERIMENT_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_experiment_requests_total",
        "Rank and Homepage requests by experiment and the member's variant",
        &["experiment", "variant"]
    )
    .expect("registers once")
});

/// Experiments-file loads by outcome: `applied`, `refused` (the last good file stays in force),
/// `removed`.
pub static EXPERIMENT_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_experiments_reloads_total",
        "Experiments-file loads by outcome",
        &["outcome"]
    )
    .expect("registers once")
});

/// Experiments in force.
pub static EXPERIMENTS_ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("recsys_experiments_active", "Experiments in force")
        .expect("registers once")
});

/// When the gRPC port's TLS certificate expires, in seconds since the epoch (alert on
/// `recsys_tls_certificate_not_after_seconds - time() < 14 * 86400`); 0 without TLS.
pub static TLS_NOT_AFTER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "recsys_tls_certificate_not_after_seconds",
        "When the served TLS certificate expires (seconds since the epoch)"
    )
    .expect("registers once")
});

/// Member-vector retrievals by how they found their items (`exact`, `ann`) and, for a request
/// that asked for `ann` and was scanned exactly, why (`no_index`: the version has none;
/// `failed`: the search failed, logged).
pub static SIMILAR_RETRIEVALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_similar_retrievals_total",
        "Similar-item retrievals (SimilarItems, because-you-watched rows) by method, and ANN ones answered by a scan by reason",
        &["retrieval", "fallback"]
    )
    .expect("registers once")
});

pub static RETRIEVALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_retrievals_total",
        "Member-vector retrievals by method, and ANN requests answered exactly by reason",
        &["retrieval", "fallback"]
    )
    .expect("registers once")
});

/// Recall@k of sampled ANN answers against the exact scan of the same request.
pub static ANN_RECALL: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "recsys_ann_recall_at_k",
        "Share of the exact top k an ANN answer found, for the sampled share of ANN requests \
         (online.ann.recall_sample_rate) scored exactly in the background",
        vec![0.5, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]
    )
    .expect("registers once")
});

/// Recall@k of sampled `SimilarItems` answers from the similar-items index against the exact
/// nearest items.
pub static SIMILAR_RECALL: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "recsys_similar_recall_at_k",
        "Share of the exact k nearest items a SimilarItems answer from the similar-items index \
         found, for the sampled share (online.ann.recall_sample_rate) found exactly in the background",
        vec![0.5, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]
    )
    .expect("registers once")
});

/// Console pages by the time they took to render on the server.
pub static CONSOLE_RENDER: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "recsys_console_render_seconds",
        "Server time of a console page, by page",
        &["page"],
        vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 1.0]
    )
    .expect("registers once")
});

/// `CURRENT` moved from the console (promote or roll back).
pub static CONSOLE_PROMOTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_console_promotions_total",
        "Times an operator moved CURRENT from the console"
    )
    .expect("registers once")
});
