//! A benchmark's own split, scored as its papers score it: train on the published training pairs,
//! then for every member with test pairs rank **every** item the member has no training pair
//! with and compare the top `k` to the test items — Recall@k = hits / test items, NDCG@k with
//! binary relevance and ideal DCG over min(test items, k), averaged over members with a
//! bootstrap interval (the protocol of NGCF, LightGCN and the BARS benchmark).
//!
//! The pair files are CSV with a header naming `user_id` and `item_id` (or two columns, member
//! first); any family trains on the binary member × item matrix they make.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use recsys_shared::model::matrix::SparseMatrix;
use recsys_shared::model::top_k::select_top;
use recsys_shared::model::{Family, MemberInput, Scorer};
use recsys_shared::progress::Progress;

use crate::evaluate::bootstrap_interval;
use crate::family::{fit, FamilyParams, Fitted};
use crate::metrics::{full_recall_at, ndcg_at};
use crate::{OfflineError, Result};

/// The pairs of a published split, on dense indices.
#[derive(Debug, Clone)]
pub struct PairsSplit {
    /// Member ids as written in the files, by index.
    pub members: Vec<String>,
    /// Item ids, by index: every item of either file (the published protocol ranks them all).
    pub items: Vec<String>,
    /// Members × items, 1 where a training pair exists.
    pub train: SparseMatrix,
    /// Each member's test items, sorted (empty for members without any).
    pub test: Vec<Vec<u32>>,
}

impl PairsSplit {
    /// Reads the training and test pair files. Repeated pairs count once; a test pair that is
    /// also a training pair is refused (the split would score what the model was given).
    pub fn read(train: &Path, test: &Path) -> Result<Self> {
        let mut members = Ids::default();
        let mut items = Ids::default();
        let train_pairs = read_pairs(train, &mut members, &mut items)?;
        let test_pairs = read_pairs(test, &mut members, &mut items)?;
        if train_pairs.is_empty() {
            return Err(OfflineError::input(train, "no training pairs"));
        }
        let matrix = SparseMatrix::from_triplets(
            members.names.len(),
            items.names.len(),
            train_pairs.iter().map(|&(u, i, _)| (u, i, 1.0)).collect(),
        );
        // Duplicates were summed; the matrix is binary.
        let matrix = SparseMatrix {
            values: vec![1.0; matrix.nnz()],
            ..matrix
        };
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); members.names.len()];
        for &(u, i, line) in &test_pairs {
            if matrix.row(u as usize).0.binary_search(&i).is_ok() {
                return Err(OfflineError::Line {
                    path: test.to_path_buf(),
                    line,
                    problem: format!(
                        "member {} and item {} are also a training pair",
                        members.names[u as usize], items.names[i as usize]
                    ),
                });
            }
            held[u as usize].push(i);
        }
        for t in &mut held {
            t.sort_unstable();
            t.dedup();
        }
        Ok(PairsSplit {
            members: members.names,
            items: items.names,
            train: matrix,
            test: held,
        })
    }

    /// Pairs in the test file (after removing repeats).
    pub fn test_pairs(&self) -> usize {
        self.test.iter().map(Vec::len).sum()
    }

    /// A validation split of the same shape, from the training pairs alone: `fraction` of each
    /// member's training pairs (rounded, at least one; members with a single pair keep it) drawn
    /// at random from `seed` become the member's test items, the rest its training pairs. The
    /// published test pairs are not looked at, so choosing by it leaks nothing of the test.
    pub fn hold_out(&self, fraction: f64, seed: u64) -> PairsSplit {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut kept = Vec::with_capacity(self.train.nnz());
        let mut test = vec![Vec::new(); self.members.len()];
        for (u, held) in test.iter_mut().enumerate() {
            let mut items = self.train.row(u).0.to_vec();
            if items.len() >= 2 {
                let n =
                    ((items.len() as f64 * fraction).round() as usize).clamp(1, items.len() - 1);
                items.shuffle(&mut rng);
                held.extend_from_slice(&items[..n]);
                held.sort_unstable();
                items.drain(..n);
            }
            kept.extend(items.into_iter().map(|i| (u as u32, i, 1.0)));
        }
        PairsSplit {
            members: self.members.clone(),
            items: self.items.clone(),
            train: SparseMatrix::from_triplets(self.members.len(), self.items.len(), kept),
            test,
        }
    }
}

