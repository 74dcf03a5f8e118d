//! `recsys offline train`: the scheduled job that builds features, evaluates, fits on every
//! member, writes a version and — if the publish gate passes — moves `CURRENT` to it.
//!
//! The writer lock (a lease on object storage, [`crate::publish`]) is taken first, so a second
//! `train` against the same model root fails at once instead of racing; every failure before the
//! final rename (or compare-and-swap) leaves `CURRENT` where it was.

use std::path::PathBuf;
use std::time::Instant;

use recsys_shared::artifact::published::write_model;
use recsys_shared::artifact::{
    files, write_history_rows, write_popularity, AlgorithmParams, DataWindow, Evaluation, Manifest,
    ModelRoot, RowCounts, FORMAT_VERSION,
};
use recsys_shared::config::{Config, Protocol};
use recsys_shared::SharedError;

use crate::evaluate::{self, Split};
use crate::family::{iteration_display, FamilyParams};
use crate::features::{FeatureJob, Features, TrainingTable};
use crate::input::InputTable;
use crate::publish::Destination;
use crate::{OfflineError, Result};

/// What to train and where to publish.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub interactions: PathBuf,
    pub items: PathBuf,
    pub config: Config,
    pub as_of_ms: Option<i64>,
    pub skip_eval: bool,
    /// Publish even when the gate refuses.
    pub force: bool,
    /// The tuning result the hyper-parameters came from (`--params-from`), recorded in the
    /// manifest.
    pub tuning: Option<serde_json::Value>,
}

/// The result of a train run (printed as JSON by the CLI).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainOutcome {
    pub version: String,
    /// The family trained (what `offline.family = "auto"` chose).
    pub family: recsys_shared::model::Family,
    pub published: bool,
    /// Seconds of the final fit alone.
    pub train_seconds: f64,
    pub metrics: serde_json::Value,
    /// Why `CURRENT` did or did not move.
    pub gate: String,
    #[serde(skip)]
    pub gate_refused: bool,
}

/// Runs the feature jobs on a tokio runtime of their own (DataFusion is async; nothing else is).
pub fn run_features(
    job: &FeatureJob<'_>,
    interactions: &InputTable,
    items: Option<&InputTable>,
) -> Result<Features> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(job.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| OfflineError::Usage(format!("cannot start the query runtime: {e}")))?;
    runtime.block_on(job.run(interactions, items))
}

/// Evaluates any family with a progress display.
pub fn evaluate_with_progress(
    table: &TrainingTable,
    params: &FamilyParams,
    config: &recsys_shared::config::EvaluationConfig,
) -> Result<(Evaluation, Split)> {
    // The history families show their fit's own progress; iALS shows its iterations here.
    let FamilyParams::Ials(als) = params else {
        return evaluate::evaluate_family(table, params, config, |_| {});
    };
    let (mut progress, mut report) = iteration_display("evaluate", als.iterations);
    let outcome = evaluate::evaluate_family(table, params, config, |r| report(&mut progress, r))?;
    progress.finish();
    Ok(outcome)
}

fn gate_metric(protocol: &str) -> &'static str {
    if protocol == Protocol::LeaveLastOut.name() {
        "ndcg@10"
    } else {
        "ndcg@100"
    }
}

fn ms_to_time(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
}

impl TrainJob {
    /// Runs the whole job.
    pub fn run(&self) -> Result<TrainOutcome> {
        let config = &self.config;
        let mut destination = Destination::open(&config.model)?;
        let interactions = InputTable::discover(&self.interactions)?;
        let items = InputTable::discover(&self.items)?;
        let threads = FamilyParams::config_threads(&config.offline);
        let feature_job = FeatureJob {
            config: &config.offline.features,
            as_of_ms: self.as_of_ms,
            threads,
            cluster: crate::engine::cluster(&config.offline),
            negatives: crate::features::NegativeEvents::from_config(&config.feedback),
        };
        let started = Instant::now();
        let features = run_features(&feature_job, &interactions, Some(&items))?;
        let table = &features.training;
        tracing::info!(
            interactions = features.interactions.rows,
            pairs = table.pairs.len(),
            members = table.user_ids.len(),
            items = table.item_ids.len(),
            seconds = started.elapsed().as_secs_f64(),
            "training table built"
        );
        let params = FamilyParams::from_config(&config.offline, table.item_ids.len());

        let evaluation = if self.skip_eval {
            None
        } else {
            let (evaluation, _) =
                evaluate_with_progress(table, &params, &config.offline.evaluation)?;
            tracing::info!(metrics = ?evaluation.metrics, popularity = ?evaluation.popularity, "evaluated");
            Some(evaluation)
        };

        let fit_started = Instant::now();
        let fitted = crate::family::fit(&table.matrix(|_| true), &params, threads, "train")?;
        let train_seconds = fit_started.elapsed().as_secs_f64();

        let version = ModelRoot::new_version_id();
        let (root, lock) = destination.staging();
        let staged = root.stage(lock, &version)?;
        write_model(
            &staged,
            fitted.into_trained(table.user_ids.clone()),
            table.item_ids.clone(),
            &config.offline.ann_index,
        )?;
        write_popularity(&staged.path(files::ITEM_POPULARITY), &features.popularity)?;
        write_history_rows(&staged.path(files::USER_HISTORY), features.history.iter())?;
        let (catalog_schema, catalog) = features
            .items
            .clone()
            .expect("train always reads the catalog");
        recsys_shared::artifact::write_batches(
            &staged.path(files::ITEMS),
            catalog_schema,
            &catalog,
        )?;
        let catalog_items = catalog.iter().map(|b| b.num_rows() as u64).sum();

        // The gate's verdict is part of the version: the console and `offline versions` show
        // why a version was (not) published.
        let (gate_ok, gate) = self.gate(&destination, evaluation.as_ref())?;
        let publish = gate_ok || self.force;
        let gate = if publish && !gate_ok {
            format!("{gate} (overridden by --force)")
        } else {
            gate
        };
        let (name, model) = params.record();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            version: version.clone(),
            created_at: chrono::Utc::now(),
            algorithm: AlgorithmParams {
                name: name.into(),
                model,
                tuning: self.tuning.clone(),
            },
            features: serde_json::to_value(&config.offline.features).expect("serialisable"),
            data_window: DataWindow {
                first_event: ms_to_time(features.interactions.first_ts_ms),
                last_event: ms_to_time(
                    features
                        .interactions
                        .last_ts_ms
                        .map(|l| self.as_of_ms.map_or(l, |a| a.min(l))),
                ),
                as_of: ms_to_time(self.as_of_ms),
            },
            rows: RowCounts {
                interactions: features.interactions.rows,
                training_pairs: table.pairs.len() as u64,
                members: table.user_ids.len() as u64,
                items: table.item_ids.len() as u64,
                catalog_items,
            },
            evaluation: evaluation.clone(),
            gate: Some(gate.clone()),
            files: Default::default(),
        };
        let manifest = staged.commit(manifest)?;

