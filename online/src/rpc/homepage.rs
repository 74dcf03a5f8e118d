//! `Homepage`: rows of the member's homepage after a recipe (top picks, "because you watched"
//! rows seeded by their newest history, trending), no title twice on a page.

use std::collections::HashSet;
use std::sync::Arc;

use recsys_shared::proto::v1::{HomepageRequest, HomepageResponse, Row};
use tokio::time::Instant;

use super::request::{bounded, check_country, check_deadline, check_id, limits};
use super::{popular, request_id, scored, Eligible, RankError, Ranker, Treatment};
use crate::experiments::{RowKind, RowRecipe};
use crate::impressions::{Shown, ShownRow};
use crate::rules;
use recsys_shared::model::top_k::Scored;

impl Ranker {
    /// The homepage, and what it shows when its impression is logged.
    pub(crate) async fn homepage(
        &self,
        request: HomepageRequest,
        deadline: Instant,
    ) -> Result<(HomepageResponse, Option<Shown>), RankError> {
        check_id("user_id", &request.user_id)?;
        let rows = bounded("rows", request.rows, limits::DEFAULT_ROWS, limits::MAX_ROWS)?;
        let per_row = bounded(
            "items_per_row",
            request.items_per_row,
            limits::DEFAULT_ITEMS_PER_ROW,
            limits::MAX_ITEMS_PER_ROW,
        )?;
        let country = check_country(&request.country)?;
        let country = country.as_deref();
        let (
            Treatment {
                catalog,
                recipe,
                retrieval,
                assignments,
            },
            member,
        ) = self.treated(&request.user_id).await?;
        let personal = member.taste.is_some();
        // The default rows: top picks (for a member with a taste), "because you watched" rows
        // for the rest but one, and trending.
        let recipe = recipe.unwrap_or_else(|| {
            let mut rows_of = Vec::new();
            if personal {
                rows_of.push((RowKind::TopPicks, 1));
            }
            let seeded = rows.saturating_sub(if personal { 2 } else { 1 });
            if seeded > 0 {
                rows_of.push((RowKind::BecauseYouWatched, seeded));
            }
            rows_of.push((RowKind::Trending, 1));
            RowRecipe(rows_of)
        });
        // Titles the member has seen, and titles already placed in a row, are not shown again.
        // Nor are titles the member's feedback hides.
        let mut used = member.seen(&catalog);
        used.extend(member.hidden(&catalog));
        let mut out = Vec::new();
        let mut shown = self.logging().then(Vec::new);
        let mut row = |title: String,
                       kind: &'static str,
                       seed: &str,
                       items: Vec<Scored>,
                       used: &mut HashSet<u32>| {
            used.extend(items.iter().map(|s| s.index));
            if !items.is_empty() {
                if let Some(shown) = shown.as_mut() {
                    shown.push(ShownRow {
                        kind,
                        items: items.iter().map(|s| s.index).collect(),
                    });
                }
                out.push(Row {
                    title,
                    kind: kind.into(),
                    seed_item_id: seed.into(),
                    items: scored(&catalog, items),
                });
            }
        };
        check_deadline(deadline, "before scoring")?;
        // "Because you watched" rows take the newest distinct history items as seeds, in order.
        let mut seeds = member
            .history
            .iter()
            .rev()
            .filter_map(|e| catalog.index_of(&e.item_id));
        let mut seeded = HashSet::new();
        let pool = per_row + rules::extra_candidates(&self.rules);
        // What the member may be shown at all; each row also leaves out what earlier rows placed.
        let showable = Eligible {
            catalog: catalog.clone(),
            excluded: Arc::default(),
            country: country.map(str::to_string),
            maturity: catalog.maturity_filter(&self.maturity, member.max_maturity.as_deref()),
        };
        for (n, kind) in recipe.rows().enumerate() {
            if n > 0 {
                // Each row is a whole-catalog scan: give a cancelled request the chance to stop,
                // and stop a late one.
                tokio::task::yield_now().await;
                check_deadline(deadline, "between homepage rows")?;
            }
            let allowed = |used: &HashSet<u32>, i: u32| !used.contains(&i) && showable.allows(i);
            match kind {
                RowKind::TopPicks => {
                    if let Some(taste) = &member.taste {
                        let eligible = Eligible {
                            excluded: Arc::new(used.clone()),
                            ..showable.clone()
                        };
                        let items = self
                            .top_k(taste, per_row, &eligible, retrieval, deadline)
                            .await?;
                        row(
                            "Top picks for you".into(),
                            kind.name(),
                            "",
                            items,
                            &mut used,
                        );
                    }
                }
                RowKind::BecauseYouWatched => {
                    let Some(seed) = seeds.by_ref().find(|&i| seeded.insert(i)) else {
                        continue;
                    };
                    let items = rules::apply(
                        &self.rules,
                        &catalog,
                        self.similar(&catalog, seed, pool, retrieval, |i| allowed(&used, i))
                            .0,
                        per_row,
                        |_| None,
                        |i| allowed(&used, i),
                    );
                    let name = match catalog.title(seed) {
                        "" => catalog.item_id(seed),
                        t => t,
                    };
                    let seed_id = catalog.item_id(seed).to_string();
                    row(
                        format!("Because you watched {name}"),
                        kind.name(),
                        &seed_id,
                        items,
                        &mut used,
                    );
                }
                RowKind::Trending => {
                    let items = rules::apply(
                        &self.rules,
                        &catalog,
                        popular(&catalog, pool, |i| allowed(&used, i)),
                        per_row,
                        |_| None,
                        |i| allowed(&used, i),
                    );
                    row("Trending now".into(), kind.name(), "", items, &mut used);
                }
            }
        }
        out.truncate(rows);
        let shown = shown.map(|mut shown| {
            shown.truncate(rows);
            Shown {
                catalog: catalog.clone(),
                rows: shown,
            }
        });
        let answer = HomepageResponse {
            rows: out,
            model_version: catalog.version.clone(),
            vector_source: member.source as i32,
            degraded: member.degraded,
            request_id: request_id(),
            experiments: assignments,
        };
        Ok((answer, shown))
    }
}
