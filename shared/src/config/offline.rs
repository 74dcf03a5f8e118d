//! `[offline]`: the batch jobs — the engine, the feature jobs, iALS, tuning, evaluation and the
//! publish gate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{first_problem, range_ok, within};
use crate::model::Family;

/// The offline tier: feature jobs, training, evaluation and the publish gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Where the feature jobs' SQL runs. Default `local`.
    pub engine: Engine,
    pub ballista: BallistaConfig,
    pub features: FeatureConfig,
    /// The model family trained: `auto`, `ials`, `ease`, `item_knn` or `bspm`. Default `auto`:
    /// EASE up to `auto_ease_max_items` items (when its dense training fits in memory), iALS
    /// beyond.
    pub family: FamilyChoice,
    /// With `family = "auto"`, the largest catalog EASE is trained on; iALS beyond. EASE's
    /// training holds a dense items × items matrix: 50,000 items take about 11 GiB and a quarter
    /// of an hour on two cores. Default 50,000.
    pub auto_ease_max_items: usize,
    pub als: AlsConfig,
    pub ease: EaseConfig,
    pub item_knn: ItemKnnConfig,
    pub bspm: BspmConfig,
    pub evaluation: EvaluationConfig,
    pub publish: PublishConfig,
    pub tuning: TuningConfig,
    pub ann_index: AnnIndexConfig,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            engine: Engine::default(),
            ballista: BallistaConfig::default(),
            features: FeatureConfig::default(),
            family: FamilyChoice::default(),
            auto_ease_max_items: 50_000,
            als: AlsConfig::default(),
            ease: EaseConfig::default(),
            item_knn: ItemKnnConfig::default(),
            bspm: BspmConfig::default(),
            evaluation: EvaluationConfig::default(),
            publish: PublishConfig::default(),
            tuning: TuningConfig::default(),
            ann_index: AnnIndexConfig::default(),
        }
    }
}

/// The approximate nearest-neighbour index an iALS version is published with, for servers with
/// `online.retrieval = "ann"` (`[offline.ann_index]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnIndexConfig {
    /// Build the index at all. Default true.
    pub enabled: bool,
    /// Only for catalogs of at least this many items (below it an exact scan is about as fast,
    /// and building costs nothing worth saving either way; 0: always). Default 100,000.
    pub min_items: usize,
    /// Links per item in the graph (HNSW's M): more finds more of the true top at a higher cost
    /// in memory (8 bytes per link) and build time. Default 16.
    pub connectivity: usize,
    /// Candidates kept while linking an item (efConstruction): more costs build time linearly
    /// and buys little recall once the graph is well linked. Default 64.
    pub expansion_add: usize,
    /// Candidates kept while linking an item into the similar-items index: one graph over the
    /// whole catalog (unit rows have one norm), which needs wider linking than the item index's
    /// norm ranges for the same recall. Default 128.
    pub similar_expansion_add: usize,
    /// Threads that build it; 0 means every core. Default 0.
    pub threads: usize,
    /// Also publish the similar-items index (the same graphs over the factors scaled to length
    /// 1, `similar_index.ann`), which `SimilarItems` and the "because you watched" rows search
    /// with `online.retrieval = "ann"`: about as large and as long to build as the item index.
    /// Default true.
    pub similar_items: bool,
}

impl Default for AnnIndexConfig {
    fn default() -> Self {
        AnnIndexConfig {
            enabled: true,
            min_items: 100_000,
            connectivity: 16,
            expansion_add: 64,
            similar_expansion_add: 128,
            threads: 0,
            similar_items: true,
        }
    }
}

impl AnnIndexConfig {
    /// Whether a catalog of `items` gets an index.
    pub fn wanted(&self, items: usize) -> bool {
        self.enabled && items >= self.min_items
    }
}

/// The query engine of the feature jobs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// DataFusion in the job's own process.
    #[default]
    Local,
    /// An Apache Ballista cluster (`[offline.ballista]`): the same SQL, run by its executors.
    Ballista,
}

/// The Ballista cluster the feature jobs use when `offline.engine = "ballista"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BallistaConfig {
    /// The scheduler, `df://host:port`. Default `df://127.0.0.1:50050`.
    pub scheduler: String,
}

