//! Wiring: the feature store and cache, the model and experiments watchers, the gRPC server (Ranking, health,
//! reflection v1 and v1alpha) and the metrics endpoint, with one shutdown for all of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_shared::artifact::published::LoadOptions;
use recsys_shared::artifact::{CurrentFollower, LoadFailure, ModelRoot};
use recsys_shared::config::{Config, ItemFactorsIn, OnlineConfig, Retrieval, StoreBackend};
use recsys_shared::proto::v1::ranking_server::RankingServer;
use recsys_shared::proto::FILE_DESCRIPTOR_SET;
use recsys_shared::tls::Validity;
use recsys_store::bulk;
use recsys_store::cache::FeatureReader;
use recsys_store::features::FeatureStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::admission::{Admission, AdmissionLayer};
use crate::auth::ApiKeys;
use crate::catalog::Catalog;
use crate::connections;
use crate::error::OnlineError;
use crate::experiments::Experiments;
use crate::impressions::ImpressionLog;
use crate::metrics::{
    CATALOG_ITEMS, EXPERIMENTS_ACTIVE, EXPERIMENT_RELOADS, MODEL_SWAPS, MODEL_VERSION,
    TLS_NOT_AFTER,
};
use crate::rpc::{ExperimentSet, ExperimentsRefusal, Ranker, RankingService};

/// Streams a client may reset before the server has accepted them, on one connection, before the
/// connection is ended as a rapid-reset flood: twice the streams it may have open at once.
fn pending_reset_streams(max_concurrent_streams: u32) -> usize {
    2 * max_concurrent_streams as usize
}

/// Name of the service in gRPC health checks.
pub const SERVICE_NAME: &str = "recsys.v1.Ranking";

/// A running server; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The REST API's address, when `online.rest_listen` is set.
    pub rest_addr: Option<SocketAddr>,
    pub ranker: Arc<Ranker>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), OnlineError>>,
    watcher: JoinHandle<()>,
    /// The console's health sampler, when the console is on.
    sampling: Option<JoinHandle<()>>,
    refusals: Arc<AtomicU64>,
    /// The validity of the gRPC port's TLS certificate, when it serves TLS.
    pub certificate: Option<Validity>,
}

