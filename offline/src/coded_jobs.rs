//! The built-in feature jobs — `offline/sql/training_table.sql`, `item_popularity.sql` and
//! `user_history.sql` — computed directly over the coded interactions ([`crate::id_codes`]) on
//! the local engine, with the queries' exact semantics:
//!
//! 1. the rows are sorted by (member, item, time, event type, value) on every core, so exact
//!    duplicates sit together and count once (`SELECT DISTINCT`);
//! 2. one pass over each (member, item) group: rows of items outside the catalog are left out;
//!    with forgetting negatives, the group's rows up to its newest negative are left out; every
//!    other row is weighted (`event_weights`; a rating below the threshold weighs 0), decayed by
//!    age and kept when positive; the group is a pair when one row is kept (strength = their
//!    sum, `last_ts_ms` = their newest time);
//! 3. members and items with fewer pairs than the minimums are dropped (both counted before
//!    either filter);
//! 4. popularity counts each item's members; each member's newest `history_cap` pairs (ties by
//!    item id) are the history, ordered as the SQL orders it.
//!
//! `offline/tests/feature_jobs.rs` runs the SQL over the same input and compares every table.
//! Memory: the coded rows (sorted in place) and the pairs (24 bytes each) — no copy of the ids.
//!
//! This module must not run a replaced query (the SQL runs those) and owns no I/O.

use rayon::prelude::*;
use recsys_shared::artifact::PopularityRow;

use crate::feature_tables::{dense_ids, Histories, Pair, TrainingTable};
use crate::id_codes::{CodedEvent, CodedInteractions};

/// The built-in queries' parameters, as codes.
#[derive(Debug, Clone)]
pub struct BuiltinQueries {
    /// Weight of each event code; `None` for a type without one (explicit negatives).
    pub weights: Vec<Option<f64>>,
    /// Event codes whose newest occurrence forgets the member's earlier rows on the item.
    pub forgetting: Vec<bool>,
    /// The rating event's code and the threshold below which a rating weighs 0.
    pub rating: Option<(i32, f64)>,
    /// Decay: an event `age` ms before `reference_ms` weighs `0.5^(age / half_life_ms)`; 0 = none.
    pub reference_ms: i64,
    pub half_life_ms: f64,
    pub min_user_interactions: u64,
    pub min_item_interactions: u64,
    pub history_cap: usize,
}

/// What the three jobs produce.
pub struct CodedFeatures {
    pub training: TrainingTable,
    pub popularity: Vec<PopularityRow>,
    pub history: Histories,
    /// Rows whose item is not in the catalog (left out).
    pub outside_catalog: u64,
}

/// One (member, item) pair before the minimum-interaction filters.
#[derive(Debug, Clone, Copy)]
struct RawPair {
    user: u32,
    item: u32,
    strength: f64,
    last_ts_ms: i64,
}

impl BuiltinQueries {
    /// The three jobs over `codes` (consumed: its rows are sorted in place); `in_catalog[item]`
    /// says whether an item code is in the catalog (`None`: every item is).
    pub fn run(&self, mut codes: CodedInteractions, in_catalog: Option<&[bool]>) -> CodedFeatures {
        let rows = &mut codes.rows;
        let outside_catalog = match in_catalog {
            Some(known) => {
                let before = rows.len();
                rows.retain(|r| known[r.item as usize]);
                (before - rows.len()) as u64
            }
            None => 0,
        };
        rows.par_sort_unstable_by(|a, b| {
            (a.user, a.item, a.ts_ms, a.event, a.value.to_bits()).cmp(&(
                b.user,
                b.item,
                b.ts_ms,
                b.event,
                b.value.to_bits(),
            ))
        });
        let pairs = self.pairs(rows);
        codes.rows = Vec::new();

        // Minimums, both counted over every pair.
        let mut per_user = vec![0u64; codes.users.len()];
        let mut per_item = vec![0u64; codes.items.len()];
        for p in &pairs {
            per_user[p.user as usize] += 1;
            per_item[p.item as usize] += 1;
        }
        let kept: Vec<RawPair> = pairs
            .into_iter()
            .filter(|p| {
                per_user[p.user as usize] >= self.min_user_interactions
                    && per_item[p.item as usize] >= self.min_item_interactions
            })
            .collect();

        let popularity = popularity(&kept, &codes);
        let history = self.history(&kept, &codes);
        let training = TrainingTable::from_codes(
            kept.iter()
                .map(|p| (p.user, p.item, p.strength as f32, p.last_ts_ms))
                .collect(),
            &codes.users,
            &codes.items,
        );
        CodedFeatures {
            training,
            popularity,
            history,
            outside_catalog,
        }
    }

