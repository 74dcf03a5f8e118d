//! Whole-catalog scoring: one member vector against every item, then a partial top-k.
//!
//! The item factors are held twice: exact `f32` rows (in memory, or mapped from the version's raw
//! file), and `i8` codes with one scale per item, tiled for the scan (`codes.rs`). A query
//! quantises the member vector, scores every item with integer dot products — a quarter of the
//! memory traffic of `f32`, which is what bounds a large scan — keeps the best `candidates(k)` by
//! that approximate score, then re-scores those exactly in `f32` and returns the top `k` by exact
//! score. The approximation only chooses the candidate pool; every returned score is exact. Nothing
//! is allocated per item: the score buffer is reused per thread.
//!
//! Many members can be scored in one pass ([`ItemMatrix::top_k_batch`]): each tile of codes is
//! scored for several members per load, a block of rows at a time whose scores stay in cache, so
//! a catalog larger than the CPU's caches crosses the memory bus once per batch instead of once
//! per member, and the kernel's multiplies, not its loads, bound a batch — what bounds a
//! million-item scan under concurrent load. The scan flags the runs of eight scores above each
//! member's running threshold, and only those are offered to the member's top-k. A large
//! catalog's pass is cut into parts scanned on the rayon pool's threads at once, so one member
//! alone is answered by every core.

use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(test)]
use super::codes::Kernel;
use super::codes::{ItemCodes, MemberCodes, ScanBlock, TILE};
use crate::kernels::dot as dot_f32;
use crate::model::top_k::{best_of, best_unordered, select_top, Scored, TopK};

/// Item factors laid out for scoring.
#[derive(Debug, Clone)]
pub struct ItemMatrix {
    n: usize,
    k: usize,
    /// Row-major `n × k`.
    factors: Rows,
    /// `factors[i] ≈ scale_i · codes_i`, tiled for the scan.
    codes: ItemCodes,
    /// `‖y_i‖`, for cosine similarity.
    norms: Vec<f32>,
}

/// The exact rows: held in memory, or mapped from a version's raw factor file — then the rows a
/// request re-scores are read from the file ([`MappedRows`]), and only loading and whole-catalog
/// exact scans read through the mapping.
#[derive(Debug, Clone)]
enum Rows {
    Owned(Vec<f32>),
    Mapped(std::sync::Arc<MappedRows>),
}

/// A version's raw factor file: mapped (the load reads it through the mapping a chunk at a time)
/// and open (a request's re-scored rows are read with `pread`, so they stay in the kernel's page
/// cache without becoming this process's resident memory).
#[derive(Debug)]
struct MappedRows {
    map: memmap2::Mmap,
    file: std::fs::File,
}

impl MappedRows {
    /// Row `index` (`k` values) into `out`: read from the file, or through the mapping when the
    /// read fails (it then faults in like any mapped page).
    fn read_row(&self, index: usize, k: usize, out: &mut [f32]) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            // SAFETY: `out` is `k` initialised f32 values viewed as their `4k` bytes; every bit
            // pattern is a valid f32, and the file's bytes are little-endian f32 (checked when
            // mapped) on a little-endian target.
            let raw =
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), k * 4) };
            if self.file.read_exact_at(raw, (index * k * 4) as u64).is_ok() {
                return;
            }
        }
        let rows = Rows::view(&self.map);
        out.copy_from_slice(&rows[index * k..(index + 1) * k]);
    }
}

impl Rows {
    fn view(map: &memmap2::Mmap) -> &[f32] {
        // SAFETY: the mapping starts on a page boundary (aligned for f32), its length is a
        // multiple of 4 (checked in `ItemMatrix::map`), every bit pattern is an f32, and the
        // bytes are little-endian f32 on a little-endian target (checked there too).
        unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<f32>(), map.len() / 4) }
    }
}

impl std::ops::Deref for Rows {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Rows::Owned(rows) => rows,
            Rows::Mapped(mapped) => Rows::view(&mapped.map),
        }
    }
}

