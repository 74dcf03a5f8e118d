//! Implicit-feedback ALS with the conjugate-gradient solver (Takács, Pilászy & Tikk 2011), on
//! the iALS objective of Rendle, Krichene, Zhang & Koren, "Revisiting the Performance of iALS on
//! Item Recommendation Benchmarks" (RecSys 2022, arXiv 2110.14037):
//!
//! ```text
//! L(X, Y) = Σ_{(u,i) observed} (α₀ + α r_ui)(1 − x_u·y_i)²  +  α₀ Σ_{(u,i) unobserved} (x_u·y_i)²
//!         + λ Σ_u (|I_u| + α₀ |I|)^ν ‖x_u‖²  +  λ Σ_i (|U_i| + α₀ |U|)^ν ‖y_i‖²
//! ```
//!
//! α₀ (`unobserved_weight`) weighs the unobserved cells, α the confidence per unit of interaction
//! strength, ν (`regularization_exp`) scales λ with each row's frequency (`|I_u|` items of member
//! `u` out of `|I|`, `|U_i|` members of item `i` out of `|U|`). α₀ = 1, ν = 0 is Hu, Koren &
//! Volinsky (2008) with `c = 1 + α r` and plain λ. [`super::FoldIn`] solves the member
//! side of the same objective exactly; the trainer's member step converges to the same vector.
//!
//! Each iteration solves every item against the fixed member factors, then every member against
//! the new item factors, so the member factors that come out are consistent with the item factors
//! that are published with them. Each row's normal equations
//! `(α₀ FᵀF + λ_row I + Σ α r f fᵀ) x = Σ (α₀ + α r) f` get `cg_steps` conjugate-gradient steps
//! warm-started from the previous iterate, touching only the row's non-zeros and the shared
//! `k × k` Gram matrix (`O(nnz·k + k²)` per step instead of `O(nnz·k² + k³)` for an exact solve).
//! Factors start as `N(0, (init_std/√k)²)`. Rows are solved in parallel on a dedicated rayon pool;
//! nothing is allocated per row beyond three per-thread scratch vectors.

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::kernels::{axpy, dot, gram, symv};

use crate::model::matrix::SparseMatrix;
use crate::{Result, SharedError};

/// Hyper-parameters of a training run: the config section itself (`[offline.als]`).
pub use crate::config::AlsConfig as AlsParams;

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

/// Trains on a members × items matrix of interaction strengths `r`.
pub fn train(
    matrix: &SparseMatrix,
    params: &AlsParams,
    on_iteration: impl FnMut(IterationReport),
) -> Result<AlsModel> {
    let data = TrainingData::new(matrix, params.threads)?;
    let mut trainer = Trainer::with_data(&data, params)?;
    trainer.run(params.iterations, on_iteration);
    Ok(trainer.into_model())
}

/// What every training run on one matrix shares: the matrix, its transpose and the thread pool.
pub struct TrainingData<'a> {
    matrix: &'a SparseMatrix,
    by_item: SparseMatrix,
    pool: rayon::ThreadPool,
}

impl<'a> TrainingData<'a> {
    /// `threads` = 0: one per core.
    pub fn new(matrix: &'a SparseMatrix, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("als-{i}"))
            .build()
            .map_err(|e| SharedError::Training(format!("cannot start {threads} threads: {e}")))?;
        Ok(TrainingData {
            matrix,
            by_item: matrix.transpose(),
            pool,
        })
    }
}

/// A training run that can be continued: the tuner trains a setting for a few iterations,
/// evaluates it, and continues only the promising ones.
pub struct Trainer<'a> {
    data: &'a TrainingData<'a>,
    params: AlsParams,
    user_factors: Vec<f32>,
    item_factors: Vec<f32>,
    done: usize,
}

