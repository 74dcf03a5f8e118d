//! The input tables: where their files are, whether their schema and rows are acceptable, and
//! registering them with DataFusion.
//!
//! `interactions`: `user_id: Utf8, item_id: Utf8, event_type: Utf8, value: Float64 (nullable),
//! ts: Timestamp(ms)`. `items`: `item_id: Utf8, title: Utf8, genres: List<Utf8>,
//! available_countries: List<Utf8> (null = everywhere), maturity: Utf8 (nullable)`. Either may be
//! one Parquet file or a directory of them, optionally Hive-partitioned (`date=2026-11-01/…`).
//!
//! Every row is checked before any job runs, so a bad row is reported with its file, row number
//! and column, and nothing is trained or published from input that was partly unreadable.
//!
//! The interactions are read in one run of row groups per core. An id column whose every page in
//! a row group is dictionary-encoded (as the writer's page encoding statistics say) is read as
//! keys into the Parquet dictionary: each distinct value is checked and coded once per row group
//! and its rows cost an array lookup; other columns are read as strings and hashed per row.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Schema, TimeUnit, TimestampMillisecondType};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;

use recsys_shared::ids::id_problem;
use recsys_shared::object_storage::{self, RemoteLocation};
use recsys_shared::panics::{self, catch_quietly};
use recsys_shared::SharedError;

use crate::id_codes::{CodedInteractions, IdIndex, InteractionCoder};
use crate::{OfflineError, Result};

/// An input table on disk.
#[derive(Debug, Clone)]
pub struct InputTable {
    /// What the user named: a file or a directory (or an object-storage URL).
    pub path: PathBuf,
    /// Its Parquet files, sorted.
    pub files: Vec<PathBuf>,
    /// Hive partition columns found in the directory names (`date=…`).
    pub partition_columns: Vec<String>,
    /// Set when the table was copied from object storage: the URL and the local copy.
    origin: Option<Arc<Origin>>,
}

/// A table fetched from object storage into a scratch directory (removed with the last clone).
#[derive(Debug)]
struct Origin {
    url: String,
    scratch: tempfile::TempDir,
    /// The copy of what the URL names: the scratch directory or its one file.
    local: PathBuf,
}

/// What validating the interactions found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InteractionStats {
    pub rows: u64,
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
}

/// Kinds of column the input schema allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Text,
    Float64,
    TimestampMillis,
    TextList,
}

