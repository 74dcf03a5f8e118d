//! recsys run as a cluster, with faults, and a checker that counts what was lost.
//!
//! `deploy/netns/cluster.sh` brings up thirteen hosts — network namespaces with their own
//! addresses on a private bridge: a Tansu broker, a 3-master Redis Cluster (the feature store and
//! the cache), an s3s-fs object store, a Ballista scheduler and two executors, two nearline
//! workers, two online servers and HAProxy in front of them. On it this test:
//!
//! 1. trains on Ballista from S3 and publishes the model to S3; `load-store` fills the Redis
//!    Cluster; both servers load it and the balancer has both up;
//! 2. runs clients ranking through the balancer, a producer of member events into Kafka and
//!    freshness probes (an event on a member's top item, then Rank until the answer changes),
//!    while faults come one at a time: a worker host `kill -9`ed (and back), a store master's
//!    link down for 10 s, an online host killed (and back), the broker host restarted;
//! 3. stops the events and checks every member's state in the store against folding all events
//!    in from scratch (nothing lost, nothing twice) — and, as a control, that the check fails
//!    when told of one event fewer;
//! 4. with the clients still ranking, trains a new model with an executor `kill -9`ed once it
//!    runs a task (the job finishes on the other executor, or fails having published nothing and
//!    runs again), and waits for both servers to swap the new version in;
//! 5. prints the checker's table: requests failed per fault window, affinity, freshness.
//!
//! Needs root (namespaces), haproxy, redis-server, tansu and s3s-fs (`.ci/run` installs them);
//! without root it says SKIPPED and returns. Latencies are printed, never asserted.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use recsys_nearline::apply::from_scratch;
use recsys_nearline::event::Event;
use recsys_nearline::produce::{send, Encoding};
use recsys_shared::artifact::ModelRoot;
use recsys_shared::config::Config;
use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::RankRequest;
use recsys_store::features::{FeatureStore, MemberFeatures};

mod common;

const MEMBERS: usize = 2000;
const ITEMS: usize = 1000;
const LB: &str = "http://10.77.0.70:50051";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/netns/cluster.sh");

/// The cluster's directory and the binary it runs.
#[derive(Clone)]
struct Cluster {
    dir: PathBuf,
    recsys: PathBuf,
}

impl Cluster {
    fn script(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .args(args)
            .arg(&self.dir)
            .env("RECSYS", &self.recsys)
            .env("RUST_LOG", "info");
        let out = cmd.output().expect("bash runs");
        assert!(
            out.status.success(),
            "cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The environment every recsys process of the cluster gets (as cluster.sh gives it).
    fn env(&self) -> Vec<(String, String)> {
        let secret = std::fs::read_to_string(self.dir.join("s3-secret")).unwrap();
        vec![
            (
                "RECSYS_CONFIG".into(),
                self.dir.join("recsys.toml").display().to_string(),
            ),
            ("AWS_ENDPOINT_URL".into(), "http://10.77.0.30:9000".into()),
            ("AWS_ACCESS_KEY_ID".into(), "recsys-netns".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.trim().into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("RECSYS_LOG".into(), "warn".into()),
            // A small model: the scenario is about the cluster, not quality (the test binary
            // is a debug build).
            // The exact ALS fold-in is what the faults are checked against.
            ("RECSYS__OFFLINE__FAMILY".into(), "ials".into()),
            ("RECSYS__OFFLINE__ALS__FACTORS".into(), "32".into()),
            ("RECSYS__OFFLINE__ALS__ITERATIONS".into(), "6".into()),
        ]
    }

    /// `recsys args…` on `host`.
    fn recsys_on(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("rs-{host}")])
            .arg(&self.recsys)
            .args(args);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(file)).unwrap_or_default()
    }

    /// The bucket's model root as s3s-fs keeps it: one file per object.
    fn models(&self) -> PathBuf {
        self.dir.join("hosts/s3/data/recsys/models")
    }
}

/// Tears the cluster down when dropped (also when the test fails).
struct TearDown(PathBuf);

impl Drop for TearDown {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("down")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// The whole answer to `GET path` on `address` (empty when nothing answers).
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut answer = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(address) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let _ = s.read_to_string(&mut answer);
    }
    answer
}

