//! `recsys online soak`: the overload and fault benchmark of the online tier, against real
//! `recsys online serve` processes on loopback.
//!
//! 1. **Unloaded**: one request at a time → the unloaded p99.
//! 2. **Saturation**: 32 requests in flight → the saturation QPS.
//! 3. **Overload**: an open-loop load at `--overload` × saturation for `--minutes`: requests are
//!    sent on a fixed schedule whether or not earlier ones returned. Printed: p99 of admitted
//!    requests against 3 × the unloaded p99 (both from the server's latency histogram, so like is
//!    compared with like; the client-side unloaded p99 is printed too), how fast shed requests (`RESOURCE_EXHAUSTED`) are
//!    answered, the server's RSS every 10 s (flat within ±10 %), and panics in its log.
//! 4. **Random-id flood and cancel storm** on a second server whose store is a real
//!    `redis-server`: first a flood of made-up member ids, then the store frozen (`SIGSTOP`) while
//!    thousands of requests for random ids give up after 50 ms; RSS before, at the peak and after.
//!
//! 5. **Cancelled queued calls and idle connections** on a third server with the default queue
//!    (64): three bursts of 60 Homepage calls given up after 50 ms, then `recsys_rpc_queued`
//!    (target 0) and six concurrent calls; then 4,100 sockets that never send a byte (past the
//!    4,096-connection cap) while a fresh client connects and ranks (target: answered within 1 s),
//!    and the open connections 6 s later.
//!
//! The server and the load generator run on separate cores (`taskset`; the upper half of the
//! machine's cores for the server, the lower half for the load generator), standing in for
//! clients on other machines: every figure, the unloaded one included, is measured that way.
//! `--shared-cores` lets them share all cores instead.
//!
//! Figures are printed (a table on stderr, one JSON line on stdout), never asserted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::RankRequest;
use tonic::transport::Channel;

use crate::online::{free_port, percentile, proc_status_kib, synthetic_model, wait_ready};

/// Options of `recsys online soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Items in the served catalog.
    #[arg(long, default_value_t = 100_000)]
    pub items: usize,
    #[arg(long, default_value_t = 64)]
    pub factors: usize,
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    /// Items asked per request.
    #[arg(long, default_value_t = 20)]
    pub k: u64,
    /// Minutes of overload.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// The overload as a multiple of the measured saturation QPS.
    #[arg(long, default_value_t = 2.0)]
    pub overload: f64,
    /// Seconds of each of the unloaded and saturation measurements.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests of the random-id flood, and of the cancel storm.
    #[arg(long, default_value_t = 20_000)]
    pub flood: usize,
    /// `online.max_queued` of the servers under test (0: as many as in flight, the
    /// latency-first setting).
    #[arg(long, default_value_t = 0)]
    pub max_queued: usize,
    /// Let the server and the load generator share every core, instead of the upper half of the
    /// cores for the server and the lower half for the load generator.
    #[arg(long)]
    pub shared_cores: bool,
    /// Skip the flood and cancel storm (they need `redis-server`).
    #[arg(long)]
    pub skip_faults: bool,
    /// Scratch directory [default: a temporary one].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// A `recsys online serve` child process.
struct Server {
    child: Child,
    grpc: String,
    metrics_port: u16,
    log: PathBuf,
}

/// Which cores the server and the load generator run on: `None` when they share them all.
#[derive(Debug, Clone)]
struct CoreSplit {
    server: String,
    load: String,
}

impl CoreSplit {
    /// The upper half of the cores this process may run on for the server, the lower half for
    /// the load generator; `None` with fewer than two cores or `shared`.
    fn plan(shared: bool) -> Option<CoreSplit> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if shared || cores < 2 {
            return None;
        }
        let list = |from: usize, to: usize| {
            (from..to)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(CoreSplit {
            server: list(cores / 2, cores),
            load: list(0, cores / 2),
        })
    }