impl ColumnKind {
    fn accepts(self, data_type: &DataType) -> bool {
        match self {
            ColumnKind::Text => matches!(
                data_type,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            ColumnKind::Float64 => matches!(data_type, DataType::Float64),
            ColumnKind::TimestampMillis => {
                matches!(data_type, DataType::Timestamp(TimeUnit::Millisecond, _))
            }
            ColumnKind::TextList => match data_type {
                DataType::List(f) | DataType::LargeList(f) => {
                    ColumnKind::Text.accepts(f.data_type())
                }
                _ => false,
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            ColumnKind::Text => "Utf8",
            ColumnKind::Float64 => "Float64",
            ColumnKind::TimestampMillis => "Timestamp(ms)",
            ColumnKind::TextList => "List<Utf8>",
        }
    }
}

const INTERACTION_COLUMNS: [(&str, ColumnKind); 5] = [
    ("user_id", ColumnKind::Text),
    ("item_id", ColumnKind::Text),
    ("event_type", ColumnKind::Text),
    ("value", ColumnKind::Float64),
    ("ts", ColumnKind::TimestampMillis),
];

const ITEM_COLUMNS: [(&str, ColumnKind); 5] = [
    ("item_id", ColumnKind::Text),
    ("title", ColumnKind::Text),
    ("genres", ColumnKind::TextList),
    ("available_countries", ColumnKind::TextList),
    ("maturity", ColumnKind::Text),
];

impl InputTable {
    /// Finds the Parquet files at `path` (a file, or a directory searched recursively). An
    /// object-storage URL (`s3://bucket/interactions/`) is copied to a local scratch directory
    /// first, keeping its partition directories; errors still name the URL.
    pub fn discover(path: &Path) -> Result<InputTable> {
        let text = path.to_string_lossy();
        if object_storage::is_remote(&text) {
            return Self::fetch(&text);
        }
        let meta = std::fs::metadata(path).map_err(|e| SharedError::io(path, e))?;
        if meta.is_file() {
            check_parquet_magic(path)?;
            return Ok(InputTable {
                path: path.to_path_buf(),
                files: vec![path.to_path_buf()],
                partition_columns: Vec::new(),
                origin: None,
            });
        }
        let mut files = Vec::new();
        let mut partition_columns = Vec::new();
        collect_parquet(path, 0, &mut files, &mut partition_columns)?;
        files.sort();
        if files.is_empty() {
            return Err(OfflineError::input(
                path,
                "no .parquet files in this directory",
            ));
        }
        Ok(InputTable {
            path: path.to_path_buf(),
            files,
            partition_columns,
            origin: None,
        })
    }

    /// Copies the objects under `url` into a scratch directory (streamed, on a runtime of its own
    /// so callers inside one are fine) and discovers the copy.
    fn fetch(url: &str) -> Result<InputTable> {
        let remote = RemoteLocation::parse(url)?;
        let scratch = tempfile::Builder::new()
            .prefix("recsys-input-")
            .tempdir()
            .map_err(|e| SharedError::io(std::env::temp_dir(), e))?;
        let into = scratch.path().to_path_buf();
        let started = std::time::Instant::now();
        let files = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| SharedError::io(&into, e))?;
                    runtime.block_on(remote.download_all(&into))
                })
                .join()
                .expect("download thread")
        })?;
        if files.is_empty() {
            return Err(OfflineError::input(url, "no objects at this URL"));
        }
        tracing::info!(%url, files = files.len(), seconds = started.elapsed().as_secs_f64(),
            "input copied from object storage");
        let local = if files.len() == 1 && files[0].parent() == Some(scratch.path()) {
            files[0].clone()
        } else {
            scratch.path().to_path_buf()
        };
        let origin = Arc::new(Origin {
            url: url.trim_end_matches('/').to_string(),
            scratch,
            local: local.clone(),
        });
        let mut table = Self::discover(&local).map_err(|e| origin.relocate(e))?;
        table.path = PathBuf::from(url);
        table.origin = Some(origin);
        Ok(table)
    }

    /// Where a file of this table came from: its URL for a fetched table, else the file.
    pub fn source_of(&self, file: &Path) -> PathBuf {
        match &self.origin {
            Some(origin) => origin.source_of(file),
            None => file.to_path_buf(),
        }
    }

    fn relocate(&self, e: OfflineError) -> OfflineError {
        match &self.origin {
            Some(origin) => origin.relocate(e),
            None => e,
        }
    }

    fn check_schema(
        &self,
        file: &Path,
        schema: &Schema,
        columns: &[(&str, ColumnKind)],
    ) -> Result<()> {
        for (name, kind) in columns {
            let field = schema
                .field_with_name(name)
                .map_err(|_| SharedError::Schema {
                    path: file.to_path_buf(),
                    column: name.to_string(),
                    problem: format!(
                        "missing (found columns: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            if !kind.accepts(field.data_type()) {
                return Err(SharedError::Schema {
                    path: file.to_path_buf(),
                    column: name.to_string(),
                    problem: format!("has type {}, expected {}", field.data_type(), kind.name()),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Checks the schema and every row of an interactions table; `event_types` are the types
    /// accepted (those with a weight, and the explicit negatives).
    pub fn validate_interactions(&self, event_types: &[String]) -> Result<InteractionStats> {
        let coder = InteractionCoder::validating_only(event_types.to_vec());
        let (stats, _) = self
            .check_interactions_in_parallel(&coder, rayon::current_num_threads())
            .map_err(|e| self.relocate(e))?;
        Ok(stats)
    }

    /// Checks the schema and every row of an interactions table and returns the rows up to
    /// `as_of_ms` with their ids as codes (see [`crate::id_codes`]).
    pub fn validate_and_code_interactions(
        &self,
        event_types: &[String],
        as_of_ms: Option<i64>,
    ) -> Result<(InteractionStats, CodedInteractions)> {
        let coder = InteractionCoder::new(event_types.to_vec(), as_of_ms);
        let (stats, parts) = self
            .check_interactions_in_parallel(&coder, rayon::current_num_threads())
            .map_err(|e| self.relocate(e))?;
        Ok((stats, InteractionCoder::finish_all(parts)))
    }

    /// Splits the files' row groups into `parts` contiguous runs (one per core) and checks (and
    /// codes) the runs at once, each with a coder like `template`; the first error in file and
    /// row order wins. Returns the stats and the runs' coders in order.
    fn check_interactions_in_parallel(
        &self,
        template: &InteractionCoder,
        parts: usize,
    ) -> Result<(InteractionStats, Vec<InteractionCoder>)> {
        let runs = self.row_group_runs(parts)?;
        let results: Vec<Result<(InteractionStats, InteractionCoder)>> = runs
            .into_par_iter()
            .map(|run| {
                let mut coder = template.empty_like();
                coder.reserve(run.iter().map(|g| g.rows).sum());
                let stats = self.check_interactions(&run, &mut coder)?;
                Ok((stats, coder))
            })
            .collect();
        let mut stats = InteractionStats::default();
        let mut coders = Vec::with_capacity(results.len());
        for result in results {
            let (part, coder) = result?;
            stats.rows += part.rows;
            for t in [part.first_ts_ms, part.last_ts_ms].into_iter().flatten() {
                stats.first_ts_ms = Some(stats.first_ts_ms.map_or(t, |m| m.min(t)));
                stats.last_ts_ms = Some(stats.last_ts_ms.map_or(t, |m| m.max(t)));
            }
            coders.push(coder);
        }
        if stats.rows == 0 {
            return Err(OfflineError::input(
                &self.path,
                "the interactions table has no rows",
            ));
        }
        Ok((stats, coders))
    }

    /// The files' row groups cut into at most `parts` runs of about equal rows, in file order.
    fn row_group_runs(&self, parts: usize) -> Result<Vec<Vec<RowGroups>>> {
        let mut groups = Vec::new();
        for file in &self.files {
            let handle = File::open(file).map_err(|e| SharedError::io(file, e))?;
            let metadata = catch_quietly(|| {
                parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&handle)
            })
            .map_err(|panic| corrupt(file, &panic))?
            .map_err(|e| SharedError::parquet(file, e))?;
            // The file's Arrow schema (for the column types), when the footer carries one. A
            // damaged embedded schema can make its decoder panic (an unknown type or unit): a
            // corrupt file, like the panics guarded below.
            let schema = catch_quietly(|| {
                parquet::arrow::parquet_to_arrow_schema(
                    metadata.file_metadata().schema_descr(),
                    metadata.file_metadata().key_value_metadata(),
                )
                .ok()
            })
            .map_err(|panic| corrupt(file, &panic))?;
            let mut first_row = 0u64;
            for (index, group) in metadata.row_groups().iter().enumerate() {
                let rows = group.num_rows().max(0) as u64;
                let dictionaries = dictionary_encoded(group, schema.as_ref());
                groups.push((file.clone(), index, first_row, rows, dictionaries));
                first_row += rows;
            }
            if metadata.row_groups().is_empty() {
                // Still read (its schema is checked), as one empty run.
                groups.push((file.clone(), usize::MAX, 0, 0, Vec::new()));
            }
        }
        let total: u64 = groups.iter().map(|g| g.3).sum();
        let per_part = total.div_ceil(parts.max(1) as u64).max(1);
        let mut runs: Vec<Vec<RowGroups>> = vec![Vec::new()];
        let mut in_run = 0u64;
        for (file, index, first_row, rows, dictionaries) in groups {
            if in_run >= per_part {
                runs.push(Vec::new());
                in_run = 0;
            }
            in_run += rows;
            let run = runs.last_mut().expect("one run at least");
            match run.last_mut() {
                Some(last)
                    if last.file == file
                        && index != usize::MAX
                        && last.dictionaries.is_empty()
                        && dictionaries.is_empty() =>
                {
                    last.row_groups.push(index);
                    last.rows += rows;
                }
                _ => run.push(RowGroups {
                    file,
                    row_groups: if index == usize::MAX {
                        Vec::new()
                    } else {
                        vec![index]
                    },
                    first_row,
                    rows,
                    dictionaries,
                }),
            }
        }
        Ok(runs)
    }

    fn check_interactions(
        &self,
        run: &[RowGroups],
        coder: &mut InteractionCoder,
    ) -> Result<InteractionStats> {
        let mut stats = InteractionStats::default();
        let keep = coder.keeps_rows();
        // The codes of the current dictionaries' values, filled as rows name them.
        let (mut user_keys, mut item_keys, mut event_keys) = (
            KeyCodes::default(),
            KeyCodes::default(),
            KeyCodes::default(),
        );
        for RowGroups {
            file,
            row_groups,
            first_row,
            dictionaries,
            ..
        } in run
        {
            let mut row = *first_row;
            let batches = read_columns(
                self,
                file,
                &INTERACTION_COLUMNS,
                Some(row_groups),
                dictionaries,
            )?;
            for batch in batches {
                let batch = batch?;
                let users = text_column(file, &batch, "user_id")?;
                let items = text_column(file, &batch, "item_id")?;
                let events = text_column(file, &batch, "event_type")?;
                user_keys.follow(&users);
                item_keys.follow(&items);
                event_keys.follow(&events);
                let values = batch
                    .column_by_name("value")
                    .expect("projected")
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .clone();
                let ts = batch
                    .column_by_name("ts")
                    .expect("projected")
                    .as_primitive::<TimestampMillisecondType>()
                    .clone();
                let n = batch.num_rows();
                let capacity = if keep { n } else { 0 };
                let (mut user_codes, mut item_codes, mut event_codes) = (
                    Vec::with_capacity(capacity),
                    Vec::with_capacity(capacity),
                    Vec::with_capacity(capacity),
                );
                for i in 0..n {
                    let bad = |column: &str, problem: String| -> OfflineError {
                        SharedError::Row {
                            path: file.clone(),
                            row: row + i as u64,
                            column: column.to_string(),
                            problem,
                        }
                        .into()
                    };
                    // Each distinct id is checked the first time it is seen.
                    let user = user_keys.code(&users, i, |id| {
                        code_id(&mut coder.users, id, |p| bad("user_id", p))
                    })?;
                    let item = item_keys.code(&items, i, |id| {
                        code_id(&mut coder.items, id, |p| bad("item_id", p))
                    })?;
                    let event = event_keys.code(&events, i, |event| match event {
                        None => Err(bad("event_type", "null event type".into())),
                        Some(event) => coder.event_code(event).map(|e| e as u32).ok_or_else(|| {
                            bad(
                                "event_type",
                                format!(
                                    "unknown event type {event:?} (known: {}; add it to offline.features.event_weights)",
                                    coder.event_types().join(", ")
                                ),
                            )
                        }),
                    })? as i32;
                    if values.is_valid(i) && !values.value(i).is_finite() {
                        return Err(bad(
                            "value",
                            format!("{} is not a finite number", values.value(i)),
                        ));
                    }
                    if ts.is_null(i) {
                        return Err(bad("ts", "null timestamp".into()));
                    }
                    let t = ts.value(i);
                    stats.first_ts_ms = Some(stats.first_ts_ms.map_or(t, |m| m.min(t)));
                    stats.last_ts_ms = Some(stats.last_ts_ms.map_or(t, |m| m.max(t)));
                    if keep {
                        user_codes.push(user);
                        item_codes.push(item);
                        event_codes.push(event);
                    }
                }
                coder.push(user_codes, item_codes, event_codes, &values, &ts);
                row += n as u64;
                stats.rows += n as u64;
            }
        }
        Ok(stats)
    }

    /// Checks the schema and every row of an items table; returns the number of items.
    pub fn validate_items(&self) -> Result<u64> {
        self.check_items().map_err(|e| self.relocate(e))
    }

    fn check_items(&self) -> Result<u64> {
        let mut seen = HashSet::new();
        for file in &self.files {
            let mut row = 0u64;
            for batch in read_columns(self, file, &ITEM_COLUMNS, None, &[])? {
                let batch = batch?;
                let items = text_column(file, &batch, "item_id")?;
                for i in 0..batch.num_rows() {
                    let bad = |problem: String| -> OfflineError {
                        SharedError::Row {
                            path: file.clone(),
                            row: row + i as u64,
                            column: "item_id".to_string(),
                            problem,
                        }
                        .into()
                    };
                    let id = items.value(i).ok_or_else(|| bad("null id".into()))?;
                    if let Some(problem) = id_problem(id) {
                        return Err(bad(problem));
                    }
                    if !seen.insert(id.to_string()) {
                        return Err(bad(format!("item {id:?} appears more than once")));
                    }
                }
                row += batch.num_rows() as u64;
            }
        }
        if seen.is_empty() {
            return Err(OfflineError::input(
                &self.path,
                "the items table has no rows",
            ));
        }
        Ok(seen.len() as u64)
    }

    /// Registers the table with DataFusion under `name`.
    /// On a cluster (`on_cluster`) a table copied from object storage is registered by its URL,
    /// so the executors read the objects themselves.
    pub async fn register(&self, ctx: &SessionContext, name: &str, on_cluster: bool) -> Result<()> {
        let partitions = self
            .partition_columns
            .iter()
            .map(|c| (c.clone(), DataType::Utf8))
            .collect::<Vec<_>>();
        let options = ParquetReadOptions::default().table_partition_cols(partitions);
        let path = match &self.origin {
            Some(_) if on_cluster => &self.path,
            Some(origin) => &origin.local,
            None => &self.path,
        };
        let location = path
            .to_str()
            .ok_or_else(|| OfflineError::input(&self.path, "the path is not valid UTF-8"))?;
        ctx.register_parquet(name, location, options)
            .await
            .map_err(OfflineError::datafusion(format!(
                "registering {}",
                self.path.display()
            )))
    }
}

impl Origin {
    fn source_of(&self, file: &Path) -> PathBuf {
        match file.strip_prefix(self.scratch.path()) {
            Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from(&self.url),
            Ok(rel) => PathBuf::from(format!("{}/{}", self.url, rel.display())),
            Err(_) => file.to_path_buf(),
        }
    }

    /// The error with paths inside the scratch copy replaced by their URLs.
    fn relocate(&self, e: OfflineError) -> OfflineError {
        let at = |path: PathBuf| self.source_of(&path);
        match e {
            OfflineError::Input { path, problem } => OfflineError::Input {
                path: at(path),
                problem,
            },
            OfflineError::Shared(shared) => OfflineError::Shared(match shared {
                SharedError::Io { path, source } => SharedError::Io {
                    path: at(path),
                    source,
                },
                SharedError::Parquet { path, source } => SharedError::Parquet {
                    path: at(path),
                    source,
                },
                SharedError::Arrow { path, source } => SharedError::Arrow {
                    path: at(path),
                    source,
                },
                SharedError::Schema {
                    path,
                    column,
                    problem,
                } => SharedError::Schema {
                    path: at(path),
                    column,
                    problem,
                },
                SharedError::Row {
                    path,
                    row,
                    column,
                    problem,
                } => SharedError::Row {
                    path: at(path),
                    row,
                    column,
                    problem,
                },
                other => other,
            }),
            other => other,
        }
    }
}

fn collect_parquet(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    partition_columns: &mut Vec<String>,
) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| SharedError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SharedError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if path.is_dir() {
            let Some((column, _)) = name.split_once('=') else {
                return Err(OfflineError::input(
                    &path,
                    "sub-directories of an input table must be Hive partitions named column=value",
                ));
            };
            match partition_columns.get(depth) {
                Some(known) if known != column => {
                    return Err(OfflineError::input(
                        &path,
                        format!("partition column {column:?} where {known:?} was expected"),
                    ))
                }
                Some(_) => {}
                None => partition_columns.push(column.to_string()),
            }
            collect_parquet(&path, depth + 1, files, partition_columns)?;
        } else if name.ends_with(".parquet") {
            files.push(path);
        }
    }
    Ok(())
}

type BatchResult = std::result::Result<arrow::array::RecordBatch, OfflineError>;

/// Reads only `columns` of `file` after checking the file's schema.
/// Row groups of one file, the file row the first of them starts at, and their rows.
struct RowGroups {
    file: PathBuf,
    row_groups: Vec<usize>,
    first_row: u64,
    rows: u64,
    /// The id columns every page of which is dictionary-encoded, read as keys into the
    /// dictionary (then `row_groups` is one row group, so that no batch spans two dictionaries).
    dictionaries: Vec<&'static str>,
}

/// The text columns of the interactions whose column chunk in `group` is dictionary-encoded on
/// every page (as the writer's page encoding statistics say) and plain `Utf8` in `schema`:
/// reading them as dictionary keys hands each distinct value over once per row group instead of
/// once per row.
fn dictionary_encoded(
    group: &parquet::file::metadata::RowGroupMetaData,
    schema: Option<&Schema>,
) -> Vec<&'static str> {
    use parquet::basic::Encoding;
    let Some(schema) = schema else {
        return Vec::new();
    };
    ["user_id", "item_id", "event_type"]
        .into_iter()
        .filter(|name| {
            schema
                .field_with_name(name)
                .is_ok_and(|f| f.data_type() == &DataType::Utf8)
                && group.columns().iter().any(|chunk| {
                    chunk.column_path().parts() == [name.to_string()]
                        && chunk.dictionary_page_offset().is_some()
                        && chunk.page_encoding_stats_mask().is_some_and(|mask| {
                            mask.is_only(Encoding::RLE_DICTIONARY)
                                || mask.is_only(Encoding::PLAIN_DICTIONARY)
                        })
                })
        })
        .collect()
}

/// The batches of `columns` of `file` (only `row_groups`, when given), the text columns named in
/// `dictionaries` as `Dictionary(Int32, Utf8)` (keys into the column chunk's dictionary).
fn read_columns(
    table: &InputTable,
    file: &Path,
    columns: &[(&str, ColumnKind)],
    row_groups: Option<&[usize]>,
    dictionaries: &[&str],
) -> Result<impl Iterator<Item = BatchResult>> {
    let handle = File::open(file).map_err(|e| SharedError::io(file, e))?;
    // A damaged footer can make the metadata decoders panic (an unknown Arrow type in the
    // embedded schema) as damaged pages can (below): both are a corrupt file.
    let builder = catch_quietly(|| ParquetRecordBatchReaderBuilder::try_new(handle))
        .map_err(|panic| corrupt(file, &panic))?
        .map_err(|e| SharedError::parquet(file, e))?;
    table.check_schema(file, builder.schema(), columns)?;
    let builder = if dictionaries.is_empty() {
        builder
    } else {
        let schema = builder.schema();
        let fields: Vec<arrow::datatypes::FieldRef> = schema
            .fields()
            .iter()
            .map(|f| {
                if dictionaries.contains(&f.name().as_str()) && f.data_type() == &DataType::Utf8 {
                    Arc::new(f.as_ref().clone().with_data_type(DataType::Dictionary(
                        Box::new(DataType::Int32),
                        Box::new(DataType::Utf8),
                    )))
                } else {
                    f.clone()
                }
            })
            .collect();
        let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(fields)));
        let metadata = ArrowReaderMetadata::try_new(builder.metadata().clone(), options)
            .map_err(|e| SharedError::parquet(file, e))?;
        let handle = File::open(file).map_err(|e| SharedError::io(file, e))?;
        ParquetRecordBatchReaderBuilder::new_with_metadata(handle, metadata)
    };
    let indices: Vec<usize> = columns
        .iter()
        .map(|(name, _)| builder.schema().index_of(name).expect("checked"))
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let builder = match row_groups {
        Some(groups) => builder.with_row_groups(groups.to_vec()),
        None => builder,
    };
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| SharedError::parquet(file, e))?;
    let file = file.to_path_buf();
    let mut reader = Some(reader);
    // Damaged pages can make the Parquet reader panic (a bit-unpacking assertion) instead of
    // returning an error; a panic is caught here and reported as a corrupt file, and nothing more
    // is read from it.
    Ok(std::iter::from_fn(move || {
        let next = catch_quietly(std::panic::AssertUnwindSafe(|| reader.as_mut()?.next()));
        match next {
            Ok(batch) => batch.map(|b| b.map_err(|e| SharedError::arrow(&file, e).into())),
            Err(panic) => {
                reader = None;
                Some(Err(corrupt(&file, &panic)))
            }
        }
    }))
}

