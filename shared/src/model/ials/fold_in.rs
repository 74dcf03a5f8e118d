//! The fold-in: the exact ALS solve for one member against fixed item factors.
//!
//! The objective is the iALS of Rendle, Krichene, Zhang & Koren, "Revisiting the Performance of
//! iALS on Item Recommendation Benchmarks" (RecSys 2022, arXiv 2110.14037), with Hu, Koren &
//! Volinsky's (2008) confidence on the observed cells. For a member `u` with interaction
//! strengths `r_ui` on the `n_u` items `I_u`, out of `N` items with factors `Y`:
//!
//! ```text
//! L(x) = Σ_{i∈I_u} (α₀ + α r_ui)(1 − x·y_i)²  +  α₀ Σ_{i∉I_u} (x·y_i)²  +  λ_u ‖x‖²
//! λ_u  = λ (n_u + α₀ N)^ν
//! x    = (α₀ YᵀY + λ_u I + Σ_{i∈I_u} α r_ui y_i y_iᵀ)⁻¹ Σ_{i∈I_u} (α₀ + α r_ui) y_i
//! ```
//!
//! α₀ (`unobserved_weight`) is the weight of every unobserved cell, α the confidence per unit of
//! strength, ν (`regularization_exp`) the frequency scaling of λ. With α₀ = 1 and ν = 0 this is
//! exactly Hu, Koren & Volinsky's objective (`c = 1 + α r`, plain λ). Rendle et al. weigh an
//! observed cell 1 towards 1 plus α₀ towards 0; here its whole weight `α₀ + α r` pulls towards 1,
//! which differs only in the observed cells' effective target (1 instead of `1/(1 + α₀)`), and
//! keeps the older objective as a special case.
//!
//! This is the one function that turns a history into a vector: the offline evaluator folds in
//! held-out members with it, the nearline workers fold every event in with it, and the online
//! server folds in members that have a history but no stored vector; the offline trainer's member
//! step minimises the same objective. The solve is exact (Cholesky in f64), costs
//! `O(n k² + k³)` for a history of `n` items, and allocates only its `k × k` system.

use serde::{Deserialize, Serialize};

use crate::kernels;
use crate::{Result, SharedError};

/// iALS's objective: the hyper-parameters the trainer minimises with and every fold-in must use
/// (the model's own, from its manifest). In a manifest they sit in `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// λ, the L2 regularisation of every factor.
    pub regularization: f32,
    /// α, confidence per unit of interaction strength: an observed cell weighs `α₀ + α r`.
    pub alpha: f32,
    /// α₀, the weight of every unobserved cell; manifests written before it existed trained
    /// with 1.
    #[serde(default = "one")]
    pub unobserved_weight: f32,
    /// ν: a member with `n` items out of `N` is regularised by `λ (n + α₀ N)^ν`; manifests
    /// written before it existed trained with 0 (plain λ).
    #[serde(default)]
    pub regularization_exp: f32,
}

fn one() -> f32 {
    1.0
}

impl Objective {
    /// Hu, Koren & Volinsky's objective: α₀ = 1, plain λ.
    pub fn hkv(regularization: f32, alpha: f32) -> Self {
        Objective {
            regularization,
            alpha,
            unobserved_weight: 1.0,
            regularization_exp: 0.0,
        }
    }

    /// `λ (observed + α₀ columns)^ν`: the regularisation of a row with `observed` cells out of
    /// `columns`. The trainer uses it for both sides.
    pub fn row_regularization(&self, observed: usize, columns: usize) -> f32 {
        if self.regularization_exp == 0.0 {
            return self.regularization;
        }
        let mass = observed as f64 + f64::from(self.unobserved_weight) * columns as f64;
        (f64::from(self.regularization) * mass.powf(f64::from(self.regularization_exp))) as f32
    }
}

/// Folds member histories into vectors against one model's item factors. It holds what every
/// solve shares (`α₀ YᵀY`, computed once per model) and takes the factors at each call, so the
/// tier that holds them (the online catalog, the nearline model, the evaluator) keeps one copy.
#[derive(Debug, Clone)]
pub struct FoldIn {
    k: usize,
    params: Objective,
    /// `α₀ YᵀY`, row-major `k × k`, computed once per model.
    weighted_gram: Vec<f32>,
}

