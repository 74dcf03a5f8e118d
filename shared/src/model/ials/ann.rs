//! The approximate nearest-neighbour index over a version's item factors, for
//! `online.retrieval = "ann"`: HNSW graphs (USearch), built by the offline job when it publishes
//! the version (`item_index.ann`, listed and checksummed in the manifest like every other file)
//! and mapped, not read, by a server.
//!
//! Scores are inner products, and an inner product is not a distance: on a million clustered
//! items with log-normal norms (the shape of trained factors: popular items are longer), one HNSW
//! graph linked by inner product finds 0.60 of the true top 100 at efSearch 1,024 (FAISS's
//! `IndexHNSWFlat` the same), one graph over the MIPS-to-Euclidean transform `[y, √(M² − |y|²)]`
//! 0.39, and one graph linked by angle and searched by inner product 0.95 at 2.6 ms. So the items
//! are cut into **norm ranges** (Yan et al. 2018): longest first, a range closes when an item is
//! shorter than its longest by [`RANGE_RATIO`] (and it holds [`min_range`] items). Each range has
//! its own graph, linked by angle — inside a range the lengths differ little, so the angle orders
//! the items almost as the inner product does — and searched by inner product. A query searches
//! the ranges longest first and stops as soon as `|q| ×` the next range's longest norm cannot beat
//! the k-th best exact score found: most queries search the few longest ranges only.
//!
//! A search asks the caller's filter about every item it would return, so country, maturity,
//! hidden and seen items are left out inside the search (a post-filter comes back short when a
//! filter removes most of what is nearest), and scores its candidates exactly with the caller's
//! scorer: every score served is exact, only recall is approximate.
//!
//! `SimilarItems` and the "because you watched" rows rank by the cosine of the factors, which no
//! inner-product index answers (searched with an item's direction, the index above found a tenth
//! of the cosine top 20 in a test). The offline job therefore publishes a second index built the
//! same way over the rows scaled to length 1 ([`ItemIndex::build_unit`], `similar_index.ann`):
//! there the inner product is the cosine, all rows fall in one norm range, and
//! [`ItemIndex::similar`] scores its candidates with the exact cosine.
//!
//! The file: `RECSYSANN` and a format byte, the factor count, the item count and the range count,
//! then per range its longest norm, offset and length, then each range's graph as USearch
//! serialises it (f16 vectors: half the bytes of f32, the same recall here). This module owns the
//! file and the search; it must not decide when an index is used (the online tier's `retrieval`
//! setting does).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::model::ials::ItemMatrix;
use crate::model::top_k::{best_of, Scored};

/// A norm range closes when an item is this much shorter than the range's longest.
pub const RANGE_RATIO: f32 = 1.3;
/// ... and only once it holds a sixteenth of the catalog, at least 1,000 and at most 20,000 items
/// (the longest items are few and far apart).
pub fn min_range(items: usize) -> usize {
    (items / 16).clamp(1_000, 20_000)
}

const MAGIC: &[u8; 10] = b"RECSYSANN\x01";
const HEADER: usize = 10 + 2 + 4 + 8 + 4;
const RANGE_ENTRY: usize = 4 + 8 + 8;
const ALIGN: usize = 64;

/// How the graphs are built (`offline.ann_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexShape {
    /// Links per node (HNSW's M).
    pub connectivity: usize,
    /// Candidates kept while linking a node (efConstruction).
    pub expansion_add: usize,
}

/// Why an index could not be built, written or opened.
#[derive(Debug, thiserror::Error)]
pub enum AnnError {
    #[error("the item index {0}")]
    Index(String),
    #[error("the item index at {path}: {problem}")]
    File { path: String, problem: String },
}

/// One norm range: its graph and its longest item's norm.
struct NormRange {
    graph: Index,
    longest: f32,
}

/// An item index, built or mapped from a version's file.
pub struct ItemIndex {
    /// Longest first. Declared before `file` so the graphs that view it are dropped first.
    ranges: Vec<NormRange>,
    /// The mapped file the graphs view (`None` when built here).
    file: Option<memmap2::Mmap>,
    items: usize,
    factors: usize,
}

