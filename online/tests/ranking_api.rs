//! The ranking API through a real tonic client against a real server: RPCs, bad requests,
//! deadlines, health and reflection, the hot swap under load, a corrupt model, and Redis and the
//! store failing under load (real `redis-server` processes of the test's own).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_online::server::{start, RunningServer};
use recsys_shared::artifact::synthetic::synthetic_model;
use recsys_shared::artifact::{files, ModelRoot};
use recsys_shared::config::{CacheBackend, Config, StoreBackend};
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{
    HomepageRequest, RankRequest, RankResponse, SimilarItemsRequest, VectorSource,
};
use recsys_shared::testkit::{serving_config, RedisServer};
use tonic::transport::Channel;
use tonic::Code;

const ITEMS: usize = 2000;
const MEMBERS: usize = 300;
const K: usize = 16;

fn config(dir: &Path) -> Config {
    serving_config(dir, "features")
}

/// [`config`] with `redis` as the store, generous store timeouts (the tests slow Redis down on
/// purpose) and no cache, so every read reaches the store.
fn redis_store_config(dir: &Path, redis: &RedisServer) -> Config {
    let mut config = config(dir);
    config.store.backend = StoreBackend::Redis;
    config.store.redis.url = redis.url();
    config.store.read_timeout_ms = 5000;
    config.store.redis.timeout_ms = 5000;
    config.cache.backend = CacheBackend::None;
    config
}

async fn client(server: &RunningServer) -> RankingClient<Channel> {
    RankingClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap()
}

fn rank(user: &str) -> RankRequest {
    RankRequest {
        user_id: user.into(),
        k: 20,
        ..Default::default()
    }
}

