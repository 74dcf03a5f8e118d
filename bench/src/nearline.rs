//! `recsys nearline bench`: end-to-end fold-in throughput with one and with two worker processes,
//! and freshness — an event produced → `Rank` on the online tier answers from the updated vector.
//!
//! Everything is real and started by the bench: a Tansu broker, a redis-server as the shared
//! feature store and cache, `recsys nearline run` workers and a `recsys online serve` process.
//! Figures are printed, never asserted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::online::BenchFamily;
use rand::{Rng, SeedableRng};
use recsys_shared::artifact::synthetic::synthetic_model_of;
use recsys_shared::artifact::ModelRoot;
use recsys_shared::config::{Config, StoreBackend};
use recsys_shared::ops::scrape;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::RankRequest;
use recsys_shared::testkit::{free_port, wait_for_port, RedisServer, TansuBroker};
use recsys_store::bulk::load_model_features;
use recsys_store::features::FeatureStore;

use recsys_nearline::event::Event;
use recsys_nearline::kafka::{ensure_topics, producer};
use recsys_nearline::produce::{produce_all, send, Encoding};

/// Options of `recsys nearline bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Events in the throughput runs.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Members the events are spread over (each has a 20-item training history).
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    #[arg(long, default_value_t = 10_000)]
    pub items: usize,
    #[arg(long, default_value_t = 64)]
    pub factors: usize,
    /// The family of the model the workers update members for: `ials` (an exact fold-in per
    /// member event) or `ease` / `item-knn` / `bspm` (the history is the state; no fold-in).
    #[arg(long, value_enum, default_value_t = BenchFamily::Ials)]
    pub family: BenchFamily,
    /// Weights per item of a history family's synthetic model.
    #[arg(long, default_value_t = 1000)]
    pub weights_per_item: usize,
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Worker counts to measure throughput with.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub workers: Vec<usize>,
    /// Background load during the freshness run, events per second.
    #[arg(long, default_value_t = 1000.0)]
    pub steady_rate: f64,
    /// Seconds of the freshness run.
    #[arg(long, default_value_t = 20)]
    pub freshness_seconds: u64,
    /// Skip the freshness run.
    #[arg(long)]
    pub skip_freshness: bool,
    /// Scratch directory [default: a temporary one].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn command(&self, args: &[&str]) -> BenchResult<Command> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        Ok(cmd)
    }
}

fn random_events(rng: &mut impl Rng, n: usize, args: &BenchArgs, tag: &str) -> Vec<Event> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..n)
        .map(|i| Event {
            event_id: format!("{tag}{i}"),
            user_id: format!("m{}", rng.random_range(0..args.members)),
            item_id: format!("i{}", rng.random_range(0..args.items)),
            event_type: "play".into(),
            value: 0.0,
            ts: now - 3_600_000 + i as i64,
            request_id: String::new(),
        })
        .collect()
}

async fn reset_store(redis: &RedisServer, config: &Config, models: &Path) -> BenchResult<()> {
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    let store = FeatureStore::new(
        recsys_store::open(&config.store).await?,
        config.store.history_cap,
    );
    load_model_features(&ModelRoot::new(models), None, &store, |_, _| {}).await?;
    Ok(())
}

