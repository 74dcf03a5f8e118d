//! `recsys offline bench-quality`: recommendation quality against the Python library `implicit`,
//! per data set, on the identical split, in one invocation.
//!
//! For each data set (a MovieLens directory with `ratings.csv`, or an interactions Parquet file or
//! directory): the training table is built with `[offline.features]`, the strong-generalization
//! split of `recsys offline evaluate` (seed 42) is taken and exported, and four models are scored
//! on its test members with 95 % bootstrap intervals:
//!
//! - **recsys default**: the configured family (`offline.family`, `auto` by default) with its
//!   section as configured;
//! - **recsys tuned**: `recsys offline tune` across the families of `offline.tuning.families`
//!   (validation members from the training side only), then one fit with the chosen family and
//!   setting;
//! - **recsys <family>**: every other family searched, fitted with its own best setting, so the
//!   families are seen side by side on the same test members;
//! - **implicit default**: the library's own defaults (100 factors, λ 0.01, α 1, 15 iterations);
//! - **implicit tuned**: random search by `deploy/bench/implicit_quality.py` over its factors, λ,
//!   α and iterations, on validation members carved the same way, given the same number of
//!   seconds recsys's search took.
//!
//! A benchmark's own split (`--split DIR`, a directory holding `train.csv` and `test.csv`, such as
//! `../shared/data/gowalla`) is scored with its published protocol instead: `offline tune` on the
//! training pairs only; the family of "recsys tuned" chosen the way the split scores (each
//! family's best setting fitted on the training pairs less 20 % of each member's, and ranked by
//! Recall@20 on those held out); every family fitted with its best setting on all the training
//! pairs and scored on the test pairs (every item the member has no training pair with ranked,
//! Recall@20 and NDCG@20); implicit tuned by `deploy/bench/implicit_split.py` in the seconds of
//! the search and the choice together; a NumPy EASE
//! (`deploy/bench/ease_numpy.py`) at the best EASE setting with `--numpy-ease`; and the published
//! figures read from the split's `README.md`.
//!
//! Figures are printed, never asserted; the last line is JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use recsys_shared::artifact::Evaluation;
use recsys_shared::config::{Config, EvaluationConfig, Protocol};
use recsys_shared::model::Family;

use crate::training::PeerArgs;
use recsys_offline::evaluate;
use recsys_offline::train::training_features;
use recsys_offline::tuning::{self, TuneJob};
use recsys_offline::{OfflineError, Result};

/// Options of `recsys offline bench-quality`.
#[derive(Debug, Clone, clap::Args)]
pub struct QualityBenchArgs {
    /// Data sets: MovieLens directories (ratings.csv) or interactions Parquet files/directories
    /// (../shared/data/ml-latest-small when neither this nor --split is given).
    #[arg(long = "data")]
    pub data: Vec<PathBuf>,
    /// Benchmark splits: directories holding train.csv and test.csv (`user_id,item_id`), scored
    /// with the published protocol (e.g. ../shared/data/gowalla).
    #[arg(long = "split")]
    pub splits: Vec<PathBuf>,
    /// On a split, also run the NumPy EASE at the best EASE setting (dense inverse by LAPACK's
    /// potrf + potri; at 41k items about 7 GB and tens of minutes on one thread).
    #[arg(long)]
    pub numpy_ease: bool,
    /// Threads of the NumPy EASE (OpenBLAS's threaded Cholesky crashes at Gowalla's size here).
    #[arg(long, default_value_t = 1)]
    pub numpy_ease_threads: usize,
    /// Time budget of recsys's search (the peer gets as many seconds as recsys's search took).
    #[arg(long, value_parser = tuning::parse_duration, default_value = "5m")]
    pub budget: Duration,
    /// Settings recsys's search starts with [offline.tuning.trials].
    #[arg(long)]
    pub trials: Option<usize>,
    /// Seed of both searches.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[command(flatten)]
    pub peer: PeerArgs,
}