impl std::fmt::Debug for ItemIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemIndex")
            .field("items", &self.items)
            .field("factors", &self.factors)
            .field("ranges", &self.ranges.len())
            .finish()
    }
}

fn options(factors: usize, shape: IndexShape) -> IndexOptions {
    IndexOptions {
        dimensions: factors,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F16,
        connectivity: shape.connectivity,
        expansion_add: shape.expansion_add,
        expansion_search: 64,
        multi: false,
    }
}

fn index_error(e: impl std::fmt::Display) -> AnnError {
    AnnError::Index(e.to_string())
}

/// Rows cut into norm ranges, longest first.
fn norm_ranges(norms: &[f32]) -> Vec<Vec<u32>> {
    let mut order: Vec<u32> = (0..norms.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| norms[b as usize].total_cmp(&norms[a as usize]));
    let min = min_range(norms.len());
    let mut ranges = Vec::new();
    let mut range: Vec<u32> = Vec::new();
    for i in order {
        let longest = range.first().map_or(f32::INFINITY, |&j| norms[j as usize]);
        if range.len() >= min && norms[i as usize] * RANGE_RATIO < longest {
            ranges.push(std::mem::take(&mut range));
        }
        range.push(i);
    }
    if !range.is_empty() {
        ranges.push(range);
    }
    ranges
}

/// Of a norm range, the share linked first in norm order (every `SEED_STRIDE`-th item).
const SEED_STRIDE: usize = 16;
/// Items per direction group [`insertion_order`] aims at.
const GROUP_ITEMS: usize = 512;

/// The order a range's items are linked in. A sample spread over the range goes first — every
/// [`SEED_STRIDE`]-th item in norm order, which scatters it over every direction — to lay the
/// graph's long links; then the rest grouped by direction: by the signs of the rows' projections
/// onto a few fixed random directions, the groups in Gray-code order so that each differs from
/// the one before in one sign. Consecutive insertions then walk the same region of the graph, and
/// rows near each other in the graph sit near each other in memory (USearch stores them in the
/// order they come): the build finds in cache what it would otherwise wait on memory for.
fn insertion_order<'a>(
    members: &[u32],
    row: impl Fn(u32) -> &'a [f32],
    factors: usize,
) -> Vec<u32> {
    let bits = (members.len() / GROUP_ITEMS).max(1).ilog2().min(16) as usize;
    if bits == 0 {
        return members.to_vec();
    }
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0fde_c0de);
    let directions: Vec<f32> = (0..bits * factors)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let group = |i: u32| -> u32 {
        let gray = directions
            .chunks(factors)
            .enumerate()
            .fold(0u32, |key, (bit, direction)| {
                let dot: f32 = direction.iter().zip(row(i)).map(|(d, x)| d * x).sum();
                key | (u32::from(dot > 0.0) << bit)
            });
        // The group's rank in the Gray sequence (the inverse of `n ^ (n >> 1)`).
        (0..bits).fold(gray, |rank, shift| rank ^ (gray >> (shift + 1)))
    };
    let (mut seeds, mut rest) = (Vec::new(), Vec::new());
    for (n, &i) in members.iter().enumerate() {
        if n % SEED_STRIDE == 0 {
            seeds.push(i);
        } else {
            rest.push((group(i), i));
        }
    }
    rest.sort_by_key(|&(group, _)| group);
    seeds.extend(rest.into_iter().map(|(_, i)| i));
    seeds
}

impl ItemIndex {
    /// Builds the graphs over `item_factors` (row `i` is key `i`) on `threads` threads, calling
    /// `progress` with the rows linked so far now and then. Each norm range's items are linked
    /// seeds first, then grouped by direction (`insertion_order`).
    pub fn build(
        item_factors: &[f32],
        factors: usize,
        shape: IndexShape,
        threads: usize,
        progress: impl Fn(usize) + Sync,
    ) -> Result<ItemIndex, AnnError> {
        Self::link(item_factors, factors, shape, threads, progress, true)
    }

