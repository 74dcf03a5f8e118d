//! The experiment loop end to end, against a real Tansu broker: two published models split 50/50
//! by an experiments file → 2,000 members load their homepage → the impressions land on
//! `recsys.impressions` → plays carrying the answers' request ids (more of them for variant B)
//! land on `recsys.events` → `recsys nearline archive` writes both topics to Parquet (a second run
//! finds nothing new: exactly once) → `recsys offline experiment-report` shows B's take rate
//! above A's with intervals that do not overlap, and every member in one variant only.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};
use recsys_nearline::event::Event;
use recsys_nearline::produce::{produce_all, Encoding};
use recsys_shared::artifact::synthetic::synthetic_model;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::HomepageRequest;
use recsys_shared::testkit::{serving_config, TansuBroker};

const MEMBERS: usize = 2000;

fn recsys(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_recsys"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recsys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a JSON last line")).unwrap()
}

fn archive(broker: &TansuBroker, kind: &str, output: &Path) -> serde_json::Value {
    recsys(&[
        "nearline",
        "archive",
        "--kind",
        kind,
        "--brokers",
        &broker.brokers(),
        "--output",
        output.to_str().unwrap(),
        "--max-records",
        "5000",
        "--until-idle-seconds",
        "3",
    ])
}

/// One homepage shown: (member, variant, items shown).
type Shown = (String, String, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_rate_per_variant_from_impressions_and_attributed_plays() {
    let broker = TansuBroker::start_in_memory();
    let dir = tempfile::tempdir().unwrap();
    let mut config = serving_config(dir.path(), "features");
    config.online.impressions.enabled = true;
    config.kafka.brokers = broker.brokers();
    recsys_nearline::kafka::ensure_topics(
        &config,
        &[
            (config.kafka.impressions_topic.as_str(), 2),
            (config.kafka.events_topic.as_str(), 2),
        ],
    )
    .await
    .unwrap();
    let v1 = synthetic_model(&config.model.root, 1000, 300, 8, 21).unwrap();
    let v2 = synthetic_model(&config.model.root, 1000, 300, 8, 22).unwrap();
    std::fs::write(
        config.model.root.join("experiments.toml"),
        format!(
            "[[experiment]]\nname = \"homepage-test\"\n\
             [[experiment.variant]]\nname = \"A\"\nweight = 1\nmodel_version = \"{v2}\"\n\
             [[experiment.variant]]\nname = \"B\"\nweight = 1\nmodel_version = \"{v1}\"\n"
        ),
    )
    .unwrap();
    let server = recsys_online::server::start(&config).await.unwrap();
    let addr = format!("http://{}", server.grpc_addr);

    // 2,000 members, four clients at once.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RankingClient::connect(addr).await.unwrap();
            let mut shown: HashMap<String, Shown> = HashMap::new();
            for m in (t..MEMBERS).step_by(4) {
                let user = format!("m{m}");
                let page = c
                    .homepage(HomepageRequest {
                        user_id: user.clone(),
                        rows: 3,
                        items_per_row: 5,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let items = page
                    .rows
                    .iter()
                    .flat_map(|r| r.items.iter().map(|i| i.item_id.clone()))
                    .collect();
                let variant = page.experiments[0].variant.clone();
                shown.insert(page.request_id, (user, variant, items));
            }
            shown
        }));
    }
    let mut shown: HashMap<String, Shown> = HashMap::new();
    for t in tasks {
        shown.extend(t.await.unwrap());
    }
    assert_eq!(shown.len(), MEMBERS);
    let shown_in = |variant: &str| -> u64 {
        shown
            .values()
            .filter(|s| s.1 == variant)
            .map(|s| s.2.len() as u64)
            .sum()
    };

    // Plays of shown items, attributed: B's members take more. Plus plays with no request id and
    // with an id no impression carries (applied as plain events, attributed to nothing).
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = Vec::new();
    let mut attributed = HashMap::<String, u64>::new();
    let mut requests: Vec<&String> = shown.keys().collect();
    requests.sort();
    for request_id in requests {
        let (user, variant, items) = &shown[request_id];
        let p = if variant == "B" { 0.5 } else { 0.25 };
        if !items.is_empty() && rng.random_bool(p) {
            let item = &items[rng.random_range(0..items.len())];
            *attributed.entry(variant.clone()).or_default() += 1;
            events.push(Event {
                event_id: format!("play-{request_id}"),
                user_id: user.clone(),
                item_id: item.clone(),
                event_type: "play".into(),
                value: 0.0,
                ts: now,
                request_id: request_id.clone(),
            });
        }
    }
    for (i, request_id) in ["", "0123456789abcdef0123456789abcdef"].iter().enumerate() {
        events.push(Event {
            event_id: format!("plain-{i}"),
            user_id: "m1".into(),
            item_id: "i1".into(),
            event_type: "play".into(),
            value: 0.0,
            ts: now,
            request_id: request_id.to_string(),
        });
    }
    let producer = recsys_nearline::kafka::producer(&config).unwrap();
    produce_all(
        &producer,
        &config.kafka.events_topic,
        &events,
        Encoding::Protobuf,
        0.0,
        1000,
    )
    .await
    .unwrap();
    // Impressions go out within linger.ms; give the producer's queue time to drain.
    let drained = std::time::Instant::now();
    while server.ranker.impressions().unwrap().queued() > 0 {
        assert!(drained.elapsed().as_secs() < 20, "impressions not sent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Archive both topics; a second run has nothing new.
    let impressions_dir = dir.path().join("archive/impressions");
    let events_dir = dir.path().join("archive/events");
    let first = archive(&broker, "impressions", &impressions_dir);
    assert_eq!(first["records"], MEMBERS as u64, "{first}");
    assert_eq!(first["rows"], shown_in("A") + shown_in("B"), "{first}");
    assert_eq!(first["skipped"], 0);
    let again = archive(&broker, "impressions", &impressions_dir);
    assert_eq!(again["records"], 0, "exactly once: {again}");
    let archived = archive(&broker, "events", &events_dir);
    assert_eq!(archived["records"], events.len() as u64, "{archived}");

    let saved = dir
        .path()
        .join("reports")
        .join("experiment-homepage-test.json");
    let report = recsys(&[
        "offline",
        "experiment-report",
        "--out",
        saved.to_str().unwrap(),
        "--impressions",
        impressions_dir.to_str().unwrap(),
        "--events",
        events_dir.to_str().unwrap(),
        "--experiment",
        "homepage-test",
        "--control",
        "A",
    ]);
    println!("{report:#}");
    assert_eq!(report["members_in_several_variants"], 0, "{report}");
    let variants = report["variants"].as_array().unwrap();
    let of = |name: &str| variants.iter().find(|v| v["variant"] == name).unwrap();
    let (a, b) = (of("A"), of("B"));
    assert_eq!(
        a["members"].as_u64().unwrap() + b["members"].as_u64().unwrap(),
        MEMBERS as u64
    );
    for (v, name) in [(a, "A"), (b, "B")] {
        assert_eq!(v["impressions"], shown_in(name), "{name}: {v}");
        assert_eq!(v["plays"], attributed[name], "{name}: {v}");
    }
    let ci = |v: &serde_json::Value| -> (f64, f64) {
        let c = v["take_rate_ci95"].as_array().unwrap();
        (c[0].as_f64().unwrap(), c[1].as_f64().unwrap())
    };
    assert!(ci(b).0 > ci(a).1, "B's interval lies above A's: {a} vs {b}");
    assert!(b["lift"].as_f64().unwrap() > 0.5, "{b}");
    assert!(b["p_value"].as_f64().unwrap() < 1e-6, "{b}");
    // Saved for the console: the same report, readable as the shared contract.
    let saved: recsys_shared::take_rate::ExperimentReport =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&saved).unwrap(), report);
    server.shutdown().await.unwrap();
}