const KEYS: [&str; 3] = ["recall@20", "recall@50", "ndcg@100"];

fn cell(metrics: &serde_json::Value, intervals: &serde_json::Value, key: &str) -> String {
    let value = metrics[key].as_f64().unwrap_or(f64::NAN);
    match intervals[key].as_array() {
        Some(ci) if ci.len() == 2 => format!(
            "{value:.4} [{:.4}, {:.4}]",
            ci[0].as_f64().unwrap_or(f64::NAN),
            ci[1].as_f64().unwrap_or(f64::NAN)
        ),
        _ => format!("{value:.4}"),
    }
}

fn ours(e: &Evaluation) -> serde_json::Value {
    serde_json::json!({"metrics": e.metrics, "intervals": e.intervals, "evaluated_members": e.evaluated_members})
}

/// recsys's search on `table` with the benchmark's budget, trials and seed, its files in `work`.
/// `final_fits`: whether the tuner also fits its choice and the defaults and scores them on the
/// strong-generalization test members (a benchmark's own split scores its own way instead).
fn search(
    args: &QualityBenchArgs,
    config: &Config,
    table: &recsys_offline::feature_tables::TrainingTable,
    work: &Path,
    final_fits: bool,
) -> Result<tuning::TuningResult> {
    tuning::tune(
        table,
        config,
        &TuneJob {
            trials: args.trials.unwrap_or(config.offline.tuning.trials),
            budget: Some(args.budget),
            seed: args.seed,
            out: work.join("tuning"),
            final_fits,
        },
    )
}

