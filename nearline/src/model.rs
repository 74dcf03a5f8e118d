//! The current model as the workers need it: item factors, the item index, `YᵀY` and the model's
//! own λ and α for the fold-in. Reloaded when the offline tier moves `CURRENT`; a version that
//! fails verification is refused and the loaded one kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use recsys_shared::artifact::{files, read_factors, ModelRoot};
use recsys_shared::foldin::{FoldIn, FoldInParams};
use recsys_shared::kernels;
use recsys_store::features::HistoryEntry;

use crate::error::NearlineError;
use crate::metrics;

/// One model version's item factors, ready for fold-ins.
#[derive(Debug)]
pub struct FoldInModel {
    pub version: String,
    index: HashMap<String, u32>,
    factors: Vec<f32>,
    k: usize,
    gram: Vec<f32>,
    params: FoldInParams,
}

impl FoldInModel {
    /// Loads and verifies version `version` of `root`.
    pub fn load(root: &ModelRoot, version: &str) -> Result<FoldInModel, NearlineError> {
        let manifest = root.verify(version)?;
        let table = read_factors(
            &root.version_dir(version).join(files::ITEM_FACTORS),
            "item_id",
        )?;
        let invalid = |problem: String| NearlineError::InvalidModel {
            version: version.to_string(),
            problem,
        };
        let k = table.factors;
        if k != manifest.algorithm.factors || table.ids.is_empty() {
            return Err(invalid(format!(
                "{} item factors {k} wide; the manifest says {} wide",
                table.ids.len(),
                manifest.algorithm.factors
            )));
        }
        if table.vectors.iter().any(|x| !x.is_finite()) {
            return Err(invalid("a non-finite item factor".into()));
        }
        let mut index = HashMap::with_capacity(table.ids.len());
        for (i, id) in table.ids.into_iter().enumerate() {
            index.insert(id, i as u32);
        }
        Ok(FoldInModel {
            version: version.to_string(),
            index,
            gram: kernels::gram(&table.vectors, k),
            factors: table.vectors,
            k,
            params: manifest.algorithm.fold_in_params(),
        })
    }

    pub fn knows(&self, item_id: &str) -> bool {
        self.index.contains_key(item_id)
    }

    pub fn factors(&self) -> usize {
        self.k
    }

    /// The member's vector from their whole history (the offline evaluator's fold-in, with this
    /// model's λ and α). Items this model does not know are skipped; `None` when no item is known.
    pub fn fold_in(&self, history: &[HistoryEntry]) -> Result<Option<Vec<f32>>, NearlineError> {
        let known: Vec<(u32, f32)> = history
            .iter()
            .filter_map(|e| self.index.get(&e.item_id).map(|&i| (i, e.strength)))
            .collect();
        if known.is_empty() {
            return Ok(None);
        }
        let fold_in = FoldIn::with_gram(&self.factors, self.k, self.params, self.gram.clone());
        Ok(Some(fold_in.solve(&known)?))
    }
}

/// The model the workers fold in with, swapped atomically when `CURRENT` moves.
#[derive(Debug, Default)]
pub struct ModelHandle {
    current: ArcSwapOption<FoldInModel>,
}

impl ModelHandle {
    pub fn new() -> Arc<Self> {
        Arc::new(ModelHandle::default())
    }

    pub fn get(&self) -> Option<Arc<FoldInModel>> {
        self.current.load_full()
    }

    pub fn set(&self, model: FoldInModel) {
        metrics::set_model_version(&model.version);
        self.current.store(Some(Arc::new(model)));
    }

    /// Loads `CURRENT` when it names a version other than the loaded one. Returns whether the model
    /// changed; a version that cannot be loaded is logged, counted and skipped (and tried again
    /// only after `CURRENT` moves once more).
    pub async fn refresh(&self, root: &Path, refused: &mut Option<String>) -> bool {
        let root = ModelRoot::new(root);
        let version = match root.current_version() {
            Ok(Some(v)) => v,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read CURRENT");
                return false;
            }
        };
        let loaded = self.get().map(|m| m.version.clone());
        if loaded.as_deref() == Some(version.as_str()) || refused.as_deref() == Some(&version) {
            return false;
        }
        let v = version.clone();
        match tokio::task::spawn_blocking(move || FoldInModel::load(&root, &v)).await {
            Ok(Ok(model)) => {
                tracing::info!(version = %model.version, previous = ?loaded, "model loaded");
                metrics::MODEL_LOADS.with_label_values(&["ok"]).inc();
                self.set(model);
                *refused = None;
                true
            }
            Ok(Err(e)) => {
                tracing::error!(%version, error = %e, "model version refused; keeping the loaded one");
                metrics::MODEL_LOADS.with_label_values(&["refused"]).inc();
                *refused = Some(version);
                false
            }
            Err(e) => {
                tracing::error!(%version, error = %e, "model load panicked");
                metrics::MODEL_LOADS.with_label_values(&["refused"]).inc();
                *refused = Some(version);
                false
            }
        }
    }
}
