//! The approximate nearest-neighbour index over a version's item factors, for
//! `online.retrieval = "ann"`: an HNSW graph (USearch), built by the offline job when it publishes
//! the version (`item_index.usearch`, listed and checksummed in the manifest like every other
//! file) and mapped, not read, by a server.
//!
//! Scores are inner products, which are not a distance: an HNSW graph linked by inner product
//! gathers its links on the longest vectors and misses much of the true top (measured: recall@100
//! 0.60 at efSearch 1,024 on a million clustered items). So the graph is built by Euclidean
//! distance over each item extended by one coordinate, `[y, √(M² − |y|²)]` with `M` the longest
//! item's norm: every extended item then has norm `M`, and for a query extended by 0,
//! `|q − y'|² = |q|² + M² − 2 q·y`, so the nearest by distance are exactly the largest inner
//! products (Bachrach et al. 2014).
//!
//! A search walks the graph with the member's vector and asks the caller's filter about every item
//! it would return, so country, maturity, hidden and seen items are left out inside the search
//! (a post-filter would come back short when a filter removes most of what is nearest). It yields
//! candidate rows only; [`ItemMatrix::rescore`](super::ItemMatrix::rescore) scores them exactly, so
//! every score a caller sees is exact and only recall is approximate.
//!
//! This module owns the index's file and its parameters; it must not decide when an index is
//! used (the online tier's `retrieval` setting does).

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// How the graph is built (`offline.ann_index`).
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

/// An item index, built or mapped from a version's file.
pub struct ItemIndex {
    /// Over the extended rows: `factors + 1` dimensions, Euclidean.
    index: Index,
    items: usize,
    factors: usize,
}

impl std::fmt::Debug for ItemIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemIndex")
            .field("items", &self.items)
            .field("factors", &self.factors)
            .finish()
    }
}

fn options(factors: usize, shape: IndexShape) -> IndexOptions {
    IndexOptions {
        dimensions: factors + 1,
        metric: MetricKind::L2sq,
        quantization: ScalarKind::F32,
        connectivity: shape.connectivity,
        expansion_add: shape.expansion_add,
        expansion_search: 64,
        multi: false,
    }
}

fn index_error(e: impl std::fmt::Display) -> AnnError {
    AnnError::Index(e.to_string())
}