impl RunningServer {
    /// Model versions this server refused to load (a refused version is tried again only when its
    /// files change).
    pub fn refused_loads(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Stops accepting requests, lets those in flight finish, and stops the watcher.
    pub async fn shutdown(self) -> Result<(), OnlineError> {
        let _ = self.shutdown.send(true);
        self.watcher.abort();
        if let Some(sampling) = &self.sampling {
            sampling.abort();
        }
        self.grpc.await.unwrap_or(Ok(()))
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), OnlineError> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// Loads new model versions as `CURRENT` moves, by the policy every reader of a model root shares
/// ([`CurrentFollower`]): a version that fails to load (a checksum, a shape, a non-finite factor)
/// is refused until its files change, and while `CURRENT` cannot be served the server keeps or
/// falls back to the newest intact version published before it.
struct ModelWatcher {
    follower: CurrentFollower<ModelRoot>,
    ranker: Arc<Ranker>,
    /// Set when the server owns an embedded store: load each model's members into it first.
    load_into: Option<FeatureStore>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    /// Load attempts refused by this watcher (the metric counts the whole process).
    refusals: Arc<AtomicU64>,
    /// `online.item_factors`, and the item index's search width.
    load: LoadOptions,
    /// `online.retrieval`.
    retrieval: Retrieval,
}

impl ModelWatcher {
    async fn refresh(&mut self) {
        let serving = self.ranker.catalog().map(|c| c.version.clone());
        let root = self.follower.source().clone();
        let load = self.load;
        let poll = self
            .follower
            .poll(serving.as_deref(), |version| {
                let root = root.clone();
                async move {
                    let started = Instant::now();
                    match tokio::task::spawn_blocking(move || {
                        Catalog::load_with(&root, &version, load)
                    })
                    .await
                    {
                        Ok(Ok(catalog)) => Ok((catalog, started)),
                        Ok(Err(e)) => Err(LoadFailure::Refused(e.to_string())),
                        Err(e) => Err(LoadFailure::Refused(format!("loader panicked: {e}"))),
                    }
                }
            })
            .await;
        for _ in 0..poll.refused {
            MODEL_SWAPS.with_label_values(&["refused"]).inc();
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(followed) = poll.followed {
            if followed.fallback {
                MODEL_SWAPS.with_label_values(&["fallback"]).inc();
            }
            let (catalog, started) = followed.model;
            self.swap_in(&followed.version, catalog, started).await;
        }
    }

    /// Puts a loaded catalog in service (after loading its members into an owned embedded store).
    async fn swap_in(&mut self, version: &str, catalog: Catalog, started: Instant) {
        if let Some(store) = &self.load_into {
            match bulk::is_loaded(store, version).await {
                Ok(true) => {}
                _ => match bulk::load_model_features(
                    self.follower.source(),
                    Some(version),
                    store,
                    |_, _| {},
                )
                .await
                {
                    Ok(report) => tracing::info!(members = report.members, version = %version,
                        "loaded the model's member features into the embedded store"),
                    Err(e) => tracing::error!(error = %e, version = %version,
                        "loading member features failed; members fold in from history"),
                },
            }
        }
        let items = catalog.len();
        let scorer_bytes = catalog.scorer_bytes();
        let catalog_family = catalog.model.family.name();
        let catalog = Arc::new(catalog);
        let old = self.ranker.swap(catalog.clone());
        if let Some(old) = &old {
            let _ = MODEL_VERSION.remove_label_values(&[&old.version]);
            // Its index pages and rows leave now: requests still on it read back the few they
            // need, and the new version's searches do not fill memory beside a whole old index.
            old.model.release_mapped_pages();
        }
        MODEL_VERSION.with_label_values(&[version]).set(1);
        CATALOG_ITEMS.set(items as i64);
        MODEL_SWAPS.with_label_values(&["swapped"]).inc();
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.health
                .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                .await;
            self.health
                .set_service_status("", ServingStatus::Serving)
                .await;
        }
        tracing::info!(version = %version, items, family = catalog_family, scorer_mib = scorer_bytes >> 20,
            previous = old.as_ref().map(|o| o.version.as_str()).unwrap_or("none"),
            took_ms = started.elapsed().as_millis() as u64, "model swapped in");
        // The load's garbage, and the old version's unless a request still holds it; then the
        // new version's item indexes whole, now that the old one's pages have left.
        drop(old);
        let searched = indexes_searched(self.retrieval, &self.ranker.experiments().experiments);
        let _ = tokio::task::spawn_blocking(move || {
            recsys_shared::memory::return_freed_memory();
            if searched {
                catalog.model.make_indexes_resident();
            }
        })
        .await;
    }
}

/// How often the held versions' mapped item rows (`online.item_factors = "mapped"`) leave the
/// process's memory: resident memory then holds the rows an exact cosine scan read lately, not
/// every one ever read (the version's whole file, in time). They stay in the page cache;
/// re-scored rows are read with `pread` and never enter it. The item indexes' pages stay (see
/// [`recsys_shared::artifact::PublishedModel::release_mapped_rows`]): at most the index's file.
const MAPPED_ROWS_RELEASE: Duration = Duration::from_secs(10);

/// Every `period`, drops the mapped item rows of every version the ranker holds (the served one
/// and the experiments') from this process's memory.
async fn release_mapped_rows(ranker: Arc<Ranker>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let held = ranker.experiments();
        for catalog in ranker.catalog().iter().chain(held.catalogs.values()) {
            catalog.model.release_mapped_rows();
        }
    }
}

/// Puts the experiments file in force as it changes.
///
/// A file is parsed and validated, and every model version its variants name is loaded and
/// verified (reusing a catalog already held), before the new set replaces the old one. A file
/// refused — a field named in the log — leaves the last good set in force and is not tried again
/// until its text changes; a removed file ends every experiment. A changed file is tried only once
/// it reads the same at two polls in a row, so a file caught half-written (a copy that truncated
/// it first) is never put in force.
struct ExperimentsWatcher {
    path: std::path::PathBuf,
    root: ModelRoot,
    ranker: Arc<Ranker>,
    /// `online.item_factors`, and the item index's search width.
    load: LoadOptions,
    /// `online.retrieval`.
    retrieval: Retrieval,
    /// The text in force; `None` when no file is.
    applied: Option<String>,
    /// The contents last refused.
    refused: Option<Vec<u8>>,
    /// Changed contents waiting to read the same at the next poll.
    settling: Settling,
}

/// Whether a changed file has stopped changing: the same contents at two polls in a row.
#[derive(Debug, Default)]
struct Settling(Option<Vec<u8>>);

impl Settling {
    /// Records `contents` as read at this poll; true when the previous poll read the same.
    fn settled(&mut self, contents: &[u8]) -> bool {
        if self.0.as_deref() == Some(contents) {
            self.0 = None;
            return true;
        }
        self.0 = Some(contents.to_vec());
        false
    }
}

impl ExperimentsWatcher {
    /// Puts the file in force as it reads now (at start, before the first request).
    async fn load_now(&mut self) {
        if let Ok(bytes) = std::fs::read(&self.path) {
            self.settling.settled(&bytes);
        }
        self.refresh().await;
    }