    /// The graphs of [`ItemIndex::build`]; `grouped`: each range's items linked in
    /// [`insertion_order`], or else in norm order.
    fn link(
        item_factors: &[f32],
        factors: usize,
        shape: IndexShape,
        threads: usize,
        progress: impl Fn(usize) + Sync,
        grouped: bool,
    ) -> Result<ItemIndex, AnnError> {
        let items = item_factors.len() / factors.max(1);
        let row = |i: u32| &item_factors[i as usize * factors..(i as usize + 1) * factors];
        let norms: Vec<f32> = (0..items as u32)
            .map(|i| row(i).iter().map(|x| x * x).sum::<f32>().sqrt())
            .collect();
        let threads = threads.max(1);
        let linked = std::sync::atomic::AtomicUsize::new(0);
        let mut ranges = Vec::new();
        for range in norm_ranges(&norms) {
            let longest = norms[range[0] as usize];
            let members = if grouped {
                insertion_order(&range, row, factors)
            } else {
                range
            };
            let graph = Index::new(&options(factors, shape)).map_err(index_error)?;
            graph
                .reserve_capacity_and_threads(members.len(), threads)
                .map_err(index_error)?;
            let next = std::sync::atomic::AtomicUsize::new(0);
            let failed = std::sync::Mutex::new(None);
            const CHUNK: usize = 1024;
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| loop {
                        let start = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        if start >= members.len() {
                            return;
                        }
                        let end = (start + CHUNK).min(members.len());
                        for &i in &members[start..end] {
                            if let Err(e) = graph.add(u64::from(i), row(i)) {
                                *failed.lock().expect("not poisoned") = Some(e.to_string());
                                return;
                            }
                        }
                        let done =
                            linked.fetch_add(end - start, std::sync::atomic::Ordering::AcqRel);
                        progress(done + end - start);
                    });
                }
            });
            if let Some(problem) = failed.into_inner().expect("not poisoned") {
                return Err(AnnError::Index(problem));
            }
            // Linked by angle, searched by inner product (as an opened index is).
            graph
                .change_metric_kind(MetricKind::IP)
                .map_err(index_error)?;
            ranges.push(NormRange { graph, longest });
        }
        Ok(ItemIndex {
            ranges,
            file: None,
            items,
            factors,
        })
    }

    /// [`ItemIndex::build`] over the rows of `item_factors` scaled to length 1 (zero rows stay
    /// zero): the index [`ItemIndex::similar`] searches, where the inner product is the cosine.
    pub fn build_unit(
        item_factors: &[f32],
        factors: usize,
        shape: IndexShape,
        threads: usize,
        progress: impl Fn(usize) + Sync,
    ) -> Result<ItemIndex, AnnError> {
        let mut unit = item_factors.to_vec();
        for row in unit.chunks_mut(factors.max(1)) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
        // In norm order: the unit rows form one graph over the whole catalog, which grouped
        // insertion leaves less well linked (recall@20 0.976 against 0.990 at a million items).
        Self::link(&unit, factors, shape, threads, progress, false)
    }

    /// Writes the index to `path` (synced).
    pub fn save(&self, path: &Path) -> Result<(), AnnError> {
        let bad = |problem: String| AnnError::File {
            path: path.display().to_string(),
            problem,
        };
        let mut graphs = Vec::with_capacity(self.ranges.len());
        for range in &self.ranges {
            let mut bytes = vec![0u8; range.graph.serialized_length()];
            range
                .graph
                .save_to_buffer(&mut bytes)
                .map_err(|e| bad(e.to_string()))?;
            graphs.push(bytes);
        }
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(self.factors as u32).to_le_bytes());
        out.extend_from_slice(&(self.items as u64).to_le_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        let mut offset = (HEADER + RANGE_ENTRY * graphs.len()).next_multiple_of(ALIGN);
        for (range, graph) in self.ranges.iter().zip(&graphs) {
            out.extend_from_slice(&range.longest.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            out.extend_from_slice(&(graph.len() as u64).to_le_bytes());
            offset = (offset + graph.len()).next_multiple_of(ALIGN);
        }
        for graph in &graphs {
            out.resize(out.len().next_multiple_of(ALIGN), 0);
            out.extend_from_slice(graph);
        }
        let mut file = File::create(path).map_err(|e| bad(e.to_string()))?;
        file.write_all(&out).map_err(|e| bad(e.to_string()))?;
        file.sync_all().map_err(|e| bad(e.to_string()))
    }

    /// The items the index at `path` says it holds (its header alone is read), for opening it
    /// before the version's item rows are loaded.
    pub fn items_in(path: &Path) -> Result<usize, AnnError> {
        let bad = |problem: String| AnnError::File {
            path: path.display().to_string(),
            problem,
        };
        let mut header = [0u8; HEADER];
        File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
            .map_err(|e| bad(e.to_string()))?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(bad("not an item index of this format".into()));
        }
        Ok(u64::from_le_bytes(header[16..24].try_into().expect("8")) as usize)
    }

    /// Maps the index at `path` (its graphs and vectors stay in the page cache, not on the heap;
    /// opening reads every node, a range at a time, and leaves none resident in this process),
    /// checked against the version it belongs to: `items` rows of `factors`. Searches explore
    /// `expansion` candidates per range (efSearch; see [`ItemIndex::set_expansion`]); up to
    /// `threads` of them may run at once.
    pub fn open(
        path: &Path,
        items: usize,
        factors: usize,
        expansion: usize,
        threads: usize,
    ) -> Result<ItemIndex, AnnError> {
        let bad = |problem: String| AnnError::File {
            path: path.display().to_string(),
            problem,
        };
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        // SAFETY: a published version's files are never written again (a new version is a new
        // directory), so the mapped bytes do not change under the graphs that view them.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(e.to_string()))?;
        let bytes: &[u8] = &map;
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an item index of this format".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let (held_factors, held_items, count) = (
            u32_at(12) as usize,
            u64_at(16) as usize,
            u32_at(24) as usize,
        );
        if held_factors != factors {
            return Err(bad(format!(
                "{held_factors} factors, the version has {factors}"
            )));
        }
        if held_items != items {
            return Err(bad(format!("{held_items} items, the version has {items}")));
        }
        if bytes.len() < HEADER + RANGE_ENTRY * count {
            return Err(bad("cut short in its range table".into()));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut indexed = 0;
        for r in 0..count {
            let at = HEADER + RANGE_ENTRY * r;
            let longest = f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
            let (offset, len) = (u64_at(at + 4) as usize, u64_at(at + 12) as usize);
            let Some(graph_bytes) = offset
                .checked_add(len)
                .and_then(|end| bytes.get(offset..end))
            else {
                return Err(bad(format!("range {r} lies outside the file")));
            };
            let graph = Index::new(&options(
                factors,
                IndexShape {
                    connectivity: 16,
                    expansion_add: 128,
                },
            ))
            .map_err(|e| bad(e.to_string()))?;
            // SAFETY: the graph views bytes of `map`, which the returned index holds and drops
            // after the graphs (field order), and which nothing writes (above).
            unsafe { graph.view_from_buffer(graph_bytes) }
                .map_err(|e| bad(format!("range {r}: {e}")))?;
            if graph.dimensions() != factors {
                return Err(bad(format!(
                    "range {r} has {} dimensions, the version {factors} factors",
                    graph.dimensions()
                )));
            }
            graph
                .reserve_capacity_and_threads(graph.size(), threads.max(1))
                .map_err(|e| bad(format!("range {r}: {e}")))?;
            // Linked by angle, searched by inner product.
            graph
                .change_metric_kind(MetricKind::IP)
                .map_err(|e| bad(format!("range {r}: {e}")))?;
            graph.change_expansion_search(expansion.max(1));
            // Viewing a graph reads every node of it (usearch looks up each node's key); its
            // pages leave as soon as it is open, so opening holds one range at a time, not the
            // whole file (a hot swap opens the new index beside the served version).
            // SAFETY: as for `release_pages`: a read-only mapping of a file that never changes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
            indexed += graph.size();
            ranges.push(NormRange { graph, longest });
        }
        // Pages a range's faults mapped beyond its own span (the kernel maps around a fault).
        // SAFETY: as above.
        let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        if indexed != items {
            return Err(bad(format!(
                "its ranges hold {indexed} items, the version has {items}"
            )));
        }
        Ok(ItemIndex {
            ranges,
            file: Some(map),
            items,
            factors,
        })
    }

    /// Candidates a search explores per range (efSearch): more is slower and finds more of the
    /// true top.
    pub fn set_expansion(&self, expansion: usize) {
        for range in &self.ranges {
            range.graph.change_expansion_search(expansion.max(1));
        }
    }

    /// Maps every page of the file into this process's memory, reading from disk what the page
    /// cache no longer holds, so that searches never wait on a fault: the index of a version in
    /// service is resident whole — exactly its file's size, whatever the traffic. (Left to
    /// searches, the pages come back a folio of about 100 KiB per fault on recent kernels, not
    /// the 4 KiB a node needs, and how much of the file that adds up to is unforeseeable.)
    /// Nothing for an index built here.
    pub fn make_resident(&self) {
        if let Some(map) = &self.file {
            #[cfg(target_os = "linux")]
            if map.advise(memmap2::Advice::PopulateRead).is_ok() {
                return;
            }
            // Kernels before 5.14, and other systems: a read of every page.
            let touched = map
                .iter()
                .step_by(4096)
                .fold(0u8, |seen, byte| seen ^ std::hint::black_box(*byte));
            std::hint::black_box(touched);
        }
    }

    /// Drops the mapped file's pages from this process's memory (searches touch more in time);
    /// they stay in the kernel's page cache and fault back in as
    /// searches read them. Nothing for an index built here.
    pub fn release_pages(&self) {
        if let Some(map) = &self.file {
            // SAFETY: a shared, read-only mapping of a file that never changes while mapped
            // (see `open`): MADV_DONTNEED only drops resident pages, which read back unchanged,
            // so the graphs' views stay valid.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Items in the index.
    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Norm ranges (one graph each).
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Bytes of the graphs and their vectors: the mapped file's length, or what the built graphs
    /// hold.
    pub fn bytes(&self) -> usize {
        match &self.file {
            Some(map) => map.len(),
            None => self.ranges.iter().map(|r| r.graph.memory_usage()).sum(),
        }
    }

    /// The `k` best items for `query` among those `allowed` by `score` (the exact inner product
    /// of a row with `query`), best first (ties to the lower row); each range is asked for its
    /// `per_range` nearest by the index's own score, the ranges longest first until none left
    /// can beat the k-th best.
    ///
    /// Only the candidates that could be among the `k` best are scored exactly: the index's score
    /// (f16 vectors and query) is within [`approximation_bound`] of the exact one, so a candidate
    /// whose index score plus that bound falls below the k-th best index score minus its bound
    /// cannot be in the answer. The answer is the one scoring every candidate exactly would give;
    /// a search reads about `k` exact rows, not `per_range` per range searched.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        per_range: usize,
        allowed: impl Fn(u32) -> bool,
        score: impl Fn(u32) -> f32,
    ) -> Result<Vec<Scored>, AnnError> {
        assert_eq!(query.len(), self.factors, "a query of the wrong width");
        if k == 0 {
            return Ok(Vec::new());
        }
        let length = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        // (row, lowest and highest exact score its index score allows).
        let mut candidates: Vec<(u32, f32, f32)> = Vec::with_capacity(k + per_range);
        // The k-th best lowest score: no row scoring below it can be in the answer.
        let mut floor = f32::NEG_INFINITY;
        for range in &self.ranges {
            if candidates.len() >= k && floor >= length * range.longest {
                break;
            }
            let count = per_range.max(k).min(range.graph.size());
            let matches = range
                .graph
                .filtered_search(query, count, |key: u64| allowed(key as u32))
                .map_err(index_error)?;
            let bound = approximation_bound(length, range.longest);
            for (key, distance) in matches.keys.into_iter().zip(matches.distances) {
                let approximate = 1.0 - distance;
                let (low, high) = if approximate.is_finite() {
                    (approximate - bound, approximate + bound)
                } else {
                    (f32::NEG_INFINITY, f32::INFINITY)
                };
                candidates.push((key as u32, low, high));
            }
            if candidates.len() >= k {
                // Their order does not matter: the answer is sorted at the end.
                candidates.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                floor = candidates[k - 1].1;
                candidates.retain(|c| c.2 >= floor);
            }
        }
        let scored = candidates
            .into_iter()
            .map(|(index, _, _)| Scored {
                index,
                score: score(index),
            })
            .collect();
        Ok(best_of(scored, k))
    }
}