    /// The pairs of the sorted rows, in (member, item) order.
    fn pairs(&self, rows: &[CodedEvent]) -> Vec<RawPair> {
        // Chunks cut at (member, item) boundaries, one task each.
        let chunks = rayon::current_num_threads().max(1) * 8;
        let mut bounds = vec![0];
        for c in 1..chunks {
            let mut at = rows.len() * c / chunks;
            while at > 0 && at < rows.len() && same_pair(&rows[at - 1], &rows[at]) {
                at += 1;
            }
            if at > *bounds.last().expect("starts with 0") && at < rows.len() {
                bounds.push(at);
            }
        }
        bounds.push(rows.len());
        let parts: Vec<Vec<RawPair>> = bounds
            .par_windows(2)
            .map(|w| {
                let rows = &rows[w[0]..w[1]];
                let mut out = Vec::new();
                let mut start = 0;
                while start < rows.len() {
                    let mut end = start + 1;
                    while end < rows.len() && same_pair(&rows[start], &rows[end]) {
                        end += 1;
                    }
                    if let Some(pair) = self.pair(&rows[start..end]) {
                        out.push(pair);
                    }
                    start = end;
                }
                out
            })
            .collect();
        let mut pairs = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            pairs.extend(part);
        }
        pairs
    }

    /// One (member, item) group's pair, if a row of it is a positive.
    fn pair(&self, group: &[CodedEvent]) -> Option<RawPair> {
        let forgotten_until = group
            .iter()
            .filter(|r| self.forgets(r.event))
            .map(|r| r.ts_ms)
            .max();
        let mut strength = 0.0;
        let mut last_ts_ms = None;
        for (i, row) in group.iter().enumerate() {
            if i > 0 && group[i - 1] == *row {
                continue; // an exact duplicate (`SELECT DISTINCT`: two missing values are equal)
            }
            if forgotten_until.is_some_and(|until| row.ts_ms <= until) {
                continue;
            }
            let s = self.strength(row);
            if s > 0.0 {
                strength += s;
                last_ts_ms = Some(last_ts_ms.map_or(row.ts_ms, |t: i64| t.max(row.ts_ms)));
            }
        }
        last_ts_ms.map(|last_ts_ms| RawPair {
            user: group[0].user,
            item: group[0].item,
            strength,
            last_ts_ms,
        })
    }

    fn forgets(&self, event: i32) -> bool {
        self.forgetting
            .get(event as usize)
            .copied()
            .unwrap_or(false)
    }

    /// A row's strength: its type's weight (a rating below the threshold, or without a value,
    /// weighs 0), decayed by age; 0 for a type without a weight.
    fn strength(&self, row: &CodedEvent) -> f64 {
        let Some(Some(weight)) = self.weights.get(row.event as usize) else {
            return 0.0;
        };
        let weight = match self.rating {
            Some((rating, threshold)) if rating == row.event => match row.value() {
                Some(v) if v >= threshold => *weight,
                _ => 0.0,
            },
            _ => *weight,
        };
        if self.half_life_ms > 0.0 {
            weight * 0.5f64.powf((self.reference_ms - row.ts_ms) as f64 / self.half_life_ms)
        } else {
            weight
        }
    }

    /// Each member's newest `history_cap` pairs, by member, newest first, ties by item.
    fn history(&self, pairs: &[RawPair], codes: &CodedInteractions) -> Histories {
        let mut rows: Vec<Pair> = Vec::new();
        let mut newest: Vec<&RawPair> = Vec::new();
        for member in pairs.chunk_by(|a, b| a.user == b.user) {
            newest.clear();
            newest.extend(member);
            newest
                .sort_unstable_by(|a, b| b.last_ts_ms.cmp(&a.last_ts_ms).then(a.item.cmp(&b.item)));
            rows.extend(newest.iter().take(self.history_cap).map(|p| Pair {
                user: p.user,
                item: p.item,
                strength: p.strength as f32,
                last_ts_ms: p.last_ts_ms,
            }));
        }
        // Codes to indices into the ids the rows use.
        let (user_index, user_ids) = dense_ids(rows.iter().map(|r| r.user), &codes.users);
        let (item_index, item_ids) = dense_ids(rows.iter().map(|r| r.item), &codes.items);
        for row in &mut rows {
            row.user = user_index[row.user as usize];
            row.item = item_index[row.item as usize];
        }
        Histories {
            user_ids,
            item_ids,
            rows,
        }
    }
}

