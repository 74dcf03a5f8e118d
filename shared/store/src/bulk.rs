//! The bulk load of a published model's member vectors and training histories into the store
//! (`recsys offline load-store`, and the online server's own load when it owns an embedded store).
//!
//! Idempotent: every write carries the token `(model created_at, hash of the version id)`, so
//! running the load twice writes nothing new, and a vector the nearline tier wrote after the model
//! was published (a newer token) is not overwritten by it.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::features::{FeatureStore, HistoryEntry, MemberVector};
use super::{IdempotencyToken, StoreError};
use recsys_shared::artifact::{files, read_factors, read_history, FactorTable, ModelRoot};
use recsys_shared::model::MemberState;
use recsys_shared::SharedError;

/// Namespace of the load log: id `loads`, one key per model version loaded.
const META_NAMESPACE: &str = "store_meta";
const LOADS_ID: &str = "loads";

/// Whether a load of `version` completed before.
pub async fn is_loaded(store: &FeatureStore, version: &str) -> Result<bool, StoreError> {
    let page = store
        .kv()
        .get_items(
            META_NAMESPACE,
            LOADS_ID,
            &super::Predicate::MatchKeys(vec![version.as_bytes().to_vec()]),
            &Default::default(),
        )
        .await?;
    Ok(!page.items.is_empty())
}

/// Members written per store batch.
const BATCH: usize = 1000;

/// What a load wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadReport {
    pub model_version: String,
    pub members: usize,
    pub vectors: usize,
    pub history_entries: usize,
}

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Artifact(#[from] SharedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The token every write of a model's load carries.
pub fn load_token(version: &str, created_at_ms: i64) -> IdempotencyToken {
    let digest = Sha256::digest(version.as_bytes());
    IdempotencyToken {
        generation_ms: created_at_ms.max(0) as u64,
        nonce: u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")),
    }
}

/// [`load_model_features`] with its progress shown as `load-store` (a bar on a terminal, log
/// lines otherwise): what the CLI's `load-store` and the quickstart run.
pub async fn load_model_features_with_progress(
    root: &ModelRoot,
    version: &str,
    store: &FeatureStore,
) -> Result<LoadReport, LoadError> {
    let mut progress: Option<recsys_shared::progress::Progress> = None;
    let mut last = 0;
    let report = load_model_features(root, Some(version), store, |done, total| {
        let p = progress.get_or_insert_with(|| {
            recsys_shared::progress::Progress::new("load-store", total as u64)
        });
        p.advance((done - last) as u64, "members");
        last = done;
    })
    .await?;
    if let Some(p) = progress {
        p.finish();
    }
    Ok(report)
}

/// Loads version `version` (or `CURRENT`) of `root` into `store`, calling `progress(done, total)`
/// after each batch of members.
pub async fn load_model_features(
    root: &ModelRoot,
    version: Option<&str>,
    store: &FeatureStore,
    mut progress: impl FnMut(usize, usize),
) -> Result<LoadReport, LoadError> {
    let version = match version {
        Some(v) => v.to_string(),
        None => root
            .current_version()?
            .ok_or_else(|| SharedError::ModelRoot {
                root: root.path().to_path_buf(),
                problem: "no CURRENT version has been published".into(),
            })?,
    };
    let manifest = root.verify(&version)?;
    let dir = root.version_dir(&version);
    // The history families publish no member vectors: their members are their histories.
    let factors = match manifest.algorithm.family().member_state() {
        MemberState::Vector => read_factors(&dir.join(files::USER_FACTORS), "user_id")?,
        MemberState::History => FactorTable {
            ids: Vec::new(),
            vectors: Vec::new(),
            factors: 0,
        },
    };
    let history_path = dir.join(files::USER_HISTORY);
    let history_rows = if history_path.exists() {
        read_history(&history_path)?
    } else {
        Vec::new()
    };
    let history_entries = history_rows.len();
    let mut histories: HashMap<String, Vec<HistoryEntry>> = HashMap::new();
    for row in history_rows {
        histories
            .entry(row.user_id)
            .or_default()
            .push(HistoryEntry {
                item_id: row.item_id,
                ts_ms: row.ts_ms,
                strength: row.strength,
            });
    }
    let k = factors.factors;
    let mut members: Vec<(String, Option<MemberVector>, Vec<HistoryEntry>)> = factors
        .ids
        .iter()
        .enumerate()
        .map(|(row, id)| {
            let vector = MemberVector {
                model_version: version.clone(),
                values: factors.vectors[row * k..(row + 1) * k].to_vec(),
            };
            (
                id.clone(),
                Some(vector),
                histories.remove(id).unwrap_or_default(),
            )
        })
        .collect();
    // Members with a history but no vector (filtered out of training) still get their history.
    members.extend(histories.into_iter().map(|(id, h)| (id, None, h)));
    let token = load_token(&version, manifest.created_at.timestamp_millis());
    let total = members.len();
    let mut done = 0;
    for batch in members.chunks(BATCH) {
        store.put_members(batch, token).await?;
        done += batch.len();
        progress(done, total);
    }
    let finished = chrono::Utc::now().to_rfc3339();
    store
        .kv()
        .put_items(
            META_NAMESPACE,
            LOADS_ID,
            &[super::Item::new(version.as_bytes(), finished.into_bytes())],
            token,
        )
        .await?;
    Ok(LoadReport {
        model_version: version,
        members: total,
        vectors: factors.ids.len(),
        history_entries,
    })
}
