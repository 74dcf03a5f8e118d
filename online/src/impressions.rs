//! The impression log: what every Rank and Homepage answer showed, sent to Kafka topic
//! `kafka.impressions_topic` (key = the member, so a member's impressions and events share a
//! partition order) as one JSON record per answer:
//!
//! ```json
//! {"request_id":"…","user_id":"m1","ts_ms":1790000000000,"rpc":"homepage",
//!  "model_version":"…","experiments":[{"experiment":"e","variant":"treatment"}],
//!  "items":[{"row":0,"row_kind":"top_picks","position":0,"item_id":"i7"}, …]}
//! ```
//!
//! The record ([`Impression`]) is the contract in `recsys_shared::impression`.
//!
//! Logging never slows or fails a request. On the request path [`ImpressionLog::log`] only
//! appends what the answer showed — catalog positions ([`Shown`]), not ids — to a bounded queue
//! under a lock held for a push: no ids are copied, nothing is serialised and no thread is woken.
//! One thread wakes every [`FLUSH_EVERY`], takes the whole queue, looks the ids up in the
//! answer's catalog, serialises each record and gives it to librdkafka's bounded queue
//! (`queue_capacity` messages each). A full queue, or a message the broker has not taken within
//! `delivery_timeout_ms` (a slow or dead broker), drops the impression and counts it in
//! `recsys_impressions_dropped_total{reason}`; delivered ones are counted in
//! `recsys_impressions_sent_total`. A queued record holds its answer's catalog, so a catalog
//! swapped out lives on until the next flush at most.
//!
//! It must not block the request path or retry on it, and it owns nothing else: the records'
//! consumers (the nearline workers, the archive) read the same JSON.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use recsys_shared::config::Config;
pub use recsys_shared::impression::{ImpressedItem, ImpressedVariant, Impression};
use recsys_shared::proto::v1::ExperimentAssignment;

use crate::catalog::Catalog;
use crate::error::OnlineError;

/// How often the sending thread takes the queued records.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// Impressions handed to Kafka and acknowledged.
pub static IMPRESSIONS_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "recsys_impressions_sent_total",
        "Impression records the broker acknowledged"
    )
    .expect("registers once")
});

/// Impressions dropped: `queue_full` (the broker is slower than the traffic), `undelivered`
/// (not acknowledged within the delivery timeout), `error` (refused by the client).
pub static IMPRESSIONS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_impressions_dropped_total",
        "Impression records dropped, by reason",
        &["reason"]
    )
    .expect("registers once")
});

/// Counts deliveries and drops from librdkafka's delivery reports.
pub struct DeliveryCounter;

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => IMPRESSIONS_SENT.inc(),
            Err((e, _)) => {
                let reason = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageTimedOut) => "undelivered",
                    _ => "error",
                };
                IMPRESSIONS_DROPPED.with_label_values(&[reason]).inc();
            }
        }
    }
}

/// What one answer showed, as positions in the catalog that served it.
pub struct Shown {
    pub catalog: Arc<Catalog>,
    pub rows: Vec<ShownRow>,
}

/// One row of an answer: its kind (`rank` for a Rank answer) and its items in order.
pub struct ShownRow {
    pub kind: &'static str,
    pub items: Vec<u32>,
}

/// An answer's impression as the request path hands it over; the record's ids are looked up
/// when it is sent ([`PendingImpression::record`]).
pub struct PendingImpression {
    pub request_id: String,
    pub user_id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `rank` or `homepage`.
    pub rpc: &'static str,
    pub experiments: Vec<ExperimentAssignment>,
    pub shown: Shown,
}

impl PendingImpression {
    /// The record of the contract, with the items' ids and the model version of the catalog
    /// that served the answer.
    pub fn record(&self) -> Impression {
        let catalog = &self.shown.catalog;
        Impression {
            request_id: self.request_id.clone(),
            user_id: self.user_id.clone(),
            ts_ms: self.ts_ms,
            rpc: self.rpc.to_string(),
            model_version: catalog.version.clone(),
            experiments: self
                .experiments
                .iter()
                .map(|a| ImpressedVariant {
                    experiment: a.experiment.clone(),
                    variant: a.variant.clone(),
                })
                .collect(),
            items: self
                .shown
                .rows
                .iter()
                .enumerate()
                .flat_map(|(row, shown)| {
                    shown
                        .items
                        .iter()
                        .enumerate()
                        .map(move |(position, &index)| ImpressedItem {
                            row: row as u32,
                            row_kind: shown.kind.to_string(),
                            position: position as u32,
                            item_id: catalog.item_id(index).to_owned(),
                        })
                })
                .collect(),
        }
    }
}

/// Records handed over and not yet taken by the sending thread.
struct Queue {
    records: Mutex<Vec<PendingImpression>>,
    capacity: usize,
    closed: AtomicBool,
    /// Records handed over and not yet given to librdkafka (queued, or in the batch being sent).
    unsent: AtomicUsize,
}

