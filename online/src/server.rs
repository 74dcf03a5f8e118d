//! Wiring: the feature store and cache, the model watcher, the gRPC server (Ranking, health,
//! reflection v1 and v1alpha) and the metrics endpoint, with one shutdown for all of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_shared::artifact::ModelRoot;
use recsys_shared::config::{Config, StoreBackend};
use recsys_shared::proto::v1::ranking_server::RankingServer;
use recsys_shared::proto::FILE_DESCRIPTOR_SET;
use recsys_shared::store::bulk;
use recsys_shared::store::cache::FeatureReader;
use recsys_shared::store::features::FeatureStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::admission::{Admission, AdmissionLayer};
use crate::catalog::Catalog;
use crate::connections;
use crate::error::OnlineError;
use crate::metrics::{CATALOG_ITEMS, MODEL_SWAPS, MODEL_VERSION};
use crate::service::{Ranker, RankingService};

/// Name of the service in gRPC health checks.
pub const SERVICE_NAME: &str = "recsys.v1.Ranking";

/// A running server; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub ranker: Arc<Ranker>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), OnlineError>>,
    watcher: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting requests, lets those in flight finish, and stops the watcher.
    pub async fn shutdown(self) -> Result<(), OnlineError> {
        let _ = self.shutdown.send(true);
        self.watcher.abort();
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

/// Loads new model versions as `CURRENT` moves.
struct ModelWatcher {
    root: ModelRoot,
    ranker: Arc<Ranker>,
    /// Set when the server owns an embedded store: load each model's members into it first.
    load_into: Option<FeatureStore>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    refused: Option<String>,
}

impl ModelWatcher {
    async fn refresh(&mut self) {
        let current = match self.root.current_version() {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read CURRENT");
                return;
            }
        };
        let serving = self.ranker.catalog().map(|c| c.version.clone());
        if serving.as_deref() == Some(current.as_str())
            || self.refused.as_deref() == Some(current.as_str())
        {
            return;
        }
        let started = Instant::now();
        let root = self.root.clone();
        let version = current.clone();
        let loaded = tokio::task::spawn_blocking(move || Catalog::load(&root, &version))
            .await
            .unwrap_or_else(|e| {
                Err(OnlineError::InvalidModel {
                    version: current.clone(),
                    problem: format!("loader panicked: {e}"),
                })
            });
        let catalog = match loaded {
            Ok(c) => c,
            Err(e) => {
                MODEL_SWAPS.with_label_values(&["refused"]).inc();
                tracing::error!(version = %current, error = %e,
                    serving = serving.as_deref().unwrap_or("none"),
                    "refusing model version; keeping the one being served");
                self.refused = Some(current);
                return;
            }
        };
        if let Some(store) = &self.load_into {
            match bulk::is_loaded(store, &current).await {
                Ok(true) => {}
                _ => match bulk::load_model_features(&self.root, Some(&current), store, |_, _| {})
                    .await
                {
                    Ok(report) => tracing::info!(members = report.members, version = %current,
                        "loaded the model's member features into the embedded store"),
                    Err(e) => tracing::error!(error = %e, version = %current,
                        "loading member features failed; members fold in from history"),
                },
            }
        }
        let items = catalog.len();
        let factor_bytes = catalog.factor_bytes();
        let old = self.ranker.swap(Arc::new(catalog));
        if let Some(old) = &old {
            let _ = MODEL_VERSION.remove_label_values(&[&old.version]);
        }
        MODEL_VERSION.with_label_values(&[&current]).set(1);
        CATALOG_ITEMS.set(items as i64);
        MODEL_SWAPS.with_label_values(&["swapped"]).inc();
        self.refused = None;
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.health
                .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                .await;
            self.health
                .set_service_status("", ServingStatus::Serving)
                .await;
        }
        tracing::info!(version = %current, items, factor_mib = factor_bytes >> 20,
            previous = old.as_ref().map(|o| o.version.as_str()).unwrap_or("none"),
            took_ms = started.elapsed().as_millis() as u64, "model swapped in");
    }
}

/// Starts everything the configuration describes and returns once the ports are bound and the
/// current model (if any) is loaded.
pub async fn start(config: &Config) -> Result<RunningServer, OnlineError> {
    let kv = recsys_shared::store::open(&config.store).await?;
    let features = FeatureStore::new(kv, config.store.history_cap);
    let reader = FeatureReader::from_config(
        features,
        &config.cache,
        &config.store,
    );
    reader.warm_cache().await;
    start_with_reader(config, reader).await
}

/// [`start`] with a feature reader the caller opened: one process that also writes features
/// (the quickstart's in-process nearline path) shares its embedded store and cache this way.
pub async fn start_with_reader(
    config: &Config,
    reader: FeatureReader,
) -> Result<RunningServer, OnlineError> {
    let features = reader.store().clone();
    tracing::info!(
        store = features.backend(),
        cache = reader.cache_name(),
        "feature store open"
    );
    let ranker = Arc::new(Ranker::new(
        reader,
        Duration::from_millis(config.online.max_request_ms),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let ready = Arc::new(AtomicBool::new(false));
    let owns_embedded = config.store.backend == StoreBackend::Embedded;
    let mut watcher = ModelWatcher {
        root: ModelRoot::new(&config.model.root),
        ranker: ranker.clone(),
        load_into: (owns_embedded && config.online.load_store_on_swap).then(|| features.clone()),
        health,
        ready: ready.clone(),
        refused: None,
    };
    watcher.refresh().await;
    if ranker.catalog().is_none() {
        tracing::warn!(root = %config.model.root.display(),
            "no servable model yet; answering UNAVAILABLE until one is published");
    }
    let poll = Duration::from_millis(config.online.model_poll_ms);
    let watcher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            watcher.refresh().await;
        }
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_addr = recsys_shared::ops::serve_http(
        &config.online.metrics_listen,
        ready,
        "no model loaded\n",
        stopped(shutdown_rx.clone()),
    )
    .await
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
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| OnlineError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| OnlineError::Config(format!("reflection: {e}")))?;
    let service = RankingServer::new(RankingService(ranker.clone()));
    let online = &config.online;
    // TCP_NODELAY on every accepted connection: without it a small response waits for the
    // client's delayed ACK (40 ms on Linux). `Server::tcp_nodelay` only covers `serve()`.
    let incoming = connections::limit(
        tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_millis(online.keepalive_interval_ms))),
        online.max_connections,
    );
    let admission = AdmissionLayer(Admission::new(
        online.max_in_flight,
        online.max_queued,
        Duration::from_millis(online.max_request_ms),
    ));
    let keepalive_timeout = Duration::from_millis(online.keepalive_timeout_ms);
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(online.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_millis(online.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .max_connection_age(Duration::from_millis(online.max_connection_age_ms))
        .max_connection_age_grace(keepalive_timeout)
        // Rapid-reset (CVE-2023-44487) and error-reset floods end the connection.
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256));
    let stop = stopped(shutdown_rx);
    let grpc = tokio::spawn(async move {
        builder
            .layer(admission)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(OnlineError::from)
    });
    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, "online tier serving recsys.v1.Ranking");
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        ranker,
        shutdown,
        grpc,
        watcher,
    })
}
