//! Errors of the nearline tier.

/// What can stop a worker or fail a batch.
#[derive(Debug, thiserror::Error)]
pub enum NearlineError {
    #[error(transparent)]
    Shared(#[from] recsys_shared::SharedError),
    #[error(transparent)]
    Store(#[from] recsys_store::StoreError),
    #[error("model version {version} cannot be used: {problem}")]
    InvalidModel { version: String, problem: String },
    #[error(
        "no model is loaded yet: publish one (recsys offline train) before events can be folded in"
    )]
    NoModel,
    /// The fold-in of a batch could not run (its task panicked or was cancelled).
    #[error("fold-in: {0}")]
    FoldIn(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Input { path: String, problem: String },
    /// No broker answered a metadata request in time.
    #[error("no Kafka broker answered at {brokers} within {seconds} s ({detail}); start one (deploy/local/start-tansu.sh starts Tansu) or point --brokers / kafka.brokers at a running one")]
    NoBroker {
        brokers: String,
        seconds: u64,
        detail: String,
    },
    #[error("dead-letter topic {topic}: {problem}; the batch is retried, not skipped")]
    DeadLetter { topic: String, problem: String },
    /// A batch could not be finished within `nearline.max_batch_retries` attempts; it stays
    /// uncommitted for the partition's next owner.
    #[error("a batch failed {attempts} retries and is left uncommitted for the partition's next owner; last error: {last}")]
    Stalled { attempts: u32, last: String },
    #[error("shutting down with a batch unfinished (left uncommitted)")]
    ShuttingDown,
    /// The events and impressions topics cannot be consumed together (`feedback`).
    #[error("feedback: {0}")]
    CoPartitioning(String),
    /// A secret setting could not be read (the message names the setting, never the secret).
    #[error("{0}")]
    Secret(String),
}
