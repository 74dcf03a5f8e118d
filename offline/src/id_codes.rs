//! Member, item and event-type ids mapped once to dense integer codes, so the built-in feature
//! jobs ([`crate::coded_jobs`]) de-duplicate, filter and group on integers instead of strings.
//!
//! The codes are assigned while the input rows are validated (the one pass that reads every row
//! anyway), then renumbered so that they follow the ids' byte order: code a < code b exactly when
//! id a < id b. Every `ORDER BY` and tie-break of the SQL therefore gives the same answer on codes
//! as on strings, and the results are mapped back to ids at the end.
//!
//! This module owns the coded copy of the interactions (32 bytes a row) the local engine works on. It must not
//! be used when a feature query is replaced from the config (a replacement may read other columns
//! or apply string functions to the ids), nor on a Ballista cluster (executors read the Parquet
//! themselves).

use std::collections::HashMap;

use arrow::array::{Array, Float64Array, TimestampMillisecondArray};
use rayon::prelude::*;

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

    /// The code of `id`, a new one when it is new (no check).
    pub fn intern(&mut self, id: &str) -> u32 {
        self.code(id, || Ok::<(), std::convert::Infallible>(()))
            .unwrap_or_else(|never| match never {})
    }

    /// The ids in code order (first seen first).
    pub fn into_ids(self) -> Vec<String> {
        let mut ids = vec![String::new(); self.codes.len()];
        for (id, code) in self.codes {
            ids[code as usize] = id.into();
        }
        ids
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The dictionary of the ids of every index in byte order and, for each index, the final
    /// code of each of its first-seen codes.
    fn finish_all(indices: Vec<IdIndex>) -> (IdDictionary, Vec<Vec<u32>>) {
        let mut renumber: Vec<Vec<u32>> = indices.iter().map(|i| vec![0u32; i.len()]).collect();
        let mut all: Vec<(Box<str>, usize, u32)> = indices
            .into_iter()
            .enumerate()
            .flat_map(|(part, index)| {
                index
                    .codes
                    .into_iter()
                    .map(move |(id, code)| (id, part, code))
            })
            .collect();
        all.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut ids: Vec<Box<str>> = Vec::new();
        for (id, part, code) in all {
            if ids.last() != Some(&id) {
                ids.push(id);
            }
            renumber[part][code as usize] = (ids.len() - 1) as u32;
        }
        (IdDictionary { ids }, renumber)
    }
}

/// One coded interaction: ids as codes, the event type as its position among the configured
/// types.
#[derive(Debug, Clone, Copy)]
pub struct CodedEvent {
    pub ts_ms: i64,
    /// `NaN` for a missing value (every value read is finite).
    pub value: f64,
    pub user: u32,
    pub item: u32,
    pub event: i32,
}

/// Rows are equal when every field is (two missing values are equal).
impl PartialEq for CodedEvent {
    fn eq(&self, other: &Self) -> bool {
        (
            self.ts_ms,
            self.value.to_bits(),
            self.user,
            self.item,
            self.event,
        ) == (
            other.ts_ms,
            other.value.to_bits(),
            other.user,
            other.item,
            other.event,
        )
    }
}

impl CodedEvent {
    /// The value, `None` when the row had none.
    pub fn value(&self) -> Option<f64> {
        (!self.value.is_nan()).then_some(self.value)
    }
}

/// The interactions as codes, up to `--as-of`, in input order.
#[derive(Debug, Clone)]
pub struct CodedInteractions {
    pub users: IdDictionary,
    pub items: IdDictionary,
    /// The configured event types; an event's code is its position.
    pub events: Vec<String>,
    pub rows: Vec<CodedEvent>,
}