impl FoldIn {
    /// Prepares the fold-in for row-major item factors of width `k` (computes `YᵀY`, `O(n k²)`).
    pub fn new(item_factors: &[f32], k: usize, params: Objective) -> Self {
        assert!(
            k > 0 && item_factors.len().is_multiple_of(k),
            "item factors are not n × {k}"
        );
        Self::with_gram(k, params, kernels::gram(item_factors, k))
    }

    /// Prepares the fold-in with a `YᵀY` (without λ) the caller already has.
    pub fn with_gram(k: usize, params: Objective, gram: Vec<f32>) -> Self {
        assert_eq!(gram.len(), k * k, "gram matrix is not {k} × {k}");
        let mut weighted_gram = gram;
        if params.unobserved_weight != 1.0 {
            weighted_gram
                .iter_mut()
                .for_each(|g| *g *= params.unobserved_weight);
        }
        FoldIn {
            k,
            params,
            weighted_gram,
        }
    }

    /// Width of the vectors.
    pub fn factors(&self) -> usize {
        self.k
    }

    /// The member's vector from a history of `(item id, strength)` pairs, items found through
    /// `row_of` (id → row of `item_factors`). Items the model does not know are skipped; `None`
    /// when none is known.
    pub fn solve_ids<'h>(
        &self,
        item_factors: &[f32],
        row_of: impl Fn(&str) -> Option<u32>,
        history: impl IntoIterator<Item = (&'h str, f32)>,
    ) -> Result<Option<Vec<f32>>> {
        let known: Vec<(u32, f32)> = history
            .into_iter()
            .filter_map(|(id, strength)| row_of(id).map(|i| (i, strength)))
            .collect();
        if known.is_empty() {
            return Ok(None);
        }
        self.solve(item_factors, &known).map(Some)
    }

    /// The member's vector for a history of `(item index, interaction strength)` pairs. Repeated
    /// items are merged by adding their strengths; non-positive strengths are ignored. An empty
    /// history gives the zero vector.
    pub fn solve(&self, item_factors: &[f32], history: &[(u32, f32)]) -> Result<Vec<f32>> {
        let k = self.k;
        assert_eq!(item_factors.len() % k, 0, "item factors are not n × {k}");
        let mut merged: Vec<(u32, f32)> = history
            .iter()
            .copied()
            .filter(|(_, r)| *r > 0.0 && r.is_finite())
            .collect();
        merged.sort_unstable_by_key(|(i, _)| *i);
        merged.dedup_by(|later, first| {
            if later.0 == first.0 {
                first.1 += later.1;
                true
            } else {
                false
            }
        });
        if merged.is_empty() {
            return Ok(vec![0.0; k]);
        }
        let n_items = item_factors.len() / k;
        let mut b = vec![0.0f32; k];
        let mut terms: Vec<(f32, &[f32])> = Vec::with_capacity(merged.len());
        for &(item, strength) in &merged {
            let item = item as usize;
            if item >= n_items {
                return Err(SharedError::Numerics(format!(
                    "item index {item} is outside the {n_items} item factors"
                )));
            }
            let y = &item_factors[item * k..(item + 1) * k];
            let extra_confidence = self.params.alpha * strength;
            terms.push((extra_confidence, y));
            kernels::axpy(self.params.unobserved_weight + extra_confidence, y, &mut b);
        }
        // Only the upper triangle is built: the Cholesky factorisation reads nothing else.
        let mut a = self.weighted_gram.clone();
        let lambda = self.params.row_regularization(merged.len(), n_items);
        for d in 0..k {
            a[d * k + d] += lambda;
        }
        for group in terms.chunks(4) {
            add_outers_upper(&mut a, k, group);
        }
        let mut a64: Vec<f64> = a.into_iter().map(f64::from).collect();
        let mut b64: Vec<f64> = b.into_iter().map(f64::from).collect();
        cholesky_solve(&mut a64, &mut b64, k)?;
        Ok(b64.into_iter().map(|v| v as f32).collect())
    }
}