impl Default for BallistaConfig {
    fn default() -> Self {
        BallistaConfig {
            scheduler: "df://127.0.0.1:50050".into(),
        }
    }
}

/// The search space and schedule of `recsys offline tune` (`[offline.tuning]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TuningConfig {
    /// Settings drawn at the start (the first rung). Default 24.
    pub trials: usize,
    /// Iterations of the first rung. Default 2.
    pub min_iterations: usize,
    /// Iterations of the last rung. Default 16.
    pub max_iterations: usize,
    /// Each rung keeps the best `1/eta` and multiplies their iterations by `eta`. Default 2.
    pub eta: usize,
    /// The validation metric to maximise: `ndcg@100`, `recall@20` or `recall@50`. Default
    /// `ndcg@100`.
    pub metric: String,
    /// Fraction of the training side's eligible members held out for validation. Default 0.2.
    pub validation_fraction: f64,
    /// Latent factors to choose from. Default [32, 64, 128].
    pub factors: Vec<usize>,
    /// Range of λ·(n̄ + α₀N)^ν, the regularisation of a row with the mean number of observed
    /// cells (log-uniform). Default [0.01, 100].
    pub effective_regularization: [f64; 2],
    /// Range of ν (uniform). Default [0, 1].
    pub regularization_exp: [f64; 2],
    /// Range of α₀ (log-uniform). Default [0.01, 1].
    pub unobserved_weight: [f64; 2],
    /// Range of α (log-uniform). Default [0.1, 30].
    pub alpha: [f64; 2],
    /// After the search, the best this many scored settings are trained again on
    /// `recheck_splits` fresh validation splits of the training side and the best mean wins, so
    /// that the choice does not rest on the one split every trial was ranked on (the maximum of
    /// hundreds of noisy scores favours the luckiest). 0 or 1 turns it off. Default 5.
    pub recheck_top: usize,
    /// Fresh validation splits of the re-check. Default 3.
    pub recheck_splits: usize,
    /// The families searched, each in an equal share of the budget; the best validation score
    /// across them is chosen. Default all four: `["ials", "ease", "item_knn", "bspm"]`.
    pub families: Vec<crate::model::Family>,
    /// Range of EASE's λ (log-uniform); the first EASE trial is `[offline.ease]` as configured.
    /// `top_n` is never searched: quality is measured at the pruning served. Default [10, 2000].
    pub ease_lambda: [f64; 2],
    /// Range of item-kNN's neighbours (log-uniform); the first item-kNN trial is
    /// `[offline.item_knn]` as configured. Default [20, 1000].
    pub knn_neighbours: [f64; 2],
    /// Range of item-kNN's shrinkage (uniform). Default [0, 200].
    pub knn_shrink: [f64; 2],
    /// Range of item-kNN's asymmetric-cosine α (uniform). Default [0.3, 1].
    pub knn_alpha: [f64; 2],
    /// Range of BSPM's low-pass rank (log-uniform); the first BSPM trial is `[offline.bspm]` as
    /// configured. `top_n` is never searched. Default [32, 1024].
    pub bspm_rank: [f64; 2],
    /// Range of BSPM's low-pass weight β (uniform). Default [0, 0.5].
    pub bspm_low_pass_weight: [f64; 2],
    /// Range of BSPM's sharpening time (uniform). Default [0, 4].
    pub bspm_sharpen_time: [f64; 2],
    /// After the search, the chosen iALS setting's iterations are chosen again on the
    /// validation split: trained on, scored after each iteration, stopped when this many in a
    /// row bring no improvement (at most `4 × max_iterations`). 0 keeps the rung's iterations.
    /// Default 3.
    pub convergence_patience: usize,
}

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig {
            trials: 24,
            min_iterations: 2,
            max_iterations: 16,
            eta: 2,
            metric: "ndcg@100".into(),
            validation_fraction: 0.2,
            factors: vec![32, 64, 128],
            effective_regularization: [0.01, 100.0],
            regularization_exp: [0.0, 1.0],
            unobserved_weight: [0.01, 1.0],
            alpha: [0.1, 30.0],
            recheck_top: 5,
            recheck_splits: 3,
            families: crate::model::Family::ALL.to_vec(),
            ease_lambda: [10.0, 2000.0],
            knn_neighbours: [20.0, 1000.0],
            knn_shrink: [0.0, 200.0],
            knn_alpha: [0.3, 1.0],
            bspm_rank: [32.0, 1024.0],
            bspm_low_pass_weight: [0.0, 0.5],
            bspm_sharpen_time: [0.0, 4.0],
            convergence_patience: 3,
        }
    }
}

