//! The impression log: what every Rank and Homepage answer showed, sent to Kafka topic
//! `online.impressions.topic` (key = the member, so a member's impressions and events share a
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
//! Logging never slows or fails a request: [`ImpressionLog::log`] hands the record to a bounded
//! channel without waiting (no serialisation, no lock shared with librdkafka on the request
//! path); one thread serialises the records and gives them to librdkafka's bounded queue
//! (`queue_capacity` messages each). A full channel or queue, or a message the broker has not
//! taken within `delivery_timeout_ms` (a slow or dead broker), drops the impression and counts it
//! in `recsys_impressions_dropped_total{reason}`; delivered ones are counted in
//! `recsys_impressions_sent_total`.
//!
//! It must not block the request path or retry on it, and it owns nothing else: the records'
//! consumers (the nearline workers, the archive) read the same JSON.

use std::sync::LazyLock;

use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use recsys_shared::config::Config;
pub use recsys_shared::impression::{ImpressedItem, ImpressedVariant, Impression};

use crate::error::OnlineError;

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

/// The producer of impression records: a bounded hand-off to the thread that serialises and
/// sends them.
pub struct ImpressionLog {
    records: Option<std::sync::mpsc::SyncSender<Impression>>,
    producer: std::sync::Arc<ThreadedProducer<DeliveryCounter>>,
    sender: Option<std::thread::JoinHandle<()>>,
    sample_rate: f64,
}

impl ImpressionLog {
    /// The log `online.impressions` describes, or `None` when it is off. The brokers and client
    /// settings (TLS, SASL, secrets) are `nearline`'s.
    pub fn from_config(config: &Config) -> Result<Option<ImpressionLog>, OnlineError> {
        let settings = &config.online.impressions;
        if !settings.enabled {
            return Ok(None);
        }
        let mut client = ClientConfig::new();
        client
            // Impressions are analytics: one acknowledgement, no idempotence round trips.
            .set("acks", "1")
            .set("linger.ms", "20")
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
        let producer: std::sync::Arc<ThreadedProducer<DeliveryCounter>> =
            std::sync::Arc::new(client.create_with_context(DeliveryCounter).map_err(|e| {
                OnlineError::Config(format!("online.impressions: the producer: {e}"))
            })?);
        let (records, receiver) =
            std::sync::mpsc::sync_channel::<Impression>(settings.queue_capacity.clamp(1, 1 << 20));
        let topic = settings.topic.clone();
        let sending = producer.clone();
        let sender = std::thread::Builder::new()
            .name("impressions".into())
            .spawn(move || {
                for impression in receiver {
                    send(&sending, &topic, &impression);
                }
            })
            .map_err(|e| OnlineError::Config(format!("online.impressions: a thread: {e}")))?;
        tracing::info!(topic = %settings.topic, sample_rate = settings.sample_rate,
            "logging impressions to Kafka");
        Ok(Some(ImpressionLog {
            records: Some(records),
            producer,
            sender: Some(sender),
            sample_rate: settings.sample_rate,
        }))
    }

    /// Hands the record over without waiting; a full hand-off drops it (counted).
    pub fn log(&self, impression: Impression) {
        if self.sample_rate < 1.0 && rand::random::<f64>() >= self.sample_rate {
            return;
        }
        let Some(records) = &self.records else {
            return;
        };
        if records.try_send(impression).is_err() {
            IMPRESSIONS_DROPPED.with_label_values(&["queue_full"]).inc();
        }
    }

    /// Records still queued in librdkafka.
    pub fn queued(&self) -> i32 {
        use rdkafka::producer::Producer;
        self.producer.in_flight_count()
    }
}

/// Serialises one record and queues it in librdkafka without waiting; a full queue drops it.
fn send(producer: &ThreadedProducer<DeliveryCounter>, topic: &str, impression: &Impression) {
    let payload = serde_json::to_vec(impression).expect("an impression serialises");
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
        self.records.take();
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        let _ = self.producer.flush(std::time::Duration::from_secs(2));
    }
}
