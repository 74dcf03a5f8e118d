//! The `recsys.v1.Ranking` service: request validation, the member's vector (cache → store →
//! fold-in → cold start), whole-catalog scoring and the homepage rows.
//!
//! Every request carries the deadline the admission layer stamped on arrival
//! ([`RequestDeadline`]). Scoring is synchronous CPU work that no timer can interrupt, so the
//! deadline is checked before it starts and between the homepage's rows (which also yield, so a
//! request whose client hung up stops there), and an answer finished after its deadline is
//! `DEADLINE_EXCEEDED`, never a late `OK` nobody reads.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use recsys_shared::ids::{id_problem, quote};
use recsys_shared::logs::LogEvery;
use recsys_shared::proto::v1::ranking_server::Ranking;
use recsys_shared::proto::v1::{
    ExperimentAssignment, HomepageRequest, HomepageResponse, RankRequest, RankResponse, Row,
    ScoredItem, SimilarItemsRequest, SimilarItemsResponse, VectorSource,
};
use recsys_store::cache::{FeatureReader, Source};
use recsys_store::features::HistoryEntry;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::admission::RequestDeadline;
use crate::catalog::Catalog;
use crate::experiments::{Experiments, RowKind, RowRecipe};
use crate::impressions::{ImpressionLog, PendingImpression, Shown, ShownRow};
use crate::metrics::{experiment_work, EXPERIMENT_REQUESTS, VECTOR_SOURCES};
use crate::rules;
use crate::scoring::Scored;
use recsys_shared::config::{MaturityConfig, RulesConfig};

/// The store-unavailable warning, at most once a second (it would otherwise repeat per request).
static STORE_DOWN_LOG: LazyLock<LogEvery> = LazyLock::new(|| LogEvery::new(Duration::from_secs(1)));

/// Request limits; a request beyond one is answered `INVALID_ARGUMENT` naming the field.
pub mod limits {
    pub const MAX_K: u64 = 1000;
    pub const DEFAULT_K: u64 = 20;
    pub const MAX_EXCLUDED: usize = 1000;
    pub const MAX_ROWS: u64 = 20;
    pub const DEFAULT_ROWS: u64 = 3;
    pub const MAX_ITEMS_PER_ROW: u64 = 100;
    pub const DEFAULT_ITEMS_PER_ROW: u64 = 10;
}

/// State shared by every request: the catalog being served, the experiments with the model
/// versions their variants pin, and the feature read path.
pub struct Ranker {
    catalog: ArcSwapOption<Catalog>,
    experiments: ArcSwap<ExperimentSet>,
    reader: FeatureReader,
    max_request: Duration,
    impressions: Option<ImpressionLog>,
    rules: RulesConfig,
    maturity: MaturityConfig,
}

/// The experiments in force and the catalogs of the model versions their variants name (each
/// loaded and verified like `CURRENT`'s).
#[derive(Default)]
pub struct ExperimentSet {
    pub experiments: Experiments,
    pub catalogs: HashMap<String, Arc<Catalog>>,
}

/// What the member's experiments decide for one request.
struct Treatment {
    catalog: Arc<Catalog>,
    recipe: Option<RowRecipe>,
    assignments: Vec<ExperimentAssignment>,
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A member as the ranking sees them.
struct Member {
    vector: Option<Vec<f32>>,
    history: Vec<HistoryEntry>,
    /// Items the member's negative feedback hides now (`nearline.feedback`).
    hidden: Vec<String>,
    /// The most mature rating the member's profile allows; `None` = unrestricted.
    max_maturity: Option<String>,
    source: VectorSource,
    degraded: bool,
}

/// A short, stable, non-reversible tag for a member id in logs.
pub fn member_tag(user_id: &str) -> String {
    hex::encode(&Sha256::digest(user_id.as_bytes())[..6])
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    match id_problem(id) {
        Some(problem) => Err(invalid(field, problem)),
        None => Ok(()),
    }
}

fn check_country(country: &str) -> Result<Option<String>, Status> {
    if country.is_empty() {
        return Ok(None);
    }
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(invalid(
            "country",
            format!(
                "{} is not an ISO 3166-1 alpha-2 code such as \"US\"",
                quote(country)
            ),
        ));
    }
    Ok(Some(country.to_ascii_uppercase()))
}

fn bounded(field: &str, value: u64, default: u64, max: u64) -> Result<usize, Status> {
    match value {
        0 => Ok(default as usize),
        v if v > max => Err(invalid(
            field,
            format!("{v} is more than the limit of {max}"),
        )),
        v => Ok(v as usize),
    }
}

