//! EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the item ×
//! item weights `B = I − P·diag(1/diag P)` with `P = (XᵀX + λI)⁻¹`, `X` the binary member × item
//! matrix. A member's scores are their history's rows of `B` summed ([`ItemWeights`]); the
//! history is the member's state, so a new event needs no fold-in.
//!
//! `B` is dense `n × n` while it is trained (the inverse is taken in place, [`dense`]: `n²`
//! floats, no second copy); what a version keeps is the `top_n` largest weights of each row, so
//! serving costs `n · top_n` entries instead of `n²` — quality is measured at that pruning.

pub mod dense;

use rayon::prelude::*;

use crate::model::item_weights::{largest_of_row, ItemWeights};
use crate::model::matrix::SparseMatrix;
use crate::{Result, SharedError};

/// EASE's parameters: the config section itself (`[offline.ease]`).
pub use crate::config::EaseConfig as EaseParams;

/// What the trainer is doing, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Counting co-occurrences into the dense `XᵀX`.
    Gram,
    /// Inverting `XᵀX + λI`; the share done.
    Invert(f64),
    /// Keeping the largest weights of each row.
    Prune,
}

/// Trains EASE on `matrix` (members × items; any non-zero entry counts as 1) on the caller's
/// rayon pool. `on_phase` is called from the pool's threads.
pub fn train(
    matrix: &SparseMatrix,
    params: &EaseParams,
    on_phase: &(dyn Fn(Phase) + Sync),
) -> Result<ItemWeights> {
    if !(params.lambda > 0.0 && params.lambda.is_finite()) {
        return Err(SharedError::Training(format!(
            "EASE's lambda must be positive and finite, got {}",
            params.lambda
        )));
    }
    if params.top_n == 0 {
        return Err(SharedError::Training(
            "EASE's top_n must be at least 1".into(),
        ));
    }
    let n = matrix.cols;
    check_memory(n, available_memory())?;
    on_phase(Phase::Gram);
    let mut a = gram(matrix)?;
    for i in 0..n {
        a[i * n + i] += params.lambda;
    }
    dense::invert_spd(&mut a, n, &|share| on_phase(Phase::Invert(share))).map_err(|e| {
        SharedError::Training(format!(
            "XᵀX + λI is not positive definite at item row {} (λ = {}): raise lambda",
            e.row, params.lambda
        ))
    })?;
    on_phase(Phase::Prune);
    let diagonal: Vec<f32> = (0..n).map(|j| a[j * n + j]).collect();
    let rows: Vec<Vec<(u32, f32)>> = a
        .par_chunks(n.max(1))
        .enumerate()
        .map_init(
            || vec![0.0f32; n],
            |row, (i, p)| {
                // B[i, j] = −P[i, j] / P[j, j], B[i, i] = 0.
                for ((b, &pij), &pjj) in row.iter_mut().zip(p).zip(&diagonal) {
                    *b = -pij / pjj;
                }
                largest_of_row(row, i, params.top_n)
            },
        )
        .collect();
    drop(a);
    Ok(ItemWeights::from_rows(rows))
}

/// The dense `XᵀX` of the binarised `matrix`, row-major: row `i` counts, for every item `j`, the
/// members who have both.
pub fn gram(matrix: &SparseMatrix) -> Result<Vec<f32>> {
    let n = matrix.cols;
    let by_item = matrix.transpose();
    let mut a: Vec<f32> = Vec::new();
    a.try_reserve_exact(n * n).map_err(|_| {
        SharedError::Training(format!(
            "EASE cannot allocate its dense {n} × {n} matrix ({:.1} GiB): train item_knn or ials",
            dense_bytes(n) as f64 / GIB
        ))
    })?;
    a.resize(n * n, 0.0);
    a.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        let (members, _) = by_item.row(i);
        for &u in members {
            let (items, _) = matrix.row(u as usize);
            for &j in items {
                row[j as usize] += 1.0;
            }
        }
    });
    Ok(a)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of EASE's dense `n × n` matrix.
pub fn dense_bytes(n: usize) -> u64 {
    (n as u64) * (n as u64) * 4
}