fn ready(address: &str) -> bool {
    let answer = http_get(address, "/readyz");
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// Whether HAProxy has both servers up (its checks need two good answers after a server became
/// ready).
fn balancer_has_both() -> bool {
    let answer = http_get("10.77.0.70:8404", "/stats;csv");
    ["online1", "online2"].iter().all(|server| {
        answer.lines().any(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            fields.len() > 17 && fields[0] == "online" && fields[1] == *server && fields[17] == "UP"
        })
    })
}

/// One Rank through the balancer, as the homepage backend sends it.
struct Answer {
    at: Duration,
    ok: bool,
    /// The failure's status.
    error: Option<String>,
    server: Option<String>,
    member: String,
}

async fn rank(
    client: &mut RankingClient<tonic::transport::Channel>,
    member: &str,
) -> Result<(Vec<String>, Option<String>), tonic::Status> {
    let mut request = tonic::Request::new(RankRequest {
        user_id: member.to_string(),
        k: 20,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-recsys-member-id", member.parse().unwrap());
    request.set_timeout(Duration::from_secs(2));
    let response = client.rank(request).await?;
    let server = response
        .metadata()
        .get("x-recsys-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let items = response
        .into_inner()
        .items
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    Ok((items, server))
}

/// A fault's window: from the fault until the cluster has had `SETTLE` to recover after it was
/// undone.
struct Window {
    name: String,
    start: Duration,
    end: Duration,
    /// Both servers up throughout (affinity is counted only then).
    servers_up: bool,
}

const SETTLE: Duration = Duration::from_secs(5);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sends `event` until the broker acknowledges it (the same event again after a failure: applying
/// is idempotent, and an unacknowledged send may still have been written).
async fn produce(producer: &rdkafka::producer::FutureProducer, topic: &str, event: &Event) {
    loop {
        match send(producer, topic, event, Encoding::Protobuf).await {
            Ok(()) => return,
            Err(e) => {
                eprintln!(
                    "event {} not acknowledged ({e}); sending again",
                    event.event_id
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[test]
fn the_cluster_loses_nothing_through_five_faults() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!(
            "SKIPPED: the_cluster_loses_nothing_through_five_faults \
             (network namespaces need root; .ci/run runs as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster {
        dir: dir.path().join("netns"),
        // RECSYS_CLUSTER_BIN: another build of the binary (a release build, for figures).
        recsys: std::env::var_os("RECSYS_CLUSTER_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_recsys")),
            PathBuf::from,
        ),
    };
    std::fs::create_dir_all(&cluster.dir).unwrap();
    let _down = TearDown(cluster.dir.clone());
    let started = Instant::now();
    cluster.script(&["up"]);
    eprintln!("cluster up in {:.1} s", started.elapsed().as_secs_f64());

    synth(&cluster);
    let out = train(&cluster).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "offline train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = ModelRoot::new(cluster.models())
        .current_version()
        .unwrap()
        .expect("CURRENT after training");
    let out = cluster
        .recsys_on("sched", &["offline", "load-store"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load-store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until(
        "both servers ready, and up at the balancer",
        Duration::from_secs(120),
        || ready("10.77.0.61:9464") && ready("10.77.0.62:9464") && balancer_has_both(),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (report, check, control, training) = runtime.block_on(scenario(&cluster, &version));
    print_table(&training, &report, &check, started.elapsed());
    // The checker can fail: told of one event fewer than were produced, it finds the entry that
    // event made in the store.
    assert!(
        control.extra >= 1 && control.members_equal < control.members,
        "the checker missed the state of an event it was not told about"
    );

    assert_eq!(check.missing, 0, "events lost: {}", check.first_problem);
    assert_eq!(
        check.extra, 0,
        "events applied twice: {}",
        check.first_problem
    );
    assert_eq!(
        check.members_equal, check.members,
        "members whose state is not the from-scratch fold: {}",
        check.first_problem
    );
    let outside = report.failed_outside_windows();
    for a in report
        .answers
        .iter()
        .filter(|a| !a.ok && report.window_of(a.at).is_none())
        .take(5)
    {
        eprintln!(
            "failed at {:.3} s ({}): {}",
            a.at.as_secs_f64(),
            a.member,
            a.error.as_deref().unwrap_or("")
        );
    }
    assert_eq!(
        outside, 0,
        "{outside} requests failed outside the fault windows"
    );
    let affinity = report.affinity().0;
    assert!(
        affinity >= 0.99,
        "only {:.1} % of a member's requests on one server",
        affinity * 100.0
    );
}

/// What the retraining under an executor fault did.
struct Training {
    killed: String,
    outcome: String,
    /// The version served at the end.
    version: String,
}

/// Synthetic data into the bucket (s3s-fs keeps each object as a file).
fn synth(cluster: &Cluster) {
    let out = Command::new(&cluster.recsys)
        .args([
            "offline",
            "synth",
            "--users",
            &MEMBERS.to_string(),
            "--items",
            &ITEMS.to_string(),
            "--interactions",
            "60000",
            "--output",
        ])
        .arg(cluster.dir.join("hosts/s3/data/recsys/data"))
        .env("RECSYS_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "synth: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `offline train` on host `sched`: Ballista reads S3, the model is published to S3.
fn train(cluster: &Cluster) -> std::process::Child {
    cluster
        .recsys_on(
            "sched",
            &[
                "offline",
                "train",
                "--interactions",
                "s3://recsys/data/interactions.parquet",
                "--items",
                "s3://recsys/data/items.parquet",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A new training while the cluster serves, with the first executor seen running one of its
/// tasks `kill -9`ed: the job finishes on the other executor, or fails having published nothing
/// (then the executor comes back and the job runs again). Either way CURRENT ends on a version
/// whose every file matches its manifest.
fn train_losing_an_executor(cluster: &Cluster, before: &str) -> Training {
    let logs = ["exec1", "exec2"].map(|e| format!("{e}.executor.log"));
    let seen = logs.clone().map(|log| cluster.log(&log).len());
    let job = train(cluster);
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed = loop {
        let running = (0..2).find(|&e| {
            cluster
                .log(&logs[e])
                .get(seen[e]..)
                .is_some_and(|new| new.contains("Execute task"))
        });
        if let Some(e) = running {
            let executor = ["exec1", "exec2"][e];
            cluster.script(&["kill", executor]);
            break executor.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no executor ran a task within 120 s (logs in {})",
            cluster.dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = job.wait_with_output().unwrap();
    let current = ModelRoot::new(cluster.models()).current_version().unwrap();
    let outcome = if out.status.success() {
        assert_ne!(
            current.as_deref(),
            Some(before),
            "a finished job published nothing"
        );
        "finished on the other executor".to_string()
    } else {
        assert_eq!(
            current.as_deref(),
            Some(before),
            "a failed job moved CURRENT"
        );
        let error = String::from_utf8_lossy(&out.stderr);
        let last = error
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!("failed cleanly, CURRENT unmoved ({})", last.trim())
    };
    cluster.script(&["start", &killed]);
    let version = match current.as_deref() {
        Some(v) if v != before => v.to_string(),
        _ => {
            let out = train(cluster).wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "training again: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ModelRoot::new(cluster.models())
                .current_version()
                .unwrap()
                .expect("CURRENT after training")
        }
    };
    ModelRoot::new(cluster.models()).verify(&version).unwrap();
    Training {
        killed,
        outcome,
        version,
    }
}

/// The model version `host`'s server answers with.
async fn served_version(host: &str) -> Option<String> {
    let mut client = RankingClient::connect(format!("http://{host}:50051"))
        .await
        .ok()?;
    let answer = client
        .rank(RankRequest {
            user_id: "u0000001".into(),
            k: 1,
            ..Default::default()
        })
        .await
        .ok()?;
    Some(answer.into_inner().model_version)
}

/// What the clients, the producer and the probes saw.
struct Report {
    answers: Vec<Answer>,
    windows: Vec<Window>,
    events: Vec<Event>,
    /// (sent at, event produced → Rank changed, ms; None: not within 5 s).
    probes: Vec<(Duration, Option<f64>)>,
    duration: Duration,
}

impl Report {
    fn window_of(&self, at: Duration) -> Option<&Window> {
        self.windows.iter().find(|w| w.start <= at && at < w.end)
    }

    fn failed_outside_windows(&self) -> usize {
        self.answers
            .iter()
            .filter(|a| !a.ok && self.window_of(a.at).is_none())
            .count()
    }

    /// The share of a member's requests on the server that answered most of them, counted while
    /// both servers are up; and how many members that covers.
    fn affinity(&self) -> (f64, usize) {
        let mut per_member: HashMap<&str, BTreeMap<&str, usize>> = HashMap::new();
        for a in &self.answers {
            let both_up = self.window_of(a.at).is_none_or(|w| w.servers_up);
            if let (true, true, Some(server)) = (a.ok, both_up, a.server.as_deref()) {
                *per_member
                    .entry(&a.member)
                    .or_default()
                    .entry(server)
                    .or_default() += 1;
            }
        }
        let (mut on_one, mut total) = (0, 0);
        for servers in per_member.values() {
            on_one += servers.values().max().unwrap();
            total += servers.values().sum::<usize>();
        }
        (on_one as f64 / total.max(1) as f64, per_member.len())
    }
}

/// Traffic and faults: clients rank throughout; events and probes run through the first four
/// faults, then stop, and the store is checked (and the check's control run); the last fault, an
/// executor lost in a retraining, comes while the clients still rank.
async fn scenario(cluster: &Cluster, version: &str) -> (Report, Check, Check, Training) {
    let config = Config::load(Some(&cluster.dir.join("recsys.toml"))).unwrap();
    let topic = config.kafka.events_topic.clone();
    let producer = Arc::new(recsys_nearline::kafka::producer(&config).unwrap());
    let channel = tonic::transport::Endpoint::from_static(LB)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let t0 = Instant::now();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_clients = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = |stop: &Arc<std::sync::atomic::AtomicBool>| {
        !stop.load(std::sync::atomic::Ordering::Relaxed)
    };

    // Clients: four loops, about 100 requests a second through the balancer.
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (answers, stop, mut client) = (
            answers.clone(),
            stop_clients.clone(),
            RankingClient::new(channel.clone()),
        );
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            while running(&stop) {
                let member = format!("u{:07}", rng.random_range(0..MEMBERS));
                let result = rank(&mut client, &member).await;
                let (ok, server, error) = match result {
                    Ok((_, server)) => (true, server, None),
                    Err(status) => (false, None, Some(status.to_string())),
                };
                answers.lock().unwrap().push(Answer {
                    at: t0.elapsed(),
                    ok,
                    error,
                    server,
                    member,
                });
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    // Events: about 50 a second, each sent until acknowledged.
    let mut tasks = Vec::new();
    {
        let (events, stop, producer, topic) = (
            events.clone(),
            stop.clone(),
            producer.clone(),
            topic.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            let mut n = 0;
            while running(&stop) {
                n += 1;
                let event = Event {
                    event_id: format!("e{n}"),
                    user_id: format!("u{:07}", rng.random_range(0..MEMBERS)),
                    item_id: format!("i{:06}", rng.random_range(0..ITEMS)),
                    event_type: "play".into(),
                    value: 0.0,
                    ts: chrono::Utc::now().timestamp_millis(),
                    request_id: String::new(),
                };
                produce(&producer, &topic, &event).await;
                events.lock().unwrap().push(event);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Freshness probes: an event on the member's top item (once applied it is seen, and leaves
    // the answer), then Rank until the answer changes.
    let probes = {
        let (events, stop, producer, topic, answers) = (
            events.clone(),
            stop.clone(),
            producer.clone(),
            topic.clone(),
            answers.clone(),
        );
        let mut client = RankingClient::new(channel.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut probes = Vec::new();
            let mut n = 0;
            while running(&stop) {
                n += 1;
                let member = format!("u{:07}", rng.random_range(0..MEMBERS));
                let Ok((before, _)) = rank(&mut client, &member).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Some(top) = before.first() else { continue };
                let event = Event {
                    event_id: format!("p{n}"),
                    user_id: member.clone(),
                    item_id: top.clone(),
                    event_type: "play".into(),
                    value: 0.0,
                    ts: chrono::Utc::now().timestamp_millis(),
                    request_id: String::new(),
                };
                let sent_at = t0.elapsed();
                let sent = Instant::now();
                produce(&producer, &topic, &event).await;
                events.lock().unwrap().push(event);
                let seen = loop {
                    let answer = rank(&mut client, &member).await;
                    let ok = answer.is_ok();
                    answers.lock().unwrap().push(Answer {
                        at: t0.elapsed(),
                        ok,
                        error: answer.as_ref().err().map(|s| s.to_string()),
                        server: answer.as_ref().ok().and_then(|(_, s)| s.clone()),
                        member: member.clone(),
                    });
                    if matches!(&answer, Ok((now, _)) if *now != before) {
                        break Some(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    if sent.elapsed() > Duration::from_secs(5) {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                probes.push((sent_at, seen));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            probes
        })
    };

    // The faults, one at a time.
    let mut windows = Vec::new();
    let script = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let cluster = cluster.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                cluster.script(&args);
            })
            .await
            .unwrap()
        }
    };
    let at = |s: u64| tokio::time::sleep_until((t0 + Duration::from_secs(s)).into());

    at(10).await;
    let start = t0.elapsed();
    script(&["kill", "worker1"]).await;
    at(25).await;
    script(&["start", "worker1"]).await;
    windows.push(Window {
        name: "worker1 host kill -9, back after 15 s".into(),
        start,
        end: t0.elapsed() + SETTLE,
        servers_up: true,
    });

    at(35).await;
    let start = t0.elapsed();
    script(&["link", "store2", "down"]).await;
    at(45).await;
    script(&["link", "store2", "up"]).await;
    windows.push(Window {
        name: "store2 (a Redis master) link down 10 s".into(),
        start,
        end: t0.elapsed() + SETTLE,
        servers_up: true,
    });

    at(60).await;
    let start = t0.elapsed();
    script(&["kill", "online1"]).await;
    at(70).await;
    script(&["start", "online1"]).await;
    while !ready("10.77.0.61:9464") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    windows.push(Window {
        name: "online1 host kill -9, back after 10 s".into(),
        start,
        end: t0.elapsed() + SETTLE,
        servers_up: false,
    });

    at(85).await;
    let start = t0.elapsed();
    script(&["kill", "broker"]).await;
    script(&["start", "broker"]).await;
    windows.push(Window {
        name: "broker host restarted".into(),
        start,
        end: t0.elapsed() + Duration::from_secs(10),
        servers_up: true,
    });

    at(100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let probes = probes.await.unwrap();
    let events = std::mem::take(&mut *events.lock().unwrap());
    let check = check_state(cluster, version, &events, Duration::from_secs(90)).await;
    let control = check_state(
        cluster,
        version,
        &events[..events.len() - 1],
        Duration::ZERO,
    )
    .await;

    // The last fault: a new model trained while the clients rank, an executor lost mid-job.
    let start = t0.elapsed();
    let training = {
        let (cluster, version) = (cluster.clone(), version.to_string());
        tokio::task::spawn_blocking(move || train_losing_an_executor(&cluster, &version))
            .await
            .unwrap()
    };
    // Both servers swap the new version in.
    let swapped = Instant::now();
    while served_version("10.77.0.61").await.as_deref() != Some(&training.version)
        || served_version("10.77.0.62").await.as_deref() != Some(&training.version)
    {
        assert!(
            swapped.elapsed() < Duration::from_secs(60),
            "the servers did not swap {} in",
            training.version
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    windows.push(Window {
        name: "exec killed in a retraining, swap".into(),
        start,
        end: t0.elapsed() + SETTLE,
        servers_up: true,
    });
    tokio::time::sleep(SETTLE).await;
    stop_clients.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let duration = t0.elapsed();
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    (
        Report {
            answers,
            windows,
            events,
            probes,
            duration,
        },
        check,
        control,
        training,
    )
}

/// The store against folding every event in from scratch.
struct Check {
    members: usize,
    members_equal: usize,
    /// History entries an event should have made and the store lacks.
    missing: usize,
    /// History entries in the store no event (nor the training) explains.
    extra: usize,
    first_problem: String,
    waited: Duration,
}

/// Polls the store for up to `patience` until it equals folding `events` in from scratch with
/// model `version`.
async fn check_state(
    cluster: &Cluster,
    version: &str,
    events: &[Event],
    patience: Duration,
) -> Check {
    let config = Config::load(Some(&cluster.dir.join("recsys.toml"))).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let expected = from_scratch(
        &config,
        &cluster.models(),
        version,
        scratch.path(),
        events,
        &[],
    )
    .await
    .unwrap();
    let actual = FeatureStore::new(
        recsys_store::open(&config.store).await.unwrap(),
        config.store.history_cap,
    );
    let members: Vec<String> = (0..MEMBERS).map(|u| format!("u{u:07}")).collect();
    let started = Instant::now();
    loop {
        let mut check = Check {
            members: members.len(),
            members_equal: 0,
            missing: 0,
            extra: 0,
            first_problem: String::new(),
            waited: started.elapsed(),
        };
        for m in &members {
            let want = expected.get(m).await.unwrap();
            let got = match actual.get(m).await {
                Ok(got) => got,
                Err(e) => {
                    check.first_problem = format!("{m}: {e}");
                    continue;
                }
            };
            let (missing, extra) = history_difference(&want, &got);
            check.missing += missing;
            check.extra += extra;
            match recsys_nearline::apply::same_state(&got, &want, 1e-3) {
                Ok(()) => check.members_equal += 1,
                Err(e) if check.first_problem.is_empty() => {
                    check.first_problem = format!("{m}: {e}")
                }
                Err(_) => {}
            }
        }
        if check.members_equal == check.members || started.elapsed() >= patience {
            return check;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Entries of `want`'s history missing from `got`'s, and entries of `got` not in `want`.
fn history_difference(want: &MemberFeatures, got: &MemberFeatures) -> (usize, usize) {
    let key = |f: &MemberFeatures| -> Vec<(i64, String)> {
        f.history
            .iter()
            .map(|h| (h.ts_ms, h.item_id.clone()))
            .collect()
    };
    let (w, g) = (key(want), key(got));
    let missing = w.iter().filter(|e| !g.contains(e)).count();
    let extra = g.iter().filter(|e| !w.contains(e)).count();
    (missing, extra)
}

fn print_table(training: &Training, report: &Report, check: &Check, total: Duration) {
    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!("== the cluster checker ({:.0} s in all)", secs(total));
    println!(
        "retraining on Ballista from S3 while serving, {} killed mid-job: {}; {} published and swapped in by both servers",
        training.killed, training.outcome, training.version
    );
    println!(
        "{:<40} {:>11} {:>8} {:>6} {:>8} {:>22}",
        "window", "seconds", "requests", "failed", "failing", "freshness p50 / p99"
    );
    let mut rows: Vec<(String, Duration, Duration)> = report
        .windows
        .iter()
        .map(|w| (w.name.clone(), w.start, w.end))
        .collect();
    rows.insert(
        0,
        (
            "outside the fault windows".into(),
            Duration::ZERO,
            report.duration,
        ),
    );
    for (i, (name, start, end)) in rows.iter().enumerate() {
        let inside = |at: Duration| {
            if i == 0 {
                report.window_of(at).is_none()
            } else {
                *start <= at && at < *end
            }
        };
        let answers: Vec<&Answer> = report.answers.iter().filter(|a| inside(a.at)).collect();
        let failed: Vec<&&Answer> = answers.iter().filter(|a| !a.ok).collect();
        let failing = match (failed.first(), failed.last()) {
            (Some(first), Some(last)) => format!("{:.2} s", secs(last.at - first.at)),
            _ => "-".into(),
        };
        let span = if i == 0 {
            "-".to_string()
        } else {
            format!("{:.1}–{:.1}", secs(*start), secs(*end))
        };
        let probes: Vec<&Option<f64>> = report
            .probes
            .iter()
            .filter(|(at, _)| inside(*at))
            .map(|(_, ms)| ms)
            .collect();
        let mut seen: Vec<f64> = probes.iter().filter_map(|ms| **ms).collect();
        seen.sort_by(f64::total_cmp);
        let unseen = probes.len() - seen.len();
        let freshness = if probes.is_empty() {
            "- (no events)".to_string()
        } else {
            format!(
                "{:.0} / {:.0} ms{}",
                percentile(&seen, 0.5),
                percentile(&seen, 0.99),
                if unseen > 0 {
                    format!(" ({unseen} >5 s)")
                } else {
                    String::new()
                }
            )
        };
        println!(
            "{name:<40} {span:>11} {:>8} {:>6} {failing:>8} {freshness:>22}",
            answers.len(),
            failed.len()
        );
    }
    println!(
        "events: {} produced; store vs from-scratch fold: {} missing, {} extra; {}/{} members equal (after {:.1} s){}",
        report.events.len(),
        check.missing,
        check.extra,
        check.members_equal,
        check.members,
        secs(check.waited),
        if check.first_problem.is_empty() {
            String::new()
        } else {
            format!("; first difference: {}", check.first_problem)
        }
    );
    let (affinity, members) = report.affinity();
    println!(
        "affinity: {:.2} % of a member's requests on one server while both are up ({members} members)",
        affinity * 100.0
    );
    println!(
        "freshness: event produced → a Rank through the balancer answers from the new state, {} probes",
        report.probes.len()
    );
}
