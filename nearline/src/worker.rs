//! `recsys nearline run`: one member of a Kafka consumer group.
//!
//! The loop: take up to `max_batch` records (waiting at most `batch_wait_ms` after the first),
//! decode and check each; send the rejected ones to the dead-letter topic (all at once, then
//! awaiting every acknowledgement); apply the rest (durable store writes, then the cache); only
//! then commit the batch's offsets. A crash anywhere before the commit replays the batch, which
//! applying idempotently turns into no change — at-least-once delivery, effectively-once state.
//!
//! Failures are classified. **Permanent** ones belong to an event, not to the worker: a rejected
//! event, or a member whose stored state cannot be decoded (`corrupt_state`) — those events go to
//! the dead-letter topic with the reason and the rest of the batch goes on. **Transient** ones (the
//! store or the dead-letter topic unavailable) are retried with backoff, never skipped; while
//! retrying, the worker pauses its partitions but keeps polling the consumer (so it is not evicted
//! for exceeding `max.poll.interval.ms`), reports itself stalled (`/readyz` 503,
//! `recsys_nearline_stalled` 1), and after `nearline.max_batch_retries` attempts it stops with an
//! error, leaving the batch uncommitted for the partition's next owner. On recovery the paused
//! partitions resume from exactly where the batch ended.
//!
//! Rebalances are served inside `recv`, i.e. between batches, after the previous batch was
//! committed, so a revoked partition never has applied-but-uncommitted events.
//!
//! With `feedback` enabled the worker subscribes to the impressions topic too. Both
//! topics are keyed by member and must have the same partition count: the range assignor then
//! gives partition p of both to one worker, so each member still has exactly one writer.

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

use recsys_store::StoreError;

use crate::apply::Applier;
use crate::error::NearlineError;
use crate::event::{Event, RejectReason, Rejection};
use crate::feedback::{decode_impression, FeedbackRules, Shown};
use crate::kafka::{producer, with_overrides};
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
    let mut consumer_config = ClientConfig::new();
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
        .set("fetch.wait.max.ms", "20")
        // A subscribed topic that does not exist yet is looked for again every 5 s (librdkafka's
        // default is 5 minutes), so a topic created after the worker started is consumed soon.
        .set("topic.metadata.refresh.interval.ms", "5000");
    let consumer: StreamConsumer<WorkerContext> = with_overrides(consumer_config, config)?
        .create_with_context(WorkerContext {
            assigned: assigned.clone(),
        })?;
    let feedback = config.feedback.enabled;
    let impressions_topic = config.kafka.impressions_topic.as_str();
    if feedback {
        consumer.subscribe(&[&config.kafka.events_topic, impressions_topic])?;
    } else {
        consumer.subscribe(&[&config.kafka.events_topic])?;
    }
    let producer = producer(config)?;
    tracing::info!(brokers = %config.kafka.brokers, topic = %config.kafka.events_topic, group = %n.group_id, "consumer started");

    // Model refresh: a new CURRENT is loaded in the background and swapped in between batches'
    // fold-ins (each batch holds the model it started with).
    let mut follower = applier.model().clone().follow(
        &options.model_root,
        Duration::from_millis(config.nearline.model_poll_ms),
    );
    follower.refresh().await;
    let refresher = tokio::spawn(follower.run());

    let mut report = RunReport::default();
    let batch_wait = Duration::from_millis(n.batch_wait_ms);
    let mut committed = true;
    // Ready once a model is loaded and partitions are assigned, while commits succeed; looked at
    // again while the worker waits for events, so an idle worker's readiness is current too.
    let is_ready = |committed: bool| {
        applier.model().get().is_some() && committed && assigned.load(Ordering::Acquire)
    };
    let mut waiting_since = std::time::Instant::now();
    loop {
        ready.store(is_ready(committed), Ordering::Release);
        // The first record of a batch: wait for it, or for shutdown.
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if !assigned.load(Ordering::Acquire)
                    && waiting_since.elapsed() > Duration::from_secs(30)
                {
                    tracing::warn!(topic = %config.kafka.events_topic, group = %n.group_id,
                        "no partitions assigned yet: does the topic exist, and does another worker of the group hold every partition?");
                    waiting_since = std::time::Instant::now();
                }
                continue;
            }
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
        let mut batch_run = BatchRun {
            config,
            applier: &applier,
            producer: &producer,
            consumer: &consumer,
            ready: &ready,
            shutdown: &mut shutdown,
            paused: None,
            attempts: 0,
        };
        let processed = batch_run.process(&batch, &mut report).await;
        batch_run.recover()?;
        processed?;
        drop(batch);
        committed = commit(&consumer, &offsets).await;
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

