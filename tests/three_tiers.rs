//! The platform end to end: the three tiers as separate processes of the real `recsys` binary,
//! against a real redis-server (the shared feature store, and the cache in another database) and a
//! real Tansu broker.
//!
//! synthetic data → `offline train` → `offline load-store` → `online serve` + `nearline run` →
//! `nearline produce` a member's events → within a bounded wait, `Rank` for that member reflects
//! them (the items they played are gone from the unseen ranking, and the ranking moved toward
//! them) → `offline train` publishes a new version → the online tier switches to it under a
//! concurrent load with no failed request, and the member's events still count under the new
//! model (their vector is re-folded from the stored history).
//!
//! It runs for iALS (a vector per member, folded in by the worker) and for the history families:
//! EASE first, then an item-kNN version swapped in under load — a change of family in service.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_nearline::event::Event;
use recsys_shared::ops::scrape;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{HomepageRequest, RankRequest, RankResponse, SimilarItemsRequest};
use recsys_shared::testkit::{free_port, wait_for_port, RedisServer, TansuBroker};
use tonic::transport::Channel;

mod common;
use common::{synth, wait_until, Process};

const MEMBER: &str = "u0000007";
const APPLIED: &str = "recsys_nearline_events_total{outcome=\"applied\"}";

/// A child process killed when the test ends, however it ends.
struct Platform {
    dir: tempfile::TempDir,
    redis: RedisServer,
    broker: TansuBroker,
}

