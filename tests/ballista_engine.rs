//! The feature jobs on a real Apache Ballista cluster — a scheduler and two executors, processes of
//! the `recsys` binary on loopback — reading their input from a real S3-protocol server, return
//! the same training table, popularity and histories as the local engine on the same input.

use std::process::Stdio;
use std::time::Duration;

use recsys_offline::features::{FeatureJob, Features};
use recsys_offline::input::InputTable;
use recsys_offline::train::run_features;
use recsys_shared::config::{BallistaConfig, FeatureConfig};
use recsys_shared::object_storage::RemoteLocation;
use recsys_shared::testkit::{free_port, wait_for_port, S3Server};

mod common;
use common::{command, synth, Process};

fn spawn(args: &[&str], env: &[(&str, String)]) -> Process {
    let mut cmd = command(args, env);
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    Process(cmd.spawn().expect("recsys runs"))
}

fn features(
    interactions: &str,
    items: &str,
    config: &FeatureConfig,
    cluster: Option<&BallistaConfig>,
) -> Features {
    let interactions = InputTable::discover(interactions.as_ref()).unwrap();
    let items = InputTable::discover(items.as_ref()).unwrap();
    let job = FeatureJob {
        config,
        as_of_ms: None,
        threads: 2,
        cluster,
        negatives: Default::default(),
    };
    run_features(&job, &interactions, Some(&items)).unwrap()
}

#[test]
fn feature_jobs_on_ballista_equal_the_local_engine() {
    let s3 = S3Server::start("lake");
    // This test binary holds only this test: the environment is set before any thread reads it.
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 500, 200, 30_000, "11");
    let bucket = RemoteLocation::parse(&s3.url("")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for name in ["interactions.parquet", "items.parquet"] {
        runtime
            .block_on(bucket.upload(&data.join(name), &format!("events/{name}")))
            .unwrap();
    }
    drop(runtime);

    let scheduler_port = free_port();
    let scheduler = format!("127.0.0.1:{scheduler_port}");
    let env = s3.env();
    let _scheduler = spawn(
        &[
            "ballista",
            "scheduler",
            "--listen",
            &scheduler,
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &env,
    );
    assert!(wait_for_port(scheduler_port, Duration::from_secs(30)));
    let mut executors = Vec::new();
    for _ in 0..2 {
        let (flight, grpc) = (free_port(), free_port());
        executors.push(spawn(
            &[
                "ballista",
                "executor",
                "--scheduler",
                &scheduler,
                "--flight-port",
                &flight.to_string(),
                "--grpc-port",
                &grpc.to_string(),
                "--slots",
                "2",
                "--metrics-listen",
                &format!("127.0.0.1:{}", free_port()),
            ],
            &env,
        ));
        assert!(wait_for_port(flight, Duration::from_secs(30)));
        assert!(wait_for_port(grpc, Duration::from_secs(30)));
    }
    // Executors register with the scheduler by heartbeat.
    std::thread::sleep(Duration::from_secs(2));

    let config = FeatureConfig::default();
    let interactions = s3.url("events/interactions.parquet");
    let items = s3.url("events/items.parquet");
    let local = features(&interactions, &items, &config, None);
    let cluster = BallistaConfig {
        scheduler: format!("df://{scheduler}"),
    };
    let distributed = features(&interactions, &items, &config, Some(&cluster));

    assert!(
        local.training.pairs.len() > 10_000,
        "{}",
        local.training.pairs.len()
    );
    assert_eq!(distributed.training, local.training, "the training table");
    let popularity = |f: &Features| {
        let mut rows: Vec<(String, u64, u32)> = f
            .popularity
            .iter()
            .map(|r| (r.item_id.clone(), r.members, r.score.to_bits()))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(popularity(&distributed), popularity(&local), "popularity");
    let history = |f: &Features| {
        let mut rows: Vec<(String, String, u32, i64)> = f
            .history
            .iter()
            .map(|(user, item, strength, ts_ms)| {
                (
                    user.to_string(),
                    item.to_string(),
                    strength.to_bits(),
                    ts_ms,
                )
            })
            .collect();
        rows.sort();
        rows
    };
    assert!(!local.history.is_empty());
    assert_eq!(history(&distributed), history(&local), "histories");
    drop(executors);
}
