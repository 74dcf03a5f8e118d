//! Impressions through a real Tansu broker: every answer's items land on the topic under the
//! member's key with the answer's request id, variant and positions; with the broker killed
//! under load no request fails and the dropped impressions are counted.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use recsys_online::impressions::Impression;
use recsys_online::server::{start, RunningServer};
use recsys_shared::artifact::synthetic::synthetic_model;
use recsys_shared::config::Config;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{HomepageRequest, RankRequest};
use recsys_shared::testkit::{serving_config, TansuBroker};

const TOPIC: &str = "recsys.impressions";

fn config(dir: &Path, brokers: String) -> Config {
    let mut config = serving_config(dir, "features");
    config.online.impressions.enabled = true;
    config.online.impressions.queue_capacity = 100_000;
    config.online.impressions.delivery_timeout_ms = 1500;
    config.kafka.brokers = brokers;
    config
}

async fn create_topic(brokers: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// The sum of the samples starting with `prefix` on the server's metrics page.
fn metric(server: &RunningServer, prefix: &str) -> f64 {
    recsys_shared::ops::scrape(server.metrics_addr.port(), prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_logged_as_impressions_and_a_dead_broker_fails_no_request() {
    let mut broker = TansuBroker::start_in_memory();
    create_topic(&broker.brokers()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), broker.brokers());
    let v1 = synthetic_model(&config.model.root, 800, 100, 8, 3).unwrap();
    let v2 = synthetic_model(&config.model.root, 800, 100, 8, 4).unwrap();
    std::fs::write(
        config.model.root.join("experiments.toml"),
        format!(
            "[[experiment]]\nname = \"m\"\n[[experiment.variant]]\nname = \"a\"\nweight = 1\n\
             [[experiment.variant]]\nname = \"b\"\nweight = 1\nmodel_version = \"{v1}\"\n"
        ),
    )
    .unwrap();
    let server = start(&config).await.unwrap();
    let mut c = RankingClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();

    // Answers, by request id: (member, rpc, model, variant, [(row, position, item)]).
    type Shown = (String, String, String, String, Vec<(u32, u32, String)>);
    let mut answers: HashMap<String, Shown> = HashMap::new();
    for m in 0..60 {
        let user = format!("m{m}");
        let page = c
            .homepage(HomepageRequest {
                user_id: user.clone(),
                rows: 3,
                items_per_row: 4,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let items = page
            .rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                row.items
                    .iter()
                    .enumerate()
                    .map(move |(p, i)| (r as u32, p as u32, i.item_id.clone()))
            })
            .collect();
        let variant = page.experiments[0].variant.clone();
        answers.insert(
            page.request_id,
            (
                user.clone(),
                "homepage".into(),
                page.model_version,
                variant,
                items,
            ),
        );
        let ranked = c
            .rank(RankRequest {
                user_id: user.clone(),
                k: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let items = ranked
            .items
            .iter()
            .enumerate()
            .map(|(p, i)| (0, p as u32, i.item_id.clone()))
            .collect();
        let variant = ranked.experiments[0].variant.clone();
        answers.insert(
            ranked.request_id,
            (user, "rank".into(), ranked.model_version, variant, items),
        );
    }
    assert_eq!(answers.len(), 120, "request ids are unique");

    // Every answer is on the topic, keyed by the member, as it was shown.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "impressions-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < answers.len() {
        assert!(
            Instant::now() < deadline,
            "only {seen} of {} impressions arrived",
            answers.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let impression: Impression = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let (user, rpc, model, variant, items) = answers
            .get(&impression.request_id)
            .unwrap_or_else(|| panic!("an impression of no answer: {impression:?}"));
        assert_eq!(message.key(), Some(user.as_bytes()), "keyed by the member");
        assert_eq!(&impression.user_id, user);
        assert_eq!(&impression.rpc, rpc);
        assert_eq!(&impression.model_version, model);
        assert_eq!(impression.experiments.len(), 1);
        assert_eq!(&impression.experiments[0].variant, variant);
        assert_eq!(
            model == &v1,
            variant == "b",
            "variant b is served by the pinned version"
        );
        let logged: Vec<(u32, u32, String)> = impression
            .items
            .iter()
            .map(|i| (i.row, i.position, i.item_id.clone()))
            .collect();
        assert_eq!(&logged, items, "{rpc}: the items as shown");
        assert!(impression.ts_ms > 1_700_000_000_000);
        seen += 1;
    }
    let _ = v2;

    // The broker dies under load: no request fails; the impressions that cannot go out are
    // dropped and counted (queue full, or not delivered in time).
    broker.kill();
    let started = Instant::now();
    let mut failed = 0;
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let user = format!("m{}", ok % 100);
        match c
            .homepage(HomepageRequest {
                user_id: user,
                ..Default::default()
            })
            .await
        {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    assert_eq!(failed, 0, "a dead broker fails no request ({ok} ok)");
    assert!(ok > 200, "only {ok} requests in 3 s");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dropped = metric(&server, "recsys_impressions_dropped_total");
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped impression was counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&server, "recsys_impressions_sent_total") >= 120.0);
    server.shutdown().await.unwrap();
}