/// The memory the kernel says can be allocated without swapping (`MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether EASE's dense training on `n` items fits in the memory available now (what the fit
/// itself checks before allocating).
pub fn fits_in_memory(n: usize) -> bool {
    check_memory(n, available_memory()).is_ok()
}

/// Refuses a catalog whose dense matrix (plus a tenth for the pruned rows and the rest) does not
/// fit in `available` bytes, before anything is allocated, naming both sizes.
fn check_memory(n: usize, available: Option<u64>) -> Result<()> {
    let needed = dense_bytes(n) + dense_bytes(n) / 10;
    match available {
        Some(available) if needed > available => Err(SharedError::Training(format!(
            "EASE on {n} items needs about {:.1} GiB (the dense {n} × {n} matrix), and {:.1} GiB \
             is available: train item_knn or ials for a catalog this size",
            needed as f64 / GIB,
            available as f64 / GIB
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[u32]], items: usize) -> SparseMatrix {
        SparseMatrix::binary(rows, items)
    }

    #[test]
    fn a_catalog_too_large_for_memory_is_refused_by_size_before_allocating() {
        // 100k items: 37.3 GiB dense; 24 GiB available.
        let error = check_memory(100_000, Some(24 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("100000 items")
                && error.contains("41.0 GiB")
                && error.contains("24.0 GiB"),
            "{error}"
        );
        assert!(error.contains("item_knn"), "{error}");
        check_memory(40_981, Some(24 << 30)).unwrap();
        check_memory(1_000_000, None).unwrap();
    }

    #[test]
    fn the_weights_equal_the_closed_form_computed_in_f64() {
        let x = matrix(
            &[&[0, 1, 2], &[1, 2], &[0, 3], &[2, 3, 4], &[0, 1, 4], &[1]],
            5,
        );
        let lambda = 0.7f32;
        let weights = train(&x, &EaseParams { lambda, top_n: 5 }, &|_| {}).unwrap();
        // Reference: Gauss–Jordan inverse of XᵀX + λI in f64.
        let n = 5;
        let g = gram(&x).unwrap();
        let mut m: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut row: Vec<f64> = (0..n).map(|j| f64::from(g[i * n + j])).collect();
                row[i] += f64::from(lambda);
                row.extend((0..n).map(|j| f64::from(u8::from(i == j))));
                row
            })
            .collect();
        for c in 0..n {
            let pivot = m[c][c];
            m[c].iter_mut().for_each(|v| *v /= pivot);
            for r in 0..n {
                if r != c {
                    let f = m[r][c];
                    let pivot_row = m[c].clone();
                    m[r].iter_mut()
                        .zip(&pivot_row)
                        .for_each(|(v, p)| *v -= f * p);
                }
            }
        }
        let p = |i: usize, j: usize| m[i][n + j];
        for i in 0..n {
            let (cols, values) = weights.row(i);
            for j in 0..n {
                let expected = if i == j { 0.0 } else { -p(i, j) / p(j, j) };
                match cols.binary_search(&(j as u32)) {
                    Ok(pos) => assert!(
                        (f64::from(values[pos]) - expected).abs() < 1e-4,
                        "B[{i},{j}] = {} vs {expected}",
                        values[pos]
                    ),
                    // Only positive off-diagonal weights are kept.
                    Err(_) => assert!(expected <= 1e-6, "B[{i},{j}] = {expected} was dropped"),
                }
            }
        }
        assert!(weights.nnz() > 0);
    }

    #[test]
    fn serving_keeps_the_top_n_weights_of_each_row() {
        let x = matrix(&[&[0, 1, 2, 3], &[0, 1, 2], &[0, 1], &[2, 3], &[1, 3]], 4);
        let weights = train(
            &x,
            &EaseParams {
                lambda: 0.5,
                top_n: 1,
            },
            &|_| {},
        )
        .unwrap();
        for i in 0..4 {
            assert!(weights.row(i).0.len() <= 1);
        }
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        let x = matrix(&[&[0, 1]], 2);
        let e = train(
            &x,
            &EaseParams {
                lambda: 0.0,
                top_n: 5,
            },
            &|_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("lambda"), "{e}");
        let e = train(
            &x,
            &EaseParams {
                lambda: 1.0,
                top_n: 0,
            },
            &|_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("top_n"), "{e}");
    }
}
