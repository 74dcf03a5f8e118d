//! The offline side of the model seam: a family with its parameters ([`FamilyParams`], from
//! `[offline]`), and fitting it on a member × item matrix with a progress display ([`fit`]) into
//! what the evaluators score with ([`Fitted`]). The numerics are the family's own, under
//! `recsys_shared::model`.

use std::sync::Mutex;

use recsys_shared::artifact::published::TrainedModel;
use recsys_shared::artifact::{IalsRecord, ModelParams};
use recsys_shared::config::OfflineConfig;
use recsys_shared::model::bspm::{self, BspmParams};
use recsys_shared::model::ease::{self, EaseParams, Phase};
use recsys_shared::model::ials::train::{self as als, AlsParams, IterationReport};
use recsys_shared::model::ials::ItemMatrix;
use recsys_shared::model::item_knn::{self, KnnParams};
use recsys_shared::model::matrix::SparseMatrix;
use recsys_shared::model::{Family, Scorer};
use recsys_shared::progress::Progress;

use crate::{OfflineError, Result};

/// A family and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum FamilyParams {
    Ials(AlsParams),
    Ease(EaseParams),
    ItemKnn(KnnParams),
    Bspm(BspmParams),
}

impl FamilyParams {
    /// The configured family (`offline.family`) with its section's parameters, for a catalog of
    /// `items` items (what `auto` chooses by; it says what it chose and why in the log).
    pub fn from_config(config: &OfflineConfig, items: usize) -> Self {
        let (family, why) =
            config
                .family
                .resolve(items, config.auto_ease_max_items, ease::fits_in_memory);
        if let Some(why) = why {
            tracing::info!(family = family.name(), items, "{why}");
        }
        Self::of(family, config)
    }

    /// `family` with its section's parameters in `config`.
    fn of(family: Family, config: &OfflineConfig) -> Self {
        match family {
            Family::Ials => FamilyParams::Ials(config.als.clone()),
            Family::Ease => FamilyParams::Ease(config.ease),
            Family::ItemKnn => FamilyParams::ItemKnn(config.item_knn),
            Family::Bspm => FamilyParams::Bspm(config.bspm),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            FamilyParams::Ials(_) => Family::Ials,
            FamilyParams::Ease(_) => Family::Ease,
            FamilyParams::ItemKnn(_) => Family::ItemKnn,
            FamilyParams::Bspm(_) => Family::Bspm,
        }
    }

    /// The parameters as JSON, for results and reports.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            FamilyParams::Ials(p) => serde_json::json!({
                "factors": p.factors, "regularization": p.regularization, "alpha": p.alpha,
                "unobserved_weight": p.unobserved_weight, "regularization_exp": p.regularization_exp,
                "iterations": p.iterations, "cg_steps": p.cg_steps, "seed": p.seed,
            }),
            FamilyParams::Ease(p) => serde_json::json!({"lambda": p.lambda, "top_n": p.top_n}),
            FamilyParams::ItemKnn(p) => serde_json::json!({
                "neighbours": p.neighbours, "shrink": p.shrink, "alpha": p.alpha,
                "member_weighting": p.member_weighting,
            }),
            FamilyParams::Bspm(p) => serde_json::json!({
                "rank": p.rank, "low_pass_weight": p.low_pass_weight,
                "sharpen_time": p.sharpen_time, "top_n": p.top_n, "seed": p.seed,
            }),
        }
    }

    /// What a version records of these parameters: its `algorithm.name` and the family's own.
    pub fn record(&self) -> (&'static str, ModelParams) {
        match self {
            FamilyParams::Ials(p) => (
                "ials-cg",
                ModelParams::Ials(IalsRecord {
                    factors: p.factors,
                    objective: p.objective(),
                    iterations: p.iterations,
                    cg_steps: p.cg_steps,
                    seed: p.seed,
                }),
            ),
            FamilyParams::Ease(p) => ("ease", ModelParams::Ease(*p)),
            FamilyParams::ItemKnn(p) => ("item-knn", ModelParams::ItemKnn(*p)),
            FamilyParams::Bspm(p) => ("bspm", ModelParams::Bspm(*p)),
        }
    }

    /// The threads the configuration gives a job (`offline.als.threads`; 0: every core),
    /// whichever family it fits.
    pub fn config_threads(config: &OfflineConfig) -> usize {
        every_core_if_zero(config.als.threads)
    }

    /// Worker threads of the fit (`offline.als.threads` for every family; 0 = every core).
    pub fn threads(&self, config_threads: usize) -> usize {
        match self {
            FamilyParams::Ials(p) if p.threads > 0 => p.threads,
            _ => every_core_if_zero(config_threads),
        }
    }
}

