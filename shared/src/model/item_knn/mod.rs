//! Item-kNN (Sarwar et al. 2001; Deshpande & Karypis 2004): each item's `neighbours` most
//! similar items by cosine of their member columns, with shrinkage (Koren 2008) and the
//! asymmetric-cosine exponent α (Aiolli 2013):
//!
//! `sim(i, j) = |U_i ∩ U_j| / (|U_i|^α · |U_j|^(1−α) + shrink)`
//!
//! (α = 0.5 is the cosine). A member's scores are their history's rows summed
//! ([`ItemWeights`]), so the history is the member's state; the same rows answer
//! `SimilarItems` and name the history item behind each recommendation.

use rayon::prelude::*;

use crate::config::MemberWeighting;
use crate::model::item_weights::ItemWeights;
use crate::model::matrix::SparseMatrix;
use crate::model::top_k::{select_top, Scored};
use crate::{Result, SharedError};

/// Item-kNN's parameters: the config section itself (`[offline.item_knn]`).
pub use crate::config::ItemKnnConfig as KnnParams;

/// Trains item-kNN on `matrix` (members × items; any non-zero entry counts as 1) on the caller's
/// rayon pool.
pub fn train(matrix: &SparseMatrix, params: &KnnParams) -> Result<ItemWeights> {
    if params.neighbours == 0 {
        return Err(SharedError::Training(
            "item-kNN's neighbours must be at least 1".into(),
        ));
    }
    if !(params.shrink >= 0.0 && params.shrink.is_finite()) {
        return Err(SharedError::Training(format!(
            "item-kNN's shrink must be zero or more, got {}",
            params.shrink
        )));
    }
    if !(0.0..=1.0).contains(&params.alpha) {
        return Err(SharedError::Training(format!(
            "item-kNN's alpha must be within 0..=1, got {}",
            params.alpha
        )));
    }
    let n = matrix.cols;
    let by_item = matrix.transpose();
    // A member's weight enters both the pair's count and each item's (squared) norm.
    let member_weight: Vec<f32> = (0..matrix.rows)
        .map(|u| match params.member_weighting {
            MemberWeighting::None => 1.0,
            MemberWeighting::Idf => {
                let have = matrix.row(u).0.len().max(1) as f32;
                (n as f32 / have).ln().max(0.0)
            }
        })
        .collect();
    let counts: Vec<f32> = (0..n)
        .map(|i| {
            by_item
                .row(i)
                .0
                .iter()
                .map(|&u| member_weight[u as usize])
                .sum()
        })
        .collect();
    let rows: Vec<Vec<(u32, f32)>> = (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0.0f32; n], Vec::new()),
            |(together, touched), i| {
                let (members, _) = by_item.row(i);
                for &u in members {
                    let w = member_weight[u as usize];
                    if w == 0.0 {
                        continue;
                    }
                    for &j in matrix.row(u as usize).0 {
                        if together[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        together[j as usize] += w;
                    }
                }
                if counts[i] == 0.0 {
                    touched.iter().for_each(|&j| together[j as usize] = 0.0);
                    touched.clear();
                    return Vec::new();
                }
                let left = counts[i].powf(params.alpha);
                let mut candidates: Vec<Scored> = touched
                    .iter()
                    .filter(|&&j| j as usize != i)
                    .map(|&j| Scored {
                        index: j,
                        score: together[j as usize]
                            / (left * counts[j as usize].powf(1.0 - params.alpha) + params.shrink),
                    })
                    .collect();
                for &j in touched.iter() {
                    together[j as usize] = 0.0;
                }
                touched.clear();
                let mut row = best_neighbours(&mut candidates, params.neighbours);
                row.sort_unstable_by_key(|&(j, _)| j);
                row
            },
        )
        .collect();
    Ok(ItemWeights::from_rows(rows))
}