/// Benchmarks one data set.
fn one(args: &QualityBenchArgs, config: &Config, source: &Path) -> Result<serde_json::Value> {
    let work =
        tempfile::tempdir().map_err(|e| OfflineError::Peer(format!("temporary directory: {e}")))?;
    let interactions = if source.join("ratings.csv").is_file() {
        recsys_offline::movielens::import(source, work.path())?;
        work.path().join("interactions.parquet")
    } else {
        source.to_path_buf()
    };
    let features = training_features(&interactions, config)?;
    let table = &features.training;
    println!(
        "== {}: {} members, {} items, {} pairs; strong generalization, seed {}",
        source.display(),
        table.user_ids.len(),
        table.item_ids.len(),
        table.pairs.len(),
        config.offline.evaluation.seed
    );
    // The split the tuner's final fits are scored on (strong generalization), for the peer.
    let evaluation = EvaluationConfig {
        protocol: Protocol::StrongGeneralization,
        ..config.offline.evaluation.clone()
    };
    let split = evaluate::strong_generalization_split(table, &evaluation)?;

    let split_dir = work.path().join("split");
    evaluate::export_split(&split_dir, table, &split)?;
    let tuned = search(args, config, table, work.path(), true)?;
    let missing = || OfflineError::Usage("the tuner scored no final fit".into());
    let tuned_test = tuned.test.as_ref().ok_or_else(missing)?;
    let defaults_test = tuned.test_defaults.as_ref().ok_or_else(|| {
        OfflineError::Usage("the configured family could not be fitted (the log says why)".into())
    })?;
    let default_family = tuned.defaults_family.ok_or_else(missing)?;
    let mut rows: Vec<(String, serde_json::Value)> = vec![
        (
            format!("recsys default ({})", default_family.name()),
            ours(defaults_test),
        ),
        (
            format!("recsys tuned ({})", tuned.family.name()),
            ours(tuned_test),
        ),
    ];
    let mut per_family = serde_json::Map::new();
    for family in Family::ALL {
        if *family == tuned.family {
            per_family.insert(family.name().into(), ours(tuned_test));
            continue;
        }
        let Some(params) = tuned.best_of(*family, &config.offline) else {
            continue;
        };
        let (e, _) = evaluate::evaluate_family(table, &params, &evaluation, |_| {})?;
        rows.push((format!("recsys {}", family.name()), ours(&e)));
        per_family.insert(family.name().into(), ours(&e));
    }
    let mut result = serde_json::json!({
        "data": source.display().to_string(),
        "members": table.user_ids.len(), "items": table.item_ids.len(), "pairs": table.pairs.len(),
        "recsys_default": ours(defaults_test),
        "recsys_tuned": ours(tuned_test),
        "recsys_tuned_family": tuned.family,
        "recsys_tuned_setting": tuned.chosen.map_or_else(
            || serde_json::to_value(tuned.best).expect("serialisable"),
            |h| serde_json::to_value(h).expect("serialisable"),
        ),
        "recsys_families": per_family,
        "recsys_family_validation": tuned.family_best,
        "recsys_search_seconds": tuned.search_seconds,
        "recsys_trials": tuned.trials.len(),
        "recsys_settings_per_family": tuned.family_settings(),
    });
    if !args.peer.skip_peer {
        let peer = args.peer.run(
            "implicit_quality.py",
            &[
                split_dir.display().to_string(),
                format!("--budget-seconds={:.1}", tuned.search_seconds.max(1.0)),
                format!("--seed={}", args.seed),
                format!(
                    "--threads={}",
                    std::thread::available_parallelism().map_or(2, |n| n.get())
                ),
            ],
        )?;
        rows.push(("implicit default".into(), peer["default"].clone()));
        rows.push(("implicit tuned".into(), peer["tuned"].clone()));
        result["implicit_default"] = peer["default"].clone();
        result["implicit_tuned"] = peer["tuned"].clone();
    }
    println!(
        "{:<24} {:>26} {:>26} {:>26}",
        "model", KEYS[0], KEYS[1], KEYS[2]
    );
    for (name, r) in &rows {
        println!(
            "{name:<24} {:>26} {:>26} {:>26}",
            cell(&r["metrics"], &r["intervals"], KEYS[0]),
            cell(&r["metrics"], &r["intervals"], KEYS[1]),
            cell(&r["metrics"], &r["intervals"], KEYS[2]),
        );
    }
    println!(
        "recsys tuned: {} {} after {:.0} s (settings per family {:?}, validation {:?}); implicit tuned: {}",
        tuned.family.name(),
        result["recsys_tuned_setting"],
        tuned.search_seconds,
        tuned.family_settings(),
        tuned.family_best,
        result["implicit_tuned"]["setting"]
    );
    if let Some(warning) = tuned.budget_warning() {
        println!("{warning}");
    }
    if !args.peer.skip_peer {
        let get = |row: &str, key: &str| result[row]["metrics"][key].as_f64().unwrap_or(f64::NAN);
        for key in ["ndcg@100", "recall@20"] {
            let d = get("recsys_tuned", key) - get("implicit_tuned", key);
            println!(
                "tuned   {key}: recsys - implicit = {d:+.4} (target >= +0.01: {})",
                if d >= 0.01 { "met" } else { "NOT met" }
            );
        }
        for key in KEYS {
            let d = get("recsys_default", key) - get("implicit_default", key);
            println!(
                "default {key}: recsys - implicit = {d:+.4} (target >= -0.005: {})",
                if d >= -0.005 { "met" } else { "NOT met" }
            );
        }
    }
    Ok(result)
}

/// Runs the benchmark over every data set; returns the JSON summary (also printed last).
pub fn run(args: &QualityBenchArgs, config: &Config) -> Result<serde_json::Value> {
    let mut sets = Vec::new();
    let default_data = [PathBuf::from("../shared/data/ml-latest-small")];
    let data = if args.data.is_empty() && args.splits.is_empty() {
        &default_data[..]
    } else {
        &args.data[..]
    };
    for source in data {
        sets.push(one(args, config, source)?);
    }
    for dir in &args.splits {
        sets.push(one_split(args, config, dir)?);
    }
    let summary = serde_json::json!({ "data_sets": sets });
    println!("{summary}");
    Ok(summary)
}

