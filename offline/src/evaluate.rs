//! Offline evaluation: strong generalization and leave-last-out, each next to the popularity
//! baseline on the same split, plus catalog coverage.
//!
//! *Strong generalization* (Liang et al. 2018; Rendle et al. 2022): members with at least
//! `min_positives` positives are eligible; a seeded fraction of them is held out; item factors are
//! trained on everyone else; each held-out member's positives are split 80/20 at random, the 80 %
//! folded in with [`recsys_shared::model::ials::FoldIn`] (the nearline tier's function) and the 20 %
//! kept as the target. Every item is ranked except the folded-in ones.
//!
//! *Leave-last-out*: each member with two or more positives loses their latest one (the target);
//! the model is trained on the rest and the member's trained vector ranks every item except their
//! training items.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use recsys_shared::artifact::{write_batches, ActivityBucket, Curves, Evaluation};
use recsys_shared::config::{EvaluationConfig, Protocol};
use recsys_shared::model::ials::{FoldIn, ItemMatrix, Objective};
use recsys_shared::model::{MemberInput, Scorer};
use recsys_shared::SharedError;

use crate::family::{fit, FamilyParams, Fitted};
use crate::features::TrainingTable;
use crate::metrics::{hit_at, ndcg_at, recall_at, top_k};
use crate::{OfflineError, Result};
use recsys_shared::model::ials::train::{self as als, AlsParams, IterationReport};

/// One evaluated member: their state for the model, what not to recommend, and what should be
/// found.
struct Case {
    state: CaseState,
    /// Sorted item indices.
    exclude: Vec<u32>,
    /// Sorted item indices.
    target: Vec<u32>,
}

/// A member as the model's family represents them.
enum CaseState {
    /// iALS: folded in, or trained.
    Vector(Vec<f32>),
    /// History families: the item indices the member has.
    History(Vec<u32>),
}

impl CaseState {
    fn input(&self) -> MemberInput<'_> {
        match self {
            CaseState::Vector(v) => MemberInput::Vector(v),
            CaseState::History(h) => MemberInput::History(h),
        }
    }
}

/// What one member's rankings scored, model and baseline side by side.
struct CaseResult {
    /// The metrics in order, then the popularity percentile of the top `coverage_k`.
    model: Vec<f64>,
    popularity: Vec<f64>,
    /// Recall@k and NDCG@k for k = 1..=depth.
    model_curves: (Vec<f64>, Vec<f64>),
    popularity_curves: (Vec<f64>, Vec<f64>),
    /// Items the member was ranked from.
    history: usize,
    model_top: Vec<u32>,
    popularity_top: Vec<u32>,
}

/// The exact split, as `(member index, item index)` pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    pub train: Vec<(u32, u32)>,
    pub foldin: Vec<(u32, u32)>,
    pub target: Vec<(u32, u32)>,
}

/// Evaluates iALS with `params` on `table` with the configured protocol.
pub fn evaluate(
    table: &TrainingTable,
    params: &AlsParams,
    config: &EvaluationConfig,
    on_iteration: impl FnMut(IterationReport),
) -> Result<(Evaluation, Split)> {
    evaluate_family(
        table,
        &FamilyParams::Ials(params.clone()),
        config,
        on_iteration,
    )
}

/// Evaluates any family on `table` with the configured protocol (iALS reports its iterations
/// to `on_iteration`).
pub fn evaluate_family(
    table: &TrainingTable,
    params: &FamilyParams,
    config: &EvaluationConfig,
    on_iteration: impl FnMut(IterationReport),
) -> Result<(Evaluation, Split)> {
    match config.protocol {
        Protocol::StrongGeneralization => {
            strong_generalization(table, params, config, on_iteration)
        }
        Protocol::LeaveLastOut => leave_last_out(table, params, on_iteration),
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut StdRng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.random_range(0..=i));
    }
}

/// Members held out of training: each one's fold-in history and target.
#[derive(Debug, Clone, Default)]
pub struct HeldOut {
    /// `held[u]`: member `u` is held out.
    pub held: Vec<bool>,
    /// Sorted member indices.
    pub members: Vec<u32>,
    /// The 80 % folded in, `(item, strength)`.
    pub histories: Vec<Vec<(u32, f32)>>,
    /// The 20 % to find, sorted item indices.
    pub targets: Vec<Vec<u32>>,
}