impl<'a> Trainer<'a> {
    /// Validates the parameters and draws the initial factors from `params.seed`.
    pub fn with_data(data: &'a TrainingData<'a>, params: &AlsParams) -> Result<Self> {
        let k = params.factors;
        if k == 0 || params.iterations == 0 || params.cg_steps == 0 {
            return Err(SharedError::Training(
                "factors, iterations and cg_steps must be positive".into(),
            ));
        }
        if params.regularization <= 0.0 && params.unobserved_weight <= 0.0 {
            return Err(SharedError::Training(
                "regularization and unobserved_weight cannot both be zero (the normal equations would be singular)".into(),
            ));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
        let std = params.init_std / (k as f32).sqrt();
        let user_factors = normal(&mut rng, data.matrix.rows * k, std);
        let item_factors = normal(&mut rng, data.matrix.cols * k, std);
        Ok(Trainer {
            data,
            params: params.clone(),
            user_factors,
            item_factors,
            done: 0,
        })
    }

    /// Iterations run so far.
    pub fn iterations_done(&self) -> usize {
        self.done
    }

    /// Runs `iterations` more alternations; `on_iteration` counts them from the first ever run.
    pub fn run(&mut self, iterations: usize, mut on_iteration: impl FnMut(IterationReport)) {
        let k = self.params.factors;
        let total = self.done + iterations;
        let (matrix, by_item, params) = (self.data.matrix, &self.data.by_item, &self.params);
        for _ in 0..iterations {
            let started = std::time::Instant::now();
            let (users, items) = (&mut self.user_factors, &mut self.item_factors);
            let loss = self.data.pool.install(|| {
                solve_side(items, users, by_item, k, params);
                solve_side(users, items, matrix, k, params);
                params
                    .compute_loss
                    .then(|| loss(matrix, users, items, k, params))
            });
            self.done += 1;
            on_iteration(IterationReport {
                iteration: self.done,
                iterations: total,
                seconds: started.elapsed().as_secs_f64(),
                loss,
            });
        }
    }

    /// The item factors as they stand.
    pub fn item_factors(&self) -> &[f32] {
        &self.item_factors
    }

    pub fn into_model(self) -> AlsModel {
        AlsModel {
            factors: self.params.factors,
            user_factors: self.user_factors,
            item_factors: self.item_factors,
        }
    }
}

/// `n` draws of `N(0, std²)` (Box–Muller), in a fixed order for a seed.
fn normal(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push((radius * angle.cos()) as f32 * std);
        out.push((radius * angle.sin()) as f32 * std);
    }
    out.truncate(n);
    out
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

/// What every row of one side shares: `α₀ FᵀF` of the fixed side and the weights.
pub struct SideSystem<'a> {
    /// `α₀ FᵀF`, row-major `k × k`.
    pub weighted_gram: &'a [f32],
    /// The fixed side's factors, row-major.
    pub fixed: &'a [f32],
    pub alpha: f32,
    pub unobserved_weight: f32,
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
    a.iter_mut().for_each(|g| *g *= params.unobserved_weight);
    let system = SideSystem {
        weighted_gram: &a,
        fixed,
        alpha: params.alpha,
        unobserved_weight: params.unobserved_weight,
    };
    let objective = params.objective();
    let columns = fixed.len() / k;
    target
        .par_chunks_mut(k)
        .with_min_len(64)
        .enumerate()
        .for_each_init(
            || CgScratch::new(k),
            |scratch, (row, x)| {
                let (cols, strengths) = matrix.row(row);
                let lambda = objective.row_regularization(cols.len(), columns);
                cg_solve(
                    x,
                    &system,
                    lambda,
                    cols,
                    strengths,
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

/// Improves `x` towards the solution of
/// `(α₀ FᵀF + λ I + Σ α rᵢ fᵢfᵢᵀ) x = Σ (α₀ + α rᵢ) fᵢ` with `steps` conjugate-gradient steps.
#[inline]
pub fn cg_solve(
    x: &mut [f32],
    system: &SideSystem,
    lambda: f32,
    cols: &[u32],
    strengths: &[f32],
    steps: usize,
    scratch: &mut CgScratch,
) {
    let k = x.len();
    let (alpha, a0, fixed) = (system.alpha, system.unobserved_weight, system.fixed);
    let CgScratch { r, p, ap } = scratch;
    // r = b - A x
    symv(system.weighted_gram, x, r);
    axpy(lambda, x, r);
    r.iter_mut().for_each(|v| *v = -*v);
    for (&col, &strength) in cols.iter().zip(strengths) {
        let y = &fixed[col as usize * k..(col as usize + 1) * k];
        let extra = alpha * strength;
        let coef = (a0 + extra) - extra * dot(y, x);
        axpy(coef, y, r);
    }
    p.copy_from_slice(r);
    let mut rs_old = dot(r, r);
    if rs_old < 1e-20 {
        return;
    }
    for _ in 0..steps {
        // ap = A p
        symv(system.weighted_gram, p, ap);
        axpy(lambda, p, ap);
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

/// The objective of the module doc, normalised by the total weight of all cells
/// (`α₀ · members · items + Σ α r`, as `implicit` normalises its loss), so figures compare across
/// data sets.
pub fn loss(
    matrix: &SparseMatrix,
    users: &[f32],
    items: &[f32],
    k: usize,
    params: &AlsParams,
) -> f64 {
    let g = parallel_gram(items, k);
    let alpha = params.alpha;
    let a0 = f64::from(params.unobserved_weight);
    let objective = params.objective();
    let (data_loss, extra_confidence, member_reg) = users
        .par_chunks(k)
        .enumerate()
        .map_init(
            || vec![0.0f32; k],
            |gx, (u, x)| {
                symv(&g, x, gx);
                // Σ over all items of α₀ s² (every cell treated as unobserved) ...
                let mut total = a0 * f64::from(dot(x, gx));
                let mut extra = 0.0f64;
                let (cols, strengths) = matrix.row(u);
                for (&col, &strength) in cols.iter().zip(strengths) {
                    let y = &items[col as usize * k..(col as usize + 1) * k];
                    let s = f64::from(dot(y, x));
                    let c = a0 + f64::from(alpha * strength);
                    // ... corrected for the observed cells: c(1 − s)² instead of α₀ s².
                    total += c * (1.0 - s).powi(2) - a0 * s * s;
                    extra += f64::from(alpha * strength);
                }
                let lambda = f64::from(objective.row_regularization(cols.len(), matrix.cols));
                (total, extra, lambda * f64::from(dot(x, x)))
            },
        )
        .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    let item_counts = matrix.column_counts();
    let item_reg: f64 = items
        .chunks(k)
        .zip(&item_counts)
        .map(|(y, &n)| {
            f64::from(objective.row_regularization(n, matrix.rows)) * f64::from(dot(y, y))
        })
        .sum();
    let cells = a0 * matrix.rows as f64 * matrix.cols as f64 + extra_confidence;
    (data_loss + member_reg + item_reg) / cells.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ials::{FoldIn, Objective};

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
            ..Default::default()
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
            // Hu, Koren & Volinsky's objective, then α₀ and ν of Rendle et al.
            let fp = if trial % 2 == 0 {
                Objective::hkv(0.05 + trial as f32 * 0.01, 4.0)
            } else {
                Objective {
                    regularization: 0.001 * trial as f32,
                    alpha: 4.0,
                    unobserved_weight: 0.1 * trial as f32,
                    regularization_exp: 0.5,
                }
            };
            let history: Vec<(u32, f32)> = cols
                .iter()
                .copied()
                .zip(strengths.iter().copied())
                .collect();
            let exact = FoldIn::new(&y, k, fp).solve(&y, &history).unwrap();
            let mut a = gram(&y, k);
            a.iter_mut().for_each(|g| *g *= fp.unobserved_weight);
            let system = SideSystem {
                weighted_gram: &a,
                fixed: &y,
                alpha: fp.alpha,
                unobserved_weight: fp.unobserved_weight,
            };
            let lambda = fp.row_regularization(cols.len(), n);
            let mut x = vec![0.0f32; k];
            let mut scratch = CgScratch::new(k);
            // CG on a k-dimensional SPD system converges in k steps in exact arithmetic.
            cg_solve(
                &mut x,
                &system,
                lambda,
                &cols,
                &strengths,
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

    /// Rendle et al.'s setting: small α₀, frequency-scaled λ.
    fn rendle_params(iterations: usize, cg_steps: usize) -> AlsParams {
        AlsParams {
            regularization: 0.005,
            unobserved_weight: 0.2,
            regularization_exp: 1.0,
            alpha: 1.0,
            init_std: 0.5,
            ..params(iterations, cg_steps)
        }
    }

    #[test]
    fn loss_never_increases_with_unobserved_weight_and_frequency_scaling() {
        let m = planted(60, 45, 5);
        let mut losses = Vec::new();
        train(&m, &rendle_params(12, 3), |r| losses.push(r.loss.unwrap())).unwrap();
        for pair in losses.windows(2) {
            assert!(
                pair[1] <= pair[0] * (1.0 + 1e-5),
                "loss went up: {losses:?}"
            );
        }
    }

    #[test]
    fn continuing_a_run_equals_running_it_at_once() {
        let m = planted(30, 20, 6);
        let once = train(&m, &params(5, 3), |_| {}).unwrap();
        let data = TrainingData::new(&m, 2).unwrap();
        let mut trainer = Trainer::with_data(&data, &params(5, 3)).unwrap();
        let mut seen = Vec::new();
        trainer.run(2, |r| seen.push((r.iteration, r.iterations)));
        trainer.run(3, |r| seen.push((r.iteration, r.iterations)));
        assert_eq!(seen, vec![(1, 2), (2, 2), (3, 5), (4, 5), (5, 5)]);
        assert_eq!(trainer.into_model(), once);
    }

    #[test]
    fn initial_factors_have_the_configured_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let draws = normal(&mut rng, 100_001, 0.5);
        assert_eq!(draws.len(), 100_001);
        let mean = draws.iter().map(|v| f64::from(*v)).sum::<f64>() / draws.len() as f64;
        let var = draws
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / draws.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "std {}", var.sqrt());
    }

    #[test]
    fn folding_in_a_training_member_reproduces_its_trained_vector() {
        // The fold-in and the trainer's member step minimise the same objective, for Hu, Koren
        // & Volinsky's parameters and for Rendle et al.'s.
        let m = planted(50, 40, 2);
        for p in [params(60, 8), rendle_params(60, 8)] {
            let model = train(&m, &p, |_| {}).unwrap();
            let k = p.factors;
            let fold_in = FoldIn::new(&model.item_factors, k, p.objective());
            assert_folds_in_to_trained(&m, &model, &fold_in, k);
        }
    }

    fn assert_folds_in_to_trained(m: &SparseMatrix, model: &AlsModel, fold_in: &FoldIn, k: usize) {
        for u in [0usize, 7, 31, 49] {
            let (cols, strengths) = m.row(u);
            let history: Vec<(u32, f32)> = cols
                .iter()
                .copied()
                .zip(strengths.iter().copied())
                .collect();
            let folded = fold_in.solve(&model.item_factors, &history).unwrap();
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
