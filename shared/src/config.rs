//! The configuration file: one TOML document, every field optional with a documented default, and
//! every field overridable from the environment.
//!
//! An environment variable `RECSYS__<SECTION>__<KEY>=<value>` overrides `[section] key` (the path is
//! lower-cased; `__` separates levels, so `RECSYS__OFFLINE__ALS__FACTORS=32` sets
//! `[offline.als] factors = 32`). The value is read as a TOML value when it parses as one (`32`,
//! `0.5`, `true`, `["a"]`) and as a string otherwise. Unknown keys are errors, in the file and in the
//! environment alike, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Result, SharedError};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "RECSYS__";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where model versions are published.
    pub model: ModelConfig,
    /// The offline tier's jobs.
    pub offline: OfflineConfig,
    /// Where member features live (read by the online tier, written by nearline and load-store).
    pub store: StoreConfig,
    /// The cache in front of the store.
    pub cache: CacheConfig,
    /// The ranking API.
    pub online: OnlineConfig,
    /// The streaming workers.
    pub nearline: NearlineConfig,
}

/// The model root shared by every tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Directory holding `<version>/` directories and the `CURRENT` pointer, or an object-storage
    /// URL (`s3://bucket/models`, `gs://…`, `az://…`). Default `var/models`.
    pub root: PathBuf,
    /// How many versions to keep after a publish (the current one is always kept). Default 5.
    pub keep_versions: usize,
    /// Where servers and workers keep the versions they download when `root` is on object
    /// storage (a local model root). Default `var/model-cache`.
    pub cache_dir: PathBuf,
    /// How long a writer's lease on an object-storage root lasts unless renewed (a writer renews
    /// it every third of this while it runs, so a crashed writer blocks others at most this
    /// long). Default 300 s.
    pub lease_seconds: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            root: PathBuf::from("var/models"),
            keep_versions: 5,
            cache_dir: PathBuf::from("var/model-cache"),
            lease_seconds: 300,
        }
    }
}

/// The offline tier: feature jobs, training, evaluation and the publish gate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Where the feature jobs' SQL runs. Default `local`.
    pub engine: Engine,
    pub ballista: BallistaConfig,
    pub features: FeatureConfig,
    pub als: AlsConfig,
    pub evaluation: EvaluationConfig,
    pub publish: PublishConfig,
    pub tuning: TuningConfig,
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

/// Which key-value backend holds member features.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// redb in a local directory; one process at a time. The default.
    #[default]
    Embedded,
    /// A Redis server, shared by the processes of one machine.
    Redis,
    /// A Cassandra (or ScyllaDB) cluster.
    Cassandra,
}

impl StoreBackend {
    pub fn name(self) -> &'static str {
        match self {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Redis => "redis",
            StoreBackend::Cassandra => "cassandra",
        }
    }
}

/// The feature store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` (default), `redis` or `cassandra`.
    pub backend: StoreBackend,
    /// The newest history entries kept per member. Default 500.
    pub history_cap: usize,
    /// A read of the store that takes longer fails (the caller degrades). Default 250 ms.
    pub read_timeout_ms: u64,
    /// After this many failed or timed-out reads in a row the store is not read at all (requests
    /// degrade at once)... Default 5.
    pub breaker_failures: u32,
    /// ...for this long; then one read probes it. Default 1000 ms.
    pub breaker_open_ms: u64,
    pub embedded: EmbeddedConfig,
    pub redis: RedisConfig,
    pub cassandra: CassandraConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            history_cap: 500,
            read_timeout_ms: 250,
            breaker_failures: 5,
            breaker_open_ms: 1000,
            embedded: EmbeddedConfig::default(),
            redis: RedisConfig {
                timeout_ms: 250,
                ..RedisConfig::default()
            },
            cassandra: CassandraConfig::default(),
        }
    }
}

/// The embedded store's directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Default `var/features`.
    pub path: PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: PathBuf::from("var/features"),
        }
    }
}

/// A Redis server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `rediss://` for TLS. A password may be given here
    /// (`redis://user:password@host/`) but is better read from `password_file` or `password_env`;
    /// either way it is never printed.
    pub url: String,
    /// Connect and response timeout of each command.
    pub timeout_ms: u64,
    /// ACL user (Redis 6+). Default none (the `default` user).
    pub username: Option<String>,
    /// A file holding the password (one line; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// With `rediss://`: the CA that signed the server's certificate (PEM); default the system's
    /// roots.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: a client certificate and key (PEM), for servers that require one
    /// (`tls-auth-clients yes`).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            timeout_ms: 20,
            username: None,
            password_file: None,
            password_env: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// A Cassandra cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// `host:port` of one or more nodes. Default `["127.0.0.1:9042"]`.
    pub contact_points: Vec<String>,
    /// Default `recsys`.
    pub keyspace: String,
    /// CQL replication map used when the keyspace is created.
    pub replication: String,
    /// Consistency level of every statement. Default `LOCAL_QUORUM`.
    pub consistency: String,
    pub connect_timeout_ms: u64,
    /// Password authentication: the user, and the password from a file or an environment
    /// variable. Default none.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// TLS to the nodes: the CA that signed their certificates (PEM). Setting it turns TLS on.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM), for clusters that require one.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "recsys".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: "LOCAL_QUORUM".into(),
            connect_timeout_ms: 10_000,
            username: None,
            password_file: None,
            password_env: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Which cache sits in front of the store.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    /// No cache: every read goes to the store.
    None,
    /// A bounded map inside the process. The default.
    #[default]
    InProcess,
    /// A Redis server (the role EVCache plays at Netflix).
    Redis,
}

