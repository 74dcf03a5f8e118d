//! Member, item and event-type ids mapped once to dense integer codes, so the built-in feature
//! jobs de-duplicate, join and group on integers instead of strings.
//!
//! The codes are assigned while the input rows are validated (the one pass that reads every row
//! anyway), then renumbered so that they follow the ids' byte order: code a < code b exactly when
//! id a < id b. Every `ORDER BY` and tie-break of the SQL therefore gives the same answer on codes
//! as on strings, and the results are mapped back to ids at the end.
//!
//! This module owns the coded copy of the interactions that the local engine queries. It must not
//! be used when a feature query is replaced from the config (a replacement may read other columns
//! or apply string functions to the ids), nor on a Ballista cluster (executors read the Parquet
//! themselves).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, BooleanArray, Float64Array, Int32Array, RecordBatch, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// An event type's code: its position among the configured types.
fn event_position(events: &[String], event_type: &str) -> Option<i32> {
    events
        .iter()
        .position(|e| e == event_type)
        .map(|p| p as i32)
}

/// Ids in byte order; an id's code is its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdDictionary {
    ids: Vec<Box<str>>,
}

impl IdDictionary {
    /// The id of `code`.
    pub fn id(&self, code: u32) -> &str {
        &self.ids[code as usize]
    }