/// Refuses a file that is not Parquet (no `PAR1` at its start) with what it looks like instead
/// and what to do: a CSV or JSON file given where Parquet is expected otherwise fails later with
/// only "Corrupt footer".
fn check_parquet_magic(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| SharedError::io(path, e))?;
    if head.starts_with(b"PAR1") {
        return Ok(());
    }
    let text = std::str::from_utf8(&head)
        .ok()
        .or_else(|| std::str::from_utf8(&head[..head.len().saturating_sub(3)]).ok());
    let first_line = text.and_then(|t| t.lines().next()).unwrap_or("").trim();
    let looks_like = if first_line.starts_with('{') {
        "JSON lines"
    } else if text.is_some() && first_line.contains(',') {
        "CSV"
    } else if text.is_some() && first_line.contains('\t') {
        "tab-separated text"
    } else {
        return Err(OfflineError::input(
            path,
            "not a Parquet file (it does not start with PAR1)",
        ));
    };
    Err(OfflineError::input(
        path,
        format!(
            "this is {looks_like}, not Parquet: `recsys import movielens <dir>` converts a MovieLens release; any other data must be written as Parquet in the input schema (README, Input schema)"
        ),
    ))
}

/// The error for a file whose decoding panicked.
fn corrupt(file: &Path, panic: &Box<dyn std::any::Any + Send>) -> OfflineError {
    let detail = panics::message(panic.as_ref()).unwrap_or("no detail");
    OfflineError::input(
        file,
        format!("the file is corrupt: it cannot be decoded ({detail})"),
    )
}