impl TuningConfig {
    /// Whether `metric` is one the strong-generalization evaluation reports.
    pub fn metric_is_known(&self) -> bool {
        matches!(self.metric.as_str(), "ndcg@100" | "recall@20" | "recall@50")
    }
}

/// How raw events become the training table (member × item → interaction strength).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Strength each event type contributes; an event type missing here is refused as unknown.
    /// Default: play 1.0, add_to_list 0.5, click 0.25, rating 1.0. Setting this table (in the file
    /// or by one `RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__<TYPE>` variable) replaces the whole
    /// default table: list every event type you accept.
    pub event_weights: BTreeMap<String, f64>,
    /// The event type whose `value` is a rating. Default `rating`.
    pub rating_event_type: String,
    /// A rating counts as a positive when its value is at least this. Default 4.0.
    pub rating_threshold: f64,
    /// Half-life of the time decay in days (`weight × 0.5^(age / half-life)`, age measured from
    /// `--as-of` or the newest event); absent or 0 turns decay off. Default off.
    pub decay_half_life_days: Option<f64>,
    /// Members with fewer distinct positive items are dropped. Default 1.
    pub min_user_interactions: u32,
    /// Items with fewer distinct members are dropped. Default 1.
    pub min_item_interactions: u32,
    /// The largest share of interactions whose items are missing from the catalog that a job
    /// leaves out of training with a warning; above it the job fails naming the count (a
    /// catalog and a log that do not belong together). Default 0.01 (1 %); 1 never fails.
    pub max_dropped_share: f64,
    /// The newest history items published per member with a model. Default 500.
    pub history_cap: usize,
    /// A SQL file replacing the built-in training-table query (`offline/sql/training_table.sql`).
    pub training_table_sql: Option<PathBuf>,
    /// A SQL file replacing the built-in popularity query (`offline/sql/item_popularity.sql`).
    pub popularity_sql: Option<PathBuf>,
    /// A SQL file replacing the built-in history query (`offline/sql/user_history.sql`).
    pub user_history_sql: Option<PathBuf>,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            event_weights: [
                ("play", 1.0),
                ("add_to_list", 0.5),
                ("click", 0.25),
                ("rating", 1.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            rating_event_type: "rating".to_string(),
            rating_threshold: 4.0,
            decay_half_life_days: None,
            min_user_interactions: 1,
            min_item_interactions: 1,
            max_dropped_share: 0.01,
            history_cap: 500,
            training_table_sql: None,
            popularity_sql: None,
            user_history_sql: None,
        }
    }
}

/// Implicit-feedback ALS hyper-parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlsConfig {
    /// Latent factors. Default 64.
    pub factors: usize,
    /// λ, L2 regularisation. Default 0.1.
    pub regularization: f32,
    /// α, confidence per unit of strength: an observed cell weighs `α₀ + α r`. Default 10.
    pub alpha: f32,
    /// α₀, the weight of every unobserved cell (Rendle et al. 2022). Default 1, which with
    /// `regularization_exp = 0` is Hu, Koren & Volinsky's objective (`c = 1 + α r`).
    pub unobserved_weight: f32,
    /// ν, frequency scaling of λ: a row with `n` observed cells out of `N` columns is
    /// regularised by `λ (n + α₀ N)^ν`. Default 0 (plain λ).
    pub regularization_exp: f32,
    /// Standard deviation of the initial factors, divided by √factors. Default 0.1.
    pub init_std: f32,
    /// Alternations (item step + member step). Default 15.
    pub iterations: usize,
    /// Conjugate-gradient steps per solve. Default 3.
    pub cg_steps: usize,
    /// Worker threads; 0 means every core. Default 0.
    pub threads: usize,
    /// Seed of the factor initialisation. Default 42.
    pub seed: u64,
    /// Compute the training loss every iteration (shown on the progress bar; costs ~10 %).
    /// Default true.
    pub compute_loss: bool,
}