/// The read-through cache of member features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `none`, `in_process` (default) or `redis`.
    pub backend: CacheBackend,
    /// Entries live this long. Default 300 s.
    pub ttl_seconds: u64,
    /// Each entry's TTL is drawn from ±this fraction of `ttl_seconds`, so entries written together
    /// do not expire together. Default 0.1.
    pub ttl_jitter: f64,
    /// Members held by the in-process cache. Default 100000.
    pub capacity: usize,
    /// After this many failed cache calls in a row the cache is bypassed... Default 5.
    pub breaker_failures: u32,
    /// ...for this long, then tried again. Default 2000 ms.
    pub breaker_open_ms: u64,
    /// The Redis cache; its `timeout_ms` is the short timeout of every cache call (default 20 ms).
    pub redis: RedisConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: CacheBackend::InProcess,
            ttl_seconds: 300,
            ttl_jitter: 0.1,
            capacity: 100_000,
            breaker_failures: 5,
            breaker_open_ms: 2000,
            redis: RedisConfig::default(),
        }
    }
}

/// The ranking API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnlineConfig {
    /// gRPC address. Default `127.0.0.1:50051`.
    pub listen: String,
    /// HTTP address of `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// How often `CURRENT` is checked for a new model. Default 1000 ms.
    pub model_poll_ms: u64,
    /// The experiments file (TOML; see `online::experiments`): which members see which model
    /// version and row recipe. Unset: `experiments.toml` in the model root, if there is one (so
    /// it ships with the models; with a model root on object storage, set this to a local
    /// path). Polled with `CURRENT`; a file refused (the field is named in the log) leaves the
    /// last good one in force.
    pub experiments_file: Option<PathBuf>,
    /// With the embedded store (which only this process can open), load a newly published model's
    /// member vectors and histories into it before swapping the model in. Default true.
    pub load_store_on_swap: bool,
    /// Upper bound on any request's run time, whatever deadline the client sets. Default 5000 ms.
    pub max_request_ms: u64,
    /// Ranking requests worked on at once; more wait in the queue. 0 (the default) means one per
    /// core: scoring is CPU work, and more in progress than the cores can run only makes every
    /// one of them slower.
    pub max_in_flight: usize,
    /// Requests waiting for a slot; beyond this a request is shed at once with
    /// `RESOURCE_EXHAUSTED`, before any work. A queued request whose deadline passes while it waits
    /// is answered `DEADLINE_EXCEEDED` without being worked on. Default 64, which rides out
    /// bursts (a training run next to the server, a traffic spike); 0 means as many as
    /// `max_in_flight`, the latency-first setting: admitted requests then never wait behind more
    /// than one round of work (see `recsys online soak`).
    pub max_queued: usize,
    /// HTTP/2 streams (concurrent calls) per connection. Default 256.
    pub max_concurrent_streams: u32,
    /// Open client connections. When they are all open, a new connection takes the place of the
    /// oldest one still opening (one that has not yet sent the HTTP/2 preface); with none of
    /// those it is closed at once. Default 4096.
    pub max_connections: usize,
    /// A connection must send its opening (the HTTP/2 preface, or a TLS hello) within this long
    /// after it is accepted, or it is closed: HTTP/2 keepalive only guards a connection once it
    /// has opened. Default 5000 ms.
    pub opening_timeout_ms: u64,
    /// HTTP/2 PING interval on idle connections, and how long to wait for the answer before
    /// closing the connection. Default 30000 / 10000 ms.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// A connection is retired (GOAWAY, then `keepalive_timeout_ms` of grace for calls in
    /// progress) after this long, so clients rebalance and no connection lives forever.
    /// Default 1800000 ms (30 min).
    pub max_connection_age_ms: u64,
    /// Serve gRPC server reflection (what `grpcurl` uses without `.proto` files). Default true.
    pub reflection: bool,
    /// TLS on the gRPC port (and optionally the metrics port). Off unless `cert_file` is set.
    pub tls: ServerTlsConfig,
    /// API keys. Off unless `enabled`.
    pub auth: AuthConfig,
    /// Impressions: every Rank and Homepage answer logged to Kafka. Off unless `enabled`.
    pub impressions: ImpressionsConfig,
    /// Business rules applied after scoring: pin, boost, bury.
    pub rules: RulesConfig,
    /// The per-member maturity filter.
    pub maturity: MaturityConfig,
}

/// The maturity filter: a member whose profile (`member_profile` in the store, written by
/// `recsys offline load-profiles`) names a maximum rating is never shown an item rated above it.
/// Members without one see everything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaturityConfig {
    /// The catalog's `maturity` ratings, least mature first. An item rated with a label not in
    /// the list is shown to unrestricted members only. Default `G, PG, PG-13, R, NC-17`.
    pub ratings: Vec<String>,
    /// Whether restricted members see unrated items. Default true.
    pub unrated_allowed: bool,
    /// The limit applied while the store cannot be read (the member's profile is unknown), e.g.
    /// `"PG"` for a service with children's profiles. Default none (unrestricted).
    pub when_store_unavailable: Option<String>,
}

impl Default for MaturityConfig {
    fn default() -> Self {
        MaturityConfig {
            ratings: ["G", "PG", "PG-13", "R", "NC-17"]
                .map(String::from)
                .to_vec(),
            unrated_allowed: true,
            when_store_unavailable: None,
        }
    }
}

impl MaturityConfig {
    /// The level of `rating` (its position in `ratings`), or `None` when the list lacks it.
    pub fn level(&self, rating: &str) -> Option<usize> {
        self.ratings.iter().position(|r| r == rating)
    }
}

