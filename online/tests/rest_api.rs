//! The REST/JSON API against a real server: the same answers as gRPC for the same requests, bad
//! requests refused with the field named and the gRPC status's HTTP equivalent, API keys with
//! per-key RPCs, metrics labelled by transport, and the OpenAPI document checked against the
//! messages the handlers take and give.

use std::collections::BTreeSet;
use std::path::Path;

use recsys_online::server::{start, RunningServer};
use recsys_shared::artifact::synthetic::synthetic_model;
use recsys_shared::config::{ApiKeyConfig, Config};
use recsys_shared::event::Event;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{
    ExperimentAssignment, HomepageRequest, HomepageResponse, RankRequest, RankResponse, Row,
    ScoredItem, SimilarItemsRequest, SimilarItemsResponse,
};
use recsys_shared::testkit::serving_config;
use serde_json::{json, Value};

fn config(dir: &Path) -> Config {
    let mut config = serving_config(dir, "features");
    config.online.rest_listen = Some("127.0.0.1:0".into());
    config
}

/// One HTTP/1.1 exchange with `addr`: the status and the body.
async fn exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// One exchange with the server's REST API: the status and the body as JSON (`Null` when it is
/// not JSON).
async fn http(
    server: &RunningServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let addr = server.rest_addr.expect("the REST API is on");
    let (status, body) = exchange(addr, method, path, headers, body).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn post(server: &RunningServer, path: &str, body: Value) -> (u16, Value) {
    http(server, "POST", path, &[], &body.to_string()).await
}

/// A REST answer as the gRPC message (scores compared as the f32 they are), without what differs
/// between two calls (the request id).
fn from_rest<T: serde::de::DeserializeOwned>(mut v: Value) -> T {
    if let Some(id) = v.get_mut("request_id") {
        *id = json!("");
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_what_grpc_answers_and_refuses_what_grpc_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    synthetic_model(&config.model.root, 500, 60, 8, 3).unwrap();
    let server = start(&config).await.unwrap();
    let mut grpc = RankingClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();

    // The same request, the same answer (once the member's features are cached, so both read
    // them from the same place).
    grpc.rank(RankRequest {
        user_id: "m1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let request = RankRequest {
        user_id: "m1".into(),
        k: 15,
        exclude_item_ids: vec!["i3".into()],
        ..Default::default()
    };
    let by_grpc = grpc.rank(request.clone()).await.unwrap().into_inner();
    let (status, by_rest) =
        post(&server, "/v1/rank", serde_json::to_value(&request).unwrap()).await;
    assert_eq!(status, 200, "{by_rest}");
    assert_eq!(by_rest["items"].as_array().unwrap().len(), 15);
    assert_eq!(by_rest["vector_source"], "cache", "sources by name");
    assert_eq!(by_rest["request_id"].as_str().unwrap().len(), 32);
    assert_eq!(
        from_rest::<RankResponse>(by_rest),
        RankResponse {
            request_id: String::new(),
            ..by_grpc
        }
    );
    // Absent fields take their defaults, as in protobuf.
    let (status, short) = post(&server, "/v1/rank", json!({"user_id": "m1"})).await;
    assert_eq!(status, 200);
    let defaults = grpc
        .rank(RankRequest {
            user_id: "m1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        from_rest::<RankResponse>(short),
        RankResponse {
            request_id: String::new(),
            ..defaults
        }
    );

    let homepage = HomepageRequest {
        user_id: "m1".into(),
        rows: 3,
        items_per_row: 5,
        ..Default::default()
    };
    let by_grpc = grpc.homepage(homepage.clone()).await.unwrap().into_inner();
    let (status, by_rest) = post(
        &server,
        "/v1/homepage",
        serde_json::to_value(&homepage).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{by_rest}");
    assert_eq!(
        from_rest::<HomepageResponse>(by_rest),
        HomepageResponse {
            request_id: String::new(),
            ..by_grpc
        }
    );

    let similar = SimilarItemsRequest {
        item_id: "i7".into(),
        k: 6,
    };
    let by_grpc = grpc
        .similar_items(similar.clone())
        .await
        .unwrap()
        .into_inner();
    let (status, by_rest) = post(
        &server,
        "/v1/similar-items",
        serde_json::to_value(&similar).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        from_rest::<SimilarItemsResponse>(by_rest).items,
        by_grpc.items
    );

    // Refused, the field named, the HTTP status of the gRPC code.
    let cases = [
        ("/v1/rank", json!({"user_id": "m1", "k": 100000}), 400, "k"),
        ("/v1/rank", json!({"user_id": ""}), 400, "user_id"),
        ("/v1/rank", json!({"user_id": "m1", "kk": 3}), 400, "body"),
        ("/v1/rank", json!({"user_id": 7}), 400, "body"),
        (
            "/v1/homepage",
            json!({"user_id": "m1", "rows": 1000}),
            400,
            "rows",
        ),
        (
            "/v1/similar-items",
            json!({"item_id": "no-such-item"}),
            404,
            "item_id",
        ),
    ];
    for (path, body, want, field) in cases {
        let (status, error) = post(&server, path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {error}");
        assert_eq!(error["error"]["field"], field, "{path} {body}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(field));
    }
    let (status, error) = post(&server, "/v1/rank", json!({"user_id": "m1", "kk": 3})).await;
    assert_eq!(
        (status, &error["error"]["status"]),
        (400, &json!("INVALID_ARGUMENT"))
    );
    assert!(
        error["error"]["message"].as_str().unwrap().contains("kk"),
        "{error}"
    );
    let (status, error) = http(&server, "POST", "/v1/rank", &[], "{not json").await;
    assert_eq!((status, &error["error"]["field"]), (400, &json!("body")));
    let (status, error) = http(
        &server,
        "POST",
        "/v1/rank",
        &[("x-timeout-ms", "soon")],
        r#"{"user_id": "m1"}"#,
    )
    .await;
    assert_eq!(
        (status, &error["error"]["field"]),
        (400, &json!("x-timeout-ms"))
    );

    // Counted like gRPC, by transport.
    let (_, metrics) = exchange(server.metrics_addr, "GET", "/metrics", &[], "").await;
    for line in [
        "recsys_rpc_requests_total{code=\"Ok\",rpc=\"Rank\",transport=\"rest\"}",
        "recsys_rpc_requests_total{code=\"Ok\",rpc=\"Rank\",transport=\"grpc\"}",
        "recsys_rpc_requests_total{code=\"InvalidArgument\",rpc=\"Rank\",transport=\"rest\"}",
        "recsys_rpc_requests_total{code=\"NotFound\",rpc=\"SimilarItems\",transport=\"rest\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_takes_the_same_keys_as_grpc_with_the_same_grants() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let write = |name: &str, key: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{key}\n")).unwrap();
        Some(path)
    };
    config.online.auth.enabled = true;
    config.online.auth.keys = vec![
        ApiKeyConfig {
            name: "homepage-backend".into(),
            key_file: write("backend.key", "backend-key-31f2"),
            key_env: None,
            rpcs: vec![],
        },
        ApiKeyConfig {
            name: "similar-only".into(),
            key_file: write("similar.key", "similar-key-99a0"),
            key_env: None,
            rpcs: vec!["SimilarItems".into()],
        },
    ];
    synthetic_model(&config.model.root, 100, 10, 4, 13).unwrap();
    let server = start(&config).await.unwrap();
    let body = r#"{"user_id": "m1"}"#;
    let (status, error) = http(&server, "POST", "/v1/rank", &[], body).await;
    assert_eq!(
        (status, &error["error"]["status"]),
        (401, &json!("UNAUTHENTICATED"))
    );
    let (status, _) = http(&server, "POST", "/v1/rank", &[("x-api-key", "guess")], body).await;
    assert_eq!(status, 401);
    let (status, error) = http(
        &server,
        "POST",
        "/v1/rank",
        &[("authorization", "Bearer similar-key-99a0")],
        body,
    )
    .await;
    assert_eq!(
        (status, &error["error"]["status"]),
        (403, &json!("PERMISSION_DENIED"))
    );
    let (status, _) = http(
        &server,
        "POST",
        "/v1/similar-items",
        &[("authorization", "Bearer similar-key-99a0")],
        r#"{"item_id": "i1"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer) = http(
        &server,
        "POST",
        "/v1/rank",
        &[("authorization", "Bearer backend-key-31f2")],
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // The document is public, as gRPC reflection describes the service.
    let (status, _) = http(&server, "GET", "/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

/// The properties of `schema` in the document.
fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"))
        .keys()
        .cloned()
        .collect()
}

/// The fields of a message's JSON form (its default, serialized).
fn fields<T: serde::Serialize + Default>() -> BTreeSet<String> {
    keys(T::default())
}

/// The fields of `value`'s JSON form.
fn keys(value: impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(value)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_routes_and_messages_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    synthetic_model(&config.model.root, 100, 10, 4, 13).unwrap();
    let server = start(&config).await.unwrap();
    let (status, doc) = http(&server, "GET", "/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(recsys_online::rest::OPENAPI).unwrap()
    );

    // Every documented path is served (an unknown one is 404), with its operation's method.
    let paths: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.clone(), method.to_uppercase()))
        })
        .collect();
    assert_eq!(paths.len(), 5);
    for (path, method) in &paths {
        let body = if method == "POST" { "{}" } else { "" };
        let (status, _) = http(&server, method, path, &[], body).await;
        assert_ne!(status, 404, "{method} {path} is documented but not served");
        assert_ne!(status, 405, "{method} {path}: method not allowed");
    }
    let (status, _) = http(&server, "POST", "/v1/no-such-rpc", &[], "{}").await;
    assert_eq!(status, 404);

    // Every schema has exactly the fields of its message.
    let messages = [
        ("RankRequest", fields::<RankRequest>()),
        ("RankResponse", fields::<RankResponse>()),
        ("HomepageRequest", fields::<HomepageRequest>()),
        ("HomepageResponse", fields::<HomepageResponse>()),
        ("SimilarItemsRequest", fields::<SimilarItemsRequest>()),
        ("SimilarItemsResponse", fields::<SimilarItemsResponse>()),
        ("ScoredItem", fields::<ScoredItem>()),
        ("Row", fields::<Row>()),
        ("ExperimentAssignment", fields::<ExperimentAssignment>()),
        ("Event", event_fields()),
        (
            "EventAccepted",
            ["event_id", "topic", "partition", "offset"]
                .map(String::from)
                .into(),
        ),
    ];
    for (schema, fields) in messages {
        assert_eq!(properties(&doc, schema), fields, "schema {schema}");
    }
    // Each operation takes and gives the schemas of its RPC's messages.
    for (path, rpc) in [
        ("/v1/rank", "Rank"),
        ("/v1/homepage", "Homepage"),
        ("/v1/similar-items", "SimilarItems"),
    ] {
        let op = &doc["paths"][path]["post"];
        assert_eq!(op["operationId"], rpc);
        let schema = |v: &Value| v["content"]["application/json"]["schema"]["$ref"].clone();
        assert_eq!(
            schema(&op["requestBody"]),
            json!(format!("#/components/schemas/{rpc}Request"))
        );
        assert_eq!(
            schema(&op["responses"]["200"]),
            json!(format!("#/components/schemas/{rpc}Response"))
        );
    }
    server.shutdown().await.unwrap();
}

/// Every field of an event's JSON form (a request id set, as it is left out when empty).
fn event_fields() -> BTreeSet<String> {
    let event = Event {
        event_id: "e".into(),
        user_id: "m1".into(),
        item_id: "i1".into(),
        event_type: "play".into(),
        value: 0.0,
        ts: 1,
        request_id: "r".into(),
    };
    keys(event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_taken_over_rest_are_checked_like_the_workers_check_them_and_written_keyed_by_member(
) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;

    let broker = recsys_shared::testkit::TansuBroker::start_in_memory();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.kafka.brokers = broker.brokers();
    config.online.event_ingest = true;
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", broker.brokers());
    let admin: AdminClient<_> = client.create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(
                &config.kafka.events_topic,
                2,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    synthetic_model(&config.model.root, 100, 10, 4, 13).unwrap();
    let server = start(&config).await.unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    let event = json!({"event_id": "e-1", "user_id": "m3", "item_id": "i7",
                       "event_type": "play", "ts": now});
    let (status, accepted) = post(&server, "/v1/events", event.clone()).await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["event_id"], "e-1");
    assert_eq!(accepted["topic"], config.kafka.events_topic.as_str());

    // Refused as the workers would dead-letter them, the field named; nothing written.
    for (change, field, reason) in [
        (json!({"user_id": " m3"}), "user_id", "invalid_id"),
        (
            json!({"item_id": "no-such-item"}),
            "item_id",
            "unknown_item",
        ),
        (
            json!({"event_type": "teleport"}),
            "event_type",
            "unknown_event_type",
        ),
        (json!({"ts": now + 86_400_000}), "ts", "timestamp_skew"),
        (json!({"event_id": ""}), "event_id", "missing_field"),
    ] {
        let mut bad = event.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let (status, answer) = post(&server, "/v1/events", bad).await;
        assert_eq!(status, 400, "{change}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
    }
    let (status, answer) = post(
        &server,
        "/v1/events",
        json!({"event_id": "e-2", "colour": 1}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "body");

    // The one event accepted is in the topic, keyed by its member, decodable by the workers.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "rest-ingest-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.kafka.events_topic]).unwrap();
    // Until the first record arrives, then a second more for anything else.
    let mut deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut records = Vec::new();
    while std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(200)) else {
            continue;
        };
        let content_type = {
            use rdkafka::message::Headers;
            message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "content-type")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            })
        };
        records.push((
            message
                .key()
                .map(|k| String::from_utf8_lossy(k).to_string()),
            recsys_shared::event::decode(message.payload(), content_type.as_deref()),
            message.partition(),
            message.offset(),
        ));
        if records.len() == 1 {
            deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        }
    }
    assert_eq!(records.len(), 1, "{records:?}");
    let (key, decoded, partition, offset) = records.remove(0);
    assert_eq!(key.as_deref(), Some("m3"));
    let decoded = decoded.unwrap();
    assert_eq!(decoded.event_id, "e-1");
    assert_eq!(decoded.item_id, "i7");
    assert_eq!(decoded.ts, now);
    assert_eq!(json!(partition), accepted["partition"]);
    assert_eq!(json!(offset), accepted["offset"]);
    server.shutdown().await.unwrap();
}