impl ItemIndex {
    /// Builds the graph over `item_factors` (row `i` is key `i`) on `threads` threads, calling
    /// `progress` with the rows linked so far now and then.
    pub fn build(
        item_factors: &[f32],
        factors: usize,
        shape: IndexShape,
        threads: usize,
        progress: impl Fn(usize) + Sync,
    ) -> Result<ItemIndex, AnnError> {
        let items = item_factors.len() / factors.max(1);
        let squared_norm = |i: usize| -> f32 {
            item_factors[i * factors..(i + 1) * factors]
                .iter()
                .map(|x| x * x)
                .sum()
        };
        let longest = (0..items).map(squared_norm).fold(0.0f32, f32::max);
        let index = Index::new(&options(factors, shape)).map_err(index_error)?;
        let threads = threads.max(1);
        index
            .reserve_capacity_and_threads(items, threads)
            .map_err(index_error)?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::Mutex::new(None);
        const CHUNK: usize = 4096;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let start = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                    if start >= items {
                        return;
                    }
                    let end = (start + CHUNK).min(items);
                    let mut row = vec![0.0f32; factors + 1];
                    for i in start..end {
                        row[..factors]
                            .copy_from_slice(&item_factors[i * factors..(i + 1) * factors]);
                        row[factors] = (longest - squared_norm(i)).max(0.0).sqrt();
                        if let Err(e) = index.add(i as u64, &row) {
                            *failed.lock().expect("not poisoned") = Some(e.to_string());
                            return;
                        }
                    }
                    progress(end);
                });
            }
        });
        if let Some(problem) = failed.into_inner().expect("not poisoned") {
            return Err(AnnError::Index(problem));
        }
        Ok(ItemIndex {
            index,
            items,
            factors,
        })
    }

    /// Writes the index to `path`.
    pub fn save(&self, path: &Path) -> Result<(), AnnError> {
        let name = path.to_string_lossy();
        self.index.save(&name).map_err(|e| AnnError::File {
            path: name.to_string(),
            problem: e.to_string(),
        })
    }

    /// Maps the index at `path` (its graph and vectors stay in the page cache, not on the heap),
    /// checked against the version it belongs to: `items` rows of `factors`. Searches explore
    /// `expansion` candidates (efSearch; see [`ItemIndex::set_expansion`]); up to `threads` of
    /// them may run at once.
    pub fn open(
        path: &Path,
        items: usize,
        factors: usize,
        expansion: usize,
        threads: usize,
    ) -> Result<ItemIndex, AnnError> {
        let name = path.to_string_lossy().to_string();
        let bad = |problem: String| AnnError::File {
            path: name.clone(),
            problem,
        };
        let index = Index::restore_view(&name).map_err(|e| bad(e.to_string()))?;
        if index.dimensions() != factors + 1 || index.metric_kind() != MetricKind::L2sq {
            return Err(bad(format!(
                "{} dimensions by {:?}, the version's {factors} factors need {} by L2sq",
                index.dimensions(),
                index.metric_kind(),
                factors + 1
            )));
        }
        if index.size() != items {
            return Err(bad(format!(
                "{} items, the version has {items}",
                index.size()
            )));
        }
        index
            .reserve_capacity_and_threads(items, threads.max(1))
            .map_err(|e| bad(e.to_string()))?;
        index.change_expansion_search(expansion.max(1));
        Ok(ItemIndex {
            index,
            items,
            factors,
        })
    }

    /// Candidates a search explores (efSearch): more is slower and finds more of the true nearest.
    pub fn set_expansion(&self, expansion: usize) {
        self.index.change_expansion_search(expansion.max(1));
    }

    /// Items in the index.
    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Bytes of the index (graph and vectors), mapped or held.
    pub fn bytes(&self) -> usize {
        self.index.memory_usage()
    }

    /// Up to `count` rows nearest `query` by inner product among those `allowed`, best first by
    /// the index's score.
    pub fn search(
        &self,
        query: &[f32],
        count: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, AnnError> {
        assert_eq!(query.len(), self.factors, "a query of the wrong width");
        let count = count.min(self.items);
        let mut extended = Vec::with_capacity(self.factors + 1);
        extended.extend_from_slice(query);
        extended.push(0.0);
        let matches = self
            .index
            .filtered_search(&extended, count, |key: u64| allowed(key as u32))
            .map_err(index_error)?;
        Ok(matches.keys.into_iter().map(|k| k as u32).collect())
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

    fn recall(found: &[u32], exact: &[u32]) -> f64 {
        let exact: std::collections::HashSet<_> = exact.iter().collect();
        found.iter().filter(|i| exact.contains(i)).count() as f64 / exact.len() as f64
    }

    #[test]
    fn a_mapped_index_finds_the_largest_inner_products_inside_the_filter() {
        let (items, factors, k) = (20_000, 16, 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (item_factors, members) = clustered_factors(&mut rng, items, 30, factors);
        let built = ItemIndex::build(&item_factors, factors, SHAPE, 2, |_| {}).unwrap();
        assert_eq!(built.len(), items);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("item_index.usearch");
        built.save(&path).unwrap();
        drop(built);
        let index = ItemIndex::open(&path, items, factors, 128, 4).unwrap();
        let matrix = ItemMatrix::new(item_factors, factors);
        let (mut plain, mut filtered) = (0.0, 0.0);
        for user in members.chunks(factors) {
            let exact: Vec<u32> = matrix
                .top_k_exact(user, k, |_| true)
                .iter()
                .map(|s| s.index)
                .collect();
            let found = index.search(user, k, |_| true).unwrap();
            plain += recall(&found, &exact);
            // The filter is asked inside the search: a filter that removes two items in three
            // still gets k answers, all allowed.
            let allowed = |i: u32| i.is_multiple_of(3);
            let exact: Vec<u32> = matrix
                .top_k_exact(user, k, allowed)
                .iter()
                .map(|s| s.index)
                .collect();
            let found = index.search(user, k, allowed).unwrap();
            assert_eq!(found.len(), k);
            assert!(found.iter().all(|&i| allowed(i)), "{found:?}");
            filtered += recall(&found, &exact);
            // Re-scored candidates carry exact scores, best first.
            let rescored = matrix.rescore(user, &found, k);
            for pair in rescored.windows(2) {
                assert!(pair[0].score >= pair[1].score);
            }
            for s in &rescored {
                assert_eq!(s.score, matrix.score(s.index as usize, user));
            }
        }
        let members = members.len() / factors;
        let (plain, filtered) = (plain / members as f64, filtered / members as f64);
        assert!(plain >= 0.9, "recall {plain}");
        assert!(filtered >= 0.9, "filtered recall {filtered}");
    }

    #[test]
    fn an_index_that_does_not_fit_its_version_is_refused_by_name() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (item_factors, _) = clustered_factors(&mut rng, 500, 0, 8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("item_index.usearch");
        ItemIndex::build(&item_factors, 8, SHAPE, 1, |_| {})
            .unwrap()
            .save(&path)
            .unwrap();
        let err = ItemIndex::open(&path, 501, 8, 64, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("item_index.usearch") && err.contains("500 items"),
            "{err}"
        );
        let err = ItemIndex::open(&path, 500, 16, 64, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("9 dimensions"), "{err}");
        std::fs::write(&path, b"not an index").unwrap();
        assert!(ItemIndex::open(&path, 500, 8, 64, 1).is_err());
    }
}
