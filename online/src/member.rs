//! The member as the ranking sees them: their vector for the model being served (cache → store →
//! fold-in → cold start), history, hidden items and maturity limit; a store that cannot be read
//! degrades to cold start.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use recsys_shared::config::MaturityConfig;
use recsys_shared::logs::LogEvery;
use recsys_shared::proto::v1::VectorSource;
use recsys_store::cache::{FeatureReader, Source};
use recsys_store::features::HistoryEntry;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::metrics::VECTOR_SOURCES;

/// The store-unavailable warning, at most once a second (it would otherwise repeat per request).
static STORE_DOWN_LOG: LazyLock<LogEvery> = LazyLock::new(|| LogEvery::new(Duration::from_secs(1)));

/// A member as the ranking sees them.
pub(crate) struct Member {
    pub vector: Option<Vec<f32>>,
    pub history: Vec<HistoryEntry>,
    /// Items the member's negative feedback hides now (`feedback`).
    pub hidden: Vec<String>,
    /// The most mature rating the member's profile allows; `None` = unrestricted.
    pub max_maturity: Option<String>,
    pub source: VectorSource,
    pub degraded: bool,
}

/// A short, stable, non-reversible tag for a member id in logs.
pub fn member_tag(user_id: &str) -> String {
    hex::encode(&Sha256::digest(user_id.as_bytes())[..6])
}

impl Member {
    /// The member's vector for `catalog`: a stored one of this model, else folded in from the
    /// history, else none (cold start). A store failure degrades to cold start. The source is
    /// counted in `recsys_vector_source_total`.
    pub async fn look_up(
        reader: &FeatureReader,
        maturity: &MaturityConfig,
        catalog: &Catalog,
        user_id: &str,
    ) -> Member {
        let member = Self::read(reader, maturity, catalog, user_id).await;
        member.count_source();
        member
    }

    async fn read(
        reader: &FeatureReader,
        maturity: &MaturityConfig,
        catalog: &Catalog,
        user_id: &str,
    ) -> Member {
        let (features, source) = match reader.get(user_id).await {
            Ok(found) => found,
            Err(e) => {
                if let Some(suppressed) = STORE_DOWN_LOG.check() {
                    tracing::warn!(member = %member_tag(user_id), error = %e, suppressed,
                        "feature store unavailable: popularity ranking, degraded");
                }
                VECTOR_SOURCES.with_label_values(&["degraded"]).inc();
                return Member {
                    vector: None,
                    history: Vec::new(),
                    hidden: Vec::new(),
                    // The profile is unknown.
                    max_maturity: maturity.when_store_unavailable.clone(),
                    source: VectorSource::ColdStart,
                    degraded: true,
                };
            }
        };
        let history = features.history.clone();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let hidden: Vec<String> = features.hidden_at(now_ms).map(str::to_string).collect();
        let max_maturity = features.profile.max_maturity.clone();
        if let Some(v) = &features.vector {
            if v.model_version == catalog.version && v.values.len() == catalog.factors() {
                let source = match source {
                    Source::Cache => VectorSource::Cache,
                    Source::Store => VectorSource::Store,
                };
                return Member {
                    vector: Some(v.values.clone()),
                    history,
                    hidden,
                    max_maturity,
                    source,
                    degraded: false,
                };
            }
        }
        match catalog.fold_in(&history) {
            Ok(Some(vector)) => Member {
                vector: Some(vector),
                history,
                hidden,
                max_maturity,
                source: VectorSource::FoldIn,
                degraded: false,
            },
            Ok(None) => Member {
                vector: None,
                history,
                hidden,
                max_maturity,
                source: VectorSource::ColdStart,
                degraded: false,
            },
            Err(e) => {
                tracing::error!(member = %member_tag(user_id), error = %e, "fold-in failed");
                Member {
                    vector: None,
                    history,
                    hidden,
                    max_maturity,
                    source: VectorSource::ColdStart,
                    degraded: true,
                }
            }
        }
    }

    fn count_source(&self) {
        let label = match self.source {
            VectorSource::Cache => "cache",
            VectorSource::Store => "store",
            VectorSource::FoldIn => "fold_in",
            _ => "cold_start",
        };
        VECTOR_SOURCES.with_label_values(&[label]).inc();
    }

    /// The catalog indexes of the items in the member's history.
    pub fn seen(&self, catalog: &Catalog) -> HashSet<u32> {
        self.history
            .iter()
            .filter_map(|e| catalog.index.get(&e.item_id).copied())
            .collect()
    }

    /// The catalog indexes of the items the member's feedback hides.
    pub fn hidden<'a>(&'a self, catalog: &'a Catalog) -> impl Iterator<Item = u32> + 'a {
        self.hidden
            .iter()
            .filter_map(|id| catalog.index.get(id).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_tags_are_stable_and_distinct() {
        assert_eq!(member_tag("m1"), member_tag("m1"));
        assert_ne!(member_tag("m1"), member_tag("m2"));
    }
}
