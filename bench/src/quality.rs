//! `recsys offline bench-quality`: recommendation quality against the Python library `implicit`,
//! per data set, on the identical split, in one invocation.
//!
//! For each data set (a MovieLens directory with `ratings.csv`, or an interactions Parquet file or
//! directory): the training table is built with `[offline.features]`, the strong-generalization
//! split of `recsys offline evaluate` (seed 42) is taken and exported, and four models are scored
//! on its test members with 95 % bootstrap intervals:
//!
//! - **recsys default**: `[offline.als]` as configured;
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
    /// Data sets: MovieLens directories (ratings.csv) or interactions Parquet files/directories.
    #[arg(long = "data", default_value = "../shared/data/ml-latest-small")]
    pub data: Vec<PathBuf>,
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
    let tuned = tuning::tune(
        table,
        config,
        &TuneJob {
            trials: args.trials.unwrap_or(config.offline.tuning.trials),
            budget: Some(args.budget),
            seed: args.seed,
            out: work.path().join("tuning"),
        },
    )?;
    let mut rows: Vec<(String, serde_json::Value)> = vec![
        ("recsys default".into(), ours(&tuned.test_defaults)),
        (
            format!("recsys tuned ({})", tuned.family.name()),
            ours(&tuned.test),
        ),
    ];
    let mut per_family = serde_json::Map::new();
    for family in Family::ALL {
        if *family == tuned.family {
            per_family.insert(family.name().into(), ours(&tuned.test));
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
        "recsys_default": ours(&tuned.test_defaults),
        "recsys_tuned": ours(&tuned.test),
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
    for source in &args.data {
        sets.push(one(args, config, source)?);
    }
    let summary = serde_json::json!({ "data_sets": sets });
    println!("{summary}");
    Ok(summary)
}
