//! The offline job and the servers against a real S3-protocol server (`s3s-fs`, started by the
//! test kit): inputs read from a bucket, versions published to one with a lease and a
//! compare-and-swap of `CURRENT`, a server following `CURRENT` there; concurrent publishers, a
//! publish killed mid-upload, bad credentials and a missing bucket.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use recsys_shared::object_storage::RemoteLocation;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::RankRequest;
use recsys_shared::testkit::{free_port, wait_for_port, S3Server};

mod common;
use common::{command, last_json, recsys, stderr, synth, Process};

/// A bucket holding a synthetic interaction log and catalog under `lake/`.
struct Lake {
    s3: S3Server,
    _dir: tempfile::TempDir,
}

impl Lake {
    fn new(seed: &str) -> Lake {
        let s3 = S3Server::start("recsys");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        synth(&data, 300, 120, 15000, seed);
        let lake = Lake { s3, _dir: dir };
        for name in ["interactions.parquet", "items.parquet"] {
            lake.upload(&data.join(name), &format!("lake/{name}"));
        }
        lake
    }

    /// A lake whose bucket holds one published version under `models/`: the lake, the root's
    /// URL and the version.
    fn with_a_version(seed: &str) -> (Lake, String, String) {
        let lake = Lake::new(seed);
        let models = lake.s3.url("models");
        let o = lake.train(&models, &[], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let version = lake.current().expect("CURRENT after a publish");
        (lake, models, version)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.s3.env()
    }

    fn upload(&self, file: &Path, key: &str) {
        let bucket = RemoteLocation::parse_with(&self.s3.url(""), &self.env()).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(bucket.upload(file, key))
            .unwrap();
    }

    /// `offline train` of the lake's data into `models`, with this server's credentials.
    fn train_command(&self, models: &str, extra: &[&str], env: &[(&str, String)]) -> Command {
        let interactions = self.s3.url("lake/interactions.parquet");
        let items = self.s3.url("lake/items.parquet");
        let mut args = vec![
            "offline",
            "train",
            "--interactions",
            &interactions,
            "--items",
            &items,
            "--model-root",
            models,
            "--family",
            "ials",
            "--factors",
            "8",
            "--iterations",
            "3",
            "--skip-eval",
        ];
        args.extend_from_slice(extra);
        let mut all = self.env();
        all.extend(env.iter().cloned());
        command(&args, &all)
    }

    /// `offline train` of `interactions` (a URL) with the lake's catalog into `models`.
    fn train_reading(&self, interactions: &str, models: &str) -> Output {
        let items = self.s3.url("lake/items.parquet");
        let args = [
            "offline",
            "train",
            "--interactions",
            interactions,
            "--items",
            &items,
            "--model-root",
            models,
            "--skip-eval",
        ];
        recsys(&args, &self.env())
    }

    fn train(&self, models: &str, extra: &[&str], env: &[(&str, String)]) -> Output {
        self.train_command(models, extra, env)
            .output()
            .expect("recsys runs")
    }

    /// What `CURRENT` of the bucket's `models/` names, read from the server's files.
    fn current(&self) -> Option<String> {
        std::fs::read_to_string(self.s3.object_file("models/CURRENT"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn objects_under(&self, key: &str) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.s3.object_file(key))
    }
}

/// Asks the server until it answers with `version` (or panics after `within`).
fn wait_for_version(port: u16, version: &str, within: Duration) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(mut client) = RankingClient::connect(format!("http://127.0.0.1:{port}")).await
            {
                match client
                    .rank(RankRequest {
                        user_id: "u0000001".into(),
                        k: 5,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert_eq!(r.items.len(), 5);
                        if r.model_version == version {
                            return;
                        }
                        last = format!("serving {}", r.model_version);
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server never served {version}: {last}");
    });
}

#[test]
fn train_reads_and_publishes_on_s3_and_the_server_follows_current() {
    let lake = Lake::new("5");
    let models = lake.s3.url("models");
    let o = lake.train(&models, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = last_json(&o)["version"].as_str().unwrap().to_string();
    assert_eq!(lake.current().as_deref(), Some(first.as_str()));
    assert!(lake.objects_under(&format!("models/{first}")) >= 6);
    assert!(
        !lake.s3.object_file("models/.lease").exists(),
        "the lease is released"
    );

    let o = recsys(
        &["offline", "versions", "--model-root", &models, "--verify"],
        &lake.env(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("* {first}")),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let cache = tempfile::tempdir().unwrap();
    let (grpc, rest) = (free_port(), free_port());
    let mut env = lake.env();
    env.push(("RECSYS__ONLINE__REST_LISTEN", format!("127.0.0.1:{rest}")));
    env.push((
        "RECSYS__MODEL__CACHE_DIR",
        cache.path().to_str().unwrap().to_string(),
    ));
    env.push(("RECSYS__ONLINE__MODEL_POLL_MS", "200".into()));
    env.push(("RECSYS__CACHE__BACKEND", "none".into()));
    let mut serve = command(
        &[
            "online",
            "serve",
            "--model-root",
            &models,
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &env,
    );
    let _server = Process(serve.stdout(Stdio::null()).spawn().unwrap());
    assert!(wait_for_port(grpc, Duration::from_secs(30)));
    wait_for_version(grpc, &first, Duration::from_secs(30));
    // The cache is a verified local copy.
    recsys_shared::artifact::ModelRoot::new(cache.path())
        .verify(&first)
        .unwrap();

    // A second publish swaps in.
    let o = lake.train(&models, &["--force"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = last_json(&o)["version"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert_eq!(lake.current().as_deref(), Some(second.as_str()));
    wait_for_version(grpc, &second, Duration::from_secs(30));

    // Rollback on object storage moves CURRENT back, and the server follows.
    let o = recsys(
        &[
            "offline",
            "rollback",
            "--model-root",
            &models,
            "--to",
            &first,
        ],
        &lake.env(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lake.current().as_deref(), Some(first.as_str()));
    wait_for_version(grpc, &first, Duration::from_secs(30));

    // The console promotes on the bucket too: its confirmation, then the form it posts.
    let confirm = http(
        rest,
        "GET",
        &format!("/console/models/{second}/promote"),
        "",
    );
    assert!(
        confirm.contains(&format!("moves from <b>{first}</b>")),
        "{confirm}"
    );
    let field = |name: &str| {
        let at = confirm
            .find(&format!("name={name} value="))
            .unwrap_or_else(|| panic!("no {name} in {confirm}"));
        confirm[at..]
            .split_once("value=")
            .unwrap()
            .1
            .trim_start_matches('"')
            .split(['"', '>'])
            .next()
            .unwrap()
            .to_string()
    };
    let form = format!("csrf={}&expected={}", field("csrf"), field("expected"));
    let answer = http(
        rest,
        "POST",
        &format!("/console/models/{second}/promote"),
        &form,
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert_eq!(lake.current().as_deref(), Some(second.as_str()));
    assert!(
        !lake.s3.object_file("models/.lease").exists(),
        "the console released its lease"
    );
    wait_for_version(grpc, &second, Duration::from_secs(30));
    // The same form again is stale: CURRENT no longer names what it expected.
    let answer = http(
        rest,
        "POST",
        &format!("/console/models/{first}/promote"),
        &form,
    );
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert_eq!(lake.current().as_deref(), Some(second.as_str()));
}

/// One HTTP/1.1 exchange with `port` on loopback (a form body when `body` is not empty): the
/// whole answer.
fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn of_two_concurrent_publishers_exactly_one_wins() {
    let (lake, models, before) = Lake::with_a_version("6");

    let spawn = || {
        lake.train_command(&models, &["--force"], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outputs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let winners: Vec<&Output> = outputs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one publisher must win: {:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    let loser = outputs.iter().find(|o| !o.status.success()).unwrap();
    let why = stderr(loser);
    assert!(
        why.contains("lease") || why.contains("CURRENT changed"),
        "the loser says why: {why}"
    );
    let won = last_json(winners[0])["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(won, before);
    assert_eq!(lake.current().as_deref(), Some(won.as_str()));
    // CURRENT names a complete version a reader can download and verify.
    let cache = tempfile::tempdir().unwrap();
    let remote = recsys_shared::artifact::RemoteModelRoot::new(
        RemoteLocation::parse_with(&models, &lake.env()).unwrap(),
    );
    let manifest = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(remote.download(&won, &recsys_shared::artifact::ModelRoot::new(cache.path())))
        .unwrap();
    assert_eq!(manifest.version, won);
}

#[test]
fn a_publish_killed_mid_upload_leaves_current_on_the_complete_version() {
    let (lake, models, first) = Lake::with_a_version("7");

    let short_lease = ("RECSYS__MODEL__LEASE_SECONDS", "10".to_string());
    let o = lake.train(
        &models,
        &["--force"],
        &[
            ("RECSYS_FAILPOINT", "remote-publish-mid-upload".into()),
            short_lease.clone(),
        ],
    );
    assert!(!o.status.success(), "the process should have died");
    assert!(
        stderr(&o).contains("failpoint remote-publish-mid-upload"),
        "{}",
        stderr(&o)
    );
    assert_eq!(lake.current().as_deref(), Some(first.as_str()));
    // The dead writer's lease blocks others until it expires.
    let o = lake.train(&models, &["--force"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("holds the lease"), "{}", stderr(&o));
    assert_eq!(lake.current().as_deref(), Some(first.as_str()));

    // After expiry the next writer takes the lease over, removes the incomplete upload and
    // publishes.
    std::thread::sleep(Duration::from_secs(11));
    let o = lake.train(&models, &["--force"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let third = last_json(&o)["version"].as_str().unwrap().to_string();
    assert_eq!(lake.current().as_deref(), Some(third.as_str()));
    let dirs: Vec<String> = std::fs::read_dir(lake.s3.object_file("models"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let mut complete = 0;
    for dir in &dirs {
        if lake
            .s3
            .object_file(&format!("models/{dir}/manifest.json"))
            .exists()
        {
            complete += 1;
        } else {
            // s3s-fs leaves a deleted prefix's empty directory behind; no object may remain.
            assert_eq!(
                lake.objects_under(&format!("models/{dir}")),
                0,
                "{dir} has no manifest: the incomplete upload should be gone ({dirs:?})"
            );
        }
    }
    assert_eq!(complete, 2, "{dirs:?}");
}

#[test]
fn bad_credentials_and_a_missing_bucket_fail_naming_the_url() {
    let lake = Lake::new("8");
    let models = lake.s3.url("models");
    let o = lake.train(
        &models,
        &[],
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret".into())],
    );
    assert!(!o.status.success());
    let why = stderr(&o);
    assert!(why.contains("s3://recsys/models"), "{why}");
    assert!(
        !why.contains(&lake.s3.secret_key) && !why.contains("not-the-secret"),
        "{why}"
    );
    assert_eq!(lake.objects_under("models"), 0, "nothing published");

    // A missing bucket. (s3s-fs creates a bucket's directory on the first write, so only reads
    // of a missing bucket fail there; AWS S3 refuses writes too, with NoSuchBucket.)
    let o = lake.train_reading("s3://no-such-bucket/lake/interactions.parquet", &models);
    let why = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{why}");
    assert!(
        why.contains("s3://no-such-bucket/lake/interactions.parquet"),
        "{why}"
    );
    assert_eq!(lake.objects_under("models"), 0, "nothing published");

    // A damaged input object is reported by its URL, not by the scratch copy's path.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), b"PAR1 this is not a parquet file PAR1").unwrap();
    lake.upload(bad.path(), "broken/interactions.parquet");
    let o = lake.train_reading(&lake.s3.url("broken/interactions.parquet"), &models);
    assert!(!o.status.success());
    let why = stderr(&o);
    assert!(
        why.contains("s3://recsys/broken/interactions.parquet"),
        "{why}"
    );
    assert_eq!(lake.objects_under("models"), 0, "nothing published");
}