/// Commits the offsets; false when every retry failed (typically the partitions were revoked or
/// the member was evicted: the batch will be replayed by whoever owns them, which is harmless,
/// and the worker reports not-ready until a commit succeeds again).
async fn commit(
    consumer: &StreamConsumer<WorkerContext>,
    offsets: &HashMap<(String, i32), i64>,
) -> bool {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::error!(error = %e, topic, partition, "cannot build the offset commit");
            metrics::COMMIT_FAILURES.inc();
            return false;
        }
    }
    for attempt in 0..3 {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                metrics::COMMITS.inc();
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "offset commit failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    metrics::COMMIT_FAILURES.inc();
    tracing::error!("offset commit failed after retries; the batch will be replayed by the partitions' next owner");
    false
}

/// One batch being processed, and the stall state while it is retried.
struct BatchRun<'a> {
    config: &'a Config,
    applier: &'a Applier,
    producer: &'a FutureProducer,
    consumer: &'a StreamConsumer<WorkerContext>,
    ready: &'a AtomicBool,
    shutdown: &'a mut watch::Receiver<bool>,
    /// Set while stalled: where each assigned partition resumes (the consumer's position when
    /// it was paused, i.e. just past this batch).
    paused: Option<TopicPartitionList>,
    attempts: u32,
}

