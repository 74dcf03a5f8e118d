//! The `recsys.v1.Ranking` service: one file per RPC (`rank`, `homepage`, `similar`), the checks
//! every request goes through (`request`), the state every request shares ([`Ranker`]) and the one
//! adapter from the ranking's domain error ([`RankError`]) to a gRPC status ([`RankingService`]).
//!
//! Every request carries the deadline the admission layer stamped on arrival
//! ([`RequestDeadline`]). Scoring is synchronous CPU work that no timer can interrupt, so the
//! deadline is checked before it starts and between the homepage's rows (which also yield, so a
//! request whose client hung up stops there), and an answer finished after its deadline is
//! `DEADLINE_EXCEEDED`, never a late `OK` nobody reads.

mod homepage;
mod rank;
pub mod request;
mod similar;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use recsys_shared::artifact::published::Taste;
use recsys_shared::config::{
    AnnSearchConfig, MaturityConfig, Retrieval, RulesConfig, ScanBatchConfig,
};
use recsys_shared::logs::LogEvery;
use recsys_shared::model::Scorer;
use recsys_shared::proto::v1::ranking_server::Ranking;
use recsys_shared::proto::v1::{
    ExperimentAssignment, HomepageRequest, HomepageResponse, RankRequest, RankResponse, ScoredItem,
    SimilarItemsRequest, SimilarItemsResponse,
};
use recsys_store::cache::FeatureReader;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::catalog::{Catalog, MaturityFilter};
use crate::experiments::{Experiments, RowRecipe};
use crate::impressions::{ImpressionLog, PendingImpression, Shown};
use crate::member::Member;
use crate::metrics::{experiment_work, EXPERIMENT_REQUESTS, RETRIEVALS, SIMILAR_RETRIEVALS};
use crate::retrieval::AnnRetrieval;
use crate::scan::{ScanError, ScanQueue};
use recsys_shared::model::top_k::Scored;
pub use request::limits;
use request::{check_deadline, deadline_exceeded, deadline_of};

/// Why the ranking could not answer; [`RankingService`] turns it into the gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankError {
    /// `INVALID_ARGUMENT`: a field of the request is wrong.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// `NOT_FOUND`: the request names something the model does not have.
    #[error("{field}: {problem}")]
    NotFound {
        field: &'static str,
        problem: String,
    },
    /// `UNAVAILABLE`: no model is loaded yet.
    #[error("no model loaded yet")]
    NoModel,
    /// `DEADLINE_EXCEEDED`: the request's deadline passed before the step.
    #[error("deadline exceeded {late_ms} ms ago, {step}")]
    DeadlineExceeded { late_ms: u128, step: &'static str },
    /// `RESOURCE_EXHAUSTED`: the scan queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// `INTERNAL`: the scan failed (logged where it failed).
    #[error("{0}")]
    Internal(String),
    /// `UNAVAILABLE`: a dependency (the events topic) did not take the request; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl From<RankError> for Status {
    fn from(error: RankError) -> Status {
        let message = error.to_string();
        match error {
            RankError::Invalid { .. } => Status::invalid_argument(message),
            RankError::NotFound { .. } => Status::not_found(message),
            RankError::NoModel => Status::unavailable(message),
            RankError::DeadlineExceeded { .. } => Status::deadline_exceeded(message),
            RankError::Overloaded(_) => Status::resource_exhausted(message),
            RankError::Internal(_) => Status::internal(message),
            RankError::Unavailable(_) => Status::unavailable(message),
        }
    }
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
    /// Rank leaves out the member's history unless the request says otherwise.
    exclude_seen: bool,
    /// Batched scans of member vectors (`online.batch`); `None`: each request scans inline.
    scans: Option<ScanQueue>,
    /// How member vectors find their items unless an experiment variant says otherwise.
    retrieval: Retrieval,
    ann: AnnRetrieval,
    /// The experiments file's path and its last refusal, for the console.
    experiments_file: std::sync::Mutex<ExperimentsFile>,
}