/// Adds `Σ w x xᵀ` over up to four `(w, x)` terms to the upper triangle of the row-major `k × k`
/// matrix `a`: one pass over each row for all the terms.
fn add_outers_upper(a: &mut [f32], k: usize, terms: &[(f32, &[f32])]) {
    match *terms {
        [(w0, x0), (w1, x1), (w2, x2), (w3, x3)] => {
            for (i, row) in a.chunks_exact_mut(k).enumerate() {
                let (c0, c1, c2, c3) = (w0 * x0[i], w1 * x1[i], w2 * x2[i], w3 * x3[i]);
                let sources = x0[i..].iter().zip(&x1[i..]).zip(&x2[i..]).zip(&x3[i..]);
                for (r, (((y0, y1), y2), y3)) in row[i..].iter_mut().zip(sources) {
                    *r += c0 * y0 + c1 * y1 + c2 * y2 + c3 * y3;
                }
            }
        }
        _ => {
            for &(w, x) in terms {
                for (i, row) in a.chunks_exact_mut(k).enumerate() {
                    kernels::axpy(w * x[i], &x[i..], &mut row[i..]);
                }
            }
        }
    }
}

/// `y -= a * x` in f64: no dependency between iterations, so it vectorises.
#[inline]
fn sub_scaled(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = (-a).mul_add(*xi, *yi);
    }
}

