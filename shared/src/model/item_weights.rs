//! Item-to-item weights, what the history families (EASE, item-kNN) serve: row `i` holds the
//! items a member's having `i` pushes up, with their weights, kept sparse (the `top_n` largest
//! per row). A member's score for item `j` is the sum of `W[i, j]` over the items `i` in their
//! history; there is no member vector and no fold-in — the history is the member's state.

use crate::model::matrix::SparseMatrix;
use crate::model::top_k::{best_of, select_top, Scored};

/// Sparse item × item weights (`rows == cols == items`), each row sorted by column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemWeights {
    matrix: SparseMatrix,
}

/// A recommended item and the history item that contributed most to it (the reason shown as
/// "because you watched …").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Explained {
    pub scored: Scored,
    /// The history item with the largest weight towards `scored.index`.
    pub because: u32,
}

impl ItemWeights {
    /// The weights of `rows[i]` = item `i`'s `(item, weight)` pairs, sorted by item.
    pub fn from_rows(rows: Vec<Vec<(u32, f32)>>) -> Self {
        let items = rows.len();
        let mut indptr = Vec::with_capacity(items + 1);
        indptr.push(0);
        let mut indices = Vec::with_capacity(rows.iter().map(Vec::len).sum());
        let mut values = Vec::with_capacity(indices.capacity());
        for row in rows {
            debug_assert!(
                row.windows(2).all(|w| w[0].0 < w[1].0),
                "a row sorted by item"
            );
            indices.extend(row.iter().map(|&(j, _)| j));
            values.extend(row.iter().map(|&(_, w)| w));
            indptr.push(indices.len());
        }
        ItemWeights {
            matrix: SparseMatrix {
                rows: items,
                cols: items,
                indptr,
                indices,
                values,
            },
        }
    }

    /// Wraps a square matrix.
    ///
    /// # Panics
    /// If the matrix is not square.
    pub fn from_matrix(matrix: SparseMatrix) -> Self {
        assert_eq!(matrix.rows, matrix.cols, "item weights are square");
        ItemWeights { matrix }
    }

    /// Items in the catalog.
    pub fn items(&self) -> usize {
        self.matrix.rows
    }

    /// Stored weights.
    pub fn nnz(&self) -> usize {
        self.matrix.nnz()
    }

    /// The underlying matrix (rows = the history item).
    pub fn matrix(&self) -> &SparseMatrix {
        &self.matrix
    }

    /// Row `i`: the items `i` pushes up and by how much.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        self.matrix.row(i)
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.matrix.indptr.len() * std::mem::size_of::<usize>()
            + self.matrix.indices.len() * 4
            + self.matrix.values.len() * 4
    }

    /// Adds every history item's row into `out` (`items` long, zeroed by the caller).
    pub fn score_history(&self, history: &[u32], out: &mut [f32]) {
        for &i in history {
            if (i as usize) < self.matrix.rows {
                let (cols, weights) = self.matrix.row(i as usize);
                for (&j, &w) in cols.iter().zip(weights) {
                    out[j as usize] += w;
                }
            }
        }
    }

    /// The score of `item` for a member with `history`: the sum of its weights in their rows.
    pub fn score_item(&self, history: &[u32], item: u32) -> f32 {
        history
            .iter()
            .filter(|&&i| (i as usize) < self.matrix.rows)
            .map(|&i| {
                let (cols, weights) = self.matrix.row(i as usize);
                cols.binary_search(&item).map_or(0.0, |pos| weights[pos])
            })
            .sum()
    }

    /// The `k` best items for a member with `history` among `allowed`, best first.
    pub fn top_k(&self, history: &[u32], k: usize, allowed: impl Fn(u32) -> bool) -> Vec<Scored> {
        let mut scores = vec![0.0f32; self.items()];
        self.score_history(history, &mut scores);
        // An item no history item reaches scores exactly 0 and is never worth a slot over one
        // that does; ties at 0 fill only when fewer than k are reached.
        select_top(&scores, k, &allowed)
    }

    /// [`Self::top_k`] with each item's reason: the history item with the largest weight on it.
    pub fn top_k_explained(
        &self,
        history: &[u32],
        k: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Vec<Explained> {
        self.top_k(history, k, allowed)
            .into_iter()
            .map(|scored| Explained {
                scored,
                because: self.strongest_reason(history, scored.index),
            })
            .collect()
    }

    /// The history item whose row gives `item` the largest weight (the first history item when
    /// none reaches it).
    pub fn strongest_reason(&self, history: &[u32], item: u32) -> u32 {
        let mut best = (f32::NEG_INFINITY, history.first().copied().unwrap_or(item));
        for &i in history {
            if (i as usize) >= self.matrix.rows {
                continue;
            }
            let (cols, weights) = self.matrix.row(i as usize);
            if let Ok(pos) = cols.binary_search(&item) {
                if weights[pos] > best.0 {
                    best = (weights[pos], i);
                }
            }
        }
        best.1
    }

    /// The `k` items most similar to `item` (its row's largest weights) among `allowed`.
    pub fn similar(&self, item: usize, k: usize, allowed: impl Fn(u32) -> bool) -> Vec<Scored> {
        if item >= self.matrix.rows {
            return Vec::new();
        }
        let (cols, weights) = self.matrix.row(item);
        let scored: Vec<Scored> = cols
            .iter()
            .zip(weights)
            .filter(|(&j, _)| j as usize != item && allowed(j))
            .map(|(&index, &score)| Scored { index, score })
            .collect();
        best_of(scored, k)
    }
}

