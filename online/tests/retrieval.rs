//! ANN retrieval through real servers: a version published with its item index, one server
//! scanning exactly and one whose experiment variant asks for `ann`, the same members ranked by
//! both with filters (country, seen items, explicit exclusions); the recall the server samples in
//! the background; SimilarItems and the "because you watched" rows from the similar-items index
//! against a scan; and a version without an index answered exactly, the fallback counted.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use recsys_online::server::{start, RunningServer};
use recsys_shared::artifact::synthetic::synthetic_model_with;
use recsys_shared::artifact::{files, ModelRoot};
use recsys_shared::config::{AnnIndexConfig, Config, ItemFactorsIn, Retrieval};
use recsys_shared::model::Family;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{HomepageRequest, RankRequest, RankResponse, SimilarItemsRequest};
use recsys_shared::testkit::serving_config;
use tonic::transport::Channel;

const ITEMS: usize = 20_000;
const MEMBERS: usize = 200;
const K: usize = 16;

fn config(dir: &Path, store: &str) -> Config {
    serving_config(dir, store)
}

async fn client(server: &RunningServer) -> RankingClient<Channel> {
    RankingClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap()
}

/// The sum of the samples starting with `prefix` on the server's metrics page (the metrics are
/// the process's: every server of this test adds to them).
fn metric(server: &RunningServer, prefix: &str) -> f64 {
    recsys_shared::ops::scrape(server.metrics_addr.port(), prefix)
}

/// A synthetic iALS version published under `dir` with both item indexes (whatever its size),
/// and the configuration of a server that scans it exactly, one request at a time.
fn published_with_indexes(dir: &Path, seed: u64) -> (Config, recsys_shared::artifact::Manifest) {
    let mut config = config(dir, "features-exact");
    let always = AnnIndexConfig {
        min_items: 0,
        ..Default::default()
    };
    let version = synthetic_model_with(
        Family::Ials,
        &config.model.root,
        ITEMS,
        MEMBERS,
        K,
        seed,
        &always,
    )
    .unwrap();
    let manifest = ModelRoot::new(&config.model.root).verify(&version).unwrap();
    config.online.batch.enabled = false;
    (config, manifest)
}

fn request(member: usize) -> RankRequest {
    RankRequest {
        user_id: format!("m{member}"),
        k: 50,
        exclude_seen: Some(true),
        exclude_item_ids: vec![format!("i{}", member * 7)],
        country: "fr".into(),
    }
}

