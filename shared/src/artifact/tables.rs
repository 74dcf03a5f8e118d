//! Reading and writing the Parquet tables of a model version.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, ListArray, RecordBatch,
    StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{
    DataType, Field, Float32Type, Schema, SchemaRef, TimeUnit, UInt32Type, UInt64Type,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::model::matrix::SparseMatrix;
use crate::{Result, SharedError};

const BATCH_ROWS: usize = 64 * 1024;

/// A factor matrix with the id of every row: row `i` is `vectors[i*k .. (i+1)*k]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FactorTable {
    pub ids: Vec<String>,
    pub vectors: Vec<f32>,
    pub factors: usize,
}

/// One row of `item_popularity.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct PopularityRow {
    pub item_id: String,
    /// Distinct members with a positive interaction.
    pub members: u64,
    /// `members` scaled to (0, 1] by the most popular item.
    pub score: f32,
}

/// One row of `user_history.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub user_id: String,
    pub item_id: String,
    /// Interaction strength `r` (confidence is `1 + α r`).
    pub strength: f32,
    /// Milliseconds since the epoch of the newest event behind this pair.
    pub ts_ms: i64,
}

/// The Parquet writer settings of every table the platform writes (zstd).
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build()
}

/// Writes record batches to a new Parquet file (the caller fsyncs when it publishes).
pub fn write_batches(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let file = File::create(path).map_err(|e| SharedError::io(path, e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))
        .map_err(|e| SharedError::parquet(path, e))?;
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| SharedError::parquet(path, e))?;
    }
    writer.close().map_err(|e| SharedError::parquet(path, e))?;
    Ok(())
}

fn vector_type(k: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", DataType::Float32, false)),
        k as i32,
    )
}

/// Writes a factor table with id column `id_column` (`item_id` or `user_id`).
pub fn write_factors(path: &Path, id_column: &str, table: &FactorTable) -> Result<()> {
    let k = table.factors;
    assert_eq!(
        table.vectors.len(),
        table.ids.len() * k,
        "factor table shape"
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new(id_column, DataType::Utf8, false),
        Field::new("vector", vector_type(k), false),
    ]));
    let mut batches = Vec::new();
    for start in (0..table.ids.len()).step_by(BATCH_ROWS) {
        let end = (start + BATCH_ROWS).min(table.ids.len());
        let ids = StringArray::from_iter_values(&table.ids[start..end]);
        let values = Float32Array::from(table.vectors[start * k..end * k].to_vec());
        let vectors = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            k as i32,
            Arc::new(values),
            None,
        )
        .map_err(|e| SharedError::arrow(path, e))?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(ids) as ArrayRef, Arc::new(vectors) as ArrayRef],
        )
        .map_err(|e| SharedError::arrow(path, e))?;
        batches.push(batch);
    }
    write_batches(path, schema, &batches)
}

fn open_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| SharedError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| SharedError::parquet(path, e))?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| SharedError::parquet(path, e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| SharedError::arrow(path, e))
}

fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| SharedError::Schema {
            path: path.to_path_buf(),
            column: name.to_string(),
            problem: "missing".to_string(),
        })
}