    async fn refresh(&mut self) {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the experiments file");
                return;
            }
        };
        if bytes.as_deref() == self.applied.as_deref().map(str::as_bytes)
            || (bytes.is_some() && bytes == self.refused)
        {
            return;
        }
        if bytes.as_ref().is_some_and(|b| !self.settling.settled(b)) {
            return;
        }
        let text = match bytes.map(String::from_utf8).transpose() {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e.utf8_error(),
                    "refusing the experiments file: it is not UTF-8 text; the last good one stays in force");
                self.ranker.set_experiments_file(
                    &self.path,
                    Some(ExperimentsRefusal {
                        text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        error: format!("not UTF-8 text: {}", e.utf8_error()),
                        at: chrono::Utc::now(),
                    }),
                );
                self.refused = Some(e.into_bytes());
                EXPERIMENT_RELOADS.with_label_values(&["refused"]).inc();
                return;
            }
        };
        let Some(text) = text else {
            self.ranker.set_experiments(ExperimentSet::default());
            self.applied = None;
            self.ranker.set_experiments_file(&self.path, None);
            EXPERIMENT_RELOADS.with_label_values(&["removed"]).inc();
            EXPERIMENTS_ACTIVE.set(0);
            tracing::info!(file = %self.path.display(), "experiments file removed: no experiment in force");
            return;
        };
        match self.load(&text).await {
            Ok(set) => {
                let active = set.experiments.experiments.len();
                let versions: Vec<&String> = set.catalogs.keys().collect();
                tracing::info!(file = %self.path.display(), experiments = active,
                    pinned_versions = ?versions, "experiments in force");
                self.ranker.set_experiments(set);
                self.ranker.set_experiments_file(&self.path, None);
                self.applied = Some(text);
                self.refused = None;
                EXPERIMENT_RELOADS.with_label_values(&["applied"]).inc();
                EXPERIMENTS_ACTIVE.set(active as i64);
            }
            Err(problem) => {
                tracing::error!(file = %self.path.display(), error = %problem,
                    "refusing the experiments file; the last good one stays in force");
                self.ranker.set_experiments_file(
                    &self.path,
                    Some(ExperimentsRefusal {
                        text: text.clone(),
                        error: problem,
                        at: chrono::Utc::now(),
                    }),
                );
                self.refused = Some(text.into_bytes());
                EXPERIMENT_RELOADS.with_label_values(&["refused"]).inc();
            }
        }
    }

    /// The set a file's text describes, with the catalogs of the versions it names.
    async fn load(&self, text: &str) -> Result<ExperimentSet, String> {
        let experiments = Experiments::parse(text).map_err(|e| e.to_string())?;
        let held = self.ranker.experiments();
        let current = self.ranker.catalog();
        let mut catalogs = HashMap::new();
        let searched = indexes_searched(self.retrieval, &experiments);
        for (version, field) in experiments.model_versions() {
            let catalog = match (held.catalogs.get(&version), &current) {
                (Some(catalog), _) => catalog.clone(),
                (None, Some(current)) if current.version == version => current.clone(),
                _ => {
                    let root = self.root.clone();
                    let owned = version.clone();
                    let load = self.load;
                    let loaded = tokio::task::spawn_blocking(move || {
                        let catalog = Catalog::load_with(&root, &owned, load)?;
                        // Served from now on, beside the main version (nothing leaves).
                        if searched {
                            catalog.model.make_indexes_resident();
                        }
                        Ok::<_, OnlineError>(catalog)
                    })
                    .await
                    .map_err(|e| format!("{field}: loading {version:?} panicked: {e}"))?;
                    Arc::new(loaded.map_err(|e| {
                        format!("{field}: model version {version:?} cannot be served: {e}")
                    })?)
                }
            };
            catalogs.insert(version, catalog);
        }
        Ok(ExperimentSet {
            experiments,
            text: Some(text.to_string()),
            catalogs,
        })
    }
}

