//! `recsys quickstart`: the whole platform in one process on embedded defaults, no services.
//!
//! It runs each tier's real code, wired the way the separate processes wire it: the offline job
//! (synthetic data or MovieLens → DataFusion features → evaluation → the configured family, `auto`
//! by default → publish), the bulk load of the model's members into the embedded store, the
//! online gRPC server on that store behind the in-process cache, and the nearline apply path fed
//! by a local channel instead of Kafka (the same admit → update → write path after decoding). The homepage is read through a real
//! gRPC client before and after a sample member's events, so what is printed is what a caller
//! of the API would see.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tonic::transport::Channel;

use recsys_nearline::apply::Applier;
use recsys_nearline::event::{Event, EventRules};
use recsys_nearline::local::{self, Record};
use recsys_nearline::model::{MemberModel, ModelHandle};
use recsys_offline::synth::{SynthSpec, SynthWorld};
use recsys_offline::train::TrainJob;
use recsys_shared::artifact::{files, read_history, ModelRoot};
use recsys_shared::config::{CacheBackend, Config, StoreBackend};
use recsys_shared::model::{Family, MemberState};
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{
    HomepageRequest, HomepageResponse, RankRequest, SimilarItemsRequest, VectorSource,
};
use recsys_store::cache::FeatureReader;
use recsys_store::{bulk, features::FeatureStore};

/// Options of `recsys quickstart`.
#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Working directory: each data source's data, model versions and feature store go under
    /// a directory of its own in it (`synthetic/`, `movielens/`), so the publish gate never
    /// compares a model of one source with a model of another.
    #[arg(long, default_value = "var/quickstart")]
    pub dir: PathBuf,
    /// Import MovieLens from DIR (any release `recsys import movielens` reads) instead of
    /// generating synthetic data.
    #[arg(long)]
    pub movielens: Option<PathBuf>,
    /// Synthetic members.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Synthetic catalog size.
    #[arg(long, default_value_t = 5_000)]
    pub items: usize,
    /// Synthetic interactions.
    #[arg(long, default_value_t = 1_000_000)]
    pub interactions: usize,
    /// Events streamed for the sample member.
    #[arg(long, default_value_t = 300)]
    pub events: usize,
    /// The sample member [default: a member with a typical history].
    #[arg(long)]
    pub member: Option<String>,
    /// gRPC address [config: online.listen, default 127.0.0.1:50051].
    #[arg(long)]
    pub listen: Option<String>,
    /// /metrics, /healthz, /readyz address [config: online.metrics_listen].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// REST/JSON API and console address [config: online.rest_listen; the quickstart's default
    /// 127.0.0.1:8080].
    #[arg(long)]
    pub rest_listen: Option<String>,
    /// Exit once the homepages are printed instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

const STEPS: usize = 6;

fn step(n: usize, what: &str) {
    println!("\n[{n}/{STEPS}] {what}");
}