/// Runs the bench and prints its figures.
pub async fn run(args: &BenchArgs) -> BenchResult<()> {
    let scratch = tempfile::tempdir()?;
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let models = dir.join("models");
    let width = match args.family {
        BenchFamily::Ials => args.factors,
        _ => args.weights_per_item,
    };
    eprintln!(
        "nearline bench: {} events, {} members, {} items, {:?} ({width} {} per item), {} partitions",
        args.events,
        args.members,
        args.items,
        args.family,
        if args.family == BenchFamily::Ials { "factors" } else { "weights" },
        args.partitions
    );
    synthetic_model_of(
        args.family.family(),
        &models,
        args.items,
        args.members,
        width,
        args.seed,
    )?;
    let broker = TansuBroker::start_in_memory();
    let redis = RedisServer::start();
    let mut config = Config::default();
    config.kafka.brokers = broker.brokers();
    config.store.backend = StoreBackend::Redis;
    config.store.redis.url = redis.url();
    let env = Env {
        vars: vec![
            ("RECSYS_LOG".into(), "warn".into()),
            ("RECSYS__MODEL__ROOT".into(), models.display().to_string()),
            ("RECSYS__STORE__BACKEND".into(), "redis".into()),
            ("RECSYS__STORE__REDIS__URL".into(), redis.url()),
            ("RECSYS__CACHE__BACKEND".into(), "redis".into()),
            ("RECSYS__CACHE__REDIS__URL".into(), redis.url()),
            ("RECSYS__KAFKA__BROKERS".into(), broker.brokers()),
        ],
    };

    // The backlog: produced once, consumed from the start by each run's own group.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let events = random_events(&mut rng, args.events, args, "e");
    ensure_topics(
        &config,
        &[(config.kafka.events_topic.as_str(), args.partitions)],
    )
    .await?;
    let kafka = producer(&config)?;
    let produce_s = produce_all(
        &kafka,
        &config.kafka.events_topic,
        &events,
        Encoding::Protobuf,
        0.0,
        10_000,
    )
    .await?;
    println!(
        "produce: {} events in {:.1} s = {:.0} events/s",
        events.len(),
        produce_s,
        events.len() as f64 / produce_s
    );

    let mut rates = Vec::new();
    for &workers in &args.workers {
        reset_store(&redis, &config, &models).await?;
        let ports: Vec<u16> = (0..workers).map(|_| free_port()).collect();
        let group = format!("bench-{workers}-{}", args.seed);
        let started = Instant::now();
        let mut children = Killed(Vec::new());
        for port in &ports {
            children.0.push(
                env.command(&[
                    "nearline",
                    "run",
                    "--group-id",
                    &group,
                    "--metrics-listen",
                    &format!("127.0.0.1:{port}"),
                ])?
                .spawn()?,
            );
        }
        let applied = |ports: &[u16]| -> f64 {
            ports
                .iter()
                .map(|p| scrape(*p, "recsys_nearline_events_total{outcome=\"applied\"}"))
                .sum()
        };
        // Done when every event was applied once. Redeliveries (a rebalance replays the
        // uncommitted tail; `member_updates_total{outcome="unchanged"}` counts them) also count
        // as applied, so the count can pass the total early by a few hundred; and Tansu 0.6 can
        // leave the last records of a partition undelivered until more are produced. So the run
        // also ends when nothing was applied for 10 s, and the figures say how many were applied.
        let mut first_event = None;
        let (mut last_done, mut last_progress) = (0.0, Instant::now());
        loop {
            let done = applied(&ports);
            if first_event.is_none() && done > 0.0 {
                first_event = Some(started.elapsed());
            }
            if done > last_done {
                (last_done, last_progress) = (done, Instant::now());
            }
            if done >= events.len() as f64 || last_progress.elapsed() > Duration::from_secs(10) {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                return Err(
                    format!("{workers} worker(s): only {done} events applied in 30 min").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let total = (last_progress - started).as_secs_f64();
        let startup = first_event.unwrap_or_default().as_secs_f64();
        let redelivered: f64 = ports
            .iter()
            .map(|p| {
                scrape(
                    *p,
                    "recsys_nearline_member_updates_total{outcome=\"unchanged\"}",
                )
            })
            .sum();
        let rate = last_done / (total - startup).max(1e-9);
        let fold_in = ports
            .iter()
            .map(|p| scrape(*p, "recsys_nearline_fold_in_seconds_sum"))
            .sum::<f64>()
            / last_done.max(1.0);
        println!(
            "throughput, {workers} worker(s): {:.0} events/s end to end ({} of {} events applied in {:.1} s after {:.1} s start-up, about {} of them redeliveries; mean fold-in {:.0} µs)",
            rate,
            last_done,
            events.len(),
            total - startup,
            startup,
            redelivered,
            fold_in * 1e6
        );
        rates.push((workers, rate));
        drop(children);
    }
    if let (Some(&(w1, r1)), Some(&(w2, r2))) = (rates.first(), rates.get(1)) {
        println!(
            "scaling: {w2} workers / {w1} worker = {:.2}× (target on this 2-core machine: ≥ 20,000 events/s)",
            r2 / r1
        );
    }

    if !args.skip_freshness {
        freshness(args, &env, &config, &redis, &models).await?;
    }
    Ok(())
}

async fn freshness(
    args: &BenchArgs,
    env: &Env,
    config: &Config,
    redis: &RedisServer,
    models: &Path,
) -> BenchResult<()> {
    reset_store(redis, config, models).await?;
    let topic = "recsys.events.freshness";
    ensure_topics(config, &[(topic, args.partitions)]).await?;
    let grpc = free_port();
    let worker_port = free_port();
    let mut children = Killed(Vec::new());
    children.0.push(
        env.command(&[
            "online",
            "serve",
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])?
        .spawn()?,
    );
    children.0.push(
        env.command(&[
            "nearline",
            "run",
            "--topic",
            topic,
            "--group-id",
            "bench-freshness",
            "--metrics-listen",
            &format!("127.0.0.1:{worker_port}"),
        ])?
        .spawn()?,
    );
    if !wait_for_port(grpc, Duration::from_secs(60)) {
        return Err("the online server did not start".into());
    }
    let mut client = RankingClient::connect(format!("http://127.0.0.1:{grpc}")).await?;
    let kafka = producer(config)?;
    // Warm-up: the worker joins its group and the first events flow.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0xf5);
    let warm = random_events(&mut rng, 50, args, "w");
    for e in &warm {
        send(&kafka, topic, e, Encoding::Protobuf).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape(
        worker_port,
        "recsys_nearline_events_total{outcome=\"applied\"}",
    ) < 50.0
    {
        if Instant::now() > deadline {
            return Err("the worker applied nothing within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Background load at the steady rate, probes on top.
    let background = random_events(
        &mut rng,
        (args.steady_rate * args.freshness_seconds as f64) as usize,
        args,
        "b",
    );
    let load = produce_all(
        &kafka,
        topic,
        &background,
        Encoding::Protobuf,
        args.steady_rate,
        1000,
    );
    let probes = async {
        let mut latencies_ms = Vec::new();
        let mut missed = 0;
        let end = Instant::now() + Duration::from_secs(args.freshness_seconds);
        let mut probe = 0usize;
        while Instant::now() < end {
            probe += 1;
            let member = format!("m{}", rng.random_range(0..args.members));
            let request = RankRequest {
                user_id: member.clone(),
                k: 20,
                ..Default::default()
            };
            let before = client.rank(request.clone()).await?.into_inner().items;
            let event = Event {
                event_id: format!("p{probe}"),
                user_id: member.clone(),
                // The member's current top item: once the event is applied it is seen, and
                // leaves the ranking whatever the family (a random item need not move a history
                // family's top 20, which would read as an event never applied).
                item_id: before
                    .first()
                    .map(|i| i.item_id.clone())
                    .unwrap_or_else(|| format!("i{}", rng.random_range(0..args.items))),
                event_type: "play".into(),
                value: 0.0,
                ts: chrono::Utc::now().timestamp_millis(),
                request_id: String::new(),
            };
            let sent = Instant::now();
            send(&kafka, topic, &event, Encoding::Protobuf).await?;
            loop {
                let now = client.rank(request.clone()).await?.into_inner().items;
                if now != before {
                    latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                if sent.elapsed() > Duration::from_secs(5) {
                    missed += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((latencies_ms, missed))
    };
    let (loaded, probed) = tokio::join!(load, probes);
    loaded?;
    let (mut latencies_ms, missed) = probed?;
    latencies_ms.sort_by(f64::total_cmp);
    println!(
        "freshness at {:.0} events/s: event produced → Rank answers from the new state: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes ({} not seen within 5 s; target p99 ≤ 100 ms)",
        args.steady_rate,
        percentile(&latencies_ms, 0.5),
        percentile(&latencies_ms, 0.99),
        latencies_ms.last().copied().unwrap_or(f64::NAN),
        latencies_ms.len(),
        missed
    );
    Ok(())
}
