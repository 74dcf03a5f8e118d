//! BSPM (Choi et al., "Blurring-Sharpening Process Models for Collaborative Filtering", SIGIR
//! 2023): a linear graph filter over the normalised member × item matrix
//! `R̃ = D_m^{-½} R D_i^{-½}`, with no training loop. With `P̃ = R̃ᵀR̃` (the normalised item ×
//! item co-occurrence) a member's scores are their history `r` times
//!
//! `F = (P̃ + β · D_i^{-½} Q Qᵀ D_i^{½}) · S(P̃)`
//!
//! - `P̃` is the *blurring* step (one Euler step of heat diffusion over the item graph);
//! - `Q Qᵀ` is the *ideal low-pass filter* of GF-CF (Shen et al., CIKM 2021): the projection on
//!   the top-`rank` right singular subspace of `R̃` ([`subspace`]), weighted by `β`;
//! - `S(P̃) = I − tP̃ + (tP̃)²/2 − (tP̃)³/6 + (tP̃)⁴/24` is the *sharpening* step: one
//!   Runge–Kutta-4 step of `ds/dt = −s·P̃` over time `t` (= `exp(−tP̃)` to fourth order), which
//!   pushes down what the blurring spread to every popular item.
//!
//! `F` is computed row by row (a block of items at a time, one application of `P̃` is two passes
//! over the sparse matrix), never as a dense `n × n` matrix: each row keeps its `top_n` largest
//! weights, and a member's scores are their history's rows summed ([`ItemWeights`]), as for the
//! other history families. Quality is measured at that pruning.

pub mod subspace;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gemm::Parallelism;
use rayon::prelude::*;

use crate::kernels::product;
use crate::model::item_weights::{largest_of_row, ItemWeights};
use crate::model::matrix::SparseMatrix;
use crate::{Result, SharedError};

/// BSPM's parameters: the config section itself (`[offline.bspm]`).
pub use crate::config::BspmConfig as BspmParams;

/// Items whose rows are filtered together: the sparse passes then move `BLOCK` lanes per
/// non-zero.
const BLOCK: usize = 32;

/// Power steps of the subspace iteration for the low-pass basis.
const POWER_STEPS: usize = 4;

/// What the trainer is doing, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// The low-pass filter's basis; the share done.
    Spectrum(f64),
    /// Filtering the item rows; the share of items done.
    Filter(f64),
}

/// The binarised matrix scaled by `1/√(member's items · item's members)`, kept both ways.
pub struct Normalised {
    by_member: SparseMatrix,
    by_item: SparseMatrix,
    /// `1/√(item's members)`, 0 for an item nobody has.
    item_scale: Vec<f32>,
}

impl Normalised {
    /// `R̃` of `matrix` (any non-zero entry counts as 1).
    pub fn new(matrix: &SparseMatrix) -> Self {
        let item_counts = matrix.column_counts();
        let item_scale: Vec<f32> = item_counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0.0
                } else {
                    (c as f32).sqrt().recip()
                }
            })
            .collect();
        let mut by_member = matrix.clone();
        for u in 0..by_member.rows {
            let (start, end) = (by_member.indptr[u], by_member.indptr[u + 1]);
            let member_scale = ((end - start) as f32).sqrt().recip();
            for p in start..end {
                by_member.values[p] = member_scale * item_scale[by_member.indices[p] as usize];
            }
        }
        let by_item = by_member.transpose();
        Normalised {
            by_member,
            by_item,
            item_scale,
        }
    }

    pub fn members(&self) -> usize {
        self.by_member.rows
    }

    pub fn items(&self) -> usize {
        self.by_member.cols
    }

    /// `R̃ · X` for `X` items × `width` row-major: members × `width`.
    pub fn times_rows(&self, x: &[f32], width: usize) -> Vec<f32> {
        times(&self.by_member, x, width)
    }

    /// `R̃ᵀ · Y` for `Y` members × `width` row-major: items × `width`.
    pub fn transposed_times_rows(&self, y: &[f32], width: usize) -> Vec<f32> {
        times(&self.by_item, y, width)
    }

    /// `P̃ · X = R̃ᵀ R̃ X` for the items × `BLOCK` block `x`, on this thread, into `out` (items ×
    /// `BLOCK`); `members` is scratch (members × `BLOCK`).
    fn blur(&self, x: &[f32], members: &mut [f32], out: &mut [f32]) {
        for (u, row) in members.chunks_mut(BLOCK).enumerate() {
            row.fill(0.0);
            gather(&self.by_member, u, x, BLOCK, row);
        }
        for (i, row) in out.chunks_mut(BLOCK).enumerate() {
            row.fill(0.0);
            gather(&self.by_item, i, members, BLOCK, row);
        }
    }
}