/// Business rules applied to every ranked list after scoring (see `online::rules`). Ids the
/// served model does not know are ignored; a rule never shows an item a filter excludes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Items put first, in this order, in every list they may appear in.
    pub pin: Vec<String>,
    /// Item → factor (> 0) multiplying its score before the list is re-sorted.
    pub boost: BTreeMap<String, f64>,
    /// Items moved behind every other candidate.
    pub bury: Vec<String>,
}

impl RulesConfig {
    pub fn is_empty(&self) -> bool {
        self.pin.is_empty() && self.boost.is_empty() && self.bury.is_empty()
    }

    /// The first problem, naming the field.
    fn problem(&self) -> Option<(String, String)> {
        for (field, len) in [
            ("pin", self.pin.len()),
            ("boost", self.boost.len()),
            ("bury", self.bury.len()),
        ] {
            if len > 1000 {
                return Some((
                    format!("online.rules.{field}"),
                    format!("{len} items, at most 1000"),
                ));
            }
        }
        let ids = self
            .pin
            .iter()
            .map(|i| ("pin", i))
            .chain(self.boost.keys().map(|i| ("boost", i)))
            .chain(self.bury.iter().map(|i| ("bury", i)));
        for (field, id) in ids {
            if let Some(problem) = crate::ids::id_problem(id) {
                return Some((
                    format!("online.rules.{field}"),
                    format!("{id:?}: {problem}"),
                ));
            }
        }
        for (id, factor) in &self.boost {
            if !factor.is_finite() || *factor <= 0.0 {
                return Some((
                    format!("online.rules.boost.{id:?}"),
                    format!("{factor} is not a finite factor > 0"),
                ));
            }
        }
        if let Some(both) = self.pin.iter().find(|i| self.bury.contains(i)) {
            return Some((
                "online.rules.bury".into(),
                format!("{both:?} is also pinned"),
            ));
        }
        None
    }
}

/// The impression log: what each answer showed, sent to Kafka (the brokers and client settings
/// of `nearline`: one cluster) through a bounded queue that never slows or fails a request — when
/// the queue is full or the broker does not take a message in time, the impression is dropped
/// and counted (`recsys_impressions_dropped_total`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImpressionsConfig {
    /// Default false.
    pub enabled: bool,
    /// Default `recsys.impressions`.
    pub topic: String,
    /// Share of answers logged, 0..=1 (a random draw per answer). Default 1.0.
    pub sample_rate: f64,
    /// Impressions waiting to be sent; past this they are dropped. Default 100000.
    pub queue_capacity: usize,
    /// An impression not delivered within this is dropped. Default 30000 ms.
    pub delivery_timeout_ms: u64,
}

impl Default for ImpressionsConfig {
    fn default() -> Self {
        ImpressionsConfig {
            enabled: false,
            topic: "recsys.impressions".into(),
            sample_rate: 1.0,
            queue_capacity: 100_000,
            delivery_timeout_ms: 30_000,
        }
    }
}

/// A server's TLS identity, and the CA of the clients it accepts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// The server's certificate chain (PEM). Setting it (with `key_file`) turns TLS on.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Mutual TLS: a client must present a certificate signed by this CA (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over the same TLS. Default false.
    pub metrics: bool,
}

/// Bearer tokens / API keys checked on every call, each allowed a set of RPCs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a key (`authorization: Bearer <key>` or `x-api-key: <key>`) on every call.
    /// Default false.
    pub enabled: bool,
    /// Health checks need a key too. Default false (load balancers and probes call them bare).
    pub health_requires_key: bool,
    pub keys: Vec<ApiKeyConfig>,
}

/// One client's key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyConfig {
    /// Who holds it (logs and metrics name the caller by this, never by the key).
    pub name: String,
    /// A file holding the key (one line).
    pub key_file: Option<PathBuf>,
    /// An environment variable holding the key.
    pub key_env: Option<String>,
    /// The RPCs it may call: `Rank`, `Homepage`, `SimilarItems`, `Health`, `Reflection`.
    /// Empty: all of them.
    pub rpcs: Vec<String>,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        OnlineConfig {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            model_poll_ms: 1000,
            experiments_file: None,
            load_store_on_swap: true,
            max_request_ms: 5000,
            max_in_flight: 0,
            max_queued: 64,
            max_concurrent_streams: 256,
            max_connections: 4096,
            opening_timeout_ms: 5_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            max_connection_age_ms: 1_800_000,
            reflection: true,
            tls: ServerTlsConfig::default(),
            auth: AuthConfig::default(),
            impressions: ImpressionsConfig::default(),
            rules: RulesConfig::default(),
            maturity: MaturityConfig::default(),
        }
    }
}