fn deadline_exceeded(deadline: Instant, step: &str) -> Status {
    Status::deadline_exceeded(format!(
        "deadline exceeded {} ms ago, {step}",
        Instant::now()
            .saturating_duration_since(deadline)
            .as_millis()
    ))
}

/// `DEADLINE_EXCEEDED` once `deadline` has passed: called before each costly step.
fn check_deadline(deadline: Instant, step: &str) -> Result<(), Status> {
    if Instant::now() >= deadline {
        return Err(deadline_exceeded(deadline, step));
    }
    Ok(())
}

/// The deadline the admission layer stamped, or (a request that did not come through it) one
/// from now.
fn deadline_of<T>(request: &Request<T>, max: Duration) -> Instant {
    request
        .extensions()
        .get::<RequestDeadline>()
        .map_or_else(|| Instant::now() + max, |d| d.0)
}

fn scored(catalog: &Catalog, items: impl IntoIterator<Item = Scored>) -> Vec<ScoredItem> {
    items
        .into_iter()
        .map(|s| ScoredItem {
            item_id: catalog.item_ids[s.index as usize].clone(),
            score: s.score,
            title: catalog.title(s.index).to_string(),
        })
        .collect()
}

impl Ranker {
    pub fn new(reader: FeatureReader, max_request: Duration) -> Self {
        Ranker {
            catalog: ArcSwapOption::empty(),
            experiments: ArcSwap::from_pointee(ExperimentSet::default()),
            reader,
            max_request,
            impressions: None,
            rules: RulesConfig::default(),
            maturity: MaturityConfig::default(),
        }
    }

    /// Orders the catalog's maturity ratings for the per-member maturity filter.
    pub fn with_maturity(mut self, maturity: MaturityConfig) -> Self {
        self.maturity = maturity;
        self
    }

    /// Applies `rules` (pin, boost, bury) to every list after scoring.
    pub fn with_rules(mut self, rules: RulesConfig) -> Self {
        self.rules = rules;
        self
    }

    /// Logs every answer's impressions to `log` (see [`crate::impressions`]).
    pub fn with_impressions(mut self, log: Option<ImpressionLog>) -> Self {
        self.impressions = log;
        self
    }

    /// The impression log, when impressions are on.
    pub fn impressions(&self) -> Option<&ImpressionLog> {
        self.impressions.as_ref()
    }

    /// Whether this answer's impression is to be logged.
    fn logging(&self) -> bool {
        self.impressions
            .as_ref()
            .is_some_and(ImpressionLog::sampled)
    }

    /// Logs what an answer showed (an answer that reached the client: late ones are not).
    fn log_impression(
        &self,
        rpc: &'static str,
        user_id: String,
        request_id: &str,
        experiments: &[ExperimentAssignment],
        shown: Option<Shown>,
    ) {
        let (Some(log), Some(shown)) = (&self.impressions, shown) else {
            return;
        };
        let started = std::time::Instant::now();
        log.log(PendingImpression {
            request_id: request_id.to_string(),
            user_id,
            ts_ms: chrono::Utc::now().timestamp_millis(),
            rpc,
            experiments: experiments.to_vec(),
            shown,
        });
        experiment_work("impressions", started);
    }

