//! A member's events over REST (`POST /v1/events`, `online.event_ingest`): each event is checked
//! with the nearline workers' own rules ([`EventRules`], and the served model knows the item)
//! and produced to `kafka.events_topic`, keyed by member and protobuf-encoded as the workers
//! read it, with the producer's acknowledgement (`acks=all`, idempotent) awaited within the
//! request's deadline. An accepted event is in Kafka; the workers fold it in.
//!
//! It owns the check and the write; it must not apply an event itself (that is the nearline
//! tier's) nor retry a failed write on its own (the client retries with the same `event_id`,
//! which the workers apply once).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use recsys_shared::config::Config;
use recsys_shared::event::{Event, EventRules, RejectReason, Rejection, CONTENT_TYPE_PROTOBUF};
use serde::Serialize;

use crate::error::OnlineError;
use crate::rpc::RankError;

/// Where an accepted event was written.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The producer and the rules.
pub struct EventIngest {
    producer: FutureProducer,
    topic: String,
    rules: EventRules,
}

impl EventIngest {
    /// `None` unless `online.event_ingest` is on. An error names the setting.
    pub fn from_config(config: &Config) -> Result<Option<EventIngest>, OnlineError> {
        if !config.online.event_ingest {
            return Ok(None);
        }
        let mut client = ClientConfig::new();
        // A member's event is data, not analytics: every in-sync replica, no duplicates from the
        // producer's own retries.
        client
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                config.online.max_request_ms.to_string(),
            );
        let properties = recsys_shared::kafka::client_properties(config)
            .map_err(|e| OnlineError::Config(format!("online.event_ingest: {e}")))?;
        for (key, value) in &properties {
            client.set(key, value);
        }
        client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        let producer = client
            .create()
            .map_err(|e| OnlineError::Config(format!("online.event_ingest: the producer: {e}")))?;
        tracing::info!(topic = %config.kafka.events_topic, "taking member events over REST");
        Ok(Some(EventIngest {
            producer,
            topic: config.kafka.events_topic.clone(),
            rules: EventRules::from_config(config),
        }))
    }

    /// Checks `event` (the item against `knows`, the served model's items) and writes it,
    /// waiting at most `within` for Kafka's acknowledgement.
    pub async fn ingest(
        &self,
        event: Event,
        knows: impl Fn(&str) -> Option<bool>,
        within: Duration,
    ) -> Result<Accepted, RankError> {
        let now = chrono::Utc::now().timestamp_millis();
        self.rules.validate(&event, None, now).map_err(invalid)?;
        if knows(&event.item_id) == Some(false) {
            return Err(invalid(Rejection::of_field(
                RejectReason::UnknownItem,
                "item_id",
                format!("`item_id` {:?} is not in the served model", event.item_id),
            )));
        }
        let payload = event.to_protobuf();
        let record = FutureRecord::to(&self.topic)
            .key(event.user_id.as_str())
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(CONTENT_TYPE_PROTOBUF),
            }));
        match self.producer.send(record, within).await {
            Ok(delivery) => Ok(Accepted {
                event_id: event.event_id,
                topic: self.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((e, _)) => Err(RankError::Unavailable(format!(
                "the event was not written to {}: {e}; send it again (same event_id)",
                self.topic
            ))),
        }
    }
}

/// A rejection as the API's error, naming the event's field at fault (`body` for the event as a
/// whole).
fn invalid(rejection: Rejection) -> RankError {
    let field = [
        "event_id",
        "user_id",
        "item_id",
        "event_type",
        "request_id",
        "value",
        "ts",
    ]
    .into_iter()
    .find(|&f| rejection.field.as_deref() == Some(f))
    .unwrap_or("body");
    RankError::Invalid {
        field,
        problem: format!("{} ({})", rejection.detail, rejection.reason.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_names_its_field() {
        let error = invalid(Rejection::of_field(
            RejectReason::InvalidId,
            "user_id",
            "`user_id`: contains white space",
        ));
        match error {
            RankError::Invalid { field, problem } => {
                assert_eq!(field, "user_id");
                assert!(problem.ends_with("(invalid_id)"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
        // The field comes from the rejection, not from its text.
        let whole = invalid(Rejection::new(
            RejectReason::Undecodable,
            "`user_id` could not be read",
        ));
        assert!(
            matches!(whole, RankError::Invalid { field: "body", .. }),
            "{whole:?}"
        );
    }
}