thread_local! {
    /// One mapped row read from the file.
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A batched scan's block of scores (member-major) and its flag words.
    static BLOCK: RefCell<(Vec<f32>, Vec<u64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Bytes of one block's scores, every member of the batch together: they stay in the core's L2
/// cache between the scan that writes them and the top-k that reads the flagged runs.
const BLOCK_SCORE_BYTES: usize = 128 * 1024;

/// Rows per block of a batched scan of `members` members: a multiple of 64 (whole tiles, whole
/// flag words).
fn block_rows(members: usize) -> usize {
    (BLOCK_SCORE_BYTES / (4 * members.max(1)) / 64 * 64).clamp(64, 2048)
}

/// Rows per chunk while loading ([`ItemMatrix::map_visiting`] drops each mapped chunk once read):
/// a multiple of 1,024, so every chunk starts on a page of the file whatever the width.
const MAPPED_CHUNK_ROWS: usize = 64 * 1024;

/// The fewest rows a pass gives one thread: below it, splitting costs more than it saves.
const MIN_PART_ROWS: usize = 32 * 1024;

/// One member of a batched scan ([`ItemMatrix::top_k_batch`]).
pub struct BatchQuery<'a> {
    pub user: &'a [f32],
    /// Items returned.
    pub k: usize,
    /// Which items may be returned; asked only about items that would make the candidate pool.
    pub allowed: &'a (dyn Fn(u32) -> bool + Sync + 'a),
}

/// Size of the candidate pool re-scored exactly for a top-`k`.
pub fn candidates(k: usize) -> usize {
    (4 * k).max(k + 200)
}

impl ItemMatrix {
    /// Lays out row-major `n × k` factors.
    pub fn new(factors: Vec<f32>, k: usize) -> Self {
        Self::from_rows(Rows::Owned(factors), k, |_, _| ())
    }

    /// Maps the raw little-endian `f32` rows of `path` (`n × k`, see
    /// [`crate::artifact::files::ITEM_FACTORS_RAW`]) instead of reading them into memory: the
    /// quantised rows, scales and norms are computed from it once, and afterwards only the rows a
    /// request re-scores are read. The file must not change while it is mapped (a published
    /// version never does).
    pub fn map(path: &std::path::Path, k: usize) -> std::io::Result<Self> {
        Self::map_visiting(path, k, |_, _| ())
    }

