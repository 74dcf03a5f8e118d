//! `[online]`: the ranking API — its addresses and limits, business rules, maturity, impressions,
//! TLS and API keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{first_problem, within};

/// The ranking API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnlineConfig {
    /// gRPC address. Default `127.0.0.1:50051`.
    pub listen: String,
    /// HTTP address of `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Address of the REST/JSON API (`POST /v1/rank`, `/v1/homepage`, `/v1/similar-items`,
    /// `GET /openapi.json`) and the console (`/console`, see `online.console`): the same checks,
    /// keys, limits, TLS and metrics as gRPC. Unset: neither. Default unset.
    pub rest_listen: Option<String>,
    /// Take members' events over REST (`POST /v1/events`), checked with the nearline workers'
    /// rules and written to `kafka.events_topic` (needs `kafka.brokers`). Default false.
    pub event_ingest: bool,
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
    /// Rank leaves out the items in the member's history unless the request sets
    /// `exclude_seen = false` (homepage rows always leave them out). Default true.
    pub exclude_seen: bool,
    /// Ranking requests worked on at once; more wait in the queue. 0 (the default) means one per
    /// core — scoring is CPU work, and more in progress than the cores can run only makes every
    /// one of them slower — or, with `batch.enabled`, one per core times `batch.max_members`,
    /// so that a batched scan has requests to share its pass with.
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
    /// Batched whole-catalog scans of member vectors (iALS).
    pub batch: ScanBatchConfig,
    /// Where an iALS version's exact item factors are kept: `memory` (the default), or `mapped`
    /// from the version's raw file — the server then holds the `i8` codes the scan reads (a
    /// quarter of the bytes) and reads from the file only the rows it re-scores, which the kernel
    /// keeps in its page cache. For catalogs of millions of items.
    pub item_factors: ItemFactorsIn,
    /// How a member's vector finds its items: `exact` (the default: the whole catalog scored,
    /// every answer the true top), or `ann` — the version's nearest-neighbour index
    /// (`[offline.ann_index]`) proposes candidates and they are re-scored exactly: a few hundred
    /// microseconds at any catalog size, at a recall below 1 (`[online.ann]`). An experiment
    /// variant may choose its own. A version published without an index is scanned exactly.
    pub retrieval: Retrieval,
    pub ann: AnnSearchConfig,
    /// The console at `/console` on the REST port.
    pub console: ConsoleConfig,
}

/// The console (`/console` on `online.rest_listen`): models, experiments, member preview and
/// health, behind the API keys (`ConsoleRead`, `ConsoleOperate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve it (when the REST API is on). Default true.
    pub enabled: bool,
    /// How long a console login lasts. Default 8 hours.
    pub session_hours: u64,
    /// How often the health page's series are sampled into its one-hour ring buffer.
    /// Default 10 s.
    pub sample_seconds: u64,
    /// Other processes' Prometheus endpoints (`http://host:port/metrics`) sampled into the
    /// health page beside this server's own series: the nearline workers, typically. Default
    /// none (a quickstart's workers run in this process).
    pub scrape: Vec<String>,
    /// Where the experiments page finds take-rate reports (`experiment-<name>.json`, saved by
    /// `recsys offline experiment-report --out`). Default `<model.root>/reports`.
    pub reports_dir: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            session_hours: 8,
            sample_seconds: 10,
            scrape: Vec::new(),
            reports_dir: None,
        }
    }
}

/// How a member's vector finds its items (`online.retrieval`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retrieval {
    #[default]
    Exact,
    Ann,
}

impl Retrieval {
    pub fn name(self) -> &'static str {
        match self {
            Retrieval::Exact => "exact",
            Retrieval::Ann => "ann",
        }
    }
}

/// Searches of the item index (`online.retrieval = "ann"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnSearchConfig {
    /// Candidates a search explores in each norm range (efSearch; a search for more items than
    /// this explores that many): higher finds more of the true top and costs proportionally more.
    /// Default 64.
    pub expansion: usize,
    /// Candidates asked of each norm range per item wanted; those that could rank (by the index's
    /// own score and its error bound) are scored exactly. Default 1.
    pub candidates_per_item: usize,
    /// Share of ANN requests also scored exactly in the background, to report the recall in
    /// production (`recsys_ann_recall_at_k`). Default 0.01.
    pub recall_sample_rate: f64,
}

impl Default for AnnSearchConfig {
    fn default() -> Self {
        AnnSearchConfig {
            expansion: 64,
            candidates_per_item: 1,
            recall_sample_rate: 0.01,
        }
    }
}

/// Where a server keeps an iALS version's exact item factors (`online.item_factors`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemFactorsIn {
    #[default]
    Memory,
    Mapped,
}

/// Batched scans: a request that scores a member vector against the whole catalog joins a queue;
/// the scan thread takes every request already queued and scores them all in one pass over the
/// item codes (spread over every core for a large catalog), each with its own filters and `k`. At low load a request is a batch of one and
/// waits for nothing; under load the catalog is read from memory once per batch instead of once
/// per request (`recsys online bench --items 1000000` shows the difference). The history
/// families (EASE, item-kNN, BSPM) read a few rows per history item and are not batched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScanBatchConfig {
    /// Score member vectors on the scan thread, in batches. Off: each request scans the catalog
    /// on its own, on the thread that serves it. Default true.
    pub enabled: bool,
    /// Members scored in one pass at most. Default 32.
    pub max_members: usize,
    /// How long the scan thread holding one request waits for more before it starts; 0 (the
    /// default) takes only what is already queued, so no request ever waits for a batch to fill.
    pub max_wait_us: u64,
}