fn strings(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    Ok(string_array(path, batch, name)?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

/// A string column without nulls.
fn string_array(path: &Path, batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let array = column(path, batch, name)?;
    let array = arrow::compute::cast(array, &DataType::Utf8).map_err(|e| SharedError::Schema {
        path: path.to_path_buf(),
        column: name.to_string(),
        problem: format!("not a string column: {e}"),
    })?;
    let array = array.as_string::<i32>().clone();
    if array.null_count() > 0 {
        return Err(SharedError::Schema {
            path: path.to_path_buf(),
            column: name.to_string(),
            problem: "contains nulls".to_string(),
        });
    }
    Ok(array)
}

/// Only the ids of a factor table written by [`write_factors`] (the vectors are not decoded).
pub fn read_factor_ids(path: &Path, id_column: &str) -> Result<super::Texts> {
    let file = File::open(path).map_err(|e| SharedError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| SharedError::parquet(path, e))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [id_column]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| SharedError::parquet(path, e))?;
    // Straight into one buffer: ten million ids as `String`s would cost half a GiB more while a
    // server loads a version beside the one it serves.
    let mut ids = super::Texts::default();
    for batch in reader {
        let batch = batch.map_err(|e| SharedError::arrow(path, e))?;
        for id in string_array(path, &batch, id_column)?.iter() {
            ids.push(id.unwrap_or_default())
                .map_err(|e| SharedError::Schema {
                    path: path.to_path_buf(),
                    column: id_column.to_string(),
                    problem: e.to_string(),
                })?;
        }
    }
    ids.shrink_to_fit();
    Ok(ids)
}

/// Writes row-major `f32` rows as raw little-endian bytes: what [`crate::model::ials::ItemMatrix`]
/// maps (the same rows as the factor table beside it).
pub fn write_raw_factors(path: &Path, vectors: &[f32]) -> Result<()> {
    use std::io::Write;
    let file = File::create(path).map_err(|e| SharedError::io(path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    for chunk in vectors.chunks(16 * 1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes)
            .map_err(|e| SharedError::io(path, e))?;
    }
    out.flush().map_err(|e| SharedError::io(path, e))
}

/// Reads a factor table written by [`write_factors`].
pub fn read_factors(path: &Path, id_column: &str) -> Result<FactorTable> {
    let mut table = FactorTable::default();
    for batch in open_batches(path)? {
        table.ids.extend(strings(path, &batch, id_column)?);
        let vectors = column(path, &batch, "vector")?;
        let list = vectors
            .as_fixed_size_list_opt()
            .ok_or_else(|| SharedError::Schema {
                path: path.to_path_buf(),
                column: "vector".to_string(),
                problem: format!(
                    "expected FixedSizeList<Float32>, found {}",
                    vectors.data_type()
                ),
            })?;
        let k = list.value_length() as usize;
        if table.factors != 0 && table.factors != k {
            return Err(SharedError::Schema {
                path: path.to_path_buf(),
                column: "vector".to_string(),
                problem: format!("width changes from {} to {k}", table.factors),
            });
        }
        table.factors = k;
        let values = list
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| SharedError::Schema {
                path: path.to_path_buf(),
                column: "vector".to_string(),
                problem: "values are not Float32".to_string(),
            })?;
        let offset = list.offset() * k;
        table
            .vectors
            .extend_from_slice(&values.values()[offset..offset + list.len() * k]);
    }
    if let Some(bad) = table.vectors.iter().position(|v| !v.is_finite()) {
        return Err(SharedError::Row {
            path: path.to_path_buf(),
            row: (bad / table.factors.max(1)) as u64,
            column: "vector".to_string(),
            problem: "not a finite number".to_string(),
        });
    }
    Ok(table)
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// Writes `item_weights.parquet`, the item × item weights of a history family: one row per item
/// (`item_id`, in row order), its `neighbours` (row numbers of this same table, ascending) and
/// their `weights`.
pub fn write_weights(path: &Path, item_ids: &[String], weights: &SparseMatrix) -> Result<()> {
    assert_eq!(weights.rows, item_ids.len(), "one row of weights per item");
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("neighbours", list_of(DataType::UInt32), false),
        Field::new("weights", list_of(DataType::Float32), false),
    ]));
    let mut batches = Vec::new();
    for start in (0..item_ids.len()).step_by(BATCH_ROWS) {
        let end = (start + BATCH_ROWS).min(item_ids.len());
        let (from, to) = (weights.indptr[start], weights.indptr[end]);
        let offsets = OffsetBuffer::new(
            weights.indptr[start..=end]
                .iter()
                .map(|&o| (o - from) as i32)
                .collect::<Vec<i32>>()
                .into(),
        );
        let list = |item: DataType, values: ArrayRef| {
            ListArray::try_new(
                Arc::new(Field::new("item", item, false)),
                offsets.clone(),
                values,
                None,
            )
            .map_err(|e| SharedError::arrow(path, e))
        };
        let neighbours = list(
            DataType::UInt32,
            Arc::new(UInt32Array::from(weights.indices[from..to].to_vec())),
        )?;
        let values = list(
            DataType::Float32,
            Arc::new(Float32Array::from(weights.values[from..to].to_vec())),
        )?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(&item_ids[start..end])) as ArrayRef,
                Arc::new(neighbours) as ArrayRef,
                Arc::new(values) as ArrayRef,
            ],
        )
        .map_err(|e| SharedError::arrow(path, e))?;
        batches.push(batch);
    }
    write_batches(path, schema, &batches)
}