/// How far the index's score of a row (query and row both rounded to f16, 2⁻¹¹ relative each,
/// products summed in f32) may be from the exact inner product, for a query of length `query`
/// and a row no longer than `longest`: |q·v − q̃·ṽ| ≤ |q||v|(2⁻¹⁰ + 2⁻²²) by Cauchy–Schwarz,
/// doubled for the f32 sums and the rows too small for f16's normal range.
pub fn approximation_bound(query: f32, longest: f32) -> f32 {
    query * longest * (1.0 / 512.0) + 1e-6
}

impl ItemIndex {
    /// For an index built by [`ItemIndex::build_unit`] over `items`: the `k` rows most like row
    /// `seed` by the cosine of their factors among those `allowed`, `seed` itself and zero rows
    /// left out, best first, each with its exact cosine (what [`ItemMatrix::similar`] scans for).
    pub fn similar(
        &self,
        items: &ItemMatrix,
        seed: usize,
        k: usize,
        per_range: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Result<Vec<Scored>, AnnError> {
        let norm = items.norm(seed);
        if norm == 0.0 {
            return Ok(Vec::new());
        }
        let query: Vec<f32> = items.with_row(seed, |row| row.iter().map(|x| x / norm).collect());
        self.search(
            &query,
            k,
            per_range,
            |i| i as usize != seed && items.norm(i as usize) > 0.0 && allowed(i),
            |i| items.score(i as usize, &query) / items.norm(i as usize),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::synthetic::clustered_factors;
    use crate::model::ials::ItemMatrix;
    use rand::SeedableRng;

    const SHAPE: IndexShape = IndexShape {
        connectivity: 16,
        expansion_add: 128,
    };

    fn recall(found: &[Scored], exact: &[Scored]) -> f64 {
        let exact: std::collections::HashSet<_> = exact.iter().map(|s| s.index).collect();
        found.iter().filter(|s| exact.contains(&s.index)).count() as f64 / exact.len() as f64
    }

    #[test]
    fn norm_ranges_close_at_the_ratio_once_full_longest_first() {
        let items = 60_000;
        let min = min_range(items);
        let norms: Vec<f32> = (0..items)
            .map(|i| 1.0 + 3.0 * i as f32 / items as f32)
            .collect();
        let ranges = norm_ranges(&norms);
        // Every row once, longest first.
        let mut all: Vec<u32> = ranges.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..norms.len() as u32).collect::<Vec<_>>());
        assert!(ranges.len() >= 2);
        for pair in ranges.windows(2) {
            // A range closed because it was full and the next row was shorter by the ratio.
            let longest = norms[pair[0][0] as usize];
            let next = norms[pair[1][0] as usize];
            assert!(pair[0].len() >= min);
            assert!(next * RANGE_RATIO < longest, "{next} after {longest}");
            assert!(norms[*pair[0].last().unwrap() as usize] >= next);
        }
    }

    #[test]
    fn a_range_is_linked_seeds_first_then_one_direction_group_after_another() {
        use rand::Rng;
        let (items, factors) = (20_000u32, 8);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let rows: Vec<f32> = (0..items as usize * factors)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let row = |i: u32| &rows[i as usize * factors..(i as usize + 1) * factors];
        let members: Vec<u32> = (0..items).rev().collect();
        let order = insertion_order(&members, row, factors);
        // Every item once.
        let mut all = order.clone();
        all.sort_unstable();
        assert_eq!(all, (0..items).collect::<Vec<_>>());
        // The seeds first, in the range's own order.
        let seeds = members.len().div_ceil(SEED_STRIDE);
        let expected: Vec<u32> = members.iter().step_by(SEED_STRIDE).copied().collect();
        assert_eq!(order[..seeds], expected[..]);
        // Then the rest: consecutive rows point the same way far more often than rows at random
        // do (a random pair of these rows has a positive cosine half the time).
        let cosine = |a: u32, b: u32| {
            let dot: f32 = row(a).iter().zip(row(b)).map(|(x, y)| x * y).sum();
            let norm = |r: &[f32]| r.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(row(a)) * norm(row(b)))
        };
        let rest = &order[seeds..];
        let aligned = rest.windows(2).filter(|p| cosine(p[0], p[1]) > 0.0).count();
        let share = aligned as f64 / (rest.len() - 1) as f64;
        assert!(
            share > 0.8,
            "{share} of consecutive rows point the same way"
        );
        let unordered = members[..rest.len()]
            .windows(2)
            .filter(|p| cosine(p[0], p[1]) > 0.0)
            .count() as f64
            / (rest.len() - 1) as f64;
        assert!(unordered < 0.6, "{unordered} in the range's own order");
    }