impl HeldOut {
    /// The split as pairs: everyone else's pairs train, the held members' fold in or are targets.
    pub fn split(&self, table: &TrainingTable) -> Split {
        let mut split = Split::default();
        for ((&u, history), target) in self.members.iter().zip(&self.histories).zip(&self.targets) {
            split.target.extend(target.iter().map(|&i| (u, i)));
            split.foldin.extend(history.iter().map(|&(i, _)| (u, i)));
        }
        split.train = table
            .pairs
            .iter()
            .filter(|p| !self.held[p.user as usize])
            .map(|p| (p.user, p.item))
            .collect();
        split
    }
}

/// The members strong generalization holds out of training (`config`'s fraction, minimum and
/// seed): the test members of `evaluate`, of `tune`'s final fits and of `bench-quality`.
pub fn test_members(table: &TrainingTable, config: &EvaluationConfig) -> Result<HeldOut> {
    let all: Vec<u32> = (0..table.user_ids.len() as u32).collect();
    hold_out(
        table,
        &all,
        config.heldout_fraction,
        config.min_positives,
        config.seed,
    )
}

/// The strong-generalization split `evaluate` trains and scores on, without training.
pub fn strong_generalization_split(
    table: &TrainingTable,
    config: &EvaluationConfig,
) -> Result<Split> {
    Ok(test_members(table, config)?.split(table))
}