/// Reads a table written by [`write_weights`]: the item ids in row order and the weights.
/// Every neighbour must be a row of the table, ascending within its row, every weight finite.
pub fn read_weights(path: &Path) -> Result<(Vec<String>, SparseMatrix)> {
    let mut ids = Vec::new();
    let mut indptr = vec![0usize];
    let mut indices: Vec<u32> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let schema_error = |column: &str, problem: String| SharedError::Schema {
        path: path.to_path_buf(),
        column: column.to_string(),
        problem,
    };
    for batch in open_batches(path)? {
        ids.extend(strings(path, &batch, "item_id")?);
        let neighbours = column(path, &batch, "neighbours")?
            .as_list_opt::<i32>()
            .ok_or_else(|| schema_error("neighbours", "expected List<UInt32>".into()))?;
        let weights = column(path, &batch, "weights")?
            .as_list_opt::<i32>()
            .ok_or_else(|| schema_error("weights", "expected List<Float32>".into()))?;
        for row in 0..batch.num_rows() {
            let n = neighbours.value(row);
            let n = n
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| schema_error("neighbours", "values are not UInt32".into()))?;
            let w = weights.value(row);
            let w = w
                .as_primitive_opt::<Float32Type>()
                .ok_or_else(|| schema_error("weights", "values are not Float32".into()))?;
            let at = (indptr.len() - 1) as u64;
            let row_error = |column: &str, problem: &str| SharedError::Row {
                path: path.to_path_buf(),
                row: at,
                column: column.to_string(),
                problem: problem.to_string(),
            };
            if n.len() != w.len() {
                return Err(row_error("weights", "not as many weights as neighbours"));
            }
            if n.values().windows(2).any(|p| p[0] >= p[1]) {
                return Err(row_error("neighbours", "not strictly ascending"));
            }
            if w.values().iter().any(|v| !v.is_finite()) {
                return Err(row_error("weights", "not a finite number"));
            }
            indices.extend_from_slice(n.values());
            values.extend_from_slice(w.values());
            indptr.push(indices.len());
        }
    }
    if let Some(pos) = indices.iter().position(|&j| j as usize >= ids.len()) {
        let row = indptr.partition_point(|&o| o <= pos) - 1;
        return Err(SharedError::Row {
            path: path.to_path_buf(),
            row: row as u64,
            column: "neighbours".to_string(),
            problem: format!("{} is not a row of the table", indices[pos]),
        });
    }
    let n = ids.len();
    Ok((
        ids,
        SparseMatrix {
            rows: n,
            cols: n,
            indptr,
            indices,
            values,
        },
    ))
}

/// Writes `item_popularity.parquet`.
pub fn write_popularity(path: &Path, rows: &[PopularityRow]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("members", DataType::UInt64, false),
        Field::new("score", DataType::Float32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.item_id),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.members),
            )),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.score))),
        ],
    )
    .map_err(|e| SharedError::arrow(path, e))?;
    write_batches(path, schema, &[batch])
}

/// Reads `item_popularity.parquet`.
pub fn read_popularity(path: &Path) -> Result<Vec<PopularityRow>> {
    let mut rows = Vec::new();
    for batch in open_batches(path)? {
        let ids = strings(path, &batch, "item_id")?;
        let members = column(path, &batch, "members")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| schema_error(path, "members", "expected UInt64"))?;
        let scores = column(path, &batch, "score")?
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| schema_error(path, "score", "expected Float32"))?;
        for (i, item_id) in ids.into_iter().enumerate() {
            rows.push(PopularityRow {
                item_id,
                members: members.value(i),
                score: scores.value(i),
            });
        }
    }
    Ok(rows)
}