    /// The code of `id`, if it was seen.
    pub fn code(&self, id: &str) -> Option<u32> {
        self.ids
            .binary_search_by(|probe| probe.as_ref().cmp(id))
            .ok()
            .map(|i| i as u32)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Codes handed out in first-seen order while reading.
#[derive(Debug, Default)]
pub struct IdIndex {
    codes: HashMap<Box<str>, u32, foldhash::fast::FixedState>,
    /// The last id looked up and its code (logs are often grouped by member); the buffer is
    /// reused, so a repeat costs a comparison and no allocation.
    last_id: String,
    last_code: Option<u32>,
    /// Check every id and keep none (validation alone: memory stays constant whatever the
    /// number of distinct ids).
    check_only: bool,
}

impl IdIndex {
    /// The code of `id`, and whether it is new. `check` runs on new ids only; its error is
    /// returned and nothing is inserted.
    pub fn code<E>(&mut self, id: &str, check: impl FnOnce() -> Result<(), E>) -> Result<u32, E> {
        if self.check_only {
            check()?;
            return Ok(0);
        }
        if let Some(code) = self.last_code {
            if self.last_id == id {
                return Ok(code);
            }
        }
        let code = match self.codes.get(id) {
            Some(&code) => code,
            None => {
                check()?;
                let code = self.codes.len() as u32;
                self.codes.insert(id.into(), code);
                code
            }
        };
        self.last_id.clear();
        self.last_id.push_str(id);
        self.last_code = Some(code);
        Ok(code)
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The dictionary in byte order and, for each first-seen code, its final code.
    fn finish(self) -> (IdDictionary, Vec<u32>) {
        let mut by_code: Vec<(Box<str>, u32)> = self.codes.into_iter().collect();
        by_code.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut renumber = vec![0u32; by_code.len()];
        for (new, (_, old)) in by_code.iter().enumerate() {
            renumber[*old as usize] = new as u32;
        }
        let ids = by_code.into_iter().map(|(id, _)| id).collect();
        (IdDictionary { ids }, renumber)
    }
}

/// The interactions as codes: `user_id` and `item_id` (UInt32), `event_type` (Int32, the event's
/// position among the configured event types), `value` and `ts` as read.
#[derive(Debug, Clone)]
pub struct CodedInteractions {
    pub users: IdDictionary,
    pub items: IdDictionary,
    /// The configured event types; an event's code is its position.
    pub events: Vec<String>,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl CodedInteractions {
    /// The schema of the coded table.
    pub fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::UInt32, false),
            Field::new("item_id", DataType::UInt32, false),
            Field::new("event_type", DataType::Int32, false),
            Field::new("value", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }

    /// The code of an event type, or -1 for one that is not configured (it matches no row).
    pub fn event_code(&self, event_type: &str) -> i32 {
        event_position(&self.events, event_type).unwrap_or(-1)
    }

    /// The coded rows in `partitions` groups for a `MemTable`.
    pub fn partitions(&self, partitions: usize) -> Vec<Vec<RecordBatch>> {
        let mut out = vec![Vec::new(); partitions.max(1)];
        let n = out.len();
        for (i, batch) in self.batches.iter().enumerate() {
            out[i % n].push(batch.clone());
        }
        out
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Collects the coded rows while the input is validated.
#[derive(Debug)]
pub struct InteractionCoder {
    pub users: IdIndex,
    pub items: IdIndex,
    events: Vec<String>,
    /// Whether rows are kept (a coder that only validates keeps nothing).
    keep_rows: bool,
    /// Rows after this instant are validated but not kept.
    as_of_ms: Option<i64>,
    batches: Vec<RecordBatch>,
}

impl InteractionCoder {
    /// A coder for the given event types (codes are their positions) keeping rows up to `as_of_ms`.
    pub fn new(events: Vec<String>, as_of_ms: Option<i64>) -> Self {
        InteractionCoder {
            users: IdIndex::default(),
            items: IdIndex::default(),
            events,
            keep_rows: true,
            as_of_ms,
            batches: Vec::new(),
        }
    }

    /// A coder that only validates: every id is checked, nothing is kept (no rows, no id
    /// index), so memory stays constant.
    pub fn validating_only(events: Vec<String>) -> Self {
        let checking = || IdIndex {
            check_only: true,
            ..IdIndex::default()
        };
        InteractionCoder {
            users: checking(),
            items: checking(),
            keep_rows: false,
            ..Self::new(events, None)
        }
    }

    /// Whether `push` keeps rows.
    pub fn keeps_rows(&self) -> bool {
        self.keep_rows
    }

    /// The code of a configured event type.
    pub fn event_code(&self, event_type: &str) -> Option<i32> {
        event_position(&self.events, event_type)
    }

    /// Keeps one batch of coded rows (first-seen codes); rows after `as_of_ms` are left out.
    pub fn push(
        &mut self,
        users: Vec<u32>,
        items: Vec<u32>,
        events: Vec<i32>,
        values: &Float64Array,
        ts: &TimestampMillisecondArray,
    ) {
        if !self.keep_rows {
            return;
        }
        let ts = TimestampMillisecondArray::new(ts.values().clone(), ts.nulls().cloned());
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(UInt32Array::from(users)),
            Arc::new(UInt32Array::from(items)),
            Arc::new(Int32Array::from(events)),
            Arc::new(values.clone()),
            Arc::new(ts.clone()),
        ];
        let mut batch = RecordBatch::try_new(CodedInteractions::table_schema(), columns)
            .expect("coded columns match the coded schema");
        if let Some(as_of) = self.as_of_ms {
            if ts.values().iter().any(|&t| t > as_of) {
                let keep: BooleanArray = ts.values().iter().map(|&t| Some(t <= as_of)).collect();
                batch = arrow::compute::filter_record_batch(&batch, &keep)
                    .expect("a mask as long as the batch");
            }
        }
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    /// Renumbers the codes into byte order and returns the coded table.
    pub fn finish(self) -> CodedInteractions {
        let (users, user_renumber) = self.users.finish();
        let (items, item_renumber) = self.items.finish();
        let renumber = |column: &Arc<dyn Array>, to: &[u32]| -> Arc<dyn Array> {
            let codes = column
                .as_any()
                .downcast_ref::<UInt32Array>()
                .expect("coded ids are UInt32");
            Arc::new(codes.unary::<_, arrow::datatypes::UInt32Type>(|c| to[c as usize]))
        };
        let schema = CodedInteractions::table_schema();
        let batches = self
            .batches
            .into_iter()
            .map(|b| {
                let mut columns = b.columns().to_vec();
                columns[0] = renumber(&columns[0], &user_renumber);
                columns[1] = renumber(&columns[1], &item_renumber);
                RecordBatch::try_new(schema.clone(), columns).expect("same schema")
            })
            .collect();
        CodedInteractions {
            users,
            items,
            events: self.events,
            schema,
            batches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn codes_follow_byte_order_and_new_ids_are_checked_once() {
        let mut coder = InteractionCoder::new(vec!["click".into(), "play".into()], Some(25));
        let mut checks = 0;
        let mut code = |index: &mut IdIndex, id: &str| {
            index
                .code(id, || {
                    checks += 1;
                    if id.is_empty() {
                        Err("empty")
                    } else {
                        Ok(())
                    }
                })
                .unwrap()
        };
        let users: Vec<u32> = ["u9", "u10", "u9", "u2"]
            .iter()
            .map(|u| code(&mut coder.users, u))
            .collect();
        let items: Vec<u32> = ["b", "a", "b", "c"]
            .iter()
            .map(|i| code(&mut coder.items, i))
            .collect();
        assert_eq!(checks, 6, "each distinct id is checked once");
        assert!(coder.users.code("", || Err("empty")).is_err());
        assert_eq!(coder.users.len(), 3, "a refused id is not inserted");
        coder.push(
            users,
            items,
            vec![1, 0, 1, 1],
            &Float64Array::from(vec![Some(1.0), None, Some(3.0), Some(4.0)]),
            &TimestampMillisecondArray::from(vec![10, 20, 30, 5]),
        );
        let coded = coder.finish();
        assert_eq!(coded.rows(), 3, "the row after as-of is left out");
        let batch = &coded.batches[0];
        let decode = |column: usize, dict: &IdDictionary| -> Vec<String> {
            batch
                .column(column)
                .as_primitive::<arrow::datatypes::UInt32Type>()
                .values()
                .iter()
                .map(|&c| dict.id(c).to_string())
                .collect()
        };
        assert_eq!(decode(0, &coded.users), ["u9", "u10", "u2"]);
        assert_eq!(decode(1, &coded.items), ["b", "a", "c"]);
        // Byte order: "u10" < "u2" < "u9".
        assert_eq!(coded.users.code("u10"), Some(0));
        assert_eq!(coded.users.code("u2"), Some(1));
        assert_eq!(coded.users.code("u9"), Some(2));
        assert_eq!(coded.users.code("u1"), None);
        assert_eq!(coded.event_code("play"), 1);
        assert_eq!(coded.event_code("rating"), -1);

        // Validation alone checks every id and keeps nothing.
        let mut validating = InteractionCoder::validating_only(vec!["play".into()]);
        let mut checks = 0;
        for id in ["a", "a", "b", "a"] {
            validating
                .users
                .code(id, || {
                    checks += 1;
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        assert_eq!(checks, 4);
        assert!(validating.users.is_empty() && !validating.keeps_rows());
    }
}
