//! `recsys nearline run`: one member of a Kafka consumer group.
//!
//! The loop: take up to `max_batch` records (waiting at most `batch_wait_ms` after the first),
//! decode and check each; send the rejected ones to the dead-letter topic (awaiting the broker's
//! acknowledgement); apply the rest (durable store writes, then the cache); only then commit the
//! batch's offsets. A crash anywhere before the commit replays the batch, which applying
//! idempotently turns into no change — at-least-once delivery, effectively-once state. A batch
//! that cannot be written (store down) is retried with backoff, never skipped.
//!
//! Rebalances are served inside `recv`, i.e. between batches, after the previous batch was
//! committed, so a revoked partition never has applied-but-uncommitted events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::watch;

use recsys_shared::config::Config;

use crate::apply::Applier;
use crate::error::NearlineError;
use crate::event::{Event, Rejection};
use crate::metrics;

/// Dead-letter headers: why, and where the record came from.
pub const HEADER_REASON: &str = "recsys-dead-letter-reason";
pub const HEADER_DETAIL: &str = "recsys-dead-letter-detail";
pub const HEADER_SOURCE: &str = "recsys-source";

/// Counts rebalances and publishes consumer lag from librdkafka's statistics.
pub struct WorkerContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if p.partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::LAG
                    .with_label_values(&[topic.as_str(), partition.to_string().as_str()])
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                metrics::REBALANCES.with_label_values(&["assign"]).inc();
                self.assigned.store(true, Ordering::Release);
                tracing::info!(partitions = ?partitions(tpl), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                metrics::REBALANCES.with_label_values(&["revoke"]).inc();
                for (topic, partition) in partitions(tpl) {
                    let _ = metrics::LAG.remove_label_values(&[&topic, &partition.to_string()]);
                }
                tracing::info!(partitions = ?partitions(tpl), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// librdkafka properties shared by the worker's consumer and producers, from the config.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.nearline.brokers);
    for (key, value) in &config.nearline.kafka {
        client.set(key, value);
    }
    client
}

fn with_overrides(mut client: ClientConfig, config: &Config) -> ClientConfig {
    for (key, value) in &config.nearline.kafka {
        client.set(key, value);
    }
    client
}

/// The producer that writes dead letters (and `recsys nearline produce`): idempotent, acks=all.
pub fn producer(config: &Config) -> Result<FutureProducer, NearlineError> {
    let mut producer_config = client_config(config);
    producer_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    Ok(with_overrides(producer_config, config).create()?)
}

/// A running worker's handles.
pub struct WorkerOptions {
    pub model_root: PathBuf,
    /// Stop after this many events have been consumed (tests and benchmarks); `None` = run until
    /// `shutdown` becomes true.
    pub max_events: Option<u64>,
}

/// Runs the consumer loop until `shutdown` becomes true: finishes and commits the batch in hand,
/// then leaves the group.
pub async fn run(
    config: &Config,
    applier: Arc<Applier>,
    options: WorkerOptions,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, NearlineError> {
    let n = &config.nearline;
    let assigned = Arc::new(AtomicBool::new(false));
    let mut consumer_config = client_config(config);
    consumer_config
        .set("group.id", &n.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        // A catching-up consumer must not idle between fetches (Tansu 0.6 answers a fetch with
        // little data per partition and waits the full time when there is none).
        .set("fetch.wait.max.ms", "20");
    let consumer: StreamConsumer<WorkerContext> = with_overrides(consumer_config, config)
        .create_with_context(WorkerContext {
            assigned: assigned.clone(),
        })?;
    consumer.subscribe(&[&n.topic])?;
    let producer = producer(config)?;
    tracing::info!(brokers = %n.brokers, topic = %n.topic, group = %n.group_id, "consumer started");

    // Model refresh: a new CURRENT is loaded in the background and swapped in between batches'
    // fold-ins (each batch holds the model it started with).
    let model = applier.model().clone();
    let mut refused = None;
    model.refresh(&options.model_root, &mut refused).await;
    let poll = Duration::from_millis(config.nearline.model_poll_ms);
    let root = options.model_root.clone();
    let refresher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        loop {
            tick.tick().await;
            model.refresh(&root, &mut refused).await;
        }
    });

    let mut report = RunReport::default();
    let batch_wait = Duration::from_millis(n.batch_wait_ms);
    loop {
        ready.store(applier.model().get().is_some(), Ordering::Release);
        // The first record of a batch: wait for it, or for shutdown.
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(n.max_batch);
        match first {
            Ok(m) => batch.push(m),
            Err(e) => {
                tracing::warn!(error = %e, "consume error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + batch_wait;
        while batch.len() < n.max_batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                    break;
                }
                Err(_) => break,
            }
        }
        let offsets = next_offsets(&batch);
        let consumed = batch.len() as u64;
        process_batch(
            config,
            &applier,
            &producer,
            &batch,
            &mut report,
            &mut shutdown,
        )
        .await?;
        drop(batch);
        commit(&consumer, &offsets).await?;
        report.events += consumed;
        if options.max_events.is_some_and(|max| report.events >= max) {
            break;
        }
    }
    ready.store(false, Ordering::Release);
    refresher.abort();
    consumer.unsubscribe();
    tracing::info!(
        events = report.events,
        "consumer stopped; offsets of applied batches are committed"
    );
    Ok(report)
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub events: u64,
    pub applied: u64,
    pub dead_lettered: u64,
    pub batches: u64,
}

/// The offset to commit per partition: one past the batch's last record.
fn next_offsets(batch: &[BorrowedMessage<'_>]) -> HashMap<(String, i32), i64> {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for m in batch {
        let e = next
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    next
}

async fn commit(
    consumer: &StreamConsumer<WorkerContext>,
    offsets: &HashMap<(String, i32), i64>,
) -> Result<(), NearlineError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    // A failed commit is retried a few times; if it still fails (e.g. the partitions were
    // revoked), the batch will be replayed by whoever owns them, which is harmless.
    for attempt in 0..3 {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                metrics::COMMITS.inc();
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "offset commit failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    Ok(())
}

async fn process_batch(
    config: &Config,
    applier: &Applier,
    producer: &FutureProducer,
    batch: &[BorrowedMessage<'_>],
    report: &mut RunReport,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), NearlineError> {
    // Without a model nothing can be checked against the catalog or folded in: wait for one.
    while applier.model().get().is_none() {
        tracing::warn!("no model loaded; waiting before applying events");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if *shutdown.borrow() {
            return Ok(());
        }
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut events: Vec<Event> = Vec::with_capacity(batch.len());
    let mut rejected: Vec<(&BorrowedMessage<'_>, Rejection)> = Vec::new();
    for m in batch {
        let content_type = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key.eq_ignore_ascii_case("content-type"))
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        match applier.admit(m.payload(), content_type, m.key(), now_ms) {
            Ok(e) => events.push(e),
            Err(r) => rejected.push((m, r)),
        }
    }
    for (m, rejection) in &rejected {
        // The record is only skipped once the dead-letter topic has it.
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = dead_letter(config, producer, m, rejection).await {
            tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "dead letter not written; retrying (offsets stay uncommitted)");
            if *shutdown.borrow() {
                return Err(e);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        metrics::DEAD_LETTERS
            .with_label_values(&[rejection.reason.name()])
            .inc();
        metrics::EVENTS.with_label_values(&["dead_lettered"]).inc();
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            reason = rejection.reason.name(),
            detail = %rejection.detail,
            "event dead-lettered"
        );
    }
    report.dead_lettered += rejected.len() as u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match applier.apply(&events).await {
            Ok(applied) => {
                metrics::BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
                metrics::EVENTS
                    .with_label_values(&["applied"])
                    .inc_by(events.len() as u64);
                for (outcome, n) in [
                    ("updated", applied.updated),
                    ("unchanged", applied.unchanged),
                    ("refolded", applied.refolded),
                ] {
                    metrics::MEMBERS
                        .with_label_values(&[outcome])
                        .inc_by(n as u64);
                }
                report.applied += events.len() as u64;
                report.batches += 1;
                return Ok(());
            }
            Err(e) => {
                metrics::BATCH_RETRIES.inc();
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not applied; retrying (offsets stay uncommitted)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if *shutdown.borrow() {
                    // Not committed: whoever consumes next applies it.
                    return Err(e);
                }
            }
        }
    }
}

async fn dead_letter(
    config: &Config,
    producer: &FutureProducer,
    m: &BorrowedMessage<'_>,
    rejection: &Rejection,
) -> Result<(), NearlineError> {
    let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REASON,
            value: Some(rejection.reason.name()),
        })
        .insert(Header {
            key: HEADER_DETAIL,
            value: Some(rejection.detail.as_str()),
        })
        .insert(Header {
            key: HEADER_SOURCE,
            value: Some(source.as_str()),
        });
    if let Some(original) = m.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let topic = &config.nearline.dead_letter_topic;
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = m.key() {
        record = record.key(key);
    }
    if let Some(payload) = m.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| NearlineError::DeadLetter {
            topic: topic.clone(),
            problem: e.to_string(),
        })?;
    Ok(())
}

