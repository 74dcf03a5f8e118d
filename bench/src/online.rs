//! `recsys online bench`: the scoring kernel next to NumPy on the same matrix, and a gRPC load
//! generator against a real `recsys online serve` process on loopback.
//!
//! Figures are printed, never asserted. Rounds alternate recsys and the peer so that CPU steal on a
//! shared machine hits both alike; the fastest round of each is reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
pub use recsys_shared::artifact::synthetic::{
    clustered_factors, synthetic_model, synthetic_model_of, synthetic_model_reusing_index,
    synthetic_model_with,
};
use recsys_shared::config::AnnIndexConfig;

pub(crate) use crate::process::{free_port, proc_status_kib, wait_ready};
use recsys_shared::model::Family;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::RankRequest;

use recsys_shared::model::ials::{BatchQuery, ItemMatrix};

/// Options of `recsys online bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Catalog sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    pub items: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub factors: usize,
    /// The family of the served model: `ials` (factors), or `ease` / `item-knn` / `bspm` (item weights;
    /// the NumPy kernel comparison is iALS's only and is skipped).
    #[arg(long, value_enum, default_value_t = BenchFamily::Ials)]
    pub family: BenchFamily,
    /// Weights per item of a history family's synthetic model (EASE's default `top_n`).
    #[arg(long, default_value_t = 1000)]
    pub weights_per_item: usize,
    /// Items returned per query (the top-k of both recsys and NumPy).
    #[arg(long, default_value_t = 100)]
    pub top: usize,
    /// Member vectors scored per kernel round.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Members per pass of the kernel's batched figure (recsys's `top_k_batch`, NumPy's `Y @ U`);
    /// the server batches whatever is queued, up to `online.batch.max_members`.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Alternating rounds — of the kernel (recsys, NumPy, recsys, ...) and, with
    /// `--experiments`, of the one-request-at-a-time servers (plain, experiment, experiment +
    /// impressions); the fastest of each is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Members in the served model (vectors and histories in the embedded store).
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    /// Concurrent requests in flight from the load generator.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// HTTP/2 connections the load generator spreads requests over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Seconds of load per catalog size (after 2 s of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Measure only the kernel.
    #[arg(long)]
    pub skip_server: bool,
    /// Also run the server with `online.item_factors = "mapped"` (iALS) and print its latency and
    /// memory — anonymous, and file pages of the mapped factors resident — next to the held run's.
    #[arg(long)]
    pub mapped: bool,
    /// Also measure ANN retrieval (iALS): the item index built over the kernel's items against
    /// FAISS HNSW and IVF-PQ (`deploy/bench/faiss_ann.py`), then a server with
    /// `online.retrieval = "ann"` (its version published with the index).
    #[arg(long)]
    pub ann: bool,
    /// With `--ann`, skip the index-against-FAISS comparison on the kernel's items (an index
    /// build of its own): only the server runs with ANN retrieval.
    #[arg(long)]
    pub ann_server_only: bool,
    /// Publish the served version without the similar-items index (`SimilarItems` then scans
    /// exactly) and skip its measurement: at ten million items it is another build as long as the
    /// item index's. The served version then reuses the item index `--ann` built over the same
    /// items.
    #[arg(long)]
    pub no_similar_index: bool,
    /// efSearch values of the item index measured with `--ann`.
    #[arg(long, value_delimiter = ',', default_values_t = [32usize, 64, 128, 256])]
    pub ann_expansion: Vec<usize>,
    /// Candidates kept while linking an item into the index `--ann` builds (efConstruction,
    /// `offline.ann_index.expansion_add`; FAISS's HNSW is built with the same).
    #[arg(long, default_value_t = AnnIndexConfig::default().expansion_add)]
    pub ann_expansion_add: usize,
    /// Candidates kept while linking an item into the similar-items index `--ann` builds
    /// (`offline.ann_index.similar_expansion_add`).
    #[arg(long, default_value_t = AnnIndexConfig::default().similar_expansion_add)]
    pub ann_similar_expansion_add: usize,
    /// Candidates per item asked of each norm range with `--ann` (`online.ann.candidates_per_item`).
    #[arg(long, default_value_t = 1)]
    pub ann_candidates_per_item: usize,
    /// efSearch values of FAISS's HNSW with `--ann`.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 256, 512, 1024])]
    pub faiss_ef: Vec<usize>,
    /// FAISS indexes built with `--ann`: `hnsw` (inner product), `hnsw_mips` (L2 over the items
    /// with one dimension added, the usual reduction of inner products to L2), `ivf_pq`.
    #[arg(long, value_delimiter = ',', default_values_t = ["hnsw".to_string(), "hnsw_mips".to_string(), "ivf_pq".to_string()])]
    pub faiss_indexes: Vec<String>,
    /// Do not run the NumPy and FAISS peers.
    #[arg(long)]
    pub skip_peer: bool,
    /// Also run the server with TLS on the gRPC port (certificates generated with `openssl`) and
    /// print its QPS next to plaintext's.
    #[arg(long)]
    pub tls: bool,
    /// Also hot-swap a version under load (the served one published again under a new id;
    /// with `--ann` and `--mapped` as given) and print failed requests, the swap's duration and
    /// peak RSS during it against the steady RSS (target ≤ 2×).
    #[arg(long)]
    pub swap: bool,
    /// Also measure Rank through the REST/JSON API one request at a time, next to gRPC one at
    /// a time (the same server setup and requests).
    #[arg(long)]
    pub rest: bool,
    /// Also time every console page (`/console`) on a server of this catalog while it serves
    /// Homepage traffic: server-side render time and page weight (targets ≤ 300 ms, ≤ 200 KB).
    #[arg(long)]
    pub console: bool,
    /// Also run the server with a 50/50 experiment over two published versions and impressions
    /// logged to a Tansu broker (started here), print p50 and RSS next to the plain run's, then
    /// kill the broker for `--broker-down-seconds` of load and count failed requests and dropped
    /// impressions.
    #[arg(long)]
    pub experiments: bool,
    /// Seconds of load with the broker dead (with `--experiments`).
    #[arg(long, default_value_t = 30)]
    pub broker_down_seconds: u64,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Directory of `numpy_scoring.py`.
    #[arg(long, default_value = "deploy/bench")]
    pub peer_dir: PathBuf,
    /// Scratch directory [default: a temporary one].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Measure the kernel (and with `--ann` the item index) on a published iALS version's own
    /// factors instead of synthetic ones: its `item_factors.f32` is the catalog and the first
    /// `--queries` rows of its `user_factors.parquet` the members. `--items` and `--factors` are
    /// read from the version; needs `--skip-server` (the servers publish synthetic versions).
    #[arg(long, value_name = "VERSION_DIR", requires = "skip_server")]
    pub trained: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The model family `recsys online bench` serves.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchFamily {
    Ials,
    Ease,
    ItemKnn,
    Bspm,
}

