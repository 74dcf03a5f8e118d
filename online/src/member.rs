//! The member as the ranking sees them: their taste for the model being served — a vector (cache →
//! store → fold-in → cold start) or, for the history families, the history itself — with their
//! history, hidden items and maturity limit; a store that cannot be read degrades to cold start.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use recsys_shared::artifact::published::Taste;
use recsys_shared::config::MaturityConfig;
use recsys_shared::logs::LogEvery;
use recsys_shared::model::MemberState;
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
    /// What the served model scores the member by; `None`: cold start.
    pub taste: Option<Taste>,
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
    /// The member's taste for `catalog`: a stored vector of this model, else the taste from the
    /// history (a fold-in, or the history itself), else none (cold start). A store failure degrades to cold start. The source is
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
                    taste: None,
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
        let source = match source {
            Source::Cache => VectorSource::Cache,
            Source::Store => VectorSource::Store,
        };
        let stored = features.vector.as_ref().filter(|v| {
            catalog.model.family.member_state() == MemberState::Vector
                && v.model_version == catalog.version
                && v.values.len() == catalog.model.factors()
        });
        if let Some(v) = stored {
            return Member {
                taste: Some(Taste::Vector(v.values.clone())),
                history,
                hidden,
                max_maturity,
                source,
                degraded: false,
            };
        }
        match catalog.taste_from_history(&history) {
            Ok(Some(taste)) => Member {
                // The history families score the history as read: its source is the member's.
                source: match taste {
                    Taste::Vector(_) => VectorSource::FoldIn,
                    Taste::History(_) => source,
                },
                taste: Some(taste),
                history,
                hidden,
                max_maturity,
                degraded: false,
            },
            Ok(None) => Member {
                taste: None,
                history,
                hidden,
                max_maturity,
                source: VectorSource::ColdStart,
                degraded: false,
            },
            Err(e) => {
                tracing::error!(member = %member_tag(user_id), error = %e, "fold-in failed");
                Member {
                    taste: None,
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
            .filter_map(|e| catalog.index_of(&e.item_id))
            .collect()
    }

    /// The catalog indexes of the items the member's feedback hides.
    pub fn hidden<'a>(&'a self, catalog: &'a Catalog) -> impl Iterator<Item = u32> + 'a {
        self.hidden.iter().filter_map(|id| catalog.index_of(id))
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