#[derive(Default)]
struct Ids {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl Ids {
    fn code(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.names.len() as u32;
        self.index.insert(id.to_string(), i);
        self.names.push(id.to_string());
        i
    }
}

/// `(member, item, line)` of every row of a pairs file.
fn read_pairs(path: &Path, members: &mut Ids, items: &mut Ids) -> Result<Vec<(u32, u32, u64)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| OfflineError::input(path, format!("cannot read: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| OfflineError::input(path, format!("cannot read the header: {e}")))?
        .clone();
    let column = |name: &str, fallback: usize| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .unwrap_or(fallback)
    };
    let (member_column, item_column) = (column("user_id", 0), column("item_id", 1));
    if headers.len() < 2 {
        return Err(OfflineError::input(
            path,
            "needs two columns, user_id and item_id",
        ));
    }
    let mut pairs = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row as u64 + 2;
        let record = record.map_err(|e| OfflineError::Line {
            path: path.to_path_buf(),
            line,
            problem: e.to_string(),
        })?;
        let field = |c: usize, name: &str| match record.get(c).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(OfflineError::Line {
                path: path.to_path_buf(),
                line,
                problem: format!("{name} is missing"),
            }),
        };
        let member = field(member_column, "user_id")?;
        let item = field(item_column, "item_id")?;
        pairs.push((members.code(&member), items.code(&item), line));
    }
    Ok(pairs)
}

/// A metric's mean over members with its 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub interval: [f64; 2],
}

impl Estimate {
    fn of(values: &[f64], seed: u64) -> Self {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        Estimate {
            mean,
            interval: bootstrap_interval(values, seed),
        }
    }
}

/// What one family scored on a split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitEvaluation {
    pub family: Family,
    pub params: serde_json::Value,
    pub k: usize,
    pub members: usize,
    pub items: usize,
    pub training_pairs: usize,
    pub test_pairs: usize,
    /// Members with test pairs (those averaged over).
    pub evaluated_members: usize,
    pub recall: Estimate,
    pub ndcg: Estimate,
    /// Training, from the matrix to the served form.
    pub fit_seconds: f64,
    /// Ranking every evaluated member's whole catalog.
    pub score_seconds: f64,
    /// Item × item weights kept (history families).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_weights: Option<usize>,
}

/// Trains `params` on the split's training pairs with `threads` threads, ranks every evaluated
/// member's whole catalog and scores the top `k`.
pub fn evaluate_split(
    split: &PairsSplit,
    params: &FamilyParams,
    k: usize,
    threads: usize,
    seed: u64,
) -> Result<SplitEvaluation> {
    let started = Instant::now();
    let fitted = fit(&split.train, params, threads, "fit")?;
    let fit_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let evaluated: Vec<usize> = (0..split.members.len())
        .filter(|&u| !split.test[u].is_empty())
        .collect();
    let progress = Mutex::new(Progress::new("rank", evaluated.len() as u64));
    let done = AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| OfflineError::Usage(format!("cannot start {threads} threads: {e}")))?;
    let per_member: Vec<(f64, f64)> = pool.install(|| {
        evaluated
            .par_iter()
            .map_init(
                || vec![0.0f32; split.items.len()],
                |scores, &u| {
                    let seen = split.train.row(u).0;
                    let ranked = rank(&fitted, u, seen, scores, k);
                    let target = &split.test[u];
                    if done.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
                        progress.lock().expect("progress").advance(256, "members");
                    }
                    (
                        full_recall_at(&ranked, target, k),
                        ndcg_at(&ranked, target, k),
                    )
                },
            )
            .collect()
    });
    progress.into_inner().expect("progress").finish();
    let score_seconds = started.elapsed().as_secs_f64();
    let recalls: Vec<f64> = per_member.iter().map(|m| m.0).collect();
    let ndcgs: Vec<f64> = per_member.iter().map(|m| m.1).collect();
    Ok(SplitEvaluation {
        family: params.family(),
        params: params.describe(),
        k,
        members: split.members.len(),
        items: split.items.len(),
        training_pairs: split.train.nnz(),
        test_pairs: split.test_pairs(),
        evaluated_members: evaluated.len(),
        recall: Estimate::of(&recalls, seed),
        ndcg: Estimate::of(&ndcgs, seed.wrapping_add(1)),
        fit_seconds,
        score_seconds,
        served_weights: match &fitted.scorer {
            Scorer::Weights(w) => Some(w.nnz()),
            Scorer::Factors(_) => None,
        },
    })
}