    /// [`ItemMatrix::map`], showing `visit` every row — a chunk at a time, with the index of its
    /// first row — in the one pass that quantises them. Each chunk's pages leave this process's
    /// memory once visited (they stay in the page cache), so loading never holds more than a
    /// chunk of the file resident: a server swapping in a large catalog needs the new codes, not
    /// the new factors, beside the old ones.
    pub fn map_visiting(
        path: &std::path::Path,
        k: usize,
        visit: impl FnMut(usize, &[f32]),
    ) -> std::io::Result<Self> {
        let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        if cfg!(target_endian = "big") {
            return Err(invalid("raw factor files are little-endian".into()));
        }
        let file = std::fs::File::open(path)?;
        // SAFETY: the file belongs to a published version, which is never modified or truncated
        // while a server uses it (versions are immutable; pruning keeps served ones).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        if k == 0 || !map.len().is_multiple_of(4 * k) {
            return Err(invalid(format!(
                "{} bytes are not rows of {k} f32 values",
                map.len()
            )));
        }
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Self::from_rows(
            Rows::Mapped(std::sync::Arc::new(MappedRows { map, file })),
            k,
            visit,
        ))
    }

    /// Norms and codes of every row, a chunk of [`MAPPED_CHUNK_ROWS`] at a time, each chunk shown
    /// to `visit` first; mapped rows leave this process's memory chunk by chunk.
    fn from_rows(factors: Rows, k: usize, mut visit: impl FnMut(usize, &[f32])) -> Self {
        assert!(
            k > 0 && factors.len().is_multiple_of(k),
            "factors are not n × {k}"
        );
        let n = factors.len() / k;
        let mut codes = ItemCodes::zeroed(n, k);
        let mut norms = Vec::with_capacity(n);
        for (c, chunk) in factors.chunks(MAPPED_CHUNK_ROWS * k).enumerate() {
            let first = c * MAPPED_CHUNK_ROWS;
            visit(first, chunk);
            norms.extend(chunk.chunks_exact(k).map(|row| dot_f32(row, row).sqrt()));
            codes.fill(first, chunk, k);
            if let Rows::Mapped(mapped) = &factors {
                // SAFETY: a shared, read-only file mapping: MADV_DONTNEED only drops resident
                // pages, which read back unchanged from the file, so the slices borrowed from it
                // stay valid. The offset is a page boundary (`MAPPED_CHUNK_ROWS` rows of 4-byte
                // values).
                let _ = unsafe {
                    mapped.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first * k * 4,
                        chunk.len() * 4,
                    )
                };
            }
        }
        ItemMatrix {
            n,
            k,
            codes,
            factors,
            norms,
        }
    }

    /// Whether the exact rows are mapped from a file rather than held.
    pub fn is_mapped(&self) -> bool {
        matches!(self.factors, Rows::Mapped(_))
    }

    /// Drops the mapped rows' pages from this process's memory; they stay in the kernel's page
    /// cache and fault back in on the next read. A server calls this now and then, so that the
    /// rows a whole-catalog exact scan read through the mapping (an exact `SimilarItems`, say)
    /// do not stay resident. Does nothing for held rows.
    pub fn release_mapped_rows(&self) {
        if let Rows::Mapped(mapped) = &self.factors {
            // SAFETY: a shared, read-only mapping of a file that never changes while mapped:
            // MADV_DONTNEED only drops resident pages, which read back unchanged, so every slice
            // borrowed from the mapping stays valid.
            let _ = unsafe {
                mapped
                    .map
                    .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
            };
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    #[inline]
    pub fn factors(&self) -> usize {
        self.k
    }

    /// Row-major `n × k` exact factors.
    #[inline]
    pub fn as_slice(&self) -> &[f32] {
        &self.factors
    }

    #[inline]
    pub fn row(&self, index: usize) -> &[f32] {
        &self.factors[index * self.k..(index + 1) * self.k]
    }

    #[inline]
    pub fn norm(&self, index: usize) -> f32 {
        self.norms[index]
    }

    /// Bytes held for scoring (exact rows unless mapped, quantised rows, scales and norms).
    pub fn heap_bytes(&self) -> usize {
        let exact = match &self.factors {
            Rows::Owned(rows) => rows.len() * 4,
            Rows::Mapped(_) => 0,
        };
        exact + self.codes.heap_bytes() + self.n * 4
    }

    /// Exact score of one item. A mapped row is read from the file rather than through the
    /// mapping: the few hundred rows a request re-scores then never count in this process's
    /// resident memory.
    #[inline]
    pub fn score(&self, index: usize, user: &[f32]) -> f32 {
        self.with_row(index, |row| dot_f32(row, user))
    }

    /// Calls `f` with row `index`: borrowed when held, read from the file into a buffer of this
    /// thread's when mapped (see [`ItemMatrix::score`]; `f` must not read a row this way itself).
    pub fn with_row<T>(&self, index: usize, f: impl FnOnce(&[f32]) -> T) -> T {
        match &self.factors {
            Rows::Owned(_) => f(self.row(index)),
            Rows::Mapped(mapped) => ROW.with(|buffer| {
                let mut row = buffer.borrow_mut();
                row.resize(self.k, 0.0);
                mapped.read_row(index, self.k, &mut row);
                f(&row)
            }),
        }
    }

    /// Exact scores of every item into `out`.
    pub fn score_all_exact(&self, user: &[f32], out: &mut [f32]) {
        assert_eq!(user.len(), self.k);
        for (row, o) in self.factors.chunks_exact(self.k).zip(out.iter_mut()) {
            *o = dot_f32(row, user);
        }
    }

    /// Approximate (quantised) scores of every item into `out`.
    pub fn score_all_quantized(&self, user: &[f32], out: &mut [f32]) {
        assert_eq!(user.len(), self.k);
        let member = MemberCodes::new(user, self.codes.width());
        let stride = self.n.next_multiple_of(TILE);
        let mut scores = vec![0.0; stride];
        let mut flags = vec![0u64; stride.div_ceil(TILE * 64).max(1)];
        let words = flags.len();
        let never = [f32::INFINITY];
        let members = [&member];
        let mut block = ScanBlock {
            scores: &mut scores,
            stride,
            thresholds: &never,
            flags: &mut flags,
            words,
        };
        self.codes.scan(0..self.n, &members, &mut block);
        out[..self.n].copy_from_slice(&scores[..self.n]);
    }

    /// The `k` best items for `user` among those `allowed`, by exact score, best first.
    pub fn top_k(
        &self,
        user: &[f32],
        k: usize,
        allowed: impl Fn(u32) -> bool + Sync,
    ) -> Vec<Scored> {
        let query = BatchQuery {
            user,
            k,
            allowed: &allowed,
        };
        self.top_k_batch(std::slice::from_ref(&query))
            .pop()
            .expect("one answer per query")
    }

    /// Each query's `k` best items among its `allowed`, by exact score, best first — from one pass
    /// over the item codes for the whole batch.
    ///
    /// The codes are read a block of [`BLOCK_BYTES`] at a time; each member is scored against the
    /// block while it is in cache and keeps its own candidate pool ([`candidates`]`(k)`, by
    /// quantised score), which is then re-scored exactly. A member's answer is exactly what
    /// [`ItemMatrix::top_k`] gives them alone: batching changes the memory traffic, not the result.
    pub fn top_k_batch(&self, queries: &[BatchQuery<'_>]) -> Vec<Vec<Scored>> {
        for q in queries {
            assert_eq!(q.user.len(), self.k, "a member vector of the wrong width");
        }
        let width = self.codes.width();
        let codes: Vec<MemberCodes> = queries
            .iter()
            .map(|q| MemberCodes::new(q.user, width))
            .collect();
        // The catalog is cut into parts of at least `MIN_PART_ROWS`, one per thread of the
        // pool; each part keeps every member's own candidate pool, and the parts' pools are
        // merged by approximate score into the pool one scan of the whole catalog would keep —
        // the same cut for a batch of one, so batching never changes an answer.
        let parts = self
            .n
            .div_ceil(MIN_PART_ROWS)
            .clamp(1, rayon::current_num_threads().max(1));
        let rows = self.n.div_ceil(parts).next_multiple_of(TILE).max(TILE);
        let pools: Vec<Vec<TopK>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let range = (p * rows).min(self.n)..((p + 1) * rows).min(self.n);
                self.candidates_in(range, queries, &codes)
            })
            .collect();
        let mut merged: Vec<Vec<Scored>> = vec![Vec::new(); queries.len()];
        for part in pools {
            for (all, pool) in merged.iter_mut().zip(part) {
                all.extend(pool.into_pool());
            }
        }
        queries
            .par_iter()
            .zip(merged)
            .map(|(query, pool)| {
                let pool = best_unordered(pool, candidates(query.k));
                let exact: Vec<Scored> = pool
                    .into_iter()
                    .map(|s| Scored {
                        index: s.index,
                        score: self.score(s.index as usize, query.user),
                    })
                    .collect();
                best_of(exact, query.k)
            })
            .collect()
    }

    /// Every query's candidate pool among the items in `range` (its start on a tile), scanned a
    /// block at a time.
    fn candidates_in(
        &self,
        range: std::ops::Range<usize>,
        queries: &[BatchQuery<'_>],
        codes: &[MemberCodes],
    ) -> Vec<TopK> {
        let mut pools: Vec<TopK> = queries
            .iter()
            .map(|q| TopK::new(if q.k == 0 { 0 } else { candidates(q.k) }))
            .collect();
        let active: Vec<usize> = (0..queries.len()).filter(|&q| queries[q].k > 0).collect();
        if active.is_empty() || range.is_empty() {
            return pools;
        }
        let members: Vec<&MemberCodes> = active.iter().map(|&q| &codes[q]).collect();
        let block = block_rows(members.len());
        // A member's scores start a cache line past a multiple of 4 KiB from the previous
        // member's: rows a power of two apart would all fall in the same sets of the L1 cache,
        // and the scan writes a tile's scores for every member of the batch at once.
        let stride = block + 16;
        let words = (block / TILE).div_ceil(64);
        BLOCK.with(|buffers| {
            let (scores, flags) = &mut *buffers.borrow_mut();
            scores.resize(members.len() * stride, 0.0);
            flags.resize(members.len() * words, 0);
            let mut thresholds = vec![0.0f32; members.len()];
            let mut start = range.start;
            while start < range.end {
                let end = (start + block).min(range.end);
                for (threshold, &q) in thresholds.iter_mut().zip(&active) {
                    *threshold = pools[q].threshold();
                }
                flags.fill(0);
                let mut written = ScanBlock {
                    scores,
                    stride,
                    thresholds: &thresholds,
                    flags,
                    words,
                };
                self.codes.scan(start..end, &members, &mut written);
                for (m, &q) in active.iter().enumerate() {
                    pools[q].offer_flagged(
                        &scores[m * stride..m * stride + (end - start)],
                        start as u32,
                        &flags[m * words..(m + 1) * words],
                        queries[q].allowed,
                    );
                }
                start = end;
            }
        });
        pools
    }

    /// The `k` best items by exact score over the whole catalog (the reference `top_k` is measured
    /// against, and the path for small catalogs).
    pub fn top_k_exact(
        &self,
        user: &[f32],
        k: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Vec<Scored> {
        SCORES.with(|buffer| {
            let mut scores = buffer.borrow_mut();
            scores.resize(self.n, 0.0);
            self.score_all_exact(user, &mut scores);
            select_top(&scores, k, &allowed)
        })
    }

    /// The `k` items most similar to item `index` by cosine similarity, the item itself left out.
    pub fn similar(&self, index: usize, k: usize, allowed: impl Fn(u32) -> bool) -> Vec<Scored> {
        let norm = self.norms[index];
        if norm == 0.0 {
            return Vec::new();
        }
        let query: Vec<f32> = self.with_row(index, |row| row.iter().map(|x| x / norm).collect());
        SCORES.with(|buffer| {
            let mut scores = buffer.borrow_mut();
            scores.resize(self.n, 0.0);
            self.score_all_exact(&query, &mut scores);
            for (s, n) in scores.iter_mut().zip(&self.norms) {
                *s = if *n > 0.0 { *s / n } else { f32::NEG_INFINITY };
            }
            select_top(&scores, k, &|i| i as usize != index && allowed(i))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_matrix(n: usize, k: usize, seed: u64) -> (ItemMatrix, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let factors: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let user: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
        (ItemMatrix::new(factors, k), user)
    }

    fn naive_top(
        m: &ItemMatrix,
        user: &[f32],
        k: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        let mut all: Vec<(u32, f32)> = (0..m.len())
            .filter(|&i| allowed(i as u32))
            .map(|i| {
                let s: f32 = m.row(i).iter().zip(user).map(|(a, b)| a * b).sum();
                (i as u32, s)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(k);
        all.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn exact_top_k_matches_a_full_sort() {
        let (m, user) = random_matrix(3000, 37, 1);
        let got: Vec<u32> = m
            .top_k_exact(&user, 50, |_| true)
            .iter()
            .map(|s| s.index)
            .collect();
        assert_eq!(got, naive_top(&m, &user, 50, |_| true));
    }

    #[test]
    fn quantized_top_k_finds_the_exact_top_k_with_exact_scores() {
        let (m, user) = random_matrix(20_000, 64, 2);
        let got = m.top_k(&user, 100, |i| i % 7 != 0);
        let want = naive_top(&m, &user, 100, |i| i % 7 != 0);
        let got_ids: Vec<u32> = got.iter().map(|s| s.index).collect();
        assert_eq!(
            got_ids, want,
            "the re-scored pool holds the whole exact top-100"
        );
        for s in &got {
            assert_eq!(
                s.score,
                m.score(s.index as usize, &user),
                "scores are exact"
            );
            assert!(s.index % 7 != 0, "filtered items never come back");
        }
    }

    #[test]
    fn a_batched_scan_answers_each_member_as_if_alone() {
        // 5,000 rows span several blocks (the last one partial); members differ in k, filter
        // and vector (one is zero).
        let (m, _) = random_matrix(5_000, 64, 6);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut users: Vec<Vec<f32>> = (0..6)
            .map(|_| (0..64).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        users[3] = vec![0.0; 64];
        let filters: Vec<Box<dyn Fn(u32) -> bool + Sync>> = vec![
            Box::new(|_| true),
            Box::new(|i| i % 3 == 0),
            Box::new(|i| i > 4_000),
            Box::new(|_| true),
            Box::new(|_| false),
            Box::new(|i| i % 2 == 1),
        ];
        let ks = [10, 100, 7, 20, 5, 0];
        let queries: Vec<BatchQuery> = users
            .iter()
            .zip(&filters)
            .zip(ks)
            .map(|((user, allowed), k)| BatchQuery {
                user,
                k,
                allowed: allowed.as_ref(),
            })
            .collect();
        let batched = m.top_k_batch(&queries);
        assert_eq!(batched.len(), 6);
        for (q, got) in queries.iter().zip(&batched) {
            let alone = m.top_k(q.user, q.k, q.allowed);
            assert_eq!(got, &alone, "k {}", q.k);
            let nothing_allowed = q.k == 5;
            assert_eq!(got.len(), if nothing_allowed { 0 } else { q.k });
            if q.user.iter().any(|&x| x != 0.0) {
                let ids: Vec<u32> = got.iter().map(|s| s.index).collect();
                assert_eq!(ids, naive_top(&m, q.user, q.k, q.allowed), "k {}", q.k);
            }
        }
    }

    #[test]
    fn mapped_rows_score_like_held_rows() {
        let (held, user) = random_matrix(2_000, 32, 8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.f32");
        crate::artifact::write_raw_factors(&path, held.as_slice()).unwrap();
        let mapped = ItemMatrix::map(&path, 32).unwrap();
        assert!(mapped.is_mapped() && !held.is_mapped());
        assert_eq!(mapped.len(), 2_000);
        assert_eq!(
            mapped.as_slice(),
            held.as_slice(),
            "rows read back after loading dropped them"
        );
        assert_eq!(
            mapped.top_k(&user, 50, |i| i % 5 != 0),
            held.top_k(&user, 50, |i| i % 5 != 0)
        );
        assert!(mapped.heap_bytes() < held.heap_bytes());
        // A file that is not whole rows is refused.
        std::fs::write(&path, [0u8; 4 * 32 + 2]).unwrap();
        let refused = ItemMatrix::map(&path, 32).unwrap_err();
        assert!(refused.to_string().contains("not rows of 32"), "{refused}");
    }

    /// Random `n × k` factors written as a raw factor file in a temporary directory (kept alive
    /// by the returned guard).
    #[cfg(target_os = "linux")]
    fn raw_factor_file(
        n: usize,
        k: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> (tempfile::TempDir, std::path::PathBuf, Vec<f32>) {
        let factors: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.f32");
        crate::artifact::write_raw_factors(&path, &factors).unwrap();
        (dir, path, factors)
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_mapped_load_holds_one_chunk_of_the_file_at_a_time() {
        use crate::memory::resident_kib;
        // 5 chunks of 16-wide rows: 20 MiB of file, 4 MiB per chunk.
        let (k, n) = (16, 5 * MAPPED_CHUNK_ROWS);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (_dir, path, factors) = raw_factor_file(n, k, &mut rng);
        let chunk_kib = (MAPPED_CHUNK_ROWS * k * 4 / 1024) as u64;
        let mut most = 0;
        let mut visited = 0;
        let mapped = ItemMatrix::map_visiting(&path, k, |first, rows| {
            assert_eq!(first, visited, "chunks in order");
            assert_eq!(rows, &factors[first * k..first * k + rows.len()]);
            visited += rows.len() / k;
            most = most.max(resident_kib(&path));
        })
        .unwrap();
        assert_eq!(visited, n);
        assert!(most > 0, "the visits read the file through the mapping");
        assert!(
            most <= 2 * chunk_kib,
            "{most} KiB resident while loading, a chunk is {chunk_kib} KiB"
        );
        assert!(
            resident_kib(&path) <= chunk_kib,
            "loaded: the pages are dropped"
        );
        // Serving reads rows back in; releasing drops them again.
        let read: f32 = (0..n).step_by(7).map(|i| mapped.row(i)[0]).sum();
        assert!(read.is_finite() && resident_kib(&path) > 4 * chunk_kib);
        mapped.release_mapped_rows();
        assert!(
            resident_kib(&path) <= 4,
            "released: {} KiB",
            resident_kib(&path)
        );
        let held = ItemMatrix::new(factors, k);
        let user: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
        assert_eq!(
            mapped.top_k(&user, 30, |_| true),
            held.top_k(&user, 30, |_| true)
        );
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(mapped.norm(i), held.norm(i));
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn re_scored_mapped_rows_are_read_from_the_file_not_kept_resident() {
        use crate::memory::resident_kib;
        let (k, n) = (32, 2 * MAPPED_CHUNK_ROWS);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (_dir, path, factors) = raw_factor_file(n, k, &mut rng);
        let mapped = ItemMatrix::map(&path, k).unwrap();
        mapped.release_mapped_rows();
        let held = ItemMatrix::new(factors, k);
        let user: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
        // Rows all over the file: through the mapping they would fault in page by page.
        for i in (0..n).step_by(97) {
            assert_eq!(mapped.score(i, &user), held.score(i, &user), "row {i}");
        }
        assert_eq!(
            mapped.top_k(&user, 100, |i| i % 3 != 0),
            held.top_k(&user, 100, |i| i % 3 != 0)
        );
        assert!(
            resident_kib(&path) <= 4,
            "{} KiB of the file resident after re-scoring",
            resident_kib(&path)
        );
        // The exact cosine scan reads every row (through the mapping); its seed row is read too.
        for seed in [0, n / 3, n - 1] {
            assert_eq!(
                mapped.similar(seed, 10, |_| true),
                held.similar(seed, 10, |_| true)
            );
        }
    }

    #[test]
    fn quantized_scores_are_close_to_exact() {
        let (m, user) = random_matrix(500, 64, 3);
        let mut exact = vec![0.0; 500];
        let mut approx = vec![0.0; 500];
        m.score_all_exact(&user, &mut exact);
        m.score_all_quantized(&user, &mut approx);
        for (e, a) in exact.iter().zip(&approx) {
            assert!((e - a).abs() < 0.05 * (1.0 + e.abs()), "{e} vs {a}");
        }
    }

    #[test]
    fn the_scan_equals_the_integer_dot_product_of_each_row() {
        // Widths that are and are not whole slices, a catalog that ends inside a tile and after
        // an odd number of tiles, member counts that fill the kernel's groups and leave
        // remainders: every kernel this CPU runs must equal the row-by-row integer dot
        // product exactly, and flag exactly the tiles holding a score above the threshold.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (k, n) in [
            (32, 302),
            (37, 96),
            (64, 1_001),
            (6, 17),
            (128, 203),
            (64, 48),
        ] {
            let (m, _) = random_matrix(n, k, k as u64);
            let width = k.next_multiple_of(4);
            for count in [1, 3, 4, 6, 9, 13, 16, 17, 32, 33] {
                let users: Vec<Vec<f32>> = (0..count)
                    .map(|_| (0..k).map(|_| rng.random_range(-1.0..1.0)).collect())
                    .collect();
                let members: Vec<MemberCodes> =
                    users.iter().map(|u| MemberCodes::new(u, width)).collect();
                let refs: Vec<&MemberCodes> = members.iter().collect();
                let thresholds: Vec<f32> = (0..count).map(|c| c as f32 * 0.3 - 0.5).collect();
                let stride = n.next_multiple_of(TILE);
                let words = (stride / TILE).div_ceil(64);
                let scan = |kernel, rows: std::ops::Range<usize>| {
                    let mut scores = vec![0.0; count * stride];
                    let mut flags = vec![0u64; count * words];
                    m.codes.scan_with(
                        kernel,
                        rows,
                        &refs,
                        &mut ScanBlock {
                            scores: &mut scores,
                            stride,
                            thresholds: &thresholds,
                            flags: &mut flags,
                            words,
                        },
                    );
                    (scores, flags)
                };
                let (scores, flags) = scan(Kernel::Portable, 0..n);
                // A scan from the second tile too: its tiles are counted from where it starts.
                let (later, later_flags) = scan(Kernel::Portable, TILE..n);
                for kernel in Kernel::available() {
                    let (other, other_flags) = scan(kernel, 0..n);
                    assert_eq!(other, scores, "{kernel:?}: k {k}, {count} members");
                    assert_eq!(other_flags, flags, "{kernel:?}: k {k}, {count} members");
                    let (other, other_flags) = scan(kernel, TILE..n);
                    assert_eq!(other, later, "{kernel:?} from a tile: k {k}, {count}");
                    assert_eq!(other_flags, later_flags, "{kernel:?} from a tile: k {k}");
                }
                for (c, member) in members.iter().enumerate() {
                    assert!(member.codes.iter().all(|c| (-63..=63).contains(c)));
                    for i in 0..n {
                        let dot: i32 = m
                            .codes
                            .row(i)
                            .iter()
                            .zip(&member.codes)
                            .map(|(&a, &b)| i32::from(a) * i32::from(b))
                            .sum();
                        let want = dot as f32 * (m.codes.scale(i) * member.scale);
                        assert_eq!(scores[c * stride + i], want, "row {i}, k {k}");
                    }
                    for g in 0..n.div_ceil(TILE) {
                        let above = scores[c * stride + g * TILE..c * stride + (g + 1) * TILE]
                            .iter()
                            .any(|&s| s > thresholds[c]);
                        let flagged = flags[c * words + g / 64] >> (g % 64) & 1 == 1;
                        assert_eq!(flagged, above, "tile {g}, k {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn similar_items_rank_by_cosine_and_leave_out_the_seed() {
        // Item 1 is item 0 scaled (cosine 1); item 2 is orthogonal; item 3 opposite.
        let m = ItemMatrix::new(vec![1.0, 0.0, 3.0, 0.0, 0.0, 1.0, -1.0, 0.0], 2);
        let got: Vec<u32> = m.similar(0, 3, |_| true).iter().map(|s| s.index).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn degenerate_inputs() {
        let (m, _) = random_matrix(10, 4, 4);
        assert!(m.top_k(&[0.0; 4], 0, |_| true).is_empty());
        assert_eq!(
            m.top_k(&[0.0; 4], 5, |_| true).len(),
            5,
            "a zero vector still ranks"
        );
        assert_eq!(
            m.top_k(&[1.0; 4], 50, |_| true).len(),
            10,
            "k beyond the catalog"
        );
        assert!(m.top_k(&[1.0; 4], 5, |_| false).is_empty());
    }
}