impl BenchFamily {
    pub fn family(self) -> Family {
        match self {
            BenchFamily::Ials => Family::Ials,
            BenchFamily::Ease => Family::Ease,
            BenchFamily::ItemKnn => Family::ItemKnn,
            BenchFamily::Bspm => Family::Bspm,
        }
    }
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A published iALS version's own factors, for `--trained`.
struct TrainedFactors {
    /// Row-major item factors.
    items: Vec<f32>,
    /// The first `--queries` member vectors, row-major.
    members: Vec<f32>,
    factors: usize,
}

impl TrainedFactors {
    /// Reads the item factors and the first `queries` member vectors of `version`; refuses item
    /// rows of another width than the members'.
    fn read(version: &Path, queries: usize) -> Result<TrainedFactors, Box<dyn std::error::Error>> {
        use recsys_shared::artifact::files;
        let members =
            recsys_shared::artifact::read_factors(&version.join(files::USER_FACTORS), "user_id")?;
        let path = version.join(files::ITEM_FACTORS_RAW);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("{}: {e} (an iALS version has it)", path.display()))?;
        let k = members.factors;
        if k == 0 || !bytes.len().is_multiple_of(4 * k) {
            return Err(format!(
                "{}: {} bytes of item factors are not rows of the members' {k} factors",
                path.display(),
                bytes.len()
            )
            .into());
        }
        let items = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let take = queries.min(members.ids.len());
        Ok(TrainedFactors {
            items,
            members: members.vectors[..take * k].to_vec(),
            factors: k,
        })
    }

    fn item_count(&self) -> usize {
        self.items.len() / self.factors
    }
}

struct KernelFigures {
    recsys_us: f64,
    exact_us: f64,
    numpy_us: Option<f64>,
    /// µs per query when `--batch` queries share a pass.
    batched_us: f64,
    numpy_batched_us: Option<f64>,
    recall: f64,
    ann: Option<crate::ann::AnnFigures>,
}

fn time_queries(queries: &[Vec<f32>], mut f: impl FnMut(&[f32]) -> usize) -> f64 {
    let started = Instant::now();
    let mut sink = 0usize;
    for q in queries {
        sink = sink.wrapping_add(f(q));
    }
    std::hint::black_box(sink);
    started.elapsed().as_secs_f64() * 1e6 / queries.len() as f64
}

fn run_numpy(args: &BenchArgs, dir: &Path, batch: usize) -> Result<f64, String> {
    let script = args.peer_dir.join("numpy_scoring.py");
    let out = Command::new(&args.python)
        .arg(&script)
        .arg(dir)
        .args(["--k", &args.top.to_string(), "--rounds", "1"])
        .args(["--batch", &batch.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{} {}: {e}", args.python, script.display()))?;
    if !out.status.success() {
        return Err(format!("{} exited with {}", script.display(), out.status));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("peer output {line:?}: {e}"))?;
    json["us_per_query"]
        .as_f64()
        .ok_or_else(|| format!("peer output {line:?} has no us_per_query"))
}

fn write_f32(path: &Path, values: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes)
}

/// The kernel's figures on `n` synthetic items, or on `trained` factors when given.
fn kernel(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
    trained: Option<TrainedFactors>,
) -> Result<KernelFigures, Box<dyn std::error::Error>> {
    let k = args.factors;
    // The served version's seed: the same items, and the queries are its first members, so an
    // item index built here serves the version too.
    let (factors, members) = match trained {
        Some(trained) => (trained.items, trained.members),
        None => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
            clustered_factors(&mut rng, n, args.queries, k)
        }
    };
    let queries: Vec<Vec<f32>> = members.chunks(k).map(<[f32]>::to_vec).collect();
    std::fs::create_dir_all(dir)?;
    write_f32(&dir.join("items.f32"), &factors)?;
    write_f32(&dir.join("queries.f32"), &queries.concat())?;
    std::fs::write(
        dir.join("meta.json"),
        serde_json::json!({"items": n, "factors": k, "queries": args.queries}).to_string(),
    )?;
    let matrix = ItemMatrix::new(factors, k);
    // Agreement of the quantised pool with the exact top-k.
    let mut hits = 0usize;
    for q in &queries {
        let exact: std::collections::HashSet<u32> = matrix
            .top_k_exact(q, args.top, |_| true)
            .iter()
            .map(|s| s.index)
            .collect();
        hits += matrix
            .top_k(q, args.top, |_| true)
            .iter()
            .filter(|s| exact.contains(&s.index))
            .count();
    }
    let recall = hits as f64 / (queries.len() * args.top) as f64;
    let mut figures = KernelFigures {
        recsys_us: f64::INFINITY,
        exact_us: f64::INFINITY,
        numpy_us: None,
        batched_us: f64::INFINITY,
        numpy_batched_us: None,
        recall,
        ann: None,
    };
    let batch = args.batch.max(1);
    let all = |_: u32| true;
    for round in 0..args.rounds {
        let r = time_queries(&queries, |q| matrix.top_k(q, args.top, |_| true).len());
        let e = time_queries(&queries, |q| {
            matrix.top_k_exact(q, args.top, |_| true).len()
        });
        let started = Instant::now();
        let mut sink = 0usize;
        for chunk in queries.chunks(batch) {
            let batch: Vec<BatchQuery> = chunk
                .iter()
                .map(|user| BatchQuery {
                    user,
                    k: args.top,
                    allowed: &all,
                })
                .collect();
            sink += matrix.top_k_batch(&batch).len();
        }
        std::hint::black_box(sink);
        let b = started.elapsed().as_secs_f64() * 1e6 / queries.len() as f64;
        figures.recsys_us = figures.recsys_us.min(r);
        figures.exact_us = figures.exact_us.min(e);
        figures.batched_us = figures.batched_us.min(b);
        let mut line = format!(
            "  round {}: recsys {r:.1} µs/query (exact f32 path {e:.1}; {batch} per pass {b:.1})",
            round + 1
        );
        if !args.skip_peer {
            for (size, best) in [
                (1, &mut figures.numpy_us),
                (batch, &mut figures.numpy_batched_us),
            ] {
                match run_numpy(args, dir, size) {
                    Ok(us) => {
                        *best = Some(best.map_or(us, |b: f64| b.min(us)));
                        line.push_str(&format!(", NumPy {size} per product {us:.1} µs/query"));
                    }
                    Err(e) => {
                        eprintln!(
                            "  NumPy peer failed ({e}); pip install -r deploy/bench/requirements.txt"
                        );
                    }
                }
            }
        }
        eprintln!("{line}");
    }
    if args.ann && !args.ann_server_only {
        let settings = crate::ann::AnnSettings {
            top: args.top,
            factors: args.factors,
            expansions: &args.ann_expansion,
            expansion_add: args.ann_expansion_add,
            similar_expansion_add: args.ann_similar_expansion_add,
            candidates_per_item: args.ann_candidates_per_item,
            faiss_ef: &args.faiss_ef,
            faiss_indexes: &args.faiss_indexes,
            similar: !args.no_similar_index,
            peer: (!args.skip_peer).then_some((args.python.as_str(), args.peer_dir.as_path())),
        };
        figures.ann = Some(crate::ann::measure(&settings, dir, &matrix, &queries)?);
    }
    Ok(figures)
}