fn schema_error(path: &Path, column: &str, problem: &str) -> SharedError {
    SharedError::Schema {
        path: path.to_path_buf(),
        column: column.to_string(),
        problem: problem.to_string(),
    }
}

fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("strength", DataType::Float32, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Writes `user_history.parquet`.
pub fn write_history(path: &Path, rows: &[HistoryRow]) -> Result<()> {
    write_history_rows(
        path,
        rows.iter()
            .map(|r| (r.user_id.as_str(), r.item_id.as_str(), r.strength, r.ts_ms)),
    )
}

/// Writes `user_history.parquet` from `(user_id, item_id, strength, ts_ms)` rows (borrowed ids:
/// no copy of the rows is held besides the Arrow batches).
pub fn write_history_rows<'a>(
    path: &Path,
    rows: impl Iterator<Item = (&'a str, &'a str, f32, i64)>,
) -> Result<()> {
    let schema = history_schema();
    let mut batches = Vec::new();
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<(&str, &str, f32, i64)> = rows.by_ref().take(BATCH_ROWS).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| r.1))),
                Arc::new(Float32Array::from_iter_values(chunk.iter().map(|r| r.2))),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(chunk.iter().map(|r| r.3))
                        .with_timezone("UTC"),
                ),
            ],
        )
        .map_err(|e| SharedError::arrow(path, e))?;
        batches.push(batch);
    }
    write_batches(path, schema, &batches)
}

/// Reads `user_history.parquet`.
pub fn read_history(path: &Path) -> Result<Vec<HistoryRow>> {
    let mut rows = Vec::new();
    for batch in open_batches(path)? {
        let users = strings(path, &batch, "user_id")?;
        let items = strings(path, &batch, "item_id")?;
        let strength = column(path, &batch, "strength")?
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| schema_error(path, "strength", "expected Float32"))?;
        let ts = column(path, &batch, "ts")?
            .as_primitive_opt::<arrow::datatypes::TimestampMillisecondType>()
            .ok_or_else(|| schema_error(path, "ts", "expected Timestamp(ms)"))?;
        for (i, (user_id, item_id)) in users.into_iter().zip(items).enumerate() {
            rows.push(HistoryRow {
                user_id,
                item_id,
                strength: strength.value(i),
                ts_ms: ts.value(i),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_and_a_neighbour_outside_the_table_is_refused_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let weights =
            SparseMatrix::from_triplets(3, 3, vec![(0, 1, 0.5), (0, 2, -0.25), (2, 0, 1.5)]);
        let path = dir.path().join("w.parquet");
        write_weights(&path, &ids, &weights).unwrap();
        assert_eq!(read_weights(&path).unwrap(), (ids.clone(), weights.clone()));

        let wider = SparseMatrix {
            cols: 9,
            ..SparseMatrix::from_triplets(3, 9, vec![(1, 8, 1.0)])
        };
        let path = dir.path().join("bad.parquet");
        write_weights(&path, &ids, &wider).unwrap();
        let e = read_weights(&path).unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("neighbours"), "{e}");
    }

    #[test]
    fn tables_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let factors = FactorTable {
            ids: vec!["a".into(), "b".into(), "c".into()],
            vectors: (0..12).map(|v| v as f32 * 0.5).collect(),
            factors: 4,
        };
        let path = dir.path().join("f.parquet");
        write_factors(&path, "item_id", &factors).unwrap();
        assert_eq!(read_factors(&path, "item_id").unwrap(), factors);
        let err = read_factors(&path, "user_id").unwrap_err().to_string();
        assert!(err.contains("user_id") && err.contains("missing"), "{err}");

        let pop = vec![PopularityRow {
            item_id: "a".into(),
            members: 7,
            score: 1.0,
        }];
        let path = dir.path().join("p.parquet");
        write_popularity(&path, &pop).unwrap();
        assert_eq!(read_popularity(&path).unwrap(), pop);

        let hist = vec![HistoryRow {
            user_id: "u".into(),
            item_id: "a".into(),
            strength: 2.0,
            ts_ms: 1_700_000_000_000,
        }];
        let path = dir.path().join("h.parquet");
        write_history(&path, &hist).unwrap();
        assert_eq!(read_history(&path).unwrap(), hist);
    }
}

