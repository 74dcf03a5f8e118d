//! One conformance suite for every feature-store backend: the key-value contract (ordering,
//! predicates, pagination by bytes, idempotency tokens, deletes) and the member-features layer with
//! each cache in front. Redis runs as a real `redis-server` of the test's own; Cassandra runs when
//! `RECSYS_TEST_CASSANDRA` names a contact point and is reported skipped otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use recsys_shared::config::{
    CacheBackend, CacheConfig, CassandraConfig, ClientAuth, ClientTls, RedisConfig, StoreConfig,
};
use recsys_shared::testkit::{RedisCluster, RedisServer};
use recsys_store::cache::{FeatureReader, Source};
use recsys_store::features::{
    FeatureStore, FeedbackChange, HiddenItem, HistoryEntry, MemberFeatures, MemberProfile,
    MemberVector,
};
use recsys_store::feedback::{ItemFeedback, BLOCKED};
use recsys_store::{
    get_all, CassandraStore, EmbeddedStore, IdempotencyToken, Item, KvStore, Page, PageRequest,
    Predicate, RecordRead, RecordRef, RecordWrite, RedisStore, StoreError, StoreResult,
};

fn token(ms: u64, nonce: u64) -> IdempotencyToken {
    IdempotencyToken {
        generation_ms: ms,
        nonce,
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

async fn keys_of(store: &dyn KvStore, ns: &str, id: &str, p: &Predicate) -> Vec<Vec<u8>> {
    get_all(store, ns, id, p)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect()
}

/// The key-value contract every backend must meet.
async fn kv_conformance(store: Arc<dyn KvStore>) {
    let s = store.as_ref();
    let ns = "conformance";
    let id = unique("member");

    // A record never written reads as empty, not as an error.
    let empty = s
        .get_items(ns, &id, &Predicate::MatchAll, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(empty, Page::default());

    // Items come back in key-byte order whatever order they were written in.
    let items: Vec<Item> = ["c", "a", "b", "a\u{0}", "ab"]
        .iter()
        .map(|k| Item::new(k.as_bytes(), format!("v-{k}").into_bytes()))
        .collect();
    s.put_items(ns, &id, &items, token(10, 1)).await.unwrap();
    assert_eq!(
        keys_of(s, ns, &id, &Predicate::MatchAll).await,
        vec![
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            b"b".to_vec(),
            b"c".to_vec()
        ]
    );

    // Idempotency: a retry with the same token is a no-op even with other bytes; an older token
    // loses; a newer one wins.
    s.put_items(ns, &id, &[Item::new("a", "retry")], token(10, 1))
        .await
        .unwrap();
    s.put_items(ns, &id, &[Item::new("a", "stale")], token(9, 99))
        .await
        .unwrap();
    let a = get_all(s, ns, &id, &Predicate::MatchKeys(vec![b"a".to_vec()]))
        .await
        .unwrap();
    assert_eq!(a, vec![Item::new("a", "v-a")]);
    s.put_items(ns, &id, &[Item::new("a", "newer")], token(10, 2))
        .await
        .unwrap();
    let a = get_all(s, ns, &id, &Predicate::MatchKeys(vec![b"a".to_vec()]))
        .await
        .unwrap();
    assert_eq!(a, vec![Item::new("a", "newer")]);

    // Predicates.
    assert_eq!(
        keys_of(
            s,
            ns,
            &id,
            &Predicate::MatchKeys(vec![b"c".to_vec(), b"zz".to_vec(), b"ab".to_vec()])
        )
        .await,
        vec![b"ab".to_vec(), b"c".to_vec()],
        "match_keys returns present keys, sorted"
    );
    assert_eq!(
        keys_of(
            s,
            ns,
            &id,
            &Predicate::MatchRange {
                start: Some(b"a\0".to_vec()),
                end: Some(b"b".to_vec())
            }
        )
        .await,
        vec![b"a\0".to_vec(), b"ab".to_vec()],
        "start inclusive, end exclusive"
    );
    assert_eq!(
        keys_of(
            s,
            ns,
            &id,
            &Predicate::MatchRange {
                start: Some(b"b".to_vec()),
                end: None
            }
        )
        .await,
        vec![b"b".to_vec(), b"c".to_vec()]
    );

    // Pagination by bytes: 60 items of 10 + 100 bytes, pages of at most 1000 bytes.
    let big = unique("paged");
    let many: Vec<Item> = (0..60)
        .map(|i| Item::new(format!("key-{i:04}"), vec![i as u8; 100]))
        .collect();
    s.put_items(ns, &big, &many, token(1, 1)).await.unwrap();
    for predicate in [
        Predicate::MatchAll,
        Predicate::MatchRange {
            start: Some(b"key-0005".to_vec()),
            end: Some(b"key-0050".to_vec()),
        },
        Predicate::MatchKeys(many.iter().step_by(3).map(|i| i.key.clone()).collect()),
    ] {
        let mut request = PageRequest::first(1000);
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = s.get_items(ns, &big, &predicate, &request).await.unwrap();
            pages += 1;
            let bytes: usize = page.items.iter().map(|i| i.key.len() + i.value.len()).sum();
            assert!(!page.items.is_empty(), "{predicate:?}: empty page {pages}");
            assert!(bytes <= 1000, "{predicate:?}: page of {bytes} bytes");
            seen.extend(page.items);
            match page.next_page_token {
                Some(t) => request.page_token = Some(t),
                None => break,
            }
        }
        let expected: Vec<Item> = many
            .iter()
            .filter(|i| predicate.matches(&i.key))
            .cloned()
            .collect();
        assert_eq!(
            seen, expected,
            "{predicate:?}: pages concatenate to the whole"
        );
        assert!(pages > 1, "{predicate:?}: budget forced several pages");
    }
    // An item bigger than the budget still comes back, alone.
    let one = s
        .get_items(ns, &big, &Predicate::MatchAll, &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    assert!(one.next_page_token.is_some());

    // Deletes with each predicate.
    s.delete_items(ns, &id, &Predicate::MatchKeys(vec![b"c".to_vec()]))
        .await
        .unwrap();
    s.delete_items(
        ns,
        &id,
        &Predicate::MatchRange {
            start: Some(b"a\0".to_vec()),
            end: Some(b"b".to_vec()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        keys_of(s, ns, &id, &Predicate::MatchAll).await,
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    s.delete_items(ns, &id, &Predicate::MatchAll).await.unwrap();
    assert!(keys_of(s, ns, &id, &Predicate::MatchAll).await.is_empty());

    // Bulk writes.
    let records: Vec<(String, Vec<Item>)> = (0..25)
        .map(|i| {
            (
                unique(&format!("bulk{i}")),
                vec![Item::new("x", vec![i as u8])],
            )
        })
        .collect();
    s.put_records(ns, &records, token(5, 5)).await.unwrap();
    for (id, items) in &records {
        assert_eq!(
            &get_all(s, ns, id, &Predicate::MatchAll).await.unwrap(),
            items
        );
    }

    // Batch reads: whole records in the order asked, unknown ones empty, the same as reading each.
    let mut ids: Vec<String> = records.iter().rev().map(|(id, _)| id.clone()).collect();
    ids.insert(3, unique("never-written"));
    ids.push(big.clone());
    let batch = s.get_records(ns, &ids).await.unwrap();
    assert_eq!(batch.len(), ids.len());
    assert!(batch[3].is_empty(), "a record never written reads as empty");
    for (id, items) in ids.iter().zip(&batch) {
        assert_eq!(
            items,
            &get_all(s, ns, id, &Predicate::MatchAll).await.unwrap(),
            "{id}"
        );
    }
    assert_eq!(batch.last().unwrap().len(), many.len());
    assert!(s.get_records(ns, &[]).await.unwrap().is_empty());

    // Bad arguments are typed errors naming the field, whichever operation gets them.
    let (bad, all, first) = (
        "Bad-Namespace",
        &Predicate::MatchAll,
        &PageRequest::default(),
    );
    let item = [Item::new("k", "v")];
    assert_eq!(invalid(s.get_records(bad, &ids).await), "namespace");
    assert_eq!(
        invalid(s.put_items(bad, &id, &item, token(1, 1)).await),
        "namespace"
    );
    assert_eq!(
        invalid(s.get_items(bad, &id, all, first).await),
        "namespace"
    );
    assert_eq!(invalid(s.delete_items(bad, &id, all).await), "namespace");
    assert_eq!(invalid(s.get_items(ns, "", all, first).await), "id");
    assert_eq!(invalid(s.delete_items(ns, "", all).await), "id");
    assert_eq!(invalid(s.get_records(ns, &[String::new()]).await), "id");

    // Batches: more records than one pipeline carries, read back in the order asked, a record
    // never written as empty (on a cluster the records lie on every node).
    let batch: Vec<(String, Vec<Item>)> = (0..300)
        .map(|i| {
            (
                unique(&format!("batch{i}")),
                vec![Item::new("k", format!("v{i}")), Item::new("z", "last")],
            )
        })
        .collect();
    s.put_records(ns, &batch, token(50, 1)).await.unwrap();
    let mut ids: Vec<String> = batch.iter().rev().map(|(id, _)| id.clone()).collect();
    ids.insert(7, unique("never"));
    let read = s.get_records(ns, &ids).await.unwrap();
    assert_eq!(read.len(), ids.len());
    assert!(read[7].is_empty());
    for (id, items) in ids.iter().zip(&read) {
        if let Some((_, written)) = batch.iter().find(|(b, _)| b == id) {
            assert_eq!(items, written, "{id}");
        }
    }
}

/// The field an invalid-argument error names.
fn invalid<T: std::fmt::Debug>(result: StoreResult<T>) -> String {
    match result {
        Err(StoreError::Invalid { field, .. }) => field.to_string(),
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

fn vector(version: &str, values: &[f32]) -> MemberVector {
    MemberVector {
        model_version: version.into(),
        values: values.to_vec(),
    }
}

fn entry(item: &str, ts_ms: i64) -> HistoryEntry {
    HistoryEntry {
        item_id: item.into(),
        ts_ms,
        strength: 1.0,
    }
}

/// The member-features layer, through a reader with a cache (or none) in front.
async fn feature_conformance(reader: FeatureReader) {
    let store = reader.store().clone();
    let user = unique("u");
    let (features, _) = reader.get(&user).await.unwrap();
    assert!(features.is_empty(), "an unknown member reads as empty");

    let user = unique("u");
    store
        .put_vector(&user, &vector("v1", &[1.0, 2.0]), IdempotencyToken::now())
        .await
        .unwrap();
    let history: Vec<HistoryEntry> = (0..(store.history_cap() as i64 + 5))
        .map(|t| entry(&format!("i{t}"), 1_000 + t))
        .collect();
    store
        .append_history(&user, &history, IdempotencyToken::now())
        .await
        .unwrap();
    let (features, source) = reader.get(&user).await.unwrap();
    assert_eq!(source, Source::Store, "first read is a miss");
    assert_eq!(features.vector, Some(vector("v1", &[1.0, 2.0])));
    assert_eq!(
        features.history,
        history[5..].to_vec(),
        "newest history_cap kept, oldest first"
    );
    let trimmed = get_all(
        store.kv().as_ref(),
        "member_history",
        &user,
        &Predicate::MatchAll,
    )
    .await
    .unwrap();
    assert_eq!(
        trimmed.len(),
        store.history_cap(),
        "the store itself is trimmed"
    );

    if reader.cache_name() != "none" {
        // The cache fill happens off the request path; wait for it (up to 5 s: over TLS on a
        // busy 2-core machine the fill has taken more than 0.5 s).
        let mut source = Source::Store;
        for _ in 0..500 {
            source = reader.get(&user).await.unwrap().1;
            if source == Source::Cache {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(source, Source::Cache, "second read is a hit");
        // Write-through replaces the cached entry.
        let fresh = MemberFeatures {
            vector: Some(vector("v2", &[3.0])),
            history: vec![entry("x", 5)],
            hidden: vec![HiddenItem {
                item_id: "z".into(),
                until_ms: 9_000,
            }],
            profile: MemberProfile {
                max_maturity: Some("PG".into()),
            },
        };
        reader.write_through(&user, &fresh).await;
        let (cached, source) = reader.get(&user).await.unwrap();
        assert_eq!((cached.as_ref(), source), (&fresh, Source::Cache));
        reader.invalidate(&user).await;
        assert_eq!(reader.get(&user).await.unwrap().1, Source::Store);
        // A batch write-through puts every member in one go.
        let (a, b) = (unique("wa"), unique("wb"));
        let fb = MemberFeatures {
            vector: None,
            history: vec![entry("y", 6)],
            ..Default::default()
        };
        reader
            .write_through_many(&[(a.as_str(), &fresh), (b.as_str(), &fb)])
            .await;
        let (ca, sa) = reader.get(&a).await.unwrap();
        let (cb, sb) = reader.get(&b).await.unwrap();
        assert_eq!((ca.as_ref(), sa), (&fresh, Source::Cache));
        assert_eq!((cb.as_ref(), sb), (&fb, Source::Cache));
    }

    // A batch read answers each member as a single read does.
    let stranger = unique("u");
    let many = store
        .get_many(&[user.clone(), stranger.clone(), user.clone()])
        .await
        .unwrap();
    assert_eq!(many[0], store.get(&user).await.unwrap());
    assert!(many[1].is_empty());
    assert_eq!(many[2], many[0]);

    // A writer that knows the newest entries trims below them without a read.
    let kept = store.get(&user).await.unwrap().history;
    store.drop_history_before(&user, &kept[2]).await.unwrap();
    assert_eq!(store.get(&user).await.unwrap().history, kept[2..].to_vec());

    // Bulk member writes are idempotent per token and never clobber a newer write.
    let bulk = unique("bulk");
    let load = IdempotencyToken {
        generation_ms: 100,
        nonce: 1,
    };
    let members = vec![(
        bulk.clone(),
        Some(vector("model-a", &[0.5])),
        vec![entry("i1", 1), entry("i2", 2)],
    )];
    store.put_members(&members, load).await.unwrap();
    store.put_members(&members, load).await.unwrap();
    store
        .put_vector(&bulk, &vector("model-a", &[9.0]), token(200, 0))
        .await
        .unwrap();
    store.put_members(&members, load).await.unwrap();
    let read = store.get(&bulk).await.unwrap();
    assert_eq!(read.vector, Some(vector("model-a", &[9.0])));
    assert_eq!(read.history, vec![entry("i1", 1), entry("i2", 2)]);

    // Feedback: item states and hidden items round-trip, deletions remove exactly their keys,
    // and the hidden items reach the member's features.
    let mut shown = ItemFeedback::default();
    shown.add_impression(50, 7, 3);
    shown.add_negative(60);
    let change = FeedbackChange {
        user_id: bulk.clone(),
        states: vec![
            ("i1".into(), shown.clone()),
            ("i3".into(), ItemFeedback::default()),
        ],
        dropped_states: Vec::new(),
        hidden: vec![
            HiddenItem {
                item_id: "i1".into(),
                until_ms: BLOCKED,
            },
            HiddenItem {
                item_id: "i3".into(),
                until_ms: 500,
            },
        ],
        unhidden: Vec::new(),
    };
    store
        .put_feedback(std::slice::from_ref(&change), token(300, 0))
        .await
        .unwrap();
    let states = store
        .get_feedback_many(&[bulk.clone(), unique("nobody")])
        .await
        .unwrap();
    assert_eq!(states[0].get("i1"), Some(&shown));
    assert_eq!(states[0].len(), 2);
    assert!(states[1].is_empty());
    assert_eq!(store.get(&bulk).await.unwrap().hidden, change.hidden);
    let undo = FeedbackChange {
        user_id: bulk.clone(),
        dropped_states: vec!["i3".into()],
        unhidden: vec!["i3".into()],
        ..Default::default()
    };
    store.put_feedback(&[undo], token(400, 0)).await.unwrap();
    let states = store
        .get_feedback_many(std::slice::from_ref(&bulk))
        .await
        .unwrap();
    assert_eq!(states[0].keys().collect::<Vec<_>>(), ["i1"]);
    let read = store.get(&bulk).await.unwrap();
    assert_eq!(read.hidden, change.hidden[..1].to_vec());
    assert_eq!(read.hidden_at(1_000).collect::<Vec<_>>(), ["i1"]);

    // Profiles: written, read with the features, deleted by a `None`.
    let restricted = MemberProfile {
        max_maturity: Some("PG-13".into()),
    };
    store
        .put_profiles(&[(bulk.clone(), restricted.clone())], token(500, 0))
        .await
        .unwrap();
    assert_eq!(store.get(&bulk).await.unwrap().profile, restricted);
    store
        .put_profiles(&[(bulk.clone(), MemberProfile::default())], token(600, 0))
        .await
        .unwrap();
    assert_eq!(
        store.get(&bulk).await.unwrap().profile,
        MemberProfile::default()
    );
    store
        .put_profiles(&[(bulk.clone(), restricted)], token(700, 0))
        .await
        .unwrap();

    store.delete_member(&bulk).await.unwrap();
    assert!(store.get(&bulk).await.unwrap().is_empty());
    assert!(store.get_feedback_many(&[bulk]).await.unwrap()[0].is_empty());
}

fn cache_config(backend: CacheBackend, redis: Option<&RedisServer>) -> CacheConfig {
    CacheConfig {
        backend,
        redis: RedisConfig {
            url: redis.map(|r| r.url()).unwrap_or_default(),
            timeout_ms: 200,
            ..RedisConfig::default()
        },
        ..CacheConfig::default()
    }
}

fn reader(store: Arc<dyn KvStore>, cache: CacheConfig) -> FeatureReader {
    FeatureReader::from_config(
        FeatureStore::new(store, 20),
        &cache,
        &StoreConfig {
            read_timeout_ms: 2000,
            ..StoreConfig::default()
        },
    )
}

async fn redis_store(server: &RedisServer) -> Arc<dyn KvStore> {
    Arc::new(
        RedisStore::connect(&RedisConfig {
            url: server.url(),
            timeout_ms: 2000,
            ..RedisConfig::default()
        })
        .await
        .unwrap(),
    )
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    kv_conformance(store.clone()).await;
    feature_conformance(reader(
        store.clone(),
        cache_config(CacheBackend::None, None),
    ))
    .await;
    feature_conformance(reader(store, cache_config(CacheBackend::InProcess, None))).await;
}

#[tokio::test]
async fn embedded_store_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .put_items("ns", "id", &[Item::new("k", "v")], token(1, 1))
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        get_all(&store, "ns", "id", &Predicate::MatchAll)
            .await
            .unwrap(),
        vec![Item::new("k", "v")]
    );
}

#[tokio::test]
async fn redis_store_conforms() {
    let server = RedisServer::start();
    kv_conformance(redis_store(&server).await).await;
}

fn cluster_config(cluster: &RedisCluster, timeout_ms: u64) -> RedisConfig {
    RedisConfig {
        cluster_nodes: cluster.urls(),
        timeout_ms,
        ..RedisConfig::default()
    }
}

#[tokio::test]
async fn a_redis_cluster_store_and_cache_conform() {
    let cluster = RedisCluster::start(3);
    let store: Arc<dyn KvStore> = Arc::new(
        RedisStore::connect(&cluster_config(&cluster, 2000))
            .await
            .unwrap(),
    );
    kv_conformance(store.clone()).await;
    let cache = CacheConfig {
        backend: CacheBackend::Redis,
        redis: cluster_config(&cluster, 500),
        ..CacheConfig::default()
    };
    feature_conformance(reader(store, cache)).await;
}

#[tokio::test]
async fn a_lost_cluster_master_fails_only_its_own_records_and_they_come_back_with_it() {
    let mut cluster = RedisCluster::start(3);
    let store = RedisStore::connect(&cluster_config(&cluster, 500))
        .await
        .unwrap();
    let ns = "cluster";
    // Members spread over every node.
    let ids: Vec<String> = (0..60).map(|i| unique(&format!("m{i}"))).collect();
    let owner = |id: &str| cluster.node_of(&format!("kv:{{{ns}:{id}}}:keys"));
    let owners: Vec<usize> = ids.iter().map(|id| owner(id)).collect();
    assert!((0..3).all(|n| owners.contains(&n)), "{owners:?}");
    let records: Vec<(String, Vec<Item>)> = ids
        .iter()
        .map(|id| (id.clone(), vec![Item::new("k", id.as_str())]))
        .collect();
    store.put_records(ns, &records, token(1, 1)).await.unwrap();

    cluster.kill(0);
    let lost = ids.iter().zip(&owners).find(|(_, &o)| o == 0).unwrap().0;
    let kept = ids.iter().zip(&owners).find(|(_, &o)| o == 1).unwrap().0;
    let error = store
        .get_items(ns, lost, &Predicate::MatchAll, &PageRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Backend { .. } | StoreError::Timeout { .. }
        ),
        "{error}"
    );
    // The other masters' records are still served and written.
    let page = store
        .get_items(ns, kept, &Predicate::MatchAll, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items, vec![Item::new("k", kept.as_str())]);
    store
        .put_items(ns, kept, &[Item::new("k2", "v")], token(2, 1))
        .await
        .unwrap();

    // Back (empty: the test's nodes keep nothing on disk), it takes writes and reads again.
    cluster.restart(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match store
            .put_items(ns, lost, &[Item::new("k", "again")], token(3, 1))
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let page = store
        .get_items(ns, lost, &Predicate::MatchAll, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items, vec![Item::new("k", "again")]);
}

#[tokio::test]
async fn redis_cached_stores_conform() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    feature_conformance(reader(
        embedded,
        cache_config(CacheBackend::Redis, Some(&server)),
    ))
    .await;
    feature_conformance(reader(
        redis_store(&server).await,
        cache_config(CacheBackend::Redis, Some(&server)),
    ))
    .await;
}

#[tokio::test]
async fn cassandra_store_conforms_when_a_cluster_is_named() {
    let Ok(contact) = std::env::var("RECSYS_TEST_CASSANDRA") else {
        eprintln!(
            "SKIPPED: cassandra_store_conforms_when_a_cluster_is_named \
             (set RECSYS_TEST_CASSANDRA=host:9042 to run it)"
        );
        return;
    };
    let store = CassandraStore::connect(&CassandraConfig {
        contact_points: vec![contact],
        keyspace: "recsys_conformance".into(),
        consistency: "ONE".into(),
        ..CassandraConfig::default()
    })
    .await
    .unwrap();
    let store: Arc<dyn KvStore> = Arc::new(store);
    kv_conformance(store.clone()).await;
    feature_conformance(reader(store, cache_config(CacheBackend::InProcess, None))).await;
}

#[tokio::test]
async fn the_default_batch_operations_conform() {
    // A store that implements only the required methods gets the trait's own `get_records` and
    // `put_records` (what the Cassandra backend uses).
    let dir = tempfile::tempdir().unwrap();
    kv_conformance(TestStore::open(dir.path(), Duration::ZERO)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_member_make_one_store_read() {
    let dir = tempfile::tempdir().unwrap();
    // Each read is slow, so the concurrent misses overlap.
    let counting = TestStore::open(dir.path(), Duration::from_millis(100));
    let reader = Arc::new(reader(
        counting.clone(),
        cache_config(CacheBackend::InProcess, None),
    ));
    reader
        .store()
        .put_vector("hot", &vector("v", &[1.0]), IdempotencyToken::now())
        .await
        .unwrap();
    let requests: Vec<_> = (0..64)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move { reader.get("hot").await.unwrap() })
        })
        .collect();
    for r in requests {
        let (features, _) = r.await.unwrap();
        assert_eq!(features.vector, Some(vector("v", &[1.0])));
    }
    assert_eq!(
        counting.reads.load(Ordering::SeqCst),
        1,
        "64 concurrent misses made one store read"
    );
    // A different member is a different flight.
    reader.get("cold").await.unwrap();
    assert_eq!(counting.reads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dead_cache_falls_back_to_the_store_and_opens_the_breaker() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let reader = reader(store, cache_config(CacheBackend::Redis, Some(&server)));
    reader
        .store()
        .put_vector("m", &vector("v", &[2.0]), IdempotencyToken::now())
        .await
        .unwrap();
    server.kill();
    for _ in 0..20 {
        let (features, source) = reader.get("m").await.unwrap();
        assert_eq!(source, Source::Store);
        assert_eq!(features.vector, Some(vector("v", &[2.0])));
    }
    assert!(
        reader.breaker_open(),
        "consecutive failures open the breaker"
    );
}

/// An embedded store that counts reads of member vectors, makes each read take `delay`, and
/// hangs every read while `hung` is set (Redis stopped with SIGSTOP, a partitioned Cassandra
/// node): they never answer, the reader's deadline has to end them. It implements only the
/// required methods, so it also exercises the trait's default batch operations.
struct TestStore {
    inner: EmbeddedStore,
    delay: Duration,
    hung: std::sync::atomic::AtomicBool,
    reads: AtomicUsize,
}

impl TestStore {
    fn open(dir: &std::path::Path, delay: Duration) -> Arc<Self> {
        Arc::new(TestStore {
            inner: EmbeddedStore::open(dir).unwrap(),
            delay,
            hung: std::sync::atomic::AtomicBool::new(false),
            reads: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl KvStore for TestStore {
    fn backend(&self) -> &'static str {
        "test"
    }
    async fn write_items(&self, write: RecordWrite<'_>) -> StoreResult<()> {
        self.inner.write_items(write).await
    }
    async fn read_items(&self, read: RecordRead<'_>) -> StoreResult<Page> {
        if read.namespace == "member_vector" {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
        }
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.read_items(read).await
    }
    async fn remove_items(&self, record: RecordRef<'_>, predicate: &Predicate) -> StoreResult<()> {
        self.inner.remove_items(record, predicate).await
    }
}

fn hanging_reader(store: Arc<TestStore>, breaker_failures: u32) -> FeatureReader {
    FeatureReader::from_config(
        FeatureStore::new(store, 20),
        &cache_config(CacheBackend::None, None),
        &StoreConfig {
            read_timeout_ms: 100,
            breaker_failures,
            breaker_open_ms: 60_000,
            ..StoreConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_give_up_on_a_hung_store_leave_no_flight_behind() {
    // The fault: with the store hung, thousands of requests for random members gave up at 50 ms;
    // each left a flight that only progressed while someone polled it, so the table (and RSS)
    // only grew, and a request seconds later joined a stale flight instead of reading afresh.
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(dir.path(), Duration::ZERO);
    let reader = hanging_reader(store.clone(), u32::MAX);
    store.hung.store(true, Ordering::SeqCst);
    let requests: Vec<_> = (0..2000)
        .map(|i| {
            let reader = reader.clone();
            tokio::spawn(async move {
                let r =
                    tokio::time::timeout(Duration::from_millis(20), reader.get(&format!("m{i}")))
                        .await;
                // On a loaded machine a task may first run again after its flight's own 100 ms
                // deadline: then the read failed before the client gave up. Never an answer.
                match r {
                    Err(_) => true,
                    Ok(answer) => {
                        assert!(answer.is_err(), "a hung store answered");
                        false
                    }
                }
            })
        })
        .collect();
    let mut gave_up = 0;
    for r in requests {
        gave_up += usize::from(r.await.unwrap());
    }
    assert!(
        gave_up > 0,
        "no client gave up: the test did not cancel anything"
    );
    // Every flight runs to its own 100 ms deadline without a waiter, then leaves the table.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (reader.flights_running() > 0 || reader.flights_joinable() > 0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        reader.flights_running(),
        0,
        "every abandoned flight finished"
    );
    assert_eq!(reader.flights_joinable(), 0, "and left the flight table");
    // The store recovers and a member is written: the next request reads afresh.
    store.hung.store(false, Ordering::SeqCst);
    reader
        .store()
        .put_vector("m7", &vector("v2", &[7.0]), IdempotencyToken::now())
        .await
        .unwrap();
    let (features, source) = reader.get("m7").await.unwrap();
    assert_eq!(source, Source::Store);
    assert_eq!(
        features.vector,
        Some(vector("v2", &[7.0])),
        "a fresh read, not a stale flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_opens_its_breaker_and_requests_fail_without_reading_it() {
    // The fault: with the store down, every request waited the full read timeout (and logged).
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(dir.path(), Duration::ZERO);
    let reader = hanging_reader(store.clone(), 3);
    store.hung.store(true, Ordering::SeqCst);
    for i in 0..20 {
        let e = reader.get(&format!("m{i}")).await.unwrap_err();
        if i >= 3 {
            assert!(
                matches!(*e, StoreError::BreakerOpen { .. }),
                "request {i}: {e}"
            );
        }
    }
    assert!(reader.store_breaker_open());
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        3,
        "only the reads before the breaker opened reached the store"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_members_does_not_evict_known_ones() {
    // The fault: every made-up id was cached (as an empty member) and evicted real members.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let reader = FeatureReader::from_config(
        FeatureStore::new(store, 20),
        &CacheConfig {
            capacity: 1600,
            ..cache_config(CacheBackend::InProcess, None)
        },
        &StoreConfig::default(),
    );
    for i in 0..100 {
        reader
            .store()
            .put_vector(
                &format!("known{i}"),
                &vector("v", &[i as f32]),
                IdempotencyToken::now(),
            )
            .await
            .unwrap();
        reader.get(&format!("known{i}")).await.unwrap();
    }
    for i in 0..20_000 {
        let (features, _) = reader.get(&format!("random-{i}")).await.unwrap();
        assert!(features.is_empty());
    }
    for i in 0..100 {
        let (features, source) = reader.get(&format!("known{i}")).await.unwrap();
        assert_eq!(source, Source::Cache, "known{i} is still cached");
        assert_eq!(features.vector, Some(vector("v", &[i as f32])));
    }
}

#[tokio::test]
async fn redis_over_tls_with_an_acl_user_conforms_and_bad_credentials_name_no_secret() {
    use recsys_shared::testkit::{TestCertificates, TlsRedisServer};
    let certs = TestCertificates::generate();
    let server = TlsRedisServer::start(&certs);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{}\n", TlsRedisServer::PASSWORD)).unwrap();
    let config = RedisConfig {
        url: server.url(),
        timeout_ms: 2000,
        auth: ClientAuth {
            username: Some(TlsRedisServer::USER.into()),
            password_file: Some(password_file),
            password_env: None,
        },
        tls: ClientTls {
            ca_file: Some(certs.path("ca.pem")),
            ..ClientTls::default()
        },
        cluster_nodes: Vec::new(),
    };
    let store: Arc<dyn KvStore> = Arc::new(RedisStore::connect(&config).await.unwrap());
    kv_conformance(store.clone()).await;
    // The cache over the same TLS connection settings.
    feature_conformance(reader(
        store,
        CacheConfig {
            backend: CacheBackend::Redis,
            redis: config.clone(),
            ..CacheConfig::default()
        },
    ))
    .await;

    // A wrong password is refused; the error names the URL but never a password.
    let wrong = RedisConfig {
        url: format!("rediss://recsys:inline-secret@localhost:{}/", server.port),
        auth: ClientAuth::default(),
        ..config.clone()
    };
    let e = RedisStore::connect(&wrong).await.unwrap_err().to_string();
    assert!(!e.contains("inline-secret"), "{e}");
    assert!(e.contains("localhost"), "{e}");
    // Without the CA the server's certificate is not trusted; without TLS nothing answers.
    let untrusted = RedisConfig {
        tls: ClientTls::default(),
        ..config.clone()
    };
    assert!(RedisStore::connect(&untrusted).await.is_err());
    let plain = RedisConfig {
        url: format!("redis://localhost:{}/", server.port),
        ..config
    };
    assert!(RedisStore::connect(&plain).await.is_err());
}