struct ServerFigures {
    /// Requests answered.
    requests: u64,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    rss_mib: f64,
    peak_rss_mib: f64,
    /// Of `rss_mib`: anonymous memory, and resident pages of mapped files.
    rss_anon_mib: f64,
    rss_file_mib: f64,
    /// Of `rss_file_mib`: each mapped file's resident pages, largest first.
    rss_by_file: Vec<(String, f64)>,
    limit_mib: f64,
    /// Impressions sent and dropped (experiment runs).
    impressions_sent: f64,
    impressions_dropped: f64,
    /// Seconds after the load until the first drop was counted (broker-down runs).
    drops_after_seconds: Option<f64>,
    /// Mean µs a request spent inside the server on experiment allocation and on impression
    /// logging (`recsys_experiment_work_seconds`).
    allocation_us: f64,
    impressions_us: f64,
    /// With `ServerMode::swap`.
    swap: Option<crate::swap::SwapFigures>,
}

/// What the benchmarked server runs with besides the plain setup.
#[derive(Default)]
struct ServerMode<'a> {
    tls: Option<&'a recsys_shared::testkit::TestCertificates>,
    /// Load through the REST API (`online.rest_listen`) instead of gRPC.
    rest: bool,
    /// Experiments file, and the brokers impressions go to (none: impressions off).
    experiments: Option<(PathBuf, Option<String>)>,
    /// Killed after the warm-up: the load then runs against a dead broker.
    kill_broker: Option<&'a mut recsys_shared::testkit::TansuBroker>,
    /// Seconds of load (default `--seconds`).
    seconds: Option<u64>,
    /// Requests in flight (default `--concurrency`).
    concurrency: Option<usize>,
    /// `online.batch.enabled` (default: the server's default, on).
    batching: Option<bool>,
    /// `online.item_factors = "mapped"`.
    mapped: bool,
    /// `online.retrieval = "ann"`.
    ann: bool,
    /// Publish the served version again after the warm-up and load until it is swapped in
    /// (`swap.rs`).
    swap: bool,
}