/// The code of `id` in `index`; a null or unacceptable id is `bad`'s error.
fn code_id(
    index: &mut IdIndex,
    id: Option<&str>,
    bad: impl Fn(String) -> OfflineError,
) -> Result<u32> {
    let id = id.ok_or_else(|| bad("null id".into()))?;
    index.code(id, || match id_problem(id) {
        Some(problem) => Err(bad(problem)),
        None => Ok(()),
    })
}

/// A text column of one batch: its values as plain `Utf8` (whichever string type the file used),
/// or keys into the column chunk's dictionary of values.
enum TextColumn {
    Strings(ArrayRef),
    Keys {
        keys: arrow::array::Int32Array,
        values: ArrayRef,
    },
}

impl TextColumn {
    fn value(&self, i: usize) -> Option<&str> {
        match self {
            TextColumn::Strings(strings) => {
                let strings = strings.as_string::<i32>();
                strings.is_valid(i).then(|| strings.value(i))
            }
            TextColumn::Keys { keys, values } => {
                let key = keys.is_valid(i).then(|| keys.value(i) as usize)?;
                let values = values.as_string::<i32>();
                values.is_valid(key).then(|| values.value(key))
            }
        }
    }
}

fn text_column(file: &Path, batch: &arrow::array::RecordBatch, name: &str) -> Result<TextColumn> {
    let column = batch.column_by_name(name).expect("projected");
    if let Some(dictionary) = column.as_dictionary_opt::<arrow::datatypes::Int32Type>() {
        if dictionary.values().data_type() == &DataType::Utf8 {
            return Ok(TextColumn::Keys {
                keys: dictionary.keys().clone(),
                values: dictionary.values().clone(),
            });
        }
    }
    let cast =
        arrow::compute::cast(column, &DataType::Utf8).map_err(|e| SharedError::arrow(file, e))?;
    Ok(TextColumn::Strings(Arc::new(cast)))
}