fn every_core_if_zero(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A fitted model as the evaluators see it.
pub struct Fitted {
    pub scorer: Scorer,
    /// iALS: the trained members' vectors, row-major (what leave-last-out and a benchmark's own
    /// split rank training members with).
    pub member_vectors: Option<Vec<f32>>,
}

impl Fitted {
    /// A trained iALS model: its item factors score, its member vectors rank training members.
    pub fn from_ials(model: als::AlsModel) -> Self {
        Fitted {
            scorer: Scorer::Factors(ItemMatrix::new(model.item_factors, model.factors)),
            member_vectors: Some(model.user_factors),
        }
    }

    /// What a version publishes of the fit; row `u` of iALS's member vectors is `member_ids[u]`.
    pub fn into_trained(self, member_ids: Vec<String>) -> TrainedModel {
        match (self.scorer, self.member_vectors) {
            (Scorer::Factors(items), Some(user_factors)) => TrainedModel::Factors {
                model: als::AlsModel {
                    factors: items.factors(),
                    item_factors: items.as_slice().to_vec(),
                    user_factors,
                },
                member_ids,
            },
            (Scorer::Weights(weights), _) => TrainedModel::Weights(weights),
            (Scorer::Factors(_), None) => unreachable!("an iALS fit keeps its member vectors"),
        }
    }

    /// Member `u`'s trained vector (iALS).
    pub fn member_vector(&self, u: usize) -> Option<&[f32]> {
        let (Scorer::Factors(items), Some(vectors)) = (&self.scorer, &self.member_vectors) else {
            return None;
        };
        let k = items.factors();
        vectors.get(u * k..(u + 1) * k)
    }
}

/// A progress callback for training iterations.
pub fn iteration_display(
    what: &str,
    iterations: usize,
) -> (Progress, impl FnMut(&mut Progress, IterationReport)) {
    let progress = Progress::new(what, iterations as u64);
    let report = |progress: &mut Progress, r: IterationReport| {
        let message = match r.loss {
            Some(loss) => format!("loss {loss:.6}, {:.2}s", r.seconds),
            None => format!("{:.2}s", r.seconds),
        };
        progress.step(&message);
    };
    (progress, report)
}

/// Fits `params` on `matrix` (members × items) on `threads` threads, showing progress as `what`.
pub fn fit(
    matrix: &SparseMatrix,
    params: &FamilyParams,
    threads: usize,
    what: &str,
) -> Result<Fitted> {
    if let FamilyParams::Ials(p) = params {
        let (mut progress, mut report) = iteration_display(what, p.iterations);
        let model = als::train(matrix, p, |r| report(&mut progress, r))?;
        progress.finish();
        return Ok(Fitted::from_ials(model));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| OfflineError::Usage(format!("cannot start {threads} threads: {e}")))?;
    let weights = pool.install(|| match params {
        FamilyParams::Ease(p) => fit_ease(matrix, p, what),
        FamilyParams::ItemKnn(p) => {
            let mut progress = Progress::new(what, 1);
            let weights = item_knn::train(matrix, p)?;
            progress.step(&format!("{} neighbours kept", weights.nnz()));
            progress.finish();
            Ok(weights)
        }
        FamilyParams::Bspm(p) => fit_bspm(matrix, p, what),
        FamilyParams::Ials(_) => unreachable!("fitted above"),
    })?;
    Ok(Fitted {
        scorer: Scorer::Weights(weights),
        member_vectors: None,
    })
}

fn fit_ease(
    matrix: &SparseMatrix,
    params: &EaseParams,
    what: &str,
) -> Result<recsys_shared::model::item_weights::ItemWeights> {
    with_bar(what, |to| {
        ease::train(matrix, params, &|phase| match phase {
            Phase::Gram => to(0, "XᵀX"),
            Phase::Invert(share) => to((share * (BAR_STEPS - 1) as f64) as u64, "inverse"),
            Phase::Prune => to(BAR_STEPS - 1, "pruning"),
        })
    })
}

fn fit_bspm(
    matrix: &SparseMatrix,
    params: &BspmParams,
    what: &str,
) -> Result<recsys_shared::model::item_weights::ItemWeights> {
    // The subspace iteration is the first tenth of the bar, the item rows the rest.
    with_bar(what, |to| {
        bspm::train(matrix, params, &|phase| match phase {
            bspm::Phase::Spectrum(share) => to((share * 99.0) as u64, "low-pass basis"),
            bspm::Phase::Filter(share) => {
                to(100 + (share * (BAR_STEPS - 101) as f64) as u64, "item rows")
            }
        })
    })
}

/// Steps of a one-fit progress bar.
const BAR_STEPS: u64 = 1000;

/// Runs `train` with a progress bar of [`BAR_STEPS`] steps, which it moves forward by calling
/// `to(step, message)` from any thread.
fn with_bar<T>(
    what: &str,
    train: impl FnOnce(&(dyn Fn(u64, &'static str) + Sync)) -> recsys_shared::Result<T>,
) -> Result<T> {
    let progress = Mutex::new((Progress::new(what, BAR_STEPS), 0u64));
    let to = |at: u64, message: &'static str| {
        let mut guard = progress.lock().expect("progress");
        let (bar, done) = &mut *guard;
        if at > *done {
            bar.advance(at - *done, message);
            *done = at;
        }
    };
    let trained = train(&to)?;
    let (mut bar, done) = progress.into_inner().expect("progress");
    bar.advance(BAR_STEPS - done, "done");
    bar.finish();
    Ok(trained)
}
