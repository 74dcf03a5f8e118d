//! The fold-in: the exact ALS solve for one member against fixed item factors.
//!
//! With item factors `Y` fixed, implicit-feedback ALS (Hu, Koren & Volinsky 2008) gives a member
//! with interaction strengths `r_i` the vector
//!
//! ```text
//! x = (YᵀY + λI + Σ_i α r_i y_i y_iᵀ)⁻¹ Σ_i (1 + α r_i) y_i
//! ```
//!
//! (confidence `c_i = 1 + α r_i`, preference 1 for every item in the history, 0 elsewhere). This is
//! the one function that turns a history into a vector: the offline evaluator folds in held-out
//! members with it, the nearline workers fold every event in with it, and the online server folds
//! in members that have a history but no stored vector. The solve is exact (Cholesky in f64), costs
//! `O(n k² + k³)` for a history of `n` items, and allocates only its `k × k` system.

use crate::kernels;
use crate::{Result, SharedError};

/// The two ALS hyper-parameters the fold-in needs; they must be the model's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldInParams {
    /// λ, the L2 regularisation of every factor.
    pub regularization: f32,
    /// α, confidence per unit of interaction strength: `c = 1 + α r`.
    pub alpha: f32,
}

/// Folds member histories into vectors against one model's item factors.
#[derive(Debug, Clone)]
pub struct FoldIn<'a> {
    item_factors: &'a [f32],
    k: usize,
    params: FoldInParams,
    /// `YᵀY + λI`, row-major `k × k`, computed once per model.
    regularized_gram: Vec<f32>,
}

impl<'a> FoldIn<'a> {
    /// Prepares the fold-in for row-major item factors of width `k` (computes `YᵀY`, `O(n k²)`).
    pub fn new(item_factors: &'a [f32], k: usize, params: FoldInParams) -> Self {
        let gram = kernels::gram(item_factors, k);
        Self::with_gram(item_factors, k, params, gram)
    }

    /// Prepares the fold-in with a `YᵀY` (without λ) the caller already has.
    pub fn with_gram(
        item_factors: &'a [f32],
        k: usize,
        params: FoldInParams,
        gram: Vec<f32>,
    ) -> Self {
        assert!(
            k > 0 && item_factors.len().is_multiple_of(k),
            "item factors are not n × {k}"
        );
        assert_eq!(gram.len(), k * k, "gram matrix is not {k} × {k}");
        let mut regularized_gram = gram;
        for d in 0..k {
            regularized_gram[d * k + d] += params.regularization;
        }
        FoldIn {
            item_factors,
            k,
            params,
            regularized_gram,
        }
    }

    /// Width of the vectors.
    pub fn factors(&self) -> usize {
        self.k
    }

    /// Number of items the factors cover.
    pub fn items(&self) -> usize {
        self.item_factors.len() / self.k
    }

    /// The member's vector for a history of `(item index, interaction strength)` pairs. Repeated
    /// items are merged by adding their strengths; non-positive strengths are ignored. An empty
    /// history gives the zero vector.
    pub fn solve(&self, history: &[(u32, f32)]) -> Result<Vec<f32>> {
        let k = self.k;
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
        let n_items = self.items();
        let mut a = self.regularized_gram.clone();
        let mut b = vec![0.0f32; k];
        for &(item, strength) in &merged {
            let item = item as usize;
            if item >= n_items {
                return Err(SharedError::Numerics(format!(
                    "item index {item} is outside the {n_items} item factors"
                )));
            }
            let y = &self.item_factors[item * k..(item + 1) * k];
            let extra_confidence = self.params.alpha * strength;
            kernels::add_outer(extra_confidence, y, &mut a);
            kernels::axpy(1.0 + extra_confidence, y, &mut b);
        }
        let mut a64: Vec<f64> = a.into_iter().map(f64::from).collect();
        let mut b64: Vec<f64> = b.into_iter().map(f64::from).collect();
        cholesky_solve(&mut a64, &mut b64, k)?;
        Ok(b64.into_iter().map(|v| v as f32).collect())
    }
}

/// Solves `A x = b` in place for a symmetric positive-definite row-major `A` (`k × k`); `b` becomes
/// `x` and `A` is overwritten by its Cholesky factor.
pub fn cholesky_solve(a: &mut [f64], b: &mut [f64], k: usize) -> Result<()> {
    assert_eq!(a.len(), k * k);
    assert_eq!(b.len(), k);
    // A = L Lᵀ, L stored in the lower triangle.
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[j * k + p] * a[j * k + p];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(SharedError::Numerics(format!(
                "matrix is not positive definite (pivot {j} is {d}); is the regularisation positive?"
            )));
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        for i in (j + 1)..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = s / d;
        }
    }
    // L z = b
    for i in 0..k {
        let mut s = b[i];
        for p in 0..i {
            s -= a[i * k + p] * b[p];
        }
        b[i] = s / a[i * k + i];
    }
    // Lᵀ x = z
    for i in (0..k).rev() {
        let mut s = b[i];
        for p in (i + 1)..k {
            s -= a[p * k + i] * b[p];
        }
        b[i] = s / a[i * k + i];
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

    /// The member objective the fold-in minimises.
    fn objective(y: &[f32], k: usize, p: FoldInParams, hist: &[(u32, f32)], x: &[f32]) -> f64 {
        let mut loss = 0.0f64;
        for (i, row) in y.chunks(k).enumerate() {
            let s = f64::from(kernels::dot(row, x));
            let (c, pref) = match hist.iter().find(|(j, _)| *j as usize == i) {
                Some((_, r)) => (1.0 + f64::from(p.alpha * r), 1.0),
                None => (1.0, 0.0),
            };
            loss += c * (pref - s).powi(2);
        }
        loss + f64::from(p.regularization) * x.iter().map(|v| f64::from(v * v)).sum::<f64>()
    }

    #[test]
    fn solution_is_the_minimum_of_the_member_objective() {
        let (n, k) = (30, 4);
        let y = factors(n, k);
        let params = FoldInParams {
            regularization: 0.1,
            alpha: 3.0,
        };
        let hist = [(1, 1.0), (5, 2.0), (17, 0.5)];
        let x = FoldIn::new(&y, k, params).solve(&hist).unwrap();
        let best = objective(&y, k, params, &hist, &x);
        // Any perturbation of the solution is worse.
        for d in 0..k {
            for eps in [-1e-2f32, 1e-2] {
                let mut moved = x.clone();
                moved[d] += eps;
                assert!(objective(&y, k, params, &hist, &moved) > best);
            }
        }
    }

    #[test]
    fn repeated_items_merge_and_empty_history_is_zero() {
        let (n, k) = (10, 3);
        let y = factors(n, k);
        let params = FoldInParams {
            regularization: 0.1,
            alpha: 2.0,
        };
        let f = FoldIn::new(&y, k, params);
        assert_eq!(f.solve(&[]).unwrap(), vec![0.0; k]);
        let split = f.solve(&[(2, 1.0), (4, 1.0), (2, 1.0)]).unwrap();
        let merged = f.solve(&[(4, 1.0), (2, 2.0)]).unwrap();
        for (a, b) in split.iter().zip(&merged) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(f.solve(&[(99, 1.0)]).is_err());
    }

    #[test]
    fn cholesky_refuses_indefinite_matrices() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        let mut b = vec![1.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2).is_err());
    }
}