async fn server(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
    mode: ServerMode<'_>,
) -> Result<ServerFigures, Box<dyn std::error::Error>> {
    let tls = mode.tls;
    let models = dir.join("models");
    let store = dir.join("features");
    if !models.join("CURRENT").exists() {
        let width = match args.family {
            BenchFamily::Ials => args.factors,
            _ => args.weights_per_item,
        };
        // With `--ann` the version carries its item index, whatever the catalog's size.
        let index = AnnIndexConfig {
            enabled: args.ann,
            min_items: 0,
            similar_items: !args.no_similar_index,
            expansion_add: args.ann_expansion_add,
            similar_expansion_add: args.ann_similar_expansion_add,
            ..Default::default()
        };
        // The index `--ann` built over the kernel's items (the same items) serves the version
        // too when no similar-items index is wanted: a ten-million-item build is half an hour.
        let built = dir.join("item_index.ann");
        if args.ann && args.no_similar_index && args.family == BenchFamily::Ials && built.exists() {
            eprintln!("  publishing the version with the item index built above");
            synthetic_model_reusing_index(&models, n, args.members, width, args.seed, &built)?;
        } else {
            synthetic_model_with(
                args.family.family(),
                &models,
                n,
                args.members,
                width,
                args.seed,
                &index,
            )?;
        }
    }
    let grpc_port = free_port();
    let metrics_port = free_port();
    let rest_port = free_port();
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["online", "serve"])
        .env("RECSYS__MODEL__ROOT", &models)
        .env("RECSYS__STORE__EMBEDDED__PATH", &store)
        .env("RECSYS__ONLINE__LISTEN", format!("127.0.0.1:{grpc_port}"))
        .env(
            "RECSYS__ONLINE__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("RECSYS_LOG", "warn")
        // A closed loop of `--concurrency` requests is overload by design on a small machine:
        // queue them all (as before admission control) so the figures are throughput and
        // latency, not shedding. `recsys online soak` measures the shedding.
        .env("RECSYS__ONLINE__MAX_QUEUED", "1024")
        .envs(
            mode.mapped
                .then_some(("RECSYS__ONLINE__ITEM_FACTORS", "mapped")),
        )
        .envs(mode.ann.then_some(("RECSYS__ONLINE__RETRIEVAL", "ann")))
        .envs(mode.rest.then(|| {
            (
                "RECSYS__ONLINE__REST_LISTEN",
                format!("127.0.0.1:{rest_port}"),
            )
        }))
        .envs(
            mode.batching
                .map(|on| ("RECSYS__ONLINE__BATCH__ENABLED", on.to_string())),
        )
        .envs(tls.iter().flat_map(|certs| {
            [
                ("RECSYS__ONLINE__TLS__CERT_FILE", certs.path("server.pem")),
                ("RECSYS__ONLINE__TLS__KEY_FILE", certs.path("server.key")),
            ]
        }))
        .envs(mode.experiments.iter().flat_map(|(file, brokers)| {
            let mut vars = vec![(
                "RECSYS__ONLINE__EXPERIMENTS_FILE",
                file.display().to_string(),
            )];
            if let Some(brokers) = brokers {
                vars.extend([
                    ("RECSYS__ONLINE__IMPRESSIONS__ENABLED", "true".to_string()),
                    // Short, so that impressions stuck behind a dead broker are dropped (and
                    // counted) within the run.
                    (
                        "RECSYS__ONLINE__IMPRESSIONS__DELIVERY_TIMEOUT_MS",
                        IMPRESSION_TIMEOUT_MS.to_string(),
                    ),
                    ("RECSYS__KAFKA__BROKERS", brokers.clone()),
                ]);
            }
            vars
        }))
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let result = async {
        if !wait_ready(
            &format!("127.0.0.1:{metrics_port}"),
            Duration::from_secs(300),
        )
        .await
        {
            return Err("server did not become ready".into());
        }
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            let channel = match tls {
                None => {
                    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?
                }
                Some(certs) => {
                    recsys_shared::tls::install_crypto_provider();
                    tonic::transport::Channel::from_shared(format!(
                        "https://localhost:{grpc_port}"
                    ))?
                    .tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                                certs.path("ca.pem"),
                            )?))
                            .domain_name("localhost"),
                    )?
                }
            };
            clients.push(RankingClient::new(channel.connect().await?));
        }
        // Set to end the load before its seconds are up.
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = |seconds: u64| {
            let stop = Instant::now() + Duration::from_secs(seconds);
            let ended = ended.clone();
            let tasks: Vec<_> = (0..mode.concurrency.unwrap_or(args.concurrency).max(1))
                .map(|t| {
                    let mut client = clients[t % clients.len()].clone();
                    let ended = ended.clone();
                    let members = args.members;
                    let top = args.top as u64;
                    let rest = mode
                        .rest
                        .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], rest_port)));
                    tokio::spawn(async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                        let mut latencies = Vec::new();
                        let mut errors = 0u64;
                        // REST: a keep-alive connection per task (HTTP/1.1 has one request
                        // in flight per connection).
                        let mut connection = match rest {
                            Some(addr) => Some(crate::http1::Connection::open(addr).await),
                            None => None,
                        };
                        while Instant::now() < stop
                            && !ended.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            let request = RankRequest {
                                user_id: format!("m{}", rng.random_range(0..members)),
                                k: top,
                                exclude_seen: Some(true),
                                ..Default::default()
                            };
                            let started = Instant::now();
                            let ok = match connection.as_mut() {
                                None => client.rank(request).await.is_ok(),
                                Some(Ok(c)) => {
                                    let body = serde_json::to_vec(&request).expect("encodes");
                                    matches!(c.post("/v1/rank", &body).await, Ok((200, _)))
                                }
                                Some(Err(_)) => false,
                            };
                            if ok {
                                latencies.push(started.elapsed().as_micros() as u32);
                            } else {
                                errors += 1;
                                if let (Some(addr), true) = (rest, errors % 100 == 1) {
                                    connection = Some(crate::http1::Connection::open(addr).await);
                                }
                            }
                        }
                        (latencies, errors)
                    })
                })
                .collect();
            async move {
                let mut all = Vec::new();
                let mut errors = 0;
                for t in tasks {
                    let (l, e) = t.await.expect("load task");
                    all.extend(l);
                    errors += e;
                }
                (all, errors)
            }
        };
        load(2).await; // warm-up: caches, connections
        let killed = mode.kill_broker.is_some();
        if let Some(broker) = mode.kill_broker {
            broker.kill();
        }
        let started = Instant::now();
        let (mut latencies, errors, swap) = if mode.swap {
            let limit = Duration::from_secs(SWAP_LIMIT_SECONDS);
            let running = load(SWAP_LIMIT_SECONDS + 60);
            let watched = crate::swap::watch(pid, metrics_port, &models, ended.clone(), limit);
            let ((latencies, errors), swap) = tokio::join!(running, watched);
            (latencies, errors, Some(swap?))
        } else {
            let (latencies, errors) = load(mode.seconds.unwrap_or(args.seconds)).await;
            (latencies, errors, None)
        };
        // Impressions queued behind a dead broker time out and are counted as dropped: wait (at
        // most a minute) for the count to appear and settle.
        let mut drops_after = None;
        if killed {
            let ended = Instant::now();
            let mut last = -1.0;
            while ended.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let dropped =
                    recsys_shared::ops::scrape(metrics_port, "recsys_impressions_dropped_total");
                if dropped > 0.0 && drops_after.is_none() {
                    drops_after = Some(ended.elapsed().as_secs_f64());
                }
                if dropped > 0.0 && dropped == last {
                    break;
                }
                last = dropped;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        // What the scorer holds: factors (4 bytes each) or weights (an item index and a weight).
        let factor_bytes = match args.family {
            BenchFamily::Ials => (n * args.factors * 4) as f64,
            _ => (n * args.weights_per_item * 8) as f64,
        };
        Ok(ServerFigures {
            requests: latencies.len() as u64,
            qps: latencies.len() as f64 / elapsed,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            p999_ms: percentile(&latencies, 0.999),
            errors,
            rss_mib: proc_status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
            peak_rss_mib: proc_status_kib(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
            rss_anon_mib: proc_status_kib(pid, "RssAnon:").unwrap_or(0) as f64 / 1024.0,
            rss_file_mib: proc_status_kib(pid, "RssFile:").unwrap_or(0) as f64 / 1024.0,
            rss_by_file: crate::process::resident_files_mib(pid),
            limit_mib: 2.0 * factor_bytes / (1 << 20) as f64 + 200.0,
            impressions_sent: recsys_shared::ops::scrape(
                metrics_port,
                "recsys_impressions_sent_total",
            ),
            impressions_dropped: recsys_shared::ops::scrape(
                metrics_port,
                "recsys_impressions_dropped_total",
            ),
            drops_after_seconds: drops_after,
            allocation_us: mean_us(metrics_port, "allocation"),
            impressions_us: mean_us(metrics_port, "impressions"),
            swap,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// [`server`], its error as text.
async fn server_figures(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
    mode: ServerMode<'_>,
) -> Result<ServerFigures, String> {
    server(args, n, dir, mode).await.map_err(|e| e.to_string())
}

/// Rank one request at a time over REST against gRPC (target: REST p99 ≤ gRPC p99 + 0.3 ms).
async fn rest_runs(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
) -> Result<Vec<(&'static str, serde_json::Value)>, String> {
    let one = |rest| ServerMode {
        rest,
        concurrency: Some(1),
        ..Default::default()
    };
    let grpc = server_figures(args, n, dir, one(false)).await?;
    let rest = server_figures(args, n, dir, one(true)).await?;
    let extra = rest.p99_ms - grpc.p99_ms;
    eprintln!(
        "Rank one request at a time: REST p50 {:.2} ms, p99 {:.2} ms, {} errors; gRPC p50 {:.2} ms, p99 {:.2} ms → REST p99 {extra:+.2} ms (target ≤ +0.3 ms: {})",
        rest.p50_ms, rest.p99_ms, rest.errors, grpc.p50_ms, grpc.p99_ms,
        if extra <= 0.3 { "met" } else { "NOT met" }
    );
    Ok(vec![
        ("rest_one_at_a_time_p50_ms", rest.p50_ms.into()),
        ("rest_one_at_a_time_p99_ms", rest.p99_ms.into()),
        ("rest_errors", rest.errors.into()),
        ("grpc_one_at_a_time_p50_ms", grpc.p50_ms.into()),
        ("grpc_one_at_a_time_p99_ms", grpc.p99_ms.into()),
        ("rest_p99_extra_ms", extra.into()),
    ])
}

/// Batched scans against the path without them (`online.batch.enabled = false`: each request
/// scans alone, on the thread serving it) at the same concurrency, and one request at a time.
async fn batching_runs(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
    batched: &ServerFigures,
) -> Result<Vec<(&'static str, serde_json::Value)>, String> {
    let alone = server_figures(
        args,
        n,
        dir,
        ServerMode {
            batching: Some(false),
            ..Default::default()
        },
    )
    .await?;
    let single = server_figures(
        args,
        n,
        dir,
        ServerMode {
            concurrency: Some(1),
            ..Default::default()
        },
    )
    .await?;
    let gain = batched.qps / alone.qps;
    eprintln!(
        "server without batched scans: {:.0} QPS at concurrency {}, p50 {:.2} ms, p99 {:.2} ms, {} errors → batched scans serve {gain:.2}× its QPS",
        alone.qps, args.concurrency, alone.p50_ms, alone.p99_ms, alone.errors,
    );
    eprintln!(
        "server one request at a time: {:.0} QPS, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, {} errors",
        single.qps, single.p50_ms, single.p99_ms, single.p999_ms, single.errors,
    );
    Ok(vec![
        ("unbatched_qps", alone.qps.into()),
        ("unbatched_p99_ms", alone.p99_ms.into()),
        ("unbatched_errors", alone.errors.into()),
        ("batched_qps_gain", gain.into()),
        ("one_at_a_time_p50_ms", single.p50_ms.into()),
        ("one_at_a_time_p99_ms", single.p99_ms.into()),
        ("one_at_a_time_p999_ms", single.p999_ms.into()),
        ("one_at_a_time_errors", single.errors.into()),
    ])
}

/// The mean of one part of `recsys_experiment_work_seconds`, in µs (0 when unobserved).
fn mean_us(metrics_port: u16, part: &str) -> f64 {
    let series = |what: &str| {
        recsys_shared::ops::scrape(
            metrics_port,
            &format!("recsys_experiment_work_seconds_{what}{{part=\"{part}\"}}"),
        )
    };
    let count = series("count");
    if count > 0.0 {
        series("sum") / count * 1e6
    } else {
        0.0
    }
}

/// The longest a hot swap may take in `--swap` before the run fails.
const SWAP_LIMIT_SECONDS: u64 = 1800;

/// A version hot-swapped under load at `--concurrency` (with `--ann` / `--mapped` as given: the
/// configuration a large catalog is served with): failed requests, and peak RSS during the swap
/// against twice the steady RSS.
async fn swap_runs(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
) -> Result<Vec<(&'static str, serde_json::Value)>, String> {
    let s = server_figures(
        args,
        n,
        dir,
        ServerMode {
            swap: true,
            ann: args.ann,
            mapped: args.mapped,
            ..Default::default()
        },
    )
    .await?;
    let swap = s.swap.expect("a swap run has swap figures");
    let ratio = swap.peak_rss_mib / swap.steady_rss_mib;
    eprintln!(
        "hot swap under load (concurrency {}, retrieval {}, factors {}): {} requests, {} failed; swapped {:.1} s after CURRENT moved (publishing took {:.1} s); RSS steady {:.0} MiB (mean of the 10 s before; {:.0}–{:.0}), peak during the swap {:.0} MiB = {ratio:.2}× (target ≤ 2×: {}; largest 50 ms sample {:.0} anonymous + {:.0} file-backed MiB); p99 {:.2} ms over the run",
        args.concurrency,
        if args.ann { "ann" } else { "exact" },
        if args.mapped { "mapped" } else { "held" },
        s.requests,
        s.errors,
        swap.swap_seconds,
        swap.publish_seconds,
        swap.steady_rss_mib,
        swap.steady_range_mib.0,
        swap.steady_range_mib.1,
        swap.peak_rss_mib,
        if ratio <= 2.0 { "met" } else { "NOT met" },
        swap.peak_sample_anon_file_mib.0,
        swap.peak_sample_anon_file_mib.1,
        s.p99_ms,
    );
    Ok(vec![
        ("swap_requests", s.requests.into()),
        ("swap_errors", s.errors.into()),
        ("swap_seconds", swap.swap_seconds.into()),
        ("swap_steady_rss_mib", swap.steady_rss_mib.into()),
        ("swap_peak_rss_mib", swap.peak_rss_mib.into()),
        ("swap_peak_ratio", ratio.into()),
        (
            "swap_peak_sample_anon_mib",
            swap.peak_sample_anon_file_mib.0.into(),
        ),
        (
            "swap_peak_sample_file_mib",
            swap.peak_sample_anon_file_mib.1.into(),
        ),
        ("swap_p99_ms", s.p99_ms.into()),
    ])
}

/// The delivery timeout of impressions in the experiment runs.
const IMPRESSION_TIMEOUT_MS: u64 = 5000;

/// The experiment runs: the per-request cost of allocation and impression logging (one request
/// at a time, so queueing does not multiply it), the memory of two versions held at once, and
/// a broker killed under load.
async fn experiment_runs(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
    plain: &ServerFigures,
) -> Result<Vec<(&'static str, serde_json::Value)>, Box<dyn std::error::Error>> {
    use recsys_shared::testkit::TansuBroker;
    let models = dir.join("models");
    let root = recsys_shared::artifact::ModelRoot::new(&models);
    let mut broker = TansuBroker::start_in_memory();
    let config = recsys_shared::config::Config::default();
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", broker.brokers())
                .create()?;
        admin
            .create_topics(
                &[NewTopic::new(
                    &config.kafka.impressions_topic,
                    2,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
    }
    let experiment = |pinned: Option<&str>| -> Result<PathBuf, std::io::Error> {
        let file = dir.join(format!("experiments-{}.toml", pinned.is_some()));
        let model = pinned.map_or(String::new(), |v| format!("model_version = \"{v}\"\n"));
        std::fs::write(
            &file,
            format!(
                "[[experiment]]\nname = \"bench\"\n[[experiment.variant]]\nname = \"A\"\nweight = 1\n\
                 [[experiment.variant]]\nname = \"B\"\nweight = 1\n{model}"
            ),
        )?;
        Ok(file)
    };
    // 1. Per-request cost: both variants on CURRENT (no fold-ins), impressions to a live broker,
    //    against the plain server, one request at a time. The three servers run in alternating
    //    rounds (the order rotating) and the fastest p50 of each is compared, so one slow start
    //    does not decide the difference.
    let one_at_a_time = |experiments: Option<(PathBuf, Option<String>)>| ServerMode {
        experiments,
        concurrency: Some(1),
        ..Default::default()
    };
    let file = experiment(None)?;
    let same_model = Some((file.clone(), Some(broker.brokers())));
    let modes = [
        ("plain", None),
        ("experiment", Some((file, None))),
        ("experiment + impressions", same_model.clone()),
    ];
    let mut fastest = [f64::INFINITY; 3];
    let mut logged = None;
    let rounds = args.rounds.max(1);
    for round in 0..rounds {
        for k in 0..modes.len() {
            let slot = (round + k) % modes.len();
            let (name, mode) = &modes[slot];
            let figures = server(args, n, dir, one_at_a_time(mode.clone())).await?;
            eprintln!(
                "  round {}/{rounds}: {name}: p50 {:.3} ms",
                round + 1,
                figures.p50_ms
            );
            fastest[slot] = fastest[slot].min(figures.p50_ms);
            if slot == 2 {
                logged = Some(figures);
            }
        }
    }
    let logged = logged.expect("at least one round");
    let [bare_p50, allocated_p50, logged_p50] = fastest;
    let added_us = (logged_p50 - bare_p50) * 1000.0;
    let allocation_us = (allocated_p50 - bare_p50) * 1000.0;
    let in_server_us = logged.allocation_us + logged.impressions_us;
    eprintln!(
        "one request at a time, fastest p50 of {rounds} alternating rounds: plain {:.3} ms; with a 50/50 experiment {:.3} ms (+{:.0} µs); with the experiment and impressions to Kafka {:.3} ms → +{:.0} µs (target ≤ 50 µs: {}); inside the request: allocation {:.1} µs + impressions {:.1} µs (mean); impressions sent {:.0}",
        bare_p50, allocated_p50, allocation_us, logged_p50, added_us,
        if added_us <= 50.0 { "met" } else { "NOT met" },
        logged.allocation_us, logged.impressions_us,
        logged.impressions_sent,
    );
    // 2. Memory: variant B pinned to the first version while a second one is CURRENT.
    let pinned = root.current_version()?.ok_or("no model")?;
    synthetic_model(&models, n, args.members, args.factors, args.seed + 1)?;
    let two_versions = server(
        args,
        n,
        dir,
        ServerMode {
            experiments: Some((experiment(Some(&pinned))?, Some(broker.brokers()))),
            ..Default::default()
        },
    )
    .await?;
    let rss_limit = 2.0 * plain.rss_mib + 50.0;
    eprintln!(
        "two versions held (B pinned to the first, folded in): {:.0} QPS, p50 {:.2} ms, {} errors; RSS {:.0} MiB (target ≤ 2 × {:.0} + 50 = {:.0} MiB: {})",
        two_versions.qps, two_versions.p50_ms, two_versions.errors, two_versions.rss_mib,
        plain.rss_mib, rss_limit,
        if two_versions.rss_mib <= rss_limit { "met" } else { "NOT met" },
    );
    // 3. The broker killed after the warm-up, for the whole load.
    let down = server(
        args,
        n,
        dir,
        ServerMode {
            experiments: same_model,
            kill_broker: Some(&mut broker),
            seconds: Some(args.broker_down_seconds),
            ..Default::default()
        },
    )
    .await?;
    eprintln!(
        "broker killed for {} s of load: {:.0} QPS (plain {:.0}), p50 {:.2} ms, p99 {:.2} ms, {} failed requests (target 0: {}); impressions dropped and counted {:.0} (the first {} after the load)",
        args.broker_down_seconds, down.qps, plain.qps, down.p50_ms, down.p99_ms, down.errors,
        if down.errors == 0 { "met" } else { "NOT met" },
        down.impressions_dropped,
        down.drops_after_seconds.map_or("none within 60 s".into(), |s| format!("{s:.0} s")),
    );
    Ok(vec![
        ("single_p50_ms", bare_p50.into()),
        ("experiment_single_p50_ms", logged_p50.into()),
        ("experiment_added_p50_us", added_us.into()),
        ("allocation_added_p50_us", allocation_us.into()),
        ("experiment_in_request_us", in_server_us.into()),
        ("impressions_sent", logged.impressions_sent.into()),
        ("two_versions_rss_mib", two_versions.rss_mib.into()),
        ("two_versions_rss_target_mib", rss_limit.into()),
        ("broker_down_seconds", args.broker_down_seconds.into()),
        ("broker_down_errors", down.errors.into()),
        ("broker_down_qps", down.qps.into()),
        (
            "broker_down_impressions_dropped",
            down.impressions_dropped.into(),
        ),
    ])
}

/// The server with `online.retrieval = "ann"`: at `--concurrency` and one request at a time.
/// Bytes of the `.ann` files (the item and similar-items indexes) of the current version of model
/// root `root`.
fn index_files_bytes(root: &Path) -> u64 {
    let Ok(current) = std::fs::read_to_string(root.join("CURRENT")) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(root.join(current.trim())) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ann"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// The largest few of a server's resident mapped files, for a line of output.
fn by_file(files: &[(String, f64)]) -> String {
    files
        .iter()
        .take(4)
        .map(|(name, mib)| format!("{name} {mib:.0} MiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn ann_runs(
    args: &BenchArgs,
    n: usize,
    dir: &Path,
    exact: &ServerFigures,
) -> Result<Vec<(&'static str, serde_json::Value)>, String> {
    // With --mapped the f32 factors are mapped too: the configuration the memory target is for.
    let loaded = server_figures(
        args,
        n,
        dir,
        ServerMode {
            ann: true,
            mapped: args.mapped,
            ..Default::default()
        },
    )
    .await?;
    let single = server_figures(
        args,
        n,
        dir,
        ServerMode {
            ann: true,
            concurrency: Some(1),
            ..Default::default()
        },
    )
    .await?;
    eprintln!(
        "server with ANN retrieval: {:.0} QPS at concurrency {} ({:.1}× the exact batched scan's {:.0}), p99 {:.2} ms, {} errors; one at a time p50 {:.2} ms, p99 {:.2} ms; RSS {:.0} MiB ({:.0} anonymous + {:.0} file pages)",
        loaded.qps, args.concurrency, loaded.qps / exact.qps, exact.qps, loaded.p99_ms, loaded.errors,
        single.p50_ms, single.p99_ms, loaded.rss_mib, loaded.rss_anon_mib, loaded.rss_file_mib,
    );
    eprintln!(
        "  its resident file pages by file: {}",
        by_file(&loaded.rss_by_file)
    );
    // The i8 codes with their scales and norms, and the version's index files (item and
    // similar-items), against which the server's memory is judged.
    let codes_mib = (n * (args.factors + 8)) as f64 / (1 << 20) as f64;
    let index_mib = index_files_bytes(&dir.join("models")) as f64 / (1 << 20) as f64;
    let limit = 1.3 * (codes_mib + index_mib) + 300.0;
    eprintln!(
        "ANN server memory{}: RSS {:.0} MiB (peak {:.0}) against 1.3 × (codes {codes_mib:.0} + indexes {index_mib:.0}) + 300 = {limit:.0} MiB: {}",
        if args.mapped { " with mapped factors" } else { " with held factors" },
        loaded.rss_mib,
        loaded.peak_rss_mib,
        if loaded.rss_mib <= limit { "met" } else { "NOT met" }
    );
    Ok(vec![
        ("ann_rss_target_mib", limit.into()),
        ("ann_peak_rss_mib", loaded.peak_rss_mib.into()),
        ("ann_qps", loaded.qps.into()),
        ("ann_p99_ms", loaded.p99_ms.into()),
        ("ann_errors", (loaded.errors + single.errors).into()),
        ("ann_one_at_a_time_p50_ms", single.p50_ms.into()),
        ("ann_one_at_a_time_p99_ms", single.p99_ms.into()),
        ("ann_rss_mib", loaded.rss_mib.into()),
    ])
}

/// Runs the benchmark and prints its figures (a table on stderr, one JSON line per size on stdout).
pub async fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let scratch;
    let work: PathBuf = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            scratch =
                std::env::temp_dir().join(format!("recsys-online-bench-{}", std::process::id()));
            scratch.clone()
        }
    };
    let mut args = args.clone();
    let mut trained = None;
    if let Some(version) = &args.trained {
        let factors = TrainedFactors::read(version, args.queries).map_err(|e| e.to_string())?;
        eprintln!(
            "trained factors from {}: {} items × {} factors",
            version.display(),
            factors.item_count(),
            factors.factors
        );
        (args.items, args.factors) = (vec![factors.item_count()], factors.factors);
        trained = Some(factors);
    }
    let args = Arc::new(args);
    for &n in &args.items {
        let dir = work.join(format!("n{n}"));
        let mut summary = if args.family != BenchFamily::Ials {
            // The kernel comparison with NumPy is of factor scoring: iALS's.
            eprintln!(
                "== {n} items, {:?}: {} weights per item, top {} ==",
                args.family, args.weights_per_item, args.top
            );
            serde_json::json!({
                "items": n, "family": format!("{:?}", args.family),
                "weights_per_item": args.weights_per_item,
            })
        } else {
            eprintln!(
                "== {n} items × {} factors, top {} ==",
                args.factors, args.top
            );
            let kernel = kernel(&args, n, &dir, trained.take()).map_err(|e| e.to_string())?;
            let ratio = kernel.numpy_us.map(|np| kernel.recsys_us / np);
            let batched_ratio = kernel.numpy_batched_us.map(|np| kernel.batched_us / np);
            let us = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} µs/query"));
            let times = |r: Option<f64>| r.map_or("n/a".into(), |r| format!("{r:.2}"));
            eprintln!(
                "scoring: recsys {:.1} µs/query (quantised scan + exact re-score; recall of the exact top-{} {:.4}), exact f32 {:.1} µs/query, NumPy {} → ratio recsys/NumPy {}",
                kernel.recsys_us,
                args.top,
                kernel.recall,
                kernel.exact_us,
                us(kernel.numpy_us),
                times(ratio),
            );
            eprintln!(
                "scoring {} per pass: recsys {:.1} µs/query ({:.1}× its one-at-a-time), NumPy {} per matrix product {} → ratio recsys/NumPy {}",
                args.batch,
                kernel.batched_us,
                kernel.recsys_us / kernel.batched_us,
                args.batch,
                us(kernel.numpy_batched_us),
                times(batched_ratio),
            );
            let mut summary = serde_json::json!({
                "items": n,
                "factors": args.factors,
                "top": args.top,
                "recsys_us_per_query": kernel.recsys_us,
                "recsys_exact_us_per_query": kernel.exact_us,
                "numpy_us_per_query": kernel.numpy_us,
                "ratio_vs_numpy": ratio,
                "batch": args.batch,
                "recsys_batched_us_per_query": kernel.batched_us,
                "numpy_batched_us_per_query": kernel.numpy_batched_us,
                "batched_ratio_vs_numpy": batched_ratio,
                "recall_vs_exact": kernel.recall,
            });
            if let Some(ann) = &kernel.ann {
                crate::ann::report(args.top, ann, kernel.recsys_us, &mut summary);
            }
            summary
        };
        if !args.skip_server {
            let s = server(&args, n, &dir, ServerMode::default())
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "server: {:.0} QPS at concurrency {}, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, {} errors; RSS {:.0} MiB (peak {:.0}; target ≤ {:.0} MiB)",
                s.qps, args.concurrency, s.p50_ms, s.p99_ms, s.p999_ms, s.errors, s.rss_mib, s.peak_rss_mib, s.limit_mib
            );
            summary["qps"] = s.qps.into();
            summary["p50_ms"] = s.p50_ms.into();
            summary["p99_ms"] = s.p99_ms.into();
            summary["p999_ms"] = s.p999_ms.into();
            summary["errors"] = s.errors.into();
            summary["rss_mib"] = s.rss_mib.into();
            summary["peak_rss_mib"] = s.peak_rss_mib.into();
            summary["rss_target_mib"] = s.limit_mib.into();
            summary["concurrency"] = args.concurrency.into();
            if args.family == BenchFamily::Ials {
                for (key, value) in batching_runs(&args, n, &dir, &s).await? {
                    summary[key] = value;
                }
            }
            if args.ann && args.family == BenchFamily::Ials {
                for (key, value) in ann_runs(&args, n, &dir, &s).await? {
                    summary[key] = value;
                }
                let expansion = recsys_shared::config::AnnSearchConfig::default().expansion;
                if let Some(line) = crate::ann::server_against_faiss(&summary, expansion) {
                    eprintln!("{line}");
                }
            }
            if args.mapped && args.family == BenchFamily::Ials {
                let m = server(
                    &args,
                    n,
                    &dir,
                    ServerMode {
                        mapped: true,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
                let codes_mib = (n * (args.factors + 8)) as f64 / (1 << 20) as f64;
                eprintln!(
                    "server with mapped factors: {:.0} QPS at concurrency {}, p50 {:.2} ms, p99 {:.2} ms, {} errors; RSS {:.0} MiB = {:.0} anonymous + {:.0} of mapped file pages (peak {:.0}); held factors: {:.0} anonymous; the i8 codes, scales and norms are {codes_mib:.0} MiB",
                    m.qps, args.concurrency, m.p50_ms, m.p99_ms, m.errors, m.rss_mib, m.rss_anon_mib, m.rss_file_mib, m.peak_rss_mib, s.rss_anon_mib,
                );
                eprintln!(
                    "  its resident file pages by file: {}",
                    by_file(&m.rss_by_file)
                );
                summary["mapped_qps"] = m.qps.into();
                summary["mapped_p99_ms"] = m.p99_ms.into();
                summary["mapped_rss_mib"] = m.rss_mib.into();
                summary["mapped_rss_anon_mib"] = m.rss_anon_mib.into();
                summary["mapped_rss_file_mib"] = m.rss_file_mib.into();
                summary["mapped_peak_rss_mib"] = m.peak_rss_mib.into();
                summary["rss_anon_mib"] = s.rss_anon_mib.into();
            }
            if args.swap {
                for (key, value) in swap_runs(&args, n, &dir).await? {
                    summary[key] = value;
                }
            }
            if args.rest {
                for (key, value) in rest_runs(&args, n, &dir).await? {
                    summary[key] = value;
                }
            }
            if args.console {
                summary["console"] = crate::console::run(args.members, &dir.join("models"))
                    .await
                    .map_err(|e| format!("console: {e}"))?;
            }
            if args.tls {
                let certs = recsys_shared::testkit::TestCertificates::generate();
                let t = server(
                    &args,
                    n,
                    &dir,
                    ServerMode {
                        tls: Some(&certs),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
                let cost = 1.0 - t.qps / s.qps;
                eprintln!(
                    "server over TLS: {:.0} QPS at concurrency {}, p50 {:.2} ms, p99 {:.2} ms, {} errors → TLS costs {:.1} % of plaintext QPS (target ≤ 15 %: {})",
                    t.qps, args.concurrency, t.p50_ms, t.p99_ms, t.errors, 100.0 * cost,
                    if cost <= 0.15 { "met" } else { "NOT met" }
                );
                summary["tls_qps"] = t.qps.into();
                summary["tls_p99_ms"] = t.p99_ms.into();
                summary["tls_qps_cost"] = cost.into();
            }
            if args.experiments {
                let e = experiment_runs(&args, n, &dir, &s)
                    .await
                    .map_err(|e| e.to_string())?;
                for (key, value) in e {
                    summary[key] = value;
                }
            }
        }
        println!("{summary}");
    }
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_shared::artifact::{files, write_factors, write_raw_factors, FactorTable};

    #[test]
    fn a_trained_version_gives_its_own_items_and_first_members() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<f32> = (0..5 * 4).map(|i| i as f32 * 0.5).collect();
        write_raw_factors(&dir.path().join(files::ITEM_FACTORS_RAW), &items).unwrap();
        let members = FactorTable {
            ids: vec!["a".into(), "b".into(), "c".into()],
            vectors: (0..3 * 4).map(|i| -(i as f32)).collect(),
            factors: 4,
        };
        write_factors(&dir.path().join(files::USER_FACTORS), "user_id", &members).unwrap();

        let got = TrainedFactors::read(dir.path(), 2).unwrap();
        assert_eq!((got.item_count(), got.factors), (5, 4));
        assert_eq!(got.items, items);
        assert_eq!(got.members, members.vectors[..8]);
        // More queries than members: every member, no more.
        let every = TrainedFactors::read(dir.path(), 10).unwrap();
        assert_eq!(every.members, members.vectors);

        // Item rows of another width than the members' are refused, naming the file.
        write_raw_factors(&dir.path().join(files::ITEM_FACTORS_RAW), &items[..18]).unwrap();
        let err = TrainedFactors::read(dir.path(), 2)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not rows of the members' 4 factors"), "{err}");
        assert!(err.contains(files::ITEM_FACTORS_RAW), "{err}");
    }
}