/// The gRPC server's TLS settings from `online.tls`, or `None` for plaintext. An error names the
/// setting and the file.
fn server_tls(
    tls: &recsys_shared::config::ServerTlsConfig,
) -> Result<Option<(tonic::transport::ServerTlsConfig, Validity)>, OnlineError> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    recsys_shared::tls::install_crypto_provider();
    // Checked here as the TLS stack will use them, so a bad file is refused naming the file and
    // the cause (tonic reports only "transport error").
    let validity = recsys_shared::tls::check_server_identity(cert, key)
        .map_err(|e| OnlineError::Config(format!("online.tls.cert_file / key_file: {e}")))?;
    TLS_NOT_AFTER.set(validity.not_after);
    let now = chrono::Utc::now().timestamp();
    if let Some(problem) = validity.problem(now) {
        tracing::warn!(cert = %cert.display(), %problem, "serving a certificate clients will refuse");
    } else if validity.not_after - now < 14 * 86_400 {
        tracing::warn!(cert = %cert.display(), days_left = (validity.not_after - now) / 86_400,
            "the certificate expires within 14 days");
    }
    if let Some(ca) = &tls.client_ca_file {
        recsys_shared::tls::check_client_roots(ca)
            .map_err(|e| OnlineError::Config(format!("online.tls.client_ca_file: {e}")))?;
    }
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| OnlineError::Config(format!("online.tls.{field} {}: {e}", path.display())))
    };
    let mut config = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read("cert_file", cert)?, read("key_file", key)?),
    );
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "client_ca_file",
            ca,
        )?));
    }
    Ok(Some((config, validity)))
}

/// Serves the REST API on `addr` (over TLS with the gRPC port's certificate when it has one).
async fn serve_rest(
    addr: &str,
    tls: &recsys_shared::config::ServerTlsConfig,
    state: crate::rest::RestState,
    console: Option<crate::console::ConsoleState>,
    limits: recsys_shared::http_limits::ConnectionLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, OnlineError> {
    let mut app = crate::rest::router(state);
    if let Some(console) = console {
        app = app.merge(crate::console::router(console));
    }
    let bound = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            // Mutual TLS too when gRPC asks for it: the same clients, the same certificates.
            let tls = recsys_shared::tls::server_config_verifying(
                cert,
                key,
                tls.client_ca_file.as_deref(),
            )
            .map_err(|e| OnlineError::Config(format!("online.tls (REST): {e}")))?;
            recsys_shared::ops::serve_router_https(addr, tls, app, "REST API", limits, stop).await
        }
        _ => recsys_shared::ops::serve_router_http(addr, app, "REST API", limits, stop).await,
    };
    bound.map_err(|source| OnlineError::Listen {
        what: "REST",
        addr: addr.to_string(),
        source,
    })
}

/// Whether requests search item indexes — `online.retrieval = "ann"`, or an experiment variant
/// asking for it — and so whether a version's indexes are made resident whole when it goes into
/// service. A server that scans exactly leaves them in the page cache, holding none of their
/// pages (a variant that asks for ANN later reads in what its searches touch).
fn indexes_searched(retrieval: Retrieval, experiments: &Experiments) -> bool {
    retrieval == Retrieval::Ann
        || experiments
            .experiments
            .iter()
            .flat_map(|e| &e.variants)
            .any(|v| v.retrieval == Some(Retrieval::Ann))
}

/// How this server holds each version: the factors as `online.item_factors` says; the item index
/// whenever a version has one (mapping costs nothing until a search reads it, and an experiment
/// variant may ask for `ann` even when the default is `exact`).
fn load_options(online: &OnlineConfig) -> LoadOptions {
    LoadOptions {
        map_factors: online.item_factors == ItemFactorsIn::Mapped,
        item_index: Some(online.ann.expansion),
    }
}

/// Starts everything the configuration describes and returns once the ports are bound and the
/// current model (if any) is loaded.
pub async fn start(config: &Config) -> Result<RunningServer, OnlineError> {
    let kv = recsys_store::open(&config.store).await?;
    let features = FeatureStore::new(kv, config.store.history_cap);
    let reader = FeatureReader::from_config(features, &config.cache, &config.store);
    reader.warm_cache().await;
    start_with_reader(config, reader).await
}

