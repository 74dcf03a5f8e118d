//! Top-k selection over a whole catalog's scores: what every family's scorer ends with.

use std::cmp::Ordering;

/// A scored item index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub index: u32,
    pub score: f32,
}

/// The `k` highest of `scores` among `allowed` indices, best first; ties go to the lower index.
pub fn select_top(scores: &[f32], k: usize, allowed: &impl Fn(u32) -> bool) -> Vec<Scored> {
    let mut top = TopK::new(k);
    top.offer(scores, 0, allowed);
    top.into_best()
}

/// The `k` highest scores offered so far, fed a block of the catalog at a time (what a scan that
/// scores many members per pass keeps for each of them).
///
/// Scores above the running threshold are appended to a pool; when the pool reaches `2k` it is
/// cut to its best `k` by `select_nth_unstable` and the threshold becomes the `k`-th best. That
/// is linear on average and cheaper than a heap, whose pushes and pops dominate when thousands of
/// scores beat an early, low threshold. Once the threshold is set, a run of 16 scores is first
/// tested as a whole (a branch-free comparison the compiler vectorises) and skipped unless one of
/// them is higher. `allowed` is asked only about scores above the threshold.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    pool: Vec<Scored>,
    threshold: f32,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            pool: Vec::with_capacity(2 * k),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// Offers `scores[j]` as the score of item `first + j`.
    pub fn offer<F: Fn(u32) -> bool + ?Sized>(&mut self, scores: &[f32], first: u32, allowed: &F) {
        const RUN: usize = 16;
        if self.k == 0 {
            return;
        }
        for (r, run) in scores.chunks(RUN).enumerate() {
            let threshold = self.threshold;
            if !run.iter().fold(false, |any, &s| any | (s > threshold)) {
                continue;
            }
            for (j, &score) in run.iter().enumerate() {
                self.push(first + (r * RUN + j) as u32, score, allowed);
            }
        }
    }

    /// The score an item must beat to enter: what a scan may test whole runs of scores against
    /// before offering them (it only rises).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Offers the scores of the runs of 8 a scan flagged: bit `g` of `flags` set when
    /// `scores[8g..8g + 8]` holds one above a threshold no higher than [`TopK::threshold`] was
    /// when the run was scored — the same items as [`TopK::offer`] of all of `scores`, without
    /// looking at the rest again.
    pub fn offer_flagged<F: Fn(u32) -> bool + ?Sized>(
        &mut self,
        scores: &[f32],
        first: u32,
        flags: &[u64],
        allowed: &F,
    ) {
        const RUN: usize = 8;
        if self.k == 0 {
            return;
        }
        for (w, &word) in flags.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let run = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = (run * RUN).min(scores.len());
                let end = (start + RUN).min(scores.len());
                // Which of the run beat the threshold, without a branch per score: most of a
                // flagged run does not.
                let mut above = 0u32;
                for (j, &score) in scores[start..end].iter().enumerate() {
                    above |= u32::from(score > self.threshold) << j;
                }
                while above != 0 {
                    let j = above.trailing_zeros() as usize;
                    above &= above - 1;
                    self.push(first + (start + j) as u32, scores[start + j], allowed);
                }
            }
        }
    }

    #[inline]
    fn push<F: Fn(u32) -> bool + ?Sized>(&mut self, index: u32, score: f32, allowed: &F) {
        if score > self.threshold && score.is_finite() && allowed(index) {
            self.pool.push(Scored { index, score });
            if self.pool.len() == 2 * self.k {
                keep_best(&mut self.pool, self.k);
                self.threshold = self.pool[self.k - 1].score;
            }
        }
    }

    /// The best `k` offered, in no order.
    pub fn into_pool(self) -> Vec<Scored> {
        best_unordered(self.pool, self.k)
    }

    /// The best `k` offered, best first.
    pub fn into_best(self) -> Vec<Scored> {
        best_of(self.pool, self.k)
    }
}

/// Cuts `items` to its best `k` (unordered, but the `k`-th best last).
fn keep_best(items: &mut Vec<Scored>, k: usize) {
    if items.len() > k {
        items.select_nth_unstable_by(k - 1, best_first);
        items.truncate(k);
    }
}

fn best_first(a: &Scored, b: &Scored) -> Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

fn sort_best_first(items: &mut [Scored]) {
    items.sort_unstable_by(best_first);
}

/// The best `k` of `items`, best first.
pub fn best_of(items: Vec<Scored>, k: usize) -> Vec<Scored> {
    let mut items = best_unordered(items, k);
    sort_best_first(&mut items);
    items
}

/// The best `k` of `items`, in no order (a selection, no sort).
pub fn best_unordered(mut items: Vec<Scored>, k: usize) -> Vec<Scored> {
    if k == 0 {
        items.clear();
    } else {
        keep_best(&mut items, k);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_top_equals_a_full_sort_with_ties_filters_and_non_finite_scores() {
        // Few distinct values (many ties), some NaN and infinities, an index filter, and sizes
        // that make the pool cut many times, once, or never.
        let scores: Vec<f32> = (0..5_000u32)
            .map(|i| match i % 97 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                _ => ((i.wrapping_mul(2_654_435_761) >> 7) % 50) as f32,
            })
            .collect();
        let allowed = |i: u32| i % 7 != 3;
        for k in [1, 5, 100, 1_000, 10_000] {
            let got: Vec<(u32, f32)> = select_top(&scores, k, &allowed)
                .into_iter()
                .map(|s| (s.index, s.score))
                .collect();
            let mut want: Vec<(u32, f32)> = scores
                .iter()
                .enumerate()
                .map(|(i, &s)| (i as u32, s))
                .filter(|&(i, s)| s.is_finite() && allowed(i))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(k);
            assert_eq!(got, want, "k = {k}");
            // Fed in uneven blocks, the collector keeps the same items.
            let mut top = TopK::new(k);
            let mut first = 0;
            for (b, size) in [1usize, 15, 16, 17, 1000, 333].iter().cycle().enumerate() {
                if first >= scores.len() {
                    break;
                }
                let end = (first + size + b % 3).min(scores.len());
                top.offer(&scores[first..end], first as u32, &allowed);
                first = end;
            }
            assert_eq!(pairs(top), want, "k = {k}, in blocks");
            // Offered by flagged runs of 8, flagged against a threshold taken before each block
            // (as a scan does), the collector keeps the same items.
            let mut top = TopK::new(k);
            for (b, block) in scores.chunks(200).enumerate() {
                let threshold = top.threshold();
                let mut flags = [0u64; 1];
                for (g, run) in block.chunks(8).enumerate() {
                    let above = run.iter().any(|&s| s > threshold);
                    flags[0] |= u64::from(above) << g;
                }
                top.offer_flagged(block, (b * 200) as u32, &flags, &allowed);
            }
            assert_eq!(pairs(top), want, "k = {k}, flagged");
        }
    }

    fn pairs(top: TopK) -> Vec<(u32, f32)> {
        top.into_best()
            .into_iter()
            .map(|s| (s.index, s.score))
            .collect()
    }
}