fn ids(response: &RankResponse) -> Vec<String> {
    response.items.iter().map(|i| i.item_id.clone()).collect()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name` (with its labels) in a Prometheus text page; 0 when absent.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The items of member `m{i}`'s synthetic history, read from the store the server loaded.
async fn history_of(server: &RunningServer, user: &str) -> HashSet<String> {
    let (features, _) = server.ranker.reader().get(user).await.unwrap();
    features.history.iter().map(|e| e.item_id.clone()).collect()
}

/// The services a server's reflection lists, asked through version `$v` of the protocol.
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new($channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = r
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        match stream.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_homepage_and_similar_items_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let version = synthetic_model(&config.model.root, ITEMS, MEMBERS, K, 1).unwrap();
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;

    // A known member: their stored vector of this model, then the cache.
    let first = c.rank(rank("m1")).await.unwrap().into_inner();
    assert_eq!(first.model_version, version);
    assert_eq!(first.vector_source, VectorSource::Store as i32);
    assert_eq!(first.items.len(), 20);
    assert!(!first.degraded);
    assert!(
        first.items.windows(2).all(|w| w[0].score >= w[1].score),
        "best first"
    );
    assert!(first.items.iter().all(|i| i.title.starts_with("Title ")));
    let mut second = None;
    for _ in 0..50 {
        let r = c.rank(rank("m1")).await.unwrap().into_inner();
        if r.vector_source == VectorSource::Cache as i32 {
            second = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = second.expect("the second read comes from the cache");
    assert_eq!(ids(&second), ids(&first), "same vector, same ranking");

    // Exclusions: the member's history, explicit ids, and items not available in a country.
    let seen = history_of(&server, "m1").await;
    assert!(!seen.is_empty());
    let r = c
        .rank(RankRequest {
            user_id: "m1".into(),
            k: 200,
            exclude_seen: Some(true),
            exclude_item_ids: vec![first.items[0].item_id.clone()],
            country: "fr".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 200);
    for item in &r.items {
        assert!(!seen.contains(&item.item_id), "{} was seen", item.item_id);
        assert_ne!(item.item_id, first.items[0].item_id);
        let j: usize = item.item_id[1..].parse().unwrap();
        assert!(!j.is_multiple_of(10), "{} is US-only", item.item_id);
    }

    // Unset, the server's default (`online.exclude_seen = true`) leaves the history out; a
    // request may still ask for it.
    let whole = |exclude_seen| RankRequest {
        user_id: "m1".into(),
        k: 1000,
        exclude_seen,
        ..Default::default()
    };
    let by_default = c.rank(whole(None)).await.unwrap().into_inner();
    assert!(by_default.items.iter().all(|i| !seen.contains(&i.item_id)));
    let with_seen = c.rank(whole(Some(false))).await.unwrap().into_inner();
    assert!(with_seen.items.iter().any(|i| seen.contains(&i.item_id)));

    // An unknown member gets the popularity ranking, not an error.
    let cold = c.rank(rank("nobody")).await.unwrap().into_inner();
    assert_eq!(cold.vector_source, VectorSource::ColdStart as i32);
    assert_eq!(ids(&cold)[..3], ["i0", "i1", "i2"]);

    // A member with a history but a vector of another model is folded in.
    server
        .ranker
        .reader()
        .store()
        .put_vector(
            "m2",
            &recsys_store::features::MemberVector {
                model_version: "an-older-model".into(),
                values: vec![0.0; K],
            },
            recsys_store::IdempotencyToken::now(),
        )
        .await
        .unwrap();
    server.ranker.reader().invalidate("m2").await;
    let folded = c.rank(rank("m2")).await.unwrap().into_inner();
    assert_eq!(folded.vector_source, VectorSource::FoldIn as i32);

    // The homepage: titled rows, no title twice, nothing already seen.
    let page = c
        .homepage(HomepageRequest {
            user_id: "m1".into(),
            rows: 4,
            items_per_row: 10,
            country: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = page.rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "top_picks",
            "because_you_watched",
            "because_you_watched",
            "trending"
        ]
    );
    assert_eq!(page.rows[0].title, "Top picks for you");
    assert!(page.rows[1].title.starts_with("Because you watched Title "));
    assert!(seen.contains(&page.rows[1].seed_item_id));
    let mut shown = HashSet::new();
    for row in &page.rows {
        assert_eq!(row.items.len(), 10, "{}", row.title);
        for item in &row.items {
            assert!(
                shown.insert(item.item_id.clone()),
                "{} repeated",
                item.item_id
            );
            assert!(!seen.contains(&item.item_id));
        }
    }
    let cold_page = c
        .homepage(HomepageRequest {
            user_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cold_page.rows.len(), 1);
    assert_eq!(cold_page.rows[0].kind, "trending");

    // Similar items: cosine neighbours, never the item itself; unknown items are NOT_FOUND.
    let similar = c
        .similar_items(SimilarItemsRequest {
            item_id: "i5".into(),
            k: 7,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(similar.items.len(), 7);
    assert!(similar.items.iter().all(|i| i.item_id != "i5"));
    assert!(similar.items.iter().all(|i| i.score <= 1.0001));
    let missing = c
        .similar_items(SimilarItemsRequest {
            item_id: "no-such-item".into(),
            k: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Metrics and probes.
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("recsys_rpc_requests_total{code=\"Ok\",rpc=\"Rank\",transport=\"grpc\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("recsys_rpc_latency_seconds_bucket"));
    assert!(metrics.contains(&format!(
        "recsys_model_version_info{{version=\"{version}\"}} 1"
    )));
    // The gauge is the process's: other tests' servers in this binary set it too, so its value
    // is checked on the served catalog, and its presence on the page.
    assert!(metrics.contains("recsys_catalog_items "), "{metrics}");
    assert_eq!(server.ranker.catalog().unwrap().len(), ITEMS);
    assert!(metrics.contains("recsys_cache_requests_total{result=\"hit\"}"));
    assert!(http_get(server.metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    server.shutdown().await.unwrap();
}

/// Every item of a homepage.
fn page_items(page: &recsys_shared::proto::v1::HomepageResponse) -> Vec<String> {
    page.rows
        .iter()
        .flat_map(|r| r.items.iter().map(|i| i.item_id.clone()))
        .collect()
}

/// The synthetic catalog's maturity: every 7th item from i3 is rated R, from i5 unrated.
fn rated_r(item: &str) -> bool {
    item[1..].parse::<usize>().unwrap() % 7 == 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_items_and_the_maturity_limit_filter_rank_and_homepage() {
    use recsys_store::features::{FeedbackChange, HiddenItem, MemberProfile};
    use recsys_store::feedback::BLOCKED;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    synthetic_model(&config.model.root, ITEMS, MEMBERS, K, 1).unwrap();
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;
    let reader = server.ranker.reader();
    let store = reader.store().clone();
    let big = |user: &str| RankRequest {
        user_id: user.into(),
        k: 300,
        ..Default::default()
    };
    let homepage = |user: &str| HomepageRequest {
        user_id: user.into(),
        rows: 4,
        items_per_row: 10,
        country: String::new(),
    };

    // Feedback: m3's three best items hidden — one for an hour, one blocked, one whose time
    // has passed (shown again).
    let before = ids(&c.rank(big("m3")).await.unwrap().into_inner());
    let page_before = page_items(&c.homepage(homepage("m3")).await.unwrap().into_inner());
    let now = chrono::Utc::now().timestamp_millis();
    let hidden = [
        (before[0].clone(), now + 3_600_000),
        (page_before[1].clone(), BLOCKED),
        (before[2].clone(), now - 1_000),
    ];
    let change = FeedbackChange {
        user_id: "m3".into(),
        hidden: hidden
            .iter()
            .map(|(item_id, until_ms)| HiddenItem {
                item_id: item_id.clone(),
                until_ms: *until_ms,
            })
            .collect(),
        ..Default::default()
    };
    store
        .put_feedback(&[change], recsys_store::IdempotencyToken::now())
        .await
        .unwrap();
    reader.invalidate("m3").await;
    let after = ids(&c.rank(big("m3")).await.unwrap().into_inner());
    let page_after = page_items(&c.homepage(homepage("m3")).await.unwrap().into_inner());
    for (item, _) in &hidden[..2] {
        assert!(!after.contains(item), "{item} is hidden from Rank");
        assert!(!page_after.contains(item), "{item} is hidden from Homepage");
    }
    assert!(
        after.contains(&hidden[2].0),
        "an expired hide shows the item again"
    );

    // Maturity: without a limit m4 is shown R-rated items; limited to PG, never.
    let unlimited = ids(&c.rank(big("m4")).await.unwrap().into_inner());
    assert!(
        unlimited.iter().any(|i| rated_r(i)),
        "the test needs R items to remove"
    );
    store
        .put_profiles(
            &[(
                "m4".into(),
                MemberProfile {
                    max_maturity: Some("PG".into()),
                },
            )],
            recsys_store::IdempotencyToken::now(),
        )
        .await
        .unwrap();
    reader.invalidate("m4").await;
    let limited = ids(&c.rank(big("m4")).await.unwrap().into_inner());
    assert_eq!(limited.len(), 300);
    assert!(!limited.iter().any(|i| rated_r(i)), "{limited:?}");
    assert!(
        limited
            .iter()
            .any(|i| i[1..].parse::<usize>().unwrap() % 7 == 5),
        "unrated items are allowed by default"
    );
    let page = page_items(&c.homepage(homepage("m4")).await.unwrap().into_inner());
    assert!(!page.is_empty());
    assert!(!page.iter().any(|i| rated_r(i)), "{page:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    synthetic_model(&config.model.root, 100, 10, 4, 2).unwrap();
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;
    let cases: Vec<(RankRequest, &str)> = vec![
        (
            RankRequest {
                k: 1001,
                ..rank("m1")
            },
            "k: ",
        ),
        (rank(""), "user_id: "),
        (rank(&"x".repeat(257)), "user_id: "),
        (rank("tab\there"), "user_id: "),
        (
            RankRequest {
                exclude_item_ids: vec!["i1".into(); 1001],
                ..rank("m1")
            },
            "exclude_item_ids: ",
        ),
        (
            RankRequest {
                exclude_item_ids: vec![String::new()],
                ..rank("m1")
            },
            "exclude_item_ids: ",
        ),
        (
            RankRequest {
                country: "USA".into(),
                ..rank("m1")
            },
            "country: ",
        ),
        // A 3 MB country: the answer names the field without repeating the input (a multi-MB
        // grpc-message trailer is refused by default clients and proxies).
        (
            RankRequest {
                country: "Q".repeat(3 << 20),
                ..rank("m1")
            },
            "country: ",
        ),
    ];
    for (request, field) in cases {
        let status = c.rank(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{}", status.message());
        assert!(
            status.message().len() < 300,
            "{field}: a message of {} bytes",
            status.message().len()
        );
    }
    let status = c
        .similar_items(SimilarItemsRequest {
            item_id: "absent-".repeat(36),
            k: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().len() < 200, "{}", status.message());
    let status = c
        .homepage(HomepageRequest {
            user_id: "m1".into(),
            rows: 21,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("rows: "),
        "{}",
        status.message()
    );
    let status = c
        .similar_items(SimilarItemsRequest {
            item_id: "i1".into(),
            k: 5000,
        })
        .await
        .unwrap_err();
    assert!(status.message().starts_with("k: "), "{}", status.message());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_no_model_yet() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // No model published: the server starts, is not ready, and answers UNAVAILABLE.
    let server = start(&config).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = |health: &mut HealthClient<Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "recsys.v1.Ranking".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(check(&mut health).await, ServingStatus::NotServing as i32);
    let mut c = RankingClient::new(channel.clone());
    assert_eq!(
        c.rank(rank("m1")).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert!(http_get(server.metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 503"));

    // Publishing a model makes it ready without a restart.
    let version = synthetic_model(&config.model.root, 100, 10, 4, 3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(&mut health).await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "never became SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.rank(rank("m1")).await.unwrap().into_inner().model_version,
        version
    );

    // Reflection, both versions of the protocol, lists the service.
    for v1 in [true, false] {
        let names = if v1 {
            list_services!(v1, channel.clone())
        } else {
            list_services!(v1alpha, channel.clone())
        };
        assert!(
            names.iter().any(|n| n == "recsys.v1.Ranking"),
            "v1={v1}: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadlines_are_honoured() {
    // The store is a Redis server made slow with DEBUG SLEEP; the request's deadline is shorter.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = redis_store_config(dir.path(), &redis);
    synthetic_model(&config.model.root, 100, 10, 4, 4).unwrap();
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;
    c.rank(rank("m1")).await.unwrap();
    let sleeper = redis.sleep(1.5);
    let mut request = tonic::Request::new(rank("m1"));
    request.set_timeout(Duration::from_millis(150));
    let started = Instant::now();
    let status = c.rank(request).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        took < Duration::from_millis(1000),
        "answered after {took:?}"
    );
    sleeper.join().unwrap();
    server.shutdown().await.unwrap();
}

/// Model versions and vector sources seen by the load, and whether any answer was degraded.
type Seen = (HashSet<String>, HashSet<i32>, bool);

/// Runs `tasks` clients sending Rank for random members until `stop` is set; returns
/// (successes, failures, versions seen, sources seen).
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: RankingClient<Channel>, tasks: usize, members: usize) -> Load {
        let load = Load {
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            seen: Arc::new(std::sync::Mutex::new(Default::default())),
            tasks: Vec::new(),
        };
        let mut load = load;
        for t in 0..tasks {
            let mut c = client.clone();
            let (ok, failed, stop, seen) = (
                load.ok.clone(),
                load.failed.clone(),
                load.stop.clone(),
                load.seen.clone(),
            );
            load.tasks.push(tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i = (i * 7919 + 13) % members;
                    match c.rank(rank(&format!("m{i}"))).await {
                        Ok(r) => {
                            let r = r.into_inner();
                            ok.fetch_add(1, Ordering::Relaxed);
                            let mut s = seen.lock().unwrap();
                            s.0.insert(r.model_version);
                            s.1.insert(r.vector_source);
                            s.2 |= r.degraded;
                        }
                        Err(e) => {
                            eprintln!("request failed: {e:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        load
    }

    async fn finish(self) -> (u64, u64, HashSet<String>, HashSet<i32>, bool) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let s = self.seen.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            s.0,
            s.1,
            s.2,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_no_request_and_refuses_a_corrupt_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let v1 = synthetic_model(&config.model.root, ITEMS, MEMBERS, K, 5).unwrap();
    let server = start(&config).await.unwrap();
    let load = Load::start(client(&server).await, 16, MEMBERS);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let v2 = synthetic_model(&config.model.root, ITEMS + 10, MEMBERS, K, 6).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.ranker.catalog().unwrap().version != v2 {
        assert!(Instant::now() < deadline, "v2 never swapped in");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A version whose item factors were damaged on disk (set_current itself refuses a version
    // that fails verification, so CURRENT is rewritten by hand, as a bad copy or tool would).
    let elsewhere = dir.path().join("elsewhere");
    let v3 = synthetic_model(&elsewhere, ITEMS, MEMBERS, K, 7).unwrap();
    let root = ModelRoot::new(&config.model.root);
    std::fs::rename(elsewhere.join(&v3), root.version_dir(&v3)).unwrap();
    let factors = root.version_dir(&v3).join(files::ITEM_FACTORS);
    let mut bytes = std::fs::read(&factors).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&factors, bytes).unwrap();
    std::fs::write(config.model.root.join("CURRENT.tmp"), format!("{v3}\n")).unwrap();
    std::fs::rename(
        config.model.root.join("CURRENT.tmp"),
        config.model.root.join("CURRENT"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.ranker.catalog().unwrap().version,
        v2,
        "corrupt v3 refused"
    );
    assert_eq!(server.refused_loads(), 1, "refused once, not at every poll");

    let (ok, failed, versions, _, _) = load.finish().await;
    assert_eq!(failed, 0, "no request failed across the swap");
    assert!(ok > 100, "only {ok} requests ran");
    assert!(
        versions.contains(&v1) && versions.contains(&v2),
        "{versions:?}"
    );
    assert!(!versions.contains(&v3));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_killed_or_slowed_under_load_fails_no_request() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.cache.backend = CacheBackend::Redis;
    config.cache.redis.url = redis.url();
    config.cache.breaker_open_ms = 200;
    synthetic_model(&config.model.root, ITEMS, MEMBERS, K, 8).unwrap();
    let server = start(&config).await.unwrap();
    let load = Load::start(client(&server).await, 16, MEMBERS);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Slowed: Redis stops answering for a second.
    let sleeper = redis.sleep(1.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sleeper.join().unwrap();
    // Stopped: kill -9.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed, _, sources, degraded) = load.finish().await;
    assert_eq!(failed, 0, "no request failed while Redis was slow or dead");
    assert!(ok > 100, "only {ok} requests ran");
    assert!(
        sources.contains(&(VectorSource::Cache as i32)),
        "{sources:?}"
    );
    assert!(
        sources.contains(&(VectorSource::Store as i32)),
        "{sources:?}"
    );
    assert!(!degraded, "the store was up: nothing degraded");
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("recsys_cache_requests_total{result=\"error\"}"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_serves_cached_members_and_degrades_the_rest() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.store.backend = StoreBackend::Redis;
    config.store.redis.url = redis.url();
    config.store.read_timeout_ms = 200;
    config.cache.backend = CacheBackend::InProcess;
    // The Redis store is loaded the way a deployment loads it: the load-store step.
    synthetic_model(&config.model.root, ITEMS, MEMBERS, K, 9).unwrap();
    {
        let kv = recsys_store::open(&config.store).await.unwrap();
        let store = recsys_store::features::FeatureStore::new(kv, 500);
        recsys_store::bulk::load_model_features(
            &ModelRoot::new(&config.model.root),
            None,
            &store,
            |_, _| {},
        )
        .await
        .unwrap();
    }
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;
    let warm = c.rank(rank("m1")).await.unwrap().into_inner();
    assert_eq!(warm.vector_source, VectorSource::Store as i32);
    tokio::time::sleep(Duration::from_millis(100)).await; // cache fill
    redis.kill();
    let load = Load::start(c.clone(), 8, MEMBERS);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let cached = c.rank(rank("m1")).await.unwrap().into_inner();
    assert_eq!(cached.vector_source, VectorSource::Cache as i32);
    assert!(!cached.degraded);
    assert_eq!(ids(&cached), ids(&warm));
    let cold = c.rank(rank("m2")).await.unwrap().into_inner();
    assert!(cold.degraded, "store down: popularity, marked degraded");
    assert_eq!(cold.vector_source, VectorSource::ColdStart as i32);
    assert_eq!(cold.items.len(), 20);
    let (ok, failed, _, _, degraded) = load.finish().await;
    assert_eq!(failed, 0);
    assert!(ok > 10 && degraded);
    server.shutdown().await.unwrap();
}

/// Sends `message` as the body of a unary call to `path`, encoded as whatever `M` says, so a test
/// can send bytes no well-behaved client would.
async fn raw_call<M: prost::Message + Default + 'static>(
    server: &RunningServer,
    path: &'static str,
    message: M,
) -> tonic::Status {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary::<M, RankResponse, _>(
        tonic::Request::new(message),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .unwrap_err()
}

/// A RankRequest whose `user_id` is raw bytes (not necessarily UTF-8).
#[derive(Clone, PartialEq, prost::Message)]
struct BytesUserId {
    #[prost(bytes = "vec", tag = "1")]
    user_id: Vec<u8>,
}

/// Field 1 with the wrong wire type (a varint where a string belongs).
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    user_id: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_and_oversized_numbers_are_invalid_argument_and_counted() {
    // The faults: a non-UTF-8 string or garbage bytes answered INTERNAL and went uncounted; k =
    // 2^32 + 5 was silently read as k = 5.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    synthetic_model(&config.model.root, 100, 10, 4, 3).unwrap();
    let server = start(&config).await.unwrap();
    let status = raw_call(
        &server,
        "/recsys.v1.Ranking/Rank",
        BytesUserId {
            user_id: vec![b'm', 0xff, 0xfe],
        },
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = raw_call(
        &server,
        "/recsys.v1.Ranking/Homepage",
        WrongWireType { user_id: 7 },
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut c = client(&server).await;
    let status = c
        .rank(RankRequest {
            k: (1 << 32) + 5,
            ..rank("m1")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("k: 4294967301"),
        "{}",
        status.message()
    );
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    for rpc in ["Rank", "Homepage"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("recsys_rpc_requests_total")
                    && l.contains("code=\"InvalidArgument\"")
                    && l.contains(&format!("rpc=\"{rpc}\""))),
            "{rpc} undecodable request not counted:\n{metrics}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_sheds_at_once_and_caps_connections() {
    // One request in progress (its store read held up by a sleeping Redis) and one queued behind
    // it: the next request is shed with RESOURCE_EXHAUSTED at once.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = redis_store_config(dir.path(), &redis);
    config.online.max_in_flight = 1;
    config.online.max_queued = 1;
    config.online.max_connections = 2;
    synthetic_model(&config.model.root, 100, 10, 4, 4).unwrap();
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;
    c.rank(rank("m1")).await.unwrap();
    let sleeper = redis.sleep(1.5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held: Vec<_> = ["m2", "m4"]
        .into_iter()
        .map(|member| {
            let mut c = c.clone();
            tokio::spawn(async move { c.rank(rank(member)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let shed = c.rank(rank("m3")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(took < Duration::from_millis(500), "shed after {took:?}");
    // Health checks are never shed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "recsys.v1.Ranking".into(),
        })
        .await
        .unwrap();
    for held in held {
        held.await.unwrap().unwrap();
    }
    sleeper.join().unwrap();
    // Two connections are open (the client and the health check): a third is closed at once.
    let third = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    let refused = match third {
        Err(_) => true,
        Ok(channel) => RankingClient::new(channel).rank(rank("m1")).await.is_err(),
    };
    assert!(
        refused,
        "a connection past online.max_connections was served"
    );
    // (Metrics are per process, shared with the tests running beside this one.)
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(
        metric(&metrics, "recsys_rpc_shed_total{reason=\"queue_full\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "recsys_grpc_connections_refused_total") >= 1.0,
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_open_neither_lock_clients_out_nor_stay_open() {
    // The fault: sockets that never sent a byte (or only part of the HTTP/2 preface) filled
    // every connection slot and kept it: a real client timed out, and they stayed open.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.online.max_connections = 8;
    config.online.opening_timeout_ms = 1500;
    synthetic_model(&config.model.root, 100, 10, 4, 4).unwrap();
    let server = start(&config).await.unwrap();
    let mut held = Vec::new();
    for i in 0..12 {
        let mut socket = tokio::net::TcpStream::connect(server.grpc_addr)
            .await
            .unwrap();
        if i % 3 == 0 {
            socket.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        held.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every slot is taken by a connection that has not opened: a real client still gets in.
    let started = Instant::now();
    let mut c = RankingClient::new(
        Channel::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .expect("a fresh client connects while silent sockets hold every slot"),
    );
    let mut request = tonic::Request::new(rank("m1"));
    request.set_timeout(Duration::from_secs(1));
    c.rank(request).await.expect("a fresh client is answered");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    // Past the opening deadline every silent or half-opened socket is closed by the server.
    for (i, socket) in held.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(4), socket.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue, // the server's SETTINGS or GOAWAY
            }
        };
        assert!(
            closed,
            "socket {i} still open past online.opening_timeout_ms"
        );
    }
    // The client that opened is still served.
    c.rank(rank("m2")).await.unwrap();
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "recsys_grpc_connections_closed_total{reason=\"opening_timeout\"}"
        ) >= 1.0,
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

/// `n` calls opened on one raw HTTP/2 connection and each reset at once (a client cancelling
/// them before the server accepted them); `Err` when the server ended the connection.
async fn open_and_reset(addr: std::net::SocketAddr, n: usize) -> Result<(), h2::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await?;
    let connection = tokio::spawn(connection);
    for _ in 0..n {
        client = client.ready().await?;
        let request = http::Request::post(format!("http://{addr}/recsys.v1.Ranking/Homepage"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (_response, mut stream) = client.send_request(request, false)?;
        stream.send_reset(h2::Reason::CANCEL);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    if connection.is_finished() {
        connection.await.unwrap()?;
    }
    client.ready().await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_keep_their_connection_and_a_reset_flood_ends_it() {
    // The fault: 1,000 concurrent calls cancelled at 50 ms got 37 UNAVAILABLE: the server ended
    // the connection (GOAWAY too_many_resets) after 64 streams reset before it accepted them.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    synthetic_model(&config.model.root, 100, 10, 4, 4).unwrap();
    let server = start(&config).await.unwrap();
    let streams = config.online.max_concurrent_streams as usize;
    open_and_reset(server.grpc_addr, streams)
        .await
        .expect("a client cancelling every call it may have open keeps its connection");
    // A rapid-reset flood (CVE-2023-44487) still ends the connection.
    let flood = open_and_reset(server.grpc_addr, 40 * streams)
        .await
        .expect_err("a reset flood is cut off");
    // GOAWAY ENHANCE_YOUR_CALM, or the closed socket under the client's next write.
    assert!(
        flood.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || flood.is_io(),
        "{flood}"
    );
    // The server is unharmed.
    client(&server).await.rank(rank("m1")).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_newest_version_falls_back_and_is_retried_once_repaired() {
    // The fault: with the newest version corrupt the server stayed NOT_SERVING although the
    // previous version was intact, and repairing the file did nothing until a restart.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let v1 = synthetic_model(&config.model.root, 300, 20, 4, 11).unwrap();
    let v2 = synthetic_model(&config.model.root, 310, 20, 4, 12).unwrap();
    let root = ModelRoot::new(&config.model.root);
    assert_eq!(
        root.current_version().unwrap().as_deref(),
        Some(v2.as_str())
    );
    let factors = root.version_dir(&v2).join(files::ITEM_FACTORS);
    let intact = std::fs::read(&factors).unwrap();
    let mut damaged = intact.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&factors, &damaged).unwrap();

    let server = start(&config).await.unwrap();
    assert_eq!(
        server.ranker.catalog().map(|c| c.version.clone()),
        Some(v1.clone()),
        "the newest intact version is served"
    );
    let mut c = client(&server).await;
    assert_eq!(
        c.rank(rank("m1")).await.unwrap().into_inner().model_version,
        v1
    );
    let ready = http_get(server.metrics_addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // Polls do not reload the refused version while its files stay as they are...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.refused_loads(), 1);
    // ...and the repaired file is picked up without a restart.
    std::fs::write(&factors, &intact).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.ranker.catalog().unwrap().version != v2 {
        assert!(
            Instant::now() < deadline,
            "the repaired v2 was never swapped in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.rank(rank("m1")).await.unwrap().into_inner().model_version,
        v2
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_refused_naming_the_file_and_an_expired_certificate_is_reported() {
    // The fault: each of these was refused only with "online.tls: transport error", and an
    // expired certificate was served without a word.
    use recsys_shared::testkit::TestCertificates;
    let certs = TestCertificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, "").unwrap();
    let bad_ca = dir.path().join("bad-ca.pem");
    std::fs::write(
        &bad_ca,
        "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let p = |name: &str| certs.path(name);
    let cases = [
        (p("server.pem"), p("client.key"), None, "client.key"),
        (p("server.pem"), empty.clone(), None, "empty.key"),
        (p("server.key"), p("server.pem"), None, "server.key"),
        (
            p("server.pem"),
            p("server.key"),
            Some(bad_ca.clone()),
            "bad-ca.pem",
        ),
    ];
    synthetic_model(&dir.path().join("models"), 100, 10, 4, 13).unwrap();
    for (cert, key, ca, named) in cases {
        let mut config = config(dir.path());
        config.online.tls.cert_file = Some(cert);
        config.online.tls.key_file = Some(key);
        config.online.tls.client_ca_file = ca;
        let e = start(&config).await.err().expect("refused").to_string();
        assert!(
            e.contains("online.tls") && e.contains(named) && !e.contains("transport error"),
            "{named}: {e}"
        );
    }
    let mut config = config(dir.path());
    config.online.tls.cert_file = Some(certs.expired_server_certificate());
    config.online.tls.key_file = Some(p("server.key"));
    let server = start(&config).await.unwrap();
    let validity = server.certificate.expect("served with TLS");
    let now = chrono::Utc::now().timestamp();
    assert!(
        validity.problem(now).unwrap().contains("expired"),
        "{validity:?} at {now}"
    );
    // (The gauge is per process; other tests serve other certificates beside this one.)
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("recsys_tls_certificate_not_after_seconds "),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_api_keys_with_per_key_rpcs() {
    use recsys_shared::config::ApiKeyConfig;
    use recsys_shared::testkit::TestCertificates;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    recsys_shared::tls::install_crypto_provider();
    let certs = TestCertificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.online.tls.cert_file = Some(certs.path("server.pem"));
    config.online.tls.key_file = Some(certs.path("server.key"));
    config.online.tls.client_ca_file = Some(certs.path("ca.pem"));
    config.online.tls.metrics = true;
    let key_file = dir.path().join("homepage.key");
    std::fs::write(&key_file, "homepage-backend-key-7f3a9c\n").unwrap();
    config.online.auth.enabled = true;
    config.online.auth.keys = vec![ApiKeyConfig {
        name: "homepage-backend".into(),
        key_file: Some(key_file),
        key_env: None,
        rpcs: vec!["Rank".into()],
    }];
    synthetic_model(&config.model.root, 100, 10, 4, 13).unwrap();
    let server = start(&config).await.unwrap();
    let read = |name: &str| std::fs::read(certs.path(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    let endpoint = format!("https://localhost:{}", server.grpc_addr.port());
    let channel = Channel::from_shared(endpoint.clone())
        .unwrap()
        .tls_config(
            tls.clone()
                .identity(Identity::from_pem(read("client.pem"), read("client.key"))),
        )
        .unwrap()
        .connect()
        .await
        .expect("a client with a certificate from the CA connects");
    let with_key = |key: &'static str| {
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            Ok(request)
        }
    };
    let mut authorised =
        RankingClient::with_interceptor(channel.clone(), with_key("homepage-backend-key-7f3a9c"));
    let ranked = authorised.rank(rank("m1")).await.unwrap().into_inner();
    assert_eq!(ranked.items.len(), 20);
    let denied = authorised
        .homepage(HomepageRequest {
            user_id: "m1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let mut wrong =
        RankingClient::with_interceptor(channel.clone(), with_key("not-the-key-at-all"));
    assert_eq!(
        wrong.rank(rank("m1")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut bare = RankingClient::new(channel.clone());
    let status = bare.rank(rank("m1")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Health checks stay open to probes.
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "recsys.v1.Ranking".into(),
        })
        .await
        .unwrap();

    // Without a client certificate, or without TLS, no call gets through.
    let no_identity = match Channel::from_shared(endpoint)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => {
            RankingClient::with_interceptor(channel, with_key("homepage-backend-key-7f3a9c"))
                .rank(rank("m1"))
                .await
                .is_err()
        }
    };
    assert!(
        no_identity,
        "mutual TLS let a client without a certificate in"
    );
    let plaintext = match Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => RankingClient::new(channel).rank(rank("m1")).await.is_err(),
    };
    assert!(plaintext, "a plaintext client was served");

    // The metrics endpoint is behind the same certificate: HTTPS answers, plain HTTP does not.
    let tls_client = recsys_shared::tls::client_config(&certs.path("ca.pem"), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(server.metrics_addr)
        .await
        .unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls_client)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake on the metrics port");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let plain = http_get(server.metrics_addr, "/readyz").await;
    assert!(!plain.contains("200 OK"), "plain HTTP was served: {plain}");
    server.shutdown().await.unwrap();
}
