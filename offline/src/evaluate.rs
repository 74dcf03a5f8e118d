//! Offline evaluation: strong generalization and leave-last-out, each next to the popularity
//! baseline on the same split, plus catalog coverage.
//!
//! *Strong generalization* (Liang et al. 2018; Rendle et al. 2022): members with at least
//! `min_positives` positives are eligible; a seeded fraction of them is held out; item factors are
//! trained on everyone else; each held-out member's positives are split 80/20 at random, the 80 %
//! folded in with [`recsys_shared::foldin::FoldIn`] (the nearline tier's function) and the 20 %
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

use recsys_shared::artifact::{write_batches, Evaluation};
use recsys_shared::config::{EvaluationConfig, Protocol};
use recsys_shared::foldin::{FoldIn, FoldInParams};
use recsys_shared::kernels::dot;
use recsys_shared::SharedError;

use crate::als::{self, AlsParams, IterationReport};
use crate::features::TrainingTable;
use crate::metrics::{hit_at, ndcg_at, recall_at, top_k};
use crate::{OfflineError, Result};

/// One evaluated member: the vector, what not to recommend, and what should be found.
struct Case {
    vector: Vec<f32>,
    /// Sorted item indices.
    exclude: Vec<u32>,
    /// Sorted item indices.
    target: Vec<u32>,
}