fn ids(response: &RankResponse) -> Vec<String> {
    response.items.iter().map(|i| i.item_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ann_variant_ranks_inside_the_filters_with_exact_scores_and_reports_its_recall() {
    let dir = tempfile::tempdir().unwrap();
    let (exact_config, manifest) = published_with_indexes(dir.path(), 1);
    assert!(
        manifest.files.contains_key(files::ITEM_INDEX),
        "the index is published and checksummed with the version"
    );
    let exact = start(&exact_config).await.unwrap();

    // The second server's default is exact too; its only experiment sends every member to a
    // variant that asks for `ann`, and every ANN answer is checked in the background.
    let mut ann_config = config(dir.path(), "features-ann");
    let experiments = dir.path().join("experiments.toml");
    std::fs::write(
        &experiments,
        "[[experiment]]\nname = \"retrieval\"\n\n[[experiment.variant]]\nname = \"ann\"\n\
         weight = 1\nretrieval = \"ann\"\n",
    )
    .unwrap();
    ann_config.online.experiments_file = Some(experiments);
    ann_config.online.ann.recall_sample_rate = 1.0;
    let ann = start(&ann_config).await.unwrap();
    let (mut e, mut a) = (client(&exact).await, client(&ann).await);

    let answered_by_index = metric(
        &ann,
        "recsys_retrievals_total{fallback=\"\",retrieval=\"ann\"}",
    );
    let (mut hits, mut wanted) = (0usize, 0usize);
    for member in 0..60 {
        let want = e.rank(request(member)).await.unwrap().into_inner();
        let got = a.rank(request(member)).await.unwrap().into_inner();
        assert_eq!(got.experiments[0].variant, "ann");
        assert_eq!(
            got.items.len(),
            50,
            "the filter is applied inside the search"
        );
        let history: HashSet<String> = ann
            .ranker
            .reader()
            .get(&format!("m{member}"))
            .await
            .unwrap()
            .0
            .history
            .iter()
            .map(|h| h.item_id.clone())
            .collect();
        for item in &got.items {
            let j: usize = item.item_id[1..].parse().unwrap();
            assert!(!j.is_multiple_of(10), "{} is US-only", item.item_id);
            assert!(
                !history.contains(&item.item_id),
                "{} was seen",
                item.item_id
            );
            assert_ne!(j, member * 7, "explicitly excluded");
        }
        assert!(got.items.windows(2).all(|w| w[0].score >= w[1].score));
        // Every score is exact: an item both answers hold has the same score in both.
        for item in &got.items {
            if let Some(same) = want.items.iter().find(|w| w.item_id == item.item_id) {
                assert_eq!(same.score, item.score, "{}", item.item_id);
            }
        }
        let exact_ids: HashSet<String> = ids(&want).into_iter().collect();
        hits += ids(&got).iter().filter(|i| exact_ids.contains(*i)).count();
        wanted += exact_ids.len();
    }
    let recall = hits as f64 / wanted as f64;
    eprintln!("recall@50 against the exact server: {recall:.4}");
    assert!(recall >= 0.95, "recall@50 {recall}");
    assert!(
        metric(
            &ann,
            "recsys_retrievals_total{fallback=\"\",retrieval=\"ann\"}"
        ) >= answered_by_index + 60.0
    );

    // The server's own recall samples agree. At most two checks run at once and a request
    // that finds both running is not sampled, and checks run at the lowest priority: on a busy
    // machine few of the requests above were checked, so requests go on while we wait.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut member = 0;
    while metric(&ann, "recsys_ann_recall_at_k_count") < 10.0 {
        assert!(Instant::now() < deadline, "no recall sample was reported");
        a.rank(request(member % 60)).await.unwrap();
        member += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sampled =
        metric(&ann, "recsys_ann_recall_at_k_sum") / metric(&ann, "recsys_ann_recall_at_k_count");
    eprintln!("recall the server sampled: {sampled:.4}");
    assert!(sampled >= 0.95, "sampled recall {sampled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ann_on_a_version_without_an_index_is_answered_exactly_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "features");
    synthetic_model_with(
        Family::Ials,
        &config.model.root,
        2000,
        50,
        K,
        2,
        &AnnIndexConfig::default(),
    )
    .unwrap();
    let mut exact_config = config.clone();
    exact_config.store.embedded.path = dir.path().join("features-exact");
    config.online.retrieval = Retrieval::Ann;
    let server = start(&config).await.unwrap();
    let exact = start(&exact_config).await.unwrap();
    let fallbacks = metric(&server, "recsys_retrievals_total{fallback=\"no_index\"");
    let got = client(&server)
        .await
        .rank(request(3))
        .await
        .unwrap()
        .into_inner();
    let want = client(&exact)
        .await
        .rank(request(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&got), ids(&want));
    assert!(metric(&server, "recsys_retrievals_total{fallback=\"no_index\"") >= fallbacks + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_items_come_from_the_similar_items_index_with_exact_cosines() {
    let dir = tempfile::tempdir().unwrap();
    let (exact_config, manifest) = published_with_indexes(dir.path(), 3);
    assert!(manifest.files.contains_key(files::SIMILAR_INDEX));
    let exact = start(&exact_config).await.unwrap();
    let mut ann_config = config(dir.path(), "features-ann");
    ann_config.online.retrieval = Retrieval::Ann;
    ann_config.online.ann.recall_sample_rate = 1.0;
    let ann = start(&ann_config).await.unwrap();
    let (mut e, mut a) = (client(&exact).await, client(&ann).await);
    let by_index = "recsys_similar_retrievals_total{fallback=\"\",retrieval=\"ann\"}";
    let before = metric(&ann, by_index);
    let (mut hits, mut wanted) = (0usize, 0usize);
    for item in (0..ITEMS).step_by(ITEMS / 40) {
        let request = SimilarItemsRequest {
            item_id: format!("i{item}"),
            k: 20,
        };
        let want = e.similar_items(request.clone()).await.unwrap().into_inner();
        let got = a.similar_items(request).await.unwrap().into_inner();
        assert_eq!(got.items.len(), 20);
        assert!(got.items.iter().all(|i| i.item_id != format!("i{item}")));
        for found in &got.items {
            if let Some(same) = want.items.iter().find(|w| w.item_id == found.item_id) {
                assert!(
                    (same.score - found.score).abs() < 1e-5,
                    "{}: {} vs {}",
                    found.item_id,
                    same.score,
                    found.score
                );
            }
        }
        let exact_ids: HashSet<String> = ids_of(&want.items).into_iter().collect();
        hits += ids_of(&got.items)
            .iter()
            .filter(|i| exact_ids.contains(*i))
            .count();
        wanted += exact_ids.len();
    }
    let recall = hits as f64 / wanted as f64;
    eprintln!("SimilarItems recall@20 against the exact server: {recall:.4}");
    assert!(recall >= 0.95, "recall@20 {recall}");
    assert!(metric(&ann, by_index) >= before + 40.0);

    // The server's own samples of SimilarItems agree (requests go on while we wait: one that
    // finds two checks running is not sampled).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut item = 0;
    while metric(&ann, "recsys_similar_recall_at_k_count") < 5.0 {
        assert!(
            Instant::now() < deadline,
            "no SimilarItems recall sample was reported"
        );
        let request = SimilarItemsRequest {
            item_id: format!("i{}", item % ITEMS),
            k: 20,
        };
        a.similar_items(request).await.unwrap();
        item += ITEMS / 40;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sampled = metric(&ann, "recsys_similar_recall_at_k_sum")
        / metric(&ann, "recsys_similar_recall_at_k_count");
    eprintln!("SimilarItems recall the server sampled: {sampled:.4}");
    assert!(sampled >= 0.95, "sampled recall {sampled}");

    // A homepage's "because you watched" rows search the same index.
    let before = metric(&ann, by_index);
    let page = a
        .homepage(HomepageRequest {
            user_id: "m5".into(),
            rows: 4,
            items_per_row: 10,
            country: "fr".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let because = page
        .rows
        .iter()
        .filter(|r| r.kind == "because_you_watched")
        .count();
    assert!(
        because > 0,
        "{:?}",
        page.rows.iter().map(|r| &r.kind).collect::<Vec<_>>()
    );
    assert!(metric(&ann, by_index) >= before + because as f64);
}

fn ids_of(items: &[recsys_shared::proto::v1::ScoredItem]) -> Vec<String> {
    items.iter().map(|i| i.item_id.clone()).collect()
}

/// The fault: a swapped-out version that a request still held kept every index page its searches
/// had read resident, beside the new version's pages — a hot swap's peak was the old index and
/// the new one, not one of them. (The periodic release drops mapped rows only, never an index's
/// pages, so only the swap's own release can have dropped them.)
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_out_version_leaves_its_index_pages_at_once() {
    use recsys_shared::memory::resident_kib;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, manifest) = published_with_indexes(dir.path(), 5);
    config.online.retrieval = Retrieval::Ann;
    config.online.item_factors = ItemFactorsIn::Mapped;
    // The next version, published elsewhere first so that moving to it takes no time.
    let staging = dir.path().join("staging");
    let always = AnnIndexConfig {
        min_items: 0,
        similar_items: false,
        ..Default::default()
    };
    let next = synthetic_model_with(Family::Ials, &staging, ITEMS, MEMBERS, K, 6, &always).unwrap();
    let root = ModelRoot::new(&config.model.root);
    let old_index = root.version_dir(&manifest.version).join(files::ITEM_INDEX);

    let started = Instant::now();
    let server = start(&config).await.unwrap();
    // A request in flight holds the serving version while its searches read the index.
    let held = server.ranker.catalog().expect("serving");
    assert_eq!(held.version, manifest.version);
    let mut c = client(&server).await;
    for member in 0..50 {
        c.rank(request(member)).await.unwrap();
    }
    assert!(resident_kib(&old_index) > 8, "the searches read the index");

    std::fs::rename(
        ModelRoot::new(&staging).version_dir(&next),
        root.version_dir(&next),
    )
    .unwrap();
    root.set_current(&root.lock().unwrap(), &next).unwrap();
    while server.ranker.catalog().is_none_or(|c| c.version != next) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not swapped in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resident = resident_kib(&old_index);
    assert!(
        resident <= 8,
        "{resident} KiB of the old index resident after the swap"
    );
    drop(held);
    // The version in service holds its whole index, not what searches happened to read.
    wait_until_whole(&root.version_dir(&next).join(files::ITEM_INDEX)).await;
}

/// Waits (up to 30 s) until the whole of `index`'s file is resident in this process.
#[cfg(target_os = "linux")]
async fn wait_until_whole(index: &Path) {
    use recsys_shared::memory::resident_kib;
    let file_kib = std::fs::metadata(index).unwrap().len() / 1024;
    let started = Instant::now();
    while resident_kib(index) < file_kib {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {file_kib} KiB of {} resident",
            resident_kib(index),
            index.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fault: the periodic release of mapped rows ran after the model follower's poll, so while
/// a new version loaded (a minute at ten million items) nothing left — rows the served version's
/// exact cosine scans read stayed resident beside the version being loaded. Here the load blocks
/// on a FIFO in place of one of the next version's files, for as long as the test holds it.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_rows_leave_while_the_next_version_loads() {
    use recsys_shared::artifact::synthetic::synthetic_model;
    use recsys_shared::memory::resident_kib;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "features-mapped");
    config.online.item_factors = ItemFactorsIn::Mapped;
    config.online.batch.enabled = false;
    // No item index at this size: SimilarItems scans every row through the mapping.
    let served = synthetic_model(&config.model.root, ITEMS, MEMBERS, K, 8).unwrap();
    let root = ModelRoot::new(&config.model.root);
    let rows = root.version_dir(&served).join(files::ITEM_FACTORS_RAW);
    let next = synthetic_model(&dir.path().join("staging"), ITEMS, MEMBERS, K, 9).unwrap();
    let server = start(&config).await.unwrap();
    let mut c = client(&server).await;

    // The next version, one of its files a FIFO: loading it blocks on reading that file.
    std::fs::rename(
        ModelRoot::new(dir.path().join("staging")).version_dir(&next),
        root.version_dir(&next),
    )
    .unwrap();
    let fifo = root.version_dir(&next).join(files::ITEM_FACTORS_RAW);
    std::fs::remove_file(&fifo).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // CURRENT by hand: `set_current` would read the FIFO itself.
    std::fs::write(config.model.root.join("CURRENT"), format!("{next}\n")).unwrap();
    // Once the loader has the FIFO open, a writer can open it too; held open and silent, it
    // keeps the load waiting; dropped, the load reads a short file and refuses the version.
    let started = Instant::now();
    let writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(writer) => break writer,
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the server never began loading {next}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // While it loads, an exact scan of the served version reads its rows through the mapping…
    let similar = c
        .similar_items(SimilarItemsRequest {
            item_id: "i3".into(),
            k: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(similar.items.len(), 10);
    let read = resident_kib(&rows);
    assert!(read > 0, "the scan read the rows");
    // …and the periodic release (every 10 s) drops them before the load is over.
    let scanned = Instant::now();
    while resident_kib(&rows) > 0 {
        assert!(
            scanned.elapsed() < Duration::from_secs(25),
            "{} of {read} KiB of the served rows still resident while {next} loads",
            resident_kib(&rows)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.ranker.catalog().map(|c| c.version.clone()),
        Some(served),
        "the load was still waiting"
    );
    // A plain file over the FIFO first, so that no later attempt blocks on it; then the waiting
    // load reads the end of its FIFO and refuses the version.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"not the factors").unwrap();
    std::fs::rename(&plain, &fifo).unwrap();
    drop(writer);
}

/// A server that scans exactly holds none of a version's item index (it searches none), while an
/// ANN server holds the whole of it once the version is in service.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_server_that_searches_the_index_holds_it() {
    use recsys_shared::memory::resident_kib;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, manifest) = published_with_indexes(dir.path(), 7);
    config.online.item_factors = ItemFactorsIn::Mapped;
    let index = ModelRoot::new(&config.model.root)
        .version_dir(&manifest.version)
        .join(files::ITEM_INDEX);

    let exact = start(&config).await.unwrap();
    let mut c = client(&exact).await;
    for member in 0..20 {
        c.rank(request(member)).await.unwrap();
    }
    let held = resident_kib(&index);
    assert!(held <= 8, "{held} KiB of the index held by an exact server");
    drop(c);
    exact.shutdown().await.unwrap();

    config.online.retrieval = Retrieval::Ann;
    let ann = start(&config).await.unwrap();
    wait_until_whole(&index).await;
    ann.shutdown().await.unwrap();
}