/// What the console shows of the experiments file beside the set in force.
#[derive(Debug, Clone, Default)]
pub struct ExperimentsFile {
    pub path: Option<std::path::PathBuf>,
    /// The last contents refused since the file in force was applied, why and when.
    pub refused: Option<ExperimentsRefusal>,
}

/// A refused experiments file.
#[derive(Debug, Clone)]
pub struct ExperimentsRefusal {
    pub text: String,
    pub error: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A failing item index fails every ANN request: logged once a second, with the count held back.
static INDEX_FAILED_LOG: std::sync::LazyLock<LogEvery> =
    std::sync::LazyLock::new(|| LogEvery::new(Duration::from_secs(1)));

/// The items one request may show: owned, so that a scan thread can ask it too.
#[derive(Clone)]
struct Eligible {
    catalog: Arc<Catalog>,
    /// Excluded by the request, seen or hidden by the member, or already placed in a row.
    excluded: Arc<HashSet<u32>>,
    country: Option<String>,
    maturity: Option<MaturityFilter>,
}

impl Eligible {
    fn allows(&self, i: u32) -> bool {
        !self.excluded.contains(&i)
            && self.catalog.available(i, self.country.as_deref())
            && self.catalog.maturity_allows(self.maturity.as_ref(), i)
    }
}

/// The experiments in force and the catalogs of the model versions their variants name (each
/// loaded and verified like `CURRENT`'s).
#[derive(Default)]
pub struct ExperimentSet {
    pub experiments: Experiments,
    /// The file's text, as it was put in force; `None` when no file is.
    pub text: Option<String>,
    pub catalogs: HashMap<String, Arc<Catalog>>,
}

/// What the member's experiments decide for one request.
struct Treatment {
    catalog: Arc<Catalog>,
    recipe: Option<RowRecipe>,
    retrieval: Retrieval,
    assignments: Vec<ExperimentAssignment>,
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn scored(catalog: &Catalog, items: impl IntoIterator<Item = Scored>) -> Vec<ScoredItem> {
    items
        .into_iter()
        .map(|s| ScoredItem {
            item_id: catalog.item_id(s.index).to_owned(),
            score: s.score,
            title: catalog.title(s.index).to_string(),
        })
        .collect()
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
            exclude_seen: true,
            scans: None,
            retrieval: Retrieval::Exact,
            ann: AnnRetrieval::new(&AnnSearchConfig::default()),
            experiments_file: Default::default(),
        }
    }

    /// The business rules every list goes through.
    pub fn rules(&self) -> &RulesConfig {
        &self.rules
    }

    /// Whether Rank leaves out the member's history when a request does not say.
    pub fn excludes_seen(&self) -> bool {
        self.exclude_seen
    }