/// The nearline workers: Kafka, batching, event validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NearlineConfig {
    /// Kafka bootstrap servers, `host:port[,host:port…]`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// The member events. Default `recsys.events`.
    pub topic: String,
    /// Partitions of the events topic when a worker (or `produce`) creates it because it does
    /// not exist yet; an existing topic is left as it is. The most workers one group can use.
    /// Default 4.
    pub topic_partitions: i32,
    /// Where events that cannot be applied go, with the reason in a header.
    /// Default `recsys.events.dead-letter`.
    pub dead_letter_topic: String,
    /// Consumer group; scale out by starting more workers with the same group. Default
    /// `recsys-nearline`.
    pub group_id: String,
    /// At most this many events are applied (and committed) together. Default 1000.
    pub max_batch: usize,
    /// A batch closes this long after its first event at the latest. Default 5 ms.
    pub batch_wait_ms: u64,
    /// A batch's members are split into at most this many shards (of at least 64 members) that
    /// are applied concurrently, each read, folded in and written together, so one shard's
    /// fold-ins overlap another's store round trips. Also bounds the history trims in flight.
    /// Default 32.
    pub concurrency: usize,
    /// Events stamped further than this into the future are dead-lettered. Default 5 min.
    pub max_future_skew_ms: i64,
    /// Events older than this are dead-lettered. Default 365 days.
    pub max_past_skew_ms: i64,
    /// HTTP address of `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9465`.
    pub metrics_listen: String,
    /// How often `CURRENT` is checked for a new model. Default 1000 ms.
    pub model_poll_ms: u64,
    /// A batch that cannot be finished (store or dead-letter topic down) is retried this many
    /// times with backoff (100 ms doubling to 5 s), the partitions paused and the worker not
    /// ready; then the worker stops with an error, the batch uncommitted. Default 60 (~4.5 min).
    pub max_batch_retries: u32,
    /// Extra librdkafka properties for consumer and producer (`security.protocol`, …). Secret
    /// ones (`sasl.password`, `ssl.key.password`, …) are refused here: give them in
    /// `kafka_secret_files` or `kafka_secret_env`.
    pub kafka: BTreeMap<String, String>,
    /// librdkafka properties read from files: property → file (e.g. `"sasl.password" =
    /// "/run/secrets/kafka"`).
    pub kafka_secret_files: BTreeMap<String, PathBuf>,
    /// librdkafka properties read from environment variables: property → variable.
    pub kafka_secret_env: BTreeMap<String, String>,
    /// Negative feedback: impressions and explicit negative events.
    pub feedback: FeedbackConfig,
}

/// Negative feedback in the nearline tier. When enabled, the workers also consume the online
/// tier's impressions (`online.impressions.topic`, which must have as many partitions as
/// `nearline.topic`, both keyed by member, so one worker owns each member on both) and hide from
/// a member an item shown `impressions_to_hide` times within `hide_for_hours` without a positive
/// event; an explicit negative event hides it until a newer positive one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Default false.
    pub enabled: bool,
    /// Default 3.
    pub impressions_to_hide: u32,
    /// How long an item stays hidden, and how long an impression counts. Default 72.
    pub hide_for_hours: f64,
    /// Event types that are explicit negatives. They need no weight in
    /// `offline.features.event_weights` (and give no strength). Default `thumbs_down`,
    /// `not_interested`.
    pub negative_event_types: Vec<String>,
    /// What a negative event does to the member's vector: `ignore` (nothing: the item is only
    /// hidden) or `forget` (the member's earlier positive events on the item leave the history,
    /// so the fold-in no longer pulls towards it). Default `forget`.
    pub negative_fold_in: NegativeFoldIn,
    /// Items whose feedback state one member keeps (least recently active dropped first).
    /// Default 1000.
    pub max_items_per_member: usize,
}

/// See [`FeedbackConfig::negative_fold_in`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NegativeFoldIn {
    Ignore,
    #[default]
    Forget,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            enabled: false,
            impressions_to_hide: 3,
            hide_for_hours: 72.0,
            negative_event_types: vec!["thumbs_down".into(), "not_interested".into()],
            negative_fold_in: NegativeFoldIn::Forget,
            max_items_per_member: 1000,
        }
    }
}

impl FeedbackConfig {
    /// `hide_for_hours` in milliseconds.
    pub fn hide_for_ms(&self) -> i64 {
        (self.hide_for_hours * 3_600_000.0) as i64
    }
}

impl Default for NearlineConfig {
    fn default() -> Self {
        NearlineConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "recsys.events".into(),
            topic_partitions: 4,
            dead_letter_topic: "recsys.events.dead-letter".into(),
            group_id: "recsys-nearline".into(),
            max_batch: 1000,
            batch_wait_ms: 5,
            concurrency: 32,
            max_future_skew_ms: 5 * 60 * 1000,
            max_past_skew_ms: 365 * 24 * 3600 * 1000,
            metrics_listen: "127.0.0.1:9465".into(),
            model_poll_ms: 1000,
            max_batch_retries: 60,
            kafka: BTreeMap::new(),
            kafka_secret_files: BTreeMap::new(),
            kafka_secret_env: BTreeMap::new(),
            feedback: FeedbackConfig::default(),
        }
    }
}

