//! `manifest.json`: everything a reader needs to trust and interpret a version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{BspmConfig, EaseConfig, ItemKnnConfig};
use crate::model::ials::Objective;
use crate::model::Family;

/// Bumped when the layout of a version changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest of one model version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub algorithm: AlgorithmParams,
    /// The feature-job settings the training table was built with (event weights, threshold, …).
    pub features: serde_json::Value,
    pub data_window: DataWindow,
    pub rows: RowCounts,
    /// Absent when training ran with `--skip-eval`.
    pub evaluation: Option<Evaluation>,
    /// The publish gate's verdict on this version against the model current when it was
    /// trained (`passed: …`, `refused: …`, `skipped: …`); absent in versions published before
    /// the verdict was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// sha256 and size of every other file in the version directory.
    pub files: BTreeMap<String, FileEntry>,
}

/// The model family that trained the version, under `name`, and its hyper-parameters: the
/// family's own ([`ModelParams`]) flattened beside `family` and `name`, so an iALS manifest keeps
/// the JSON it had before families existed (a manifest without `family` is iALS).
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmParams {
    /// `ials-cg`: implicit ALS with the conjugate-gradient solver; `ease`; `item-knn`; `bspm`.
    pub name: String,
    pub model: ModelParams,
    /// Where the hyper-parameters came from: the tuning run that chose them, if any.
    pub tuning: Option<serde_json::Value>,
}

/// A family's hyper-parameters as its versions record them.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelParams {
    Ials(IalsRecord),
    Ease(EaseConfig),
    ItemKnn(ItemKnnConfig),
    Bspm(BspmConfig),
}

/// What an iALS version records of its training. Fold-in must use the same objective.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IalsRecord {
    pub factors: usize,
    /// iALS's λ, α, α₀ and ν (flattened: the JSON keeps them beside `factors`).
    #[serde(flatten)]
    pub objective: Objective,
    pub iterations: usize,
    pub cg_steps: usize,
    pub seed: u64,
}

impl ModelParams {
    /// The parameters in words, for reports.
    pub fn describe(&self) -> String {
        match self {
            ModelParams::Ials(p) => format!(
                "{} factors, λ {}, ν {}, α {}, α₀ {}, {} iterations, {} CG steps, seed {}",
                p.factors,
                p.objective.regularization,
                p.objective.regularization_exp,
                p.objective.alpha,
                p.objective.unobserved_weight,
                p.iterations,
                p.cg_steps,
                p.seed
            ),
            ModelParams::Ease(p) => format!("λ {}, {} weights kept per item", p.lambda, p.top_n),
            ModelParams::ItemKnn(p) => format!(
                "{} neighbours, shrink {}, α {}, member weighting {:?}",
                p.neighbours, p.shrink, p.alpha, p.member_weighting
            ),
            ModelParams::Bspm(p) => format!(
                "low-pass rank {}, β {}, sharpening time {}, {} weights kept per item",
                p.rank, p.low_pass_weight, p.sharpen_time, p.top_n
            ),
        }
    }
}

impl AlgorithmParams {
    /// The family that trained the version.
    pub fn family(&self) -> Family {
        match self.model {
            ModelParams::Ials(_) => Family::Ials,
            ModelParams::Ease(_) => Family::Ease,
            ModelParams::ItemKnn(_) => Family::ItemKnn,
            ModelParams::Bspm(_) => Family::Bspm,
        }
    }

    /// The iALS record, when the version is iALS.
    pub fn ials(&self) -> Option<&IalsRecord> {
        match &self.model {
            ModelParams::Ials(record) => Some(record),
            _ => None,
        }
    }
}

impl Serialize for AlgorithmParams {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let params = match &self.model {
            ModelParams::Ials(p) => serde_json::to_value(p),
            ModelParams::Ease(p) => serde_json::to_value(p),
            ModelParams::ItemKnn(p) => serde_json::to_value(p),
            ModelParams::Bspm(p) => serde_json::to_value(p),
        }
        .map_err(S::Error::custom)?;
        let serde_json::Value::Object(params) = params else {
            return Err(S::Error::custom("a family's parameters are a JSON object"));
        };
        let mut map = serde_json::Map::new();
        map.insert("family".into(), serde_json::json!(self.family().name()));
        map.insert("name".into(), serde_json::json!(self.name));
        map.extend(params);
        if let Some(tuning) = &self.tuning {
            map.insert("tuning".into(), tuning.clone());
        }
        map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AlgorithmParams {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let family: Family = match map.remove("family") {
            Some(family) => serde_json::from_value(family).map_err(D::Error::custom)?,
            None => Family::Ials,
        };
        let name = match map.remove("name") {
            Some(serde_json::Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!("`name` is {other}, not a string")))
            }
            None => return Err(D::Error::missing_field("name")),
        };
        let tuning = map.remove("tuning").filter(|t| !t.is_null());
        let params = serde_json::Value::Object(map);
        let field = |e: serde_json::Error| {
            D::Error::custom(format!("the {} parameters: {e}", family.name()))
        };
        let model = match family {
            Family::Ials => ModelParams::Ials(serde_json::from_value(params).map_err(field)?),
            Family::Ease => ModelParams::Ease(serde_json::from_value(params).map_err(field)?),
            Family::ItemKnn => ModelParams::ItemKnn(serde_json::from_value(params).map_err(field)?),
            Family::Bspm => ModelParams::Bspm(serde_json::from_value(params).map_err(field)?),
        };
        Ok(AlgorithmParams {
            name,
            model,
            tuning,
        })
    }
}

