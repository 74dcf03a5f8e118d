//! The history families' part of `recsys offline tune`: EASE, item-kNN and BSPM searched on the same
//! validation split as iALS, each in its own share of the budget. A history family has no
//! iterations to halve, so a trial is one whole fit, scored once; the first trial of each family
//! is its configured section (`[offline.ease]`, `[offline.item_knn]`, `[offline.bspm]`), the rest are drawn from its
//! ranges in `[offline.tuning]`. It owns the drawing, the trial loop and its records; it must not
//! choose between families (the tuner does) nor touch the test members.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use recsys_shared::config::{
    BspmConfig, EaseConfig, ItemKnnConfig, MemberWeighting, OfflineConfig, TuningConfig,
};
use recsys_shared::model::matrix::SparseMatrix;
use recsys_shared::model::Family;

use crate::evaluate::{self, HeldOut};
use crate::family::{fit, FamilyParams};
use crate::Result;

/// A history family's parameters, named by family (`{"family": "ease", "lambda": …}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum HistoryParams {
    Ease(EaseConfig),
    ItemKnn(ItemKnnConfig),
    Bspm(BspmConfig),
}

impl HistoryParams {
    pub fn family(&self) -> Family {
        match self {
            HistoryParams::Ease(_) => Family::Ease,
            HistoryParams::ItemKnn(_) => Family::ItemKnn,
            HistoryParams::Bspm(_) => Family::Bspm,
        }
    }

    pub fn family_params(&self) -> FamilyParams {
        match self {
            HistoryParams::Ease(p) => FamilyParams::Ease(*p),
            HistoryParams::ItemKnn(p) => FamilyParams::ItemKnn(*p),
            HistoryParams::Bspm(p) => FamilyParams::Bspm(*p),
        }
    }

    /// Puts these parameters and their family in force in `offline`.
    pub fn apply(&self, offline: &mut OfflineConfig) {
        offline.family = self.family().into();
        match self {
            HistoryParams::Ease(p) => offline.ease = *p,
            HistoryParams::ItemKnn(p) => offline.item_knn = *p,
            HistoryParams::Bspm(p) => offline.bspm = *p,
        }
    }
}

/// One scored setting of a history family (a line of `trials.jsonl`, beside iALS's rungs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyTrial {
    /// Counted within the family, from 0 (the configured setting).
    pub trial: usize,
    pub params: HistoryParams,
    /// The validation metric the search ranks by.
    pub score: f64,
    pub validation: BTreeMap<String, f64>,
    /// Seconds of the fit and the validation scoring.
    pub seconds: f64,
    /// Seconds since the search started.
    pub elapsed_seconds: f64,
}

/// What every trial of every family is scored on.
pub(crate) struct Validation<'a> {
    /// The training side without the validation members.
    pub matrix: &'a SparseMatrix,
    pub held: &'a HeldOut,
    pub popularity: &'a [f32],
    pub metric: &'a str,
    pub seed: u64,
    pub threads: usize,
    pub started: Instant,
}