impl Config {
    /// Reads the file (when given) and applies the process environment's overrides.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Reads the file (when given) and applies the overrides among `env`.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        // The defaults as a table, with the file merged over them key by key: a section the file
        // names only in part keeps `Config::default()`'s values for the rest (not the section
        // type's own defaults, which differ where one type serves two roles, as `RedisConfig`
        // does for the store and the cache).
        let mut table =
            toml::Table::try_from(Config::default()).map_err(|e| SharedError::Config {
                origin: "defaults".into(),
                problem: e.to_string(),
            })?;
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SharedError::io(path, e))?;
                let from_file: toml::Table =
                    toml::from_str(&text).map_err(|e| SharedError::Config {
                        origin: path.display().to_string(),
                        problem: e.to_string(),
                    })?;
                Some((from_file, path.display().to_string()))
            }
            None => None,
        };
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        // Tables that are set whole: naming them in the file or the environment drops the default
        // entries instead of adding to them.
        for path in REPLACED_WHOLE {
            let in_file = from_file
                .as_ref()
                .is_some_and(|(t, _)| lookup(t, path).is_some());
            let prefix = format!("{ENV_PREFIX}{}__", path.join("__").to_uppercase());
            let in_env = overrides.iter().any(|(k, _)| k.starts_with(&prefix));
            if in_file || in_env {
                let (last, parents) = path.split_last().expect("non-empty path");
                if let Some(parent) = lookup_mut(&mut table, parents) {
                    parent.remove(*last);
                }
            }
        }
        let origin = match from_file {
            Some((from_file, origin)) => {
                merge_into(&mut table, from_file);
                origin
            }
            None => "defaults".to_string(),
        };
        for (name, value) in &overrides {
            apply_override(&mut table, name, value)?;
        }
        let origin = if overrides.is_empty() {
            origin
        } else {
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            format!("{origin} with {}", names.join(", "))
        };
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| SharedError::Config {
                    origin: origin.clone(),
                    problem: e.to_string(),
                })?;
        config
            .validate()
            .map_err(|problem| SharedError::Config { origin, problem })?;
        Ok(config)
    }

    /// Checks ranges the types cannot express; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let als = &self.offline.als;
        let f = &self.offline.features;
        let e = &self.offline.evaluation;
        let checks: [(bool, &str, String); 14] = [
            (
                self.model.keep_versions >= 1,
                "model.keep_versions",
                "must be at least 1".into(),
            ),
            (
                als.factors >= 1 && als.factors <= 1024,
                "offline.als.factors",
                "must be 1..=1024".into(),
            ),
            (
                als.regularization > 0.0 && als.regularization.is_finite(),
                "offline.als.regularization",
                "must be positive".into(),
            ),
            (
                als.alpha >= 0.0 && als.alpha.is_finite(),
                "offline.als.alpha",
                "must be non-negative".into(),
            ),
            (
                als.unobserved_weight >= 0.0 && als.unobserved_weight.is_finite(),
                "offline.als.unobserved_weight",
                "must be non-negative".into(),
            ),
            (
                (0.0..=4.0).contains(&als.regularization_exp),
                "offline.als.regularization_exp",
                "must be in 0..=4".into(),
            ),
            (
                als.init_std > 0.0 && als.init_std.is_finite(),
                "offline.als.init_std",
                "must be positive".into(),
            ),
            (
                als.iterations >= 1,
                "offline.als.iterations",
                "must be at least 1".into(),
            ),
            (
                als.cg_steps >= 1,
                "offline.als.cg_steps",
                "must be at least 1".into(),
            ),
            (
                e.heldout_fraction > 0.0 && e.heldout_fraction < 1.0,
                "offline.evaluation.heldout_fraction",
                "must be in (0, 1)".into(),
            ),
            (
                e.min_positives >= 2,
                "offline.evaluation.min_positives",
                "must be at least 2".into(),
            ),
            (
                f.rating_threshold.is_finite(),
                "offline.features.rating_threshold",
                "must be finite".into(),
            ),
            (
                f.decay_half_life_days
                    .is_none_or(|d| d >= 0.0 && d.is_finite()),
                "offline.features.decay_half_life_days",
                "must be non-negative".into(),
            ),
            (
                self.offline.publish.gate_margin >= 0.0 && self.offline.publish.gate_margin < 1.0,
                "offline.publish.gate_margin",
                "must be in [0, 1)".into(),
            ),
        ];
        for (ok, field, why) in checks {
            if !ok {
                return Err(format!("`{field}` {why}"));
            }
        }
        let cache = &self.cache;
        let n = &self.nearline;
        let o = &self.online;
        let t = &self.offline.tuning;
        let range_ok = |[lo, hi]: [f64; 2], positive: bool| {
            lo.is_finite()
                && hi.is_finite()
                && lo <= hi
                && if positive { lo > 0.0 } else { lo >= 0.0 }
        };
        // Upper bounds too: a value that sizes an allocation or a wait must not be absurd.
        let more: Vec<(bool, &str, &str)> = vec![
            (
                (1..=10_000).contains(&t.trials),
                "offline.tuning.trials",
                "must be 1..=10000",
            ),
            (
                t.min_iterations >= 1
                    && t.min_iterations <= t.max_iterations
                    && t.max_iterations <= 1000,
                "offline.tuning.min_iterations",
                "must be at least 1 and at most offline.tuning.max_iterations (at most 1000)",
            ),
            (
                (2..=10).contains(&t.eta),
                "offline.tuning.eta",
                "must be 2..=10",
            ),
            (
                t.metric_is_known(),
                "offline.tuning.metric",
                "must be ndcg@100, recall@20 or recall@50",
            ),
            (
                t.validation_fraction > 0.0 && t.validation_fraction < 1.0,
                "offline.tuning.validation_fraction",
                "must be in (0, 1)",
            ),
            (
                !t.factors.is_empty() && t.factors.iter().all(|f| (1..=1024).contains(f)),
                "offline.tuning.factors",
                "must list 1..=1024 values",
            ),
            (
                range_ok(t.effective_regularization, true),
                "offline.tuning.effective_regularization",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                range_ok(t.regularization_exp, false) && t.regularization_exp[1] <= 4.0,
                "offline.tuning.regularization_exp",
                "must be [low, high] with 0 <= low <= high <= 4",
            ),
            (
                range_ok(t.unobserved_weight, true),
                "offline.tuning.unobserved_weight",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                range_ok(t.alpha, true),
                "offline.tuning.alpha",
                "must be [low, high] with 0 < low <= high",
            ),
            (
                (1..=100_000).contains(&n.max_batch),
                "nearline.max_batch",
                "must be 1..=100000",
            ),
            (
                (1..=100).contains(&n.feedback.impressions_to_hide),
                "nearline.feedback.impressions_to_hide",
                "must be 1..=100",
            ),
            (
                n.feedback.hide_for_hours > 0.0 && n.feedback.hide_for_hours <= 24.0 * 3650.0,
                "nearline.feedback.hide_for_hours",
                "must be in (0, 87600]",
            ),
            (
                !n.feedback.enabled || o.impressions.topic != n.topic,
                "nearline.feedback.enabled",
                "needs online.impressions.topic to differ from nearline.topic",
            ),
            (
                (1..=100_000).contains(&n.feedback.max_items_per_member),
                "nearline.feedback.max_items_per_member",
                "must be 1..=100000",
            ),
            (
                n.feedback
                    .negative_event_types
                    .iter()
                    .all(|t| !self.offline.features.event_weights.contains_key(t)),
                "nearline.feedback.negative_event_types",
                "must not name an event type that has a weight in offline.features.event_weights",
            ),
            (
                (1..=1024).contains(&n.concurrency),
                "nearline.concurrency",
                "must be 1..=1024",
            ),
            (
                n.batch_wait_ms <= 60_000,
                "nearline.batch_wait_ms",
                "must be at most 60000",
            ),
            (
                (1..=10_000).contains(&n.topic_partitions),
                "nearline.topic_partitions",
                "must be 1..=10000",
            ),
            (
                n.max_future_skew_ms >= 0,
                "nearline.max_future_skew_ms",
                "must be non-negative",
            ),
            (
                n.max_past_skew_ms >= 0,
                "nearline.max_past_skew_ms",
                "must be non-negative",
            ),
            (
                (10..=3_600_000).contains(&n.model_poll_ms),
                "nearline.model_poll_ms",
                "must be 10..=3600000",
            ),
            (
                !n.topic.is_empty() && n.topic != n.dead_letter_topic,
                "nearline.dead_letter_topic",
                "must differ from nearline.topic",
            ),
            (
                (1..=1_000_000).contains(&self.store.history_cap),
                "store.history_cap",
                "must be 1..=1000000",
            ),
            (
                (1..=600_000).contains(&self.store.read_timeout_ms),
                "store.read_timeout_ms",
                "must be 1..=600000",
            ),
            (
                (1..=600_000).contains(&self.store.redis.timeout_ms),
                "store.redis.timeout_ms",
                "must be 1..=600000",
            ),
            (
                (1..=600_000).contains(&self.store.cassandra.connect_timeout_ms),
                "store.cassandra.connect_timeout_ms",
                "must be 1..=600000",
            ),
            (
                cache.ttl_jitter >= 0.0 && cache.ttl_jitter < 1.0,
                "cache.ttl_jitter",
                "must be in [0, 1)",
            ),
            (
                (1..=31_536_000).contains(&cache.ttl_seconds),
                "cache.ttl_seconds",
                "must be 1..=31536000",
            ),
            (
                (1..=100_000_000).contains(&cache.capacity),
                "cache.capacity",
                "must be 1..=100000000",
            ),
            (
                cache.breaker_failures >= 1,
                "cache.breaker_failures",
                "must be at least 1",
            ),
            (
                self.store.breaker_failures >= 1,
                "store.breaker_failures",
                "must be at least 1",
            ),
            (
                (1..=3_600_000).contains(&self.store.breaker_open_ms),
                "store.breaker_open_ms",
                "must be 1..=3600000",
            ),
            (
                (1..=3_600_000).contains(&cache.breaker_open_ms),
                "cache.breaker_open_ms",
                "must be 1..=3600000",
            ),
            (
                (1..=600_000).contains(&cache.redis.timeout_ms),
                "cache.redis.timeout_ms",
                "must be 1..=600000",
            ),
            (
                (10..=3_600_000).contains(&o.model_poll_ms),
                "online.model_poll_ms",
                "must be 10..=3600000",
            ),
            (
                (1..=600_000).contains(&o.max_request_ms),
                "online.max_request_ms",
                "must be 1..=600000",
            ),
            (
                (0.0..=1.0).contains(&o.impressions.sample_rate),
                "online.impressions.sample_rate",
                "must be 0..=1",
            ),
            (
                (1..=10_000_000).contains(&o.impressions.queue_capacity),
                "online.impressions.queue_capacity",
                "must be 1..=10000000",
            ),
            (
                (100..=3_600_000).contains(&o.impressions.delivery_timeout_ms),
                "online.impressions.delivery_timeout_ms",
                "must be 100..=3600000",
            ),
            (
                !o.impressions.enabled || !o.impressions.topic.trim().is_empty(),
                "online.impressions.topic",
                "must not be empty",
            ),
            (
                o.max_in_flight <= 100_000,
                "online.max_in_flight",
                "must be at most 100000 (0: one per core)",
            ),
            (
                o.max_queued <= 1_000_000,
                "online.max_queued",
                "must be at most 1000000",
            ),
            (
                (1..=100_000).contains(&o.max_concurrent_streams),
                "online.max_concurrent_streams",
                "must be 1..=100000",
            ),
            (
                (1..=1_000_000).contains(&o.max_connections),
                "online.max_connections",
                "must be 1..=1000000",
            ),
            (
                (100..=600_000).contains(&o.opening_timeout_ms),
                "online.opening_timeout_ms",
                "must be 100..=600000",
            ),
            (
                o.keepalive_interval_ms >= 1000 && o.keepalive_timeout_ms >= 100,
                "online.keepalive_interval_ms",
                "must be at least 1000 (and keepalive_timeout_ms at least 100)",
            ),
            (
                o.max_connection_age_ms >= 1000,
                "online.max_connection_age_ms",
                "must be at least 1000",
            ),
            (
                (0.0..=1.0).contains(&self.offline.features.max_dropped_share),
                "offline.features.max_dropped_share",
                "must be between 0 and 1",
            ),
            (
                (1..=1_000_000).contains(&self.offline.features.history_cap),
                "offline.features.history_cap",
                "must be 1..=1000000",
            ),
            (
                self.offline.als.iterations <= 10_000 && self.offline.als.cg_steps <= 1000,
                "offline.als.iterations",
                "must be at most 10000 (and cg_steps at most 1000)",
            ),
            (
                self.offline.als.threads <= 4096,
                "offline.als.threads",
                "must be at most 4096",
            ),
            (
                self.model.keep_versions <= 10_000,
                "model.keep_versions",
                "must be at most 10000",
            ),
            (
                (10..=7 * 86_400).contains(&self.model.lease_seconds),
                "model.lease_seconds",
                "must be 10..=604800",
            ),
        ];
        for (ok, field, why) in more {
            if !ok {
                return Err(format!("`{field}` {why}"));
            }
        }
        if let Some((field, why)) = self.online.rules.problem() {
            return Err(format!("`{field}`: {why}"));
        }
        let ratings = &self.online.maturity.ratings;
        if ratings.is_empty() || ratings.len() > 64 {
            return Err("`online.maturity.ratings` must list 1..=64 ratings".into());
        }
        for (n, rating) in ratings.iter().enumerate() {
            if rating.is_empty() || ratings[..n].contains(rating) {
                return Err(format!(
                    "`online.maturity.ratings`: {rating:?} is empty or listed twice"
                ));
            }
        }
        if let Some(rating) = &self.online.maturity.when_store_unavailable {
            if self.online.maturity.level(rating).is_none() {
                return Err(format!(
                    "`online.maturity.when_store_unavailable`: {rating:?} is not in online.maturity.ratings"
                ));
            }
        }
        for (field, addr) in [
            ("online.listen", &self.online.listen),
            ("online.metrics_listen", &self.online.metrics_listen),
            ("nearline.metrics_listen", &self.nearline.metrics_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!(
                    "`{field}` is {addr:?}, not an address like 127.0.0.1:50051"
                ));
            }
        }
        let tls = &self.online.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err("`online.tls.cert_file` and `online.tls.key_file` go together".into());
        }
        if (tls.client_ca_file.is_some() || tls.metrics) && tls.cert_file.is_none() {
            return Err(
                "`online.tls.client_ca_file` and `online.tls.metrics` need `online.tls.cert_file`"
                    .into(),
            );
        }
        let auth = &self.online.auth;
        if auth.enabled && auth.keys.is_empty() {
            return Err("`online.auth.enabled` needs at least one `[[online.auth.keys]]`".into());
        }
        for (i, key) in auth.keys.iter().enumerate() {
            if key.name.is_empty() {
                return Err(format!("`online.auth.keys[{i}].name` is empty"));
            }
            if key.key_file.is_some() == key.key_env.is_some() {
                return Err(format!(
                    "`online.auth.keys[{i}]` ({}) needs exactly one of `key_file` and `key_env`",
                    key.name
                ));
            }
            for rpc in &key.rpcs {
                if crate::rpcs::named(rpc).is_none() {
                    return Err(format!(
                        "`online.auth.keys[{i}].rpcs` names {rpc:?}, not one of {}",
                        crate::rpcs::names()
                    ));
                }
            }
        }
        for (field, redis) in [
            ("store.redis", &self.store.redis),
            ("cache.redis", &self.cache.redis),
        ] {
            if redis.password_file.is_some() && redis.password_env.is_some() {
                return Err(format!(
                    "`{field}.password_file` and `{field}.password_env` are exclusive"
                ));
            }
            if redis.tls_cert_file.is_some() != redis.tls_key_file.is_some() {
                return Err(format!(
                    "`{field}.tls_cert_file` and `{field}.tls_key_file` go together"
                ));
            }
        }
        for key in self.nearline.kafka.keys() {
            if key.contains("password") || key.contains("secret") {
                return Err(format!(
                    "`nearline.kafka.\"{key}\"` is a secret: give it in `nearline.kafka_secret_files` or `nearline.kafka_secret_env`, not in the file"
                ));
            }
        }
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

