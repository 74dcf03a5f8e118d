//! The worker against a real Kafka-protocol broker (Tansu) and a real redis-server as the feature
//! store: events are folded in, poison events land in the dead-letter topic with their reason, and
//! the final state equals folding every valid event in from scratch.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use recsys_nearline::apply::{from_scratch, same_state};
use recsys_nearline::event::Event;
use recsys_nearline::kafka::ensure_topics;
use recsys_nearline::produce::{send, Encoding};
use recsys_nearline::worker::{self, WorkerOptions, HEADER_REASON};
use recsys_shared::artifact::synthetic::synthetic_model;
use recsys_shared::artifact::ModelRoot;
use recsys_shared::config::{CacheBackend, Config, StoreBackend};
use recsys_shared::testkit::{free_port, RedisServer, TansuBroker};
use recsys_store::bulk::load_model_features;
use recsys_store::features::{FeatureStore, MemberFeatures};

const ITEMS: usize = 60;
const MEMBERS: usize = 12;

fn events(n: usize, now_ms: i64) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            event_id: format!("e{i}"),
            user_id: format!("m{}", i % MEMBERS),
            item_id: format!("i{}", (i * 7) % ITEMS),
            event_type: ["play", "click", "add_to_list", "rating"][i % 4].into(),
            value: (i % 5) as f64 + 1.0,
            ts: now_ms - 60_000 + i as i64,
            request_id: String::new(),
        })
        .collect()
}

async fn reference_state(
    root: &Path,
    version: &str,
    config: &Config,
    events: &[Event],
) -> HashMap<String, MemberFeatures> {
    let dir = tempfile::tempdir().unwrap();
    let store = from_scratch(
        config,
        root,
        version,
        &dir.path().join("features"),
        events,
        &[],
    )
    .await
    .unwrap();
    let mut state = HashMap::new();
    for m in 0..MEMBERS {
        let id = format!("m{m}");
        state.insert(id.clone(), store.get(&id).await.unwrap());
    }
    state
}

fn assert_same_state(actual: &MemberFeatures, expected: &MemberFeatures, member: &str) {
    assert!(actual.vector.is_some(), "{member}: a vector");
    if let Err(e) = same_state(actual, expected, 1e-4) {
        panic!("{member}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_folded_in_and_poison_goes_to_the_dead_letter_topic() {
    let broker = TansuBroker::start_in_memory();
    let redis = RedisServer::start();
    let models = tempfile::tempdir().unwrap();
    let version = synthetic_model(models.path(), ITEMS, MEMBERS, 8, 11).unwrap();

    let mut config = Config::default();
    config.model.root = models.path().to_path_buf();
    config.kafka.brokers = broker.brokers();
    config.nearline.metrics_listen = format!("127.0.0.1:{}", free_port());
    config.nearline.group_id = "test-workers".into();
    config.store.backend = StoreBackend::Redis;
    config.store.redis.url = redis.url();
    config.cache.backend = CacheBackend::Redis;
    config.cache.redis.url = redis.url();
    config.store.history_cap = 30;

    // The model's training histories are in the store, as `load-store` leaves them.
    let store = FeatureStore::new(
        recsys_store::open(&config.store).await.unwrap(),
        config.store.history_cap,
    );
    load_model_features(&ModelRoot::new(models.path()), None, &store, |_, _| {})
        .await
        .unwrap();

    ensure_topics(&config, &[(config.kafka.events_topic.as_str(), 4)])
        .await
        .unwrap();
    let producer = recsys_nearline::kafka::producer(&config).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let good = events(240, now);
    // Poison in the middle of the stream: garbage bytes, an unknown item, a missing field and a
    // timestamp a day in the future.
    for e in &good[..120] {
        send(&producer, &config.kafka.events_topic, e, Encoding::Protobuf)
            .await
            .unwrap();
    }
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "m1",
            b"\xff\xfe not an event".to_vec(),
            "application/x-protobuf",
        ),
        (
            "m2",
            Event {
                item_id: "no-such-item".into(),
                ..good[2].clone()
            }
            .to_json(),
            "application/json",
        ),
        (
            "m3",
            br#"{"event_id":"x","user_id":"m3","item_id":"i1","event_type":"play"}"#.to_vec(),
            "application/json",
        ),
        (
            "m4",
            Event {
                ts: now + 86_400_000,
                ..good[4].clone()
            }
            .to_protobuf(),
            "application/x-protobuf",
        ),
    ];
    for (key, payload, content_type) in &poison {
        producer
            .send(
                FutureRecord::to(&config.kafka.events_topic)
                    .key(key.as_bytes())
                    .payload(payload)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "content-type",
                        value: Some(*content_type),
                    })),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    for (i, e) in good[120..].iter().enumerate() {
        let encoding = if i % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Protobuf
        };
        send(&producer, &config.kafka.events_topic, e, encoding)
            .await
            .unwrap();
    }

    let total = (good.len() + poison.len()) as u64;
    let run = worker::serve(
        &config,
        WorkerOptions {
            model_root: models.path().to_path_buf(),
            max_events: Some(total),
        },
        std::future::pending(),
    );
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the worker consumed every event within 2 minutes")
        .unwrap();
    assert_eq!(report.events, total);
    assert_eq!(report.applied, good.len() as u64);
    assert_eq!(report.dead_lettered, poison.len() as u64);

    // The dead-letter topic holds the four, with their reasons.
    let mut reasons = dead_letters(&config, poison.len()).await;
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("m1".to_string(), "undecodable".to_string()),
            ("m2".into(), "unknown_item".into()),
            ("m3".into(), "undecodable".into()),
            ("m4".into(), "timestamp_skew".into()),
        ]
    );

    // Every member's state equals folding the training history and all valid events in at once.
    let expected = reference_state(models.path(), &version, &config, &good).await;
    for (member, want) in &expected {
        let got = store.get(member).await.unwrap();
        assert!(got.history.len() > 20, "{member}: training history kept");
        assert_same_state(&got, want, member);
    }
    // And the cache was written through with the same state.
    use recsys_store::cache::{MemberCache, RedisCache, SharedRedisCache};
    let cache = SharedRedisCache(RedisCache::new(&config.cache.redis));
    cache.warm().await;
    let cached = cache.get("m5").await.unwrap().expect("m5 is cached");
    assert_same_state(&cached, &expected["m5"], "m5 (cache)");
}

