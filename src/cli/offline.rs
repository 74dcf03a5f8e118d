//! `recsys offline`: the batch jobs (synth, train, evaluate, tune, report, rollback, versions,
//! loads) and their benchmarks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use recsys_offline::benchmark_split::{evaluate_split, PairsSplit};
use recsys_offline::family::FamilyParams;
use recsys_offline::synth::{SynthSpec, SynthWorld};
use recsys_offline::train::{evaluate_only, TrainJob};
use recsys_offline::tuning::{TuneJob, TuningResult};
use recsys_shared::artifact::{ModelRoot, RemoteModelRoot};
use recsys_shared::config::{Config, FamilyChoice, MemberWeighting, Protocol};
use recsys_shared::model::Family;

use super::{load_config, mirror_remote_root, remote_root, runtime, validated};

#[derive(Subcommand)]
pub(crate) enum OfflineCommand {
    /// Generate a synthetic catalog and interaction log with planted structure.
    Synth {
        /// Members (ids u0000000, u0000001, …).
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Catalog items (ids i000000, i000001, …), in genre clusters.
        #[arg(long, default_value_t = 2_000)]
        items: usize,
        /// Interaction events over the 90 days before 2026-11-01, with power-law popularity and
        /// activity.
        #[arg(long, default_value_t = 500_000)]
        interactions: usize,
        /// Seed: the same seed and sizes give the same files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory to write interactions.parquet and items.parquet into.
        #[arg(long)]
        output: PathBuf,
    },
    /// Build features, evaluate, fit, publish a new model version (prints one JSON line).
    Train(TrainArgs),
    /// Evaluate the configured model on a held-out split (prints one JSON line).
    Evaluate(EvaluateArgs),
    /// Search iALS hyper-parameters on validation members carved out of the training side
    /// (successive halving); the test members of `offline evaluate` score only the final fit.
    /// Writes tuning.json and trials.jsonl; prints one JSON line.
    Tune(TuneArgs),
    /// Write a self-contained HTML report of a published version: figures with 95 % intervals,
    /// Recall@k / NDCG@k curves against popularity and compared versions, figures by member
    /// activity, the tuning trials.
    Report {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to report [default: CURRENT].
        #[arg(long)]
        version: Option<String>,
        /// Versions to draw next to it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        compare: Vec<String>,
        /// The HTML file to write.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Take rate per variant of one experiment, from archived impressions and the events
    /// attributed to them (`request_id`): members, impressions, plays, take rate and plays per
    /// member with 95 % intervals, lift against the control with its p-value.
    ExperimentReport {
        /// Archived impressions (`recsys nearline archive --kind impressions`): a directory,
        /// file or object-storage URL.
        #[arg(long)]
        impressions: PathBuf,
        /// Archived events (`recsys nearline archive --kind events`).
        #[arg(long)]
        events: PathBuf,
        /// The experiment's name.
        #[arg(long)]
        experiment: String,
        /// Event types that count as taking a recommendation (repeatable) [default: play].
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// The variant the others are compared with [default: `control`, else the first].
        #[arg(long)]
        control: Option<String>,
        /// Also save the report as JSON here (replaced atomically). Saved as
        /// `<model root>/reports/experiment-<name>.json`, the console shows it beside the
        /// experiment.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Point CURRENT at an earlier (or later) published version.
    Rollback {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to make current.
        #[arg(long)]
        to: String,
    },
    /// List the published versions, the current one marked.
    Versions {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// Check every version's files against the sha256 sums in its manifest; a version that
        /// fails is listed as CORRUPT with the reason, and the command exits 1 if the current one
        /// does.
        #[arg(long)]
        verify: bool,
    },
    /// Training benchmark against the Python library `implicit`, and accuracy on MovieLens.
    Bench(recsys_bench::training::BenchArgs),
    /// Quality against `implicit` per data set on the identical split: recsys default and tuned,
    /// implicit default and tuned with the same search time, with 95 % intervals.
    BenchQuality(recsys_bench::quality::QualityBenchArgs),
    /// Load a published model's member vectors and histories into the feature store
    /// ([store] in the config). Run after each publish; idempotent.
    LoadStore {
        /// The model root: a directory or an object-storage URL (s3://, gs://, az://)
        /// [config: model.root, default var/models].
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to load [default: CURRENT].
        #[arg(long)]
        version: Option<String>,
        /// Load even if the store records that this version was loaded already.
        #[arg(long)]
        force: bool,
    },
    /// Write member profiles (the maturity limit the online tier filters by) into the feature
    /// store from JSON lines `{"user_id": "...", "max_maturity": "PG-13"}` (`null` lifts a
    /// limit). Every line is checked first; a bad one writes nothing and names its line.
    LoadProfiles {
        /// The profiles file (.jsonl).
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Args)]
pub(crate) struct AlsArgs {
    /// Latent factors [config: offline.als.factors, default 64].
    #[arg(long)]
    factors: Option<usize>,
    /// L2 regularisation λ [config: offline.als.regularization, default 0.1].
    #[arg(long)]
    regularization: Option<f32>,
    /// Confidence per unit of strength, c = 1 + α r [config: offline.als.alpha, default 10].
    #[arg(long)]
    alpha: Option<f32>,
    /// ALS iterations [config: offline.als.iterations, default 15].
    #[arg(long)]
    iterations: Option<usize>,
    /// Conjugate-gradient steps per solve [config: offline.als.cg_steps, default 3].
    #[arg(long)]
    cg_steps: Option<usize>,
    /// Threads, 0 = all cores [config: offline.als.threads, default 0].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Items (catalog) Parquet file or directory.
    #[arg(long)]
    items: PathBuf,
    /// The model root to publish into: a directory or an object-storage URL
    /// [config: model.root, default var/models].
    #[arg(long)]
    model_root: Option<PathBuf>,
    /// Ignore events after this instant (RFC 3339, YYYY-MM-DD, or epoch milliseconds).
    #[arg(long, value_parser = parse_instant)]
    as_of: Option<i64>,
    /// Publish without evaluating (the gate is skipped).
    #[arg(long)]
    skip_eval: bool,
    /// Move CURRENT even when the publish gate refuses.
    #[arg(long)]
    force: bool,
    /// Seed of the factor initialisation [config: offline.als.seed, default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Train with the setting a `recsys offline tune` run chose (its tuning.json or directory);
    /// recorded in the manifest. Family and ALS flags given as well override it.
    #[arg(long)]
    params_from: Option<PathBuf>,
    #[command(flatten)]
    family: FamilyArgs,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Args)]
pub(crate) struct TuneArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Time for the whole choice (90s, 10m, 1h30m): the search gets 85 % of it and stops after
    /// the trial in hand once that is spent, then the best settings are re-checked; the final
    /// fits run after it.
    #[arg(long, value_parser = recsys_offline::tuning::parse_duration)]
    budget: Option<std::time::Duration>,
    /// Settings drawn for the first rung [config: offline.tuning.trials, default 24].
    #[arg(long)]
    trials: Option<usize>,
    /// Seed of the draws and of the validation split.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Directory for tuning.json and trials.jsonl [default: <model.root>/tuning/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The model root, under which the default --out goes [config: model.root, default
    /// var/models].
    #[arg(long)]
    model_root: Option<PathBuf>,
    #[command(flatten)]
    als: AlsArgs,
}

