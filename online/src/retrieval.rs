//! Approximate retrieval of a member vector's items (`online.retrieval = "ann"`, or an experiment
//! variant's `retrieval`), and of an item's nearest items for `SimilarItems` and the "because you
//! watched" rows from the similar-items index: the version's item index proposes `candidates_per_item × k` items per
//! norm range, asking the request's filter about each inside the search, and scores them exactly,
//! so every score served is exact and only recall is approximate.
//!
//! Recall is observed in production: a share of ANN requests (`recall_sample_rate`) is also
//! scanned exactly after the answer has gone — on one thread of its own at the lowest priority
//! (nice 19), so a request that wants the CPU takes it from a check at once and a check stretches
//! no request's latency, while on a saturated machine checks still progress slowly — and the
//! overlap is reported as
//! `recsys_ann_recall_at_k` (member vectors) and `recsys_similar_recall_at_k` (`SimilarItems`
//! from the similar-items index; the "because you watched" rows share its index and search but
//! are not sampled). At most [`MAX_CHECKS`] such scans are running or waiting at once; a sample
//! that finds them all taken is skipped, so checking never queues work behind the requests it
//! measures.
//!
//! This module decides nothing about which requests use the index (the treatment does) and owns
//! no index (the catalog's model does).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use recsys_shared::config::AnnSearchConfig;
use recsys_shared::model::ials::ann::ItemIndex;
use recsys_shared::model::ials::ItemMatrix;
use recsys_shared::model::top_k::Scored;

use crate::catalog::Catalog;
use crate::metrics::{ANN_RECALL, SIMILAR_RECALL};

/// Exact scans checking ANN answers that may be running or waiting at once.
pub const MAX_CHECKS: usize = 2;

/// The thread the checks run on, one at a time, at the lowest priority.
static CHECKS: std::sync::LazyLock<rayon::ThreadPool> = std::sync::LazyLock::new(|| {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "recall-check".into())
        .start_handler(|_| lowest_priority())
        .build()
        .expect("starts the recall-check thread")
});

/// Gives the calling thread the lowest priority (nice 19; on Linux a thread id names one
/// thread).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id.
        let done = unsafe {
            let thread = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 19)
        };
        if done != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(),
                "recall checks run at normal priority");
        }
    }
}

/// Searches the item index and re-scores, and samples its recall.
pub struct AnnRetrieval {
    candidates_per_item: usize,
    sample_rate: f64,
    checks: Arc<AtomicUsize>,
}

impl AnnRetrieval {
    pub fn new(config: &AnnSearchConfig) -> Self {
        AnnRetrieval {
            candidates_per_item: config.candidates_per_item.max(1),
            sample_rate: config.recall_sample_rate,
            checks: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The member's `k` best items among those `allowed`, from the index's candidates scored
    /// exactly; `Err` when the search itself failed (the caller scans instead).
    pub fn top_k(
        &self,
        index: &ItemIndex,
        items: &ItemMatrix,
        user: &[f32],
        k: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Result<Vec<Scored>, String> {
        index
            .search(
                user,
                k,
                k.saturating_mul(self.candidates_per_item),
                allowed,
                |i| items.score(i as usize, user),
            )
            .map_err(|e| e.to_string())
    }

    /// The `k` items most like item `seed` by cosine among those `allowed`, from the version's
    /// similar-items index; `Err` when the search failed (the caller scans instead).
    pub fn similar(
        &self,
        index: &ItemIndex,
        items: &ItemMatrix,
        seed: u32,
        k: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Result<Vec<Scored>, String> {
        index
            .similar(
                items,
                seed as usize,
                k,
                k.saturating_mul(self.candidates_per_item),
                allowed,
            )
            .map_err(|e| e.to_string())
    }

    /// With probability `recall_sample_rate`, scans `catalog` exactly for the same request in the
    /// background and reports how much of that top `k` `answer` held.
    pub fn sample_recall(
        &self,
        catalog: Arc<Catalog>,
        user: Vec<f32>,
        k: usize,
        answer: &[Scored],
        allowed: impl Fn(u32) -> bool + Send + Sync + 'static,
    ) {
        let Some(running) = self.start_check() else {
            return;
        };
        let found: Vec<u32> = answer.iter().map(|s| s.index).collect();
        CHECKS.spawn(move || {
            let _running = running;
            if let recsys_shared::model::Scorer::Factors(items) = &catalog.model.scorer {
                let exact = items.top_k(&user, k, allowed);
                if let Some(recall) = recall(&found, &exact) {
                    ANN_RECALL.observe(recall);
                }
            }
        });
    }
}

impl AnnRetrieval {
    /// With probability `recall_sample_rate`, finds the `k` items most like `seed` exactly in
    /// the background and reports how much of them `answer` (from the similar-items index, with
    /// no filter: `SimilarItems`) held, as `recsys_similar_recall_at_k`.
    pub fn sample_similar_recall(
        &self,
        catalog: Arc<Catalog>,
        seed: u32,
        k: usize,
        answer: &[Scored],
    ) {
        let Some(running) = self.start_check() else {
            return;
        };
        let found: Vec<u32> = answer.iter().map(|s| s.index).collect();
        CHECKS.spawn(move || {
            let _running = running;
            let exact = catalog.model.scorer.similar(seed, k, |_| true);
            if let Some(recall) = recall(&found, &exact) {
                SIMILAR_RECALL.observe(recall);
            }
        });
    }

    /// A check's place when this request is sampled and a place is free.
    fn start_check(&self) -> Option<Running> {
        if self.sample_rate <= 0.0 || rand::random::<f64>() >= self.sample_rate {
            return None;
        }
        self.checks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CHECKS).then_some(n + 1)
            })
            .ok()
            .map(|_| Running(self.checks.clone()))
    }
}

/// One running check, counted down when it ends (even by a panic).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Share of `exact` that `found` holds; `None` when nothing was eligible.
fn recall(found: &[u32], exact: &[Scored]) -> Option<f64> {
    if exact.is_empty() {
        return None;
    }
    let hits = exact.iter().filter(|s| found.contains(&s.index)).count();
    Some(hits as f64 / exact.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn checks_run_at_the_lowest_priority() {
        // SAFETY: plain system calls on the calling thread's own id.
        let own_nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        // The tests may themselves run niced (`nice cargo test`): the test's thread keeps
        // whatever it started with.
        let before = own_nice();
        let (tx, rx) = std::sync::mpsc::channel();
        CHECKS.spawn(move || tx.send(own_nice()).unwrap());
        assert_eq!(rx.recv().unwrap(), 19);
        assert_eq!(own_nice(), before, "only the check thread is lowered");
    }

    #[test]
    fn recall_is_the_share_of_the_exact_answer_found() {
        let exact: Vec<Scored> = (0..4).map(|index| Scored { index, score: 1.0 }).collect();
        assert_eq!(recall(&[0, 1, 9, 3], &exact), Some(0.75));
        assert_eq!(recall(&[], &exact), Some(0.0));
        assert_eq!(recall(&[1], &[]), None);
    }
}
