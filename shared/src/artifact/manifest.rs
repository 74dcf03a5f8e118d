//! `manifest.json`: everything a reader needs to trust and interpret a version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// The training algorithm and its hyper-parameters. Fold-in must use the same λ and α.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlgorithmParams {
    /// `ials-cg`: implicit ALS with the conjugate-gradient solver.
    pub name: String,
    pub factors: usize,
    pub regularization: f32,
    pub alpha: f32,
    pub iterations: usize,
    pub cg_steps: usize,
    pub seed: u64,
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
    pub metrics: BTreeMap<String, f64>,
    pub popularity: BTreeMap<String, f64>,
    pub evaluated_members: u64,
}

/// One file of the version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}