/// The codes of one dictionary's values, each found (and checked) the first time a row names it:
/// rows keyed into a dictionary cost an array lookup, not a hash of their string.
#[derive(Default)]
struct KeyCodes {
    /// The dictionary the codes belong to (batches of one column chunk share it).
    values: Option<ArrayRef>,
    codes: Vec<Option<u32>>,
}

impl KeyCodes {
    /// Starts over when `column` is keyed into another dictionary than the last batch's.
    fn follow(&mut self, column: &TextColumn) {
        if let TextColumn::Keys { values, .. } = column {
            if !self.values.as_ref().is_some_and(|v| Arc::ptr_eq(v, values)) {
                self.codes.clear();
                self.codes.resize(values.len(), None);
                self.values = Some(values.clone());
            }
        }
    }

    /// The code of row `i` of `column`: `code` of its value, once per dictionary value when the
    /// column is keyed (the first row naming a value is the one its error names).
    fn code<E>(
        &mut self,
        column: &TextColumn,
        i: usize,
        code: impl FnOnce(Option<&str>) -> std::result::Result<u32, E>,
    ) -> std::result::Result<u32, E> {
        match column {
            TextColumn::Keys { keys, .. } if keys.is_valid(i) => {
                let key = keys.value(i) as usize;
                match self.codes[key] {
                    Some(known) => Ok(known),
                    None => {
                        let found = code(column.value(i))?;
                        self.codes[key] = Some(found);
                        Ok(found)
                    }
                }
            }
            _ => code(column.value(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{interaction_columns, interactions_schema, InteractionRow, TableWriter};
    use parquet::file::properties::WriterProperties;

    fn event_types() -> Vec<String> {
        vec!["play".to_string()]
    }

    /// Writes a valid 300-row interactions table at `path` and returns its bytes.
    fn small_table(path: &Path) -> Vec<u8> {
        let rows: Vec<InteractionRow> = (0..300)
            .map(|i| InteractionRow {
                user_id: format!("u{}", i % 17),
                item_id: format!("i{}", i % 29),
                event_type: "play",
                value: (i % 3 == 0).then_some(i as f64),
                ts_ms: 1_700_000_000_000 + i,
            })
            .collect();
        let mut writer = TableWriter::create(path, interactions_schema()).unwrap();
        writer.write_interactions(&rows).unwrap();
        writer.finish().unwrap();
        std::fs::read(path).unwrap()
    }

    /// The fault: `train --interactions ratings.csv` said only "Corrupt footer".
    #[test]
    fn text_files_given_as_parquet_say_what_they_are_and_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, says) in [
            (
                "ratings.csv",
                &b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"[..],
                "this is CSV, not Parquet: `recsys import movielens",
            ),
            (
                "events.jsonl",
                &b"{\"user_id\":\"m1\"}\n"[..],
                "this is JSON lines, not Parquet",
            ),
            (
                "random.bin",
                &[0u8, 159, 146, 150, 1, 2, 3][..],
                "not a Parquet file",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let e = InputTable::discover(&path).err().unwrap().to_string();
            assert!(e.contains(name) && e.contains(says), "{e}");
        }
    }

    /// Every single-byte corruption of a table's pages is an error naming the file or a clean
    /// pass — never a panic of the Parquet reader (which exited the job with code 101).
    #[test]
    fn flipped_bytes_inside_pages_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let intact = dir.path().join("intact.parquet");
        let bytes = small_table(&intact);
        let damaged = dir.path().join("damaged.parquet");
        let mut errors = 0;
        // The pages sit between the leading magic and the footer's metadata.
        let footer = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap())
            as usize;
        for at in 4..bytes.len() - 8 - footer {
            for mask in [0xff_u8, 0x01, 0x80] {
                let mut copy = bytes.clone();
                copy[at] ^= mask;
                std::fs::write(&damaged, &copy).unwrap();
                let result = InputTable::discover(&damaged)
                    .and_then(|table| table.validate_interactions(&event_types()));
                if let Err(e) = result {
                    assert!(e.to_string().contains("damaged.parquet"), "{e}");
                    errors += 1;
                }
            }
        }
        assert!(errors > 0, "no corruption was detected at all");
    }

    /// Rows `range` of a log over `members` members (`{member_prefix}{n}`) and `items` items: clicks
    /// and plays, a value on every third row, timestamps over 97 ms.
    fn interaction_rows(
        range: std::ops::Range<i64>,
        member_prefix: &str,
        members: i64,
        items: i64,
    ) -> Vec<InteractionRow> {
        range
            .map(|i| InteractionRow {
                user_id: format!("{member_prefix}{}", (i * 7) % members),
                item_id: format!("i{}", (i * 13) % items),
                event_type: if i % 4 == 0 { "click" } else { "play" },
                value: (i % 3 == 0).then_some(i as f64),
                ts_ms: 1_700_000_000_000 + (i % 97),
            })
            .collect()
    }

    /// Writes `rows` to `path` in row groups of 40 rows.
    fn table_in_small_row_groups(path: &Path, rows: &[InteractionRow]) {
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(40))
            .build();
        table_with(path, rows, properties);
    }