/// `m · x` for `x` `m.cols` × `width` row-major, rows in parallel.
fn times(m: &SparseMatrix, x: &[f32], width: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m.rows * width];
    out.par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(r, row)| gather(m, r, x, width, row));
    out
}

/// `out += Σ_p value_p · x[index_p]` over row `r` of `m`, each `x` row `width` wide.
#[inline]
fn gather(m: &SparseMatrix, r: usize, x: &[f32], width: usize, out: &mut [f32]) {
    let (indices, values) = m.row(r);
    for (&j, &v) in indices.iter().zip(values) {
        let from = &x[j as usize * width..(j as usize + 1) * width];
        for (o, &f) in out.iter_mut().zip(from) {
            *o += v * f;
        }
    }
}

/// Trains BSPM on `matrix` (members × items; any non-zero entry counts as 1) on the caller's
/// rayon pool. `on_phase` is called from the pool's threads.
pub fn train(
    matrix: &SparseMatrix,
    params: &BspmParams,
    on_phase: &(dyn Fn(Phase) + Sync),
) -> Result<ItemWeights> {
    params.check().map_err(SharedError::Training)?;
    let started = Instant::now();
    let n = matrix.cols;
    let r = Normalised::new(matrix);
    let (basis, rank) = if params.low_pass_weight > 0.0 {
        subspace::low_pass_basis(&r, params.rank, POWER_STEPS, params.seed, &|share| {
            on_phase(Phase::Spectrum(share))
        })
    } else {
        (Vec::new(), 0)
    };
    on_phase(Phase::Filter(0.0));
    let blocks = n.div_ceil(BLOCK);
    let guard = TimeGuard {
        limit: params.max_minutes,
        started,
        filter_started: Instant::now(),
        blocks,
        judge_after: (2 * rayon::current_num_threads()).min(blocks),
    };
    let done = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let blocks_of_rows: Result<Vec<BlockRows>> = (0..blocks)
        .into_par_iter()
        .map_init(
            || Scratch::new(r.members(), n),
            |scratch, b| {
                if stopped.load(Ordering::Relaxed) {
                    return Ok(Vec::new());
                }
                let first = b * BLOCK;
                let rows = filter_block(&r, &basis, rank, params, first, scratch);
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                on_phase(Phase::Filter(finished as f64 / blocks as f64));
                if let Err(projected) = guard.check(finished, Instant::now()) {
                    stopped.store(true, Ordering::Relaxed);
                    return Err(SharedError::Training(format!(
                        "BSPM would take about {} to filter {n} items over {} interactions \
                         ({finished} of {blocks} blocks of item rows done), more than \
                         offline.bspm.max_minutes = {}; raise it (0: no limit), or train a \
                         family whose time grows with the interactions only (offline.family = \
                         \"ials\")",
                        minutes(projected),
                        matrix.nnz(),
                        params.max_minutes,
                    )));
                }
                Ok(rows)
            },
        )
        .collect();
    Ok(ItemWeights::from_rows(
        blocks_of_rows?.into_iter().flatten().collect(),
    ))
}

/// The pruned rows of one block of items: each row's kept `(item, weight)`.
type BlockRows = Vec<Vec<(u32, f32)>>;

/// Stops a fit whose projected time passes `offline.bspm.max_minutes`, judged from the pace of
/// the item rows filtered so far (the rows dominate: each is five passes over the interactions).
struct TimeGuard {
    /// Minutes; 0 means no limit.
    limit: f64,
    /// When the fit began (the low-pass basis before the rows counts too).
    started: Instant,
    filter_started: Instant,
    blocks: usize,
    /// Blocks finished before the pace is trusted (a couple per thread).
    judge_after: usize,
}