impl AlsConfig {
    /// The objective these settings train with (and every fold-in of the model then uses).
    pub fn objective(&self) -> crate::model::ials::Objective {
        crate::model::ials::Objective {
            regularization: self.regularization,
            alpha: self.alpha,
            unobserved_weight: self.unobserved_weight,
            regularization_exp: self.regularization_exp,
        }
    }

    /// These settings with `objective` in place of their own λ, α, α₀ and ν.
    pub fn with_objective(&self, objective: crate::model::ials::Objective) -> AlsConfig {
        AlsConfig {
            regularization: objective.regularization,
            alpha: objective.alpha,
            unobserved_weight: objective.unobserved_weight,
            regularization_exp: objective.regularization_exp,
            ..self.clone()
        }
    }
}

impl Default for AlsConfig {
    fn default() -> Self {
        AlsConfig {
            factors: 64,
            regularization: 0.1,
            alpha: 10.0,
            unobserved_weight: 1.0,
            regularization_exp: 0.0,
            init_std: 0.1,
            iterations: 15,
            cg_steps: 3,
            threads: 0,
            seed: 42,
            compute_loss: true,
        }
    }
}

/// The family `offline train` and `offline evaluate` fit (`offline.family`): one named, or
/// `auto`, which picks by the catalog's size. Written as the family's name or `"auto"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FamilyChoice {
    /// EASE, the family best over both benchmark data sets (first on MovieLens, second on
    /// Gowalla), for catalogs up to `offline.auto_ease_max_items` whose dense training fits in
    /// the memory available; iALS, which trains on any catalog, beyond.
    #[default]
    Auto,
    Named(Family),
}

impl TryFrom<String> for FamilyChoice {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if name == "auto" {
            return Ok(FamilyChoice::Auto);
        }
        Family::ALL
            .iter()
            .find(|f| f.name() == name)
            .map(|f| FamilyChoice::Named(*f))
            .ok_or_else(|| {
                let known: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown family {name:?}: auto or one of {}",
                    known.join(", ")
                )
            })
    }
}

impl From<FamilyChoice> for String {
    fn from(choice: FamilyChoice) -> String {
        choice.name().to_string()
    }
}

impl FamilyChoice {
    /// The family named, or `None` for `auto`.
    pub fn fixed(self) -> Option<Family> {
        match self {
            FamilyChoice::Auto => None,
            FamilyChoice::Named(family) => Some(family),
        }
    }

    /// The family fitted on a catalog of `items` items, with why when `auto` chose it.
    /// `ease_fits` says whether EASE's dense training on that many items fits in memory.
    pub fn resolve(
        self,
        items: usize,
        ease_max_items: usize,
        ease_fits: impl FnOnce(usize) -> bool,
    ) -> (Family, Option<String>) {
        if let Some(family) = self.fixed() {
            return (family, None);
        }
        let why = if items > ease_max_items {
            format!(
                "offline.family = auto: iALS, as the catalog's {items} items are more than \
                 offline.auto_ease_max_items ({})",
                ease_max_items
            )
        } else if !ease_fits(items) {
            format!(
                "offline.family = auto: iALS, as EASE's dense {items} × {items} matrix does not \
                 fit in the memory available"
            )
        } else {
            return (
                Family::Ease,
                Some(format!(
                    "offline.family = auto: EASE, as the catalog's {items} items are at most \
                     offline.auto_ease_max_items ({})",
                    ease_max_items
                )),
            );
        };
        (Family::Ials, Some(why))
    }

    /// The name in configuration.
    pub fn name(self) -> &'static str {
        self.fixed().map_or("auto", Family::name)
    }
}

impl From<Family> for FamilyChoice {
    fn from(family: Family) -> Self {
        FamilyChoice::Named(family)
    }
}

