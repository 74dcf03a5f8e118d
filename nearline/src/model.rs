//! The current model as the workers need it: item factors, the item index, `YᵀY` and the model's
//! own λ and α for the fold-in. Reloaded when the offline tier moves `CURRENT`, by the policy every
//! reader shares ([`CurrentFollower`]): a version that fails verification is refused until its
//! files change, and the newest intact version before it is held meanwhile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use recsys_shared::artifact::{files, read_factors, CurrentFollower, LoadFailure, ModelRoot};
use recsys_shared::model::ials::FoldIn;
use recsys_shared::model::Family;
use recsys_store::features::HistoryEntry;

use crate::error::NearlineError;
use crate::metrics;

/// One model version's item factors, ready for fold-ins.
#[derive(Debug)]
pub struct FoldInModel {
    pub version: String,
    index: HashMap<String, u32>,
    factors: Vec<f32>,
    fold_in: FoldIn,
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
        let fold_in = match manifest.algorithm.family {
            Family::Ials => FoldIn::new(&table.vectors, k, manifest.algorithm.fold_in_params()),
            family @ (Family::Ease | Family::ItemKnn) => {
                return Err(invalid(format!(
                    "a {} version; this release folds in iALS versions only",
                    family.name()
                )))
            }
        };
        Ok(FoldInModel {
            version: version.to_string(),
            index,
            factors: table.vectors,
            fold_in,
        })
    }

    pub fn knows(&self, item_id: &str) -> bool {
        self.index.contains_key(item_id)
    }

    pub fn factors(&self) -> usize {
        self.fold_in.factors()
    }

    /// The member's vector from their whole history (the offline evaluator's fold-in, with this
    /// model's λ and α). Items this model does not know are skipped; `None` when no item is known.
    pub fn fold_in(&self, history: &[HistoryEntry]) -> Result<Option<Vec<f32>>, NearlineError> {
        let history = history.iter().map(|e| (e.item_id.as_str(), e.strength));
        Ok(self
            .fold_in
            .solve_ids(&self.factors, &self.index, history)?)
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

    /// Follows `CURRENT` under `root` by the one policy of [`CurrentFollower`] until the task is
    /// dropped: polls now, then every `every`.
    pub fn follow(self: Arc<Self>, root: &Path, every: std::time::Duration) -> ModelFollower {
        ModelFollower {
            handle: self,
            follower: CurrentFollower::new(ModelRoot::new(root)),
            every,
        }
    }
}

/// A [`ModelHandle`] kept on the version `CURRENT` names (or the newest intact one before it).
pub struct ModelFollower {
    handle: Arc<ModelHandle>,
    follower: CurrentFollower<ModelRoot>,
    every: std::time::Duration,
}

impl ModelFollower {
    /// One poll. Returns whether the model changed.
    pub async fn refresh(&mut self) -> bool {
        let held = self.handle.get().map(|m| m.version.clone());
        let root = self.follower.source().clone();
        let poll = self
            .follower
            .poll(held.as_deref(), |version| {
                let root = root.clone();
                async move {
                    let loaded =
                        tokio::task::spawn_blocking(move || FoldInModel::load(&root, &version))
                            .await;
                    match loaded {
                        Ok(Ok(model)) => Ok(model),
                        Ok(Err(e)) => Err(LoadFailure::Refused(e.to_string())),
                        Err(e) => Err(LoadFailure::Refused(format!("model load panicked: {e}"))),
                    }
                }
            })
            .await;
        for _ in 0..poll.refused {
            metrics::MODEL_LOADS.with_label_values(&["refused"]).inc();
        }
        let Some(followed) = poll.followed else {
            return false;
        };
        tracing::info!(version = %followed.version, previous = ?held, fallback = followed.fallback,
            "model loaded");
        metrics::MODEL_LOADS.with_label_values(&["ok"]).inc();
        self.handle.set(followed.model);
        true
    }

    /// Polls every `every` for ever (spawn it; abort the task to stop).
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tick.tick().await;
            self.refresh().await;
        }
    }
}
