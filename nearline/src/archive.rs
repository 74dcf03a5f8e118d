//! `recsys nearline archive`: a Kafka topic of member events or impressions written to Parquet
//! files the offline job reads (`offline train --interactions`, `offline experiment-report`).
//!
//! Files are `<output>/partition=<p>/<first offset, 20 digits>.parquet`. Each is written under a
//! hidden temporary name, synced and renamed, and only then are the partition's offsets
//! committed. A crash between the rename and the commit makes the next run start again at the
//! committed offset; before it writes that partition's first file it deletes the files that
//! start at or after it (the uncommitted ones). So every record is archived exactly once, and a
//! reader never sees a half-written file (readers skip hidden names).
//!
//! Layouts (one row per record, flattened):
//! - events: `event_id, user_id, item_id, event_type, value, ts, request_id` — the interactions
//!   schema, so an archive is a training input as it is;
//! - impressions: `request_id, user_id, ts, rpc, model_version, experiment, variant, row,
//!   row_kind, position, item_id` — one row per item shown and experiment the member was in
//!   (`experiment`/`variant` null when in none).
//!
//! A record that cannot be decoded is skipped, logged with its partition and offset, and counted
//! (the workers dead-letter bad events; the archive keeps what can be read).
//!
//! It must not apply events or write the feature store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use prometheus::{register_int_counter_vec, IntCounterVec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use recsys_shared::config::Config;
use recsys_shared::impression::Impression;

use crate::error::NearlineError;
use crate::event;
use crate::kafka::with_overrides;

/// Archived records, files and skipped records, by topic kind.
pub static ARCHIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_archive_records_total",
        "Records the archive read, by kind and outcome (archived, skipped)",
        &["kind", "outcome"]
    )
    .expect("registers once")
});

/// What a topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Events,
    Impressions,
}

impl ArchiveKind {
    pub fn name(self) -> &'static str {
        match self {
            ArchiveKind::Events => "events",
            ArchiveKind::Impressions => "impressions",
        }
    }

    /// The Parquet schema of the archive.
    pub fn schema(self) -> SchemaRef {
        let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
        let ts = Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        );
        Arc::new(Schema::new(match self {
            ArchiveKind::Events => vec![
                text("event_id", false),
                text("user_id", false),
                text("item_id", false),
                text("event_type", false),
                Field::new("value", DataType::Float64, true),
                ts,
                text("request_id", true),
            ],
            ArchiveKind::Impressions => vec![
                text("request_id", false),
                text("user_id", false),
                ts,
                text("rpc", false),
                text("model_version", false),
                text("experiment", true),
                text("variant", true),
                Field::new("row", DataType::UInt32, false),
                text("row_kind", false),
                Field::new("position", DataType::UInt32, false),
                text("item_id", false),
            ],
        }))
    }
}

/// How to archive.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub kind: ArchiveKind,
    pub topic: String,
    pub output: PathBuf,
    /// Consumer group (one archive per group reads each record once).
    pub group: String,
    /// A partition's file is closed at this many records...
    pub max_records: usize,
    /// ...or when its first record is this old.
    pub max_age: Duration,
    /// Stop (after writing and committing everything) once no record came for this long.
    pub until_idle: Option<Duration>,
}

/// What a run archived.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveReport {
    pub records: u64,
    pub rows: u64,
    pub files: u64,
    pub skipped: u64,
}

/// Rows collected for one partition's next file.
struct Pending {
    first: i64,
    last: i64,
    opened: Instant,
    columns: Columns,
}

/// The columns of either layout, as plain vectors until the file is written.
#[derive(Default)]
struct Columns {
    text: Vec<Vec<Option<String>>>,
    ts: Vec<i64>,
    value: Vec<Option<f64>>,
    numbers: Vec<Vec<u32>>,
    rows: usize,
}

impl Columns {
    fn new(kind: ArchiveKind) -> Columns {
        let (texts, numbers) = match kind {
            ArchiveKind::Events => (5, 0),
            ArchiveKind::Impressions => (8, 2),
        };
        Columns {
            text: vec![Vec::new(); texts],
            numbers: vec![Vec::new(); numbers],
            ..Default::default()
        }
    }

