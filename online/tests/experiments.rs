//! Experiments through real servers: a 50/50 split between two published model versions with a
//! row recipe, the same member in the same variant on two servers, request ids, overrides, the
//! metrics by variant, and bad experiments files refused while the last good one keeps serving.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use recsys_online::server::{start, RunningServer};
use recsys_shared::artifact::synthetic::{synthetic_model, synthetic_model_of};
use recsys_shared::artifact::{files, read_history, ModelRoot};
use recsys_shared::config::Config;
use recsys_shared::model::Family;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{HomepageRequest, HomepageResponse, RankRequest, VectorSource};
use recsys_shared::testkit::serving_config;

const ITEMS: usize = 1500;
const MEMBERS: usize = 200;
const K: usize = 16;

fn config(dir: &Path, store: &str) -> Config {
    serving_config(dir, store)
}

async fn homepage(server: &RunningServer, user: &str) -> HomepageResponse {
    let mut c = RankingClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    c.homepage(HomepageRequest {
        user_id: user.into(),
        rows: 4,
        items_per_row: 5,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn variant_of(response: &HomepageResponse, experiment: &str) -> Option<String> {
    response
        .experiments
        .iter()
        .find(|a| a.experiment == experiment)
        .map(|a| a.variant.clone())
}

/// The sum of the samples starting with `prefix` on the server's metrics page.
fn metric(server: &RunningServer, prefix: &str) -> f64 {
    recsys_shared::ops::scrape(server.metrics_addr.port(), prefix)
}

/// Waits until `done` holds (the servers poll the file every 50 ms).
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn experiment_file(v1: &str, extra: &str) -> String {
    format!(
        r#"
[[experiment]]
name = "model-test"
salt = "salt-1"
overrides = {{ "qa-member" = "treatment" }}
{extra}

[[experiment.variant]]
name = "control"
weight = 1

[[experiment.variant]]
name = "treatment"
weight = 1
model_version = "{v1}"
rows = ["trending", "top_picks", "because_you_watched*2"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_between_two_models_is_sticky_across_servers_and_survives_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = config(dir.path(), "features-a");
    let v1 = synthetic_model(&first.model.root, ITEMS, MEMBERS, K, 11).unwrap();
    let v2 = synthetic_model(&first.model.root, ITEMS, MEMBERS, K, 12).unwrap();
    assert_ne!(v1, v2);
    // The file ships in the model root (the default place).
    let file = first.model.root.join("experiments.toml");
    std::fs::write(&file, experiment_file(&v1, "")).unwrap();
    let a = start(&first).await.unwrap();
    // A second server elsewhere, its own store, the file named in its config.
    let mut second = config(dir.path(), "features-b");
    second.online.experiments_file = Some(file.clone());
    let b = start(&second).await.unwrap();
    for server in [&a, &b] {
        until("the experiments in force", async || {
            server.ranker.experiments().experiments.experiments.len() == 1
        })
        .await;
    }

    let mut request_ids = HashSet::new();
    let mut variants = HashMap::new();
    for m in 0..MEMBERS {
        let user = format!("m{m}");
        let (ra, rb) = (homepage(&a, &user).await, homepage(&b, &user).await);
        let variant = variant_of(&ra, "model-test").expect("traffic 1.0 takes every member");
        assert_eq!(
            variant_of(&rb, "model-test").as_deref(),
            Some(variant.as_str()),
            "{user}: the same variant on both servers"
        );
        for r in [&ra, &rb] {
            assert_eq!(r.request_id.len(), 32, "{}", r.request_id);
            assert!(r.request_id.bytes().all(|c| c.is_ascii_hexdigit()));
            assert!(
                request_ids.insert(r.request_id.clone()),
                "request ids are fresh"
            );
            let kinds: Vec<&str> = r.rows.iter().map(|row| row.kind.as_str()).collect();
            if variant == "treatment" {
                assert_eq!(r.model_version, v1, "{user}: treatment is served by v1");
                // The stored vectors are CURRENT's (v2): under v1 the member is folded in.
                assert_eq!(r.vector_source, VectorSource::FoldIn as i32);
                assert_eq!(
                    kinds.first(),
                    Some(&"trending"),
                    "{user}: the recipe's order"
                );
                assert_eq!(kinds.get(1), Some(&"top_picks"), "{user}: {kinds:?}");
            } else {
                assert_eq!(r.model_version, v2, "{user}: control is served by CURRENT");
                assert_eq!(kinds.first(), Some(&"top_picks"), "{user}: default rows");
                assert_eq!(kinds.last(), Some(&"trending"), "{user}: default rows");
            }
            let items: Vec<&str> = r
                .rows
                .iter()
                .flat_map(|row| row.items.iter().map(|i| i.item_id.as_str()))
                .collect();
            let distinct: HashSet<&&str> = items.iter().collect();
            assert_eq!(distinct.len(), items.len(), "no title twice on a page");
        }
        variants.insert(user, variant);
    }
    let treated = variants.values().filter(|v| *v == "treatment").count();
    assert!(
        (70..=130).contains(&treated),
        "{treated} of {MEMBERS} in treatment"
    );
    // Rank reports the same assignment.
    let mut c = RankingClient::connect(format!("http://{}", a.grpc_addr))
        .await
        .unwrap();
    let ranked = c
        .rank(RankRequest {
            user_id: "m3".into(),
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ranked.experiments.len(), 1);
    assert_eq!(ranked.experiments[0].variant, variants["m3"]);
    // QA override.
    let qa = homepage(&a, "qa-member").await;
    assert_eq!(variant_of(&qa, "model-test").as_deref(), Some("treatment"));
    assert_eq!(qa.model_version, v1);
    // Metrics by variant.
    let served = |variant: &str| {
        metric(
            &a,
            &format!(
                "recsys_experiment_requests_total{{experiment=\"model-test\",variant=\"{variant}\"}}"
            ),
        )
    };
    assert!(served("treatment") >= treated as f64);
    assert!(served("control") >= (MEMBERS - treated) as f64);

    // Bad files: refused with the last good set kept in force.
    const REFUSED: &str = "recsys_experiments_reloads_total{outcome=\"refused\"}";
    let refused_before = metric(&a, REFUSED);
    let mut not_utf8 = experiment_file(&v1, "").into_bytes();
    not_utf8.extend_from_slice(b"# \xff\xfe\n");
    let bad_files = [
        experiment_file(&v1, "")
            .replace("weight = 1", "weight = 0")
            .into_bytes(),
        experiment_file("no-such-version", "").into_bytes(),
        experiment_file(&v1, "")
            .replace("\"trending\"", "\"recently_added\"")
            .into_bytes(),
        format!("{}{}", experiment_file(&v1, ""), experiment_file(&v1, "")).into_bytes(),
        not_utf8,
    ];
    for (n, text) in bad_files.iter().enumerate() {
        std::fs::write(&file, text).unwrap();
        until("the bad file to be refused", async || {
            metric(&a, REFUSED) >= refused_before + n as f64 + 1.0
        })
        .await;
        let again = homepage(&a, "m3").await;
        assert_eq!(
            variant_of(&again, "model-test").as_deref(),
            Some(variants["m3"].as_str()),
            "bad file {n}: the last good experiments still serve"
        );
    }

    // A new good file: a holdout with no traffic moves everyone out; removing the file ends it.
    std::fs::write(&file, experiment_file(&v1, "traffic = 0.0")).unwrap();
    until("the new file", async || {
        homepage(&a, "m3").await.experiments.is_empty()
    })
    .await;
    assert_eq!(
        variant_of(&homepage(&a, "qa-member").await, "model-test").as_deref(),
        Some("treatment"),
        "overrides apply whatever the traffic"
    );
    std::fs::remove_file(&file).unwrap();
    until("the experiments to end", async || {
        homepage(&a, "qa-member").await.experiments.is_empty()
    })
    .await;
    assert_eq!(homepage(&a, "qa-member").await.model_version, v2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_may_pin_a_version_of_another_family() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "features");
    let root = &config.model.root;
    let ease = synthetic_model_of(Family::Ease, root, ITEMS, MEMBERS, 30, 31).unwrap();
    // Published last: CURRENT, whose member vectors and histories the server loads.
    let ials = synthetic_model(root, ITEMS, MEMBERS, K, 32).unwrap();
    std::fs::write(
        root.join("experiments.toml"),
        experiment_file(&ease, "").replace(
            "rows = [\"trending\", \"top_picks\", \"because_you_watched*2\"]",
            "",
        ),
    )
    .unwrap();
    let server = start(&config).await.unwrap();
    until("the experiments in force", async || {
        server.ranker.experiments().experiments.experiments.len() == 1
    })
    .await;
    let mut c = RankingClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let histories = read_history(
        &ModelRoot::new(root)
            .version_dir(&ials)
            .join(files::USER_HISTORY),
    )
    .unwrap();
    let mut served = HashMap::new();
    for m in 0..40 {
        let user = format!("m{m}");
        let page = homepage(&server, &user).await;
        let variant = variant_of(&page, "model-test").unwrap();
        let ranked = c
            .rank(RankRequest {
                user_id: user.clone(),
                k: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let history: HashSet<&String> = histories
            .iter()
            .filter(|row| row.user_id == user)
            .map(|row| &row.item_id)
            .collect();
        assert_eq!(ranked.items.len(), 10, "{user}");
        assert!(
            ranked.items.iter().all(|i| !history.contains(&i.item_id)),
            "{user}: a seen item ranked"
        );
        let expected = if variant == "treatment" { &ease } else { &ials };
        assert_eq!(&ranked.model_version, expected, "{user} in {variant}");
        assert_eq!(&page.model_version, expected, "{user} in {variant}");
        assert_eq!(page.rows[0].kind, "top_picks", "{user} in {variant}");
        if variant == "treatment" {
            // The EASE variant scores the history as read (the homepage's read left it in the
            // cache): no vector, no fold-in.
            assert_eq!(ranked.vector_source, VectorSource::Cache as i32, "{user}");
        }
        *served.entry(variant).or_insert(0) += 1;
    }
    assert!(served.len() == 2, "both variants served: {served:?}");
}