impl Default for ScanBatchConfig {
    fn default() -> Self {
        ScanBatchConfig {
            enabled: true,
            max_members: 32,
            max_wait_us: 0,
        }
    }
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

/// The impression log: what each answer showed, sent to `kafka.impressions_topic` through a bounded queue that never slows or fails a request — when
/// the queue is full or the broker does not take a message in time, the impression is dropped
/// and counted (`recsys_impressions_dropped_total`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImpressionsConfig {
    /// Default false.
    pub enabled: bool,
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
    /// The RPCs it may call: `Rank`, `Homepage`, `SimilarItems`, `Health`, `Reflection`, and
    /// the console's roles `ConsoleRead` (every page) and `ConsoleOperate` (promote and roll
    /// back; needs `ConsoleRead` too). Empty: all of them.
    pub rpcs: Vec<String>,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        OnlineConfig {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            rest_listen: None,
            event_ingest: false,
            model_poll_ms: 1000,
            experiments_file: None,
            load_store_on_swap: true,
            max_request_ms: 5000,
            exclude_seen: true,
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
            batch: ScanBatchConfig::default(),
            item_factors: ItemFactorsIn::default(),
            retrieval: Retrieval::default(),
            ann: AnnSearchConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

impl OnlineConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within("online.model_poll_ms", self.model_poll_ms, 10..=3_600_000)?;
        within("online.max_request_ms", self.max_request_ms, 1..=600_000)?;
        within("online.ann.expansion", self.ann.expansion, 1..=100_000)?;
        within(
            "online.ann.candidates_per_item",
            self.ann.candidates_per_item,
            1..=100,
        )?;
        within(
            "online.ann.recall_sample_rate",
            self.ann.recall_sample_rate,
            0.0..=1.0,
        )?;
        within(
            "online.impressions.sample_rate",
            self.impressions.sample_rate,
            0.0..=1.0,
        )?;
        within(
            "online.impressions.queue_capacity",
            self.impressions.queue_capacity,
            1..=10_000_000,
        )?;
        within(
            "online.impressions.delivery_timeout_ms",
            self.impressions.delivery_timeout_ms,
            100..=3_600_000,
        )?;
        within(
            "online.max_concurrent_streams",
            self.max_concurrent_streams,
            1..=100_000,
        )?;
        within(
            "online.max_connections",
            self.max_connections,
            1..=1_000_000,
        )?;
        within("online.batch.max_members", self.batch.max_members, 1..=1024)?;
        within(
            "online.batch.max_wait_us",
            self.batch.max_wait_us,
            0..=100_000,
        )?;
        within(
            "online.opening_timeout_ms",
            self.opening_timeout_ms,
            100..=600_000,
        )?;
        first_problem(vec![
            (
                self.max_in_flight <= 100_000,
                "online.max_in_flight",
                "must be at most 100000 (0: one per core)",
            ),
            (
                self.max_queued <= 1_000_000,
                "online.max_queued",
                "must be at most 1000000",
            ),
            (
                self.keepalive_interval_ms >= 1000 && self.keepalive_timeout_ms >= 100,
                "online.keepalive_interval_ms",
                "must be at least 1000 (and keepalive_timeout_ms at least 100)",
            ),
            (
                self.max_connection_age_ms >= 1000,
                "online.max_connection_age_ms",
                "must be at least 1000",
            ),
        ])?;
        if let Some((field, why)) = self.rules.problem() {
            return Err(format!("`{field}`: {why}"));
        }
        let ratings = &self.maturity.ratings;
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
        if let Some(rating) = &self.maturity.when_store_unavailable {
            if self.maturity.level(rating).is_none() {
                return Err(format!(
                    "`online.maturity.when_store_unavailable`: {rating:?} is not in online.maturity.ratings"
                ));
            }
        }
        super::check_address("online.listen", &self.listen)?;
        super::check_address("online.metrics_listen", &self.metrics_listen)?;
        if let Some(rest) = &self.rest_listen {
            super::check_address("online.rest_listen", rest)?;
        }
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err("`online.tls.cert_file` and `online.tls.key_file` go together".into());
        }
        if (tls.client_ca_file.is_some() || tls.metrics) && tls.cert_file.is_none() {
            return Err(
                "`online.tls.client_ca_file` and `online.tls.metrics` need `online.tls.cert_file`"
                    .into(),
            );
        }
        let console = &self.console;
        if !(1..=24 * 30).contains(&console.session_hours) {
            return Err(format!(
                "`online.console.session_hours` is {}; it must be between 1 and 720",
                console.session_hours
            ));
        }
        if !(1..=600).contains(&console.sample_seconds) {
            return Err(format!(
                "`online.console.sample_seconds` is {}; it must be between 1 and 600",
                console.sample_seconds
            ));
        }
        for (i, url) in console.scrape.iter().enumerate() {
            if !url.starts_with("http://") {
                return Err(format!(
                    "`online.console.scrape[{i}]` is {url:?}; an `http://host:port/path` address is expected"
                ));
            }
        }
        let auth = &self.auth;
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
        Ok(())
    }
}