/// The `top_n` largest positive entries of a dense row, skipping `diagonal`, sorted by column.
pub fn largest_of_row(row: &[f32], diagonal: usize, top_n: usize) -> Vec<(u32, f32)> {
    let allowed = |j: u32| j as usize != diagonal;
    let mut kept: Vec<(u32, f32)> = select_top(row, top_n, &allowed)
        .into_iter()
        .filter(|s| s.score > 0.0)
        .map(|s| (s.index, s.score))
        .collect();
    kept.sort_unstable_by_key(|&(j, _)| j);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights() -> ItemWeights {
        // 0 → 1 (0.5), 2 (0.25); 1 → 2 (1.0); 2 → 0 (0.75), 3 (0.1)
        ItemWeights::from_matrix(SparseMatrix::from_triplets(
            4,
            4,
            vec![
                (0, 1, 0.5),
                (0, 2, 0.25),
                (1, 2, 1.0),
                (2, 0, 0.75),
                (2, 3, 0.1),
            ],
        ))
    }

    #[test]
    fn scores_sum_the_history_rows_and_name_the_strongest_reason() {
        let w = weights();
        let mut out = vec![0.0; 4];
        w.score_history(&[0, 1], &mut out);
        assert_eq!(out, vec![0.0, 0.5, 1.25, 0.0]);
        for (j, &expected) in out.iter().enumerate() {
            assert_eq!(w.score_item(&[0, 1], j as u32), expected, "item {j}");
        }
        let top = w.top_k_explained(&[0, 1], 2, |j| j != 0 && j != 1);
        assert_eq!(top[0].scored.index, 2);
        assert_eq!(
            top[0].because, 1,
            "row 1 gives item 2 weight 1.0 > row 0's 0.25"
        );
        assert_eq!(top[1].scored.index, 3);
        // Out-of-range history items are ignored, not a panic.
        let mut out = vec![0.0; 4];
        w.score_history(&[9], &mut out);
        assert_eq!(out, vec![0.0; 4]);
    }

    #[test]
    fn similar_items_are_the_row_by_weight() {
        let w = weights();
        let similar: Vec<u32> = w.similar(2, 5, |_| true).iter().map(|s| s.index).collect();
        assert_eq!(similar, vec![0, 3]);
        assert!(w.similar(2, 5, |j| j != 0).iter().all(|s| s.index != 0));
        assert!(w.similar(7, 5, |_| true).is_empty());
    }

    #[test]
    fn a_row_keeps_its_largest_positive_entries_without_the_diagonal() {
        let row = [0.9, -1.0, 0.3, 5.0, 0.0, 0.4];
        assert_eq!(largest_of_row(&row, 3, 2), vec![(0, 0.9), (5, 0.4)]);
        assert_eq!(
            largest_of_row(&row, 0, 10),
            vec![(2, 0.3), (3, 5.0), (5, 0.4)]
        );
    }
}
