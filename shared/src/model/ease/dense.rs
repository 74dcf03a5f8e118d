//! The inverse of a dense symmetric positive-definite matrix, in place, in `f32`: what EASE's
//! closed form needs (`P = (XᵀX + λI)⁻¹` over the whole catalog).
//!
//! The three blocked steps of LAPACK's `potrf` + `potri` — Cholesky factor `L`, its inverse
//! `W = L⁻¹`, then `P = WᵀW` — each about `n³/3` multiply-adds, half of what an LU inverse costs.
//! Each step overwrites the one matrix, so the memory is `n²` floats plus one block panel; the
//! block products run in the `gemm` crate's kernels, the small diagonal blocks here in `f64`.

use gemm::Parallelism;

use crate::kernels::product;
use rayon::prelude::*;

/// Block size: the diagonal blocks factored and inverted by the scalar code, and the panel width
/// of every product.
const BLOCK: usize = 256;

/// A non-positive pivot: the matrix is not positive definite (to working precision).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NotPositiveDefinite {
    /// The row whose pivot failed.
    pub row: usize,
}

/// A raw view of the matrix that may be shared across threads: every use writes rows the others
/// do not touch (see each caller).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    #[inline]
    fn at(self, n: usize, row: usize, col: usize) -> *mut f32 {
        // SAFETY: callers pass row, col < n.
        unsafe { self.0.add(row * n + col) }
    }

    #[inline]
    fn offset(self, index: usize) -> *mut f32 {
        // SAFETY: callers pass an index inside the buffer.
        unsafe { self.0.add(index) }
    }
}

/// Replaces the symmetric positive-definite `n×n` row-major `a` by its inverse (both triangles),
/// on the caller's rayon pool. `progress` is told the share of the work done (0..=1) after every
/// block.
pub fn invert_spd(
    a: &mut [f32],
    n: usize,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<(), NotPositiveDefinite> {
    assert_eq!(a.len(), n * n, "an n×n matrix");
    // Each of the three steps is about a third of the work (n³/3 multiply-adds). Within one, the
    // work of a block depends on where it is: the share done when `x = rows / n` are done is
    // 1 − (1 − x)³ for the factor (the trailing update shrinks), x³ for the triangular inverse
    // (it runs from the last block) and 3x² − 2x³ for the product (block i costs (n − i)·i).
    let n_f = n.max(1) as f64;
    let step = |phase: usize, share: fn(f64) -> f64| {
        move |rows: usize| progress((phase as f64 + share(rows as f64 / n_f)) / 3.0)
    };
    {
        factor(a, n, &step(0, |x| 1.0 - (1.0 - x).powi(3)))?;
        // The strictly upper triangle still holds the input; the steps below read whole blocks
        // and need zeros there.
        a.par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(r, row)| row[r + 1..].fill(0.0));
        invert_lower(a, n, &step(1, |x| x.powi(3)));
        multiply_transposed(a, n, &step(2, |x| 3.0 * x * x - 2.0 * x.powi(3)));
        // P's lower triangle is complete; mirror it.
        mirror_lower(a, n);
    }
    Ok(())
}

/// Blocked right-looking Cholesky: the lower triangle of `a` becomes `L` with `A = L·Lᵀ`.
fn factor(a: &mut [f32], n: usize, progress: &dyn Fn(usize)) -> Result<(), NotPositiveDefinite> {
    let view = Shared(a.as_mut_ptr());
    let mut panel = Vec::new();
    for k in (0..n).step_by(BLOCK) {
        let kb = BLOCK.min(n - k);
        let mut diag = read_block(a, n, k, kb);
        cholesky_small(&mut diag, kb).map_err(|row| NotPositiveDefinite { row: k + row })?;
        write_lower(a, n, k, kb, &diag);
        let below = n - k - kb;
        if below == 0 {
            progress(n);
            break;
        }
        // Panel rows k+kb..n, columns k..k+kb:  X ← X · L_kk⁻ᵀ.
        let inverse = invert_lower_small(&diag, kb);
        panel.clear();
        panel.extend((k + kb..n).flat_map(|r| a[r * n + k..r * n + k + kb].iter().copied()));
        // SAFETY: dst is the panel in `a`; operands are the copy and the small inverse.
        unsafe {
            product(
                below,
                kb,
                kb,
                view.at(n, k + kb, k),
                n,
                false,
                panel.as_ptr(),
                kb,
                false,
                inverse.as_ptr(),
                kb,
                true,
                1.0,
                Parallelism::Rayon(0),
            );
        }
        // Trailing lower triangle: A[r, k+kb..=r] -= X_r · X_{k+kb..=r}ᵀ, one block row per task.
        let starts: Vec<usize> = (k + kb..n).step_by(BLOCK).collect();
        starts.par_iter().rev().for_each(|&r0| {
            let rb = BLOCK.min(n - r0);
            let width = r0 + rb - (k + kb);
            // SAFETY: each task writes rows r0..r0+rb, columns ≥ k+kb; every task reads only
            // columns k..k+kb (the panel), which no task writes.
            unsafe {
                product(
                    rb,
                    width,
                    kb,
                    view.at(n, r0, k + kb),
                    n,
                    true,
                    view.at(n, r0, k),
                    n,
                    false,
                    view.at(n, k + kb, k),
                    n,
                    true,
                    -1.0,
                    Parallelism::None,
                );
            }
        });
        progress(k + kb);
    }
    Ok(())
}

