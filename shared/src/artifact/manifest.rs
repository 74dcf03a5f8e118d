//! `manifest.json`: everything a reader needs to trust and interpret a version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// sha256 and size of every other file in the version directory.
    pub files: BTreeMap<String, FileEntry>,
}

/// The model family that trained the version and its hyper-parameters. Fold-in must use the
/// same objective ([`AlgorithmParams::fold_in_params`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlgorithmParams {
    /// The model family; manifests written before families existed are iALS.
    #[serde(default)]
    pub family: Family,
    /// `ials-cg`: implicit ALS with the conjugate-gradient solver.
    pub name: String,
    pub factors: usize,
    /// iALS's λ, α, α₀ and ν (flattened: the JSON keeps them beside `factors`).
    #[serde(flatten)]
    pub objective: Objective,
    pub iterations: usize,
    pub cg_steps: usize,
    pub seed: u64,
    /// Where the hyper-parameters came from: the tuning run that chose them, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<serde_json::Value>,
}

impl AlgorithmParams {
    /// The objective every fold-in of this model must use.
    pub fn fold_in_params(&self) -> Objective {
        self.objective
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
        assert_eq!(params.family, Family::Ials);
        assert_eq!(
            params.fold_in_params(),
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
        assert_eq!(
            serde_json::from_value::<AlgorithmParams>(json).unwrap(),
            params
        );
    }
}
