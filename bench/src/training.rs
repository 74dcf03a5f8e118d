//! `recsys offline bench`: training speed and memory against the Python library `implicit`, and
//! accuracy next to it on MovieLens — both peers run in the same invocation, on the same data.
//!
//! 1. Synthetic data (default 100,000 members × 20,000 items × 5,000,000 events) is aggregated into
//!    the training matrix exactly as the training-table SQL would (event weights, rating
//!    threshold), trained here, then written out and trained by `deploy/bench/implicit_als.py`
//!    with the same hyper-parameters and thread count. Prints seconds per iteration, peak memory
//!    and the ratio.
//! 2. MovieLens (default `../shared/data/ml-latest-small`) is imported, evaluated with strong
//!    generalization, the split exported, and `deploy/bench/implicit_eval.py` scores implicit on
//!    the identical split.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use recsys_shared::config::{Config, EvaluationConfig, FeatureConfig};

use recsys_offline::evaluate;
use recsys_offline::family::iteration_display;
use recsys_offline::features::FeatureJob;
use recsys_offline::input::InputTable;
use recsys_offline::synth::{SynthSpec, SynthWorld};
use recsys_offline::train::run_features;
use recsys_offline::{OfflineError, Result};
use recsys_shared::model::ials::train::{self as als, AlsParams};
use recsys_shared::model::matrix::SparseMatrix;

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    #[arg(long, default_value_t = 20_000)]
    pub items: usize,
    #[arg(long, default_value_t = 5_000_000)]
    pub interactions: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub factors: usize,
    #[arg(long, default_value_t = 15)]
    pub iterations: usize,
    #[arg(long, default_value_t = 3)]
    pub cg_steps: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Rounds of (recsys, implicit) training, alternating; each side's fastest round counts.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Instead of training: the feature jobs against DuckDB running the same SQL over the same
    /// Parquet, at each `--feature-events` size (`deploy/bench/duckdb_features.py`; run by
    /// `feature_bench`).
    #[arg(long)]
    pub features: bool,
    /// Synthetic log sizes for `--features`.
    #[arg(long, value_delimiter = ',', default_value = "5000000,20000000")]
    pub feature_events: Vec<usize>,
    /// MovieLens directory for the accuracy comparison; `none` skips it.
    #[arg(long, default_value = "../shared/data/ml-latest-small")]
    pub movielens: String,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Where the Python peer is and whether to run it (shared by the offline benchmarks).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Directory of the peer scripts.
    #[arg(long, default_value = "deploy/bench")]
    pub peer_dir: PathBuf,
    /// Python interpreter with `implicit` installed (deploy/bench/requirements.txt).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Run only our side.
    #[arg(long)]
    pub skip_peer: bool,
}

impl PeerArgs {
    /// Runs `python peer_dir/script extra…` and parses the last line of its output as JSON.
    pub fn run(&self, script: &str, extra: &[String]) -> Result<serde_json::Value> {
        run_peer(&self.python, &self.peer_dir, script, extra)
    }
}

/// Peak resident memory of this process so far, MiB (VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn peer(args: &BenchArgs, script: &str, extra: &[String]) -> Result<serde_json::Value> {
    args.peer.run(script, extra)
}