    /// Moves every thread of this process (the load generator) onto its cores.
    fn pin_self(&self) -> Result<(), String> {
        let status = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &self.load,
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("taskset: {e} (util-linux; or run with --shared-cores)"))?;
        if !status.success() {
            return Err(format!("taskset -a -p -c {} failed: {status}", self.load));
        }
        Ok(())
    }
}

impl Server {
    async fn start(
        dir: &Path,
        max_queued: usize,
        cores: Option<&CoreSplit>,
        env: &[(&str, String)],
    ) -> Result<Server, String> {
        let grpc_port = free_port();
        let metrics_port = free_port();
        let log = dir.join(format!("server-{grpc_port}.log"));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // taskset execs the server, so the child's pid is the server's.
        let mut command = match cores {
            Some(split) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &split.server]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args(["online", "serve"])
            .env("RECSYS__ONLINE__LISTEN", format!("127.0.0.1:{grpc_port}"))
            .env(
                "RECSYS__ONLINE__METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("RECSYS_LOG", "warn")
            .env("RECSYS__ONLINE__MAX_QUEUED", max_queued.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().map_err(|e| e.to_string())?;
        let server = Server {
            child,
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            metrics_port,
            log,
        };
        if !wait_ready(
            &format!("127.0.0.1:{metrics_port}"),
            Duration::from_secs(300),
        )
        .await
        {
            return Err("the server did not become ready".into());
        }
        Ok(server)
    }

    fn rss_mib(&self) -> f64 {
        proc_status_kib(self.child.id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0
    }

    /// The server's metrics page; empty when it cannot be read.
    fn metrics_page(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    /// The value of the unlabelled series `name`; NaN when it is not there.
    fn metric(&self, name: &str) -> f64 {
        self.metrics_page()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// Cumulative `(le, count)` buckets of the server's own latency histogram of `Rank` answers
    /// with `code` (measured from the request's arrival at the admission layer).
    fn latency_buckets(&self, code: &str) -> Vec<(f64, f64)> {
        let body = self.metrics_page();
        let wanted = format!("code=\"{code}\"");
        body.lines()
            .filter(|l| {
                l.starts_with("recsys_rpc_latency_seconds_bucket")
                    && l.contains(&wanted)
                    && l.contains("rpc=\"Rank\"")
            })
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    }

    fn panics(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|log| log.matches("panicked").count())
            .unwrap_or(0)
    }

    async fn clients(&self, n: usize) -> Result<Vec<RankingClient<Channel>>, String> {
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(
                RankingClient::connect(self.grpc.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(clients)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bound of the bucket holding the `p` quantile of the answers counted between `before` and
/// `after` (cumulative buckets), in ms: "p99 ≤ this".
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let count = |buckets: &[(f64, f64)], le: f64| {
        buckets
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c)
    };
    let total = after
        .last()
        .map_or(0.0, |(le, _)| count(after, *le) - count(before, *le));
    for (le, cumulative) in after {
        if cumulative - count(before, *le) >= p * total && total > 0.0 {
            return le * 1000.0;
        }
    }
    f64::NAN
}

fn request(rng: &mut impl Rng, members: usize, k: u64) -> RankRequest {
    RankRequest {
        user_id: format!("m{}", rng.random_range(0..members)),
        k,
        exclude_seen: Some(true),
        ..Default::default()
    }
}

/// Closed loop: `concurrency` clients each sending the next request when the last returns.
/// Returns (QPS, sorted latencies in µs, errors).
async fn closed_loop(
    clients: &[RankingClient<Channel>],
    concurrency: usize,
    seconds: u64,
    members: usize,
    k: u64,
) -> (f64, Vec<u32>, u64) {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let mut client = clients[t % clients.len()].clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < stop {
                    let sent = Instant::now();
                    match client.rank(request(&mut rng, members, k)).await {
                        Ok(_) => latencies.push(sent.elapsed().as_micros() as u32),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    (
        all.len() as f64 / started.elapsed().as_secs_f64(),
        all,
        errors,
    )
}

/// What the open-loop phase saw.
#[derive(Default)]
struct Overload {
    admitted: Vec<u32>,
    shed: Vec<u32>,
    other_errors: u64,
    other_codes: std::collections::BTreeMap<String, u64>,
    sent: u64,
    /// Requests not sent because the client already had too many outstanding.
    client_skipped: u64,
    rss: Vec<f64>,
}

async fn open_loop(server: &Server, rate: f64, duration: Duration, args: &SoakArgs) -> Overload {
    let clients = server.clients(8).await.expect("clients connect");
    let result = Arc::new(Mutex::new(Overload::default()));
    let outstanding = Arc::new(AtomicU64::new(0));
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut next_sample = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        tick.tick().await;
        if Instant::now() >= next_sample {
            result.lock().unwrap().rss.push(server.rss_mib());
            next_sample += Duration::from_secs(10);
        }
        if outstanding.load(Ordering::Relaxed) > 20_000 {
            result.lock().unwrap().client_skipped += 1;
            continue;
        }
        let mut client = clients[(sent % clients.len() as u64) as usize].clone();
        let request = request(&mut rng, args.members, args.k);
        let (result, outstanding) = (result.clone(), outstanding.clone());
        outstanding.fetch_add(1, Ordering::Relaxed);
        sent += 1;
        tokio::spawn(async move {
            let t0 = Instant::now();
            let answer = client.rank(request).await;
            let micros = t0.elapsed().as_micros() as u32;
            let mut r = result.lock().unwrap();
            match answer {
                Ok(_) => r.admitted.push(micros),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => r.shed.push(micros),
                Err(s) => {
                    r.other_errors += 1;
                    *r.other_codes.entry(format!("{:?}", s.code())).or_default() += 1;
                }
            }
            outstanding.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while outstanding.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    result.lock().unwrap().rss.push(server.rss_mib());
    let mut r = std::mem::take(&mut *result.lock().unwrap());
    r.sent = sent;
    r.admitted.sort_unstable();
    r.shed.sort_unstable();
    r
}

/// Sends `n` Rank requests for random made-up ids (`prefix-<hex>`), `wave` at a time, each given
/// up after `give_up` if set; returns the server's highest RSS seen between waves.
async fn fire(
    clients: &[RankingClient<Channel>],
    server: &Server,
    prefix: &str,
    n: usize,
    wave: usize,
    give_up: Option<Duration>,
    rng: &mut impl Rng,
) -> f64 {
    let mut peak = 0.0f64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut client = clients[i % clients.len()].clone();
        let request = RankRequest {
            user_id: format!("{prefix}-{:016x}", rng.random::<u64>()),
            k: 20,
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            let call = client.rank(request);
            match give_up {
                Some(limit) => drop(tokio::time::timeout(limit, call).await),
                None => drop(call.await),
            }
        }));
        if tasks.len() >= wave || i + 1 == n {
            for t in tasks.drain(..) {
                let _ = t.await;
            }
            peak = peak.max(server.rss_mib());
        }
    }
    peak
}

/// The flood of made-up ids and the cancel storm against a frozen Redis store: RSS figures.
async fn faults(
    args: &SoakArgs,
    dir: &Path,
    cores: Option<&CoreSplit>,
) -> Result<serde_json::Value, String> {
    let redis = recsys_shared::testkit::RedisServer::start();
    let models = dir.join("models");
    let server = Server::start(
        dir,
        args.max_queued,
        cores,
        &[
            ("RECSYS__MODEL__ROOT", models.display().to_string()),
            ("RECSYS__STORE__BACKEND", "redis".into()),
            ("RECSYS__STORE__REDIS__URL", redis.url()),
            ("RECSYS__CACHE__BACKEND", "in_process".into()),
            ("RECSYS__CACHE__CAPACITY", "20000".into()),
        ],
    )
    .await?;
    let clients = server.clients(8).await?;
    let baseline = server.rss_mib();
    // The flood: made-up ids, each a store read (and, before the fix, a cache entry).
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed + 1);
    fire(&clients, &server, "made-up", args.flood, 64, None, &mut rng).await;
    let after_flood = server.rss_mib();
    // The cancel storm: the store frozen, every request given up after 50 ms.
    let pid = redis.pid().ok_or("redis-server has no pid")?;
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !signal("-STOP") {
        return Err("cannot SIGSTOP redis-server".into());
    }
    let storm = fire(
        &clients,
        &server,
        "storm",
        args.flood,
        256,
        Some(Duration::from_millis(50)),
        &mut rng,
    )
    .await;
    let peak = storm.max(after_flood);
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal("-CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = server.rss_mib();
    // Does the server still answer afresh?
    let mut client = clients[0].clone();
    let answered = client
        .rank(RankRequest {
            user_id: "m1".into(),
            k: 20,
            ..Default::default()
        })
        .await
        .is_ok();
    let within = (after - baseline).abs() / baseline <= 0.10;
    eprintln!(
        "faults: RSS baseline {baseline:.0} MiB, after a flood of {} made-up ids {after_flood:.0} MiB, peak during the cancel storm {peak:.0} MiB, 5 s after {after:.0} MiB ({:+.1} % of baseline; target within ±10 %: {}); answers afterwards: {answered}; panics: {}",
        args.flood,
        100.0 * (after - baseline) / baseline,
        if within { "met" } else { "NOT met" },
        server.panics()
    );
    Ok(serde_json::json!({
        "rss_baseline_mib": baseline,
        "rss_after_flood_mib": after_flood,
        "rss_storm_peak_mib": peak,
        "rss_after_mib": after,
        "rss_within_10pct": within,
        "answers_after": answered,
        "panics": server.panics(),
    }))
}

/// Calls cancelled while they wait in the admission queue, then connections that never send a
/// byte, against a server with the default queue (64): `recsys_rpc_queued` must come back to 0
/// and a fresh client must be answered at once while the idle sockets hold every slot.
async fn cancelled_and_idle(
    args: &SoakArgs,
    dir: &Path,
    cores: Option<&CoreSplit>,
) -> Result<serde_json::Value, String> {
    use recsys_shared::proto::v1::HomepageRequest;
    const BURSTS: usize = 3;
    const CALLS: usize = 60;
    const IDLE: usize = 4_100;
    let server = Server::start(
        dir,
        64,
        cores,
        &[
            (
                "RECSYS__MODEL__ROOT",
                dir.join("models").display().to_string(),
            ),
            (
                "RECSYS__STORE__EMBEDDED__PATH",
                dir.join("features-connections").display().to_string(),
            ),
        ],
    )
    .await?;
    // Bursts of Homepage calls without a deadline, each given up after 50 ms.
    let client = server.clients(1).await?.remove(0);
    let mut peak_queued = 0.0f64;
    for burst in 0..BURSTS {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let mut client = client.clone();
                let request = HomepageRequest {
                    user_id: format!("m{}", (burst * CALLS + i) % args.members),
                    ..Default::default()
                };
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), client.homepage(request))
                            .await;
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        peak_queued = peak_queued.max(server.metric("recsys_rpc_queued"));
        for call in calls {
            let _ = call.await;
        }
    }
    let settle = Instant::now();
    while server.metric("recsys_rpc_in_flight") > 0.0 && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued_after = server.metric("recsys_rpc_queued");
    let answers: Vec<_> = (0..6)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .rank(RankRequest {
                        user_id: format!("m{i}"),
                        k: 20,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut answered = 0;
    for a in answers {
        answered += usize::from(a.await.unwrap_or(false));
    }
    let queue_ok = queued_after == 0.0 && answered == 6;
    eprintln!(
        "cancelled queued calls: {BURSTS} bursts of {CALLS} Homepage calls given up after 50 ms (queued at the peak {peak_queued}); recsys_rpc_queued afterwards {queued_after} (target 0: {}), 6 concurrent calls answered {answered}/6",
        if queue_ok { "met" } else { "NOT met" }
    );

    // Sockets that connect and never send a byte, past the connection cap.
    let addr = server.grpc.trim_start_matches("http://").to_string();
    let mut held = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(socket) => held.push(socket),
            Err(e) => return Err(format!("holding idle connections: {e} (raise ulimit -n)")),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open_while_held = server.metric("recsys_grpc_connections");
    let started = Instant::now();
    let fresh = async {
        let channel = Channel::from_shared(server.grpc.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(RankRequest {
            user_id: "m1".into(),
            k: 20,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(1));
        RankingClient::new(channel)
            .rank(request)
            .await
            .map_err(|e| e.to_string())
    };
    let fresh = tokio::time::timeout(Duration::from_secs(2), fresh).await;
    let fresh_ms = started.elapsed().as_secs_f64() * 1000.0;
    let fresh_ok = matches!(fresh, Ok(Ok(_))) && fresh_ms <= 1000.0;
    // Past online.opening_timeout_ms (5 s by default) the server has closed them all.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let open_after = server.metric("recsys_grpc_connections");
    drop(held);
    eprintln!(
        "idle connections: {IDLE} sockets held without a byte, {open_while_held} connections open; a fresh client answered in {fresh_ms:.0} ms (target ≤ 1 s: {}{}); 6 s later {open_after} connections open",
        if fresh_ok { "met" } else { "NOT met" },
        match &fresh {
            Ok(Ok(_)) => String::new(),
            Ok(Err(e)) => format!(", {e}"),
            Err(_) => ", timed out".into(),
        }
    );
    Ok(serde_json::json!({
        "cancelled_calls": BURSTS * CALLS,
        "queued_peak": peak_queued,
        "queued_after": queued_after,
        "concurrent_answered_after": answered,
        "idle_sockets": IDLE,
        "connections_while_held": open_while_held,
        "fresh_client_ms": fresh_ms,
        "fresh_client_answered": fresh_ok,
        "connections_6s_later": open_after,
        "panics": server.panics(),
    }))
}

/// Runs the soak and prints its figures.
pub async fn run(args: &SoakArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let scratch;
    let dir: PathBuf = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            scratch = std::env::temp_dir().join(format!("recsys-soak-{}", std::process::id()));
            scratch.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let models = dir.join("models");
    synthetic_model(&models, args.items, args.members, args.factors, args.seed)?;
    let cores = CoreSplit::plan(args.shared_cores);
    match &cores {
        Some(split) => {
            split.pin_self()?;
            eprintln!(
                "cores: the server on {}, the load generator on {}",
                split.server, split.load
            );
        }
        None => eprintln!("cores: the server and the load generator share every core"),
    }
    let server = Server::start(
        &dir,
        args.max_queued,
        cores.as_ref(),
        &[
            ("RECSYS__MODEL__ROOT", models.display().to_string()),
            (
                "RECSYS__STORE__EMBEDDED__PATH",
                dir.join("features").display().to_string(),
            ),
        ],
    )
    .await?;
    let clients = server.clients(4).await?;
    closed_loop(&clients, 8, 2, args.members, args.k).await; // warm-up
    let ok_before_unloaded = server.latency_buckets("Ok");
    let (_, unloaded, _) = closed_loop(&clients, 1, args.seconds, args.members, args.k).await;
    let unloaded_p99 = percentile(&unloaded, 0.99);
    // The same figure as the server measures it, to compare like with like under overload.
    let server_unloaded_p99 =
        bucket_quantile(&ok_before_unloaded, &server.latency_buckets("Ok"), 0.99);
    let (saturation, saturated, _) =
        closed_loop(&clients, 32, args.seconds, args.members, args.k).await;
    eprintln!(
        "unloaded: p50 {:.2} ms, p99 {unloaded_p99:.2} ms (the server's histogram: p99 ≤ {server_unloaded_p99:.2} ms); saturation: {saturation:.0} QPS (p99 {:.2} ms at 32 in flight)",
        percentile(&unloaded, 0.5),
        percentile(&saturated, 0.99),
    );
    let rate = saturation * args.overload;
    eprintln!(
        "overload: {rate:.0} requests/s ({}× saturation) for {} min, open loop...",
        args.overload, args.minutes
    );
    let (ok_before, shed_before) = (
        server.latency_buckets("Ok"),
        server.latency_buckets("ResourceExhausted"),
    );
    let o = open_loop(
        &server,
        rate,
        Duration::from_secs_f64(args.minutes * 60.0),
        args,
    )
    .await;
    let server_admitted_p99 = bucket_quantile(&ok_before, &server.latency_buckets("Ok"), 0.99);
    let server_shed_p99 = bucket_quantile(
        &shed_before,
        &server.latency_buckets("ResourceExhausted"),
        0.99,
    );
    let admitted_p99 = percentile(&o.admitted, 0.99);
    let shed_p99 = percentile(&o.shed, 0.99);
    let steady = &o.rss[o.rss.len().min(6).min(o.rss.len().saturating_sub(1))..];
    let (rss_min, rss_max) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let rss_flat = rss_max <= rss_min * 1.10 + 1e-9 || steady.len() < 2;
    let panics = server.panics();
    let ratio = server_admitted_p99 / server_unloaded_p99;
    eprintln!(
        "overload, as the server measures it (from arrival at the admission layer to the answer; histogram buckets): admitted p99 ≤ {server_admitted_p99:.2} ms against unloaded p99 ≤ {server_unloaded_p99:.2} ms: {ratio:.2}× (target ≤ 3×: {}; against the client-side unloaded p99: {:.2}×); shed p99 ≤ {server_shed_p99:.3} ms (target < 1 ms: {})",
        if ratio <= 3.0 { "met" } else { "NOT met" },
        server_admitted_p99 / unloaded_p99,
        if server_shed_p99 < 1.0 { "met" } else { "NOT met" },
    );
    eprintln!(
        "overload, as the load generator sees it: sent {}, admitted {} (p50 {:.2} ms, p99 {admitted_p99:.2} ms), shed {} (p50 {:.3} ms, p99 {shed_p99:.3} ms), other errors {} {:?}, not sent (client backlog) {}",
        o.sent,
        o.admitted.len(),
        percentile(&o.admitted, 0.5),
        o.shed.len(),
        percentile(&o.shed, 0.5),
        o.other_errors,
        o.other_codes,
        o.client_skipped,
    );
    eprintln!(
        "overload: RSS every 10 s {:?} MiB; after the first minute {rss_min:.0}..{rss_max:.0} MiB (target flat within 10 %: {}); panics {panics}",
        o.rss.iter().map(|r| r.round() as i64).collect::<Vec<_>>(),
        if rss_flat { "met" } else { "NOT met" },
    );
    drop(server);
    let mut summary = serde_json::json!({
        "items": args.items,
        "server_cores": cores.as_ref().map(|c| c.server.clone()),
        "load_generator_cores": cores.as_ref().map(|c| c.load.clone()),
        "unloaded_p99_ms": unloaded_p99,
        "server_unloaded_p99_ms_at_most": server_unloaded_p99,
        "saturation_qps": saturation,
        "overload_qps": rate,
        "overload_minutes": args.minutes,
        "sent": o.sent,
        "admitted": o.admitted.len(),
        "admitted_p99_ms": admitted_p99,
        "server_admitted_p99_ms_at_most": server_admitted_p99,
        "server_admitted_p99_over_unloaded": ratio,
        "server_shed_p99_ms_at_most": server_shed_p99,
        "shed": o.shed.len(),
        "shed_p99_ms": shed_p99,
        "other_errors": o.other_errors,
        "rss_mib": o.rss,
        "rss_flat": rss_flat,
        "panics": panics,
    });
    summary["cancelled_and_idle"] = cancelled_and_idle(args, &dir, cores.as_ref()).await?;
    if !args.skip_faults {
        summary["faults"] = faults(args, &dir, cores.as_ref()).await?;
    }
    println!("{summary}");
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