/// A worker config against `broker` and a Redis store on `redis_url` (no cache).
fn worker_config(models: &Path, broker: &TansuBroker, redis_url: String, group: &str) -> Config {
    let mut config = Config::default();
    config.model.root = models.to_path_buf();
    config.kafka.brokers = broker.brokers();
    config.nearline.metrics_listen = format!("127.0.0.1:{}", free_port());
    config.nearline.group_id = group.into();
    config.store.backend = StoreBackend::Redis;
    config.store.redis.url = redis_url;
    config.cache.backend = CacheBackend::None;
    config
}

/// (key, reason) of the first `n` dead letters.
async fn dead_letters(config: &Config, n: usize) -> Vec<(String, String)> {
    let reader: StreamConsumer = recsys_nearline::kafka::client_config(config)
        .unwrap()
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&config.kafka.dead_letter_topic])
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), reader.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        let reason = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == HEADER_REASON))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).to_string())
            .expect("a reason header");
        out.push((
            String::from_utf8_lossy(m.key().unwrap()).to_string(),
            reason,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_undecodable_stored_state_is_dead_lettered_and_the_partition_moves_on() {
    // The fault: a stored record that could not be decoded failed the batch forever; the
    // partition stopped, the worker was evicted after max.poll.interval, /readyz stayed true.
    let broker = TansuBroker::start_in_memory();
    let redis = RedisServer::start();
    let models = tempfile::tempdir().unwrap();
    synthetic_model(models.path(), ITEMS, MEMBERS, 8, 21).unwrap();
    let config = worker_config(models.path(), &broker, redis.url(), "corrupt-state");
    // m3's stored vector is garbage bytes (another program wrote it, or it was damaged).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("kv:{member_vector:m3}:values")
        .arg("vector")
        .arg(b"\x00\x01 not a framed vector".as_slice())
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("kv:{member_vector:m3}:keys")
        .arg(0)
        .arg("vector")
        .query_async(&mut c)
        .await
        .unwrap();
    let store = FeatureStore::new(recsys_store::open(&config.store).await.unwrap(), 500);
    assert!(store.get("m3").await.is_err(), "m3's state is undecodable");

    ensure_topics(&config, &[(config.kafka.events_topic.as_str(), 2)])
        .await
        .unwrap();
    let producer = recsys_nearline::kafka::producer(&config).unwrap();
    let all = events(96, chrono::Utc::now().timestamp_millis());
    for e in &all {
        send(&producer, &config.kafka.events_topic, e, Encoding::Protobuf)
            .await
            .unwrap();
    }
    let of_m3 = all.iter().filter(|e| e.user_id == "m3").count();
    let run = worker::serve(
        &config,
        WorkerOptions {
            model_root: models.path().to_path_buf(),
            max_events: Some(all.len() as u64),
        },
        std::future::pending(),
    );
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the partition kept moving")
        .unwrap();
    assert_eq!(report.dead_lettered, of_m3 as u64);
    assert_eq!(report.applied, (all.len() - of_m3) as u64);
    let letters = dead_letters(&config, of_m3).await;
    assert!(
        letters
            .iter()
            .all(|(key, reason)| key == "m3" && reason == "corrupt_state"),
        "{letters:?}"
    );
    for m in (0..MEMBERS).filter(|m| *m != 3) {
        let got = store.get(&format!("m{m}")).await.unwrap();
        assert!(got.vector.is_some(), "m{m} was applied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_stalls_visibly_keeps_the_group_membership_and_resumes_where_it_paused() {
    // While the store is down the worker retries with its partitions paused, still polling the
    // consumer, and says so (/readyz 503, recsys_nearline_stalled 1); once the store is back,
    // every event is applied exactly where the batch left off.
    let broker = TansuBroker::start_in_memory();
    let port = free_port();
    let mut redis = RedisServer::start_on(port);
    let models = tempfile::tempdir().unwrap();
    synthetic_model(models.path(), ITEMS, MEMBERS, 8, 22).unwrap();
    let mut config = worker_config(models.path(), &broker, redis.url(), "store-outage");
    config.store.redis.timeout_ms = 200;
    // A short poll interval: a worker that stopped polling while it retried would be evicted.
    for (key, value) in [
        ("max.poll.interval.ms", "6000"),
        ("session.timeout.ms", "6000"),
    ] {
        config.kafka.properties.insert(key.into(), value.into());
    }
    ensure_topics(&config, &[(config.kafka.events_topic.as_str(), 2)])
        .await
        .unwrap();
    let producer = recsys_nearline::kafka::producer(&config).unwrap();
    let all = events(120, chrono::Utc::now().timestamp_millis());
    for e in &all[..60] {
        send(&producer, &config.kafka.events_topic, e, Encoding::Protobuf)
            .await
            .unwrap();
    }
    let metrics_addr = config.nearline.metrics_listen.clone();
    let worker = {
        let config = config.clone();
        let root = models.path().to_path_buf();
        let total = all.len() as u64;
        tokio::spawn(async move {
            worker::serve(
                &config,
                WorkerOptions {
                    model_root: root,
                    max_events: Some(total),
                },
                std::future::pending(),
            )
            .await
        })
    };
    let http = |path: &'static str| {
        let addr = metrics_addr.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return String::new();
            };
            let _ = s
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !http("/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(
            !worker.is_finished(),
            "the worker stopped: {:?}",
            worker.await
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never became ready: {}",
            http("/readyz").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    for e in &all[60..] {
        send(&producer, &config.kafka.events_topic, e, Encoding::Protobuf)
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http("/metrics").await;
        if metrics.contains("recsys_nearline_stalled 1") {
            assert!(http("/readyz").await.starts_with("HTTP/1.1 503"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported stalled:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stalled for longer than max.poll.interval.ms: still a member, because it kept polling.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !worker.is_finished(),
        "the worker gave up or crashed while stalled"
    );
    let _redis = RedisServer::start_on(port);
    let report = tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .expect("the worker finished after the store came back")
        .unwrap()
        .unwrap();
    assert_eq!(report.events, all.len() as u64, "{report:?}");
    assert_eq!(report.applied, all.len() as u64, "{report:?}");
    assert_eq!(
        recsys_nearline::metrics::STALLED.get(),
        0,
        "no longer stalled"
    );
}

/// The fault: a worker started before anything was produced logged "Subscribed topic not
/// available", said it was ready, and applied none of the 60 events produced after it (librdkafka
/// looked for the topic again only every 5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_first_creates_its_topic_is_ready_once_assigned_and_applies_later_events()
{
    let broker = TansuBroker::start_in_memory();
    let redis = RedisServer::start();
    let models = tempfile::tempdir().unwrap();
    synthetic_model(models.path(), ITEMS, MEMBERS, 8, 11).unwrap();
    let config = worker_config(models.path(), &broker, redis.url(), "start-order");
    let readyz = |config: &Config| {
        let addr = config.nearline.metrics_listen.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return None;
            };
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            Some(out.starts_with("HTTP/1.1 200"))
        }
    };
    const N: usize = 60;
    let run = {
        let config = config.clone();
        let model_root = models.path().to_path_buf();
        tokio::spawn(async move {
            worker::serve(
                &config,
                WorkerOptions {
                    model_root,
                    max_events: Some(N as u64),
                },
                std::future::pending(),
            )
            .await
        })
    };
    // Ready only once partitions are assigned; the topic it made has the configured count.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while readyz(&config).await != Some(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        recsys_nearline::kafka::partition_count(&config, &config.kafka.events_topic).unwrap(),
        Some(config.kafka.events_partitions as usize)
    );
    let producer = recsys_nearline::kafka::producer(&config).unwrap();
    for e in events(N, chrono::Utc::now().timestamp_millis()) {
        send(
            &producer,
            &config.kafka.events_topic,
            &e,
            Encoding::Protobuf,
        )
        .await
        .unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("every event produced after the worker started is applied within a minute")
        .unwrap()
        .unwrap();
    assert_eq!(report.applied, N as u64);
}