    /// Adds the rows of one record; an error (nothing added) when it cannot be decoded.
    fn push(&mut self, kind: ArchiveKind, m: &BorrowedMessage<'_>) -> Result<(), String> {
        match kind {
            ArchiveKind::Events => {
                let content_type = event::content_type(m);
                let e = event::decode(m.payload(), content_type).map_err(|r| r.to_string())?;
                let request_id = (!e.request_id.is_empty()).then_some(e.request_id);
                for (column, value) in [
                    Some(e.event_id),
                    Some(e.user_id),
                    Some(e.item_id),
                    Some(e.event_type),
                    request_id,
                ]
                .into_iter()
                .enumerate()
                {
                    self.text[column].push(value);
                }
                self.value.push(Some(e.value));
                self.ts.push(e.ts);
                self.rows += 1;
            }
            ArchiveKind::Impressions => {
                let payload = m.payload().ok_or("the record has no value")?;
                let i: Impression =
                    serde_json::from_slice(payload).map_err(|e| format!("JSON: {e}"))?;
                let assignments: Vec<(Option<&str>, Option<&str>)> = if i.experiments.is_empty() {
                    vec![(None, None)]
                } else {
                    i.experiments
                        .iter()
                        .map(|a| (Some(a.experiment.as_str()), Some(a.variant.as_str())))
                        .collect()
                };
                for (experiment, variant) in assignments {
                    for item in &i.items {
                        let values = [
                            Some(i.request_id.as_str()),
                            Some(i.user_id.as_str()),
                            Some(i.rpc.as_str()),
                            Some(i.model_version.as_str()),
                            experiment,
                            variant,
                            Some(item.row_kind.as_str()),
                            Some(item.item_id.as_str()),
                        ];
                        for (column, value) in values.into_iter().enumerate() {
                            self.text[column].push(value.map(str::to_string));
                        }
                        self.ts.push(i.ts_ms);
                        self.numbers[0].push(item.row);
                        self.numbers[1].push(item.position);
                        self.rows += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn batch(self, kind: ArchiveKind) -> RecordBatch {
        let strings = |v: &Vec<Option<String>>| -> ArrayRef {
            Arc::new(StringArray::from(
                v.iter().map(|s| s.as_deref()).collect::<Vec<_>>(),
            ))
        };
        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(self.ts));
        let columns: Vec<ArrayRef> = match kind {
            ArchiveKind::Events => vec![
                strings(&self.text[0]),
                strings(&self.text[1]),
                strings(&self.text[2]),
                strings(&self.text[3]),
                Arc::new(Float64Array::from(self.value)),
                ts,
                strings(&self.text[4]),
            ],
            ArchiveKind::Impressions => vec![
                strings(&self.text[0]),
                strings(&self.text[1]),
                ts,
                strings(&self.text[2]),
                strings(&self.text[3]),
                strings(&self.text[4]),
                strings(&self.text[5]),
                Arc::new(UInt32Array::from(self.numbers[0].clone())),
                strings(&self.text[6]),
                Arc::new(UInt32Array::from(self.numbers[1].clone())),
                strings(&self.text[7]),
            ],
        };
        RecordBatch::try_new(kind.schema(), columns).expect("columns match the archive schema")
    }
}

/// The file of a partition's records starting at `first`.
fn file_name(first: i64) -> String {
    format!("{first:020}.parquet")
}

/// Deletes the partition's files that start at or after `from` (written but never committed by
/// an earlier run) and any temporary file.
fn remove_uncommitted(dir: &Path, from: i64) -> Result<usize, NearlineError> {
    let io = |e: std::io::Error| NearlineError::Input {
        path: dir.display().to_string(),
        problem: e.to_string(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().to_string();
        let stale = name.starts_with('.')
            || name
                .strip_suffix(".parquet")
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|start| start >= from);
        if stale {
            std::fs::remove_file(entry.path()).map_err(io)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs until `until_idle` passes without a record, or `stop` resolves; everything read is
/// written and committed before it returns.
pub async fn run(
    config: &Config,
    options: &ArchiveOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<ArchiveReport, NearlineError> {
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    let consumer: StreamConsumer = with_overrides(consumer_config, config)?.create()?;
    consumer.subscribe(&[options.topic.as_str()])?;
    tracing::info!(topic = %options.topic, kind = options.kind.name(),
        output = %options.output.display(), group = %options.group, "archiving");
    let mut archive = Archive {
        options,
        consumer: &consumer,
        pending: BTreeMap::new(),
        cleaned: std::collections::HashSet::new(),
        report: ArchiveReport::default(),
    };
    tokio::pin!(stop);
    let tick = Duration::from_millis(200);
    let mut last_record = Instant::now();
    loop {
        let next = tokio::select! {
            _ = &mut stop => break,
            next = tokio::time::timeout(tick, consumer.recv()) => next,
        };
        match next {
            Ok(Ok(m)) => {
                last_record = Instant::now();
                archive.take(&m)?;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            Err(_) => {}
        }
        archive.close_due(false)?;
        if options
            .until_idle
            .is_some_and(|idle| last_record.elapsed() >= idle)
        {
            break;
        }
    }
    archive.close_due(true)?;
    Ok(archive.report)
}

struct Archive<'a> {
    options: &'a ArchiveOptions,
    consumer: &'a StreamConsumer,
    pending: BTreeMap<i32, Pending>,
    /// Partitions whose uncommitted files were removed in this run.
    cleaned: std::collections::HashSet<i32>,
    report: ArchiveReport,
}

impl Archive<'_> {
    fn dir(&self, partition: i32) -> PathBuf {
        self.options.output.join(format!("partition={partition}"))
    }

    fn take(&mut self, m: &BorrowedMessage<'_>) -> Result<(), NearlineError> {
        let (partition, offset) = (m.partition(), m.offset());
        if self.cleaned.insert(partition) {
            let removed = remove_uncommitted(&self.dir(partition), offset)?;
            if removed > 0 {
                tracing::warn!(
                    partition,
                    from = offset,
                    removed,
                    "removed files an earlier run wrote but did not commit"
                );
            }
        }
        let kind = self.options.kind;
        let pending = self.pending.entry(partition).or_insert_with(|| Pending {
            first: offset,
            last: offset,
            opened: Instant::now(),
            columns: Columns::new(kind),
        });
        pending.last = offset;
        self.report.records += 1;
        if let Err(problem) = pending.columns.push(kind, m) {
            self.report.skipped += 1;
            ARCHIVED.with_label_values(&[kind.name(), "skipped"]).inc();
            tracing::warn!(partition, offset, %problem, "skipping a record that cannot be decoded");
        } else {
            ARCHIVED.with_label_values(&[kind.name(), "archived"]).inc();
        }
        Ok(())
    }

    /// Writes and commits the partitions whose file is full or old enough (all with `all`).
    fn close_due(&mut self, all: bool) -> Result<(), NearlineError> {
        let due: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                all || p.columns.rows >= self.options.max_records
                    || p.opened.elapsed() >= self.options.max_age
            })
            .map(|(&partition, _)| partition)
            .collect();
        for partition in due {
            let pending = self.pending.remove(&partition).expect("listed");
            self.close(partition, pending)?;
        }
        Ok(())
    }

    fn close(&mut self, partition: i32, pending: Pending) -> Result<(), NearlineError> {
        let rows = pending.columns.rows;
        if rows > 0 {
            let dir = self.dir(partition);
            let io = |path: &Path, e: &dyn std::fmt::Display| NearlineError::Input {
                path: path.display().to_string(),
                problem: e.to_string(),
            };
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, &e))?;
            let name = file_name(pending.first);
            let temporary = dir.join(format!(".{name}.tmp"));
            let file = std::fs::File::create(&temporary).map_err(|e| io(&temporary, &e))?;
            let properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let kind = self.options.kind;
            let mut writer = ArrowWriter::try_new(file, kind.schema(), Some(properties))
                .map_err(|e| io(&temporary, &e))?;
            writer
                .write(&pending.columns.batch(kind))
                .map_err(|e| io(&temporary, &e))?;
            let file = writer.into_inner().map_err(|e| io(&temporary, &e))?;
            file.sync_all().map_err(|e| io(&temporary, &e))?;
            let path = dir.join(&name);
            std::fs::rename(&temporary, &path).map_err(|e| io(&path, &e))?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            self.report.files += 1;
            self.report.rows += rows as u64;
            tracing::info!(file = %path.display(), rows,
                offsets = %format!("{}..={}", pending.first, pending.last), "archived");
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(
            &self.options.topic,
            partition,
            Offset::Offset(pending.last + 1),
        )?;
        self.consumer.commit(&offsets, CommitMode::Sync)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_files_at_or_after_the_resume_offset_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for first in [0, 100, 200] {
            std::fs::write(dir.path().join(file_name(first)), b"x").unwrap();
        }
        std::fs::write(dir.path().join(".00000000000000000300.parquet.tmp"), b"x").unwrap();
        assert_eq!(remove_uncommitted(dir.path(), 100).unwrap(), 3);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, [file_name(0)]);
        assert_eq!(remove_uncommitted(&dir.path().join("none"), 0).unwrap(), 0);
    }
}