    #[test]
    fn a_unit_index_finds_the_items_most_similar_by_cosine_inside_the_filter() {
        let (items, factors, k) = (30_000, 16, 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (mut item_factors, _) = clustered_factors(&mut rng, items, 1, factors);
        // Items nobody has: zero rows, never similar to anything.
        item_factors[..5 * factors].fill(0.0);
        let index = ItemIndex::build_unit(&item_factors, factors, SHAPE, 2, |_| {}).unwrap();
        let matrix = ItemMatrix::new(item_factors, factors);
        assert!(index
            .similar(&matrix, 0, k, k, |_| true)
            .unwrap()
            .is_empty());
        let (mut plain, mut filtered, mut seeds) = (0.0, 0.0, 0);
        let allowed = |i: u32| !i.is_multiple_of(3);
        for seed in (5..items).step_by(items / 60) {
            let exact = matrix.similar(seed, k, |_| true);
            let found = index.similar(&matrix, seed, k, k, |_| true).unwrap();
            assert_eq!(found.len(), k);
            assert!(found
                .iter()
                .all(|s| s.index as usize != seed && s.index >= 5));
            plain += recall(&found, &exact);
            let exact = matrix.similar(seed, k, allowed);
            let found = index.similar(&matrix, seed, k, k, allowed).unwrap();
            assert!(found.iter().all(|s| allowed(s.index)), "{found:?}");
            filtered += recall(&found, &exact);
            // Exact cosines, best first.
            for pair in found.windows(2) {
                assert!(pair[0].score >= pair[1].score);
            }
            let row = |i: usize| matrix.row(i).to_vec();
            for s in &found {
                let (a, b) = (row(seed), row(s.index as usize));
                let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                let cosine = dot / (matrix.norm(seed) * matrix.norm(s.index as usize));
                assert!((s.score - cosine).abs() < 1e-5, "{} vs {cosine}", s.score);
            }
            seeds += 1;
        }
        let (plain, filtered) = (plain / seeds as f64, filtered / seeds as f64);
        assert!(plain >= 0.95, "recall {plain}");
        assert!(filtered >= 0.95, "filtered recall {filtered}");
    }

    #[test]
    fn a_mapped_index_finds_the_largest_inner_products_inside_the_filter() {
        // More than one norm range, so the pruning between ranges is exercised.
        let (items, factors, k) = (60_000, 16, 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (item_factors, members) = clustered_factors(&mut rng, items, 30, factors);
        let built = ItemIndex::build(&item_factors, factors, SHAPE, 2, |_| {}).unwrap();
        assert_eq!(built.len(), items);
        assert!(built.ranges() >= 2, "{} ranges", built.ranges());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("item_index.ann");
        built.save(&path).unwrap();
        drop(built);
        let index = ItemIndex::open(&path, items, factors, 128, 4).unwrap();
        assert!(index.ranges() >= 2);
        // Opening read every node, a range at a time, and left none of them in this process's
        // memory: a swap opens the new index beside the served version.
        #[cfg(target_os = "linux")]
        {
            let file_kib = std::fs::metadata(&path).unwrap().len() / 1024;
            let resident = crate::memory::resident_kib(&path);
            assert!(
                resident * 10 < file_kib,
                "{resident} of the index's {file_kib} KiB resident after opening"
            );
        }
        let matrix = ItemMatrix::new(item_factors, factors);
        let (mut plain, mut filtered) = (0.0, 0.0);
        for user in members.chunks(factors) {
            let score = |i: u32| matrix.score(i as usize, user);
            let exact = matrix.top_k_exact(user, k, |_| true);
            let found = index.search(user, k, k, |_| true, score).unwrap();
            plain += recall(&found, &exact);
            // The filter is asked inside the search: a filter that removes two items in three
            // still gets k answers, all allowed.
            let allowed = |i: u32| i.is_multiple_of(3);
            let exact = matrix.top_k_exact(user, k, allowed);
            let found = index.search(user, k, k, allowed, score).unwrap();
            assert_eq!(found.len(), k);
            assert!(found.iter().all(|s| allowed(s.index)), "{found:?}");
            filtered += recall(&found, &exact);
            // Exact scores, best first.
            for pair in found.windows(2) {
                assert!(pair[0].score >= pair[1].score);
            }
            for s in &found {
                assert_eq!(s.score, score(s.index));
            }
        }
        let members = members.len() / factors;
        let (plain, filtered) = (plain / members as f64, filtered / members as f64);
        assert!(plain >= 0.95, "recall {plain}");
        assert!(filtered >= 0.95, "filtered recall {filtered}");
    }

    #[test]
    fn only_candidates_that_could_rank_are_scored_and_the_answer_is_unchanged() {
        let (items, factors, k, per_range) = (60_000, 16, 20, 200);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (item_factors, members) = clustered_factors(&mut rng, items, 30, factors);
        let index = ItemIndex::build(&item_factors, factors, SHAPE, 2, |_| {}).unwrap();
        let matrix = ItemMatrix::new(item_factors, factors);
        let allowed = |i: u32| i % 4 != 1;
        let (mut scored, mut found) = (0, 0);
        for user in members.chunks(factors) {
            let length = user.iter().map(|x| x * x).sum::<f32>().sqrt();
            // The index's score of every candidate is within the bound of the exact one.
            let mut every: Vec<Scored> = Vec::new();
            for range in &index.ranges {
                let bound = approximation_bound(length, range.longest);
                let count = per_range.min(range.graph.size());
                let matches = range
                    .graph
                    .filtered_search(user, count, |key: u64| allowed(key as u32))
                    .unwrap();
                for (key, distance) in matches.keys.iter().zip(&matches.distances) {
                    let exact = matrix.score(*key as usize, user);
                    let approximate = 1.0 - distance;
                    assert!(
                        (approximate - exact).abs() <= bound,
                        "row {key}: index {approximate}, exact {exact}, bound {bound}"
                    );
                    every.push(Scored {
                        index: *key as u32,
                        score: exact,
                    });
                }
            }
            // Scoring every candidate of every range gives the same answer (the search may stop
            // before the last ranges: none of theirs can rank).
            let every = best_of(every, k);
            let calls = std::cell::Cell::new(0);
            let answer = index
                .search(user, k, per_range, allowed, |i| {
                    calls.set(calls.get() + 1);
                    matrix.score(i as usize, user)
                })
                .unwrap();
            assert_eq!(answer, every);
            scored += calls.get();
            found += answer.len();
        }
        // Far fewer rows read than the candidates found (a range's 200 each).
        assert!(
            scored < 2 * found,
            "{scored} rows scored for {found} answers"
        );
    }

    #[test]
    fn an_index_that_does_not_fit_its_version_is_refused_by_name() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (item_factors, _) = clustered_factors(&mut rng, 500, 0, 8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("item_index.ann");
        ItemIndex::build(&item_factors, 8, SHAPE, 1, |_| {})
            .unwrap()
            .save(&path)
            .unwrap();
        let err = ItemIndex::open(&path, 501, 8, 64, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("item_index.ann") && err.contains("500 items"),
            "{err}"
        );
        let err = ItemIndex::open(&path, 500, 16, 64, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("8 factors"), "{err}");
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let err = ItemIndex::open(&path, 500, 8, 64, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the file"), "{err}");
        std::fs::write(&path, b"not an index").unwrap();
        assert!(ItemIndex::open(&path, 500, 8, 64, 1).is_err());
    }
}