/// A draw from `[lo, hi]`, uniform in the logarithm (`lo` when the range is empty): how both
/// searches draw a scale.
pub(crate) fn log_uniform(rng: &mut StdRng, [lo, hi]: [f64; 2]) -> f64 {
    if lo >= hi {
        return lo;
    }
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// Draws the `n`th setting of `family` (0: as configured).
fn draw(
    family: Family,
    n: usize,
    space: &TuningConfig,
    offline: &OfflineConfig,
    rng: &mut StdRng,
) -> HistoryParams {
    let uniform = |rng: &mut StdRng, [lo, hi]: [f64; 2]| lo + rng.random::<f64>() * (hi - lo);
    match family {
        Family::Ease if n == 0 => HistoryParams::Ease(offline.ease),
        Family::Ease => HistoryParams::Ease(EaseConfig {
            lambda: log_uniform(rng, space.ease_lambda) as f32,
            ..offline.ease
        }),
        Family::ItemKnn if n == 0 => HistoryParams::ItemKnn(offline.item_knn),
        Family::ItemKnn => HistoryParams::ItemKnn(ItemKnnConfig {
            neighbours: log_uniform(rng, space.knn_neighbours).round() as usize,
            shrink: uniform(rng, space.knn_shrink) as f32,
            alpha: uniform(rng, space.knn_alpha) as f32,
            member_weighting: if rng.random_bool(0.5) {
                MemberWeighting::Idf
            } else {
                MemberWeighting::None
            },
        }),
        Family::Bspm if n == 0 => HistoryParams::Bspm(offline.bspm),
        Family::Bspm => HistoryParams::Bspm(BspmConfig {
            rank: log_uniform(rng, space.bspm_rank).round() as usize,
            low_pass_weight: uniform(rng, space.bspm_low_pass_weight) as f32,
            sharpen_time: uniform(rng, space.bspm_sharpen_time) as f32,
            ..offline.bspm
        }),
        Family::Ials => unreachable!("iALS is searched by successive halving"),
    }
}

/// Searches `family` (its ranges in `offline.tuning`) until `trials` settings are scored or, with a `deadline`, until the next
/// one would not finish before it (judged by the trials so far; the first always runs).
/// `on_trial` sees every trial as it is scored. Returns the trials and whether the deadline cut
/// the search short.
pub(crate) fn search(
    family: Family,
    validation: &Validation<'_>,
    offline: &OfflineConfig,
    trials: usize,
    deadline: Option<Instant>,
    rng: &mut StdRng,
    mut on_trial: impl FnMut(&FamilyTrial) -> Result<()>,
) -> Result<(Vec<FamilyTrial>, bool)> {
    let mut done: Vec<FamilyTrial> = Vec::new();
    let mut cut = false;
    for n in 0..trials.max(1) {
        let params = draw(family, n, &offline.tuning, offline, rng);
        if let (Some(deadline), Some(_)) = (deadline, done.first()) {
            let mean = done.iter().map(|t| t.seconds).sum::<f64>() / done.len() as f64;
            if Instant::now() + Duration::from_secs_f64(mean) > deadline {
                cut = true;
                break;
            }
        }
        let started = Instant::now();
        let fitted = fit(
            validation.matrix,
            &params.family_params(),
            validation.threads,
            &format!("tune {} #{n}", family.name()),
        )?;
        let scores = evaluate::score_held_out_with(
            validation.held,
            &fitted.scorer,
            None,
            validation.popularity,
            validation.seed,
        )?;
        let trial = FamilyTrial {
            trial: n,
            params,
            score: scores.metrics[validation.metric],
            validation: scores.metrics,
            seconds: started.elapsed().as_secs_f64(),
            elapsed_seconds: validation.started.elapsed().as_secs_f64(),
        };
        on_trial(&trial)?;
        done.push(trial);
    }
    Ok((done, cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_first_draw_is_the_configured_setting_and_the_rest_stay_in_range() {
        let space = TuningConfig::default();
        let offline = OfflineConfig::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            draw(Family::Ease, 0, &space, &offline, &mut rng),
            HistoryParams::Ease(offline.ease)
        );
        assert_eq!(
            draw(Family::ItemKnn, 0, &space, &offline, &mut rng),
            HistoryParams::ItemKnn(offline.item_knn)
        );
        for n in 1..200 {
            match draw(Family::Ease, n, &space, &offline, &mut rng) {
                HistoryParams::Ease(p) => {
                    assert!((10.0..=2000.0).contains(&p.lambda), "{p:?}");
                    assert_eq!(p.top_n, offline.ease.top_n, "top_n is never searched");
                }
                other => panic!("{other:?}"),
            }
            match draw(Family::ItemKnn, n, &space, &offline, &mut rng) {
                HistoryParams::ItemKnn(p) => {
                    assert!((20..=1000).contains(&p.neighbours), "{p:?}");
                    assert!((0.0..=200.0).contains(&p.shrink), "{p:?}");
                    assert!((0.3..=1.0).contains(&p.alpha), "{p:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn history_params_name_their_family_in_json_and_apply() {
        let params = HistoryParams::ItemKnn(ItemKnnConfig {
            neighbours: 7,
            ..Default::default()
        });
        let json = serde_json::to_value(params).unwrap();
        assert_eq!(json["family"], "item_knn");
        assert_eq!(json["neighbours"], 7);
        assert_eq!(
            serde_json::from_value::<HistoryParams>(json).unwrap(),
            params
        );
        let mut offline = OfflineConfig::default();
        params.apply(&mut offline);
        assert_eq!(offline.family, Family::ItemKnn.into());
        assert_eq!(offline.item_knn.neighbours, 7);
    }
}