/// Opens the feature store and cache of `config`, serves `/metrics` and the probes on
/// `nearline.metrics_listen`, makes sure the dead-letter topic exists, and runs the consumer loop
/// until `stop` resolves (or `options.max_events` were consumed).
pub async fn serve(
    config: &Config,
    options: WorkerOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunReport, NearlineError> {
    use recsys_shared::store::cache::FeatureReader;
    use recsys_shared::store::features::FeatureStore;

    let kv = recsys_shared::store::open(&config.store).await?;
    let store = FeatureStore::new(kv, config.store.history_cap);
    let reader = Arc::new(FeatureReader::from_config(
        store,
        &config.cache,
        &config.store,
    ));
    reader.warm_cache().await;
    let applier = Arc::new(Applier::new(
        reader,
        crate::model::ModelHandle::new(),
        crate::event::EventRules::from_config(config),
        config.nearline.concurrency,
    ));
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    let ready = Arc::new(AtomicBool::new(false));
    let mut http_stop = rx.clone();
    let addr = recsys_shared::ops::serve_http(
        &config.nearline.metrics_listen,
        ready.clone(),
        "no model loaded or the consumer is not running\n",
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    )
    .await
    .map_err(|source| NearlineError::Listen {
        what: "metrics",
        addr: config.nearline.metrics_listen.clone(),
        source,
    })?;
    tracing::info!(%addr, store = config.store.backend.name(), "nearline worker: /metrics, /healthz, /readyz");
    if let Err(e) =
        crate::produce::ensure_topics(config, &[(config.nearline.dead_letter_topic.as_str(), 1)])
            .await
    {
        tracing::warn!(error = %e, topic = %config.nearline.dead_letter_topic, "could not create the dead-letter topic; it must exist before an event is dead-lettered");
    }
    run(config, applier, options, ready, rx).await
}
