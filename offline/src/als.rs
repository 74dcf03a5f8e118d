//! Implicit-feedback ALS (Hu, Koren & Volinsky 2008) with the conjugate-gradient solver
//! (Takács, Pilászy & Tikk 2011).
//!
//! Each iteration solves every item against the fixed member factors, then every member against
//! the new item factors, so the member factors that come out are consistent with the item factors
//! that are published with them. Each solve runs `cg_steps` conjugate-gradient steps warm-started
//! from the previous iterate, touching only the row's non-zeros and the shared `k × k` Gram matrix
//! (`O(nnz·k + k²)` per step instead of `O(nnz·k² + k³)` for an exact solve). Rows are solved in
//! parallel on a dedicated rayon pool; nothing is allocated per row beyond three per-thread
//! scratch vectors.

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use recsys_shared::kernels::{axpy, dot, gram, symv};

use crate::matrix::SparseMatrix;
use crate::{OfflineError, Result};

/// Hyper-parameters of a training run: the config section itself (`[offline.als]`).
pub use recsys_shared::config::AlsConfig as AlsParams;

/// Trained factors: row-major, `factors` wide.
#[derive(Debug, Clone, PartialEq)]
pub struct AlsModel {
    pub factors: usize,
    pub user_factors: Vec<f32>,
    pub item_factors: Vec<f32>,
}

/// What one iteration reports to the progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationReport {
    pub iteration: usize,
    pub iterations: usize,
    pub seconds: f64,
    /// Normalised training loss, when requested.
    pub loss: Option<f64>,
}

