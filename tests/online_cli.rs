//! The online tier through the real `recsys` binary, across processes: train → `offline
//! load-store` into a Redis store (a `redis-server` of the test's own) → `online serve` → Rank over
//! gRPC reads the loaded vector → SIGTERM stops the server cleanly. Also the CLI's errors.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{RankRequest, VectorSource};
use recsys_shared::testkit::{free_port, wait_for_port, RedisServer};

mod common;
use common::{last_json, recsys, stderr, synth, Process, NO_ENV};

fn train(dir: &Path) -> String {
    let data = dir.join("data");
    let models = dir.join("models");
    synth(&data, 300, 120, 15000, "5");
    let (interactions, items) = (
        data.join("interactions.parquet"),
        data.join("items.parquet"),
    );
    let mut args = vec![
        "offline",
        "train",
        "--interactions",
        interactions.to_str().unwrap(),
    ];
    args.extend(["--items", items.to_str().unwrap()]);
    args.extend(["--model-root", models.to_str().unwrap()]);
    args.extend(["--family", "ials", "--factors", "8", "--iterations", "3"]);
    args.push("--skip-eval");
    let o = recsys(&args, NO_ENV);
    assert!(o.status.success(), "{}", stderr(&o));
    last_json(&o)["version"].as_str().unwrap().to_string()
}