/// Runs the quickstart; `config` supplies everything but the paths, the store (embedded) and the
/// cache (in-process), which the quickstart sets under `args.dir`.
pub fn run(
    args: &QuickstartArgs,
    mut config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let started = Instant::now();
    let dir = args.dir.join(match args.movielens {
        Some(_) => "movielens",
        None => "synthetic",
    });
    config.model.root = dir.join("models");
    config.store.backend = StoreBackend::Embedded;
    config.store.embedded.path = dir.join("features");
    config.cache.backend = CacheBackend::InProcess;
    if let Some(l) = &args.listen {
        config.online.listen = l.clone();
    }
    if let Some(l) = &args.metrics_listen {
        config.online.metrics_listen = l.clone();
    }
    if let Some(l) = &args.rest_listen {
        config.online.rest_listen = Some(l.clone());
    }
    let rest_listen = config
        .online
        .rest_listen
        .get_or_insert_with(|| "127.0.0.1:8080".into())
        .clone();
    config
        .validate()
        .map_err(|problem| anyhow::anyhow!("quickstart options: {problem}"))?;
    // The ports are checked before minutes of training, not after.
    for (addr, flag) in [
        (&config.online.listen, "--listen"),
        (&config.online.metrics_listen, "--metrics-listen"),
        (&rest_listen, "--rest-listen"),
    ] {
        if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
            anyhow::bail!(
                "{addr} cannot be listened on ({e}): another quickstart or server may hold it; stop it, or pass {flag} with a free address (e.g. {flag} 127.0.0.1:0 for any free port)"
            );
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The store is rebuilt from the published model each run, so a rerun starts from the same
    // member state (earlier runs' events are not in it).
    let features = &config.store.embedded.path;
    if features.exists() {
        std::fs::remove_dir_all(features)
            .with_context(|| format!("removing the previous run's store {}", features.display()))?;
    }

    // Offline: data, then the batch job (it runs its own query runtime, so before ours starts).
    let data = dir.join("data");
    match &args.movielens {
        Some(input) => {
            step(1, &format!("Importing MovieLens from {}", input.display()));
            let summary = recsys_offline::movielens::import(input, &data)
                .with_context(|| format!("importing MovieLens from {}", input.display()))?;
            println!(
                "      {} interactions, {} items ({:?})",
                summary.interactions, summary.items, summary.release
            );
        }
        None => {
            step(
                1,
                &format!(
                    "Generating synthetic data: {} members, {} items, {} interactions",
                    args.users, args.items, args.interactions
                ),
            );
            SynthWorld::new(SynthSpec {
                users: args.users,
                items: args.items,
                interactions: args.interactions,
                seed: 42,
            })?
            .write(&data)?;
        }
    }
    println!("      {}", data.display());

    step(
        2,
        "Offline job: DataFusion features → held-out evaluation → fit → publish",
    );
    let outcome = TrainJob {
        interactions: data.join("interactions.parquet"),
        items: data.join("items.parquet"),
        config: config.clone(),
        as_of_ms: None,
        skip_eval: false,
        force: true,
        tuning: None,
    }
    .run()?;
    println!(
        "      published {} ({}, fit {:.1} s); gate: {}",
        outcome.version,
        outcome.family.title(),
        outcome.train_seconds,
        outcome.gate
    );
    print_evaluation(&outcome.metrics);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve_and_stream(
        args,
        &config,
        &outcome.version,
        outcome.family,
        started,
        shutdown,
    ))
}

fn print_evaluation(evaluation: &serde_json::Value) {
    let (Some(model), popularity) = (
        evaluation.get("model").and_then(|m| m.as_object()),
        evaluation.get("popularity"),
    ) else {
        println!("      evaluation: {evaluation}");
        return;
    };
    println!(
        "      held-out evaluation ({}, {} members):   model   popularity",
        evaluation["protocol"].as_str().unwrap_or("?"),
        evaluation["evaluated_members"]
    );
    for (name, value) in model {
        let baseline = popularity
            .and_then(|p| p.get(name))
            .and_then(|v| v.as_f64())
            .map_or("-".to_string(), |v| format!("{v:.4}"));
        println!(
            "        {name:<14} {:>30.4} {baseline:>12}",
            value.as_f64().unwrap_or(f64::NAN)
        );
    }
}