/// Tables of the configuration that a file or the environment sets whole, not merged into the
/// defaults (see [`FeatureConfig::event_weights`]).
const REPLACED_WHOLE: &[&[&str]] = &[&["offline", "features", "event_weights"]];

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(*first)?;
    match rest {
        [] => Some(value),
        _ => lookup(value.as_table()?, rest),
    }
}

fn lookup_mut<'a>(table: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Table> {
    match path.split_first() {
        None => Some(table),
        Some((first, rest)) => lookup_mut(table.get_mut(*first)?.as_table_mut()?, rest),
    }
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge_into(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_into(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_override(table: &mut toml::Table, name: &str, value: &str) -> Result<()> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(SharedError::Config {
            origin: format!("environment variable {name}"),
            problem: "empty path segment".into(),
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cursor = table;
    for segment in parents {
        let entry = cursor
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| SharedError::Config {
            origin: format!("environment variable {name}"),
            problem: format!("`{segment}` is a value, not a section"),
        })?;
    }
    cursor.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recsys.toml");
        std::fs::write(
            &file,
            "[model]\nroot = \"/data/models\"\n[offline.als]\nfactors = 16\niterations = 3\n",
        )
        .unwrap();
        let config = Config::load_with_env(
            Some(&file),
            env(&[
                ("RECSYS__OFFLINE__ALS__FACTORS", "32"),
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__PURCHASE", "2.5"),
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__RATING", "1.0"),
                ("RECSYS__MODEL__ROOT", "/elsewhere"),
                ("RECSYS_TEST_CASSANDRA", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.offline.als.factors, 32);
        assert_eq!(config.offline.als.iterations, 3);
        assert_eq!(config.offline.features.event_weights["purchase"], 2.5);
        assert_eq!(config.model.root, PathBuf::from("/elsewhere"));
    }

    #[test]
    fn a_section_set_in_part_keeps_the_other_defaults_of_its_role() {
        // `RedisConfig` serves the store (250 ms by default) and the cache (20 ms): naming only
        // the store's URL must not give the store the cache's timeout.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recsys.toml");
        std::fs::write(&file, "[store.redis]\nurl = \"redis://a:1/\"\n").unwrap();
        let defaults = Config::default();
        for config in [
            Config::load_with_env(Some(&file), env(&[])).unwrap(),
            Config::load_with_env(None, env(&[("RECSYS__STORE__REDIS__URL", "redis://a:1/")]))
                .unwrap(),
        ] {
            assert_eq!(config.store.redis.url, "redis://a:1/");
            assert_eq!(
                config.store.redis.timeout_ms,
                defaults.store.redis.timeout_ms
            );
            assert_eq!(
                config.cache.redis.timeout_ms,
                defaults.cache.redis.timeout_ms
            );
            assert_ne!(
                defaults.store.redis.timeout_ms,
                defaults.cache.redis.timeout_ms
            );
        }
        // Event weights are set whole, by the file or by the environment.
        std::fs::write(
            &file,
            "[offline.features]\nrating_event_type = \"stars\"\n[offline.features.event_weights]\nstars = 1.0\n",
        )
        .unwrap();
        let config = Config::load_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(
            config
                .offline
                .features
                .event_weights
                .keys()
                .collect::<Vec<_>>(),
            ["stars"]
        );
        let config = Config::load_with_env(
            None,
            env(&[
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__RATING", "1.0"),
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__BUY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config
                .offline
                .features
                .event_weights
                .keys()
                .collect::<Vec<_>>(),
            ["buy", "rating"]
        );
    }

    #[test]
    fn typos_and_out_of_range_values_name_the_field() {
        let typo = Config::load_with_env(None, env(&[("RECSYS__OFFLINE__ALS__FACTOSR", "3")]))
            .unwrap_err()
            .to_string();
        assert!(
            typo.contains("factosr") && typo.contains("RECSYS__OFFLINE__ALS__FACTOSR"),
            "{typo}"
        );
        let range = Config::load_with_env(None, env(&[("RECSYS__OFFLINE__ALS__FACTORS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(range.contains("offline.als.factors"), "{range}");
        let kind = Config::load_with_env(None, env(&[("RECSYS__OFFLINE__ALS__ALPHA", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(kind.contains("alpha"), "{kind}");
    }

    #[test]
    fn absurd_sizes_and_zero_timeouts_are_refused() {
        for (var, value, field) in [
            (
                "RECSYS__NEARLINE__MAX_BATCH",
                "1000000000000",
                "nearline.max_batch",
            ),
            (
                "RECSYS__NEARLINE__FEEDBACK__IMPRESSIONS_TO_HIDE",
                "0",
                "nearline.feedback.impressions_to_hide",
            ),
            (
                "RECSYS__ONLINE__MAX_REQUEST_MS",
                "0",
                "online.max_request_ms",
            ),
            ("RECSYS__CACHE__CAPACITY", "0", "cache.capacity"),
            (
                "RECSYS__STORE__HISTORY_CAP",
                "1000000000",
                "store.history_cap",
            ),
            (
                "RECSYS__CACHE__REDIS__TIMEOUT_MS",
                "0",
                "cache.redis.timeout_ms",
            ),
            (
                "RECSYS__ONLINE__MAX_IN_FLIGHT",
                "1000000",
                "online.max_in_flight",
            ),
        ] {
            let e = Config::load_with_env(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{var}={value}: {e}");
        }
    }

    #[test]
    fn bad_rules_and_impression_settings_name_the_field() {
        let cases = [
            (
                "[online.rules]\nboost = { i1 = 0.0 }\n",
                "online.rules.boost.\"i1\"",
            ),
            ("[online.rules]\npin = [\"a\\nb\"]\n", "online.rules.pin"),
            (
                "[online.rules]\npin = [\"i1\"]\nbury = [\"i1\"]\n",
                "online.rules.bury",
            ),
            (
                "[online.impressions]\nsample_rate = 1.5\n",
                "online.impressions.sample_rate",
            ),
            (
                "[online.impressions]\nqueue_capacity = 0\n",
                "online.impressions.queue_capacity",
            ),
            (
                "[online.impressions]\ntopic = \"recsys.events\"\n[nearline.feedback]\nenabled = true\n",
                "nearline.feedback.enabled",
            ),
            (
                "[nearline.feedback]\nnegative_event_types = [\"play\"]\n",
                "nearline.feedback.negative_event_types",
            ),
            (
                "[online.maturity]\nratings = [\"G\", \"G\"]\n",
                "online.maturity.ratings",
            ),
            (
                "[online.maturity]\nwhen_store_unavailable = \"X\"\n",
                "online.maturity.when_store_unavailable",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, (text, field)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let e = Config::load_with_env(Some(&path), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let path = dir.path().join("good.toml");
        std::fs::write(
            &path,
            "[online.rules]\npin = [\"i1\"]\nboost = { i2 = 2.5 }\nbury = [\"i3\"]\n",
        )
        .unwrap();
        let config = Config::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(config.online.rules.boost["i2"], 2.5);
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            Config::load_with_env(None, env(&[])).unwrap(),
            Config::default()
        );
    }
}