/// The events the model saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DataWindow {
    pub first_event: Option<DateTime<Utc>>,
    pub last_event: Option<DateTime<Utc>>,
    /// Events after this were ignored (`--as-of`).
    pub as_of: Option<DateTime<Utc>>,
}

/// Sizes of what went in and came out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RowCounts {
    pub interactions: u64,
    pub training_pairs: u64,
    pub members: u64,
    pub items: u64,
    pub catalog_items: u64,
}

/// How the model did on its held-out split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub protocol: String,
    /// The model's figures: mean over the evaluated members.
    pub metrics: BTreeMap<String, f64>,
    /// The popularity baseline's figures on the same members.
    pub popularity: BTreeMap<String, f64>,
    pub evaluated_members: u64,
    /// 95 % bootstrap confidence intervals `[low, high]` of the model's per-member metrics
    /// (members resampled with replacement, seeded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub intervals: BTreeMap<String, [f64; 2]>,
    /// The same for the popularity baseline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub popularity_intervals: BTreeMap<String, [f64; 2]>,
    /// Recall@k and NDCG@k for every k from 1 to the evaluation depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curves: Option<Curves>,
    /// The metrics by member activity (the size of the history the member was ranked from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_activity: Vec<ActivityBucket>,
}

/// Metric curves over k = 1..=depth (index 0 is k = 1).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Curves {
    pub recall: Vec<f64>,
    pub ndcg: Vec<f64>,
    pub popularity_recall: Vec<f64>,
    pub popularity_ndcg: Vec<f64>,
}

/// Members whose history had `min_history..=max_history` items, and how they were served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActivityBucket {
    pub label: String,
    pub min_history: usize,
    /// `None`: no upper bound.
    pub max_history: Option<usize>,
    pub members: u64,
    pub metrics: BTreeMap<String, f64>,
    pub popularity: BTreeMap<String, f64>,
}

/// One file of the version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_params_keep_their_json_and_an_absent_family_is_ials() {
        // As written before families and the objective struct existed (and before α₀ and ν).
        let written = serde_json::json!({
            "name": "ials-cg", "factors": 64, "regularization": 0.05, "alpha": 12.0,
            "iterations": 15, "cg_steps": 3, "seed": 7
        });
        let params: AlgorithmParams = serde_json::from_value(written).unwrap();
        assert_eq!(params.family(), Family::Ials);
        assert_eq!(
            params.ials().unwrap().objective,
            Objective {
                regularization: 0.05,
                alpha: 12.0,
                unobserved_weight: 1.0,
                regularization_exp: 0.0,
            }
        );
        // The objective is written flat, beside `factors`, with the family named.
        let json = serde_json::to_value(&params).unwrap();
        assert_eq!(json["family"], "ials");
        assert_eq!(json["regularization"], 0.05f32 as f64);
        assert_eq!(json["unobserved_weight"], 1.0);
        assert!(json.get("objective").is_none(), "{json}");
        assert!(json.get("tuning").is_none(), "{json}");
        assert_eq!(
            serde_json::from_value::<AlgorithmParams>(json).unwrap(),
            params
        );
    }

    #[test]
    fn history_families_record_their_own_parameters() {
        for model in [
            ModelParams::Ease(EaseConfig {
                lambda: 80.0,
                top_n: 500,
            }),
            ModelParams::ItemKnn(ItemKnnConfig::default()),
            ModelParams::Bspm(BspmConfig::default()),
        ] {
            let params = AlgorithmParams {
                name: "x".into(),
                model,
                tuning: Some(serde_json::json!({"trials": 3})),
            };
            let json = serde_json::to_value(&params).unwrap();
            assert_eq!(json["family"], params.family().name());
            assert!(json.get("factors").is_none(), "{json}");
            assert_eq!(
                serde_json::from_value::<AlgorithmParams>(json).unwrap(),
                params
            );
        }
        let ease = serde_json::json!({"family": "ease", "name": "ease", "lambda": 1.0, "top_n": 5});
        assert_eq!(
            serde_json::from_value::<AlgorithmParams>(ease)
                .unwrap()
                .family(),
            Family::Ease
        );
        // A field of another family is refused by name.
        let wrong = serde_json::json!({"family": "ease", "name": "ease", "factors": 64});
        let error = serde_json::from_value::<AlgorithmParams>(wrong)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ease parameters") && error.contains("factors"),
            "{error}"
        );
    }
}