async fn serve_and_stream(
    args: &QuickstartArgs,
    config: &Config,
    version: &str,
    family: Family,
    started: Instant,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let root = ModelRoot::new(&config.model.root);
    step(
        3,
        "Loading the model's members into the embedded feature store",
    );
    let kv = recsys_store::open(&config.store).await.with_context(|| {
        format!(
            "opening the embedded store at {} (is another quickstart running?)",
            config.store.embedded.path.display()
        )
    })?;
    let store = FeatureStore::new(kv, config.store.history_cap);
    // The store was removed at the start of the run, so the version is never loaded yet.
    let report = bulk::load_model_features_with_progress(&root, version, &store).await?;
    println!("      {} members", report.members);
    let reader = FeatureReader::from_config(store, &config.cache, &config.store);

    step(
        4,
        "Online tier: gRPC server (recsys.v1.Ranking) on the embedded store, in-process cache",
    );
    let server = recsys_online::server::start_with_reader(config, reader.clone())
        .await
        .with_context(|| format!("starting the online server on {}", config.online.listen))?;
    let grpc = server.grpc_addr;
    println!(
        "      listening on {grpc}; metrics on http://{}/metrics",
        server.metrics_addr
    );
    if let Some(rest) = server.rest_addr {
        println!("      REST/JSON on http://{rest}/v1/rank (its OpenAPI document: http://{rest}/openapi.json)");
        if config.online.console.enabled {
            println!("      console on http://{rest}/console");
        }
    }
    let mut client = RankingClient::connect(format!("http://{grpc}"))
        .await
        .context("connecting to the online server")?;

    let member = match &args.member {
        Some(m) => m.clone(),
        None => typical_member(&root, version)?,
    };
    let before = homepage(&mut client, &member).await?;
    let (interest, related) = new_interest(&mut client, &member, &before).await?;
    let top_before = top_picks(&mut client, &member).await?;

    step(
        5,
        &format!(
            "Nearline: {} events of member {member} on {} titles like {:?}, {}",
            args.events,
            interest.len(),
            interest[0].1,
            match family.member_state() {
                MemberState::Vector => "through the fold-in",
                MemberState::History => "into the history the model scores",
            }
        ),
    );
    let model = ModelHandle::new();
    model.set(MemberModel::load(&root, version)?);
    let applier = Applier::new(
        Arc::new(reader),
        model,
        EventRules::from_config(config),
        config.nearline.concurrency,
    );
    let events = sample_events(&member, &interest, args.events);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let feed = tokio::spawn(async move {
        let mut progress = recsys_shared::progress::Progress::new("events", events.len() as u64);
        for event in &events {
            if tx.send(Record::protobuf(event)).await.is_err() {
                break;
            }
            progress.advance(1, "sent");
            // A member's session, sped up: two events per millisecond of wall time.
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        progress.finish();
    });
    let applied_started = Instant::now();
    let report = local::run(&applier, rx, config.nearline.max_batch).await?;
    feed.await.context("the event feed")?;
    println!(
        "      {} events applied in {} batches ({} rejected) in {:.0} ms",
        report.applied,
        report.batches,
        report.rejected.len(),
        applied_started.elapsed().as_secs_f64() * 1e3
    );

    step(6, &format!("Homepage of {member}, before and after"));
    let after = homepage(&mut client, &member).await?;
    let top_after = top_picks(&mut client, &member).await?;
    print_homepage("before", &before, &related, family);
    print_homepage("after", &after, &related, family);
    let share = |top: &[String]| top.iter().filter(|i| related.contains(*i)).count();
    println!(
        "\n      titles like the played ones (marked *, not played themselves) among the top 20 unseen picks: {} before, {} after",
        share(&top_before),
        share(&top_after)
    );
    let seconds = started.elapsed().as_secs_f64();
    if args.exit {
        println!(
            "\n  Done in {seconds:.0} s. The API has stopped (--exit). Run without --exit to keep it serving, then ask it:"
        );
    } else {
        println!("\n  Done in {seconds:.0} s. Ask the API from another terminal:");
    }
    let server_flag = match grpc.port() {
        50051 if grpc.ip().is_loopback() => String::new(),
        _ => format!(" --server http://{grpc}"),
    };
    println!("    recsys client homepage --user {member}{server_flag}");
    println!("    recsys client rank --user {member} --k 10 --exclude-seen{server_flag}");
    println!(
        "    recsys client similar --item {} --k 5{server_flag}",
        interest[0].0
    );
    println!(
        "    grpcurl -plaintext -d '{{\"user_id\":\"{member}\",\"rows\":3}}' {grpc} recsys.v1.Ranking/Homepage   # any gRPC client: the server has reflection"
    );
    println!("    curl http://{}/metrics", server.metrics_addr);
    if let Some(rest) = server.rest_addr {
        println!("    curl -s -d '{{\"user_id\":\"{member}\",\"k\":5}}' http://{rest}/v1/rank");
        if config.online.console.enabled {
            println!("    open http://{rest}/console in a browser (models, experiments, member preview, health)");
        }
    }
    if args.exit {
        server.shutdown().await?;
        return Ok(());
    }
    println!("\n  Serving until Ctrl-C.");
    server.run_until(shutdown).await?;
    Ok(())
}

/// A member whose published history length is the median one: neither new nor extreme.
fn typical_member(root: &ModelRoot, version: &str) -> Result<String> {
    let path = root.version_dir(version).join(files::USER_HISTORY);
    let rows = read_history(&path)?;
    let mut lengths: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *lengths.entry(row.user_id.as_str()).or_default() += 1;
    }
    let mut members: Vec<(usize, &str)> = lengths.into_iter().map(|(u, n)| (n, u)).collect();
    members.sort_unstable();
    members
        .get(members.len() / 2)
        .map(|(_, u)| u.to_string())
        .with_context(|| format!("{}: no member histories", path.display()))
}

