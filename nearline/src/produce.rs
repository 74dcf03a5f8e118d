//! `recsys nearline produce`: sends events from a file (JSON lines, or Parquet with the offline
//! tier's interactions schema) to the events topic, keyed by member, for demos, tests and
//! benchmarks; or impression records (JSON lines, as the online tier logs them) to the
//! impressions topic, for replays and tests of the feedback.

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float64Array, StringArray, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sha2::{Digest, Sha256};

use recsys_shared::impression::Impression;
use recsys_shared::progress::Progress;

use crate::error::NearlineError;
use crate::event::{Event, Rejection, CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF};

/// The record encoding `produce` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Protobuf,
    Json,
}

/// A deterministic event id for input rows without one, so producing a file twice sends the
/// same ids.
pub fn derived_event_id(e: &Event) -> String {
    let mut h = Sha256::new();
    for part in [&e.user_id, &e.item_id, &e.event_type] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(e.ts.to_le_bytes());
    h.update(e.value.to_le_bytes());
    hex::encode(&h.finalize()[..12])
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    event_id: Option<String>,
    user_id: String,
    item_id: String,
    event_type: String,
    #[serde(default)]
    value: Option<f64>,
    ts: i64,
    /// Attribution to a Rank/Homepage answer; optional.
    #[serde(default)]
    request_id: Option<String>,
}

/// Reads events from JSON lines (`.json`, `.jsonl`, `.ndjson`) or Parquet (`.parquet`), each
/// checked by `check` (the worker's own rules, so an event it would refuse is refused here, before
/// anything is sent). A bad row is an error naming the file and line or row.
pub fn read_events(
    path: &Path,
    check: impl Fn(&Event) -> Result<(), Rejection>,
) -> Result<Vec<Event>, NearlineError> {
    let input_error = |problem: String| NearlineError::Input {
        path: path.display().to_string(),
        problem,
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut events = Vec::new();
    if ext == "parquet" {
        let file = std::fs::File::open(path).map_err(|e| input_error(e.to_string()))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| input_error(e.to_string()))?;
        let mut row = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| input_error(e.to_string()))?;
            let column = |name: &str, ty: &DataType| {
                let c = batch
                    .column_by_name(name)
                    .ok_or_else(|| input_error(format!("no column `{name}`")))?;
                cast(c, ty).map_err(|e| input_error(format!("column `{name}`: {e}")))
            };
            let strings = |name: &str| -> Result<StringArray, NearlineError> {
                Ok(column(name, &DataType::Utf8)?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8")
                    .clone())
            };
            let users = strings("user_id")?;
            let items = strings("item_id")?;
            let types = strings("event_type")?;
            let ids = batch
                .column_by_name("event_id")
                .map(|_| strings("event_id"))
                .transpose()?;
            let request_ids = batch
                .column_by_name("request_id")
                .map(|_| strings("request_id"))
                .transpose()?;
            let values = column("value", &DataType::Float64)?;
            let values = values
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64");
            let ts = column("ts", &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            let ts = ts
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("cast to Timestamp(ms)");
            for i in 0..batch.num_rows() {
                for (name, array) in [
                    ("user_id", &users),
                    ("item_id", &items),
                    ("event_type", &types),
                ] {
                    if array.is_null(i) {
                        return Err(input_error(format!("row {}: `{name}` is null", row + i)));
                    }
                }
                if ts.is_null(i) {
                    return Err(input_error(format!("row {}: `ts` is null", row + i)));
                }
                let mut e = Event {
                    event_id: String::new(),
                    user_id: users.value(i).to_string(),
                    item_id: items.value(i).to_string(),
                    event_type: types.value(i).to_string(),
                    value: if values.is_null(i) {
                        0.0
                    } else {
                        values.value(i)
                    },
                    ts: ts.value(i),
                    request_id: match &request_ids {
                        Some(r) if !r.is_null(i) => r.value(i).to_string(),
                        _ => String::new(),
                    },
                };
                e.event_id = match &ids {
                    Some(ids) if !ids.is_null(i) => ids.value(i).to_string(),
                    _ => derived_event_id(&e),
                };
                check(&e).map_err(|r| input_error(format!("row {}: {r}", row + i)))?;
                events.push(e);
            }
            row += batch.num_rows();
        }
    } else if matches!(ext, "json" | "jsonl" | "ndjson") {
        let file = std::fs::File::open(path).map_err(|e| input_error(e.to_string()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| input_error(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: JsonRow = serde_json::from_str(&line)
                .map_err(|e| input_error(format!("line {}: {e}", n + 1)))?;
            let mut e = Event {
                event_id: row.event_id.unwrap_or_default(),
                user_id: row.user_id,
                item_id: row.item_id,
                event_type: row.event_type,
                value: row.value.unwrap_or(0.0),
                ts: row.ts,
                request_id: row.request_id.unwrap_or_default(),
            };
            if e.event_id.is_empty() {
                e.event_id = derived_event_id(&e);
            }
            check(&e).map_err(|r| input_error(format!("line {}: {r}", n + 1)))?;
            events.push(e);
        }
    } else {
        return Err(input_error(
            "unknown format: name the file .jsonl, .json, .ndjson or .parquet".into(),
        ));
    }
    Ok(events)
}

/// How long `produce` waits for a broker to answer before it says none is there.
pub const BROKER_CHECK: Duration = Duration::from_secs(5);

/// How long one record may wait for the broker's acknowledgement (librdkafka's
/// `message.timeout.ms`, unless `kafka.properties` sets it).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer `produce` sends with, once a broker has answered a metadata request within
/// `wait`: without one the command says so in seconds instead of waiting for every record's
/// delivery to time out.
pub async fn connect(
    config: &recsys_shared::config::Config,
    wait: Duration,
) -> Result<FutureProducer, NearlineError> {
    use rdkafka::producer::Producer;
    let producer = crate::kafka::producer_with_timeout(config, DELIVERY_TIMEOUT)?;
    let probe = producer.clone();
    let answered =
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, wait).map(|_| ()))
            .await
            .map_err(|e| format!("the metadata request did not finish: {e}"))
            .and_then(|answer| answer.map_err(|e| e.to_string()));
    answered.map_err(|detail| NearlineError::NoBroker {
        brokers: config.kafka.brokers.clone(),
        seconds: wait.as_secs(),
        detail,
    })?;
    Ok(producer)
}