/// The producer of impression records: a bounded queue and the thread that empties it into
/// librdkafka.
pub struct ImpressionLog {
    queue: Arc<Queue>,
    producer: Arc<ThreadedProducer<DeliveryCounter>>,
    sender: Option<std::thread::JoinHandle<()>>,
    sample_rate: f64,
}

impl ImpressionLog {
    /// The log `online.impressions` describes, or `None` when it is off. The brokers and client
    /// settings (TLS, SASL, secrets) are `[kafka]`'s.
    pub fn from_config(config: &Config) -> Result<Option<ImpressionLog>, OnlineError> {
        let settings = &config.online.impressions;
        if !settings.enabled {
            return Ok(None);
        }
        let mut client = ClientConfig::new();
        client
            // Impressions are analytics: one acknowledgement, no idempotence round trips, and
            // large batches (fewer produce requests for the broker to handle).
            .set("acks", "1")
            .set("linger.ms", "50")
            .set("compression.type", "lz4")
            .set(
                "queue.buffering.max.messages",
                settings.queue_capacity.to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            );
        let properties = recsys_shared::kafka::client_properties(config)
            .map_err(|e| OnlineError::Config(format!("online.impressions: {e}")))?;
        for (key, value) in &properties {
            client.set(key, value);
        }
        client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        let producer: Arc<ThreadedProducer<DeliveryCounter>> =
            Arc::new(client.create_with_context(DeliveryCounter).map_err(|e| {
                OnlineError::Config(format!("online.impressions: the producer: {e}"))
            })?);
        let queue = Arc::new(Queue {
            records: Mutex::new(Vec::new()),
            capacity: settings.queue_capacity.clamp(1, 1 << 20),
            closed: AtomicBool::new(false),
            unsent: AtomicUsize::new(0),
        });
        let topic = config.kafka.impressions_topic.clone();
        let (sending, taken) = (producer.clone(), queue.clone());
        let sender = std::thread::Builder::new()
            .name("impressions".into())
            .spawn(move || {
                // The queue and this batch swap places, so both keep their capacity and a
                // request's push does not reallocate once the traffic has been seen.
                let mut batch = Vec::new();
                loop {
                    std::thread::park_timeout(FLUSH_EVERY);
                    let closed = taken.closed.load(Ordering::Acquire);
                    std::mem::swap(&mut batch, &mut *taken.records.lock().expect("queue lock"));
                    for impression in batch.drain(..) {
                        send(&sending, &topic, &impression);
                        taken.unsent.fetch_sub(1, Ordering::Release);
                    }
                    if closed {
                        break;
                    }
                }
            })
            .map_err(|e| OnlineError::Config(format!("online.impressions: a thread: {e}")))?;
        tracing::info!(topic = %config.kafka.impressions_topic, sample_rate = settings.sample_rate,
            "logging impressions to Kafka");
        Ok(Some(ImpressionLog {
            queue,
            producer,
            sender: Some(sender),
            sample_rate: settings.sample_rate,
        }))
    }

    /// Whether this answer is to be logged (the sampling draw). Callers build the
    /// [`PendingImpression`] only when it is.
    pub fn sampled(&self) -> bool {
        self.sample_rate >= 1.0 || rand::random::<f64>() < self.sample_rate
    }

    /// Queues the record without waiting; a full queue drops it (counted).
    pub fn log(&self, impression: PendingImpression) {
        let mut records = self.queue.records.lock().expect("queue lock");
        if records.len() >= self.queue.capacity {
            drop(records);
            IMPRESSIONS_DROPPED.with_label_values(&["queue_full"]).inc();
            return;
        }
        records.push(impression);
        self.queue.unsent.fetch_add(1, Ordering::Release);
    }

    /// Records not yet acknowledged or dropped: waiting for the sending thread, or in flight in
    /// librdkafka.
    pub fn queued(&self) -> i32 {
        use rdkafka::producer::Producer;
        let unsent = self.queue.unsent.load(Ordering::Acquire) as i32;
        unsent + self.producer.in_flight_count()
    }
}

/// Serialises one record and queues it in librdkafka without waiting; a full queue drops it.
fn send(producer: &ThreadedProducer<DeliveryCounter>, topic: &str, impression: &PendingImpression) {
    let payload = serde_json::to_vec(&impression.record()).expect("an impression serialises");
    let record = BaseRecord::to(topic)
        .key(impression.user_id.as_bytes())
        .payload(&payload);
    if let Err((e, _)) = producer.send(record) {
        let reason = match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => "queue_full",
            _ => "error",
        };
        IMPRESSIONS_DROPPED.with_label_values(&[reason]).inc();
    }
}

impl Drop for ImpressionLog {
    /// Sends what was handed over, then gives queued impressions a moment to go out at shutdown;
    /// what is left is dropped.
    fn drop(&mut self) {
        use rdkafka::producer::Producer;
        self.queue.closed.store(true, Ordering::Release);
        if let Some(sender) = self.sender.take() {
            sender.thread().unpark();
            let _ = sender.join();
        }
        let _ = self.producer.flush(std::time::Duration::from_secs(2));
    }
}