impl CodedInteractions {
    /// The code of an event type, or -1 for one that is not configured (it matches no row).
    pub fn event_code(&self, event_type: &str) -> i32 {
        event_position(&self.events, event_type).unwrap_or(-1)
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
    rows: Vec<CodedEvent>,
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
            rows: Vec::new(),
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

    /// The configured event types, in code order.
    pub fn event_types(&self) -> &[String] {
        &self.events
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
        let as_of = self.as_of_ms.unwrap_or(i64::MAX);
        self.rows.reserve(users.len());
        for (r, ((user, item), event)) in users.into_iter().zip(items).zip(events).enumerate() {
            let ts_ms = ts.value(r);
            if ts_ms > as_of {
                continue;
            }
            self.rows.push(CodedEvent {
                ts_ms,
                value: if values.is_valid(r) {
                    values.value(r)
                } else {
                    f64::NAN
                },
                user,
                item,
                event,
            });
        }
    }

    /// A coder with the same event types, row keeping and `--as-of`, and nothing coded yet.
    pub fn empty_like(&self) -> Self {
        let index = || IdIndex {
            check_only: self.users.check_only,
            ..IdIndex::default()
        };
        InteractionCoder {
            users: index(),
            items: index(),
            events: self.events.clone(),
            keep_rows: self.keep_rows,
            as_of_ms: self.as_of_ms,
            rows: Vec::new(),
        }
    }

    /// Makes room for `rows` more rows (when rows are kept), so the rows are not reallocated
    /// while they grow.
    pub fn reserve(&mut self, rows: u64) {
        if self.keep_rows {
            self.rows.reserve_exact(rows as usize);
        }
    }

    /// Renumbers the codes into byte order and returns the coded table.
    pub fn finish(self) -> CodedInteractions {
        Self::finish_all(vec![self])
    }

    /// Joins coders that each coded a part of the input (in input order) into one table: one
    /// dictionary per id kind in byte order, every part's codes renumbered into it.
    pub fn finish_all(parts: Vec<InteractionCoder>) -> CodedInteractions {
        let events = parts.first().map(|p| p.events.clone()).unwrap_or_default();
        let mut user_indices = Vec::with_capacity(parts.len());
        let mut item_indices = Vec::with_capacity(parts.len());
        let mut part_rows = Vec::with_capacity(parts.len());
        for part in parts {
            user_indices.push(part.users);
            item_indices.push(part.items);
            part_rows.push(part.rows);
        }
        let (users, user_renumber) = IdIndex::finish_all(user_indices);
        let (items, item_renumber) = IdIndex::finish_all(item_indices);
        part_rows
            .par_iter_mut()
            .enumerate()
            .for_each(|(part, rows)| {
                let (to_user, to_item) = (&user_renumber[part], &item_renumber[part]);
                for row in rows.iter_mut() {
                    row.user = to_user[row.user as usize];
                    row.item = to_item[row.item as usize];
                }
            });
        // The first part grows into the whole (a large block grows in place where the allocator
        // can), and each other part is freed once appended.
        let total = part_rows.iter().map(Vec::len).sum::<usize>();
        let mut parts = part_rows.into_iter();
        let mut rows = parts.next().unwrap_or_default();
        rows.reserve_exact(total - rows.len());
        for part in parts {
            rows.extend(part);
        }
        CodedInteractions {
            users,
            items,
            events,
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_ids_come_back_in_first_seen_order() {
        let mut index = IdIndex::default();
        let codes: Vec<u32> = ["b", "a", "b", "c", "a"]
            .into_iter()
            .map(|id| index.intern(id))
            .collect();
        assert_eq!(codes, vec![0, 1, 0, 2, 1]);
        assert_eq!(index.into_ids(), vec!["b", "a", "c"]);
    }

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
        assert_eq!(coded.rows.len(), 3, "the row after as-of is left out");
        let decode = |dict: &IdDictionary, code: fn(&CodedEvent) -> u32| -> Vec<String> {
            coded
                .rows
                .iter()
                .map(|r| dict.id(code(r)).to_string())
                .collect()
        };
        assert_eq!(
            coded.rows.iter().map(CodedEvent::value).collect::<Vec<_>>(),
            [Some(1.0), None, Some(4.0)]
        );
        assert_eq!(decode(&coded.users, |r| r.user), ["u9", "u10", "u2"]);
        assert_eq!(decode(&coded.items, |r| r.item), ["b", "a", "c"]);
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