/// Member `u`'s top `k` over every item outside `seen` (sorted).
fn rank(fitted: &Fitted, u: usize, seen: &[u32], scores: &mut [f32], k: usize) -> Vec<u32> {
    let allowed = |i: u32| seen.binary_search(&i).is_err();
    let member = match fitted.member_vector(u) {
        Some(vector) => MemberInput::Vector(vector),
        None => MemberInput::History(seen),
    };
    fitted.scorer.score_all(member, scores);
    select_top(scores, k, &allowed)
        .into_iter()
        .map(|s| s.index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_shared::model::item_knn::KnnParams;
    use std::io::Write;

    fn file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    #[test]
    fn a_held_out_split_moves_a_share_of_each_members_training_pairs_to_its_test() {
        let rows: Vec<(u32, u32, f32)> = (0..50u32)
            .flat_map(|u| (0..(1 + u % 12)).map(move |i| (u, (u * 7 + i * 3) % 40, 1.0)))
            .collect();
        let train = SparseMatrix::from_triplets(50, 40, rows);
        let split = PairsSplit {
            members: (0..50).map(|u| format!("u{u}")).collect(),
            items: (0..40).map(|i| format!("i{i}")).collect(),
            train: train.clone(),
            test: vec![vec![999]; 50],
        };
        let held = split.hold_out(0.2, 3);
        assert_eq!(held.train.nnz() + held.test_pairs(), train.nnz());
        for u in 0..50 {
            let (all, kept, test) = (train.row(u).0, held.train.row(u).0, &held.test[u]);
            if all.len() == 1 {
                assert!(
                    test.is_empty() && kept == all,
                    "member {u}: its only pair stays"
                );
                continue;
            }
            let want = ((all.len() as f64 * 0.2).round() as usize).clamp(1, all.len() - 1);
            assert_eq!(test.len(), want, "member {u}");
            // Disjoint, and together the member's training pairs; never the published test.
            assert!(test
                .iter()
                .all(|i| kept.binary_search(i).is_err() && all.contains(i)));
            assert!(!test.contains(&999));
        }
        assert_eq!(
            held.test,
            split.hold_out(0.2, 3).test,
            "the same seed, the same split"
        );
        assert_ne!(held.test, split.hold_out(0.2, 4).test);
    }

    #[test]
    fn a_split_reads_both_files_onto_one_index_and_refuses_overlap_and_gaps_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let train = file(
            dir.path(),
            "train.csv",
            "user_id,item_id\n1,10\n1,11\n1,10\n2,11\n",
        );
        let test = file(dir.path(), "test.csv", "user_id,item_id\n1,12\n2,10\n");
        let split = PairsSplit::read(&train, &test).unwrap();
        assert_eq!(split.members, vec!["1", "2"]);
        assert_eq!(split.items, vec!["10", "11", "12"]);
        assert_eq!(split.train.nnz(), 3, "the repeated pair counts once");
        assert_eq!(split.train.values, vec![1.0; 3]);
        assert_eq!(split.test, vec![vec![2], vec![0]]);

        let overlap = file(dir.path(), "overlap.csv", "user_id,item_id\n1,12\n2,11\n");
        let e = PairsSplit::read(&train, &overlap).unwrap_err().to_string();
        assert!(
            e.contains("overlap.csv: line 3") && e.contains("training pair"),
            "{e}"
        );
        let gap = file(dir.path(), "gap.csv", "user_id,item_id\n1,\n");
        let e = PairsSplit::read(&train, &gap).unwrap_err().to_string();
        assert!(
            e.contains("gap.csv: line 2") && e.contains("item_id"),
            "{e}"
        );
        let e = PairsSplit::read(&dir.path().join("none.csv"), &test)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.csv"), "{e}");
    }

    #[test]
    fn the_protocol_ranks_every_unseen_item_and_divides_by_the_test_items() {
        // Item-kNN with one neighbour each on a split where the answer is known: members who
        // have item a also have item b.
        let dir = tempfile::tempdir().unwrap();
        let train = file(
            dir.path(),
            "train.csv",
            "user_id,item_id\nu1,a\nu1,b\nu2,a\nu2,b\nu3,c\nu3,d\nu4,a\nu5,c\n",
        );
        // u4 should get b (a's neighbour); u5 should get d. u4 also has a test item no model
        // can find (e, only in the test file): recall 1/2 for u4.
        let test = file(
            dir.path(),
            "test.csv",
            "user_id,item_id\nu4,b\nu4,e\nu5,d\n",
        );
        let split = PairsSplit::read(&train, &test).unwrap();
        let params = FamilyParams::ItemKnn(KnnParams {
            neighbours: 1,
            shrink: 0.0,
            alpha: 0.5,
            member_weighting: Default::default(),
        });
        let result = evaluate_split(&split, &params, 1, 1, 7).unwrap();
        assert_eq!(result.evaluated_members, 2);
        assert_eq!(result.items, 5);
        assert!((result.recall.mean - (0.5 + 1.0) / 2.0).abs() < 1e-12);
        assert!(
            (result.ndcg.mean - 1.0).abs() < 1e-12,
            "both top-1 are hits"
        );
        assert!(result.recall.interval[0] <= result.recall.mean);
        assert!(result.recall.interval[1] >= result.recall.mean);
    }
}
