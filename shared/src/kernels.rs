//! Dense f32 kernels on slices for the hot paths (ALS, fold-in, whole-catalog scoring).
//!
//! Dense matrix products (EASE's inverse, BSPM's filter) go to the `gemm` crate's kernels through
//! `product`.
//!
//! Plain functions over slices, written so LLVM vectorises them (several independent accumulators,
//! fixed-width chunks); no allocation, no bounds checks inside the loops.

const LANES: usize = 16;

/// Dot product of two equal-length vectors.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = x.mul_add(*y, tail);
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = xi.mul_add(alpha, *yi);
    }
}

/// `out = m * v` for a row-major square matrix `m` of side `v.len()`.
#[inline]
pub fn symv(m: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    debug_assert_eq!(m.len(), k * k);
    for (row, o) in m.chunks_exact(k).zip(out.iter_mut()) {
        *o = dot(row, v);
    }
}

/// Adds `weight * x xᵀ` to the row-major square matrix `m` of side `x.len()`.
#[inline]
pub fn add_outer(weight: f32, x: &[f32], m: &mut [f32]) {
    let k = x.len();
    debug_assert_eq!(m.len(), k * k);
    for (row, xi) in m.chunks_exact_mut(k).zip(x) {
        axpy(weight * xi, x, row);
    }
}

/// The Gram matrix `YᵀY` (row-major, `k × k`) of a row-major `n × k` matrix, accumulated in f64
/// for accuracy over many rows.
pub fn gram(rows: &[f32], k: usize) -> Vec<f32> {
    let mut gram = Gram::new(k);
    gram.add(rows);
    gram.finish()
}

/// [`gram`] over rows given in parts: equal to it to the last bit when every part but the last
/// holds a multiple of [`Gram::BLOCK_ROWS`] rows.
pub struct Gram {
    k: usize,
    acc: Vec<f64>,
    block: Vec<f32>,
}

impl Gram {
    /// Rows accumulated in `f32` before they are folded into `f64`.
    pub const BLOCK_ROWS: usize = 256;

    pub fn new(k: usize) -> Gram {
        Gram {
            k,
            acc: vec![0.0; k * k],
            block: vec![0.0; k * k],
        }
    }

    /// Adds the row-major rows `rows` (of `k` values each).
    pub fn add(&mut self, rows: &[f32]) {
        // Accumulate blocks of rows in f32 (fast), fold each block into f64 (accurate).
        for chunk in rows.chunks(self.k * Self::BLOCK_ROWS) {
            self.block.iter_mut().for_each(|b| *b = 0.0);
            for row in chunk.chunks_exact(self.k) {
                add_outer(1.0, row, &mut self.block);
            }
            for (a, b) in self.acc.iter_mut().zip(&self.block) {
                *a += f64::from(*b);
            }
        }
    }

    /// `YᵀY` of every row added.
    pub fn finish(self) -> Vec<f32> {
        self.acc.into_iter().map(|v| v as f32).collect()
    }
}

/// Dense matrix products on the `gemm` crate's kernels (EASE's inverse, BSPM's filter):
/// `dst (m×k) = alpha·dst + beta·lhs (m×d) · rhs (d×k)` on row-major views with the given row
/// strides; `lhs_t`/`rhs_t` read the operand transposed (a `d×m` / `k×d` row-major block).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    m: usize,
    k: usize,
    d: usize,
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_stride: usize,
    lhs_t: bool,
    rhs: *const f32,
    rhs_stride: usize,
    rhs_t: bool,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || k == 0 {
        return;
    }
    let (lhs_rs, lhs_cs) = if lhs_t {
        (1, lhs_stride as isize)
    } else {
        (lhs_stride as isize, 1)
    };
    let (rhs_rs, rhs_cs) = if rhs_t {
        (1, rhs_stride as isize)
    } else {
        (rhs_stride as isize, 1)
    };
    // SAFETY: the caller guarantees the views are in bounds and `dst` overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            k,
            d,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gram_added_in_parts_of_whole_blocks_equals_it_at_once() {
        let k = 7;
        let rows: Vec<f32> = (0..1000 * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut parts = Gram::new(k);
        parts.add(&rows[..Gram::BLOCK_ROWS * k]);
        parts.add(&rows[Gram::BLOCK_ROWS * k..3 * Gram::BLOCK_ROWS * k]);
        parts.add(&rows[3 * Gram::BLOCK_ROWS * k..]);
        assert_eq!(parts.finish(), gram(&rows, k));
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dot_matches_naive_sum(v in proptest::collection::vec((-10.0f32..10.0, -10.0f32..10.0), 0..100)) {
            let (a, b): (Vec<f32>, Vec<f32>) = v.into_iter().unzip();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let fast = f64::from(dot(&a, &b));
            prop_assert!((naive - fast).abs() <= 1e-3 * (1.0 + naive.abs()), "{naive} vs {fast}");
        }
    }

    #[test]
    fn gram_matches_definition() {
        let k = 3;
        let rows: Vec<f32> = (0..(5 * k)).map(|i| (i as f32 * 0.37).sin()).collect();
        let g = gram(&rows, k);
        for i in 0..k {
            for j in 0..k {
                let want: f32 = rows.chunks(k).map(|r| r[i] * r[j]).sum();
                assert!((g[i * k + j] - want).abs() < 1e-5);
            }
        }
        let mut out = vec![0.0; k];
        symv(&g, &[1.0, 0.0, 0.0], &mut out);
        assert_eq!(out, vec![g[0], g[k], g[2 * k]]);
    }
}