/// The published figures in a split's README: the rows of its first table whose second and third
/// cells are numbers (`≈` allowed), as `(model, Recall@20, NDCG@20)`.
fn published_figures(readme: &str) -> Vec<(String, f64, f64)> {
    let number = |cell: &str| {
        cell.trim()
            .trim_start_matches('≈')
            .trim()
            .parse::<f64>()
            .ok()
    };
    readme
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').collect();
            match cells.as_slice() {
                [model, recall, ndcg, ..] => {
                    Some((model.trim().to_string(), number(recall)?, number(ndcg)?))
                }
                _ => None,
            }
        })
        .collect()
}

fn estimate(e: &recsys_offline::benchmark_split::Estimate) -> serde_json::Value {
    serde_json::json!({"mean": e.mean, "interval": e.interval})
}

fn split_cell(v: &serde_json::Value) -> String {
    let mean = v["mean"]
        .as_f64()
        .or_else(|| v.as_f64())
        .unwrap_or(f64::NAN);
    match v["interval"].as_array() {
        Some(ci) if ci.len() == 2 => format!(
            "{mean:.4} [{:.4}, {:.4}]",
            ci[0].as_f64().unwrap_or(f64::NAN),
            ci[1].as_f64().unwrap_or(f64::NAN)
        ),
        _ => format!("{mean:.4}"),
    }
}