/// One row of a version's `items.parquet` (the catalog as the offline tier read it): what the
/// online tier needs to show and filter an item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CatalogRow {
    pub item_id: String,
    pub title: Option<String>,
    /// ISO country codes the item may be shown in; `None` (or a null) means everywhere.
    pub available_countries: Option<Vec<String>>,
    /// The maturity rating (`online.maturity.ratings` orders them); `None` = unrated.
    pub maturity: Option<String>,
}

/// Reads `items.parquet`. `title`, `available_countries` and `maturity` are optional columns.
pub fn read_catalog(path: &Path) -> Result<Vec<CatalogRow>> {
    let mut rows = Vec::new();
    for batch in open_batches(path)? {
        let ids = strings(path, &batch, "item_id")?;
        let titles =
            match batch.column_by_name("title") {
                Some(array) => Some(arrow::compute::cast(array, &DataType::Utf8).map_err(|e| {
                    schema_error(path, "title", &format!("not a string column: {e}"))
                })?),
                None => None,
            };
        let maturity = match batch.column_by_name("maturity") {
            Some(array) => Some(arrow::compute::cast(array, &DataType::Utf8).map_err(|e| {
                schema_error(path, "maturity", &format!("not a string column: {e}"))
            })?),
            None => None,
        };
        let countries = batch.column_by_name("available_countries");
        let countries = match countries {
            Some(array) => Some(
                array
                    .as_list_opt::<i32>()
                    .ok_or_else(|| {
                        schema_error(path, "available_countries", "expected a list of strings")
                    })?
                    .clone(),
            ),
            None => None,
        };
        for (i, item_id) in ids.into_iter().enumerate() {
            let title = titles
                .as_ref()
                .map(|t| t.as_string::<i32>())
                .filter(|t| t.is_valid(i))
                .map(|t| t.value(i).to_string());
            let available_countries = match &countries {
                Some(list) if list.is_valid(i) => {
                    let values =
                        arrow::compute::cast(&list.value(i), &DataType::Utf8).map_err(|e| {
                            schema_error(path, "available_countries", &format!("not strings: {e}"))
                        })?;
                    let values = values.as_string::<i32>();
                    Some(
                        values
                            .iter()
                            .flatten()
                            .map(|c| c.to_ascii_uppercase())
                            .collect(),
                    )
                }
                _ => None,
            };
            let maturity = maturity
                .as_ref()
                .map(|m| m.as_string::<i32>())
                .filter(|m| m.is_valid(i))
                .map(|m| m.value(i).to_string());
            rows.push(CatalogRow {
                item_id,
                title,
                available_countries,
                maturity,
            });
        }
    }
    Ok(rows)
}

/// Writes an `items.parquet` with the columns [`read_catalog`] reads (the offline tier copies its
/// input catalog instead; this serves tools and tests that build a model without one).
pub fn write_catalog(path: &Path, rows: &[CatalogRow]) -> Result<()> {
    use arrow::array::{ListBuilder, StringBuilder};
    let list_field = Field::new("item", DataType::Utf8, true);
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new(
            "available_countries",
            DataType::List(Arc::new(list_field.clone())),
            true,
        ),
        Field::new("maturity", DataType::Utf8, true),
    ]));
    let mut batches = Vec::new();
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut countries = ListBuilder::new(StringBuilder::new()).with_field(list_field.clone());
        for row in chunk {
            match &row.available_countries {
                Some(list) => {
                    for c in list {
                        countries.values().append_value(c);
                    }
                    countries.append(true);
                }
                None => countries.append(false),
            }
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|r| &r.item_id),
                )),
                Arc::new(StringArray::from_iter(
                    chunk.iter().map(|r| r.title.as_deref()),
                )),
                Arc::new(countries.finish()),
                Arc::new(StringArray::from_iter(
                    chunk.iter().map(|r| r.maturity.as_deref()),
                )),
            ],
        )
        .map_err(|e| SharedError::arrow(path, e))?;
        batches.push(batch);
    }
    write_batches(path, schema, &batches)
}