/// Sends one event, keyed by member, and waits for the broker's acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    event: &Event,
    encoding: Encoding,
) -> Result<(), NearlineError> {
    let (payload, content_type) = match encoding {
        Encoding::Protobuf => (event.to_protobuf(), CONTENT_TYPE_PROTOBUF),
        Encoding::Json => (event.to_json(), CONTENT_TYPE_JSON),
    };
    send_keyed(producer, topic, &event.user_id, &payload, content_type).await
}

/// Sends one record keyed by `user_id` with its `content-type` header and waits for the broker's
/// acknowledgement.
async fn send_keyed(
    producer: &FutureProducer,
    topic: &str,
    user_id: &str,
    payload: &[u8],
    content_type: &str,
) -> Result<(), NearlineError> {
    let record = FutureRecord::to(topic)
        .key(user_id.as_bytes())
        .payload(payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(content_type),
        }));
    producer
        .send(record, DELIVERY_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|(e, _)| NearlineError::Kafka(e))
}

/// Reads impression records, one JSON object per line (`recsys_shared::impression`). A bad line
/// is an error naming the file and line.
pub fn read_impressions(path: &Path) -> Result<Vec<Impression>, NearlineError> {
    let input_error = |problem: String| NearlineError::Input {
        path: path.display().to_string(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| input_error(e.to_string()))?;
    let mut impressions = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| input_error(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        impressions.push(
            serde_json::from_str(&line).map_err(|e| input_error(format!("line {}: {e}", n + 1)))?,
        );
    }
    Ok(impressions)
}

/// Sends `events` in order with up to `in_flight` unacknowledged at a time; `rate` caps events per
/// second (0 = as fast as possible). Returns the seconds taken.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    events: &[Event],
    encoding: Encoding,
    rate: f64,
    in_flight: usize,
) -> Result<f64, NearlineError> {
    produce_records("producing events", events, rate, in_flight, |e| {
        send(producer, topic, e, encoding)
    })
    .await
}

/// Sends impression records in order, keyed by member, as JSON (see [`produce_all`]).
pub async fn produce_impressions(
    producer: &FutureProducer,
    topic: &str,
    impressions: &[Impression],
    rate: f64,
    in_flight: usize,
) -> Result<f64, NearlineError> {
    produce_records(
        "producing impressions",
        impressions,
        rate,
        in_flight,
        |i| async move {
            let payload = serde_json::to_vec(i).expect("an impression serializes");
            send_keyed(producer, topic, &i.user_id, &payload, CONTENT_TYPE_JSON).await
        },
    )
    .await
}

/// Sends `records` in order with `send`, up to `in_flight` unacknowledged at a time, at most
/// `rate` per second (0 = as fast as possible), with a progress bar. Returns the seconds taken.
async fn produce_records<'a, R, F, Fut>(
    what: &str,
    records: &'a [R],
    rate: f64,
    in_flight: usize,
    send: F,
) -> Result<f64, NearlineError>
where
    F: Fn(&'a R) -> Fut,
    Fut: std::future::Future<Output = Result<(), NearlineError>>,
{
    use futures::StreamExt;
    let started = Instant::now();
    let mut progress = Progress::new(what, records.len() as u64);
    let send = &send;
    let mut sent = futures::stream::iter(records.iter().enumerate())
        .map(|(i, r)| async move {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            send(r).await
        })
        .buffered(in_flight.max(1));
    let mut done = 0u64;
    while let Some(result) = sent.next().await {
        result?;
        done += 1;
        if done.is_multiple_of(1000) {
            progress.advance(1000, "");
        }
    }
    progress.advance(done % 1000, "");
    progress.finish();
    Ok(started.elapsed().as_secs_f64())
}