impl TimeGuard {
    /// `Err(projected)` if the whole fit, projected at the pace of `done` blocks by `now`,
    /// would take longer than the limit.
    fn check(&self, done: usize, now: Instant) -> std::result::Result<(), Duration> {
        if self.limit <= 0.0 || done < self.judge_after.max(1) {
            return Ok(());
        }
        let filtering = now.saturating_duration_since(self.filter_started);
        let left = filtering.mul_f64((self.blocks - done.min(self.blocks)) as f64 / done as f64);
        let projected = now.saturating_duration_since(self.started) + left;
        if projected.as_secs_f64() > self.limit * 60.0 {
            Err(projected)
        } else {
            Ok(())
        }
    }
}

/// `d` for a person: minutes below two hours, hours below two days, days beyond.
fn minutes(d: Duration) -> String {
    let m = d.as_secs_f64() / 60.0;
    if m < 120.0 {
        format!("{m:.0} min")
    } else if m < 48.0 * 60.0 {
        format!("{:.1} h", m / 60.0)
    } else {
        format!("{:.1} days", m / 1440.0)
    }
}

/// One thread's buffers for a block: items × `BLOCK` (four) and members × `BLOCK`.
struct Scratch {
    start: Vec<f32>,
    term: Vec<f32>,
    next: Vec<f32>,
    sum: Vec<f32>,
    members: Vec<f32>,
    row: Vec<f32>,
}

impl Scratch {
    fn new(members: usize, items: usize) -> Self {
        Scratch {
            start: vec![0.0; items * BLOCK],
            term: vec![0.0; items * BLOCK],
            next: vec![0.0; items * BLOCK],
            sum: vec![0.0; items * BLOCK],
            members: vec![0.0; members * BLOCK],
            row: vec![0.0; items],
        }
    }
}