    /// The experiments file's path and its last refusal.
    pub fn experiments_file(&self) -> ExperimentsFile {
        self.experiments_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the experiments file's path and whether its latest contents were refused
    /// (`None`: put in force or removed).
    pub fn set_experiments_file(
        &self,
        path: &std::path::Path,
        refused: Option<ExperimentsRefusal>,
    ) {
        let mut file = self
            .experiments_file
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        file.path = Some(path.to_path_buf());
        file.refused = refused;
    }

    /// Scores member vectors in batched scans (`online.batch`; off unless `enabled`).
    pub fn with_scan_batches(mut self, config: &ScanBatchConfig) -> Self {
        self.scans = config.enabled.then(|| ScanQueue::start(config));
        self
    }

    /// The member's `k` best items among the `eligible` ones by the catalog's scorer: a vector
    /// from the item index with `Retrieval::Ann` when the version has one, else through the
    /// batched scan when it is on, otherwise scored here.
    async fn top_k(
        &self,
        taste: &Taste,
        k: usize,
        eligible: &Eligible,
        retrieval: Retrieval,
        deadline: Instant,
    ) -> Result<Vec<Scored>, RankError> {
        let catalog = &eligible.catalog;
        if let (Taste::Vector(vector), Scorer::Factors(items)) = (taste, &catalog.model.scorer) {
            let fallback = match (retrieval, &catalog.model.item_index) {
                (Retrieval::Exact, _) => "",
                (Retrieval::Ann, None) => "no_index",
                (Retrieval::Ann, Some(index)) => {
                    match self
                        .ann
                        .top_k(index, items, vector, k, |i| eligible.allows(i))
                    {
                        Ok(found) => {
                            RETRIEVALS.with_label_values(&["ann", ""]).inc();
                            let filter = eligible.clone();
                            self.ann.sample_recall(
                                catalog.clone(),
                                vector.clone(),
                                k,
                                &found,
                                move |i| filter.allows(i),
                            );
                            return Ok(found);
                        }
                        Err(why) => {
                            if let Some(held_back) = INDEX_FAILED_LOG.check() {
                                tracing::warn!(version = %catalog.version, held_back, "item index search failed, scanning: {why}");
                            }
                            "failed"
                        }
                    }
                }
            };
            RETRIEVALS.with_label_values(&["exact", fallback]).inc();
        }
        if let (Some(scans), Taste::Vector(vector), Scorer::Factors(_)) =
            (&self.scans, taste, &catalog.model.scorer)
        {
            let filter = eligible.clone();
            return scans
                .top_k(
                    catalog.clone(),
                    vector.clone(),
                    k,
                    Box::new(move |i| filter.allows(i)),
                    deadline.into_std(),
                )
                .await
                .map_err(|e| match e {
                    ScanError::DeadlineExceeded => RankError::DeadlineExceeded {
                        late_ms: 0,
                        step: "waiting for the scan",
                    },
                    ScanError::Full => RankError::Overloaded(e.to_string()),
                    ScanError::Failed(why) => RankError::Internal(why),
                });
        }
        Ok(catalog
            .model
            .scorer
            .top_k(taste.input(), k, |i| eligible.allows(i)))
    }

    /// The `k` items most like item `seed` among those `allowed`: from the version's
    /// similar-items index with `Retrieval::Ann` when it has one (iALS), else by the scorer's
    /// own scan; and whether they came from the index.
    fn similar(
        &self,
        catalog: &Catalog,
        seed: u32,
        k: usize,
        retrieval: Retrieval,
        allowed: impl Fn(u32) -> bool,
    ) -> (Vec<Scored>, bool) {
        if let (Retrieval::Ann, Scorer::Factors(items)) = (retrieval, &catalog.model.scorer) {
            let fallback = match &catalog.model.similar_index {
                None => "no_index",
                Some(index) => match self.ann.similar(index, items, seed, k, &allowed) {
                    Ok(found) => {
                        SIMILAR_RETRIEVALS.with_label_values(&["ann", ""]).inc();
                        return (found, true);
                    }
                    Err(why) => {
                        if let Some(held_back) = INDEX_FAILED_LOG.check() {
                            tracing::warn!(version = %catalog.version, held_back, "similar-items index search failed, scanning: {why}");
                        }
                        "failed"
                    }
                },
            };
            SIMILAR_RETRIEVALS
                .with_label_values(&["exact", fallback])
                .inc();
        }
        (catalog.model.scorer.similar(seed, k, allowed), false)
    }

    /// How member vectors find their items (`online.retrieval`, `online.ann`).
    pub fn with_retrieval(mut self, retrieval: Retrieval, ann: &AnnSearchConfig) -> Self {
        self.retrieval = retrieval;
        self.ann = AnnRetrieval::new(ann);
        self
    }

    /// Whether Rank leaves out the member's history when a request does not say.
    pub fn with_exclude_seen(mut self, exclude_seen: bool) -> Self {
        self.exclude_seen = exclude_seen;
        self
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
    fn treatment(&self, user_id: &str) -> Result<Treatment, RankError> {
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
        let retrieval = assigned
            .iter()
            .find_map(|a| a.variant.retrieval)
            .unwrap_or(self.retrieval);
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
            retrieval,
            assignments,
        })
    }

    /// The member's treatment and, for the catalog it chooses, the member.
    async fn treated(&self, user_id: &str) -> Result<(Treatment, Member), RankError> {
        let treatment = self.treatment(user_id)?;
        let member =
            Member::look_up(&self.reader, &self.maturity, &treatment.catalog, user_id).await;
        Ok((treatment, member))
    }

    pub fn reader(&self) -> &FeatureReader {
        &self.reader
    }