impl BatchRun<'_> {
    async fn process(
        &mut self,
        batch: &[BorrowedMessage<'_>],
        report: &mut RunReport,
    ) -> Result<(), NearlineError> {
        // Without a model nothing can be checked against the catalog or folded in: wait for one.
        while self.applier.model().get().is_none() {
            tracing::warn!("no model loaded; waiting before applying events");
            self.wait_polling(Duration::from_millis(500)).await?;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut admitted: Vec<(&BorrowedMessage<'_>, Event)> = Vec::with_capacity(batch.len());
        let mut shown: Vec<(&BorrowedMessage<'_>, Shown)> = Vec::new();
        let mut rejected: Vec<(&BorrowedMessage<'_>, Rejection)> = Vec::new();
        let impressions_topic = self.config.kafka.impressions_topic.as_str();
        for m in batch {
            if m.topic() == impressions_topic && m.topic() != self.config.kafka.events_topic {
                match decode_impression(m.payload(), m.key(), self.applier.event_rules(), now_ms) {
                    Ok(s) => shown.push((m, s)),
                    Err(r) => rejected.push((m, r)),
                }
                continue;
            }
            let content_type = crate::event::content_type(m);
            match self
                .applier
                .admit(m.payload(), content_type, m.key(), now_ms)
            {
                Ok(e) => admitted.push((m, e)),
                Err(r) => rejected.push((m, r)),
            }
        }
        self.dead_letter_all(&rejected).await?;
        report.dead_lettered += rejected.len() as u64;
        loop {
            let events: Vec<Event> = admitted.iter().map(|(_, e)| e.clone()).collect();
            let impressions: Vec<Shown> = shown.iter().map(|(_, s)| s.clone()).collect();
            let started = Instant::now();
            match self
                .applier
                .apply_with_impressions(&events, &impressions)
                .await
            {
                Ok(applied) => {
                    metrics::BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
                    metrics::EVENTS
                        .with_label_values(&["applied"])
                        .inc_by(events.len() as u64);
                    metrics::IMPRESSIONS.inc_by(impressions.len() as u64);
                    for (outcome, n) in [
                        ("updated", applied.updated),
                        ("unchanged", applied.unchanged),
                        ("refolded", applied.refolded),
                        ("feedback", applied.feedback),
                    ] {
                        metrics::MEMBERS
                            .with_label_values(&[outcome])
                            .inc_by(n as u64);
                    }
                    report.applied += events.len() as u64;
                    report.batches += 1;
                    return Ok(());
                }
                // Permanent, and one member's: their events go to the dead-letter topic, the
                // others are applied.
                Err(NearlineError::Store(StoreError::Corrupt {
                    namespace,
                    id,
                    problem,
                })) if admitted.iter().any(|(_, e)| e.user_id == id)
                    || shown.iter().any(|(_, s)| s.user_id == id) =>
                {
                    tracing::error!(member = %id, namespace, problem,
                        "stored state cannot be decoded; the member's events are dead-lettered");
                    let detail = format!("{namespace}/{id}: {problem}");
                    let (theirs, rest): (Vec<_>, Vec<_>) =
                        admitted.into_iter().partition(|(_, e)| e.user_id == id);
                    let (their_shown, rest_shown): (Vec<_>, Vec<_>) =
                        shown.into_iter().partition(|(_, s)| s.user_id == id);
                    let letters: Vec<(&BorrowedMessage<'_>, Rejection)> = theirs
                        .into_iter()
                        .map(|(m, _)| m)
                        .chain(their_shown.into_iter().map(|(m, _)| m))
                        .map(|m| {
                            (
                                m,
                                Rejection::new(RejectReason::CorruptState, detail.clone()),
                            )
                        })
                        .collect();
                    self.dead_letter_all(&letters).await?;
                    report.dead_lettered += letters.len() as u64;
                    admitted = rest;
                    shown = rest_shown;
                }
                Err(e) => {
                    metrics::BATCH_RETRIES.inc();
                    let backoff = self.next_backoff(&e)?;
                    tracing::error!(error = %e, attempt = self.attempts,
                        retry_in_ms = backoff.as_millis() as u64,
                        "batch not applied; retrying with the partitions paused (offsets stay uncommitted)");
                    self.wait_polling(backoff).await?;
                }
            }
        }
    }

    /// Sends every dead letter at once and awaits them all; the ones the broker did not take are
    /// retried (stalled) until it does. A record is only skipped once the dead-letter topic has it.
    async fn dead_letter_all(
        &mut self,
        letters: &[(&BorrowedMessage<'_>, Rejection)],
    ) -> Result<(), NearlineError> {
        let mut pending: Vec<&(&BorrowedMessage<'_>, Rejection)> = letters.iter().collect();
        while !pending.is_empty() {
            let sends = pending
                .iter()
                .map(|(m, rejection)| dead_letter(self.config, self.producer, m, rejection));
            let results = futures::future::join_all(sends).await;
            let mut failed = Vec::new();
            let mut last_error = None;
            for (letter, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        let (m, rejection) = letter;
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
                    Err(e) => {
                        failed.push(letter);
                        last_error = Some(e);
                    }
                }
            }
            pending = failed;
            if let Some(e) = last_error {
                metrics::DEAD_LETTER_RETRIES.inc_by(pending.len() as u64);
                let backoff = self.next_backoff(&e)?;
                tracing::error!(error = %e, unsent = pending.len(), attempt = self.attempts,
                    retry_in_ms = backoff.as_millis() as u64,
                    "dead letters not written; retrying with the partitions paused (offsets stay uncommitted)");
                self.wait_polling(backoff).await?;
            }
        }
        Ok(())
    }

    /// The wait before the next attempt, or the error once the retry budget is spent.
    fn next_backoff(&mut self, error: &NearlineError) -> Result<Duration, NearlineError> {
        self.attempts += 1;
        let budget = self.config.nearline.max_batch_retries;
        if self.attempts > budget {
            return Err(NearlineError::Stalled {
                attempts: budget,
                last: error.to_string(),
            });
        }
        let exponent = self.attempts.saturating_sub(1).min(6);
        Ok((Duration::from_millis(100) * (1 << exponent)).min(Duration::from_secs(5)))
    }

    /// Waits `delay` with the partitions paused while still polling the consumer, so the group
    /// keeps this member (records delivered meanwhile are dropped: the partitions are rewound to
    /// where they were paused on recovery). Stops early with an error on shutdown.
    async fn wait_polling(&mut self, delay: Duration) -> Result<(), NearlineError> {
        if self.paused.is_none() {
            let position = self.consumer.position()?;
            self.consumer.pause(&self.consumer.assignment()?)?;
            self.paused = Some(position);
            self.ready.store(false, Ordering::Release);
            metrics::STALLED.set(1);
        }
        let until = tokio::time::Instant::now() + delay;
        loop {
            if *self.shutdown.borrow() {
                return Err(NearlineError::ShuttingDown);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = self.consumer.recv() => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// Resumes paused partitions at the positions they were paused at.
    fn recover(&mut self) -> Result<(), NearlineError> {
        let Some(position) = self.paused.take() else {
            return Ok(());
        };
        metrics::STALLED.set(0);
        let assignment = self.consumer.assignment()?;
        self.consumer.resume(&assignment)?;
        let mut rewind = TopicPartitionList::new();
        for element in position.elements() {
            let still_ours = assignment
                .find_partition(element.topic(), element.partition())
                .is_some();
            if let (true, Offset::Offset(offset)) = (still_ours, element.offset()) {
                rewind.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(offset),
                )?;
            }
        }
        if rewind.count() > 0 {
            self.consumer
                .seek_partitions(rewind, Duration::from_secs(10))?;
        }
        tracing::info!(
            attempts = self.attempts,
            "batch finished after retries; partitions resumed"
        );
        Ok(())
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
    let topic = &config.kafka.dead_letter_topic;
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
/// `nearline.metrics_listen`, creates the events topic (`kafka.events_partitions`) and the
/// dead-letter topic when they do not exist, and runs the consumer loop
/// until `stop` resolves (or `options.max_events` were consumed).
pub async fn serve(
    config: &Config,
    options: WorkerOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunReport, NearlineError> {
    use recsys_store::cache::FeatureReader;
    use recsys_store::features::FeatureStore;

    let kv = recsys_store::open(&config.store).await?;
    let store = FeatureStore::new(kv, config.store.history_cap);
    let reader = Arc::new(FeatureReader::from_config(
        store,
        &config.cache,
        &config.store,
    ));
    reader.warm_cache().await;
    let applier = Arc::new(
        Applier::new(
            reader,
            crate::model::ModelHandle::new(),
            crate::event::EventRules::from_config(config),
            config.nearline.concurrency,
        )
        .with_feedback(FeedbackRules::from_config(config)),
    );
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
    // The topics this worker reads and writes are created when they do not exist yet, so the
    // tiers can start in any order.
    let kafka = &config.kafka;
    for (topic, partitions, why) in [
        (
            kafka.events_topic.as_str(),
            kafka.events_partitions,
            "it is consumed once it exists",
        ),
        (
            kafka.dead_letter_topic.as_str(),
            1,
            "it must exist before an event is dead-lettered",
        ),
    ] {
        if let Err(e) = crate::kafka::ensure_topics(config, &[(topic, partitions)]).await {
            tracing::warn!(error = %e, %topic, "could not create the topic; {why}");
        }
    }
    if config.feedback.enabled {
        crate::kafka::ensure_co_partitioned(
            config,
            &config.kafka.events_topic,
            &config.kafka.impressions_topic,
        )
        .await?;
    }
    run(config, applier, options, ready, rx).await
}