impl Platform {
    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsys"));
        cmd.args(args)
            .env("RECSYS_LOG", "warn")
            .env("RECSYS__MODEL__ROOT", self.models())
            .env("RECSYS__STORE__BACKEND", "redis")
            .env("RECSYS__STORE__REDIS__URL", self.redis.url())
            // Training a model saturates both cores of the test machine while the swap is under
            // load; a store read slower than the default 250 ms would answer `degraded`, which
            // this test counts as a failure (the degraded path has tests of its own).
            .env("RECSYS__STORE__READ_TIMEOUT_MS", "3000")
            .env("RECSYS__CACHE__BACKEND", "redis")
            .env(
                "RECSYS__CACHE__REDIS__URL",
                format!("{}1", self.redis.url()),
            )
            .env("RECSYS__CACHE__REDIS__TIMEOUT_MS", "200")
            .env("RECSYS__ONLINE__MODEL_POLL_MS", "200")
            .env("RECSYS__NEARLINE__MODEL_POLL_MS", "200")
            .env("RECSYS__KAFKA__BROKERS", self.broker.brokers())
            .env("RECSYS__NEARLINE__GROUP_ID", "e2e");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let o = self.command(args).output().unwrap();
        assert!(
            o.status.success(),
            "recsys {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    fn train(&self, seed: &str, family: &str) -> String {
        let data = self.dir.path().join("data");
        let (interactions, items) = (
            data.join("interactions.parquet"),
            data.join("items.parquet"),
        );
        let args = [
            "offline",
            "train",
            "--interactions",
            interactions.to_str().unwrap(),
            "--items",
            items.to_str().unwrap(),
            "--factors",
            "16",
            "--iterations",
            "8",
            "--seed",
            seed,
            "--skip-eval",
        ];
        let mut cmd = self.command(&args);
        let o = cmd.env("RECSYS__OFFLINE__FAMILY", family).output().unwrap();
        assert!(
            o.status.success(),
            "recsys offline train ({family}): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let outcome: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        outcome["version"].as_str().unwrap().to_string()
    }

    fn spawn(&self, args: &[&str]) -> Process {
        Process(
            self.command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    fn produce(&self, name: &str, events: &[Event]) {
        let file = self.dir.path().join(name);
        let mut f = std::fs::File::create(&file).unwrap();
        for e in events {
            f.write_all(&e.to_json()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        let input = file.to_str().unwrap();
        self.run(&["nearline", "produce", "--input", input, "--partitions", "4"]);
    }
}

fn play(id: String, user: &str, item: &str, ts: i64) -> Event {
    Event {
        event_id: id,
        user_id: user.into(),
        item_id: item.into(),
        event_type: "play".into(),
        value: 0.0,
        ts,
        request_id: String::new(),
    }
}

async fn rank(
    client: &mut RankingClient<Channel>,
    k: u64,
    exclude_seen: bool,
) -> Result<RankResponse, tonic::Status> {
    client
        .rank(RankRequest {
            user_id: MEMBER.into(),
            k,
            exclude_seen: Some(exclude_seen),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn positions(r: &RankResponse) -> HashMap<String, usize> {
    r.items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.item_id.clone(), i))
        .collect()
}

fn mean_position(all: &HashMap<String, usize>, items: &[String]) -> f64 {
    items.iter().map(|i| all[i] as f64).sum::<f64>() / items.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_ranking_and_a_new_model_swaps_in_under_load() {
    three_tiers("ials", "ials").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_families_serve_take_events_and_swap_family_under_load() {
    three_tiers("ease", "item_knn").await;
}

/// The items `item` pushes up most in the served model (`SimilarItems`).
async fn neighbours(client: &mut RankingClient<Channel>, item: &str, k: u64) -> Vec<String> {
    let similar = client
        .similar_items(SimilarItemsRequest {
            item_id: item.into(),
            k,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!similar.items.is_empty(), "no item is similar to {item}");
    assert!(similar.items.iter().all(|i| i.item_id != item));
    similar.items.into_iter().map(|i| i.item_id).collect()
}

async fn three_tiers(first: &str, second: &str) {
    let platform = Platform {
        dir: tempfile::tempdir().unwrap(),
        redis: RedisServer::start(),
        broker: TansuBroker::start_in_memory(),
    };
    let data = platform.dir.path().join("data");
    synth(&data, 400, 200, 30_000, "11");
    let v1 = platform.train("1", first);
    platform.run(&["offline", "load-store"]);

    let grpc = free_port();
    let online_metrics = free_port();
    let _online = platform.spawn(&[
        "online",
        "serve",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--metrics-listen",
        &format!("127.0.0.1:{online_metrics}"),
    ]);
    assert!(wait_for_port(grpc, Duration::from_secs(30)));
    let mut client = RankingClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let before_all = loop {
        match rank(&mut client, 200, false).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                eprintln!("online not ready: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(before_all.model_version, v1);
    let before_unseen = rank(&mut client, 20, true).await.unwrap();

    // The member's new plays: two titles from the top of their unseen ranking and four from the
    // bottom of the whole catalog.
    let top: Vec<String> = before_unseen.items[..2]
        .iter()
        .map(|i| i.item_id.clone())
        .collect();
    let tail: Vec<String> = before_all.items[before_all.items.len() - 4..]
        .iter()
        .map(|i| i.item_id.clone())
        .collect();
    let now = chrono::Utc::now().timestamp_millis();

    // The topic exists (and the worker is consuming) before the member's events are sent.
    platform.produce(
        "warmup.jsonl",
        &[play("warmup".into(), "u0000001", &tail[0], now - 60_000)],
    );
    let worker_metrics = free_port();
    let _worker = platform.spawn(&[
        "nearline",
        "run",
        "--metrics-listen",
        &format!("127.0.0.1:{worker_metrics}"),
    ]);
    wait_until(
        "the worker to apply the warm-up event",
        Duration::from_secs(60),
        || scrape(worker_metrics, APPLIED) >= 1.0,
    );

    let mut events = Vec::new();
    for (n, item) in top.iter().chain(&tail).enumerate() {
        for r in 0..5 {
            let i = n * 5 + r;
            events.push(play(
                format!("e2e-{i}"),
                MEMBER,
                item,
                now - 30_000 + i as i64 * 100,
            ));
        }
    }
    let sent = Instant::now();
    platform.produce("member.jsonl", &events);

    // Within a bounded wait, the ranking reflects the events.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after_unseen = loop {
        let r = rank(&mut client, 20, true).await.unwrap();
        if !r.items.iter().any(|i| top.contains(&i.item_id)) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the played titles {top:?} are still ranked as unseen: {:?}",
            r.items.iter().map(|i| &i.item_id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "events reflected in Rank {} ms after produce returned",
        sent.elapsed().as_millis()
    );
    assert_eq!(after_unseen.model_version, v1);
    assert_eq!(after_unseen.items.len(), 20);
    let after_all = rank(&mut client, 200, false).await.unwrap();
    // iALS: the played titles themselves climb (the member's vector moved toward them). The
    // history families: the titles the played ones push up climb (an item's own weight is 0).
    let moved = if first == "ials" {
        tail.clone()
    } else {
        let mut pushed = Vec::new();
        for item in &tail {
            pushed.extend(neighbours(&mut client, item, 3).await);
        }
        pushed.retain(|i| !tail.contains(i) && !top.contains(i));
        pushed
    };
    let (moved_before, moved_after) = (
        mean_position(&positions(&before_all), &moved),
        mean_position(&positions(&after_all), &moved),
    );
    eprintln!("{first}: mean position of {moved:?} {moved_before} → {moved_after}");
    assert!(
        moved_after < moved_before / 2.0,
        "the ranking did not move toward the played titles: mean position of {moved:?} \
         {moved_before} → {moved_after}"
    );
    // The homepage: top picks for the member, nothing they played on it, a "because you
    // watched" row seeded by their newest play.
    let page = client
        .homepage(HomepageRequest {
            user_id: MEMBER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.model_version, v1);
    assert_eq!(page.rows[0].kind, "top_picks", "{:?}", page.rows);
    assert!(
        page.rows.iter().any(|r| r.kind == "because_you_watched"
            && (tail.contains(&r.seed_item_id) || top.contains(&r.seed_item_id))
            && !r.items.is_empty()),
        "no row seeded by a play: {:?}",
        page.rows
    );
    for row in &page.rows {
        assert!(
            !row.items
                .iter()
                .any(|i| top.contains(&i.item_id) || tail.contains(&i.item_id)),
            "a played title on the homepage: {row:?}"
        );
    }

    // A new model version, published while the online tier is under load.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let saw_v1 = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for t in 0..4 {
        let (stop, ok, failed, saw_v1) = (stop.clone(), ok.clone(), failed.clone(), saw_v1.clone());
        let mut client = client.clone();
        let v1 = v1.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut last = String::new();
            while !stop.load(Ordering::Relaxed) {
                let member = format!("u{:07}", (t * 97 + n * 13) % 400);
                n += 1;
                match client
                    .rank(RankRequest {
                        user_id: member,
                        k: 10,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        if r.items.len() != 10 || r.degraded {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if r.model_version == v1 {
                            saw_v1.fetch_add(1, Ordering::Relaxed);
                        }
                        last = r.model_version;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("request failed during the swap: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            last
        }));
    }
    let v2 = {
        let platform = &platform;
        tokio::task::block_in_place(|| platform.train("2", second))
    };
    assert_ne!(v2, v1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = rank(&mut client, 20, true).await.unwrap();
        if r.model_version == v2 {
            // Re-folded under the new model from the stored history: the plays still count.
            assert!(
                !r.items.iter().any(|i| top.contains(&i.item_id)),
                "under {v2} the played titles came back: {:?}",
                r.items
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the online tier did not switch to {v2}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut last_versions = Vec::new();
    for task in load {
        last_versions.push(task.await.unwrap());
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests during the swap, {failed} failed");
    assert_eq!(failed, 0, "requests failed during the model swap");
    assert!(
        saw_v1.load(Ordering::Relaxed) > 0,
        "the load started after the swap"
    );
    assert!(ok > 20, "too little load to say anything: {ok} requests");
    assert!(last_versions.iter().all(|v| *v == v2), "{last_versions:?}");
    assert_eq!(
        scrape(
            online_metrics,
            "recsys_model_swaps_total{result=\"swapped\"}"
        ),
        2.0
    );
}