/// Members per item, most popular first (ties by item id), scored by the most popular.
fn popularity(pairs: &[RawPair], codes: &CodedInteractions) -> Vec<PopularityRow> {
    let mut members = vec![0u64; codes.items.len()];
    for p in pairs {
        members[p.item as usize] += 1;
    }
    let max = members.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut rows: Vec<(u32, u64)> = members
        .iter()
        .enumerate()
        .filter(|(_, &m)| m > 0)
        .map(|(item, &m)| (item as u32, m))
        .collect();
    rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(item, m)| PopularityRow {
            item_id: codes.items.id(item).to_string(),
            members: m,
            score: (m as f64 / max) as f32,
        })
        .collect()
}

fn same_pair(a: &CodedEvent, b: &CodedEvent) -> bool {
    a.user == b.user && a.item == b.item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: u32, item: u32, event: i32, value: Option<f64>, ts_ms: i64) -> CodedEvent {
        CodedEvent {
            ts_ms,
            value: value.unwrap_or(f64::NAN),
            user,
            item,
            event,
        }
    }

    fn queries() -> BuiltinQueries {
        BuiltinQueries {
            // 0 play (1.0), 1 rating (2.0, threshold 4), 2 thumbs_down (forgets), 3 zero weight
            weights: vec![Some(1.0), Some(2.0), None, Some(0.0)],
            forgetting: vec![false, false, true, false],
            rating: Some((1, 4.0)),
            reference_ms: 1000,
            half_life_ms: 0.0,
            min_user_interactions: 1,
            min_item_interactions: 1,
            history_cap: 10,
        }
    }

    #[test]
    fn a_group_counts_duplicates_once_and_forgets_up_to_its_newest_negative() {
        let q = queries();
        let group = [
            row(0, 0, 0, None, 10),
            row(0, 0, 0, None, 10), // duplicate
            row(0, 0, 1, Some(5.0), 11),
            row(0, 0, 1, Some(3.0), 12), // below the threshold
            row(0, 0, 1, None, 13),      // a rating without a value
            row(0, 0, 3, None, 14),      // zero weight: not a positive, no last_ts
        ];
        let pair = q.pair(&group).unwrap();
        assert_eq!((pair.strength, pair.last_ts_ms), (3.0, 11));
        let forgotten = [
            row(0, 0, 0, None, 10),
            row(0, 0, 2, None, 20),
            row(0, 0, 0, None, 20), // at the negative's time: forgotten too
            row(0, 0, 0, None, 30),
        ];
        let pair = q.pair(&forgotten).unwrap();
        assert_eq!((pair.strength, pair.last_ts_ms), (1.0, 30));
        assert!(q.pair(&forgotten[..3]).is_none());
        let decayed = BuiltinQueries {
            half_life_ms: 100.0,
            ..queries()
        };
        let pair = decayed.pair(&[row(0, 0, 0, None, 800)]).unwrap();
        assert!((pair.strength - 0.25).abs() < 1e-12, "{}", pair.strength);
    }
}