/// Rows `first..first + BLOCK` of `F` (fewer at the end), each pruned to its `top_n` largest
/// weights off the diagonal.
fn filter_block(
    r: &Normalised,
    basis: &[f32],
    rank: usize,
    params: &BspmParams,
    first: usize,
    s: &mut Scratch,
) -> Vec<Vec<(u32, f32)>> {
    let n = r.items();
    let width = BLOCK.min(n - first);
    // Column c of the block is item first + c's row of F, kept as items × BLOCK.
    s.term.fill(0.0);
    for c in 0..width {
        s.term[(first + c) * BLOCK + c] = 1.0;
    }
    r.blur(&s.term, &mut s.members, &mut s.start);
    if rank > 0 {
        // start[j, c] += β · scale_i / scale_j · (Q Qᵀ)[i, j], i = first + c.
        s.next.fill(0.0);
        // SAFETY: `basis` is items × rank row-major and rows first..first+width exist (read
        // transposed: rank × width); `next` is items × BLOCK and distinct from both.
        unsafe {
            product(
                n,
                width,
                rank,
                s.next.as_mut_ptr(),
                BLOCK,
                false,
                basis.as_ptr(),
                rank,
                false,
                basis.as_ptr().add(first * rank),
                rank,
                true,
                1.0,
                Parallelism::None,
            );
        }
        for (j, (start, low)) in s
            .start
            .chunks_mut(BLOCK)
            .zip(s.next.chunks(BLOCK))
            .enumerate()
        {
            let scale_j = r.item_scale[j];
            if scale_j == 0.0 {
                continue;
            }
            for c in 0..width {
                let scale_i = r.item_scale[first + c];
                start[c] += params.low_pass_weight * scale_i / scale_j * low[c];
            }
        }
    }
    // Sharpening: sum = start · (I − tP̃ + (tP̃)²/2 − (tP̃)³/6 + (tP̃)⁴/24).
    s.sum.copy_from_slice(&s.start);
    std::mem::swap(&mut s.term, &mut s.start);
    if params.sharpen_time > 0.0 {
        for order in 1..=4 {
            r.blur(&s.term, &mut s.members, &mut s.next);
            let factor = -params.sharpen_time / order as f32;
            s.next.iter_mut().for_each(|t| *t *= factor);
            std::mem::swap(&mut s.term, &mut s.next);
            for (sum, &t) in s.sum.iter_mut().zip(&s.term) {
                *sum += t;
            }
        }
    }
    (0..width)
        .map(|c| {
            for (j, v) in s.row.iter_mut().enumerate() {
                *v = s.sum[j * BLOCK + c];
            }
            largest_of_row(&s.row, first + c, params.top_n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_matrix(members: usize, items: usize, density: f32, seed: u64) -> SparseMatrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let rows: Vec<Vec<u32>> = (0..members)
            .map(|_| {
                let mut row: Vec<u32> = (0..items as u32)
                    .filter(|_| rng.random::<f32>() < density)
                    .collect();
                if row.is_empty() {
                    row.push(rng.random_range(0..items as u32));
                }
                row
            })
            .collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        SparseMatrix::binary(&refs, items)
    }

    /// `R̃` dense, members × items, from the definition.
    fn dense_normalised(x: &SparseMatrix) -> Vec<Vec<f64>> {
        let counts = x.column_counts();
        (0..x.rows)
            .map(|u| {
                let (items, _) = x.row(u);
                let mut row = vec![0.0f64; x.cols];
                for &j in items {
                    row[j as usize] =
                        1.0 / ((items.len() as f64).sqrt() * (counts[j as usize] as f64).sqrt());
                }
                row
            })
            .collect()
    }

    fn multiply(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
        a.iter()
            .map(|row| {
                (0..b[0].len())
                    .map(|j| row.iter().zip(b).map(|(&x, r)| x * r[j]).sum())
                    .collect()
            })
            .collect()
    }

    fn transpose(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
        (0..a[0].len())
            .map(|j| a.iter().map(|r| r[j]).collect())
            .collect()
    }

    #[test]
    fn without_the_low_pass_filter_rows_are_the_blur_times_the_sharpening_polynomial() {
        let x = random_matrix(30, 12, 0.3, 7);
        let n = x.cols;
        let params = BspmParams {
            low_pass_weight: 0.0,
            sharpen_time: 1.5,
            top_n: n,
            ..Default::default()
        };
        let weights = train(&x, &params, &|_| {}).unwrap();
        let r = dense_normalised(&x);
        let p = multiply(&transpose(&r), &r);
        // F = P̃ · (I − tP̃ + (tP̃)²/2 − (tP̃)³/6 + (tP̃)⁴/24), term by term.
        let t = params.sharpen_time as f64;
        let mut f = p.clone();
        let mut term = p.clone();
        for order in 1..=4 {
            term = multiply(&term, &p);
            for row in term.iter_mut() {
                row.iter_mut().for_each(|v| *v *= -t / order as f64);
            }
            for (fr, tr) in f.iter_mut().zip(&term) {
                fr.iter_mut().zip(tr).for_each(|(a, b)| *a += b);
            }
        }
        for (i, want) in f.iter().enumerate() {
            let (cols, values) = weights.row(i);
            for (j, &wanted) in want.iter().enumerate() {
                let got = cols
                    .iter()
                    .position(|&c| c as usize == j)
                    .map(|p| values[p] as f64);
                if j == i || wanted <= 0.0 {
                    assert_eq!(
                        got, None,
                        "row {i} keeps only positive weights off the diagonal"
                    );
                } else {
                    let got = got.unwrap_or_else(|| panic!("row {i} lost item {j}"));
                    assert!(
                        (got - wanted).abs() < 1e-4,
                        "F[{i},{j}] = {got}, want {wanted}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_low_pass_basis_is_orthonormal_and_spans_the_rows_at_full_rank() {
        let x = random_matrix(9, 20, 0.3, 11);
        let r = Normalised::new(&x);
        let (q, rank) = subspace::low_pass_basis(&r, 64, 4, 1, &|_| {});
        assert!(rank <= 9, "no more directions than members: {rank}");
        // Every row of R̃ is unchanged by the projection Q·Qᵀ.
        let dense = dense_normalised(&x);
        for row in &dense {
            let coords: Vec<f64> = (0..rank)
                .map(|c| (0..x.cols).map(|j| row[j] * q[j * rank + c] as f64).sum())
                .collect();
            for j in 0..x.cols {
                let back: f64 = (0..rank).map(|c| coords[c] * q[j * rank + c] as f64).sum();
                assert!((back - row[j]).abs() < 1e-4, "{back} vs {}", row[j]);
            }
        }
        for a in 0..rank {
            for b in 0..rank {
                let dot: f64 = (0..x.cols)
                    .map(|j| q[j * rank + a] as f64 * q[j * rank + b] as f64)
                    .sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-4, "column {a}·{b} = {dot}");
            }
        }
    }

    #[test]
    fn the_low_pass_filter_adds_its_weighted_projection() {
        let x = random_matrix(40, 16, 0.25, 5);
        let base = BspmParams {
            low_pass_weight: 0.0,
            sharpen_time: 0.0,
            top_n: 16,
            ..Default::default()
        };
        let with = BspmParams {
            low_pass_weight: 0.5,
            rank: 64,
            ..base
        };
        let plain = train(&x, &base, &|_| {}).unwrap();
        let filtered = train(&x, &with, &|_| {}).unwrap();
        // With more members than items and every direction kept, the row space of R̃ is every
        // item some member has: Q·Qᵀ is the identity there, so only the diagonal (never kept)
        // changes and the rows stay as the blur made them.
        // (A pair the blur leaves at 0 may come out at rounding level, so rows are compared
        // dense.)
        let dense = |w: &ItemWeights, i: usize| {
            let mut row = [0.0f32; 16];
            let (cols, values) = w.row(i);
            cols.iter()
                .zip(values)
                .for_each(|(&j, &v)| row[j as usize] = v);
            row
        };
        let mut largest_change = 0.0f32;
        for i in 0..16 {
            for (a, b) in dense(&plain, i).iter().zip(dense(&filtered, i)) {
                largest_change = largest_change.max((a - b).abs());
            }
        }
        assert!(largest_change < 1e-4, "{largest_change}");
        // Below full rank it does change them.
        let low = train(&x, &BspmParams { rank: 2, ..with }, &|_| {}).unwrap();
        let changed = (0..16).any(|i| {
            dense(&plain, i)
                .iter()
                .zip(dense(&low, i))
                .any(|(a, b)| (a - b).abs() > 1e-3)
        });
        assert!(changed);
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        let x = random_matrix(5, 5, 0.5, 1);
        let error = train(
            &x,
            &BspmParams {
                sharpen_time: -1.0,
                ..Default::default()
            },
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("offline.bspm.sharpen_time"), "{error}");
    }

    #[test]
    fn the_time_guard_projects_the_fit_from_the_pace_of_the_rows() {
        let t0 = Instant::now();
        let guard = TimeGuard {
            limit: 1.0,
            started: t0,
            filter_started: t0 + Duration::from_secs(10),
            blocks: 100,
            judge_after: 4,
        };
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Too few blocks to judge by, however slow.
        assert!(guard.check(3, at(50)).is_ok());
        // 4 blocks in 2 s: 48 s to go after 12 s, one minute in all.
        assert!(guard.check(4, at(12)).is_ok());
        // 4 blocks in 3 s: 72 s to go after 13 s.
        let projected = guard.check(4, at(13)).unwrap_err();
        assert_eq!(projected, Duration::from_secs(85));
        // No limit.
        let unlimited = TimeGuard {
            limit: 0.0,
            ..guard
        };
        assert!(unlimited.check(4, at(1000)).is_ok());
    }

    #[test]
    fn a_fit_projected_past_its_limit_stops_with_the_setting_named() {
        let x = random_matrix(60, 300, 0.05, 3);
        let error = train(
            &x,
            &BspmParams {
                rank: 8,
                top_n: 10,
                max_minutes: 1e-9,
                ..Default::default()
            },
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("offline.bspm.max_minutes"), "{error}");
        assert!(error.contains("300 items"), "{error}");
        // The same fit with the default limit finishes.
        let weights = train(
            &x,
            &BspmParams {
                rank: 8,
                top_n: 10,
                ..Default::default()
            },
            &|_| {},
        );
        assert!(weights.is_ok());
    }
}