/// Blocked inverse of the lower-triangular `L` in place (upper triangle zero): LAPACK `trtri`,
/// last block column first.
fn invert_lower(a: &mut [f32], n: usize, progress: &dyn Fn(usize)) {
    let view = Shared(a.as_mut_ptr());
    let starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
    let mut temp = Vec::new();
    for &j in starts.iter().rev() {
        let jb = BLOCK.min(n - j);
        let s = j + jb;
        let diag = read_block(a, n, j, jb);
        let inverse = invert_lower_small(&diag, jb);
        let below = n - s;
        if below > 0 {
            // temp = W_{s..n, s..n} · X, X = A[s..n, j..s]; W's blocks above the diagonal are
            // zero, so block row r needs columns s..r_end only.
            temp.clear();
            temp.resize(below * jb, 0.0);
            let out = Shared(temp.as_mut_ptr());
            let rows: Vec<usize> = (s..n).step_by(BLOCK).collect();
            rows.par_iter().for_each(|&r0| {
                let rb = BLOCK.min(n - r0);
                // SAFETY: each task writes its own rows of `temp`; `a` is only read.
                unsafe {
                    product(
                        rb,
                        jb,
                        r0 + rb - s,
                        out.offset((r0 - s) * jb),
                        jb,
                        false,
                        view.at(n, r0, s),
                        n,
                        false,
                        view.at(n, s, j),
                        n,
                        false,
                        1.0,
                        Parallelism::None,
                    );
                }
            });
            // A[s..n, j..s] = −temp · L_jj⁻¹.
            // SAFETY: dst is the panel in `a`; operands are `temp` and the small inverse.
            unsafe {
                product(
                    below,
                    jb,
                    jb,
                    view.at(n, s, j),
                    n,
                    false,
                    temp.as_ptr(),
                    jb,
                    false,
                    inverse.as_ptr(),
                    jb,
                    false,
                    -1.0,
                    Parallelism::Rayon(0),
                );
            }
        }
        for r in 0..jb {
            a[(j + r) * n + j..(j + r) * n + j + r + 1]
                .copy_from_slice(&inverse[r * jb..r * jb + r + 1]);
        }
        progress(n - j);
    }
}

/// `P = WᵀW` for the lower-triangular `W` in place, lower triangle (LAPACK `lauum`): block row
/// `i` of `P` is `W[i.., i-block]ᵀ · W[i.., ..i+ib]`, which reads only rows `i..` — rows not yet
/// overwritten when going top-down.
fn multiply_transposed(a: &mut [f32], n: usize, progress: &dyn Fn(usize)) {
    let view = Shared(a.as_mut_ptr());
    let mut temp = Vec::new();
    for i in (0..n).step_by(BLOCK) {
        let ib = BLOCK.min(n - i);
        let width = i + ib;
        temp.clear();
        temp.resize(ib * width, 0.0);
        // SAFETY: dst is `temp`; `a` is only read.
        unsafe {
            product(
                ib,
                width,
                n - i,
                temp.as_mut_ptr(),
                width,
                false,
                view.at(n, i, i),
                n,
                true,
                view.at(n, i, 0),
                n,
                false,
                1.0,
                Parallelism::Rayon(0),
            );
        }
        for r in 0..ib {
            let row = i + r;
            a[row * n..row * n + row + 1].copy_from_slice(&temp[r * width..r * width + row + 1]);
        }
        progress(i + ib);
    }
}