/// Solves `A x = b` in place for a symmetric positive-definite row-major `A` (`k × k`) of which
/// only the upper triangle (diagonal included) is read; `b` becomes `x` and the upper triangle of
/// `A` is overwritten by its Cholesky factor `U` (`A = UᵀU`).
///
/// The factorisation is right-looking over rows: once row `j` of `U` is known, every later row
/// `i` subtracts a multiple of row `j`'s tail from its own — contiguous updates with no reduction,
/// which vectorise, instead of `k²/2` short dot products each ending in a dependency chain.
pub fn cholesky_solve(a: &mut [f64], b: &mut [f64], k: usize) -> Result<()> {
    assert_eq!(a.len(), k * k);
    assert_eq!(b.len(), k);
    for j in 0..k {
        let (done, rest) = a.split_at_mut((j + 1) * k);
        let row_j = &mut done[j * k..];
        let d = row_j[j];
        if d <= 0.0 || !d.is_finite() {
            return Err(SharedError::Numerics(format!(
                "matrix is not positive definite (pivot {j} is {d}); is the regularisation positive?"
            )));
        }
        let pivot = d.sqrt();
        row_j[j] = pivot;
        let inverse = 1.0 / pivot;
        row_j[j + 1..].iter_mut().for_each(|u| *u *= inverse);
        let row_j = &*row_j;
        for (offset, row_i) in rest.chunks_exact_mut(k).enumerate() {
            let i = j + 1 + offset;
            sub_scaled(row_j[i], &row_j[i..], &mut row_i[i..]);
        }
    }
    // Uᵀ z = b, column by column of Uᵀ (rows of U).
    for i in 0..k {
        let row = &a[i * k..(i + 1) * k];
        b[i] /= row[i];
        let (head, tail) = b.split_at_mut(i + 1);
        sub_scaled(head[i], &row[i + 1..], tail);
    }
    // U x = z
    for i in (0..k).rev() {
        let row = &a[i * k..(i + 1) * k];
        let s: f64 = row[i + 1..]
            .iter()
            .zip(&b[i + 1..])
            .map(|(u, x)| u * x)
            .sum();
        b[i] = (b[i] - s) / row[i];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factors(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    /// The member objective of the module doc, written out cell by cell.
    fn objective(y: &[f32], k: usize, p: Objective, hist: &[(u32, f32)], x: &[f32]) -> f64 {
        let mut loss = 0.0f64;
        let a0 = f64::from(p.unobserved_weight);
        for (i, row) in y.chunks(k).enumerate() {
            let s = f64::from(kernels::dot(row, x));
            let (c, pref) = match hist.iter().find(|(j, _)| *j as usize == i) {
                Some((_, r)) => (a0 + f64::from(p.alpha * r), 1.0),
                None => (a0, 0.0),
            };
            loss += c * (pref - s).powi(2);
        }
        let n = y.len() / k;
        let lambda = f64::from(p.regularization)
            * (hist.len() as f64 + a0 * n as f64).powf(f64::from(p.regularization_exp));
        loss + lambda * x.iter().map(|v| f64::from(v * v)).sum::<f64>()
    }

    #[test]
    fn solution_is_the_minimum_of_the_member_objective() {
        // A narrow case, and one wide enough for the vectorised loops and their remainders.
        let wide: Vec<(u32, f32)> = (0..40).map(|i| (i * 5, 1.0 + (i % 3) as f32)).collect();
        // Hu, Koren & Volinsky's objective, and Rendle et al.'s with α₀ and ν.
        let cases = [
            (
                30,
                4,
                0.1,
                3.0,
                1.0,
                0.0,
                vec![(1, 1.0), (5, 2.0), (17, 0.5)],
            ),
            (200, 21, 0.05, 4.0, 1.0, 0.0, wide.clone()),
            (
                30,
                4,
                0.01,
                3.0,
                0.1,
                1.0,
                vec![(1, 1.0), (5, 2.0), (17, 0.5)],
            ),
            (200, 21, 0.002, 1.0, 0.05, 0.7, wide),
        ];
        for (n, k, regularization, alpha, unobserved_weight, regularization_exp, hist) in cases {
            let y = factors(n, k);
            let params = Objective {
                regularization,
                alpha,
                unobserved_weight,
                regularization_exp,
            };
            let x = FoldIn::new(&y, k, params).solve(&y, &hist).unwrap();
            let best = objective(&y, k, params, &hist, &x);
            // Any perturbation of the solution is worse.
            for d in 0..k {
                for eps in [-1e-2f32, 1e-2] {
                    let mut moved = x.clone();
                    moved[d] += eps;
                    assert!(
                        objective(&y, k, params, &hist, &moved) > best,
                        "k = {k}, factor {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn repeated_items_merge_and_empty_history_is_zero() {
        let (n, k) = (10, 3);
        let y = factors(n, k);
        let f = FoldIn::new(&y, k, Objective::hkv(0.1, 2.0));
        assert_eq!(f.solve(&y, &[]).unwrap(), vec![0.0; k]);
        let split = f.solve(&y, &[(2, 1.0), (4, 1.0), (2, 1.0)]).unwrap();
        let merged = f.solve(&y, &[(4, 1.0), (2, 2.0)]).unwrap();
        for (a, b) in split.iter().zip(&merged) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(f.solve(&y, &[(99, 1.0)]).is_err());
        let index = |id: &str| match id {
            "a" => Some(2),
            "b" => Some(4),
            _ => None,
        };
        let by_id = f
            .solve_ids(&y, index, [("a", 2.0), ("unknown", 5.0), ("b", 1.0)])
            .unwrap();
        assert_eq!(by_id, Some(merged.clone()), "unknown ids are skipped");
        assert_eq!(f.solve_ids(&y, index, [("unknown", 1.0)]).unwrap(), None);
    }

    #[test]
    fn cholesky_solves_wide_systems_reading_only_the_upper_triangle() {
        // Wide enough for the vectorised dot products and their remainders (k = 37 = 4·8 + 5).
        let k = 37;
        let m: Vec<f64> = (0..k * k)
            .map(|i| ((i * 7919) % 997) as f64 / 997.0 - 0.5)
            .collect();
        // A = M Mᵀ + I is symmetric positive definite.
        let mut a = vec![0.0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = (0..k).map(|p| m[i * k + p] * m[j * k + p]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let b: Vec<f64> = (0..k).map(|i| (i as f64 * 0.31).sin()).collect();
        let mut factor = a.clone();
        // Garbage below the diagonal must not matter.
        for i in 0..k {
            for j in 0..i {
                factor[i * k + j] = f64::NAN;
            }
        }
        let mut x = b.clone();
        cholesky_solve(&mut factor, &mut x, k).unwrap();
        for i in 0..k {
            let ax: f64 = (0..k).map(|j| a[i * k + j] * x[j]).sum();
            assert!((ax - b[i]).abs() < 1e-9, "row {i}: {ax} vs {}", b[i]);
        }
    }

    #[test]
    fn cholesky_refuses_indefinite_matrices() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        let mut b = vec![1.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2).is_err());
    }
}