/// Trains on a members × items matrix of interaction strengths `r` (confidence `1 + α r`).
pub fn train(
    matrix: &SparseMatrix,
    params: &AlsParams,
    mut on_iteration: impl FnMut(IterationReport),
) -> Result<AlsModel> {
    let k = params.factors;
    if k == 0 || params.iterations == 0 || params.cg_steps == 0 {
        return Err(OfflineError::Usage(
            "factors, iterations and cg_steps must be positive".into(),
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads)
        .thread_name(|i| format!("als-{i}"))
        .build()
        .map_err(|e| {
            OfflineError::Usage(format!("cannot start {} threads: {e}", params.threads))
        })?;
    let by_item = matrix.transpose();
    let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
    let mut init =
        |n: usize| -> Vec<f32> { (0..n * k).map(|_| rng.random::<f32>() * 0.01).collect() };
    let mut user_factors = init(matrix.rows);
    let mut item_factors = init(matrix.cols);
    for iteration in 1..=params.iterations {
        let started = std::time::Instant::now();
        let loss = pool.install(|| {
            solve_side(&mut item_factors, &user_factors, &by_item, k, params);
            solve_side(&mut user_factors, &item_factors, matrix, k, params);
            params
                .compute_loss
                .then(|| loss(matrix, &user_factors, &item_factors, k, params))
        });
        on_iteration(IterationReport {
            iteration,
            iterations: params.iterations,
            seconds: started.elapsed().as_secs_f64(),
            loss,
        });
    }
    Ok(AlsModel {
        factors: k,
        user_factors,
        item_factors,
    })
}

/// `YᵀY` of a row-major factor matrix, computed in parallel.
pub fn parallel_gram(factors: &[f32], k: usize) -> Vec<f32> {
    // Partial sums are added in chunk order so the result does not depend on thread timing.
    let partials: Vec<Vec<f32>> = factors
        .par_chunks(k * 4096)
        .map(|chunk| gram(chunk, k))
        .collect();
    let mut total = vec![0.0f32; k * k];
    for partial in partials {
        total.iter_mut().zip(&partial).for_each(|(t, p)| *t += p);
    }
    total
}

/// Re-solves every row of `target` (one row per row of `matrix`) against `fixed`.
pub fn solve_side(
    target: &mut [f32],
    fixed: &[f32],
    matrix: &SparseMatrix,
    k: usize,
    params: &AlsParams,
) {
    let mut a = parallel_gram(fixed, k);
    for d in 0..k {
        a[d * k + d] += params.regularization;
    }
    target
        .par_chunks_mut(k)
        .with_min_len(64)
        .enumerate()
        .for_each_init(
            || CgScratch::new(k),
            |scratch, (row, x)| {
                let (cols, strengths) = matrix.row(row);
                cg_solve(
                    x,
                    &a,
                    fixed,
                    cols,
                    strengths,
                    params.alpha,
                    params.cg_steps,
                    scratch,
                );
            },
        );
}

/// Per-thread vectors of the CG iteration.
pub struct CgScratch {
    r: Vec<f32>,
    p: Vec<f32>,
    ap: Vec<f32>,
}

impl CgScratch {
    pub fn new(k: usize) -> Self {
        CgScratch {
            r: vec![0.0; k],
            p: vec![0.0; k],
            ap: vec![0.0; k],
        }
    }
}

/// Improves `x` towards the solution of `(A + Σ α rᵢ yᵢyᵢᵀ) x = Σ (1 + α rᵢ) yᵢ` with `steps`
/// conjugate-gradient steps, where `A = YᵀY + λI` is `regularized_gram`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn cg_solve(
    x: &mut [f32],
    regularized_gram: &[f32],
    fixed: &[f32],
    cols: &[u32],
    strengths: &[f32],
    alpha: f32,
    steps: usize,
    scratch: &mut CgScratch,
) {
    let k = x.len();
    let CgScratch { r, p, ap } = scratch;
    // r = b - A x
    symv(regularized_gram, x, r);
    r.iter_mut().for_each(|v| *v = -*v);
    for (&col, &strength) in cols.iter().zip(strengths) {
        let y = &fixed[col as usize * k..(col as usize + 1) * k];
        let extra = alpha * strength;
        let coef = (1.0 + extra) - extra * dot(y, x);
        axpy(coef, y, r);
    }
    p.copy_from_slice(r);
    let mut rs_old = dot(r, r);
    if rs_old < 1e-20 {
        return;
    }
    for _ in 0..steps {
        // ap = A p
        symv(regularized_gram, p, ap);
        for (&col, &strength) in cols.iter().zip(strengths) {
            let y = &fixed[col as usize * k..(col as usize + 1) * k];
            axpy(alpha * strength * dot(y, p), y, ap);
        }
        let step = rs_old / dot(p, ap);
        axpy(step, p, x);
        axpy(-step, ap, r);
        let rs_new = dot(r, r);
        if rs_new < 1e-20 {
            break;
        }
        let beta = rs_new / rs_old;
        for (pi, ri) in p.iter_mut().zip(r.iter()) {
            *pi = ri + beta * *pi;
        }
        rs_old = rs_new;
    }
}

/// The HKV objective `Σ_u Σ_i c_ui (p_ui − x_u·y_i)² + λ(‖X‖² + ‖Y‖²)`, normalised as `implicit`
/// does by `Σ c_ui` over all cells (`users × items + Σ α r`), so figures compare across data sets.
pub fn loss(
    matrix: &SparseMatrix,
    users: &[f32],
    items: &[f32],
    k: usize,
    params: &AlsParams,
) -> f64 {
    let g = parallel_gram(items, k);
    let alpha = params.alpha;
    let (data_loss, extra_confidence) = users
        .par_chunks(k)
        .enumerate()
        .map_init(
            || vec![0.0f32; k],
            |gx, (u, x)| {
                symv(&g, x, gx);
                // Σ over all items of s² (every cell treated as a zero with confidence 1) ...
                let mut total = f64::from(dot(x, gx));
                let mut extra = 0.0f64;
                let (cols, strengths) = matrix.row(u);
                for (&col, &strength) in cols.iter().zip(strengths) {
                    let y = &items[col as usize * k..(col as usize + 1) * k];
                    let s = f64::from(dot(y, x));
                    let c = 1.0 + f64::from(alpha * strength);
                    // ... corrected for the observed cells: c(1 − s)² instead of s².
                    total += c * (1.0 - s).powi(2) - s * s;
                    extra += c - 1.0;
                }
                (total, extra)
            },
        )
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let norm = |m: &[f32]| m.iter().map(|v| f64::from(v * v)).sum::<f64>();
    let reg = f64::from(params.regularization) * (norm(users) + norm(items));
    let cells = matrix.rows as f64 * matrix.cols as f64 + extra_confidence;
    (data_loss + reg) / cells.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_shared::foldin::{FoldIn, FoldInParams};

    /// A small random members × items matrix with planted block structure.
    fn planted(users: usize, items: usize, seed: u64) -> SparseMatrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut triplets = Vec::new();
        for u in 0..users {
            let block = u % 3;
            for i in 0..items {
                let same = i % 3 == block;
                if rng.random::<f32>() < if same { 0.5 } else { 0.05 } {
                    triplets.push((u as u32, i as u32, 1.0 + rng.random::<f32>() * 2.0));
                }
            }
        }
        SparseMatrix::from_triplets(users, items, triplets)
    }

    fn params(iterations: usize, cg_steps: usize) -> AlsParams {
        AlsParams {
            factors: 8,
            regularization: 0.1,
            alpha: 2.0,
            iterations,
            cg_steps,
            threads: 2,
            seed: 7,
            compute_loss: true,
        }
    }

    #[test]
    fn cg_converges_to_the_direct_cholesky_solution() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for trial in 0..20 {
            let (n, k) = (40, 6);
            let y: Vec<f32> = (0..n * k).map(|_| rng.random::<f32>() - 0.5).collect();
            let cols: Vec<u32> = (0..n as u32)
                .filter(|_| rng.random::<f32>() < 0.3)
                .collect();
            let strengths: Vec<f32> = cols
                .iter()
                .map(|_| 0.5 + rng.random::<f32>() * 3.0)
                .collect();
            let fp = FoldInParams {
                regularization: 0.05 + trial as f32 * 0.01,
                alpha: 4.0,
            };
            let history: Vec<(u32, f32)> = cols
                .iter()
                .copied()
                .zip(strengths.iter().copied())
                .collect();
            let exact = FoldIn::new(&y, k, fp).solve(&history).unwrap();
            let mut a = gram(&y, k);
            for d in 0..k {
                a[d * k + d] += fp.regularization;
            }
            let mut x = vec![0.0f32; k];
            let mut scratch = CgScratch::new(k);
            // CG on a k-dimensional SPD system converges in k steps in exact arithmetic.
            cg_solve(
                &mut x,
                &a,
                &y,
                &cols,
                &strengths,
                fp.alpha,
                2 * k,
                &mut scratch,
            );
            for (got, want) in x.iter().zip(&exact) {
                assert!(
                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "trial {trial}: {x:?} vs {exact:?}"
                );
            }
        }
    }

    #[test]
    fn loss_never_increases_across_iterations() {
        let m = planted(60, 45, 1);
        let mut losses = Vec::new();
        train(&m, &params(12, 3), |r| losses.push(r.loss.unwrap())).unwrap();
        assert_eq!(losses.len(), 12);
        for pair in losses.windows(2) {
            assert!(
                pair[1] <= pair[0] * (1.0 + 1e-5),
                "loss went up: {losses:?}"
            );
        }
        assert!(
            losses[11] < losses[0] * 0.9,
            "loss barely moved: {losses:?}"
        );
    }

    #[test]
    fn folding_in_a_training_member_reproduces_its_trained_vector() {
        let m = planted(50, 40, 2);
        let p = params(60, 8);
        let model = train(&m, &p, |_| {}).unwrap();
        let k = p.factors;
        let fold_in = FoldIn::new(
            &model.item_factors,
            k,
            FoldInParams {
                regularization: p.regularization,
                alpha: p.alpha,
            },
        );
        for u in [0usize, 7, 31, 49] {
            let (cols, strengths) = m.row(u);
            let history: Vec<(u32, f32)> = cols
                .iter()
                .copied()
                .zip(strengths.iter().copied())
                .collect();
            let folded = fold_in.solve(&history).unwrap();
            let trained = &model.user_factors[u * k..(u + 1) * k];
            let diff: f32 = folded
                .iter()
                .zip(trained)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            let size: f32 = trained.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                diff <= 0.02 * size,
                "member {u}: |diff| {diff} vs |x| {size}"
            );
        }
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let m = planted(30, 20, 4);
        let a = train(&m, &params(3, 3), |_| {}).unwrap();
        let b = train(&m, &params(3, 3), |_| {}).unwrap();
        assert_eq!(a, b);
    }
}
