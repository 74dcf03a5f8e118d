//! `Rank`: the member's top k of the whole catalog (or the most popular for a cold start), with
//! the items they asked to exclude, have seen or hide left out, and the business rules applied.

use std::collections::HashSet;
use std::sync::Arc;

use recsys_shared::proto::v1::{RankRequest, RankResponse};
use tokio::time::Instant;

use super::request::{bounded, check_country, check_deadline, check_id, invalid, limits};
use super::{popular, request_id, scored, Eligible, RankError, Ranker, Treatment};
use crate::impressions::{Shown, ShownRow};
use crate::member::member_tag;
use crate::rules;

impl Ranker {
    /// The ranking, and what it shows when its impression is logged.
    pub(crate) async fn rank(
        &self,
        request: RankRequest,
        deadline: Instant,
    ) -> Result<(RankResponse, Option<Shown>), RankError> {
        check_id("user_id", &request.user_id)?;
        let k = bounded("k", request.k, limits::DEFAULT_K, limits::MAX_K)?;
        let country = check_country(&request.country)?;
        if request.exclude_item_ids.len() > limits::MAX_EXCLUDED {
            return Err(invalid(
                "exclude_item_ids",
                format!(
                    "{} ids, at most {} are allowed",
                    request.exclude_item_ids.len(),
                    limits::MAX_EXCLUDED
                ),
            ));
        }
        for id in &request.exclude_item_ids {
            check_id("exclude_item_ids", id)?;
        }
        let (
            Treatment {
                catalog,
                retrieval,
                assignments,
                ..
            },
            member,
        ) = self.treated(&request.user_id).await?;
        let mut excluded: HashSet<u32> = request
            .exclude_item_ids
            .iter()
            .filter_map(|id| catalog.index_of(id))
            .collect();
        if request.exclude_seen.unwrap_or(self.exclude_seen) {
            excluded.extend(member.seen(&catalog));
        }
        excluded.extend(member.hidden(&catalog));
        let eligible = Eligible {
            maturity: catalog.maturity_filter(&self.maturity, member.max_maturity.as_deref()),
            catalog: catalog.clone(),
            excluded: Arc::new(excluded),
            country,
        };
        let allowed = |i: u32| eligible.allows(i);
        check_deadline(deadline, "before scoring")?;
        let pool = k + rules::extra_candidates(&self.rules);
        let items = match &member.taste {
            Some(taste) => rules::apply(
                &self.rules,
                &catalog,
                self.top_k(taste, pool, &eligible, retrieval, deadline)
                    .await?,
                k,
                |i| Some(catalog.model.scorer.score(i, taste.input())),
                allowed,
            ),
            None => rules::apply(
                &self.rules,
                &catalog,
                popular(&catalog, pool, allowed),
                k,
                |_| None,
                allowed,
            ),
        };
        tracing::debug!(member = %member_tag(&request.user_id), source = ?member.source, k, "rank");
        let shown = self.logging().then(|| Shown {
            catalog: catalog.clone(),
            rows: vec![ShownRow {
                kind: "rank",
                items: items.iter().map(|s| s.index).collect(),
            }],
        });
        let answer = RankResponse {
            items: scored(&catalog, items),
            model_version: catalog.version.clone(),
            vector_source: member.source as i32,
            degraded: member.degraded,
            request_id: request_id(),
            experiments: assignments,
        };
        Ok((answer, shown))
    }
}