/// Holds out a seeded `fraction` of the `candidates` with at least `min_positives` positives, and
/// splits each one's positives 80/20 at random into fold-in history and target.
pub fn hold_out(
    table: &TrainingTable,
    candidates: &[u32],
    fraction: f64,
    min_positives: usize,
    seed: u64,
) -> Result<HeldOut> {
    let ranges = table.member_ranges();
    let mut eligible: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|&u| ranges[u as usize].len() >= min_positives)
        .collect();
    if eligible.len() < 2 {
        return Err(OfflineError::Usage(format!(
            "strong generalization needs at least 2 members with {min_positives} or more positives; found {}",
            eligible.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    shuffle(&mut eligible, &mut rng);
    let held_count =
        ((eligible.len() as f64 * fraction).round() as usize).clamp(1, eligible.len() - 1);
    let mut out = HeldOut {
        held: vec![false; ranges.len()],
        members: eligible[..held_count].to_vec(),
        ..Default::default()
    };
    out.members.sort_unstable();
    for &u in &out.members {
        out.held[u as usize] = true;
        let mut pairs: Vec<_> = table.pairs[ranges[u as usize].clone()].to_vec();
        shuffle(&mut pairs, &mut rng);
        let n_target = ((pairs.len() as f64 * 0.2).round() as usize).max(1);
        let mut target: Vec<u32> = pairs[..n_target].iter().map(|p| p.item).collect();
        target.sort_unstable();
        out.histories.push(
            pairs[n_target..]
                .iter()
                .map(|p| (p.item, p.strength))
                .collect(),
        );
        out.targets.push(target);
    }
    Ok(out)
}

/// Folds each held-out member in against `item_factors` and scores their rankings (and the
/// popularity baseline's) on their targets.
pub fn score_held_out(
    held: &HeldOut,
    item_factors: &[f32],
    k: usize,
    params: &Objective,
    popularity: &[f32],
    seed: u64,
) -> Result<Evaluation> {
    let scorer = Scorer::Factors(ItemMatrix::new(item_factors.to_vec(), k));
    score_held_out_with(held, &scorer, Some(params), popularity, seed)
}

/// [`score_held_out`] for any family's scorer: a factor model folds each member in with
/// `objective`, a weight model ranks from the member's fold-in history itself.
pub(crate) fn score_held_out_with(
    held: &HeldOut,
    scorer: &Scorer,
    objective: Option<&Objective>,
    popularity: &[f32],
    seed: u64,
) -> Result<Evaluation> {
    let fold_in = match (scorer, objective) {
        (Scorer::Factors(items), Some(objective)) => {
            Some(FoldIn::new(items.as_slice(), items.factors(), *objective))
        }
        _ => None,
    };
    let cases = held
        .histories
        .par_iter()
        .zip(&held.targets)
        .map(|(history, target)| {
            let mut exclude: Vec<u32> = history.iter().map(|(i, _)| *i).collect();
            exclude.sort_unstable();
            let state = match (scorer, &fold_in) {
                (Scorer::Factors(items), Some(fold_in)) => {
                    CaseState::Vector(fold_in.solve(items.as_slice(), history)?)
                }
                _ => CaseState::History(exclude.clone()),
            };
            Ok(Case {
                state,
                exclude,
                target: target.clone(),
            })
        })
        .collect::<std::result::Result<Vec<_>, SharedError>>()?;
    Ok(score_cases(
        &cases,
        scorer,
        popularity,
        Protocol::StrongGeneralization,
        seed,
    ))
}

fn strong_generalization(
    table: &TrainingTable,
    params: &FamilyParams,
    config: &EvaluationConfig,
    on_iteration: impl FnMut(IterationReport),
) -> Result<(Evaluation, Split)> {
    let held = test_members(table, config)?;
    let split = held.split(table);

    let matrix = table.matrix(|p| !held.held[p.user as usize]);
    let fitted = fit_quietly(&matrix, params, on_iteration)?;
    let popularity = popularity_scores(&matrix.indices, table.item_ids.len());
    let objective = match params {
        FamilyParams::Ials(p) => Some(p.objective()),
        _ => None,
    };
    let evaluation = score_held_out_with(
        &held,
        &fitted.scorer,
        objective.as_ref(),
        &popularity,
        config.seed,
    )?;
    Ok((evaluation, split))
}

/// Fits for an evaluation: iALS reports to `on_iteration` (the caller shows it), the other
/// families show their own progress.
fn fit_quietly(
    matrix: &recsys_shared::model::matrix::SparseMatrix,
    params: &FamilyParams,
    mut on_iteration: impl FnMut(IterationReport),
) -> Result<Fitted> {
    match params {
        FamilyParams::Ials(p) => Ok(Fitted::from_ials(als::train(matrix, p, &mut on_iteration)?)),
        other => fit(matrix, other, other.threads(0), "evaluate"),
    }
}

fn leave_last_out(
    table: &TrainingTable,
    params: &FamilyParams,
    on_iteration: impl FnMut(IterationReport),
) -> Result<(Evaluation, Split)> {
    let ranges = table.member_ranges();
    // The target of each member with ≥ 2 positives: newest pair, ties to the larger item index.
    let mut is_target = vec![false; table.pairs.len()];
    let mut members = Vec::new();
    for (u, range) in ranges.iter().enumerate() {
        if range.len() < 2 {
            continue;
        }
        let newest = range
            .clone()
            .max_by_key(|&p| (table.pairs[p].last_ts_ms, table.pairs[p].item))
            .expect("non-empty");
        is_target[newest] = true;
        members.push((u, newest));
    }
    if members.is_empty() {
        return Err(OfflineError::Usage(
            "leave-last-out needs members with at least 2 positives; found none".into(),
        ));
    }
    let mut split = Split::default();
    let mut keep = Vec::with_capacity(table.pairs.len());
    for (p, pair) in table.pairs.iter().enumerate() {
        if is_target[p] {
            split.target.push((pair.user, pair.item));
        } else {
            split.train.push((pair.user, pair.item));
            keep.push((pair.user, pair.item, pair.strength));
        }
    }
    let matrix = recsys_shared::model::matrix::SparseMatrix::from_triplets(
        table.user_ids.len(),
        table.item_ids.len(),
        keep,
    );
    let fitted = fit_quietly(&matrix, params, on_iteration)?;
    let cases: Vec<Case> = members
        .iter()
        .map(|&(u, target)| Case {
            state: match fitted.member_vector(u) {
                Some(vector) => CaseState::Vector(vector.to_vec()),
                None => CaseState::History(matrix.row(u).0.to_vec()),
            },
            exclude: matrix.row(u).0.to_vec(),
            target: vec![table.pairs[target].item],
        })
        .collect();
    let popularity = popularity_scores(&matrix.indices, table.item_ids.len());
    Ok((
        score_cases(
            &cases,
            &fitted.scorer,
            &popularity,
            Protocol::LeaveLastOut,
            0,
        ),
        split,
    ))
}

/// Members per item among the training rows (the baseline's scores).
pub fn popularity_scores(item_indices: &[u32], items: usize) -> Vec<f32> {
    let mut counts = vec![0f32; items];
    for &i in item_indices {
        counts[i as usize] += 1.0;
    }
    counts
}

/// Bootstrap resamples behind each confidence interval.
const BOOTSTRAP_RESAMPLES: usize = 1000;

/// History-size buckets of the by-activity breakdown: `[min, max]`, `None` open.
const ACTIVITY_BUCKETS: [(usize, Option<usize>); 5] = [
    (0, Some(9)),
    (10, Some(19)),
    (20, Some(49)),
    (50, Some(99)),
    (100, None),
];

/// What one ranking found: for each of its first `depth` positions, whether it was a target.
struct Ranked {
    hits: Vec<bool>,
    targets: usize,
}

impl Ranked {
    fn new(ranked: &[u32], target: &[u32]) -> Self {
        Ranked {
            hits: ranked
                .iter()
                .map(|i| target.binary_search(i).is_ok())
                .collect(),
            targets: target.len(),
        }
    }

    /// Recall@k and NDCG@k for every k = 1..=depth in one pass.
    fn curves(&self, depth: usize) -> (Vec<f64>, Vec<f64>) {
        let discount = |rank: usize| 1.0 / ((rank + 1) as f64).log2();
        let (mut recall, mut ndcg) = (Vec::with_capacity(depth), Vec::with_capacity(depth));
        let (mut hits, mut dcg, mut ideal) = (0usize, 0.0f64, 0.0f64);
        for k in 1..=depth {
            if self.hits.get(k - 1).copied().unwrap_or(false) {
                hits += 1;
                dcg += discount(k);
            }
            if k <= self.targets {
                ideal += discount(k);
            }
            let denominator = k.min(self.targets);
            recall.push(if denominator == 0 {
                0.0
            } else {
                hits as f64 / denominator as f64
            });
            ndcg.push(if ideal == 0.0 { 0.0 } else { dcg / ideal });
        }
        (recall, ndcg)
    }
}

/// The 2.5 % and 97.5 % quantiles of the mean of `values` over `BOOTSTRAP_RESAMPLES` resamples
/// of the members with replacement.
pub fn bootstrap_interval(values: &[f64], seed: u64) -> [f64; 2] {
    if values.is_empty() {
        return [0.0, 0.0];
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    [at(0.025), at(0.975)]
}

/// For each item, the fraction of items at most as popular as it (0 = least, 1 = most popular).
fn popularity_percentiles(popularity: &[f32]) -> Vec<f64> {
    let mut order: Vec<u32> = (0..popularity.len() as u32).collect();
    order.sort_by(|&a, &b| popularity[a as usize].total_cmp(&popularity[b as usize]));
    let n = popularity.len().max(1) as f64;
    let mut out = vec![0.0; popularity.len()];
    let mut start = 0;
    while start < order.len() {
        // Ties share the highest rank of their group.
        let mut end = start;
        while end < order.len()
            && popularity[order[end] as usize] == popularity[order[start] as usize]
        {
            end += 1;
        }
        for &i in &order[start..end] {
            out[i as usize] = end as f64 / n;
        }
        start = end;
    }
    out
}

/// Scores the cases: metric means with bootstrap intervals, coverage, popularity bias, curves
/// over k and the by-activity breakdown, for the model and the popularity baseline.
fn score_cases(
    cases: &[Case],
    scorer: &Scorer,
    popularity: &[f32],
    protocol: Protocol,
    seed: u64,
) -> Evaluation {
    let (metric_names, depth): (&[&str], usize) = match protocol {
        Protocol::StrongGeneralization => (&["recall@20", "recall@50", "ndcg@100"], 100),
        Protocol::LeaveLastOut => (&["hr@10", "ndcg@10"], 10),
    };
    let coverage_k = if protocol == Protocol::LeaveLastOut {
        10
    } else {
        20
    };
    let metric = |name: &str, ranked: &[u32], target: &[u32]| -> f64 {
        match name {
            "recall@20" => recall_at(ranked, target, 20),
            "recall@50" => recall_at(ranked, target, 50),
            "ndcg@100" => ndcg_at(ranked, target, 100),
            "hr@10" => hit_at(ranked, target, 10),
            "ndcg@10" => ndcg_at(ranked, target, 10),
            other => unreachable!("unknown metric {other}"),
        }
    };
    let n_items = popularity.len();
    let percentile = popularity_percentiles(popularity);
    let bias = |top: &[u32]| -> f64 {
        if top.is_empty() {
            return 0.0;
        }
        top.iter().map(|&i| percentile[i as usize]).sum::<f64>() / top.len() as f64
    };
    let bias_key = format!("popularity_percentile@{coverage_k}");
    let per_case: Vec<CaseResult> = cases
        .par_iter()
        .map_init(
            || vec![0f32; n_items],
            |scores, case| {
                scorer.score_all(case.state.input(), scores);
                let ranked = top_k(scores, depth, &case.exclude);
                let baseline = top_k(popularity, depth, &case.exclude);
                let mut model: Vec<f64> = metric_names
                    .iter()
                    .map(|m| metric(m, &ranked, &case.target))
                    .collect();
                let mut pop: Vec<f64> = metric_names
                    .iter()
                    .map(|m| metric(m, &baseline, &case.target))
                    .collect();
                let model_top: Vec<u32> = ranked.iter().take(coverage_k).copied().collect();
                let popularity_top: Vec<u32> = baseline.iter().take(coverage_k).copied().collect();
                model.push(bias(&model_top));
                pop.push(bias(&popularity_top));
                CaseResult {
                    model,
                    popularity: pop,
                    model_curves: Ranked::new(&ranked, &case.target).curves(depth),
                    popularity_curves: Ranked::new(&baseline, &case.target).curves(depth),
                    history: case.exclude.len(),
                    model_top,
                    popularity_top,
                }
            },
        )
        .collect();
    let names: Vec<String> = metric_names
        .iter()
        .map(|m| m.to_string())
        .chain([bias_key])
        .collect();
    let mean = |cases: &[&CaseResult], pick: &dyn Fn(&CaseResult) -> f64| {
        cases.iter().map(|c| pick(c)).sum::<f64>() / cases.len().max(1) as f64
    };
    let all: Vec<&CaseResult> = per_case.iter().collect();
    let mut metrics = BTreeMap::new();
    let mut baseline = BTreeMap::new();
    let mut intervals = BTreeMap::new();
    let mut popularity_intervals = BTreeMap::new();
    for (j, name) in names.iter().enumerate() {
        metrics.insert(name.clone(), mean(&all, &|c| c.model[j]));
        baseline.insert(name.clone(), mean(&all, &|c| c.popularity[j]));
        let values: Vec<f64> = per_case.iter().map(|c| c.model[j]).collect();
        intervals.insert(name.clone(), bootstrap_interval(&values, seed + j as u64));
        let values: Vec<f64> = per_case.iter().map(|c| c.popularity[j]).collect();
        popularity_intervals.insert(name.clone(), bootstrap_interval(&values, seed + j as u64));
    }
    let coverage = |pick: &dyn Fn(&CaseResult) -> &Vec<u32>| {
        let mut seen = vec![false; n_items];
        for case in &per_case {
            for &i in pick(case) {
                seen[i as usize] = true;
            }
        }
        seen.iter().filter(|s| **s).count() as f64 / n_items.max(1) as f64
    };
    let coverage_key = format!("coverage@{coverage_k}");
    metrics.insert(coverage_key.clone(), coverage(&|c| &c.model_top));
    baseline.insert(coverage_key, coverage(&|c| &c.popularity_top));
    let curve_mean = |pick: &dyn Fn(&CaseResult) -> &Vec<f64>| -> Vec<f64> {
        (0..depth).map(|d| mean(&all, &|c| pick(c)[d])).collect()
    };
    let curves = Curves {
        recall: curve_mean(&|c| &c.model_curves.0),
        ndcg: curve_mean(&|c| &c.model_curves.1),
        popularity_recall: curve_mean(&|c| &c.popularity_curves.0),
        popularity_ndcg: curve_mean(&|c| &c.popularity_curves.1),
    };
    let by_activity = ACTIVITY_BUCKETS
        .iter()
        .filter_map(|&(min, max)| {
            let members: Vec<&CaseResult> = per_case
                .iter()
                .filter(|c| c.history >= min && max.is_none_or(|m| c.history <= m))
                .collect();
            if members.is_empty() {
                return None;
            }
            let figures = |pick: &dyn Fn(&CaseResult) -> &Vec<f64>| -> BTreeMap<String, f64> {
                names
                    .iter()
                    .enumerate()
                    .map(|(j, name)| (name.clone(), mean(&members, &|c| pick(c)[j])))
                    .collect()
            };
            Some(ActivityBucket {
                label: match max {
                    Some(max) => format!("{min}–{max}"),
                    None => format!("{min}+"),
                },
                min_history: min,
                max_history: max,
                members: members.len() as u64,
                metrics: figures(&|c| &c.model),
                popularity: figures(&|c| &c.popularity),
            })
        })
        .collect();
    Evaluation {
        protocol: protocol.name().to_string(),
        metrics,
        popularity: baseline,
        evaluated_members: cases.len() as u64,
        intervals,
        popularity_intervals,
        curves: Some(curves),
        by_activity,
    }
}

/// Writes the split as `dir/train.parquet`, `dir/foldin.parquet`, `dir/target.parquet` with
/// columns `user_id, item_id` (Utf8), so another library can be scored on the identical split.
pub fn export_split(dir: &Path, table: &TrainingTable, split: &Split) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SharedError::io(dir, e))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
    ]));
    for (name, pairs) in [
        ("train", &split.train),
        ("foldin", &split.foldin),
        ("target", &split.target),
    ] {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    pairs.iter().map(|(u, _)| &table.user_ids[*u as usize]),
                )),
                Arc::new(StringArray::from_iter_values(
                    pairs.iter().map(|(_, i)| &table.item_ids[*i as usize]),
                )),
            ],
        )
        .map_err(|e| SharedError::arrow(dir.join(name), e))?;
        let path = dir.join(format!("{name}.parquet"));
        let tmp = dir.join(format!("{name}.parquet.tmp"));
        write_batches(&tmp, schema.clone(), &[batch])?;
        std::fs::rename(&tmp, &path).map_err(|e| SharedError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Members in three taste groups over 200 items; item popularity is flat so only a model that
    /// learns the groups can beat the baseline.
    pub(crate) fn clustered_table() -> TrainingTable {
        let mut rng = StdRng::seed_from_u64(11);
        let mut rows = Vec::new();
        let users: Vec<String> = (0..150).map(|u| format!("u{u:03}")).collect();
        let items: Vec<String> = (0..200).map(|i| format!("i{i:03}")).collect();
        for (u, user) in users.iter().enumerate() {
            for (i, item) in items.iter().enumerate() {
                let p = if i % 3 == u % 3 { 0.2 } else { 0.01 };
                if rng.random::<f64>() < p {
                    rows.push((user.as_str(), item.as_str(), 1.0f32, (u * 1000 + i) as i64));
                }
            }
        }
        TrainingTable::from_rows(rows)
    }

    fn params() -> AlsParams {
        AlsParams {
            factors: 8,
            regularization: 0.1,
            alpha: 5.0,
            iterations: 10,
            cg_steps: 3,
            threads: 2,
            seed: 1,
            compute_loss: false,
            ..Default::default()
        }
    }

    #[test]
    fn strong_generalization_beats_popularity_on_planted_structure() {
        let table = clustered_table();
        let config = EvaluationConfig::default();
        let (eval, split) = evaluate(&table, &params(), &config, |_| {}).unwrap();
        assert_eq!(eval.protocol, "strong-generalization");
        let eligible = table
            .member_ranges()
            .iter()
            .filter(|r| r.len() >= config.min_positives)
            .count();
        assert!(eligible > 50, "fixture too sparse: {eligible}");
        assert_eq!(
            eval.evaluated_members as usize,
            (eligible as f64 * 0.2).round() as usize
        );
        for key in ["recall@20", "recall@50", "ndcg@100"] {
            assert!(
                eval.metrics[key] > eval.popularity[key] + 0.1,
                "{key}: {eval:?}"
            );
        }
        // The split partitions the pairs: held-out members are absent from train.
        assert_eq!(
            split.train.len() + split.foldin.len() + split.target.len(),
            table.pairs.len()
        );
        let held: std::collections::HashSet<u32> = split.target.iter().map(|p| p.0).collect();
        assert!(split.train.iter().all(|(u, _)| !held.contains(u)));
        // Same seed, same split and figures; the split alone is the same without training.
        let (again, split_again) = evaluate(&table, &params(), &config, |_| {}).unwrap();
        assert_eq!(strong_generalization_split(&table, &config).unwrap(), split);
        assert_eq!((again, split_again), (eval, split));
    }

    #[test]
    fn curves_intervals_popularity_bias_and_activity_agree_with_the_metrics() {
        let table = clustered_table();
        let (eval, _) = evaluate(&table, &params(), &EvaluationConfig::default(), |_| {}).unwrap();
        let curves = eval.curves.as_ref().expect("curves");
        assert_eq!(curves.recall.len(), 100);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(curves.recall[19], eval.metrics["recall@20"]));
        assert!(close(curves.recall[49], eval.metrics["recall@50"]));
        assert!(close(curves.ndcg[99], eval.metrics["ndcg@100"]));
        assert!(close(
            curves.popularity_recall[19],
            eval.popularity["recall@20"]
        ));
        assert!(close(
            curves.popularity_ndcg[99],
            eval.popularity["ndcg@100"]
        ));
        for key in [
            "recall@20",
            "recall@50",
            "ndcg@100",
            "popularity_percentile@20",
        ] {
            let [lo, hi] = eval.intervals[key];
            assert!(
                lo < hi && lo <= eval.metrics[key] && eval.metrics[key] <= hi,
                "{key}: {lo}..{hi} around {}",
                eval.metrics[key]
            );
            let [lo, hi] = eval.popularity_intervals[key];
            assert!(lo <= eval.popularity[key] && eval.popularity[key] <= hi);
        }
        // The baseline recommends the most popular items; the model its members' group.
        let bias = "popularity_percentile@20";
        assert!(eval.popularity[bias] >= 0.8, "{}", eval.popularity[bias]);
        assert!(eval.metrics[bias] < eval.popularity[bias]);
        let members: u64 = eval.by_activity.iter().map(|b| b.members).sum();
        assert_eq!(members, eval.evaluated_members);
        // The by-activity figures average to the overall ones, weighted by members.
        let weighted: f64 = eval
            .by_activity
            .iter()
            .map(|b| b.metrics["ndcg@100"] * b.members as f64)
            .sum();
        assert!(close(
            weighted / eval.evaluated_members as f64,
            eval.metrics["ndcg@100"]
        ));
    }

    #[test]
    fn bootstrap_intervals_cover_the_mean_and_narrow_with_more_members() {
        let values = |n: usize| -> Vec<f64> { (0..n).map(|i| (i % 10) as f64 / 10.0).collect() };
        let [lo, hi] = bootstrap_interval(&values(100), 1);
        assert!(lo < 0.45 && 0.45 < hi, "{lo}..{hi}");
        let [lo_big, hi_big] = bootstrap_interval(&values(10_000), 1);
        assert!(hi_big - lo_big < (hi - lo) / 5.0);
        let [lo_flat, hi_flat] = bootstrap_interval(&[0.3; 50], 1);
        assert!((lo_flat - 0.3).abs() < 1e-12 && (hi_flat - 0.3).abs() < 1e-12);
        assert_eq!(bootstrap_interval(&values(100), 1), [lo, hi]);
    }

    #[test]
    fn popularity_percentiles_rank_items_and_share_ties() {
        assert_eq!(
            popularity_percentiles(&[1.0, 5.0, 5.0, 0.0]),
            vec![0.5, 1.0, 1.0, 0.25]
        );
    }

    #[test]
    fn leave_last_out_targets_the_newest_pair() {
        let table = clustered_table();
        let config = EvaluationConfig {
            protocol: Protocol::LeaveLastOut,
            ..Default::default()
        };
        let (eval, split) = evaluate(&table, &params(), &config, |_| {}).unwrap();
        assert_eq!(eval.protocol, "leave-last-out");
        assert_eq!(split.target.len(), eval.evaluated_members as usize);
        // Per construction the newest pair of member u is its largest item index.
        for (u, i) in &split.target {
            let newest = table
                .pairs
                .iter()
                .filter(|p| p.user == *u)
                .map(|p| p.item)
                .max()
                .unwrap();
            assert_eq!(*i, newest);
        }
        assert!(eval.metrics["hr@10"] > eval.popularity["hr@10"], "{eval:?}");
        assert!(eval.metrics["coverage@10"] > 0.0);
    }
}
