//! `recsys offline tune`: hyper-parameter search across the model families that never looks at
//! the test members.
//!
//! The families of `offline.tuning.families` share the budget equally; the history families
//! (EASE, item-kNN: one whole fit per trial, [`crate::family_search`]) run first, each to its
//! share, then iALS's search below takes what is left. The family with the best validation score
//! is chosen, and when that is iALS its iterations are chosen again on the validation split by
//! early stopping, so that the final fit is trained to convergence whatever rung the budget
//! reached.
//!
//! The test members are held out exactly as `recsys offline evaluate` holds them out with strong
//! generalization (same fraction and seed; the search always uses that protocol), so the figures of the final fit compare with any other
//! evaluation of the same data. A *validation* set is then carved out of the remaining (training)
//! members the same way — strong generalization inside the training side — and every trial is
//! scored on it, never on the test members.
//!
//! The search is successive halving (Jamieson & Talwalkar 2016; one bracket of Hyperband, Li et
//! al. 2017) over ALS iterations: `trials` settings are drawn from the search space (log-uniform
//! for the scales, uniform for ν), each is trained for `min_iterations` and scored; the best
//! `1/eta` continue — training resumes from their factors, nothing is retrained — to `eta ×` the
//! iterations, and so on up to `max_iterations`. λ is drawn as the *effective* regularisation of
//! a row with the mean number of observed cells, `λ (n̄ + α₀ N)^ν`, so that ν and λ are not
//! entangled.
//!
//! The search ranks every trial on one validation split, and the top of hundreds of noisy scores
//! favours the luckiest setting (the winner's curse). So the best `recheck_top` scored settings
//! are then trained again on `recheck_splits` fresh validation splits of the training side (other
//! members held out, same fraction), and the best mean over those splits is chosen; with a budget
//! the search gets [`SEARCH_SHARE`] of it (less when one split of the re-check, at the search's
//! own pace, needs more than the rest) and stops after the trial in hand; the re-check starts no
//! split past the budget, and always runs its first.
//!
//! Without `--budget` the search is one bracket. With one, it runs brackets of fresh draws until
//! the budget is spent, stopping at a rung boundary. Everything is seeded: the same data, config,
//! seed and trial count give the same trials, bracket after bracket, and the same choice for the
//! same number of rungs run. Each scored trial is appended to `trials.jsonl` as it finishes and logged; the
//! whole result (space, trials, the choice, its validation figures, and the test figures of the
//! final fit next to the defaults') is written to `tuning.json`, which
//! `recsys offline train --params-from` reads.
//!
//! It must not: publish models (training does), or read the test members' targets before the
//! final fit.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use recsys_shared::artifact::Evaluation;
use recsys_shared::config::{Config, EvaluationConfig, OfflineConfig, Protocol, TuningConfig};
use recsys_shared::model::Family;
use recsys_shared::SharedError;

use crate::evaluate;
use crate::family::FamilyParams;
use crate::family_search::{self, log_uniform, FamilyTrial, HistoryParams};
use crate::features::TrainingTable;
use crate::progress::Progress;
use crate::{OfflineError, Result};
use recsys_shared::model::ials::train::{AlsParams, Trainer, TrainingData};
use recsys_shared::model::ials::Objective;

/// The hyper-parameters one trial sets; the rest come from `[offline.als]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub factors: usize,
    /// λ, α, α₀ and ν (flattened: `tuning.json` lists them beside `factors`).
    #[serde(flatten)]
    pub objective: Objective,
    pub iterations: usize,
}

impl Setting {
    /// `base` with this setting applied.
    pub fn apply(&self, base: &AlsParams) -> AlsParams {
        AlsParams {
            factors: self.factors,
            iterations: self.iterations,
            ..base.with_objective(self.objective)
        }
    }
}

/// One scored rung of one trial: a line of `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub trial: usize,
    /// The successive-halving bracket (a fresh draw of `trials` settings).
    #[serde(default)]
    pub bracket: usize,
    pub rung: usize,
    pub setting: Setting,
    /// The validation metric the search ranks by.
    pub score: f64,
    pub validation: BTreeMap<String, f64>,
    /// Seconds since the search started.
    pub elapsed_seconds: f64,
}

/// The share of `--budget` the search may use when its best settings are re-checked after it.
pub const SEARCH_SHARE: f64 = 0.85;

/// One setting re-checked after the search: its metric on each fresh validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recheck {
    pub trial: usize,
    pub rung: usize,
    pub setting: Setting,
    /// Its score on the search's validation split.
    pub search_score: f64,
    /// Its score on each fresh split.
    pub split_scores: Vec<f64>,
    pub mean_score: f64,
}

/// `tuning.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningResult {
    /// The metric the search ranked by.
    pub metric: String,
    pub seed: u64,
    pub space: TuningConfig,
    /// The chosen setting: the best of the re-check, or of the search without one.
    pub best: Setting,
    pub best_trial: usize,
    /// The chosen setting's figures on the search's validation split.
    pub validation: BTreeMap<String, f64>,
    pub validation_members: u64,
    pub trials: Vec<TrialRecord>,
    /// The re-checked settings, best search score first (empty when the re-check is off).
    #[serde(default)]
    pub recheck: Vec<Recheck>,
    /// Whether `--budget` cut a bracket short (before its last rung).
    pub budget_exhausted: bool,
    /// Seconds spent choosing: the search and the re-check.
    pub search_seconds: f64,
    /// The final fit with the chosen setting, on the test members of `offline evaluate`
    /// (`None` when the job asked for no final fits: [`TuneJob::final_fits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Evaluation>,
    /// The same fit with the configured family and its section as configured, for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_defaults: Option<Evaluation>,
    /// The family of `test_defaults` (what `offline.family` resolved to on this data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults_family: Option<Family>,
    /// The family chosen: the best validation score across the families searched.
    #[serde(default)]
    pub family: Family,
    /// The chosen history family's parameters; `None` when iALS was chosen (`best`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<HistoryParams>,
    /// The history families' scored settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub family_trials: Vec<FamilyTrial>,
    /// Each family's best validation score (the search's split), by family name.
    #[serde(default)]
    pub family_best: BTreeMap<String, f64>,
    /// Families whose share of the budget ran out before all their settings were scored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families_cut: Vec<Family>,
    /// Families that could not train on this data, and why (left out of the choice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families_skipped: Vec<SkippedFamily>,
    /// iALS chosen: the iterations its final fits train, chosen on the validation split by
    /// early stopping (`offline.tuning.convergence_patience`); `None`: the rung's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_iterations: Option<usize>,
    /// The validation score after each iteration of that choice, `[iterations, score]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub convergence: Vec<[f64; 2]>,
}