    /// The catalog being served, if any.
    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog.load_full()
    }

    /// Swaps in a new catalog; requests in flight finish on the one they hold.
    pub fn swap(&self, catalog: Arc<Catalog>) -> Option<Arc<Catalog>> {
        self.catalog.swap(Some(catalog))
    }

    /// The experiments in force.
    pub fn experiments(&self) -> Arc<ExperimentSet> {
        self.experiments.load_full()
    }

    /// Puts a new experiment set in force; requests in flight finish on the one they hold.
    pub fn set_experiments(&self, set: ExperimentSet) {
        self.experiments.store(Arc::new(set));
    }

    /// The member's experiments: the model and row recipe their variants choose (the first
    /// experiment in file order that sets each wins), and the assignments to report.
    fn treatment(&self, user_id: &str) -> Result<Treatment, Status> {
        let started = std::time::Instant::now();
        let set = self.experiments.load();
        let assigned = set.experiments.assign(user_id);
        let pinned = assigned.iter().find_map(|a| {
            let version = a.variant.model_version.as_ref()?;
            set.catalogs.get(version).cloned()
        });
        let catalog = match pinned {
            Some(catalog) => catalog,
            None => self.serving()?,
        };
        let recipe = assigned.iter().find_map(|a| a.variant.recipe.clone());
        let assignments = assigned
            .iter()
            .map(|a| {
                EXPERIMENT_REQUESTS
                    .with_label_values(&[&a.experiment.name, &a.variant.name])
                    .inc();
                ExperimentAssignment {
                    experiment: a.experiment.name.clone(),
                    variant: a.variant.name.clone(),
                }
            })
            .collect();
        experiment_work("allocation", started);
        Ok(Treatment {
            catalog,
            recipe,
            assignments,
        })
    }

    pub fn reader(&self) -> &FeatureReader {
        &self.reader
    }

    fn serving(&self) -> Result<Arc<Catalog>, Status> {
        self.catalog
            .load_full()
            .ok_or_else(|| Status::unavailable("no model loaded yet"))
    }

    /// The member's vector for `catalog`: a stored one of this model, else folded in from the
    /// history, else none (cold start). A store failure degrades to cold start.
    async fn member(&self, catalog: &Catalog, user_id: &str) -> Member {
        let (features, source) = match self.reader.get(user_id).await {
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
                    max_maturity: self.maturity.when_store_unavailable.clone(),
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

    fn count_source(member: &Member) {
        let label = match member.source {
            VectorSource::Cache => "cache",
            VectorSource::Store => "store",
            VectorSource::FoldIn => "fold_in",
            _ => "cold_start",
        };
        VECTOR_SOURCES.with_label_values(&[label]).inc();
    }

    /// The popularity ranking among `allowed` items.
    fn popular(catalog: &Catalog, k: usize, allowed: impl Fn(u32) -> bool) -> Vec<Scored> {
        catalog
            .popularity
            .iter()
            .filter(|(i, _)| allowed(*i))
            .take(k)
            .map(|&(index, score)| Scored { index, score })
            .collect()
    }

    fn seen(catalog: &Catalog, history: &[HistoryEntry]) -> HashSet<u32> {
        history
            .iter()
            .filter_map(|e| catalog.index.get(&e.item_id).copied())
            .collect()
    }

    /// The catalog indexes of the items the member's feedback hides.
    fn hidden<'a>(catalog: &'a Catalog, member: &'a Member) -> impl Iterator<Item = u32> + 'a {
        member
            .hidden
            .iter()
            .filter_map(|id| catalog.index.get(id).copied())
    }

    /// The ranking, and what it shows when its impression is logged.
    async fn rank(
        &self,
        request: RankRequest,
        deadline: Instant,
    ) -> Result<(RankResponse, Option<Shown>), Status> {
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
        let Treatment {
            catalog,
            assignments,
            ..
        } = self.treatment(&request.user_id)?;
        let member = self.member(&catalog, &request.user_id).await;
        Self::count_source(&member);
        let mut excluded: HashSet<u32> = request
            .exclude_item_ids
            .iter()
            .filter_map(|id| catalog.index.get(id).copied())
            .collect();
        if request.exclude_seen {
            excluded.extend(Self::seen(&catalog, &member.history));
        }
        excluded.extend(Self::hidden(&catalog, &member));
        let country = country.as_deref();
        let maturity = catalog.maturity_filter(&self.maturity, member.max_maturity.as_deref());
        let allowed = |i: u32| {
            !excluded.contains(&i)
                && catalog.available(i, country)
                && catalog.maturity_allows(maturity.as_ref(), i)
        };
        check_deadline(deadline, "before scoring")?;
        let pool = k + rules::extra_candidates(&self.rules);
        let items = match &member.vector {
            Some(vector) => rules::apply(
                &self.rules,
                &catalog,
                catalog.items.top_k(vector, pool, allowed),
                k,
                |i| Some(catalog.items.score(i as usize, vector)),
                allowed,
            ),
            None => rules::apply(
                &self.rules,
                &catalog,
                Self::popular(&catalog, pool, allowed),
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

    /// The homepage, and what it shows when its impression is logged.
    async fn homepage(
        &self,
        request: HomepageRequest,
        deadline: Instant,
    ) -> Result<(HomepageResponse, Option<Shown>), Status> {
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
        let Treatment {
            catalog,
            recipe,
            assignments,
        } = self.treatment(&request.user_id)?;
        let member = self.member(&catalog, &request.user_id).await;
        Self::count_source(&member);
        let personal = member.vector.is_some();
        // The default rows: top picks (for a member with a vector), "because you watched" rows
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
        let mut used = Self::seen(&catalog, &member.history);
        used.extend(Self::hidden(&catalog, &member));
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
            .filter_map(|e| catalog.index.get(&e.item_id).copied());
        let mut seeded = HashSet::new();
        let pool = per_row + rules::extra_candidates(&self.rules);
        let maturity = catalog.maturity_filter(&self.maturity, member.max_maturity.as_deref());
        for (n, kind) in recipe.rows().enumerate() {
            if n > 0 {
                // Each row is a whole-catalog scan: give a cancelled request the chance to stop,
                // and stop a late one.
                tokio::task::yield_now().await;
                check_deadline(deadline, "between homepage rows")?;
            }
            let allowed = |used: &HashSet<u32>, i: u32| {
                !used.contains(&i)
                    && catalog.available(i, country)
                    && catalog.maturity_allows(maturity.as_ref(), i)
            };
            match kind {
                RowKind::TopPicks => {
                    if let Some(vector) = &member.vector {
                        let items = catalog.items.top_k(vector, per_row, |i| allowed(&used, i));
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
                        catalog
                            .items
                            .similar(seed as usize, pool, |i| allowed(&used, i)),
                        per_row,
                        |_| None,
                        |i| allowed(&used, i),
                    );
                    let name = match catalog.title(seed) {
                        "" => catalog.item_ids[seed as usize].as_str(),
                        t => t,
                    };
                    let seed_id = catalog.item_ids[seed as usize].clone();
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
                        Self::popular(&catalog, pool, |i| allowed(&used, i)),
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

    async fn similar_items(
        &self,
        request: SimilarItemsRequest,
        deadline: Instant,
    ) -> Result<SimilarItemsResponse, Status> {
        check_id("item_id", &request.item_id)?;
        let k = bounded("k", request.k, limits::DEFAULT_K, limits::MAX_K)?;
        let catalog = self.serving()?;
        let Some(&index) = catalog.index.get(&request.item_id) else {
            return Err(Status::not_found(format!(
                "item_id: {} is not in model {}",
                quote(&request.item_id),
                catalog.version
            )));
        };
        check_deadline(deadline, "before scoring")?;
        let items = catalog.items.similar(index as usize, k, |_| true);
        Ok(SimilarItemsResponse {
            items: scored(&catalog, items),
            model_version: catalog.version.clone(),
        })
    }

    /// Runs one RPC under the request's deadline. Its status and latency are recorded by the
    /// admission layer, which sees every answer.
    async fn within<T>(
        &self,
        deadline: Instant,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        check_deadline(deadline, "before the request started")?;
        let answer = match tokio::time::timeout_at(deadline, work).await {
            Ok(answer) => answer?,
            Err(_) => return Err(deadline_exceeded(deadline, "waiting on the feature store")),
        };
        // Finished, but too late: the client has given up, and a late OK would count as served.
        check_deadline(deadline, "when the answer was ready")?;
        Ok(Response::new(answer))
    }
}

/// The tonic service over a shared [`Ranker`].
#[derive(Clone)]
pub struct RankingService(pub Arc<Ranker>);

#[tonic::async_trait]
impl Ranking for RankingService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let deadline = deadline_of(&request, self.0.max_request);
        let request = request.into_inner();
        let user_id = request.user_id.clone();
        let (answer, shown) = self
            .0
            .within(deadline, self.0.rank(request, deadline))
            .await?
            .into_inner();
        self.0.log_impression(
            "rank",
            user_id,
            &answer.request_id,
            &answer.experiments,
            shown,
        );
        Ok(Response::new(answer))
    }

    async fn homepage(
        &self,
        request: Request<HomepageRequest>,
    ) -> Result<Response<HomepageResponse>, Status> {
        let deadline = deadline_of(&request, self.0.max_request);
        let request = request.into_inner();
        let user_id = request.user_id.clone();
        let (answer, shown) = self
            .0
            .within(deadline, self.0.homepage(request, deadline))
            .await?
            .into_inner();
        self.0.log_impression(
            "homepage",
            user_id,
            &answer.request_id,
            &answer.experiments,
            shown,
        );
        Ok(Response::new(answer))
    }

    async fn similar_items(
        &self,
        request: Request<SimilarItemsRequest>,
    ) -> Result<Response<SimilarItemsResponse>, Status> {
        let deadline = deadline_of(&request, self.0.max_request);
        self.0
            .within(
                deadline,
                self.0.similar_items(request.into_inner(), deadline),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_past_its_deadline_is_deadline_exceeded_not_a_late_ok() {
        let dir = tempfile::tempdir().unwrap();
        let ranker = Ranker::new(
            FeatureReader::from_config(
                recsys_store::features::FeatureStore::new(
                    Arc::new(recsys_store::EmbeddedStore::open(dir.path()).unwrap()),
                    10,
                ),
                &Default::default(),
                &Default::default(),
            ),
            Duration::from_secs(5),
        );
        let passed = Instant::now() - Duration::from_millis(1);
        let status = ranker.within(passed, async { Ok(()) }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        // Work that outlives the deadline (synchronous scoring cannot be interrupted) ends as
        // DEADLINE_EXCEEDED too.
        let soon = Instant::now() + Duration::from_millis(20);
        let status = ranker
            .within(soon, async {
                std::thread::sleep(Duration::from_millis(40));
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(ranker
            .within(Instant::now() + Duration::from_secs(1), async { Ok(()) })
            .await
            .is_ok());
    }

    #[test]
    fn limits_name_the_field() {
        assert_eq!(bounded("k", 0, 20, 1000).unwrap(), 20);
        let e = bounded("k", 1001, 20, 1000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let huge = bounded("k", (1 << 32) + 5, 20, 1000).unwrap_err();
        assert!(
            huge.message().starts_with("k: 4294967301 "),
            "{}",
            huge.message()
        );
        assert!(e.message().starts_with("k: "), "{}", e.message());
        assert_eq!(check_country("us").unwrap().as_deref(), Some("US"));
        assert!(check_country("USA")
            .unwrap_err()
            .message()
            .starts_with("country: "));
        assert!(check_id("user_id", "")
            .unwrap_err()
            .message()
            .starts_with("user_id: "));
        assert_eq!(member_tag("m1"), member_tag("m1"));
        assert_ne!(member_tag("m1"), member_tag("m2"));
    }

    /// One ranker over a small synthetic model, shared by the fuzz cases.
    fn fuzz_ranker() -> &'static (tempfile::TempDir, Arc<Ranker>, tokio::runtime::Runtime) {
        static RANKER: std::sync::OnceLock<(
            tempfile::TempDir,
            Arc<Ranker>,
            tokio::runtime::Runtime,
        )> = std::sync::OnceLock::new();
        RANKER.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("models");
            let version =
                recsys_shared::artifact::synthetic::synthetic_model(&root, 50, 5, 4, 3).unwrap();
            let store = recsys_store::EmbeddedStore::open(&dir.path().join("store")).unwrap();
            let ranker = Ranker::new(
                FeatureReader::from_config(
                    recsys_store::features::FeatureStore::new(Arc::new(store), 10),
                    &Default::default(),
                    &Default::default(),
                ),
                Duration::from_secs(5),
            );
            let catalog =
                Catalog::load(&recsys_shared::artifact::ModelRoot::new(&root), &version).unwrap();
            ranker.swap(Arc::new(catalog));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            (dir, Arc::new(ranker), runtime)
        })
    }

    proptest::proptest! {
        /// Fuzzing request validation: whatever the fields hold, an answer is a ranking or
        /// INVALID_ARGUMENT / NOT_FOUND naming a field — never a panic or another code.
        /// `PROPTEST_CASES=100000` runs it longer.
        #[test]
        fn fuzz_requests_are_answered_or_refused_naming_the_field(
            user in "\\PC{0,300}",
            k in proptest::num::u64::ANY,
            rows in 0u64..40,
            country in "\\PC{0,4}",
            excluded in proptest::collection::vec("\\PC{0,20}", 0..4),
            exclude_seen in proptest::bool::ANY,
        ) {
            let (_, ranker, runtime) = fuzz_ranker();
            let deadline = Instant::now() + Duration::from_secs(5);
            let ranked = runtime.block_on(ranker.rank(
                RankRequest {
                    user_id: user.clone(),
                    k,
                    country: country.clone(),
                    exclude_item_ids: excluded,
                    exclude_seen,
                },
                deadline,
            ));
            let homepage = runtime.block_on(ranker.homepage(
                HomepageRequest { user_id: user.clone(), rows, items_per_row: k, country },
                deadline,
            ));
            let similar = runtime.block_on(ranker.similar_items(
                SimilarItemsRequest { item_id: user, k },
                deadline,
            ));
            for status in [ranked.err(), homepage.err(), similar.err()].into_iter().flatten() {
                proptest::prop_assert!(
                    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound),
                    "{status:?}"
                );
                proptest::prop_assert!(status.message().contains(": "), "{}", status.message());
            }
        }
    }
}