fn run_peer(
    python: &str,
    peer_dir: &Path,
    script: &str,
    extra: &[String],
) -> Result<serde_json::Value> {
    let path = peer_dir.join(script);
    let output = Command::new(python)
        .arg(&path)
        .args(extra)
        .output()
        .map_err(|e| {
            OfflineError::Peer(format!("cannot run {} {}: {e}", python, path.display()))
        })?;
    if !output.status.success() {
        return Err(OfflineError::Peer(format!(
            "{} failed ({}); are the peers installed (pip install -r deploy/bench/requirements.txt)?\n{}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| {
        OfflineError::Peer(format!(
            "{}: unreadable output {last:?}: {e}",
            path.display()
        ))
    })
}

/// The hyper-parameters both peer scripts take, as command-line arguments.
fn hyper_parameter_args(params: &AlsParams) -> Vec<String> {
    vec![
        format!("--factors={}", params.factors),
        format!("--iterations={}", params.iterations),
        format!("--cg-steps={}", params.cg_steps),
        format!("--regularization={}", params.regularization),
        format!("--threads={}", params.threads),
        format!("--seed={}", params.seed),
    ]
}

/// The training matrix of the synthetic events, aggregated as `training_table.sql` does.
pub fn synthetic_matrix(spec: SynthSpec, features: &FeatureConfig) -> Result<SparseMatrix> {
    let world = SynthWorld::new(spec)?;
    let mut triplets = Vec::with_capacity(spec.interactions);
    world.events(1 << 20, |chunk| {
        for &(u, i, event, value, _) in chunk {
            let weight = features.event_weights.get(event).copied().unwrap_or(0.0);
            let strength = if event == features.rating_event_type {
                if value.is_some_and(|v| v >= features.rating_threshold) {
                    weight
                } else {
                    0.0
                }
            } else {
                weight
            };
            if strength > 0.0 {
                triplets.push((u, i, strength as f32));
            }
        }
        Ok(())
    })?;
    Ok(SparseMatrix::from_triplets(
        spec.users, spec.items, triplets,
    ))
}

fn write_matrix(dir: &Path, m: &SparseMatrix, alpha: f32) -> Result<()> {
    let io = |e| OfflineError::from(recsys_shared::SharedError::io(dir, e));
    std::fs::create_dir_all(dir).map_err(io)?;
    let bytes = |v: Vec<u8>, name: &str| std::fs::write(dir.join(name), v).map_err(io);
    bytes(
        m.indptr
            .iter()
            .flat_map(|&p| (p as i64).to_le_bytes())
            .collect(),
        "indptr.i64",
    )?;
    bytes(
        m.indices
            .iter()
            .flat_map(|&i| (i as i32).to_le_bytes())
            .collect(),
        "indices.i32",
    )?;
    // implicit's confidence is the stored value: give it c = 1 + α r.
    bytes(
        m.values
            .iter()
            .flat_map(|&r| (1.0 + alpha * r).to_le_bytes())
            .collect(),
        "data.f32",
    )?;
    bytes(
        serde_json::json!({"rows": m.rows, "cols": m.cols, "nnz": m.nnz()})
            .to_string()
            .into_bytes(),
        "meta.json",
    )
}

/// Runs the benchmark, printing figures as it goes and a JSON summary last.
pub fn run(args: &BenchArgs) -> Result<serde_json::Value> {
    let defaults = Config::default();
    let params = AlsParams {
        factors: args.factors,
        regularization: defaults.offline.als.regularization,
        alpha: defaults.offline.als.alpha,
        iterations: args.iterations,
        cg_steps: args.cg_steps,
        threads: args.threads,
        seed: args.seed,
        compute_loss: false,
        ..defaults.offline.als.clone()
    };
    let spec = SynthSpec {
        users: args.users,
        items: args.items,
        interactions: args.interactions,
        seed: args.seed,
    };
    println!("== training: synthetic {} members x {} items x {} events, {} factors, {} iterations, {} CG steps, {} threads",
        spec.users, spec.items, spec.interactions, params.factors, params.iterations, params.cg_steps, params.threads);
    let matrix = synthetic_matrix(spec, &defaults.offline.features)?;
    println!("training matrix: {} non-zeros", matrix.nnz());
    let dir =
        tempfile::tempdir().map_err(|e| OfflineError::Peer(format!("temporary directory: {e}")))?;
    if !args.peer.skip_peer {
        write_matrix(dir.path(), &matrix, params.alpha)?;
    }
    let mut peer_args = vec![dir.path().display().to_string()];
    peer_args.extend(hyper_parameter_args(&params));

    // The two sides alternate, round after round, and each is judged by its fastest round: on a
    // shared machine that is the run least disturbed by other tenants.
    let mut ours_rounds = Vec::new();
    let mut theirs_rounds = Vec::new();
    let mut implicit_peak = None;
    for round in 1..=args.rounds.max(1) {
        let (mut progress, mut report) = iteration_display("bench", params.iterations);
        let started = Instant::now();
        als::train(&matrix, &params, |r| report(&mut progress, r))?;
        progress.finish();
        let ours = started.elapsed().as_secs_f64() / params.iterations as f64;
        ours_rounds.push(ours);
        print!("round {round}: recsys {ours:.3} s/iteration");
        if !args.peer.skip_peer {
            let implicit = peer(args, "implicit_als.py", &peer_args)?;
            let theirs = implicit["seconds_per_iteration"]
                .as_f64()
                .unwrap_or(f64::NAN);
            implicit_peak = implicit["peak_rss_mib"].as_f64();
            theirs_rounds.push(theirs);
            print!(
                ", implicit {theirs:.3} s/iteration, ratio {:.2}",
                ours / theirs
            );
        }
        println!();
    }
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let ours_per_iteration = fastest(&ours_rounds);
    let ours_peak = peak_rss_mib();
    println!(
        "recsys:   {ours_per_iteration:.3} s/iteration (fastest of {}), peak RSS {:.0} MiB (target <= 1024)",
        ours_rounds.len(),
        ours_peak.unwrap_or(f64::NAN)
    );
    let mut summary = serde_json::json!({
        "training": {
            "users": spec.users, "items": spec.items, "events": spec.interactions, "nnz": matrix.nnz(),
            "recsys": {"seconds_per_iteration": ours_per_iteration, "rounds": ours_rounds, "peak_rss_mib": ours_peak},
        }
    });
    if !args.peer.skip_peer {
        let theirs = fastest(&theirs_rounds);
        println!(
            "implicit: {theirs:.3} s/iteration (fastest of {}), peak RSS {:.0} MiB",
            theirs_rounds.len(),
            implicit_peak.unwrap_or(f64::NAN)
        );
        println!(
            "ratio recsys/implicit time: {:.2} (target <= 1.0)",
            ours_per_iteration / theirs
        );
        summary["training"]["implicit"] = serde_json::json!({
            "seconds_per_iteration": theirs, "rounds": theirs_rounds, "peak_rss_mib": implicit_peak,
        });
        summary["training"]["time_ratio"] = serde_json::json!(ours_per_iteration / theirs);
    }
    drop(matrix);

    if args.movielens != "none" {
        summary["movielens"] = movielens_accuracy(args, &params)?;
    }
    println!("{summary}");
    Ok(summary)
}

fn movielens_accuracy(args: &BenchArgs, params: &AlsParams) -> Result<serde_json::Value> {
    let source = PathBuf::from(&args.movielens);
    println!(
        "== accuracy: {} , strong generalization, seed 42",
        source.display()
    );
    let work =
        tempfile::tempdir().map_err(|e| OfflineError::Peer(format!("temporary directory: {e}")))?;
    recsys_offline::movielens::import(&source, work.path())?;
    let config = Config::default();
    let job = FeatureJob {
        config: &config.offline.features,
        as_of_ms: None,
        threads: params.threads,
        cluster: None,
        negatives: Default::default(),
    };
    let input = InputTable::discover(&work.path().join("interactions.parquet"))?;
    let features = run_features(&job, &input, None)?;
    let eval_config = EvaluationConfig {
        seed: 42,
        ..Default::default()
    };
    let (ours, split) = evaluate::evaluate(&features.training, params, &eval_config, |_| {})?;
    let split_dir = work.path().join("split");
    evaluate::export_split(&split_dir, &features.training, &split)?;
    let keys = ["recall@20", "recall@50", "ndcg@100"];
    let mut result = serde_json::json!({"recsys": ours.metrics, "popularity": ours.popularity, "evaluated_members": ours.evaluated_members});
    for key in keys {
        println!("recsys   {key}: {:.4}", ours.metrics[key]);
    }
    if !args.peer.skip_peer {
        let mut peer_args = vec![
            split_dir.display().to_string(),
            format!("--alpha={}", params.alpha),
        ];
        peer_args.extend(hyper_parameter_args(params));
        let implicit = peer(args, "implicit_eval.py", &peer_args)?;
        for key in keys {
            let theirs = implicit[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "implicit {key}: {theirs:.4}  (recsys - implicit = {:+.4}, target >= -0.01)",
                ours.metrics[key] - theirs
            );
        }
        result["implicit"] = implicit;
    }
    Ok(result)
}