    fn serving(&self) -> Result<Arc<Catalog>, RankError> {
        self.catalog.load_full().ok_or(RankError::NoModel)
    }

    /// Runs one RPC under the request's deadline. Its status and latency are recorded by the
    /// admission layer, which sees every answer.
    async fn within<T>(
        &self,
        deadline: Instant,
        work: impl Future<Output = Result<T, RankError>>,
    ) -> Result<Response<T>, RankError> {
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

impl Ranker {
    /// Rank as every transport answers it: within the deadline, the impression logged.
    pub(crate) async fn answer_rank(
        &self,
        request: RankRequest,
        deadline: Instant,
    ) -> Result<RankResponse, RankError> {
        let user_id = request.user_id.clone();
        let (answer, shown) = self
            .within(deadline, self.rank(request, deadline))
            .await?
            .into_inner();
        self.log_impression(
            "rank",
            user_id,
            &answer.request_id,
            &answer.experiments,
            shown,
        );
        Ok(answer)
    }

    /// Homepage as every transport answers it: within the deadline, the impression logged.
    pub(crate) async fn answer_homepage(
        &self,
        request: HomepageRequest,
        deadline: Instant,
    ) -> Result<HomepageResponse, RankError> {
        let user_id = request.user_id.clone();
        let (answer, shown) = self
            .within(deadline, self.homepage(request, deadline))
            .await?
            .into_inner();
        self.log_impression(
            "homepage",
            user_id,
            &answer.request_id,
            &answer.experiments,
            shown,
        );
        Ok(answer)
    }

    /// Homepage as the member would see it, for the console's preview: the same answer, but no
    /// impression logged (a look from the console is not a member's page view).
    pub(crate) async fn preview_homepage(
        &self,
        request: HomepageRequest,
    ) -> Result<HomepageResponse, RankError> {
        let deadline = Instant::now() + self.max_request;
        Ok(self
            .within(deadline, self.homepage(request, deadline))
            .await?
            .into_inner()
            .0)
    }

    /// SimilarItems as every transport answers it, within the deadline.
    pub(crate) async fn answer_similar_items(
        &self,
        request: SimilarItemsRequest,
        deadline: Instant,
    ) -> Result<SimilarItemsResponse, RankError> {
        Ok(self
            .within(deadline, self.similar_items(request, deadline))
            .await?
            .into_inner())
    }
}

#[tonic::async_trait]
impl Ranking for RankingService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let deadline = deadline_of(&request, self.0.max_request);
        let answer = self.0.answer_rank(request.into_inner(), deadline).await?;
        Ok(Response::new(answer))
    }

    async fn homepage(
        &self,
        request: Request<HomepageRequest>,
    ) -> Result<Response<HomepageResponse>, Status> {
        let deadline = deadline_of(&request, self.0.max_request);
        let answer = self
            .0
            .answer_homepage(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(answer))
    }

    async fn similar_items(
        &self,
        request: Request<SimilarItemsRequest>,
    ) -> Result<Response<SimilarItemsResponse>, Status> {
        let deadline = deadline_of(&request, self.0.max_request);
        let answer = self
            .0
            .answer_similar_items(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(answer))
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
        let status = Status::from(ranker.within(passed, async { Ok(()) }).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        // Work that outlives the deadline (synchronous scoring cannot be interrupted) ends as
        // DEADLINE_EXCEEDED too.
        let soon = Instant::now() + Duration::from_millis(20);
        let status = Status::from(
            ranker
                .within(soon, async {
                    std::thread::sleep(Duration::from_millis(40));
                    Ok(())
                })
                .await
                .unwrap_err(),
        );
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(ranker
            .within(Instant::now() + Duration::from_secs(1), async { Ok(()) })
            .await
            .is_ok());
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
            exclude_seen in proptest::option::of(proptest::bool::ANY),
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
            for status in [ranked.err(), homepage.err(), similar.err()].into_iter().flatten().map(Status::from) {
                proptest::prop_assert!(
                    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound),
                    "{status:?}"
                );
                proptest::prop_assert!(status.message().contains(": "), "{}", status.message());
            }
        }
    }
}