#[test]
fn load_store_then_serve_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let version = train(dir.path());
    let models = dir.path().join("models");
    let redis = RedisServer::start();
    let store_env = vec![
        ("RECSYS__STORE__BACKEND", "redis".to_string()),
        ("RECSYS__STORE__REDIS__URL", redis.url()),
    ];

    let load_store = || {
        let o = recsys(
            &[
                "offline",
                "load-store",
                "--model-root",
                models.to_str().unwrap(),
            ],
            &store_env,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)
    };
    let report = load_store();
    assert_eq!(report["model_version"], version.as_str());
    assert!(report["vectors"].as_u64().unwrap() > 100, "{report}");
    // Idempotent: a second run finds the version loaded.
    assert_eq!(load_store()["already_loaded"], true);

    let grpc = free_port();
    let metrics = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsys"));
    cmd.args([
        "online",
        "serve",
        "--model-root",
        models.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
    ])
    .env("RECSYS_LOG", "warn")
    .env("RECSYS__CACHE__BACKEND", "none")
    .stdout(Stdio::null());
    for (k, v) in &store_env {
        cmd.env(k, v);
    }
    let mut server = Process(cmd.spawn().unwrap());
    assert!(
        wait_for_port(grpc, Duration::from_secs(30)),
        "server did not listen"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(async {
        let mut client = RankingClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client
                .rank(RankRequest {
                    user_id: "u0000001".into(),
                    k: 10,
                    ..Default::default()
                })
                .await
            {
                Ok(r) => break r.into_inner(),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert_eq!(response.model_version, version);
    assert_eq!(
        response.vector_source,
        VectorSource::Store as i32,
        "the vector load-store wrote"
    );
    assert_eq!(response.items.len(), 10);

    // The same server through `recsys client`, as a person asks it.
    let url = format!("http://127.0.0.1:{grpc}");
    let o = recsys(
        &[
            "client", "rank", "--user", "u0000001", "--k", "5", "--server", &url,
        ],
        NO_ENV,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("Rank for u0000001")
            && table.contains(&version)
            && table.contains("vector from store"),
        "{table}"
    );
    let ranked_lines = table
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(ranked_lines, 5, "{table}");
    let o = recsys(
        &["client", "homepage", "--user", "u0000001", "--json"],
        &[("RECSYS_SERVER", url.clone())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let page = last_json(&o);
    assert_eq!(page["model_version"], version.as_str());
    assert!(page["rows"].as_array().unwrap().len() >= 2, "{page}");
    let o = recsys(
        &[
            "client",
            "similar",
            "--item",
            &response.items[0].item_id,
            "--json",
            "--server",
            &url,
        ],
        NO_ENV,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["items"].as_array().unwrap().len(), 10);
    // Its output piped into a reader that has gone (`recsys client … | head -1`): it ends by
    // SIGPIPE like any Unix tool, without a panic.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_recsys"))
        .args([
            "client", "homepage", "--user", "u0000001", "--rows", "5", "--server", &url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let o = piped.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(
        o.status.success() || std::os::unix::process::ExitStatusExt::signal(&o.status) == Some(13),
        "{:?}: {}",
        o.status,
        stderr(&o)
    );
    let o = recsys(&["client", "rank", "--user", "", "--server", &url], NO_ENV);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("InvalidArgument") && stderr(&o).contains("user_id"),
        "{}",
        stderr(&o)
    );

    // SIGTERM: a graceful stop with exit status 0.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn online_cli_errors_name_what_is_wrong() {
    let o = recsys(&["online", "serve", "--help"], NO_ENV);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--model-root"));

    let o = recsys(
        &[
            "client",
            "rank",
            "--user",
            "m1",
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        NO_ENV,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no answer from"), "{}", stderr(&o));

    let o = recsys(&["online", "serve", "--listen", "not-an-address"], NO_ENV);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("online.listen"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let o = recsys(
        &[
            "offline",
            "load-store",
            "--model-root",
            dir.path().to_str().unwrap(),
        ],
        NO_ENV,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no CURRENT"), "{}", stderr(&o));

    let o = recsys(
        &[
            "offline",
            "load-store",
            "--model-root",
            dir.path().to_str().unwrap(),
        ],
        &[
            ("RECSYS__STORE__BACKEND", "redis".to_string()),
            ("RECSYS__STORE__REDIS__URL", "nonsense".to_string()),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("redis.url"), "{}", stderr(&o));
}

/// A server on `models` with its own embedded store (loaded from the version on start) and the
/// given settings; returns it with its gRPC and metrics ports.
fn serve(models: &Path, store: &Path, settings: &[(&str, &str)]) -> (Process, u16, u16) {
    let grpc = free_port();
    let metrics = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsys"));
    cmd.args(["online", "serve", "--model-root", models.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .env("RECSYS_LOG", "warn")
        .env("RECSYS__STORE__EMBEDDED__PATH", store)
        .envs(settings.iter().copied())
        .stdout(Stdio::null());
    let server = Process(cmd.spawn().unwrap());
    assert!(
        wait_for_port(grpc, Duration::from_secs(30)),
        "server did not listen"
    );
    (server, grpc, metrics)
}

#[test]
fn mapped_factors_and_batched_scans_answer_like_held_factors_scanned_alone() {
    let dir = tempfile::tempdir().unwrap();
    let version = train(dir.path());
    let models = dir.path().join("models");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models.join(&version).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(
        manifest["files"]["item_factors.f32"]["bytes"].as_u64() > Some(0),
        "an iALS version publishes its raw item rows: {manifest}"
    );
    // Mapped factors with batched scans (waiting up to 50 ms so that concurrent requests do
    // share passes), against held factors with each request scanning alone.
    let (_mapped, mapped_port, mapped_metrics) = serve(
        &models,
        &dir.path().join("store-a"),
        &[
            ("RECSYS__ONLINE__ITEM_FACTORS", "mapped"),
            ("RECSYS__ONLINE__BATCH__MAX_WAIT_US", "50000"),
        ],
    );
    let (_held, held_port, held_metrics) = serve(
        &models,
        &dir.path().join("store-b"),
        &[("RECSYS__ONLINE__BATCH__ENABLED", "false")],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answers = |port: u16| {
        runtime.block_on(async move {
            let channel =
                tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
            let asks = (0..24).map(|m| {
                let mut client = RankingClient::new(channel.clone());
                async move {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    loop {
                        let request = RankRequest {
                            user_id: format!("u{:07}", m * 7 + 1),
                            k: 15,
                            country: if m % 3 == 0 {
                                "US".into()
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        };
                        match client.rank(request).await {
                            Ok(r) => break r.into_inner(),
                            Err(e) if Instant::now() < deadline => {
                                eprintln!("not ready yet: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
            futures::future::join_all(asks).await
        })
    };
    let (mapped, held) = (answers(mapped_port), answers(held_port));
    for (m, (a, b)) in mapped.iter().zip(&held).enumerate() {
        assert_eq!(a.vector_source, VectorSource::Store as i32, "member {m}");
        let ranked = |r: &recsys_shared::proto::v1::RankResponse| {
            r.items
                .iter()
                .map(|i| (i.item_id.clone(), i.score))
                .collect::<Vec<_>>()
        };
        assert_eq!(ranked(a), ranked(b), "member {m}");
        assert_eq!(a.items.len(), 15, "member {m}");
    }
    let passes = |port| recsys_shared::ops::scrape(port, "recsys_scan_batch_members_count");
    let scanned = |port| recsys_shared::ops::scrape(port, "recsys_scan_batch_members_sum");
    assert_eq!(
        scanned(mapped_metrics),
        24.0,
        "every Rank went through the scan queue"
    );
    assert!(
        passes(mapped_metrics) < 24.0,
        "24 concurrent requests took {} passes",
        passes(mapped_metrics)
    );
    assert_eq!(passes(held_metrics), 0.0, "batching off: no pass");
}
