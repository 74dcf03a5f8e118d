//! The current model as the workers need it: the item index and, for families whose member is a
//! vector, the fold-in with the model's own objective (`YᵀY`, λ, α); the history families need
//! no more than the index, their members' state being the history the worker writes. Reloaded when the offline tier moves `CURRENT`, by the policy every
//! reader shares ([`CurrentFollower`]): a version that fails verification is refused until its
//! files change, and the newest intact version before it is held meanwhile.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use recsys_shared::artifact::published::PublishedModel;
use recsys_shared::artifact::{CurrentFollower, LoadFailure, ModelRoot};
use recsys_shared::model::MemberState;
use recsys_store::features::HistoryEntry;

use crate::error::NearlineError;
use crate::metrics;

/// One model version, ready for member updates: the item ids every event is checked against and,
/// for families whose member is a vector, the fold-in.
#[derive(Debug)]
pub struct MemberModel {
    pub version: String,
    model: PublishedModel,
}

impl MemberModel {
    /// Loads and verifies version `version` of `root`.
    pub fn load(root: &ModelRoot, version: &str) -> Result<MemberModel, NearlineError> {
        let manifest = root.verify(version)?;
        let model = PublishedModel::load(root, version, &manifest)?;
        Ok(MemberModel {
            version: version.to_string(),
            model,
        })
    }

    pub fn knows(&self, item_id: &str) -> bool {
        self.model.knows(item_id)
    }

    /// Whether members of this model carry a vector (iALS) or are scored from their history.
    pub fn keeps_vectors(&self) -> bool {
        self.model.family.member_state() == MemberState::Vector
    }

    /// The member's vector from their whole history (the offline evaluator's fold-in, with this
    /// model's λ and α). Items this model does not know are skipped; `None` when no item is
    /// known, and always for the history families.
    pub fn fold_in(&self, history: &[HistoryEntry]) -> Result<Option<Vec<f32>>, NearlineError> {
        Ok(self
            .model
            .fold_in(history.iter().map(|e| (e.item_id.as_str(), e.strength)))?)
    }
}

/// The model the workers fold in with, swapped atomically when `CURRENT` moves.
#[derive(Debug, Default)]
pub struct ModelHandle {
    current: ArcSwapOption<MemberModel>,
}

impl ModelHandle {
    pub fn new() -> Arc<Self> {
        Arc::new(ModelHandle::default())
    }

    pub fn get(&self) -> Option<Arc<MemberModel>> {
        self.current.load_full()
    }

    pub fn set(&self, model: MemberModel) {
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
                        tokio::task::spawn_blocking(move || MemberModel::load(&root, &version))
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
