//! The tables the feature jobs produce — the training table and the members' histories, ids held
//! once and rows as indices — whichever way the jobs ran (the SQL, or [`crate::coded_jobs`]).
//!
//! It owns the tables' shapes and their construction from rows or codes; it runs no job.

use std::collections::HashMap;

use crate::id_codes::IdDictionary;
use recsys_shared::model::matrix::SparseMatrix;

/// One output row of the training or history job: ids as the query returned them.
pub type PairRow<'a> = (&'a str, &'a str, f32, i64);

/// One (member, item) pair of the training table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub user: u32,
    pub item: u32,
    /// Interaction strength `r` (confidence `1 + α r`).
    pub strength: f32,
    pub last_ts_ms: i64,
}

/// The training table with ids mapped to dense indices (both id lists sorted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingTable {
    pub user_ids: Vec<String>,
    pub item_ids: Vec<String>,
    /// Sorted by (user, item).
    pub pairs: Vec<Pair>,
}

impl TrainingTable {
    /// Builds the table from `(user_id, item_id, strength, last_ts_ms)` rows.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str, f32, i64)>) -> Self {
        let rows: Vec<_> = rows.into_iter().collect();
        let mut user_ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        let mut item_ids: Vec<String> = rows.iter().map(|r| r.1.to_string()).collect();
        for ids in [&mut user_ids, &mut item_ids] {
            ids.sort_unstable();
            ids.dedup();
        }
        let user_index: HashMap<&str, u32> = user_ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let item_index: HashMap<&str, u32> = item_ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let pairs = rows.iter().map(|(u, i, strength, ts)| Pair {
            user: user_index[u],
            item: item_index[i],
            strength: *strength,
            last_ts_ms: *ts,
        });
        let pairs = pairs.collect();
        Self::sorted(user_ids, item_ids, pairs)
    }

    /// The table of `pairs` (indices into the id lists), sorted by (user, item).
    fn sorted(user_ids: Vec<String>, item_ids: Vec<String>, mut pairs: Vec<Pair>) -> Self {
        pairs.sort_unstable_by_key(|p| (p.user, p.item));
        TrainingTable {
            user_ids,
            item_ids,
            pairs,
        }
    }

    /// Builds the table from coded `(user, item, strength, last_ts_ms)` rows; codes follow the
    /// ids' byte order, so the dense indices are the ranks of the codes present.
    pub fn from_codes(
        rows: Vec<(u32, u32, f32, i64)>,
        users: &IdDictionary,
        items: &IdDictionary,
    ) -> Self {
        let (user_index, user_ids) = dense_ids(rows.iter().map(|r| r.0), users);
        let (item_index, item_ids) = dense_ids(rows.iter().map(|r| r.1), items);
        let pairs = rows
            .into_iter()
            .map(|(u, i, strength, last_ts_ms)| Pair {
                user: user_index[u as usize],
                item: item_index[i as usize],
                strength,
                last_ts_ms,
            })
            .collect();
        Self::sorted(user_ids, item_ids, pairs)
    }

    /// The members × items strength matrix of the pairs `keep` accepts.
    pub fn matrix(&self, keep: impl Fn(&Pair) -> bool) -> SparseMatrix {
        let triplets = self
            .pairs
            .iter()
            .filter(|p| keep(p))
            .map(|p| (p.user, p.item, p.strength))
            .collect();
        SparseMatrix::from_triplets(self.user_ids.len(), self.item_ids.len(), triplets)
    }

    /// Pairs of each member: `ranges[u]` indexes `pairs`.
    pub fn member_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut ranges = vec![0..0; self.user_ids.len()];
        let mut start = 0;
        while start < self.pairs.len() {
            let user = self.pairs[start].user;
            let mut end = start;
            while end < self.pairs.len() && self.pairs[end].user == user {
                end += 1;
            }
            ranges[user as usize] = start..end;
            start = end;
        }
        ranges
    }
}

/// The ids of `dictionary` that `codes` use, in byte order, and for each code its index among
/// them (`u32::MAX` for a code not used).
pub(crate) fn dense_ids(
    codes: impl Iterator<Item = u32>,
    dictionary: &IdDictionary,
) -> (Vec<u32>, Vec<String>) {
    let mut index = vec![u32::MAX; dictionary.len()];
    for code in codes {
        index[code as usize] = 0;
    }
    let mut ids = Vec::new();
    for (code, slot) in index.iter_mut().enumerate() {
        if *slot == 0 {
            *slot = ids.len() as u32;
            ids.push(dictionary.id(code as u32).to_string());
        }
    }
    (index, ids)
}

/// The members' histories (`user_history.parquet`) as the history job orders them: by member,
/// newest first. Each id is held once (the rows index the id lists), so millions of rows cost
/// 24 bytes each instead of two strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histories {
    pub user_ids: Vec<String>,
    pub item_ids: Vec<String>,
    /// Training pairs, indices into these id lists.
    pub rows: Vec<Pair>,
}

impl Histories {
    /// The rows as `(user_id, item_id, strength, ts_ms)`.
    pub fn iter(&self) -> impl Iterator<Item = PairRow<'_>> {
        self.rows.iter().map(|r| {
            (
                self.user_ids[r.user as usize].as_str(),
                self.item_ids[r.item as usize].as_str(),
                r.strength,
                r.last_ts_ms,
            )
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}
