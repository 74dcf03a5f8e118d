//! `[model]`: where model versions are published, shared by every tier.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::first_problem;

/// The model root shared by every tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Directory holding `<version>/` directories and the `CURRENT` pointer, or an object-storage
    /// URL (`s3://bucket/models`, `gs://…`, `az://…`). Default `var/models`.
    pub root: PathBuf,
    /// How many versions to keep after a publish (the current one is always kept). Default 5.
    pub keep_versions: usize,
    /// Where servers and workers keep the versions they download when `root` is on object
    /// storage (a local model root). Default `var/model-cache`.
    pub cache_dir: PathBuf,
    /// How long a writer's lease on an object-storage root lasts unless renewed (a writer renews
    /// it every third of this while it runs, so a crashed writer blocks others at most this
    /// long). Default 300 s.
    pub lease_seconds: u64,
    /// Set by the process, never read from the file: the object-storage root that `root` (then
    /// the cache) mirrors, so that what moves `CURRENT` can say where it must be moved.
    #[serde(skip)]
    pub mirrored_from: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            root: PathBuf::from("var/models"),
            keep_versions: 5,
            cache_dir: PathBuf::from("var/model-cache"),
            lease_seconds: 300,
            mirrored_from: None,
        }
    }
}

impl ModelConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        first_problem(vec![
            (
                self.keep_versions >= 1,
                "model.keep_versions",
                "must be at least 1",
            ),
            (
                self.keep_versions <= 10_000,
                "model.keep_versions",
                "must be at most 10000",
            ),
            (
                (10..=7 * 86_400).contains(&self.lease_seconds),
                "model.lease_seconds",
                "must be 10..=604800",
            ),
        ])
    }
}