/// [`start`] with a feature reader the caller opened: one process that also writes features
/// (the quickstart's in-process nearline path) shares its embedded store and cache this way.
pub async fn start_with_reader(
    config: &Config,
    reader: FeatureReader,
) -> Result<RunningServer, OnlineError> {
    // Before anything starts: a bad TLS file stops the start with nothing left running.
    let grpc_tls = server_tls(&config.online.tls)?;
    let features = reader.store().clone();
    tracing::info!(
        store = features.backend(),
        cache = reader.cache_name(),
        "feature store open"
    );
    let ranker = Arc::new(
        Ranker::new(reader, Duration::from_millis(config.online.max_request_ms))
            .with_impressions(ImpressionLog::from_config(config)?)
            .with_rules(config.online.rules.clone())
            .with_maturity(config.online.maturity.clone())
            .with_exclude_seen(config.online.exclude_seen)
            .with_scan_batches(&config.online.batch)
            .with_retrieval(config.online.retrieval, &config.online.ann),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let ready = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU64::new(0));
    let owns_embedded = config.store.backend == StoreBackend::Embedded;
    let mut watcher = ModelWatcher {
        follower: CurrentFollower::new(ModelRoot::new(&config.model.root)),
        ranker: ranker.clone(),
        load_into: (owns_embedded && config.online.load_store_on_swap).then(|| features.clone()),
        health,
        ready: ready.clone(),
        refusals: refusals.clone(),
        load: load_options(&config.online),
        retrieval: config.online.retrieval,
    };
    watcher.refresh().await;
    let mut experiments = ExperimentsWatcher {
        path: config
            .online
            .experiments_file
            .clone()
            .unwrap_or_else(|| config.model.root.join("experiments.toml")),
        root: ModelRoot::new(&config.model.root),
        ranker: ranker.clone(),
        load: load_options(&config.online),
        retrieval: config.online.retrieval,
        applied: None,
        refused: None,
        settling: Settling::default(),
    };
    ranker.set_experiments_file(&experiments.path, None);
    experiments.load_now().await;
    if ranker.catalog().is_none() {
        tracing::warn!(root = %config.model.root.display(),
            "no servable model yet; answering UNAVAILABLE until one is published");
    }
    let poll = Duration::from_millis(config.online.model_poll_ms);
    // The release runs beside the follower, not after it: a new version loads for a minute at
    // ten million items, and the served one's rows an exact scan reads meanwhile must leave.
    let release = release_mapped_rows(ranker.clone(), MAPPED_ROWS_RELEASE);
    let watcher = tokio::spawn(async move {
        let follow = async {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                watcher.refresh().await;
                experiments.refresh().await;
            }
        };
        tokio::join!(follow, release);
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tls = &config.online.tls;
    let metrics_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) if tls.metrics => Some(
            recsys_shared::tls::server_config(cert, key)
                .map_err(|e| OnlineError::Config(format!("online.tls (metrics): {e}")))?,
        ),
        _ => None,
    };
    let metrics_stop = stopped(shutdown_rx.clone());
    let metrics_addr = match metrics_tls {
        Some(tls) => {
            recsys_shared::ops::serve_https(
                &config.online.metrics_listen,
                tls,
                ready,
                "no model loaded\n",
                metrics_stop,
            )
            .await
        }
        None => {
            recsys_shared::ops::serve_http(
                &config.online.metrics_listen,
                ready,
                "no model loaded\n",
                metrics_stop,
            )
            .await
        }
    }
    .map_err(|source| OnlineError::Listen {
        what: "metrics",
        addr: config.online.metrics_listen.clone(),
        source,
    })?;

    let listener = tokio::net::TcpListener::bind(&config.online.listen)
        .await
        .map_err(|source| OnlineError::Listen {
            what: "gRPC",
            addr: config.online.listen.clone(),
            source,
        })?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|source| OnlineError::Listen {
            what: "gRPC",
            addr: config.online.listen.clone(),
            source,
        })?;
    let (reflection_v1, reflection_v1alpha) = if config.online.reflection {
        let v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| OnlineError::Config(format!("reflection: {e}")))?;
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| OnlineError::Config(format!("reflection: {e}")))?;
        (Some(v1), Some(v1alpha))
    } else {
        (None, None)
    };
    let service = RankingServer::new(RankingService(ranker.clone()));
    let online = &config.online;
    // TCP_NODELAY on every accepted connection: without it a small response waits for the
    // client's delayed ACK (40 ms on Linux). `Server::tcp_nodelay` only covers `serve()`.
    let incoming = connections::limit(
        tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_millis(online.keepalive_interval_ms))),
        online.max_connections,
        Duration::from_millis(online.opening_timeout_ms),
    );
    let keys = ApiKeys::from_config(&online.auth).map_err(OnlineError::Config)?;
    if keys.is_none() && !online.listen.starts_with("127.") && !online.listen.starts_with("[::1]") {
        tracing::warn!(listen = %online.listen,
            "the gRPC port is reachable from other hosts and no API key is required (online.auth)");
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let max_in_flight = match (online.max_in_flight, online.batch.enabled) {
        (0, false) => cores,
        (0, true) => cores * online.batch.max_members,
        (n, _) => n,
    };
    let admission = AdmissionLayer {
        admission: Admission::new(
            max_in_flight,
            match online.max_queued {
                0 => max_in_flight,
                n => n,
            },
            Duration::from_millis(online.max_request_ms),
        ),
        keys: keys.map(Arc::new),
    };
    // The console samples its health series from the start, so its plots have a history.
    let console = match (&online.rest_listen, online.console.enabled) {
        (Some(_), true) => {
            let sampler = Arc::new(crate::console::Sampler::new(
                Duration::from_secs(online.console.sample_seconds),
                online.console.scrape.clone(),
            ));
            Some(crate::console::ConsoleState::new(
                ranker.clone(),
                admission.keys.clone(),
                ModelRoot::new(&config.model.root),
                config.model.mirrored_from.clone(),
                sampler,
                &online.console,
                online.tls.cert_file.is_some(),
            ))
        }
        _ => None,
    };
    let sampling = console.as_ref().map(|c| c.sampler.spawn());
    // The REST API shares the slots, the queue and the keys: one server, one admission.
    let rest_addr = match &online.rest_listen {
        Some(addr) => Some(
            serve_rest(
                addr,
                &online.tls,
                crate::rest::RestState {
                    ranker: ranker.clone(),
                    admission: admission.admission.clone(),
                    keys: admission.keys.clone(),
                    ingest: crate::ingest::EventIngest::from_config(config)?.map(Arc::new),
                },
                console,
                // The gRPC port's connection limits, counted apart: a connection must speak
                // within the opening deadline, and one idle past the keepalive's patience is
                // closed.
                recsys_shared::http_limits::ConnectionLimits {
                    max_connections: online.max_connections,
                    opening: Duration::from_millis(online.opening_timeout_ms),
                    idle: Duration::from_millis(
                        online.keepalive_interval_ms + online.keepalive_timeout_ms,
                    ),
                },
                stopped(shutdown_rx.clone()),
            )
            .await?,
        ),
        None => None,
    };
    let keepalive_timeout = Duration::from_millis(online.keepalive_timeout_ms);
    let mut builder = tonic::transport::Server::builder();
    let mut certificate = None;
    if let Some((tls, validity)) = grpc_tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| OnlineError::Config(format!("online.tls: {e}")))?;
        certificate = Some(validity);
    }
    let builder = builder
        .max_concurrent_streams(online.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_millis(online.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .max_connection_age(Duration::from_millis(online.max_connection_age_ms))
        .max_connection_age_grace(keepalive_timeout)
        // Rapid-reset (CVE-2023-44487) and error-reset floods end the connection. A client that
        // cancels every call it may have open (its deadlines passing while the server is busy)
        // resets at most `max_concurrent_streams` streams before the server accepts them: twice
        // that is allowed, so ordinary deadlines never cost the client its connection.
        .http2_max_pending_accept_reset_streams(Some(pending_reset_streams(
            online.max_concurrent_streams,
        )))
        .http2_max_local_error_reset_streams(Some(256));
    let stop = stopped(shutdown_rx);
    let grpc = tokio::spawn(async move {
        builder
            .layer(admission)
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(OnlineError::from)
    });
    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, rest = ?rest_addr,
        "online tier serving recsys.v1.Ranking");
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        rest_addr,
        ranker,
        shutdown,
        grpc,
        watcher,
        sampling,
        refusals,
        certificate,
    })
}

#[cfg(test)]
mod tests {
    use super::Settling;

    #[test]
    fn a_changed_file_settles_only_when_two_polls_read_the_same() {
        let mut settling = Settling::default();
        // A copy caught halfway: empty, then part of the text, then all of it.
        assert!(!settling.settled(b""));
        assert!(!settling.settled(b"[[experiment]]"));
        assert!(!settling.settled(b"[[experiment]]\nname = \"a\"\n"));
        assert!(settling.settled(b"[[experiment]]\nname = \"a\"\n"));
        // Settled contents start over: the next change waits a poll again.
        assert!(!settling.settled(b"[[experiment]]\nname = \"a\"\n"));
        assert!(!settling.settled(b""));
        assert!(settling.settled(b""));
    }
}
