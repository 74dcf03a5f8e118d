//! The ideal low-pass filter's basis: an orthonormal `n × k` matrix `Q` whose columns span
//! (approximately) the top-`k` right singular subspace of the normalised matrix `R̃`, by subspace
//! iteration (Halko, Martinsson & Tropp 2011, algorithm 4.4): `Q ← orth(R̃ᵀ R̃ Q)` a few times
//! from a random start. The filter is the projection `Q·Qᵀ`, which does not depend on which
//! orthonormal basis of the subspace `Q` is, so no eigen-decomposition is needed.
//!
//! Orthonormalisation is Cholesky-QR done twice (`G = QᵀQ = L·Lᵀ`, `Q ← Q·L⁻ᵀ`): two products
//! on the `gemm` kernels and an `l × l` factorisation in `f64`, instead of a Householder QR of a
//! tall matrix. A rank-deficient `Q` (more columns asked for than the data has directions) is
//! handled by dropping the columns whose pivot vanishes.

use gemm::Parallelism;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::Normalised;
use crate::kernels::product;

/// An orthonormal basis of the top-`k` right singular subspace of `r`, `n × k'` row-major with
/// `k' ≤ min(k, members, items)` columns (fewer when the data has fewer directions), after
/// `iterations` power steps. `progress` is told the share done after each step.
pub fn low_pass_basis(
    r: &Normalised,
    k: usize,
    iterations: usize,
    seed: u64,
    progress: &(dyn Fn(f64) + Sync),
) -> (Vec<f32>, usize) {
    let n = r.items();
    let k = k.min(n).min(r.members());
    if k == 0 {
        return (Vec::new(), 0);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let start: Vec<f32> = (0..n * k)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let (mut q, mut width) = orthonormalise(start, n, k);
    for step in 0..iterations {
        let z = r.times_rows(&q, width);
        let back = r.transposed_times_rows(&z, width);
        (q, width) = orthonormalise(back, n, width);
        progress((step + 1) as f64 / iterations.max(1) as f64);
    }
    (q, width)
}

/// Cholesky-QR twice: an orthonormal basis of the columns of `a` (`rows × cols` row-major), with
/// the columns that are (numerically) combinations of earlier ones dropped.
fn orthonormalise(mut a: Vec<f32>, rows: usize, mut cols: usize) -> (Vec<f32>, usize) {
    for _ in 0..2 {
        let gram = gram(&a, cols);
        let (factor_inverse, kept) = inverse_cholesky(&gram, cols);
        // a ← a · L⁻ᵀ restricted to the kept columns: (rows × cols) · (cols × kept).
        let mut next = vec![0.0f32; rows * kept.len()];
        let w = kept.len();
        let mut rhs = vec![0.0f32; cols * w];
        for (c, &row) in kept.iter().enumerate() {
            for j in 0..cols {
                rhs[j * w + c] = factor_inverse[row * cols + j] as f32;
            }
        }
        // SAFETY: `a` is rows × cols and `rhs` cols × w, both row-major; `next` is fresh.
        unsafe {
            product(
                rows,
                w,
                cols,
                next.as_mut_ptr(),
                w,
                false,
                a.as_ptr(),
                cols,
                false,
                rhs.as_ptr(),
                w,
                false,
                1.0,
                Parallelism::Rayon(0),
            );
        }
        a = next;
        cols = w;
    }
    (a, cols)
}

/// `aᵀa` (`cols × cols`) of the row-major matrix `a` with `cols` columns, accumulated in `f64` per thread.
fn gram(a: &[f32], cols: usize) -> Vec<f64> {
    const CHUNK: usize = 4096;
    a.par_chunks(CHUNK * cols.max(1))
        .map(|chunk| {
            let part_rows = chunk.len() / cols.max(1);
            let mut part = vec![0.0f32; cols * cols];
            // SAFETY: `chunk` is `part_rows × cols` row-major, read transposed as the left
            // operand; `part` is fresh and `cols × cols`.
            unsafe {
                product(
                    cols,
                    cols,
                    part_rows,
                    part.as_mut_ptr(),
                    cols,
                    false,
                    chunk.as_ptr(),
                    cols,
                    true,
                    chunk.as_ptr(),
                    cols,
                    false,
                    1.0,
                    Parallelism::None,
                );
            }
            part.into_iter().map(f64::from).collect::<Vec<f64>>()
        })
        .reduce(
            || vec![0.0f64; cols * cols],
            |mut sum, part| {
                sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
                sum
            },
        )
}

/// The Cholesky factor `L` of the symmetric positive semi-definite `g` (`n × n`), inverted:
/// `L⁻¹` row-major, and the columns kept. A column whose pivot is below a relative tolerance of
/// the largest diagonal is dependent on earlier ones: its row and column are skipped.
fn inverse_cholesky(g: &[f64], n: usize) -> (Vec<f64>, Vec<usize>) {
    let largest = (0..n).map(|i| g[i * n + i]).fold(0.0f64, f64::max);
    let tolerance = largest * 1e-10;
    let mut l = vec![0.0f64; n * n];
    let mut kept = Vec::with_capacity(n);
    for j in 0..n {
        let mut pivot = g[j * n + j];
        for &p in &kept {
            pivot -= l[j * n + p] * l[j * n + p];
        }
        if pivot <= tolerance {
            continue;
        }
        let d = pivot.sqrt();
        l[j * n + j] = d;
        for i in j + 1..n {
            let mut s = g[i * n + j];
            for &p in &kept {
                s -= l[i * n + p] * l[j * n + p];
            }
            l[i * n + j] = s / d;
        }
        kept.push(j);
    }
    // Forward substitution on the kept rows/columns: L⁻¹ is lower triangular over `kept`.
    let mut inverse = vec![0.0f64; n * n];
    for (a, &col) in kept.iter().enumerate() {
        inverse[col * n + col] = 1.0 / l[col * n + col];
        for &row in &kept[a + 1..] {
            let mut s = 0.0;
            for &p in &kept[a..] {
                if p >= row {
                    break;
                }
                s += l[row * n + p] * inverse[p * n + col];
            }
            inverse[row * n + col] = -s / l[row * n + row];
        }
    }
    (inverse, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns_orthonormal(q: &[f32], cols: usize) -> f64 {
        let g = gram(q, cols);
        let mut worst = 0.0f64;
        for i in 0..cols {
            for j in 0..cols {
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((g[i * cols + j] - want).abs());
            }
        }
        worst
    }

    #[test]
    fn orthonormalise_gives_orthonormal_columns_and_drops_dependent_ones() {
        let rows = 50;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut a: Vec<f32> = (0..rows * 4).map(|_| rng.random::<f32>() - 0.5).collect();
        // Column 2 = column 0 + column 1: dependent.
        for r in 0..rows {
            a[r * 4 + 2] = a[r * 4] + a[r * 4 + 1];
        }
        let (q, cols) = orthonormalise(a, rows, 4);
        assert_eq!(cols, 3);
        assert!(columns_orthonormal(&q, cols) < 1e-5);
    }
}
