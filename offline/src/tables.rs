//! Writing tables in the input schema (used by the importers and the synthetic generator).
//!
//! A table is written to `<name>.parquet.tmp` and renamed into place when complete, so a reader
//! never picks up a half-written input.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;

use recsys_shared::SharedError;

use crate::Result;

/// One row of the interactions table.
#[derive(Debug, Clone, PartialEq)]
pub struct InteractionRow {
    pub user_id: String,
    pub item_id: String,
    pub event_type: &'static str,
    pub value: Option<f64>,
    pub ts_ms: i64,
}

/// One row of the items table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemRow {
    pub item_id: String,
    pub title: String,
    pub genres: Vec<String>,
    /// `None` = available everywhere.
    pub available_countries: Option<Vec<String>>,
    pub maturity: Option<String>,
}

/// The interactions schema.
pub fn interactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The items schema.
pub fn items_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("genres", text_list(), true),
        Field::new("available_countries", text_list(), true),
        Field::new("maturity", DataType::Utf8, true),
    ]))
}

/// A Parquet file being written; visible under its name only after [`TableWriter::finish`].
pub struct TableWriter {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    /// `None` once finished; a writer dropped before that deletes its temporary file.
    writer: Option<ArrowWriter<File>>,
}

/// The columns of [`interactions_schema`] holding `rows`.
pub fn interaction_columns(rows: &[InteractionRow]) -> Vec<ArrayRef> {
    vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.user_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.item_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.event_type),
        )),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.value))),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|r| r.ts_ms),
        )),
    ]
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl TableWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| SharedError::io(parent, e))?;
        }
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(|e| SharedError::io(&tmp, e))?;
        let writer = ArrowWriter::try_new(
            file,
            schema.clone(),
            Some(recsys_shared::artifact::writer_properties()),
        )
        .map_err(|e| SharedError::parquet(&tmp, e))?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            tmp,
            schema,
            writer: Some(writer),
        })
    }

    pub fn write_interactions(&mut self, rows: &[InteractionRow]) -> Result<()> {
        self.write(interaction_columns(rows))
    }

    pub fn write_items(&mut self, rows: &[ItemRow]) -> Result<()> {
        let list = |values: &mut dyn Iterator<Item = Option<&Vec<String>>>| -> ArrayRef {
            let mut builder = ListBuilder::new(StringBuilder::new());
            for value in values {
                match value {
                    Some(v) => {
                        for s in v {
                            builder.values().append_value(s);
                        }
                        builder.append(true);
                    }
                    None => builder.append(false),
                }
            }
            Arc::new(builder.finish())
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.item_id),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| Some(r.title.as_str())),
            )),
            list(&mut rows.iter().map(|r| Some(&r.genres))),
            list(&mut rows.iter().map(|r| r.available_countries.as_ref())),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.maturity.as_deref()),
            )),
        ];
        self.write(columns)
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| SharedError::arrow(&self.tmp, e))?;
        self.writer
            .as_mut()
            .expect("not finished")
            .write(&batch)
            .map_err(|e| SharedError::parquet(&self.tmp, e).into())
    }

    /// Closes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        let file = self
            .writer
            .take()
            .expect("not finished")
            .into_inner()
            .map_err(|e| SharedError::parquet(&self.tmp, e))?;
        file.sync_all().map_err(|e| SharedError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| SharedError::io(&self.path, e))?;
        Ok(())
    }
}