/// EASE's parameters (`[offline.ease]`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EaseConfig {
    /// λ, added to the diagonal of `XᵀX`. Default 100.
    pub lambda: f32,
    /// Weights kept per item for serving (the rest of the dense row is dropped). Default 1000.
    pub top_n: usize,
}

impl Default for EaseConfig {
    fn default() -> Self {
        EaseConfig {
            lambda: 100.0,
            top_n: 1000,
        }
    }
}

/// Item-kNN's parameters (`[offline.item_knn]`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ItemKnnConfig {
    /// Neighbours kept per item. Default 200.
    pub neighbours: usize,
    /// Shrinkage added to the similarity's denominator. Default 50.
    pub shrink: f32,
    /// Exponent of the row item's count in the denominator; 0.5 is the cosine. Default 0.7.
    pub alpha: f32,
    /// How much each member's co-occurrences count: `none` (1 each) or `idf` (`ln(items /
    /// member's items)`, so a member with a long history says less about any one pair).
    /// Default `idf`.
    pub member_weighting: MemberWeighting,
}

/// BSPM's parameters (`[offline.bspm]`): see `recsys_shared::model::bspm`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BspmConfig {
    /// Singular directions of the ideal low-pass filter (capped at the members and items the
    /// data has). Default 448.
    pub rank: usize,
    /// β, the low-pass filter's weight beside the blurring; 0 leaves it out (and skips its
    /// subspace iteration). Default 0.2.
    pub low_pass_weight: f32,
    /// Time of the sharpening step; 0 leaves it out. Default 2.5.
    pub sharpen_time: f32,
    /// Weights kept per item for serving. Default 1000.
    pub top_n: usize,
    /// Seed of the subspace iteration's random start. Default 42.
    pub seed: u64,
    /// Longest a fit may take, in minutes: once a few blocks of item rows are filtered the
    /// trainer projects the whole fit from its pace and stops with an error if it would take
    /// longer (BSPM's time grows with items × interactions: 84 s at 41k items and 810k pairs,
    /// days at a million items and a hundred million events). 0: no limit. Default 120.
    pub max_minutes: f64,
}

impl Default for BspmConfig {
    fn default() -> Self {
        BspmConfig {
            rank: 448,
            low_pass_weight: 0.2,
            sharpen_time: 2.5,
            top_n: 1000,
            seed: 42,
            max_minutes: 120.0,
        }
    }
}

impl BspmConfig {
    /// The first parameter out of range, named as in the config file.
    pub fn check(&self) -> Result<(), String> {
        within("offline.bspm.rank", self.rank, 1..=4096)?;
        within("offline.bspm.top_n", self.top_n, 1..=100_000)?;
        first_problem(vec![
            (
                self.low_pass_weight >= 0.0 && self.low_pass_weight.is_finite(),
                "offline.bspm.low_pass_weight",
                "must be zero or more",
            ),
            (
                (0.0..=10.0).contains(&self.sharpen_time),
                "offline.bspm.sharpen_time",
                "must be in 0..=10",
            ),
            (
                self.max_minutes >= 0.0 && self.max_minutes.is_finite(),
                "offline.bspm.max_minutes",
                "must be zero (no limit) or more",
            ),
        ])
    }
}

/// Item-kNN's weight of a member in the similarity (`offline.item_knn.member_weighting`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemberWeighting {
    /// Every member counts 1.
    None,
    /// `ln(items / |member's items|)`, the inverse document frequency of the member.
    #[default]
    Idf,
}

impl Default for ItemKnnConfig {
    fn default() -> Self {
        ItemKnnConfig {
            neighbours: 200,
            shrink: 50.0,
            alpha: 0.7,
            member_weighting: MemberWeighting::Idf,
        }
    }
}

/// Evaluation protocol.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Held-out members folded in (Liang et al. 2018).
    #[default]
    StrongGeneralization,
    /// Each member's latest interaction is the target.
    LeaveLastOut,
}

impl Protocol {
    /// The name used on the command line, in the config and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::StrongGeneralization => "strong-generalization",
            Protocol::LeaveLastOut => "leave-last-out",
        }
    }
}