/// The member's homepage as the API serves it.
async fn homepage(client: &mut RankingClient<Channel>, member: &str) -> Result<HomepageResponse> {
    Ok(client
        .homepage(HomepageRequest {
            user_id: member.to_string(),
            rows: 4,
            items_per_row: 6,
            country: String::new(),
        })
        .await
        .context("Homepage")?
        .into_inner())
}

/// The member's top 20 item ids (seen items excluded).
async fn top_picks(client: &mut RankingClient<Channel>, member: &str) -> Result<Vec<String>> {
    let ranked = client
        .rank(RankRequest {
            user_id: member.to_string(),
            k: 20,
            country: String::new(),
            exclude_item_ids: Vec::new(),
            exclude_seen: Some(true),
        })
        .await
        .context("Rank")?
        .into_inner();
    Ok(ranked.items.into_iter().map(|i| i.item_id).collect())
}

/// A taste the member does not have yet: the trending title the member's ranking puts lowest
/// and the items most like it (`SimilarItems`), to be played (seed first, `(item_id, title)`);
/// and the next neighbours, not played, which the ranking should move toward.
async fn new_interest(
    client: &mut RankingClient<Channel>,
    member: &str,
    homepage: &HomepageResponse,
) -> Result<(Vec<(String, String)>, HashSet<String>)> {
    let ranked = client
        .rank(RankRequest {
            user_id: member.to_string(),
            k: 1000,
            country: String::new(),
            exclude_item_ids: Vec::new(),
            exclude_seen: Some(false),
        })
        .await
        .context("Rank")?
        .into_inner();
    let position: HashMap<&str, usize> = ranked
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.item_id.as_str(), i))
        .collect();
    let trending: Vec<_> = homepage
        .rows
        .iter()
        .filter(|r| r.kind == "trending")
        .flat_map(|r| r.items.iter())
        .chain(ranked.items.iter().rev().take(50))
        .collect();
    let seed = trending
        .iter()
        .max_by_key(|item| {
            position
                .get(item.item_id.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        })
        .context("the catalog is empty")?;
    let similar = client
        .similar_items(SimilarItemsRequest {
            item_id: seed.item_id.clone(),
            k: 60,
        })
        .await
        .context("SimilarItems")?
        .into_inner();
    let mut interest = vec![(seed.item_id.clone(), seed.title.clone())];
    let mut neighbours = similar.items.into_iter();
    interest.extend(neighbours.by_ref().take(11).map(|i| (i.item_id, i.title)));
    Ok((interest, neighbours.map(|i| i.item_id).collect()))
}

/// `n` plays spread over the interest titles during the last minutes, oldest first.
fn sample_events(member: &str, interest: &[(String, String)], n: usize) -> Vec<Event> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..n)
        .map(|i| Event {
            event_id: format!("quickstart-{member}-{now}-{i}"),
            user_id: member.to_string(),
            item_id: interest[i % interest.len()].0.clone(),
            event_type: "play".to_string(),
            value: 0.0,
            ts: now - (n - i) as i64 * 1_000,
            request_id: String::new(),
        })
        .collect()
}

fn print_homepage(label: &str, page: &HomepageResponse, marked: &HashSet<String>, family: Family) {
    let source = VectorSource::try_from(page.vector_source)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("VECTOR_SOURCE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    println!(
        "\n  ── {label} (model {}, {} {} from {source}{}) ──",
        page.model_version,
        family.title(),
        match family.member_state() {
            MemberState::Vector => "vector",
            MemberState::History => "history",
        },
        if page.degraded { ", degraded" } else { "" }
    );
    for row in &page.rows {
        println!("    {}", row.title);
        for item in &row.items {
            let mark = if marked.contains(&item.item_id) {
                "*"
            } else {
                " "
            };
            println!(
                "      {mark} {:<60} {:>7.3}",
                shorten(&item.title, 60),
                item.score
            );
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}