    /// Coding in several runs of row groups at once gives the codes, rows and stats of one run,
    /// and an error names the row of its file whichever run found it.
    #[test]
    fn parallel_runs_code_like_one_run_and_name_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows = |range: std::ops::Range<i64>| interaction_rows(range, "u", 53, 31);
        table_in_small_row_groups(&dir.path().join("a.parquet"), &rows(0..300));
        table_in_small_row_groups(&dir.path().join("b.parquet"), &rows(300..520));
        let table = InputTable::discover(dir.path()).unwrap();
        let coder =
            InteractionCoder::new(vec!["play".into(), "click".into()], Some(1_700_000_000_090));
        let (stats_one, one) = table.check_interactions_in_parallel(&coder, 1).unwrap();
        let (stats_many, many) = table.check_interactions_in_parallel(&coder, 5).unwrap();
        assert_eq!(one.len(), 1);
        assert!(many.len() >= 4, "{} runs", many.len());
        assert_eq!(stats_one, stats_many);
        assert_eq!(stats_one.rows, 520);
        let (one, many) = (
            InteractionCoder::finish_all(one),
            InteractionCoder::finish_all(many),
        );
        assert_eq!(one.users, many.users);
        assert_eq!(one.items, many.items);
        assert_eq!(one.users.len(), 53);
        assert_eq!(one.rows, many.rows);
        assert!(one.rows.len() < 520, "rows after --as-of are left out");