impl TuningResult {
    /// How many settings (trials) were drawn and scored at least once; `trials` holds one record
    /// per scored rung of each.
    pub fn settings_tried(&self) -> usize {
        self.trials
            .iter()
            .map(|r| (r.bracket, r.trial))
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Settings scored per family (iALS: drawn settings, each scored at every rung it reached).
    pub fn family_settings(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        if !self.trials.is_empty() {
            out.insert(Family::Ials.name().to_string(), self.settings_tried());
        }
        for trial in &self.family_trials {
            *out.entry(trial.params.family().name().to_string())
                .or_insert(0) += 1;
        }
        out
    }

    /// What the budget could not cover, in words; `None` when it covered the search.
    pub fn budget_warning(&self) -> Option<String> {
        let mut parts = Vec::new();
        // A budget always ends some bracket early; it was too small only when no setting
        // reached the last rung.
        let reached = self.trials.iter().map(|r| r.rung + 1).max().unwrap_or(0);
        let rungs_total = rungs(&self.space).len();
        if self.budget_exhausted && reached < rungs_total {
            parts.push(format!(
                "iALS reached rung {reached} of {rungs_total} ({} settings, {} scored rungs)",
                self.settings_tried(),
                self.trials.len()
            ));
        }
        let settings = self.family_settings();
        for family in &self.families_cut {
            parts.push(format!(
                "{} scored {} of {} settings before its share ran out",
                family.name(),
                settings.get(family.name()).copied().unwrap_or(0),
                self.space.trials
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "the tuning budget was too small for this data: {}; give --budget more time for a fuller search",
                parts.join("; ")
            )
        })
    }

    /// The best setting the search found for `family` (iALS at the iterations of its rung, or its
    /// converged iterations when chosen); `None` when the family was not searched.
    pub fn best_of(&self, family: Family, offline: &OfflineConfig) -> Option<FamilyParams> {
        match family {
            Family::Ials if self.trials.is_empty() => None,
            Family::Ials => {
                let mut params = self.best.apply(&offline.als);
                if let (Family::Ials, Some(iterations)) = (self.family, self.final_iterations) {
                    params.iterations = iterations;
                }
                Some(FamilyParams::Ials(params))
            }
            _ => self
                .family_trials
                .iter()
                .filter(|t| t.params.family() == family)
                .max_by(|a, b| a.score.total_cmp(&b.score).then(b.trial.cmp(&a.trial)))
                .map(|t| t.params.family_params()),
        }
    }

    /// Puts the chosen family and setting in force in `offline` (what `train --params-from`
    /// trains with).
    pub fn apply(&self, offline: &mut OfflineConfig) {
        match &self.chosen {
            Some(history) => history.apply(offline),
            None => {
                offline.family = Family::Ials.into();
                offline.als = self.best.apply(&offline.als);
                if let Some(iterations) = self.final_iterations {
                    offline.als.iterations = iterations;
                }
            }
        }
    }

    /// Reads a `tuning.json` (or the directory holding one).
    pub fn read(path: &Path) -> Result<TuningResult> {
        let file = if path.is_dir() {
            path.join("tuning.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| SharedError::io(&file, e))?;
        serde_json::from_str(&text).map_err(|e| {
            OfflineError::Usage(format!(
                "{} is not a tuning result (written by `recsys offline tune`): {e}",
                file.display()
            ))
        })
    }

    /// What the manifest records about where the parameters came from.
    pub fn provenance(&self, source: &Path) -> serde_json::Value {
        serde_json::json!({
            "source": source.display().to_string(),
            "family": self.family,
            "chosen": self.chosen,
            "final_iterations": self.final_iterations,
            "metric": self.metric,
            "best_trial": self.best_trial,
            "validation": self.validation,
            "validation_members": self.validation_members,
            "recheck_mean": self
                .recheck
                .iter()
                .find(|r| r.trial == self.best_trial && r.setting == self.best)
                .map(|r| r.mean_score),
            "test": self.test.as_ref().map(|t| &t.metrics),
        })
    }
}

/// A family left out of the search because it cannot train on the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedFamily {
    pub family: Family,
    pub problem: String,
}

/// How long the search may run and how many settings it starts with.
#[derive(Debug, Clone)]
pub struct TuneJob {
    pub trials: usize,
    pub budget: Option<Duration>,
    pub seed: u64,
    /// Directory of `tuning.json` and `trials.jsonl`.
    pub out: PathBuf,
    /// Fit the chosen setting and the defaults on the whole training side and score them on the
    /// test members (`test`, `test_defaults`); a caller that scores its own way (a benchmark's
    /// own split) turns this off and saves both fits.
    pub final_fits: bool,
}

/// Parses `90s`, `10m`, `1h`, `1h30m` or plain seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (90s, 10m, 1h30m, or seconds)");
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Draws `n` settings from the space. `mean_observed` and `columns` translate the effective
/// regularisation into λ for each side's typical row (the member side's).
fn draw_settings(
    space: &TuningConfig,
    n: usize,
    rng: &mut StdRng,
    mean_observed: f64,
    columns: usize,
) -> Vec<Setting> {
    (0..n)
        .map(|_| {
            let factors = space.factors[rng.random_range(0..space.factors.len())];
            let effective = log_uniform(rng, space.effective_regularization);
            let [nu_lo, nu_hi] = space.regularization_exp;
            let nu = nu_lo + rng.random::<f64>() * (nu_hi - nu_lo);
            let a0 = log_uniform(rng, space.unobserved_weight);
            let alpha = log_uniform(rng, space.alpha);
            let mass = mean_observed + a0 * columns as f64;
            Setting {
                factors,
                objective: Objective {
                    regularization: (effective / mass.powf(nu)) as f32,
                    regularization_exp: nu as f32,
                    unobserved_weight: a0 as f32,
                    alpha: alpha as f32,
                },
                iterations: space.min_iterations,
            }
        })
        .collect()
}

/// The iterations of each rung: `min, min·eta, …` up to and including `max`.
fn rungs(space: &TuningConfig) -> Vec<usize> {
    let mut out = vec![space.min_iterations.max(1)];
    while *out.last().expect("non-empty") < space.max_iterations {
        let next = (out.last().expect("non-empty") * space.eta.max(2)).min(space.max_iterations);
        out.push(next);
    }
    out
}

/// Runs the search, then the final fits; writes `trials.jsonl` and `tuning.json` under
/// `job.out`.
pub fn tune(table: &TrainingTable, config: &Config, job: &TuneJob) -> Result<TuningResult> {
    let space = &config.offline.tuning;
    let base = &config.offline.als;
    // Validation and test are strong generalization whatever protocol `offline evaluate` is
    // configured with: the search folds members in, and its metrics are that protocol's.
    let evaluation = &EvaluationConfig {
        protocol: Protocol::StrongGeneralization,
        ..config.offline.evaluation.clone()
    };
    if !space.metric_is_known() {
        return Err(OfflineError::Usage(format!(
            "offline.tuning.metric {:?} is not one of recall@20, recall@50, ndcg@100",
            space.metric
        )));
    }
    std::fs::create_dir_all(&job.out).map_err(|e| SharedError::io(&job.out, e))?;
    let trials_path = job.out.join("trials.jsonl");
    let mut trials_file =
        std::fs::File::create(&trials_path).map_err(|e| SharedError::io(&trials_path, e))?;

    // The test members, exactly as `offline evaluate` holds them out; then the validation
    // members among the rest.
    let test = evaluate::test_members(table, evaluation)?;
    let training_side: Vec<u32> = (0..table.user_ids.len() as u32)
        .filter(|&u| !test.held[u as usize])
        .collect();
    let validation = evaluate::hold_out(
        table,
        &training_side,
        space.validation_fraction,
        evaluation.min_positives,
        job.seed,
    )?;
    let matrix = table.matrix(|p| !test.held[p.user as usize] && !validation.held[p.user as usize]);
    let members_with_rows = (0..matrix.rows)
        .filter(|&u| !matrix.row(u).0.is_empty())
        .count();
    let mean_observed = matrix.nnz() as f64 / members_with_rows.max(1) as f64;
    let popularity = evaluate::popularity_scores(&matrix.indices, table.item_ids.len());
    let data = TrainingData::new(&matrix, base.threads)?;

    let mut rng = StdRng::seed_from_u64(job.seed);
    let rungs = rungs(space);
    let n = job.trials.max(1);
    let bracket_steps: usize = {
        let (mut alive, mut steps, mut previous) = (n, 0, 0);
        for &r in &rungs {
            steps += alive * (r - previous);
            previous = r;
            alive = alive.div_ceil(space.eta.max(2));
        }
        steps
    };
    let started = Instant::now();
    // Without a budget, one bracket; with one, brackets of fresh draws until it is spent (the
    // bar then shows the first bracket's length and restarts).
    let mut progress = Progress::new("tuning", bracket_steps as u64);
    let mut records: Vec<TrialRecord> = Vec::new();
    let mut settings: Vec<Setting> = Vec::new();
    let mut best: Option<TrialRecord> = None;
    let mut budget_exhausted = false;
    let rechecking = space.recheck_top > 1 && space.recheck_splits > 0;
    let share = if rechecking { SEARCH_SHARE } else { 1.0 };
    // What one split of the re-check would cost now, at the search's own pace: the iterations
    // of the settings it would re-check. The search leaves at least that much of the budget
    // (the re-check always runs its first split).
    let mut training = (Duration::ZERO, 0usize);
    let most_iterations = space.recheck_top * rungs.last().copied().unwrap_or(1);
    let spent = |started: &Instant, training: (Duration, usize), records: &[TrialRecord]| {
        job.budget.is_some_and(|b| {
            let elapsed = started.elapsed();
            if elapsed + b.mul_f64(1.0 - share) >= b {
                return true;
            }
            if !rechecking {
                return false;
            }
            let per_iteration = training.0.as_secs_f64() / training.1.max(1) as f64;
            // The exact estimate sorts the records: only worth it once even the largest
            // possible split would not fit.
            let at_most = Duration::from_secs_f64(per_iteration * most_iterations as f64);
            if elapsed + at_most < b {
                return false;
            }
            let one_split = per_iteration * recheck_iterations(records, space.recheck_top) as f64;
            elapsed + Duration::from_secs_f64(one_split) >= b
        })
    };
    // The history families first, each to its share of the search budget; iALS then has the
    // rest (its `spent` looks at the whole budget).
    let families = &space.families;
    let searches_ials = families.contains(&Family::Ials);
    let history: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| *f != Family::Ials)
        .collect();
    let threads = FamilyParams::Ials(base.clone()).threads(base.threads);
    let mut family_trials: Vec<FamilyTrial> = Vec::new();
    let mut families_cut: Vec<Family> = Vec::new();
    let mut families_skipped: Vec<SkippedFamily> = Vec::new();
    {
        let on_validation = family_search::Validation {
            matrix: &matrix,
            held: &validation,
            popularity: &popularity,
            metric: &space.metric,
            seed: job.seed,
            threads,
            started,
        };
        for (i, family) in history.iter().enumerate() {
            let deadline = job
                .budget
                .map(|b| started + b.mul_f64(share * (i + 1) as f64 / families.len() as f64));
            let searched = family_search::search(
                *family,
                &on_validation,
                &config.offline,
                n,
                deadline,
                &mut rng,
                |trial| {
                    let line = serde_json::to_string(trial).expect("serialisable");
                    writeln!(trials_file, "{line}")
                        .map_err(|e| SharedError::io(&trials_path, e))?;
                    tracing::info!(target: "recsys::tuning", "{line}");
                    Ok(())
                },
            );
            // A family that cannot train on this data (EASE on a catalog too large for memory)
            // is left out of the choice, not the end of the search.
            let (trials, cut) = match searched {
                Ok(searched) => searched,
                Err(crate::OfflineError::Shared(SharedError::Training(problem))) => {
                    tracing::warn!(family = family.name(), %problem, "family left out of the search");
                    families_skipped.push(SkippedFamily {
                        family: *family,
                        problem,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            if cut {
                families_cut.push(*family);
            }
            family_trials.extend(trials);
        }
    }
    if !searches_ials && family_trials.is_empty() {
        return Err(OfflineError::Usage(format!(
            "no family of offline.tuning.families could train on this data: {}",
            families_skipped
                .iter()
                .map(|s| format!("{}: {}", s.family.name(), s.problem))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    'brackets: for bracket in 0.. {
        if !searches_ials {
            break;
        }
        let first = settings.len();
        settings.extend(draw_settings(
            space,
            n,
            &mut rng,
            mean_observed,
            matrix.cols,
        ));
        let mut alive: Vec<(usize, Trainer)> = Vec::new();
        for (id, setting) in settings.iter().enumerate().skip(first) {
            alive.push((id, Trainer::with_data(&data, &setting.apply(base))?));
        }
        for (rung, &iterations) in rungs.iter().enumerate() {
            let mut scored: Vec<(f64, usize, Trainer)> = Vec::new();
            let in_rung = alive.len();
            for (id, mut trainer) in alive.drain(..) {
                let more = iterations - trainer.iterations_done();
                let fit = Instant::now();
                trainer.run(more, |_| {});
                training = (training.0 + fit.elapsed(), training.1 + more);
                progress.advance(more as u64, &best_message(best.as_ref(), &space.metric));
                let setting = Setting {
                    iterations,
                    ..settings[id]
                };
                let scores = validation_scores(
                    &validation,
                    &trainer,
                    &setting.apply(base),
                    &popularity,
                    job.seed,
                )?;
                let score = scores.metrics[&space.metric];
                let record = TrialRecord {
                    trial: id,
                    bracket,
                    rung,
                    setting,
                    score,
                    validation: scores.metrics.clone(),
                    elapsed_seconds: started.elapsed().as_secs_f64(),
                };
                let line = serde_json::to_string(&record).expect("serialisable");
                writeln!(trials_file, "{line}").map_err(|e| SharedError::io(&trials_path, e))?;
                tracing::info!(target: "recsys::tuning", "{line}");
                if best.as_ref().is_none_or(|b| better(&record, b)) {
                    best = Some(record.clone());
                }
                records.push(record);
                scored.push((score, id, trainer));
                // The budget is looked at after every trial, not only between rungs: a rung
                // of many settings would otherwise overrun it by its whole length.
                if spent(&started, training, &records) {
                    break;
                }
            }
            let last_rung = rung + 1 == rungs.len();
            if spent(&started, training, &records) {
                budget_exhausted = !last_rung || scored.len() < in_rung;
                tracing::info!(
                    elapsed_s = started.elapsed().as_secs(),
                    "the tuning budget is spent; stopping after bracket {bracket}, rung {rung}"
                );
                break 'brackets;
            }
            if last_rung {
                break;
            }
            // Best first; ties to the lower trial id so the order does not depend on timing.
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let keep = scored.len().div_ceil(space.eta.max(2));
            alive = scored
                .into_iter()
                .take(keep)
                .map(|(_, id, t)| (id, t))
                .collect();
        }
        if job.budget.is_none() {
            break;
        }
        progress.finish();
        progress = Progress::new("tuning", bracket_steps as u64);
    }
    progress.finish();
    // Without iALS in the search, `best` stands for the configured iALS (never chosen).
    let mut best = best.unwrap_or_else(|| TrialRecord {
        trial: 0,
        bracket: 0,
        rung: 0,
        setting: Setting {
            factors: base.factors,
            objective: base.objective(),
            iterations: base.iterations,
        },
        score: f64::NEG_INFINITY,
        validation: BTreeMap::new(),
        elapsed_seconds: 0.0,
    });
    drop(data);
    let recheck = if rechecking && searches_ials {
        let deadline = job.budget.map(|b| started + b);
        let checked = recheck_best(
            table,
            config,
            job,
            &test.held,
            &training_side,
            &records,
            deadline,
        )?;
        // The best mean wins; ties go to the better search score (the earlier entry).
        let winner = checked
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.mean_score.total_cmp(&b.mean_score).then(j.cmp(i)))
            .map(|(_, r)| (r.trial, r.rung));
        if let Some((trial, rung)) = winner {
            best = records
                .iter()
                .find(|r| (r.trial, r.rung) == (trial, rung))
                .expect("a re-checked record")
                .clone();
        }
        checked
    } else {
        Vec::new()
    };
    // The whole choice: the search and the re-check.
    let search_seconds = started.elapsed().as_secs_f64();

    // The choice across families: the best validation score on the search's split.
    let mut family_best: BTreeMap<String, f64> = BTreeMap::new();
    if searches_ials {
        family_best.insert(Family::Ials.name().into(), best.score);
    }
    for trial in &family_trials {
        let entry = family_best
            .entry(trial.params.family().name().into())
            .or_insert(f64::NEG_INFINITY);
        *entry = entry.max(trial.score);
    }
    let best_history = family_trials
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score).then(b.trial.cmp(&a.trial)));
    let chosen_history = best_history
        .filter(|h| !searches_ials || h.score > best.score)
        .map(|h| h.params);

    // iALS chosen: its iterations again, to convergence on the validation split.
    let (final_iterations, convergence) = match chosen_history {
        None if space.convergence_patience > 0 => {
            let (iterations, curve) = converge(
                &matrix,
                &best.setting.apply(base),
                &validation,
                &popularity,
                space,
                job.seed,
            )?;
            (Some(iterations), curve)
        }
        _ => (None, Vec::new()),
    };

    // The final fits on the whole training side, scored on the test members.
    let chosen = match chosen_history {
        Some(history) => history.family_params(),
        None => {
            let mut params = best.setting.apply(base);
            if let Some(iterations) = final_iterations {
                params.iterations = iterations;
            }
            FamilyParams::Ials(params)
        }
    };
    eprintln!(
        "tuning: {} chosen ({} {:.4} on {} validation members; {}) after {search_seconds:.0} s{}",
        chosen.family().name(),
        space.metric,
        family_best[chosen.family().name()],
        validation.members.len(),
        family_best
            .iter()
            .map(|(f, s)| format!("{f} {s:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        if job.final_fits {
            "; final fit on the training side..."
        } else {
            ""
        },
    );
    let (test_eval, test_defaults, defaults_family) = if job.final_fits {
        let (test, _) = evaluate::evaluate_family(table, &chosen, evaluation, |_| {})?;
        // Only for comparison: defaults that cannot train cost the comparison, not the search.
        let defaults = FamilyParams::from_config(&config.offline, table.item_ids.len());
        let family = defaults.family();
        let defaults = match evaluate::evaluate_family(table, &defaults, evaluation, |_| {}) {
            Ok((defaults, _)) => Some(defaults),
            Err(e) => {
                tracing::warn!(family = family.name(), error = %e,
                    "the configured family could not be fitted for comparison");
                None
            }
        };
        (Some(test), defaults, Some(family))
    } else {
        (None, None, None)
    };
    let result = TuningResult {
        metric: space.metric.clone(),
        seed: job.seed,
        space: space.clone(),
        best: best.setting,
        best_trial: best.trial,
        validation: best.validation.clone(),
        validation_members: validation.members.len() as u64,
        trials: records,
        recheck,
        budget_exhausted,
        search_seconds,
        test: test_eval,
        test_defaults,
        defaults_family,
        family: chosen.family(),
        chosen: chosen_history,
        family_trials,
        family_best,
        families_cut,
        families_skipped,
        final_iterations,
        convergence,
    };
    let path = job.out.join("tuning.json");
    let tmp = job.out.join("tuning.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&result).expect("serialisable"),
    )
    .map_err(|e| SharedError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| SharedError::io(&path, e))?;
    Ok(result)
}

/// The figures of `trainer`'s item factors on the `validation` members, folded in with `params`.
fn validation_scores(
    validation: &evaluate::HeldOut,
    trainer: &Trainer,
    params: &AlsParams,
    popularity: &[f32],
    seed: u64,
) -> Result<Evaluation> {
    evaluate::score_held_out(
        validation,
        trainer.item_factors(),
        params.factors,
        &params.objective(),
        popularity,
        seed,
    )
}

/// The iterations `params` should train: trained on the search's matrix and scored on the
/// validation members after each iteration, stopped once `convergence_patience` in a row bring
/// no improvement (at most `4 × max_iterations`); the best iteration count and the curve.
fn converge(
    matrix: &recsys_shared::model::matrix::SparseMatrix,
    params: &AlsParams,
    validation: &evaluate::HeldOut,
    popularity: &[f32],
    space: &TuningConfig,
    seed: u64,
) -> Result<(usize, Vec<[f64; 2]>)> {
    let data = TrainingData::new(matrix, params.threads)?;
    let mut trainer = Trainer::with_data(&data, params)?;
    let most = (4 * space.max_iterations).max(params.iterations);
    let mut progress = Progress::new("converging", most as u64);
    let (mut best, mut best_score, mut curve) = (1, f64::NEG_INFINITY, Vec::new());
    for iterations in 1..=most {
        trainer.run(1, |_| {});
        let score = validation_scores(validation, &trainer, params, popularity, seed)?.metrics
            [&space.metric];
        curve.push([iterations as f64, score]);
        if score > best_score {
            (best, best_score) = (iterations, score);
        }
        progress.advance(
            1,
            &format!("best {best} iterations, {} {best_score:.4}", space.metric),
        );
        if iterations - best >= space.convergence_patience {
            break;
        }
    }
    progress.finish();
    Ok((best, curve))
}

/// The training iterations of the settings a re-check would take from `records` now: the best
/// `top` distinct scored settings.
fn recheck_iterations(records: &[TrialRecord], top: usize) -> usize {
    let mut ranked: Vec<&TrialRecord> = records.iter().collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut taken: Vec<&Setting> = Vec::new();
    for record in ranked {
        if taken.len() == top {
            break;
        }
        if !taken.contains(&&record.setting) {
            taken.push(&record.setting);
        }
    }
    taken.iter().map(|s| s.iterations).sum()
}

/// Trains the best `recheck_top` scored settings again on `recheck_splits` fresh validation splits
/// of the training side (never the test members) and scores each on its split.
fn recheck_best(
    table: &TrainingTable,
    config: &Config,
    job: &TuneJob,
    test_held: &[bool],
    training_side: &[u32],
    records: &[TrialRecord],
    deadline: Option<Instant>,
) -> Result<Vec<Recheck>> {
    let space = &config.offline.tuning;
    let base = &config.offline.als;
    let mut ranked: Vec<&TrialRecord> = records.iter().collect();
    // Best first, in the order of `better`.
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then((a.trial, a.rung).cmp(&(b.trial, b.rung)))
    });
    let mut candidates: Vec<&TrialRecord> = Vec::new();
    for record in ranked {
        if candidates.len() == space.recheck_top {
            break;
        }
        if !candidates.iter().any(|c| c.setting == record.setting) {
            candidates.push(record);
        }
    }
    let mut checked: Vec<Recheck> = candidates
        .iter()
        .map(|c| Recheck {
            trial: c.trial,
            rung: c.rung,
            setting: c.setting,
            search_score: c.score,
            split_scores: Vec::new(),
            mean_score: 0.0,
        })
        .collect();
    let steps: usize = candidates.iter().map(|c| c.setting.iterations).sum();
    let mut progress = Progress::new("re-checking", (steps * space.recheck_splits) as u64);
    for split in 0..space.recheck_splits {
        // Every candidate is scored on the same splits; with the budget spent no new split is
        // started (the first always runs).
        if split > 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::info!(
                splits = split,
                "the tuning budget is spent; the re-check compares the splits done"
            );
            break;
        }
        // Seeds apart from the search's (`job.seed`) and from each other.
        let seed = job
            .seed
            .wrapping_add(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(split as u64 + 1));
        let validation = evaluate::hold_out(
            table,
            training_side,
            space.validation_fraction,
            config.offline.evaluation.min_positives,
            seed,
        )?;
        let matrix =
            table.matrix(|p| !test_held[p.user as usize] && !validation.held[p.user as usize]);
        let popularity = evaluate::popularity_scores(&matrix.indices, table.item_ids.len());
        let data = TrainingData::new(&matrix, base.threads)?;
        for check in &mut checked {
            let params = check.setting.apply(base);
            let mut trainer = Trainer::with_data(&data, &params)?;
            trainer.run(check.setting.iterations, |_| {});
            progress.advance(
                check.setting.iterations as u64,
                &format!("split {}/{}", split + 1, space.recheck_splits),
            );
            let scores = validation_scores(&validation, &trainer, &params, &popularity, seed)?;
            check.split_scores.push(scores.metrics[&space.metric]);
        }
    }
    progress.finish();
    for check in &mut checked {
        check.mean_score =
            check.split_scores.iter().sum::<f64>() / check.split_scores.len().max(1) as f64;
        tracing::info!(target: "recsys::tuning", trial = check.trial, rung = check.rung,
            search_score = check.search_score, mean_score = check.mean_score, "re-checked");
    }
    Ok(checked)
}

/// Builds the training table from the interaction log with `[offline.features]`, then
/// [`tune`]s on it.
pub fn tune_log(interactions: &Path, config: &Config, job: &TuneJob) -> Result<TuningResult> {
    let features = crate::train::training_features(interactions, config)?;
    tune(&features.training, config, job)
}

/// Higher score wins; ties go to the earlier trial, then the earlier rung.
fn better(a: &TrialRecord, b: &TrialRecord) -> bool {
    a.score > b.score || (a.score == b.score && (a.trial, a.rung) < (b.trial, b.rung))
}

fn best_message(best: Option<&TrialRecord>, metric: &str) -> String {
    match best {
        Some(b) => format!(
            "best {metric} {:.4} (trial {}, {} factors, {} it)",
            b.score, b.trial, b.setting.factors, b.setting.iterations
        ),
        None => "first rung".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::tests::clustered_table;
    use crate::family_search::HistoryParams;

    #[test]
    fn a_setting_keeps_its_json_and_applies_its_objective() {
        let written = serde_json::json!({
            "factors": 32, "regularization": 0.25, "regularization_exp": 1.0,
            "unobserved_weight": 0.125, "alpha": 3.0, "iterations": 8
        });
        let setting: Setting = serde_json::from_value(written.clone()).unwrap();
        assert_eq!(serde_json::to_value(setting).unwrap(), written);
        let applied = setting.apply(&AlsParams::default());
        assert_eq!(applied.objective(), setting.objective);
        assert_eq!((applied.factors, applied.iterations), (32, 8));
        assert_eq!(
            applied.cg_steps,
            AlsParams::default().cg_steps,
            "the rest kept"
        );
    }

    fn small_config() -> Config {
        let mut config = Config::default();
        config.offline.als.threads = 2;
        config.offline.als.compute_loss = false;
        config.offline.tuning = TuningConfig {
            trials: 6,
            min_iterations: 1,
            max_iterations: 4,
            eta: 2,
            factors: vec![4, 8],
            recheck_top: 3,
            recheck_splits: 2,
            // iALS's own schedule is what most of these tests look at.
            families: vec![Family::Ials],
            ..Default::default()
        };
        config
    }

    #[test]
    fn every_family_is_searched_and_the_best_validation_score_is_chosen() {
        let table = clustered_table();
        let mut config = small_config();
        config.offline.tuning.families = Family::ALL.to_vec();
        config.offline.tuning.trials = 3;
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &config, &job(dir.path())).unwrap();
        let settings = result.family_settings();
        assert_eq!(settings["ease"], 6, "{settings:?}");
        assert_eq!(settings["item_knn"], 6, "{settings:?}");
        assert_eq!(settings["bspm"], 6, "{settings:?}");
        assert!(settings["ials"] >= 1, "{settings:?}");
        // The first trial of a history family is its configured section.
        let first_ease = result
            .family_trials
            .iter()
            .find(|t| t.params.family() == Family::Ease)
            .unwrap();
        assert_eq!(first_ease.params, HistoryParams::Ease(config.offline.ease));
        // The chosen family has the best validation score of all.
        let top = result
            .family_best
            .values()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        assert_eq!(result.family_best[result.family.name()], top, "{result:?}");
        let mut offline = config.offline.clone();
        result.apply(&mut offline);
        assert_eq!(offline.family, result.family.into());
        match result.chosen {
            Some(history) => {
                assert_eq!(history.family(), result.family);
                let best = result
                    .family_trials
                    .iter()
                    .filter(|t| t.params.family() == result.family)
                    .map(|t| t.score)
                    .fold(f64::NEG_INFINITY, f64::max);
                assert_eq!(
                    result
                        .family_trials
                        .iter()
                        .find(|t| t.params == history)
                        .unwrap()
                        .score,
                    best
                );
            }
            None => assert_eq!(result.family, Family::Ials),
        }
        // Every trial of every family is a line of trials.jsonl.
        let lines = std::fs::read_to_string(dir.path().join("trials.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, result.trials.len() + result.family_trials.len());
        // And a tuning.json written before families existed still reads, as iALS.
        let mut old = serde_json::to_value(&result).unwrap();
        for field in ["family", "chosen", "family_trials", "family_best"] {
            old.as_object_mut().unwrap().remove(field);
        }
        let old: TuningResult = serde_json::from_value(old).unwrap();
        assert_eq!(old.family, Family::Ials);
    }

    #[test]
    fn a_history_family_alone_is_chosen_and_trains_with_its_setting() {
        let table = clustered_table();
        let mut config = small_config();
        config.offline.tuning.families = vec![Family::ItemKnn];
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &config, &job(dir.path())).unwrap();
        assert!(result.trials.is_empty(), "iALS was not searched");
        assert_eq!(result.family, Family::ItemKnn);
        let Some(HistoryParams::ItemKnn(chosen)) = result.chosen else {
            panic!("{:?}", result.chosen);
        };
        let mut offline = config.offline.clone();
        result.apply(&mut offline);
        assert_eq!(offline.item_knn, chosen);
        assert_eq!(result.final_iterations, None);
    }

    /// The fault: with a budget that reached only the first rung, `train --params-from` fitted
    /// the rung's 2 iterations. The chosen iALS setting now trains to convergence on the
    /// validation split.
    #[test]
    fn the_chosen_ials_setting_trains_to_convergence() {
        let table = clustered_table();
        let mut config = small_config();
        config.offline.tuning.max_iterations = 1;
        config.offline.tuning.convergence_patience = 2;
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &config, &job(dir.path())).unwrap();
        assert_eq!(result.best.iterations, 1, "the search's only rung");
        let chosen = result.final_iterations.expect("converged");
        let curve = &result.convergence;
        let (best_at, best_score) = curve.iter().fold((0.0, f64::NEG_INFINITY), |(i, s), p| {
            if p[1] > s {
                (p[0], p[1])
            } else {
                (i, s)
            }
        });
        assert_eq!(chosen as f64, best_at, "{curve:?}");
        assert!(best_score.is_finite());
        // Stopped `patience` iterations after the best, or at the cap of 4 × max_iterations.
        let last = curve.last().unwrap()[0] as usize;
        assert!(last - chosen == 2 || last == 4, "{curve:?}");
        let mut offline = config.offline.clone();
        result.apply(&mut offline);
        assert_eq!(offline.als.iterations, chosen);
        assert_eq!(offline.family, Family::Ials.into());
    }

    #[test]
    fn a_family_that_cannot_train_is_left_out_of_the_choice() {
        let table = clustered_table();
        let mut config = small_config();
        config.offline.tuning.families = vec![Family::Ials, Family::Ease];
        config.offline.ease.lambda = -1.0;
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &config, &job(dir.path())).unwrap();
        assert_eq!(result.family, Family::Ials);
        // The configured family (auto: EASE on this catalog) cannot train either: the search's
        // choice is still scored, the comparison with the defaults left out.
        assert!(result.test.is_some());
        assert!(result.test_defaults.is_none());
        assert_eq!(result.defaults_family, Some(Family::Ease));
        assert_eq!(result.families_skipped.len(), 1);
        assert_eq!(result.families_skipped[0].family, Family::Ease);
        assert!(
            result.families_skipped[0].problem.contains("lambda"),
            "{:?}",
            result.families_skipped
        );
        // With no family left, the search says why instead of choosing nothing.
        config.offline.tuning.families = vec![Family::Ease];
        let error = tune(&table, &config, &job(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("ease: EASE's lambda"), "{error}");
    }

    #[test]
    fn a_budget_too_small_for_a_family_says_so() {
        let table = clustered_table();
        let mut config = small_config();
        config.offline.tuning.families = vec![Family::Ials, Family::Ease];
        let dir = tempfile::tempdir().unwrap();
        let job = TuneJob {
            budget: Some(Duration::ZERO),
            ..job(dir.path())
        };
        let result = tune(&table, &config, &job).unwrap();
        // One EASE trial always runs; the next would not fit.
        assert_eq!(result.family_settings()["ease"], 1);
        assert_eq!(result.families_cut, vec![Family::Ease]);
        let warning = result.budget_warning().expect("a warning");
        assert!(warning.contains("ease scored 1 of 6 settings"), "{warning}");
        assert!(warning.contains("iALS reached rung 1 of"), "{warning}");
    }

    /// Without a re-check, the chosen setting's validation figure is the best any scored trial
    /// reached; with one, the re-checked settings are the best-scored distinct settings and the
    /// chosen one has the best mean over the fresh splits.
    fn assert_chose_the_top_score(result: &TuningResult) {
        let mut scores: Vec<f64> = result.trials.iter().map(|t| t.score).collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        if result.recheck.is_empty() {
            assert_eq!(result.validation[&result.metric], scores[0]);
            return;
        }
        let space = &result.space;
        assert!(result.recheck.len() <= space.recheck_top);
        // Every re-checked setting on the same splits: all of them, or fewer when a budget ran out.
        let splits = result.recheck[0].split_scores.len();
        assert!((1..=space.recheck_splits).contains(&splits));
        for (check, score) in result.recheck.iter().zip(&scores) {
            assert!(check.search_score <= *score);
            assert_eq!(check.split_scores.len(), splits);
            let mean = check.split_scores.iter().sum::<f64>() / splits as f64;
            assert!((check.mean_score - mean).abs() < 1e-12);
        }
        assert_eq!(result.recheck[0].search_score, scores[0]);
        let top_mean = result
            .recheck
            .iter()
            .map(|c| c.mean_score)
            .fold(f64::MIN, f64::max);
        let chosen = result
            .recheck
            .iter()
            .find(|c| c.trial == result.best_trial && c.setting == result.best)
            .expect("the chosen setting was re-checked");
        assert_eq!(chosen.mean_score, top_mean);
        assert_eq!(result.validation[&result.metric], chosen.search_score);
    }

    fn job(dir: &Path) -> TuneJob {
        TuneJob {
            trials: 6,
            budget: None,
            seed: 3,
            out: dir.to_path_buf(),
            final_fits: true,
        }
    }

    #[test]
    fn successive_halving_scores_the_schedule_and_keeps_the_best() {
        let table = clustered_table();
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &small_config(), &job(dir.path())).unwrap();
        // Rungs of 1, 2, 4 iterations with 6, 3, 2 settings.
        let per_rung: Vec<usize> = (0..3)
            .map(|r| result.trials.iter().filter(|t| t.rung == r).count())
            .collect();
        assert_eq!(per_rung, vec![6, 3, 2]);
        // The survivors of each rung are the best of the one before.
        for rung in 1..3 {
            let before: Vec<&TrialRecord> = result
                .trials
                .iter()
                .filter(|t| t.rung == rung - 1)
                .collect();
            let survivors: Vec<usize> = result
                .trials
                .iter()
                .filter(|t| t.rung == rung)
                .map(|t| t.trial)
                .collect();
            let worst_kept = before
                .iter()
                .filter(|t| survivors.contains(&t.trial))
                .map(|t| t.score)
                .fold(f64::MAX, f64::min);
            let best_dropped = before
                .iter()
                .filter(|t| !survivors.contains(&t.trial))
                .map(|t| t.score)
                .fold(f64::MIN, f64::max);
            assert!(worst_kept >= best_dropped, "rung {rung}");
        }
        assert_chose_the_top_score(&result);
        // Without a budget every re-checked setting is scored on every split.
        assert!(result
            .recheck
            .iter()
            .all(|c| c.split_scores.len() == result.space.recheck_splits));
        assert!(result.validation_members > 0);
        // Every scored rung is a line of trials.jsonl, and tuning.json reads back.
        let lines = std::fs::read_to_string(dir.path().join("trials.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), result.trials.len());
        let read = TuningResult::read(dir.path()).unwrap();
        assert_eq!(
            (read.best, read.best_trial, read.trials.len()),
            (result.best, result.best_trial, result.trials.len())
        );
        // The same seed reproduces the search.
        let again = tune(&table, &small_config(), &job(dir.path())).unwrap();
        assert_eq!(
            again
                .trials
                .iter()
                .map(|t| (t.trial, t.score))
                .collect::<Vec<_>>(),
            result
                .trials
                .iter()
                .map(|t| (t.trial, t.score))
                .collect::<Vec<_>>()
        );
        assert_eq!(again.best, result.best);
    }

    #[test]
    fn the_search_never_reads_the_test_members() {
        let table = clustered_table();
        let config = small_config();
        let test = evaluate::test_members(&table, &config.offline.evaluation).unwrap();
        // Give every test member different items (same counts): the trials must not change.
        let mut changed = table.clone();
        let n = changed.item_ids.len() as u32;
        for p in changed
            .pairs
            .iter_mut()
            .filter(|p| test.held[p.user as usize])
        {
            p.item = (p.item + 1) % n;
        }
        changed.pairs.sort_by_key(|p| (p.user, p.item));
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let original = tune(&table, &config, &job(a.path())).unwrap();
        let altered = tune(&changed, &config, &job(b.path())).unwrap();
        let without_time = |r: &TuningResult| -> Vec<TrialRecord> {
            r.trials
                .iter()
                .map(|t| TrialRecord {
                    elapsed_seconds: 0.0,
                    ..t.clone()
                })
                .collect()
        };
        assert_eq!(without_time(&original), without_time(&altered));
        // Nor the re-check, which holds out other training members.
        assert!(!original.recheck.is_empty());
        assert_eq!(original.recheck, altered.recheck);
        // ... while the test figures of the final fit do.
        assert_ne!(
            original.test.unwrap().metrics,
            altered.test.unwrap().metrics
        );
    }

    #[test]
    fn the_search_scores_strong_generalization_whatever_evaluate_is_set_to() {
        // With leave-last-out configured, the final fits were scored by that protocol, whose
        // metrics lack the search's ndcg@100.
        let table = clustered_table();
        let mut config = small_config();
        config.offline.evaluation.protocol = Protocol::LeaveLastOut;
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &config, &job(dir.path())).unwrap();
        for e in [&result.test, &result.test_defaults] {
            let e = e.as_ref().expect("final fits scored");
            assert_eq!(e.protocol, "strong-generalization");
            assert!(e.metrics.contains_key(&result.metric));
        }
    }

    #[test]
    fn without_a_recheck_the_top_search_score_is_chosen() {
        let table = clustered_table();
        let mut config = small_config();
        config.offline.tuning.recheck_top = 0;
        let dir = tempfile::tempdir().unwrap();
        let result = tune(&table, &config, &job(dir.path())).unwrap();
        assert!(result.recheck.is_empty());
        assert_chose_the_top_score(&result);
    }

    /// The fault: `tune --budget 60s` searched for 68 s (the budget was looked at only between
    /// rungs, and a rung of many settings ran to its end), and printed its scored rungs as
    /// "trials" while the report counted settings.
    #[test]
    fn a_spent_budget_stops_after_the_trial_in_hand() {
        let table = clustered_table();
        let dir = tempfile::tempdir().unwrap();
        let job = TuneJob {
            budget: Some(Duration::ZERO),
            ..job(dir.path())
        };
        let result = tune(&table, &small_config(), &job).unwrap();
        assert!(result.budget_exhausted);
        assert_eq!(result.trials.len(), 1, "one scored rung of one setting");
        assert_eq!(result.settings_tried(), 1);
        // The re-check, too, starts no split past the budget (the first always runs).
        assert!(!result.recheck.is_empty());
        assert!(result.recheck.iter().all(|c| c.split_scores.len() == 1));
        let unbudgeted = tune(&table, &small_config(), &self::job(dir.path())).unwrap();
        assert_eq!(unbudgeted.settings_tried(), 6, "a trial is a setting");
        assert!(unbudgeted.trials.len() > 6, "scored at several rungs");
    }

    #[test]
    fn a_budget_runs_further_brackets_after_the_first() {
        let table = clustered_table();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let started = std::time::Instant::now();
        let one = tune(&table, &small_config(), &job(a.path())).unwrap();
        // Room for several brackets however busy the machine is: three times what the whole
        // unbudgeted search (one bracket and its re-check) took here, and at least 3 s.
        let budget = (started.elapsed() * 3).max(Duration::from_secs(3));
        let budgeted = tune(
            &table,
            &small_config(),
            &TuneJob {
                budget: Some(budget),
                ..job(b.path())
            },
        )
        .unwrap();
        let brackets = budgeted.trials.iter().map(|t| t.bracket).max().unwrap();
        assert!(brackets >= 1, "one bracket only in {budget:?}");
        // The first bracket is the unbudgeted search; later ones draw new settings.
        let key = |t: &TrialRecord| (t.trial, t.rung, t.setting, t.score);
        let first: Vec<_> = budgeted
            .trials
            .iter()
            .filter(|t| t.bracket == 0)
            .map(key)
            .collect();
        assert_eq!(first, one.trials.iter().map(key).collect::<Vec<_>>());
        let second = budgeted.trials.iter().find(|t| t.bracket == 1).unwrap();
        assert!(one.trials.iter().all(|t| t.setting != second.setting));
        assert_chose_the_top_score(&budgeted);
        // A whole bracket ran: the budget was not too small, whatever bracket it cut.
        assert_eq!(budgeted.budget_warning(), None);
    }

    #[test]
    fn durations_parse_and_nonsense_is_refused() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "m", "10x", "5m3", "0m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rungs_grow_by_eta_up_to_the_maximum() {
        let space = TuningConfig {
            min_iterations: 2,
            max_iterations: 16,
            eta: 2,
            ..Default::default()
        };
        assert_eq!(rungs(&space), vec![2, 4, 8, 16]);
        let space = TuningConfig {
            min_iterations: 3,
            max_iterations: 20,
            eta: 3,
            ..Default::default()
        };
        assert_eq!(rungs(&space), vec![3, 9, 20]);
    }

    #[test]
    fn drawn_settings_stay_in_the_space_and_repeat_for_a_seed() {
        let space = TuningConfig::default();
        let draw = |seed| draw_settings(&space, 50, &mut StdRng::seed_from_u64(seed), 40.0, 1000);
        let settings = draw(3);
        assert_eq!(settings, draw(3));
        assert_ne!(settings, draw(4));
        for s in &settings {
            assert!(space.factors.contains(&s.factors));
            let [lo, hi] = space.unobserved_weight;
            assert!(
                (lo as f32..=hi as f32).contains(&s.objective.unobserved_weight),
                "{s:?}"
            );
            let [lo, hi] = space.regularization_exp;
            assert!(
                (lo as f32..=hi as f32).contains(&s.objective.regularization_exp),
                "{s:?}"
            );
            // The effective regularisation of a mean row is in its range.
            let mass = 40.0 + f64::from(s.objective.unobserved_weight) * 1000.0;
            let effective = f64::from(s.objective.regularization)
                * mass.powf(f64::from(s.objective.regularization_exp));
            let [lo, hi] = space.effective_regularization;
            assert!(effective >= lo * 0.999 && effective <= hi * 1.001, "{s:?}");
        }
    }
}