/// The family and the parameters of the two history families.
#[derive(Args)]
pub(crate) struct FamilyArgs {
    /// The model family; auto: EASE up to offline.auto_ease_max_items items, iALS beyond
    /// [config: offline.family, default auto].
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// EASE's λ [config: offline.ease.lambda, default 100].
    #[arg(long)]
    lambda: Option<f32>,
    /// Weights kept per item for serving, EASE's and BSPM's [config: offline.ease.top_n and
    /// offline.bspm.top_n, default 1000].
    #[arg(long)]
    top_n: Option<usize>,
    /// BSPM's low-pass rank [config: offline.bspm.rank, default 448].
    #[arg(long)]
    rank: Option<usize>,
    /// BSPM's low-pass weight β [config: offline.bspm.low_pass_weight, default 0.2].
    #[arg(long)]
    low_pass_weight: Option<f32>,
    /// BSPM's sharpening time [config: offline.bspm.sharpen_time, default 2.5].
    #[arg(long)]
    sharpen_time: Option<f32>,
    /// Item-kNN's neighbours per item [config: offline.item_knn.neighbours, default 200].
    #[arg(long)]
    neighbours: Option<usize>,
    /// Item-kNN's shrinkage [config: offline.item_knn.shrink, default 50].
    #[arg(long)]
    shrink: Option<f32>,
    /// Item-kNN's asymmetric-cosine exponent, 0.5 = cosine [config: offline.item_knn.alpha,
    /// default 0.7].
    #[arg(long)]
    knn_alpha: Option<f32>,
    /// Item-kNN's member weighting [config: offline.item_knn.member_weighting, default idf].
    #[arg(long, value_enum)]
    member_weighting: Option<MemberWeightingArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum MemberWeightingArg {
    None,
    Idf,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FamilyArg {
    Auto,
    Ials,
    Ease,
    ItemKnn,
    Bspm,
}

impl FamilyArgs {
    fn apply(&self, config: &mut Config) {
        let offline = &mut config.offline;
        if let Some(f) = self.family {
            offline.family = match f {
                FamilyArg::Auto => FamilyChoice::Auto,
                FamilyArg::Ials => Family::Ials.into(),
                FamilyArg::Ease => Family::Ease.into(),
                FamilyArg::ItemKnn => Family::ItemKnn.into(),
                FamilyArg::Bspm => Family::Bspm.into(),
            };
        }
        if let Some(v) = self.lambda {
            offline.ease.lambda = v;
        }
        if let Some(v) = self.top_n {
            offline.ease.top_n = v;
            offline.bspm.top_n = v;
        }
        if let Some(v) = self.rank {
            offline.bspm.rank = v;
        }
        if let Some(v) = self.low_pass_weight {
            offline.bspm.low_pass_weight = v;
        }
        if let Some(v) = self.sharpen_time {
            offline.bspm.sharpen_time = v;
        }
        if let Some(v) = self.neighbours {
            offline.item_knn.neighbours = v;
        }
        if let Some(v) = self.shrink {
            offline.item_knn.shrink = v;
        }
        if let Some(v) = self.knn_alpha {
            offline.item_knn.alpha = v;
        }
        if let Some(v) = self.member_weighting {
            offline.item_knn.member_weighting = match v {
                MemberWeightingArg::None => MemberWeighting::None,
                MemberWeightingArg::Idf => MemberWeighting::Idf,
            };
        }
    }
}

#[derive(Args)]
pub(crate) struct EvaluateArgs {
    /// Interactions Parquet file or directory (the configured protocol splits them).
    #[arg(long, required_unless_present = "train", conflicts_with = "train")]
    interactions: Option<PathBuf>,
    /// A benchmark's own training pairs (CSV with user_id,item_id): with --test, scores the
    /// published protocol (every item without a training pair ranked; Recall@k = hits / test
    /// items) for any --family.
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// The benchmark's test pairs (CSV with user_id,item_id).
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// The cut-off of --train/--test's metrics.
    #[arg(long, default_value_t = 20)]
    k: usize,
    #[command(flatten)]
    family: FamilyArgs,
    /// Evaluation protocol [config: offline.evaluation.protocol, default strong-generalization].
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Fraction of eligible members held out [config: offline.evaluation.heldout_fraction, default 0.2].
    #[arg(long)]
    heldout_fraction: Option<f64>,
    /// Seed of the split [config: offline.evaluation.seed, default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Write the exact split to DIR/{train,foldin,target}.parquet.
    #[arg(long)]
    export_split: Option<PathBuf>,
    /// Evaluate the family and setting a `recsys offline tune` run chose (its tuning.json or
    /// directory); flags given as well override it.
    #[arg(long)]
    params_from: Option<PathBuf>,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ProtocolArg {
    StrongGeneralization,
    LeaveLastOut,
}

impl AlsArgs {
    fn apply(&self, config: &mut Config) {
        let als = &mut config.offline.als;
        if let Some(v) = self.factors {
            als.factors = v;
        }
        if let Some(v) = self.regularization {
            als.regularization = v;
        }
        if let Some(v) = self.alpha {
            als.alpha = v;
        }
        if let Some(v) = self.iterations {
            als.iterations = v;
        }
        if let Some(v) = self.cg_steps {
            als.cg_steps = v;
        }
        if let Some(v) = self.threads {
            als.threads = v;
        }
    }
}

fn parse_instant(s: &str) -> std::result::Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        // A date means the end of that day: its events are included.
        return Ok(d
            .and_hms_milli_opt(23, 59, 59, 999)
            .expect("valid")
            .and_utc()
            .timestamp_millis());
    }
    Err(format!(
        "{s:?} is not RFC 3339 (2026-11-01T00:00:00Z), a date (2026-11-01) or epoch milliseconds"
    ))
}

/// One line of `recsys offline versions`: the sizes and the evaluation of a version.
/// One line of `offline versions`: sizes, then each evaluation figure to 4 decimals
/// (`recall@20 0.3165 (popularity 0.1120)`).
fn version_summary(m: &recsys_shared::artifact::Manifest) -> String {
    let figures = m.evaluation.as_ref().map(|e| {
        e.metrics
            .iter()
            .map(|(name, value)| match e.popularity.get(name) {
                Some(p) => format!("{name} {value:.4} (popularity {p:.4})"),
                None => format!("{name} {value:.4}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    format!(
        "{}, {} members, {} items{}",
        m.algorithm.family().name(),
        m.rows.members,
        m.rows.items,
        figures
            .filter(|f| !f.is_empty())
            .map(|f| format!("; {f}"))
            .unwrap_or_default()
    )
}

/// `recsys offline versions` for an object-storage root; `verify` checks every file's presence
/// and size (sha256 is checked by every reader after download).
async fn list_remote_versions(remote: &RemoteModelRoot, verify: bool) -> Result<()> {
    let current = remote.current_version().await?;
    let mut current_corrupt = None;
    for version in remote.versions().await? {
        let is_current = Some(&version) == current.as_ref();
        let marker = if is_current { "*" } else { " " };
        let manifest = if verify {
            remote.check_sizes(&version).await
        } else {
            remote.manifest(&version).await
        };
        match manifest {
            Ok(m) => println!("{marker} {version}  {}", version_summary(&m)),
            Err(e) => {
                println!("{marker} {version}  CORRUPT: {e}");
                if is_current {
                    current_corrupt = Some(e);
                }
            }
        }
    }
    if let Some(e) = current_corrupt {
        anyhow::bail!("the current version is corrupt ({e}); `recsys offline rollback --to <version>` moves CURRENT");
    }
    Ok(())
}

async fn load_store(
    config: &Config,
    root: &ModelRoot,
    version: Option<&str>,
    force: bool,
) -> Result<()> {
    use recsys_store::{bulk, features::FeatureStore};
    let kv = recsys_store::open(&config.store)
        .await
        .with_context(|| format!("opening the {} store", config.store.backend.name()))?;
    let store = FeatureStore::new(kv, config.store.history_cap);
    let version = match version {
        Some(v) => v.to_string(),
        None => root
            .current_version()?
            .with_context(|| format!("{}: no CURRENT version", root.path().display()))?,
    };
    if !force && bulk::is_loaded(&store, &version).await? {
        tracing::info!(%version, "already loaded; nothing to do (--force reloads)");
        println!(
            "{}",
            serde_json::json!({"model_version": version, "already_loaded": true})
        );
        return Ok(());
    }
    let report = bulk::load_model_features_with_progress(root, &version, &store).await?;
    tracing::info!(
        members = report.members,
        backend = store.backend(),
        "store loaded"
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs one `recsys offline` command.
pub(crate) fn run(command: &OfflineCommand, config_path: Option<&Path>) -> Result<ExitCode> {
    match command {
        OfflineCommand::Synth {
            users,
            items,
            interactions,
            seed,
            output,
        } => {
            let spec = SynthSpec {
                users: *users,
                items: *items,
                interactions: *interactions,
                seed: *seed,
            };
            SynthWorld::new(spec)?.write(output)?;
            println!(
                "{}",
                serde_json::json!({"output": output, "users": users, "items": items, "interactions": interactions, "seed": seed})
            );
        }
        OfflineCommand::Train(args) => {
            let mut config = load_config(config_path)?;
            let tuning = match &args.params_from {
                Some(path) => {
                    let result = TuningResult::read(path)?;
                    result.apply(&mut config.offline);
                    Some(result.provenance(path))
                }
                None => None,
            };
            args.als.apply(&mut config);
            args.family.apply(&mut config);
            if let Some(seed) = args.seed {
                config.offline.als.seed = seed;
            }
            if let Some(root) = &args.model_root {
                config.model.root = root.clone();
            }
            let job = TrainJob {
                interactions: args.interactions.clone(),
                items: args.items.clone(),
                config: validated(config)?,
                as_of_ms: args.as_of,
                skip_eval: args.skip_eval,
                force: args.force,
                tuning,
            };
            let outcome = job.run()?;
            if outcome.gate_refused {
                tracing::error!(gate = %outcome.gate, version = %outcome.version, "CURRENT not moved; rerun with --force to publish anyway");
            } else {
                tracing::info!(gate = %outcome.gate, version = %outcome.version, "published");
            }
            println!("{}", serde_json::to_string(&outcome)?);
            if outcome.gate_refused {
                return Ok(ExitCode::from(3));
            }
        }
        OfflineCommand::Evaluate(args) => {
            let mut config = load_config(config_path)?;
            if let Some(path) = &args.params_from {
                TuningResult::read(path)?.apply(&mut config.offline);
            }
            args.als.apply(&mut config);
            args.family.apply(&mut config);
            if let (Some(train), Some(test)) = (&args.train, &args.test) {
                let config = validated(config)?;
                let offline = &config.offline;
                let split = PairsSplit::read(train, test)?;
                let params = FamilyParams::from_config(offline, split.items.len());
                let threads = params.threads(offline.als.threads);
                let result =
                    evaluate_split(&split, &params, args.k, threads, offline.evaluation.seed)?;
                println!("{}", serde_json::to_string(&result)?);
                return Ok(ExitCode::SUCCESS);
            }
            let interactions = args
                .interactions
                .as_deref()
                .context("--interactions or --train/--test is required")?;
            let evaluation = &mut config.offline.evaluation;
            if let Some(p) = args.protocol {
                evaluation.protocol = match p {
                    ProtocolArg::StrongGeneralization => Protocol::StrongGeneralization,
                    ProtocolArg::LeaveLastOut => Protocol::LeaveLastOut,
                };
            }
            if let Some(f) = args.heldout_fraction {
                evaluation.heldout_fraction = f;
            }
            if let Some(s) = args.seed {
                evaluation.seed = s;
            }
            let config = validated(config)?;
            let result = evaluate_only(interactions, &config, args.export_split.as_deref())?;
            println!("{}", serde_json::to_string(&result)?);
        }
        OfflineCommand::Tune(args) => {
            let mut config = load_config(config_path)?;
            args.als.apply(&mut config);
            if let Some(t) = args.trials {
                config.offline.tuning.trials = t;
            }
            if let Some(root) = &args.model_root {
                config.model.root = root.clone();
            }
            let config = validated(config)?;
            let out = args.out.clone().unwrap_or_else(|| {
                config
                    .model
                    .root
                    .join("tuning")
                    .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string())
            });
            let job = TuneJob {
                trials: config.offline.tuning.trials,
                budget: args.budget,
                seed: args.seed,
                out: out.clone(),
                final_fits: true,
            };
            let result = recsys_offline::tuning::tune_log(&args.interactions, &config, &job)?;
            if let Some(warning) = result.budget_warning() {
                tracing::warn!("{warning}");
            }
            if let Some(test) = &result.test {
                let defaults = |metric: &str| {
                    result
                        .test_defaults
                        .as_ref()
                        .map_or("not fitted".to_string(), |d| {
                            format!("{:.4}", d.metrics[metric])
                        })
                };
                eprintln!(
                    "tuned ({} chosen) {} on the test members: {:.4} (defaults {}); recall@20 {:.4} (defaults {}); written to {}",
                    result.family.name(),
                    result.metric,
                    test.metrics[&result.metric],
                    defaults(&result.metric),
                    test.metrics["recall@20"],
                    defaults("recall@20"),
                    out.display()
                );
            }
            println!(
                "{}",
                serde_json::json!({
                    "out": out,
                    "family": result.family,
                    "chosen": result.chosen,
                    "best": result.best,
                    "final_iterations": result.final_iterations,
                    "family_best": result.family_best,
                    "family_settings": result.family_settings(),
                    "families_cut": result.families_cut,
                    "families_skipped": result.families_skipped,
                    "validation": result.validation,
                    "test": result.test.as_ref().map(|t| &t.metrics),
                    "test_intervals": result.test.as_ref().map(|t| &t.intervals),
                    "test_defaults": result.test_defaults.as_ref().map(|t| &t.metrics),
                    // A trial is one drawn setting; each is scored at every rung it reaches.
                    "trials": result.settings_tried(),
                    "scored_rungs": result.trials.len(),
                    "budget_exhausted": result.budget_exhausted,
                    "search_seconds": result.search_seconds,
                })
            );
        }
        OfflineCommand::Report {
            model_root,
            version,
            compare,
            out,
        } => {
            let config = load_config(config_path)?;
            let job = recsys_offline::report::ReportJob {
                model_root: model_root.clone().unwrap_or(config.model.root),
                version: version.clone(),
                compare: compare.clone(),
                out: out.clone(),
            };
            let version = recsys_offline::report::write_report(&job)?;
            println!(
                "{}",
                serde_json::json!({"report": out, "version": version, "compared": compare})
            );
        }
        OfflineCommand::ExperimentReport {
            impressions,
            events,
            experiment,
            event_types,
            control,
            out,
        } => {
            use recsys_offline::experiment_report::{self, ReportRequest};
            use recsys_offline::input::InputTable;
            let impressions = InputTable::discover(impressions)?;
            let events = InputTable::discover(events)?;
            let request = ReportRequest {
                experiment: experiment.clone(),
                positive_events: event_types.clone(),
                control: control.clone(),
            };
            let report =
                runtime()?.block_on(experiment_report::run(&impressions, &events, &request))?;
            print!("{report}");
            let json = serde_json::to_string(&report)?;
            if let Some(out) = out {
                save_atomically(out, json.as_bytes())
                    .with_context(|| format!("saving the report to {}", out.display()))?;
            }
            println!("{json}");
        }
        OfflineCommand::Rollback { model_root, to } => {
            let mut config = load_config(config_path)?;
            if let Some(root) = model_root {
                config.model.root = root.clone();
            }
            let mut destination = recsys_offline::publish::Destination::open(&config.model)?;
            let previous = destination.rollback(to)?;
            println!(
                "{}",
                serde_json::json!({"current": to, "previous": previous})
            );
        }
        OfflineCommand::Versions { model_root, verify } => {
            let config = load_config(config_path)?;
            let root = model_root.clone().unwrap_or(config.model.root);
            if let Some(remote) = remote_root(&root)? {
                runtime()?.block_on(list_remote_versions(&remote, *verify))?;
                return Ok(ExitCode::SUCCESS);
            }
            let root = ModelRoot::new(root);
            let current = root.current_version()?;
            let mut current_corrupt = None;
            for version in root.versions()? {
                let is_current = Some(&version) == current.as_ref();
                let marker = if is_current { "*" } else { " " };
                let checked = if *verify {
                    root.verify(&version).map(|_| ())
                } else {
                    Ok(())
                };
                if let Err(e) = checked {
                    println!("{marker} {version}  CORRUPT: {e}");
                    if is_current {
                        current_corrupt = Some(e);
                    }
                    continue;
                }
                let summary = match root.manifest(&version) {
                    Ok(m) => version_summary(&m),
                    Err(e) => format!("unreadable: {e}"),
                };
                println!("{marker} {version}  {summary}");
            }
            if let Some(e) = current_corrupt {
                anyhow::bail!(
                    "the current version is corrupt ({e}); servers keep or fall back to the newest intact one; `recsys offline rollback --to <version>` moves CURRENT"
                );
            }
        }
        OfflineCommand::BenchQuality(args) => {
            let config = validated(load_config(config_path)?)?;
            recsys_bench::quality::run(args, &config)?;
        }
        OfflineCommand::Bench(args) => {
            if args.features {
                let rows = recsys_bench::features::run(
                    &args.feature_events,
                    args.rounds,
                    args.threads,
                    &args.peer,
                )?;
                println!("{}", serde_json::json!({ "feature_jobs": rows }));
            } else {
                recsys_bench::training::run(args)?;
            }
        }
        OfflineCommand::LoadProfiles { input } => {
            use recsys_store::{features::FeatureStore, profiles};
            let config = validated(load_config(config_path)?)?;
            let report = runtime()?.block_on(async {
                let kv = recsys_store::open(&config.store).await.with_context(|| {
                    format!("opening the {} store", config.store.backend.name())
                })?;
                let store = FeatureStore::new(kv, config.store.history_cap);
                let report =
                    profiles::load_profiles(input, &store, &config.online.maturity).await?;
                anyhow::Ok(report)
            })?;
            println!("{}", serde_json::to_string(&report)?);
        }
        OfflineCommand::LoadStore {
            model_root,
            version,
            force,
        } => {
            let mut config = load_config(config_path)?;
            if let Some(root) = model_root {
                config.model.root = root.clone();
            }
            runtime()?.block_on(async {
                // An object-storage root is mirrored into the cache first (the poll interval is
                // moot: the command ends after one load).
                let _mirror =
                    mirror_remote_root(&mut config, std::time::Duration::from_secs(3600)).await?;
                let root = ModelRoot::new(&config.model.root);
                load_store(&config, &root, version.as_deref(), *force).await
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so a reader sees the old
/// file or the new one, never half of one.
fn save_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