        // A bad id in b.parquet's fifth row group: named at its row of that file.
        let mut bad = rows(300..520);
        bad[170].item_id = String::new();
        table_in_small_row_groups(&dir.path().join("b.parquet"), &bad);
        let table = InputTable::discover(dir.path()).unwrap();
        for parts in [1, 5] {
            let e = table
                .check_interactions_in_parallel(&coder, parts)
                .expect_err("an empty id is refused")
                .to_string();
            assert!(
                e.contains("b.parquet: row 170 ") && e.contains("item_id"),
                "{parts} runs: {e}"
            );
        }
    }

    /// Writes `rows` to `path` with `properties`.
    fn table_with(path: &Path, rows: &[InteractionRow], properties: WriterProperties) {
        let schema = interactions_schema();
        let batch =
            arrow::array::RecordBatch::try_new(schema.clone(), interaction_columns(rows)).unwrap();
        let file = File::create(path).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// Id columns whose every page is dictionary-encoded are read as keys into the dictionary;
    /// the codes, rows and errors are those of reading them as strings, and a chunk that fell
    /// back to plain pages part-way (a dictionary page over its size limit) is read as strings.
    #[test]
    fn dictionary_keys_code_like_strings() {
        let dir = tempfile::tempdir().unwrap();
        let rows = interaction_rows(0..500, "member-", 211, 37);
        let group = |b: parquet::file::properties::WriterPropertiesBuilder| {
            b.set_max_row_group_row_count(Some(100))
                .set_data_page_row_count_limit(10)
                .set_write_batch_size(10)
        };
        let kinds = [
            ("dictionary", group(WriterProperties::builder()).build()),
            (
                "plain",
                group(WriterProperties::builder())
                    .set_dictionary_enabled(false)
                    .build(),
            ),
            (
                "fallback",
                group(WriterProperties::builder())
                    .set_dictionary_page_size_limit(512)
                    .build(),
            ),
        ];
        let coder =
            InteractionCoder::new(vec!["play".into(), "click".into()], Some(1_700_000_000_090));
        let mut coded = Vec::new();
        for (name, properties) in kinds {
            let path = dir.path().join(format!("{name}.parquet"));
            table_with(&path, &rows, properties);
            let table = InputTable::discover(&path).unwrap();
            let runs = table.row_group_runs(1).unwrap();
            let keyed: Vec<&str> = runs[0]
                .iter()
                .flat_map(|g| g.dictionaries.clone())
                .collect();
            match name {
                "dictionary" => {
                    assert_eq!(runs[0].len(), 5, "one row group per read");
                    assert_eq!(keyed.len(), 15, "{keyed:?}");
                }
                "plain" => assert!(keyed.is_empty(), "{keyed:?}"),
                _ => {
                    // A row group's 100 members (14 bytes each) overflow 512 bytes of dictionary;
                    // its 37 items and 2 event types do not.
                    assert!(!keyed.contains(&"user_id"), "{keyed:?}");
                    assert!(keyed.contains(&"item_id"), "{keyed:?}");
                }
            }
            let (stats, parts) = table.check_interactions_in_parallel(&coder, 2).unwrap();
            assert_eq!(stats.rows, 500);
            let all = InteractionCoder::finish_all(parts);
            assert_eq!(all.users.len(), 211);
            coded.push(all);

            // A bad id repeated: the first row holding it is named.
            let mut bad = rows.clone();
            bad[257].item_id = " bad".into();
            bad[301].item_id = " bad".into();
            let path = dir.path().join(format!("{name}-bad.parquet"));
            table_with(
                &path,
                &bad,
                match name {
                    "plain" => group(WriterProperties::builder())
                        .set_dictionary_enabled(false)
                        .build(),
                    _ => group(WriterProperties::builder()).build(),
                },
            );
            let e = InputTable::discover(&path)
                .unwrap()
                .check_interactions_in_parallel(&coder, 2)
                .expect_err("a leading space in an id is refused")
                .to_string();
            assert!(
                e.contains(": row 257 ") && e.contains("item_id"),
                "{name}: {e}"
            );
        }
        for other in &coded[1..] {
            assert_eq!(other.users, coded[0].users);
            assert_eq!(other.items, coded[0].items);
            assert_eq!(format!("{:?}", other.rows), format!("{:?}", coded[0].rows));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
            ..Default::default()
        })]
        /// Fuzzing the input validation: several random bytes overwritten anywhere in a table
        /// (footer included) give a clean pass or an error naming the file — never a panic.
        #[test]
        fn fuzz_damaged_tables_are_errors_not_panics(
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fuzzed.parquet");
            let mut bytes = small_table(&path);
            for (at, value) in damage {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Err(e) = InputTable::discover(&path).and_then(|t| t.validate_interactions(&event_types())) {
                proptest::prop_assert!(e.to_string().contains("fuzzed.parquet"), "{}", e);
            }
        }
    }
}