        let metrics = match &evaluation {
            Some(e) => serde_json::json!({
                "protocol": e.protocol,
                "model": e.metrics,
                "popularity": e.popularity,
                "evaluated_members": e.evaluated_members,
            }),
            None => serde_json::json!({}),
        };
        if publish {
            let removed = destination.publish(&manifest.version, config.model.keep_versions)?;
            if !removed.is_empty() {
                tracing::info!(?removed, "old versions removed");
            }
        }
        Ok(TrainOutcome {
            version,
            family: params.family(),
            published: publish,
            train_seconds,
            metrics,
            gate,
            gate_refused: !publish,
        })
    }

    /// Whether the new evaluation may replace the current model's.
    fn gate(&self, root: &Destination, new: Option<&Evaluation>) -> Result<(bool, String)> {
        let current = match root.current() {
            Ok(Some(current)) => current,
            Ok(None) => return Ok((true, "passed: no current model".into())),
            Err(SharedError::Artifact { problem, .. }) => {
                tracing::warn!(%problem, "the current model is unusable; the gate lets the new one through");
                return Ok((
                    true,
                    format!("passed: the current model is unusable ({problem})"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(new) = new else {
            return Ok((true, "skipped: --skip-eval".into()));
        };
        let Some(old) = current.evaluation.as_ref() else {
            return Ok((
                true,
                format!(
                    "passed: current model {} has no evaluation",
                    current.version
                ),
            ));
        };
        if old.protocol != new.protocol {
            return Ok((
                true,
                format!(
                    "skipped: current model {} was evaluated with {}",
                    current.version, old.protocol
                ),
            ));
        }
        let key = gate_metric(&new.protocol);
        let (new_value, old_value) = (
            new.metrics[key],
            old.metrics.get(key).copied().unwrap_or(0.0),
        );
        let margin = self.config.offline.publish.gate_margin;
        let floor = old_value * (1.0 - margin);
        if new_value < floor {
            Ok((false, format!(
                "refused: {key} {new_value:.4} is below {floor:.4}, the current model {}'s {old_value:.4} less the {:.0}% margin",
                current.version,
                margin * 100.0
            )))
        } else {
            Ok((
                true,
                format!("passed: {key} {new_value:.4} vs current {old_value:.4}"),
            ))
        }
    }
}

/// The feature jobs over an interaction log alone (no catalog, no `--as-of`), with
/// `[offline.features]`: what evaluation, tuning and the quality benchmark train on.
pub fn training_features(interactions: &std::path::Path, config: &Config) -> Result<Features> {
    let input = InputTable::discover(interactions)?;
    let job = FeatureJob {
        config: &config.offline.features,
        as_of_ms: None,
        threads: config.offline.als.threads,
        cluster: crate::engine::cluster(&config.offline),
        negatives: crate::features::NegativeEvents::from_config(&config.feedback),
    };
    run_features(&job, &input, None)
}

/// `recsys offline evaluate` on its own.
pub fn evaluate_only(
    interactions: &std::path::Path,
    config: &Config,
    export_split: Option<&std::path::Path>,
) -> Result<Evaluation> {
    let features = training_features(interactions, config)?;
    let params = FamilyParams::from_config(&config.offline, features.training.item_ids.len());
    let (evaluation, split) =
        evaluate_with_progress(&features.training, &params, &config.offline.evaluation)?;
    if let Some(dir) = export_split {
        evaluate::export_split(dir, &features.training, &split)?;
    }
    Ok(evaluation)
}
