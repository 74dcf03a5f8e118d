//! An event source without Kafka: encoded records from a channel go through the same admit
//! (decode + check) → apply path as the Kafka worker's batches. The quickstart and demos use it
//! when no broker is configured. There are no offsets to commit and no dead-letter topic: the
//! rejected records are returned with their reasons (and counted in the same metrics).

use tokio::sync::mpsc;

use crate::apply::{Applier, BatchReport};
use crate::error::NearlineError;
use crate::event::{Event, Rejection, CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF};
use crate::metrics;

/// One encoded record, as a Kafka record would carry it.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
}

impl Record {
    /// The record `recsys nearline produce` would send for `event`, protobuf-encoded.
    pub fn protobuf(event: &Event) -> Record {
        Record {
            key: Some(event.user_id.clone().into_bytes()),
            payload: event.to_protobuf(),
            content_type: Some(CONTENT_TYPE_PROTOBUF.to_string()),
        }
    }

    /// The same, JSON-encoded.
    pub fn json(event: &Event) -> Record {
        Record {
            key: Some(event.user_id.clone().into_bytes()),
            payload: event.to_json(),
            content_type: Some(CONTENT_TYPE_JSON.to_string()),
        }
    }
}

/// What a local run did.
#[derive(Debug, Default)]
pub struct LocalReport {
    pub records: usize,
    pub applied: usize,
    pub batches: usize,
    pub members_updated: usize,
    /// Records that were not applied, in arrival order, with the reason.
    pub rejected: Vec<Rejection>,
}

/// Applies records from `records` until the channel closes, in batches of up to `max_batch`
/// (whatever has arrived when a batch starts). Stops at the first batch that cannot be written.
pub async fn run(
    applier: &Applier,
    mut records: mpsc::Receiver<Record>,
    max_batch: usize,
) -> Result<LocalReport, NearlineError> {
    let mut report = LocalReport::default();
    let max_batch = max_batch.max(1);
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match records.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let applied = apply_batch(applier, &batch, &mut report.rejected).await?;
        report.records += batch.len();
        report.applied += applied.events;
        report.members_updated += applied.updated;
        report.batches += 1;
    }
    Ok(report)
}

async fn apply_batch(
    applier: &Applier,
    batch: &[Record],
    rejected: &mut Vec<Rejection>,
) -> Result<BatchReport, NearlineError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut events = Vec::with_capacity(batch.len());
    for record in batch {
        match applier.admit(
            Some(&record.payload),
            record.content_type.as_deref(),
            record.key.as_deref(),
            now_ms,
        ) {
            Ok(event) => events.push(event),
            Err(rejection) => {
                metrics::DEAD_LETTERS
                    .with_label_values(&[rejection.reason.name()])
                    .inc();
                metrics::EVENTS.with_label_values(&["dead_lettered"]).inc();
                tracing::warn!(reason = rejection.reason.name(), detail = %rejection.detail, "event rejected");
                rejected.push(rejection);
            }
        }
    }
    let report = applier.apply(&events).await?;
    metrics::EVENTS
        .with_label_values(&["applied"])
        .inc_by(events.len() as u64);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{applier_for, play, tiny_model};

    #[tokio::test]
    async fn records_from_a_channel_are_admitted_and_applied_like_kafka_records() {
        let dir = tempfile::tempdir().unwrap();
        let (root, version) = tiny_model();
        let applier = applier_for(dir.path(), root.path(), &version).await;
        let (tx, rx) = mpsc::channel(16);
        let now = chrono::Utc::now().timestamp_millis();
        let good = play("e1", "u-new", "i3", now);
        let unknown = play("e2", "u-new", "no-such-item", now);
        tx.send(Record::protobuf(&good)).await.unwrap();
        tx.send(Record::json(&unknown)).await.unwrap();
        tx.send(Record {
            key: None,
            payload: b"\xff\xfe".to_vec(),
            content_type: Some(CONTENT_TYPE_PROTOBUF.into()),
        })
        .await
        .unwrap();
        drop(tx);
        let report = run(&applier, rx, 100).await.unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.applied, 1);
        let reasons: Vec<&str> = report.rejected.iter().map(|r| r.reason.name()).collect();
        assert_eq!(reasons, ["unknown_item", "undecodable"]);
        let stored = applier.features().store().get("u-new").await.unwrap();
        assert_eq!(stored.history.len(), 1);
        assert_eq!(stored.history[0].item_id, good.item_id);
        assert!(stored.vector.is_some());
    }
}