/// How models are evaluated before publishing and by `recsys offline evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Default strong-generalization.
    pub protocol: Protocol,
    /// Fraction of eligible members held out (strong generalization). Default 0.2.
    pub heldout_fraction: f64,
    /// Members need at least this many positives to be evaluated (strong generalization). Default 5.
    pub min_positives: usize,
    /// Seed of the split. Default 42.
    pub seed: u64,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig {
            protocol: Protocol::StrongGeneralization,
            heldout_fraction: 0.2,
            min_positives: 5,
            seed: 42,
        }
    }
}

/// The publish gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// `CURRENT` does not move when the new model's NDCG is below the current model's by more
    /// than this fraction of it. Default 0.05.
    pub gate_margin: f64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig { gate_margin: 0.05 }
    }
}

impl OfflineConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within("offline.tuning.trials", self.tuning.trials, 1..=10_000)?;
        within("offline.ease.top_n", self.ease.top_n, 1..=100_000)?;
        within(
            "offline.item_knn.neighbours",
            self.item_knn.neighbours,
            1..=100_000,
        )?;
        within("offline.item_knn.alpha", self.item_knn.alpha, 0.0..=1.0)?;
        self.bspm.check()?;
        within(
            "offline.ann_index.connectivity",
            self.ann_index.connectivity,
            2..=128,
        )?;
        within(
            "offline.ann_index.expansion_add",
            self.ann_index.expansion_add,
            self.ann_index.connectivity..=4096,
        )?;
        within(
            "offline.ann_index.similar_expansion_add",
            self.ann_index.similar_expansion_add,
            self.ann_index.connectivity..=4096,
        )?;
        within("offline.tuning.eta", self.tuning.eta, 2..=10)?;
        within(
            "offline.features.history_cap",
            self.features.history_cap,
            1..=1_000_000,
        )?;
        first_problem(vec![
            (
                self.als.factors >= 1 && self.als.factors <= 1024,
                "offline.als.factors",
                "must be 1..=1024",
            ),
            (
                self.als.regularization > 0.0 && self.als.regularization.is_finite(),
                "offline.als.regularization",
                "must be positive",
            ),
            (
                self.als.alpha >= 0.0 && self.als.alpha.is_finite(),
                "offline.als.alpha",
                "must be non-negative",
            ),
            (
                self.als.unobserved_weight >= 0.0 && self.als.unobserved_weight.is_finite(),
                "offline.als.unobserved_weight",
                "must be non-negative",
            ),
            (
                (0.0..=4.0).contains(&self.als.regularization_exp),
                "offline.als.regularization_exp",
                "must be in 0..=4",
            ),
            (
                self.ease.lambda > 0.0 && self.ease.lambda.is_finite(),
                "offline.ease.lambda",
                "must be positive",
            ),
            (
                self.item_knn.shrink >= 0.0 && self.item_knn.shrink.is_finite(),
                "offline.item_knn.shrink",
                "must be non-negative",
            ),
            (
                self.als.init_std > 0.0 && self.als.init_std.is_finite(),
                "offline.als.init_std",
                "must be positive",
            ),
            (
                self.als.iterations >= 1,
                "offline.als.iterations",
                "must be at least 1",
            ),
            (
                self.als.cg_steps >= 1,
                "offline.als.cg_steps",
                "must be at least 1",
            ),
            (
                self.evaluation.heldout_fraction > 0.0 && self.evaluation.heldout_fraction < 1.0,
                "offline.evaluation.heldout_fraction",
                "must be in (0, 1)",
            ),
            (
                self.evaluation.min_positives >= 2,
                "offline.evaluation.min_positives",
                "must be at least 2",
            ),
            (
                self.features.rating_threshold.is_finite(),
                "offline.features.rating_threshold",
                "must be finite",
            ),
            (
                self.features
                    .decay_half_life_days
                    .is_none_or(|d| d >= 0.0 && d.is_finite()),
                "offline.features.decay_half_life_days",
                "must be non-negative",
            ),
            (
                self.publish.gate_margin >= 0.0 && self.publish.gate_margin < 1.0,
                "offline.publish.gate_margin",
                "must be in [0, 1)",
            ),
            (
                self.tuning.min_iterations >= 1
                    && self.tuning.min_iterations <= self.tuning.max_iterations
                    && self.tuning.max_iterations <= 1000,
                "offline.tuning.min_iterations",
                "must be at least 1 and at most offline.tuning.max_iterations (at most 1000)",
            ),
            (
                self.tuning.metric_is_known(),
                "offline.tuning.metric",
                "must be ndcg@100, recall@20 or recall@50",
            ),
            (
                self.tuning.validation_fraction > 0.0 && self.tuning.validation_fraction < 1.0,
                "offline.tuning.validation_fraction",
                "must be in (0, 1)",
            ),
            (
                !self.tuning.factors.is_empty()
                    && self.tuning.factors.iter().all(|f| (1..=1024).contains(f)),
                "offline.tuning.factors",
                "must list 1..=1024 values",
            ),
            (
                range_ok(self.tuning.effective_regularization, true),
                "offline.tuning.effective_regularization",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                range_ok(self.tuning.regularization_exp, false)
                    && self.tuning.regularization_exp[1] <= 4.0,
                "offline.tuning.regularization_exp",
                "must be [low, high] with 0 <= low <= high <= 4",
            ),
            (
                range_ok(self.tuning.unobserved_weight, true),
                "offline.tuning.unobserved_weight",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                range_ok(self.tuning.alpha, true),
                "offline.tuning.alpha",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                !self.tuning.families.is_empty(),
                "offline.tuning.families",
                "must list at least one family (ials, ease, item_knn, bspm)",
            ),
            (
                range_ok(self.tuning.ease_lambda, true),
                "offline.tuning.ease_lambda",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                range_ok(self.tuning.knn_neighbours, true) && self.tuning.knn_neighbours[0] >= 1.0,
                "offline.tuning.knn_neighbours",
                "must be [low, high] with 1 <= low <= high",
            ),
            (
                range_ok(self.tuning.knn_shrink, false),
                "offline.tuning.knn_shrink",
                "must be [low, high] with 0 <= low <= high",
            ),
            (
                range_ok(self.tuning.knn_alpha, false) && self.tuning.knn_alpha[1] <= 1.0,
                "offline.tuning.knn_alpha",
                "must be [low, high] with 0 <= low <= high <= 1",
            ),
            (
                range_ok(self.tuning.bspm_rank, true)
                    && self.tuning.bspm_rank[0] >= 1.0
                    && self.tuning.bspm_rank[1] <= 4096.0,
                "offline.tuning.bspm_rank",
                "must be [low, high] with 1 <= low <= high <= 4096",
            ),
            (
                range_ok(self.tuning.bspm_low_pass_weight, false),
                "offline.tuning.bspm_low_pass_weight",
                "must be [low, high] with 0 <= low <= high",
            ),
            (
                range_ok(self.tuning.bspm_sharpen_time, false)
                    && self.tuning.bspm_sharpen_time[1] <= 10.0,
                "offline.tuning.bspm_sharpen_time",
                "must be [low, high] with 0 <= low <= high <= 10",
            ),
            (
                (0.0..=1.0).contains(&self.features.max_dropped_share),
                "offline.features.max_dropped_share",
                "must be between 0 and 1",
            ),
            (
                self.als.iterations <= 10_000 && self.als.cg_steps <= 1000,
                "offline.als.iterations",
                "must be at most 10000 (and cg_steps at most 1000)",
            ),
            (
                self.als.threads <= 4096,
                "offline.als.threads",
                "must be at most 4096",
            ),
        ])?;
        let f = &self.features;
        for (event_type, weight) in &f.event_weights {
            if !(weight.is_finite() && *weight >= 0.0) {
                return Err(format!(
                    "`offline.features.event_weights.{event_type}` must be a non-negative number"
                ));
            }
        }
        if !f.event_weights.contains_key(&f.rating_event_type) {
            return Err(format!(
                "`offline.features.rating_event_type` is {:?}, which has no entry in `offline.features.event_weights`",
                f.rating_event_type
            ));
        }
        Ok(())
    }
}
