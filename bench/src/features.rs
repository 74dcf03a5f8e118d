//! `recsys offline bench --features`: the feature jobs (training table, popularity, histories)
//! against DuckDB running the same SQL text over the same Parquet, in one invocation.
//!
//! For each size a synthetic log is written by a child process (so its memory does not count),
//! then rounds alternate: our job in this process, DuckDB in `deploy/bench/duckdb_features.py`;
//! each side's fastest round counts. Ours is reported as a whole (the pass that validates every row
//! and codes the ids as integers, then the built-in jobs over the codes, [`recsys_offline::coded_jobs`])
//! and as the jobs alone; the whole is the figure to compare, since the coding is part of what
//! makes our jobs fast while DuckDB's time includes reading and hashing the strings. Peak RSS is
//! each process's high-water mark.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use recsys_shared::config::Config;

use crate::training::{peak_rss_mib, PeerArgs};
use recsys_offline::features::FeatureJob;
use recsys_offline::input::InputTable;
use recsys_offline::train::run_features;
use recsys_offline::{OfflineError, Result};

/// One size's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureBenchRow {
    pub events: usize,
    pub training_pairs: usize,
    /// Fastest round of validation and id coding + the jobs.
    pub recsys_seconds: f64,
    /// Of which the row validation and id coding.
    pub recsys_validate_seconds: f64,
    pub recsys_jobs_seconds: f64,
    pub recsys_peak_rss_mib: Option<f64>,
    pub duckdb_seconds: Option<f64>,
    pub duckdb_peak_rss_mib: Option<f64>,
    pub duckdb_training_pairs: Option<u64>,
}

/// Runs the comparison for every size in `events`.
pub fn run(
    events: &[usize],
    rounds: usize,
    threads: usize,
    peer: &PeerArgs,
) -> Result<Vec<FeatureBenchRow>> {
    let config = Config::default();
    let mut rows = Vec::new();
    for &n in events {
        let dir = tempfile::tempdir()
            .map_err(|e| OfflineError::Peer(format!("temporary directory: {e}")))?;
        let (users, items) = ((n / 50).max(100), (n / 250).max(100));
        println!("== feature jobs: {n} synthetic events, {users} members, {items} items, {threads} threads");
        synth(dir.path(), users, items, n)?;
        let interactions = InputTable::discover(&dir.path().join("interactions.parquet"))?;
        let catalog = InputTable::discover(&dir.path().join("items.parquet"))?;
        let job = FeatureJob {
            config: &config.offline.features,
            as_of_ms: None,
            threads,
            cluster: None,
            negatives: Default::default(),
        };
        let [training_sql, popularity_sql, history_sql] = job.queries(0)?;
        let sql_dir = dir.path().join("sql");
        std::fs::create_dir_all(&sql_dir)
            .map_err(|e| OfflineError::input(&sql_dir, e.to_string()))?;
        for (name, text) in [
            ("training.sql", &training_sql),
            ("popularity.sql", &popularity_sql),
            ("history.sql", &history_sql),
        ] {
            let path = sql_dir.join(name);
            std::fs::write(&path, text).map_err(|e| OfflineError::input(&path, e.to_string()))?;
        }
        let weights = serde_json::to_string(&config.offline.features.event_weights)
            .expect("weights serialise");

        let mut best: Option<(f64, f64)> = None;
        let mut pairs = 0;
        let mut duck: Option<serde_json::Value> = None;
        for round in 1..=rounds.max(1) {
            let started = Instant::now();
            let features = run_features(&job, &interactions, Some(&catalog))?;
            let total = started.elapsed().as_secs_f64();
            let validate = features.validation_seconds;
            pairs = features.training.pairs.len();
            drop(features);
            println!(
                "round {round}: recsys {total:.2} s ({validate:.2} s validation and id coding + {:.2} s jobs)",
                total - validate
            );
            if best.is_none_or(|(b, _)| total < b) {
                best = Some((total, validate));
            }
            if !peer.skip_peer {
                let out = peer.run(
                    "duckdb_features.py",
                    &[
                        dir.path()
                            .join("interactions.parquet")
                            .display()
                            .to_string(),
                        dir.path().join("items.parquet").display().to_string(),
                        sql_dir.display().to_string(),
                        weights.clone(),
                        threads.to_string(),
                    ],
                )?;
                let seconds = out["seconds"].as_f64().unwrap_or(f64::NAN);
                println!("round {round}: duckdb {seconds:.2} s");
                if duck
                    .as_ref()
                    .is_none_or(|d| seconds < d["seconds"].as_f64().unwrap_or(f64::MAX))
                {
                    duck = Some(out);
                }
            }
        }
        let (recsys_seconds, validate) = best.expect("one round");
        let row = FeatureBenchRow {
            events: n,
            training_pairs: pairs,
            recsys_seconds,
            recsys_validate_seconds: validate,
            recsys_jobs_seconds: recsys_seconds - validate,
            recsys_peak_rss_mib: peak_rss_mib(),
            duckdb_seconds: duck.as_ref().and_then(|d| d["seconds"].as_f64()),
            duckdb_peak_rss_mib: duck.as_ref().and_then(|d| d["peak_rss_mib"].as_f64()),
            duckdb_training_pairs: duck.as_ref().and_then(|d| d["training_pairs"].as_u64()),
        };
        print_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

fn print_row(row: &FeatureBenchRow) {
    let rate = |s: f64| row.events as f64 / s / 1e6;
    println!(
        "recsys: {:.2} s ({:.2} M events/s) = validation and id coding {:.2} s + jobs {:.2} s, peak RSS {}",
        row.recsys_seconds,
        rate(row.recsys_seconds),
        row.recsys_validate_seconds,
        row.recsys_jobs_seconds,
        row.recsys_peak_rss_mib
            .map_or("?".into(), |m| format!("{m:.0} MiB (this process so far)"))
    );
    if let Some(duck) = row.duckdb_seconds {
        println!(
            "duckdb: SQL {duck:.2} s ({:.2} M events/s), peak RSS {}; training pairs {} vs ours {}",
            rate(duck),
            row.duckdb_peak_rss_mib
                .map_or("?".into(), |m| format!("{m:.0} MiB")),
            row.duckdb_training_pairs
                .map_or("?".into(), |p| p.to_string()),
            row.training_pairs
        );
        println!(
            "ratio recsys/duckdb: {:.2}x (target <= 1.0; the jobs alone {:.2}x)",
            row.recsys_seconds / duck,
            row.recsys_jobs_seconds / duck
        );
    }
}

/// Writes a synthetic log into `dir` with a child process of this binary.
fn synth(dir: &Path, users: usize, items: usize, events: usize) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| OfflineError::Peer(format!("cannot find this executable: {e}")))?;
    let status = Command::new(exe)
        .args(["offline", "synth", "--seed", "42", "--output"])
        .arg(dir)
        .args(["--users", &users.to_string(), "--items", &items.to_string()])
        .args(["--interactions", &events.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| OfflineError::Peer(format!("synth: {e}")))?;
    if !status.success() {
        return Err(OfflineError::Peer(format!("synth exited with {status}")));
    }
    Ok(())
}