/// The `k` highest-scored candidates as `(item, similarity)`.
fn best_neighbours(candidates: &mut [Scored], k: usize) -> Vec<(u32, f32)> {
    let scores: Vec<f32> = candidates.iter().map(|s| s.score).collect();
    select_top(&scores, k, &|_| true)
        .into_iter()
        .map(|s| {
            let c = candidates[s.index as usize];
            (c.index, c.score)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[u32]], items: usize) -> SparseMatrix {
        SparseMatrix::binary(rows, items)
    }

    #[test]
    fn similarity_is_the_shrunk_cosine_and_rows_keep_the_nearest() {
        // Item 0: members {0,1,2}; item 1: {0,1}; item 2: {2,3}; item 3: {3}.
        let x = matrix(&[&[0, 1], &[0, 1], &[0, 2], &[2, 3]], 4);
        let params = KnnParams {
            neighbours: 2,
            shrink: 1.0,
            alpha: 0.5,
            member_weighting: MemberWeighting::None,
        };
        let weights = train(&x, &params).unwrap();
        let cosine = |both: f32, a: f32, b: f32| both / (a.sqrt() * b.sqrt() + 1.0);
        let (cols, values) = weights.row(0);
        assert_eq!(cols, &[1, 2]);
        assert!((values[0] - cosine(2.0, 3.0, 2.0)).abs() < 1e-6);
        assert!((values[1] - cosine(1.0, 3.0, 2.0)).abs() < 1e-6);
        // Item 3 shares a member only with item 2.
        let (cols, values) = weights.row(3);
        assert_eq!(cols, &[2]);
        assert!((values[0] - cosine(1.0, 1.0, 2.0)).abs() < 1e-6);
        // One neighbour: only the nearest stays.
        let one = train(
            &x,
            &KnnParams {
                neighbours: 1,
                ..params
            },
        )
        .unwrap();
        assert_eq!(one.row(0).0, &[1]);
        // Asymmetric: α = 1 divides by the row item's count only.
        let asymmetric = train(
            &x,
            &KnnParams {
                alpha: 1.0,
                shrink: 0.0,
                ..params
            },
        )
        .unwrap();
        assert!(
            (asymmetric.row(1).1[0] - 2.0 / 2.0).abs() < 1e-6,
            "|U1∩U0|/|U1|"
        );
    }

    #[test]
    fn idf_weighting_counts_a_long_history_less() {
        // Items 0 and 1 are shared by a member with 2 items (weight ln(4/2)) and items 2 and 3
        // by a member with all 4 (weight ln(4/4) = 0: says nothing).
        let x = matrix(&[&[0, 1], &[0, 1, 2, 3], &[2], &[3]], 4);
        let params = KnnParams {
            neighbours: 3,
            shrink: 0.0,
            alpha: 0.5,
            member_weighting: MemberWeighting::Idf,
        };
        let weights = train(&x, &params).unwrap();
        assert_eq!(weights.row(0).0, &[1]);
        assert!(
            (weights.row(0).1[0] - 1.0).abs() < 1e-6,
            "cosine of equal weighted columns"
        );
        assert!(
            weights.row(2).0.is_empty(),
            "item 2 shares only a weightless member"
        );
        let plain = train(
            &x,
            &KnnParams {
                member_weighting: MemberWeighting::None,
                ..params
            },
        )
        .unwrap();
        assert_eq!(plain.row(2).0, &[0, 1, 3]);
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        let x = matrix(&[&[0, 1]], 2);
        let base = KnnParams {
            neighbours: 5,
            shrink: 0.0,
            alpha: 0.5,
            member_weighting: MemberWeighting::None,
        };
        for (params, field) in [
            (
                KnnParams {
                    neighbours: 0,
                    ..base
                },
                "neighbours",
            ),
            (
                KnnParams {
                    shrink: -1.0,
                    ..base
                },
                "shrink",
            ),
            (KnnParams { alpha: 1.5, ..base }, "alpha"),
        ] {
            let e = train(&x, &params).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