/// Copies the lower triangle onto the upper one, on the pool: a task per band of `TILE` rows of
/// the upper triangle, filled a `TILE × TILE` tile at a time so that the column it reads stays in
/// cache (a plain loop writes a cache line per element: seconds at 40k items).
fn mirror_lower(a: &mut [f32], n: usize) {
    const TILE: usize = 64;
    let view = Shared(a.as_mut_ptr());
    let bands: Vec<usize> = (0..n).step_by(TILE).collect();
    bands.par_iter().for_each(|&c0| {
        let c1 = (c0 + TILE).min(n);
        for r0 in (c0..n).step_by(TILE) {
            let r1 = (r0 + TILE).min(n);
            for c in c0..c1 {
                for r in r0.max(c + 1)..r1 {
                    // SAFETY: r, c < n. This task alone writes rows c0..c1 (above the diagonal:
                    // r > c); every task reads only below the diagonal, which none writes.
                    unsafe { *view.at(n, c, r) = *view.at(n, r, c) };
                }
            }
        }
    });
}

fn read_block(a: &[f32], n: usize, k: usize, kb: usize) -> Vec<f64> {
    let mut block = vec![0.0f64; kb * kb];
    for r in 0..kb {
        for c in 0..=r {
            block[r * kb + c] = f64::from(a[(k + r) * n + k + c]);
        }
    }
    block
}

fn write_lower(a: &mut [f32], n: usize, k: usize, kb: usize, block: &[f64]) {
    for r in 0..kb {
        for c in 0..=r {
            a[(k + r) * n + k + c] = block[r * kb + c] as f32;
        }
    }
}

/// Unblocked Cholesky of a small lower block (`f64`); the failing row on a non-positive pivot.
fn cholesky_small(block: &mut [f64], kb: usize) -> Result<(), usize> {
    for j in 0..kb {
        let mut d = block[j * kb + j];
        for l in 0..j {
            d -= block[j * kb + l] * block[j * kb + l];
        }
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let d = d.sqrt();
        block[j * kb + j] = d;
        for r in j + 1..kb {
            let mut s = block[r * kb + j];
            for l in 0..j {
                s -= block[r * kb + l] * block[j * kb + l];
            }
            block[r * kb + j] = s / d;
        }
    }
    Ok(())
}

/// The inverse of a small lower-triangular block, as `f32` row-major with zeros above the
/// diagonal (an operand of the block products).
fn invert_lower_small(block: &[f64], kb: usize) -> Vec<f32> {
    let mut inv = vec![0.0f64; kb * kb];
    for c in 0..kb {
        inv[c * kb + c] = 1.0 / block[c * kb + c];
        for r in c + 1..kb {
            let mut s = 0.0;
            for l in c..r {
                s += block[r * kb + l] * inv[l * kb + c];
            }
            inv[r * kb + c] = -s / block[r * kb + r];
        }
    }
    inv.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `XᵀX + λI` for a seeded random binary `X` of `2n` rows and about `per` items each.
    fn gram(n: usize, per: usize, lambda: f32, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut a = vec![0f32; n * n];
        for _ in 0..2 * n {
            let items: Vec<usize> = (0..per).map(|_| (next() % n as u64) as usize).collect();
            for &i in &items {
                for &j in &items {
                    a[i * n + j] += 1.0;
                }
            }
        }
        for i in 0..n {
            a[i * n + i] += lambda;
        }
        a
    }

    fn worst_residual(a: &[f32], inverse: &[f32], n: usize) -> f64 {
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let s: f64 = (0..n)
                    .map(|l| f64::from(a[i * n + l]) * f64::from(inverse[l * n + j]))
                    .sum();
                worst = worst.max((s - f64::from(u8::from(i == j))).abs());
            }
        }
        worst
    }

    #[test]
    fn the_inverse_times_the_matrix_is_the_identity_at_block_edges_and_between() {
        for n in [1, 2, 7, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 37] {
            let a = gram(n, 12, 5.0, n as u64);
            let mut inverse = a.clone();
            let seen = std::sync::Mutex::new(Vec::new());
            invert_spd(&mut inverse, n, &|f| seen.lock().unwrap().push(f)).unwrap();
            let residual = worst_residual(&a, &inverse, n);
            assert!(residual < 1e-4, "n = {n}: |A·A⁻¹ − I| = {residual}");
            for r in 0..n {
                for c in 0..r {
                    assert_eq!(
                        inverse[r * n + c],
                        inverse[c * n + r],
                        "symmetric at {r},{c}"
                    );
                }
            }
            let seen = seen.into_inner().unwrap();
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress only grows");
            assert!(
                (seen.last().copied().unwrap() - 1.0).abs() < 1e-9,
                "ends at 1"
            );
        }
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_names_its_row() {
        let n = BLOCK + 10;
        let mut a = gram(n, 8, 5.0, 3);
        // A negative diagonal entry in the second block: its pivot can only be negative.
        let r = BLOCK + 3;
        a[r * n + r] = -1.0;
        let error = invert_spd(&mut a, n, &|_| {}).unwrap_err();
        assert_eq!(error, NotPositiveDefinite { row: r });
    }
}