/// Benchmarks one published split (`dir/train.csv`, `dir/test.csv`) with its own protocol.
fn one_split(args: &QualityBenchArgs, config: &Config, dir: &Path) -> Result<serde_json::Value> {
    use recsys_offline::benchmark_split::{evaluate_split, PairsSplit};
    use recsys_offline::family::FamilyParams;
    use recsys_offline::feature_tables::TrainingTable;

    const K: usize = 20;
    let (train, test) = (dir.join("train.csv"), dir.join("test.csv"));
    let split = PairsSplit::read(&train, &test)?;
    // The training pairs as the log `offline tune` searches on: one play per pair.
    let table = TrainingTable::from_rows((0..split.members.len()).flat_map(|u| {
        let member = split.members[u].as_str();
        let items = &split.items;
        split
            .train
            .row(u)
            .0
            .iter()
            .map(move |&i| (member, items[i as usize].as_str(), 1.0, 0))
    }));
    println!(
        "== {} (its own split): {} members, {} items, {} training pairs, {} test pairs",
        dir.display(),
        split.members.len(),
        split.items.len(),
        split.train.nnz(),
        split.test_pairs()
    );
    let work =
        tempfile::tempdir().map_err(|e| OfflineError::Peer(format!("temporary directory: {e}")))?;
    let tuned = search(args, config, &table, work.path(), false)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let seed = config.offline.evaluation.seed;
    let mut rows: Vec<(String, serde_json::Value)> = Vec::new();
    let mut per_family = serde_json::Map::new();
    let mut ease_setting = None;
    let mut chosen_offline = config.offline.clone();
    tuned.apply(&mut chosen_offline);
    // Each family's best setting from the search (which validates by strong generalization)...
    let best: Vec<FamilyParams> = Family::ALL
        .iter()
        .filter_map(|family| {
            if *family == tuned.family {
                Some(FamilyParams::from_config(
                    &chosen_offline,
                    split.items.len(),
                ))
            } else {
                tuned.best_of(*family, &config.offline)
            }
        })
        .collect();
    // ...and the family chosen the way the split scores: on 20 % of each member's training
    // pairs held out, every other item ranked (the published test pairs are not looked at).
    let started = std::time::Instant::now();
    let validation = split.hold_out(0.2, seed);
    println!(
        "choosing the family on the split's own protocol: {} of the training pairs held out",
        validation.test_pairs()
    );
    let mut by_split: Vec<(Family, f64)> = Vec::new();
    for params in &best {
        let e = evaluate_split(&validation, params, K, threads, seed)?;
        by_split.push((params.family(), e.recall.mean));
    }
    let choice_seconds = started.elapsed().as_secs_f64();
    let chosen_family = by_split
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(tuned.family, |c| c.0);
    println!(
        "family by the split's protocol: {} (validation Recall@{K} {}; {:.0} s); by the search: {}",
        chosen_family.name(),
        by_split
            .iter()
            .map(|(f, r)| format!("{} {r:.4}", f.name()))
            .collect::<Vec<_>>()
            .join(", "),
        choice_seconds,
        tuned.family.name()
    );
    let mut candidates: Vec<(String, FamilyParams)> = Vec::new();
    for params in best {
        let family = params.family();
        if family == chosen_family {
            candidates.insert(0, (format!("recsys tuned ({})", family.name()), params));
        } else {
            candidates.push((format!("recsys {}", family.name()), params));
        }
    }
    let default = FamilyParams::from_config(&config.offline, split.items.len());
    candidates.push((
        format!("recsys default ({})", default.family().name()),
        default,
    ));
    for (name, params) in candidates {
        if let FamilyParams::Ease(p) = &params {
            ease_setting.get_or_insert(*p);
        }
        let e = evaluate_split(&split, &params, K, threads, seed)?;
        let value = serde_json::json!({
            "family": e.family, "params": e.params,
            "recall": estimate(&e.recall), "ndcg": estimate(&e.ndcg),
            "fit_seconds": e.fit_seconds,
        });
        if !name.starts_with("recsys default") {
            per_family.insert(e.family.name().into(), value.clone());
        }
        rows.push((name, value));
    }
    let mut result = serde_json::json!({
        "split": dir.display().to_string(),
        "members": split.members.len(), "items": split.items.len(),
        "training_pairs": split.train.nnz(), "test_pairs": split.test_pairs(),
        "recsys_tuned": rows[0].1.clone(),
        "recsys_tuned_family": chosen_family,
        "recsys_search_family": tuned.family,
        "recsys_family_split_validation": by_split
            .iter()
            .map(|(f, r)| (f.name().to_string(), serde_json::json!(r)))
            .collect::<serde_json::Map<_, _>>(),
        "recsys_choice_seconds": choice_seconds,
        "recsys_families": per_family,
        "recsys_family_validation": tuned.family_best,
        "recsys_search_seconds": tuned.search_seconds,
        "recsys_settings_per_family": tuned.family_settings(),
    });
    if !args.peer.skip_peer {
        let peer = args.peer.run(
            "implicit_split.py",
            &[
                format!("--train={}", train.display()),
                format!("--test={}", test.display()),
                // The same time as ours: the search and the family choice.
                format!(
                    "--budget-seconds={:.1}",
                    (tuned.search_seconds + choice_seconds).max(1.0)
                ),
                format!("--seed={}", args.seed),
                format!("--threads={threads}"),
            ],
        )?;
        result["implicit_tuned"] = peer.clone();
        rows.push(("implicit tuned".into(), peer));
        if let (true, Some(ease)) = (args.numpy_ease, ease_setting) {
            let numpy = args.peer.run(
                "ease_numpy.py",
                &[
                    format!("--train={}", train.display()),
                    format!("--test={}", test.display()),
                    format!("--lambda={}", ease.lambda),
                    format!("--top-n={}", ease.top_n),
                    "--method=cholesky".into(),
                    format!("--threads={}", args.numpy_ease_threads),
                ],
            )?;
            result["numpy_ease"] = numpy.clone();
            rows.push((format!("NumPy EASE (λ {})", ease.lambda), numpy));
            // Ours on the same threads, for the fit time.
            let same = if args.numpy_ease_threads == threads {
                per_family.get("ease").cloned().unwrap_or_default()
            } else {
                let e = evaluate_split(
                    &split,
                    &FamilyParams::Ease(ease),
                    K,
                    args.numpy_ease_threads,
                    seed,
                )?;
                serde_json::json!({"recall": estimate(&e.recall), "ndcg": estimate(&e.ndcg), "fit_seconds": e.fit_seconds})
            };
            result["ease_same_threads"] = same;
        }
    }
    let published = std::fs::read_to_string(dir.join("README.md"))
        .map(|readme| published_figures(&readme))
        .unwrap_or_default();
    println!(
        "{:<30} {:>26} {:>26} {:>9}",
        "model", "Recall@20", "NDCG@20", "fit s"
    );
    for (name, r) in &rows {
        println!(
            "{name:<30} {:>26} {:>26} {:>9.1}",
            split_cell(&r["recall"]),
            split_cell(&r["ndcg"]),
            r["fit_seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for (model, recall, ndcg) in &published {
        println!(
            "{:<30} {recall:>26.4} {ndcg:>26.4}",
            format!("published: {model}")
        );
    }
    result["published"] = published
        .iter()
        .map(|(m, r, n)| serde_json::json!({"model": m, "recall@20": r, "ndcg@20": n}))
        .collect();
    println!(
        "recsys tuned: {} after {:.0} s of search and {:.0} s choosing the family (the search's own choice {}; settings per family {:?}, validation {:?})",
        chosen_family.name(),
        tuned.search_seconds,
        choice_seconds,
        tuned.family.name(),
        tuned.family_settings(),
        tuned.family_best,
    );
    if let Some(warning) = tuned.budget_warning() {
        println!("{warning}");
    }
    let mean = |v: &serde_json::Value, key: &str| v[key]["mean"].as_f64().unwrap_or(f64::NAN);
    let best = &result["recsys_tuned"];
    if let Some((model, recall, ndcg)) =
        published.iter().max_by(|a, b| a.1.total_cmp(&b.1)).cloned()
    {
        println!(
            "recsys tuned - best published ({model}): Recall@20 {:+.4}, NDCG@20 {:+.4}",
            mean(best, "recall") - recall,
            mean(best, "ndcg") - ndcg
        );
    }
    if !args.peer.skip_peer {
        let peer = &result["implicit_tuned"];
        for key in ["recall", "ndcg"] {
            let d = mean(best, key) - mean(peer, key);
            println!(
                "tuned   {key}@20: recsys - implicit = {d:+.4} (target >= +0.01: {})",
                if d >= 0.01 { "met" } else { "NOT met" }
            );
        }
        if let (Some(numpy), Some(ours)) =
            (result.get("numpy_ease"), result.get("ease_same_threads"))
        {
            let (theirs, mine) = (
                numpy["recall"].as_f64().unwrap_or(f64::NAN),
                mean(ours, "recall"),
            );
            println!(
                "EASE: recsys {mine:.4} vs NumPy {theirs:.4} Recall@20 ({:+.4}); fit {:.0} s vs {:.0} s on {} thread(s) ({:.2}x)",
                mine - theirs,
                ours["fit_seconds"].as_f64().unwrap_or(f64::NAN),
                numpy["fit_seconds"].as_f64().unwrap_or(f64::NAN),
                args.numpy_ease_threads,
                ours["fit_seconds"].as_f64().unwrap_or(f64::NAN)
                    / numpy["fit_seconds"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_table_is_read_from_the_split_readme() {
        let readme = "# x\n\n| model | Recall@20 | NDCG@20 | source |\n|---|---|---|---|\n\
                      | ItemKNN (cosine) | 0.1570 | 0.1214 | BARS |\n\
                      | SimpleX | ≈ 0.187 | ≈ 0.156 | BARS |\n\nNot a row | 1 | 2\n";
        let rows = published_figures(readme);
        assert_eq!(
            rows,
            vec![
                ("ItemKNN (cosine)".to_string(), 0.1570, 0.1214),
                ("SimpleX".to_string(), 0.187, 0.156),
            ]
        );
    }
}