/// What one member's rankings scored, model and baseline side by side.
struct CaseResult {
    model: Vec<f64>,
    popularity: Vec<f64>,
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

/// Evaluates `params` on `table` with the configured protocol.
pub fn evaluate(
    table: &TrainingTable,
    params: &AlsParams,
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

fn strong_generalization(
    table: &TrainingTable,
    params: &AlsParams,
    config: &EvaluationConfig,
    on_iteration: impl FnMut(IterationReport),
) -> Result<(Evaluation, Split)> {
    let ranges = table.member_ranges();
    let mut eligible: Vec<u32> = (0..ranges.len() as u32)
        .filter(|&u| ranges[u as usize].len() >= config.min_positives)
        .collect();
    if eligible.len() < 2 {
        return Err(OfflineError::Usage(format!(
            "strong generalization needs at least 2 members with {} or more positives; found {}",
            config.min_positives,
            eligible.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    shuffle(&mut eligible, &mut rng);
    let held_count = ((eligible.len() as f64 * config.heldout_fraction).round() as usize)
        .clamp(1, eligible.len() - 1);
    let mut held = vec![false; ranges.len()];
    let mut held_members: Vec<u32> = eligible[..held_count].to_vec();
    held_members.sort_unstable();
    for &u in &held_members {
        held[u as usize] = true;
    }

    let mut split = Split::default();
    let mut foldin_histories = Vec::with_capacity(held_members.len());
    let mut targets = Vec::with_capacity(held_members.len());
    for &u in &held_members {
        let mut pairs: Vec<_> = table.pairs[ranges[u as usize].clone()].to_vec();
        shuffle(&mut pairs, &mut rng);
        let n_target = ((pairs.len() as f64 * 0.2).round() as usize).max(1);
        let mut target: Vec<u32> = pairs[..n_target].iter().map(|p| p.item).collect();
        target.sort_unstable();
        let history: Vec<(u32, f32)> = pairs[n_target..]
            .iter()
            .map(|p| (p.item, p.strength))
            .collect();
        split.target.extend(target.iter().map(|&i| (u, i)));
        split.foldin.extend(history.iter().map(|&(i, _)| (u, i)));
        foldin_histories.push(history);
        targets.push(target);
    }
    split.train = table
        .pairs
        .iter()
        .filter(|p| !held[p.user as usize])
        .map(|p| (p.user, p.item))
        .collect();

    let matrix = table.matrix(|p| !held[p.user as usize]);
    let model = als::train(&matrix, params, on_iteration)?;
    let fold_in = FoldIn::new(
        &model.item_factors,
        model.factors,
        FoldInParams {
            regularization: params.regularization,
            alpha: params.alpha,
        },
    );
    let cases = foldin_histories
        .into_par_iter()
        .zip(targets)
        .map(|(history, target)| {
            let mut exclude: Vec<u32> = history.iter().map(|(i, _)| *i).collect();
            exclude.sort_unstable();
            Ok(Case {
                vector: fold_in.solve(&history)?,
                exclude,
                target,
            })
        })
        .collect::<std::result::Result<Vec<_>, SharedError>>()?;
    let popularity = popularity_scores(&matrix.indices, table.item_ids.len());
    Ok((
        score_cases(
            &cases,
            &model.item_factors,
            model.factors,
            &popularity,
            Protocol::StrongGeneralization,
        ),
        split,
    ))
}

fn leave_last_out(
    table: &TrainingTable,
    params: &AlsParams,
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
    let matrix = crate::matrix::SparseMatrix::from_triplets(
        table.user_ids.len(),
        table.item_ids.len(),
        keep,
    );
    let model = als::train(&matrix, params, on_iteration)?;
    let k = model.factors;
    let cases: Vec<Case> = members
        .iter()
        .map(|&(u, target)| Case {
            vector: model.user_factors[u * k..(u + 1) * k].to_vec(),
            exclude: matrix.row(u).0.to_vec(),
            target: vec![table.pairs[target].item],
        })
        .collect();
    let popularity = popularity_scores(&matrix.indices, table.item_ids.len());
    Ok((
        score_cases(
            &cases,
            &model.item_factors,
            k,
            &popularity,
            Protocol::LeaveLastOut,
        ),
        split,
    ))
}

/// Members per item among the training rows (the baseline's scores).
fn popularity_scores(item_indices: &[u32], items: usize) -> Vec<f32> {
    let mut counts = vec![0f32; items];
    for &i in item_indices {
        counts[i as usize] += 1.0;
    }
    counts
}

fn score_cases(
    cases: &[Case],
    item_factors: &[f32],
    k: usize,
    popularity: &[f32],
    protocol: Protocol,
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
    let per_case: Vec<CaseResult> = cases
        .par_iter()
        .map_init(
            || vec![0f32; n_items],
            |scores, case| {
                for (s, y) in scores.iter_mut().zip(item_factors.chunks_exact(k)) {
                    *s = dot(y, &case.vector);
                }
                let ranked = top_k(scores, depth, &case.exclude);
                let baseline = top_k(popularity, depth, &case.exclude);
                let model: Vec<f64> = metric_names
                    .iter()
                    .map(|m| metric(m, &ranked, &case.target))
                    .collect();
                let pop: Vec<f64> = metric_names
                    .iter()
                    .map(|m| metric(m, &baseline, &case.target))
                    .collect();
                CaseResult {
                    model,
                    popularity: pop,
                    model_top: ranked.iter().take(coverage_k).copied().collect(),
                    popularity_top: baseline.iter().take(coverage_k).copied().collect(),
                }
            },
        )
        .collect();
    let n = per_case.len().max(1) as f64;
    let mut metrics = BTreeMap::new();
    let mut baseline = BTreeMap::new();
    for (j, name) in metric_names.iter().enumerate() {
        metrics.insert(
            name.to_string(),
            per_case.iter().map(|c| c.model[j]).sum::<f64>() / n,
        );
        baseline.insert(
            name.to_string(),
            per_case.iter().map(|c| c.popularity[j]).sum::<f64>() / n,
        );
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
    Evaluation {
        protocol: protocol.name().to_string(),
        metrics,
        popularity: baseline,
        evaluated_members: cases.len() as u64,
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
mod tests {
    use super::*;

    /// Members in three taste groups over 200 items; item popularity is flat so only a model that
    /// learns the groups can beat the baseline.
    fn clustered_table() -> TrainingTable {
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
        // Same seed, same split and figures.
        let (again, split_again) = evaluate(&table, &params(), &config, |_| {}).unwrap();
        assert_eq!((again, split_again), (eval, split));
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
