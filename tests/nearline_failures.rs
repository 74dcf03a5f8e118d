//! The nearline tier's failure cases, across processes: real `recsys nearline run` workers, a real
//! Tansu broker and a real redis-server as the shared feature store.
//!
//! - a worker `kill -9`ed in the middle of a stream and started again;
//! - two workers in one group, the second joining mid-stream (a rebalance);
//! - the broker (sqlite storage) restarted mid-stream;
//! - negative feedback: impressions (produced twice) and `thumbs_down` events with a worker
//!   `kill -9`ed mid-stream.
//!
//! Each ends with every member's state (history, vector, hidden items) equal to folding all events
//! in from scratch: every event reflected exactly once, nothing lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recsys_nearline::apply::{from_scratch, same_state};
use recsys_nearline::event::Event;
use recsys_nearline::feedback::Shown;
use recsys_shared::artifact::synthetic::synthetic_model;
use recsys_shared::config::{Config, StoreBackend};
use recsys_shared::impression::{ImpressedItem, Impression};
use recsys_shared::ops::scrape;
use recsys_shared::testkit::{free_port, RedisServer, TansuBroker, TansuStorage};
use recsys_store::features::FeatureStore;

mod common;
use common::wait_until;

const ITEMS: usize = 80;
const MEMBERS: usize = 40;

struct Setup {
    _dir: tempfile::TempDir,
    models: PathBuf,
    version: String,
    events_file: PathBuf,
    events: Vec<Event>,
    /// Impressions (with `feedback`): the file and what it holds.
    impressions_file: PathBuf,
    impressions: Vec<Impression>,
    feedback: bool,
    redis: RedisServer,
    broker: TansuBroker,
}

impl Setup {
    fn new(n_events: usize, broker: TansuBroker) -> Setup {
        Setup::build(n_events, broker, false)
    }

    /// With negative feedback on: every 40th event is a `thumbs_down`, and each member gets six
    /// answers of eight items (impressions; two without a play hide an item).
    fn with_feedback(n_events: usize, broker: TansuBroker) -> Setup {
        Setup::build(n_events, broker, true)
    }

    fn build(n_events: usize, broker: TansuBroker, feedback: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let version = synthetic_model(&models, ITEMS, MEMBERS, 8, 21).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let events: Vec<Event> = (0..n_events)
            .map(|i| Event {
                event_id: format!("e{i}"),
                user_id: format!("m{}", (i * 13) % MEMBERS),
                item_id: format!("i{}", (i * 7 + i / 11) % ITEMS),
                event_type: if feedback && i % 40 == 39 {
                    "thumbs_down".into()
                } else {
                    ["play", "click", "add_to_list"][i % 3].into()
                },
                value: 0.0,
                ts: now - 600_000 + i as i64,
                request_id: String::new(),
            })
            .collect();
        let impressions: Vec<Impression> = if feedback {
            (0..MEMBERS * 6)
                .map(|n| {
                    let (m, answer) = (n % MEMBERS, n / MEMBERS);
                    Impression {
                        request_id: format!("r{m}-{answer}"),
                        user_id: format!("m{m}"),
                        ts_ms: now - 600_000 + (answer as i64) * 500,
                        rpc: "homepage".into(),
                        model_version: String::new(),
                        experiments: Vec::new(),
                        items: (0..8)
                            .map(|p| ImpressedItem {
                                row: 0,
                                row_kind: "top_picks".into(),
                                position: p,
                                item_id: format!("i{}", (m * 3 + p as usize + answer) % ITEMS),
                            })
                            .collect(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let impressions_file = dir.path().join("impressions.jsonl");
        let mut f = std::fs::File::create(&impressions_file).unwrap();
        for i in &impressions {
            f.write_all(&serde_json::to_vec(i).unwrap()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        let events_file = dir.path().join("events.jsonl");
        let mut f = std::fs::File::create(&events_file).unwrap();
        for e in &events {
            f.write_all(&e.to_json()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        let setup = Setup {
            _dir: dir,
            models,
            version,
            events_file,
            events,
            impressions_file,
            impressions,
            feedback,
            redis: RedisServer::start(),
            broker,
        };
        // The model's training histories reach the shared store, as after a publish.
        let o = setup.command(&["offline", "load-store"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        setup
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            (
                "RECSYS_LOG",
                std::env::var("RECSYS_TEST_LOG").unwrap_or("warn".into()),
            ),
            (
                "RECSYS__MODEL__ROOT",
                self.models.to_string_lossy().to_string(),
            ),
            ("RECSYS__STORE__BACKEND", "redis".into()),
            ("RECSYS__STORE__REDIS__URL", self.redis.url()),
            ("RECSYS__STORE__HISTORY_CAP", "1000".into()),
            ("RECSYS__CACHE__BACKEND", "none".into()),
            ("RECSYS__KAFKA__BROKERS", self.broker.brokers()),
            ("RECSYS__NEARLINE__GROUP_ID", "failure-tests".into()),
            ("RECSYS__NEARLINE__MAX_BATCH", "40".into()),
            ("RECSYS__FEEDBACK__ENABLED", self.feedback.to_string()),
            ("RECSYS__FEEDBACK__IMPRESSIONS_TO_HIDE", "2".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn config(&self) -> Config {
        let mut config = Config::default();
        config.store.backend = StoreBackend::Redis;
        config.store.redis.url = self.redis.url();
        config.store.history_cap = 1000;
        config.feedback.enabled = self.feedback;
        config.feedback.impressions_to_hide = 2;
        config
    }

    /// `recsys nearline produce --kind impressions` of the impressions file, in the background.
    fn produce_impressions(&self) -> Child {
        self.command(&[
            "nearline",
            "produce",
            "--kind",
            "impressions",
            "--input",
            self.impressions_file.to_str().unwrap(),
            "--partitions",
            "4",
            "--rate",
            "200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsys"));
        cmd.args(args);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd
    }

    /// `recsys nearline produce` of the events file at `rate` events/s, in the background.
    fn produce(&self, file: &Path, rate: u32) -> Child {
        self.command(&[
            "nearline",
            "produce",
            "--input",
            file.to_str().unwrap(),
            "--partitions",
            "4",
            "--rate",
            &rate.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
    }

    fn worker(&self, metrics_port: u16) -> Child {
        self.command(&[
            "nearline",
            "run",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
    }

    /// The state folding every event and impression in from scratch gives.
    async fn expected(&self, scratch: &Path) -> FeatureStore {
        let shown: Vec<Shown> = self
            .impressions
            .iter()
            .map(Shown::from_impression)
            .collect();
        from_scratch(
            &self.config(),
            &self.models,
            &self.version,
            &scratch.join("features"),
            &self.events,
            &shown,
        )
        .await
        .unwrap()
    }

    /// Polls the store until every member's state equals folding all events in from scratch.
    async fn converges(&self, within: Duration) -> Result<(), String> {
        let scratch = tempfile::tempdir().unwrap();
        let expected = self.expected(scratch.path()).await;
        let actual = FeatureStore::new(
            recsys_store::open(&self.config().store).await.unwrap(),
            1000,
        );
        let deadline = Instant::now() + within;
        loop {
            let mut problem = None;
            for m in 0..MEMBERS {
                let id = format!("m{m}");
                let want = expected.get(&id).await.unwrap();
                let got = actual.get(&id).await.unwrap();
                if let Err(e) = same_state(&got, &want, 1e-4) {
                    problem = Some(format!("{id}: {e}"));
                    break;
                }
            }
            match problem {
                None => return Ok(()),
                Some(p) if Instant::now() > deadline => return Err(p),
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// Waits for a producer, which must succeed (its output went to the test's own stderr).
fn finished(mut child: Child) {
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "a producer failed ({status}; see the stderr above)"
    );
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// SIGTERM, then how the child ended.
fn stop(child: &mut Child) -> std::process::ExitStatus {
    sigterm(child);
    child.wait().unwrap()
}

const APPLIED: &str = "recsys_nearline_events_total{outcome=\"applied\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_restarted_reflects_every_event_once() {
    let s = Setup::new(3000, TansuBroker::start_in_memory());
    let producer = s.produce(&s.events_file, 300);
    let port = free_port();
    let mut worker = s.worker(port);
    wait_until(
        "a third of the events applied",
        Duration::from_secs(90),
        || scrape(port, APPLIED) >= 1000.0,
    );
    // kill -9: whatever was applied but not committed is replayed by the next worker.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let port = free_port();
    let mut worker = s.worker(port);
    finished(producer);
    let converged = s.converges(Duration::from_secs(90)).await;
    // Graceful stop: SIGTERM ends the worker cleanly.
    let status = stop(&mut worker);
    converged.unwrap();
    assert!(status.success(), "worker exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_a_rebalance_mid_stream_reflect_every_event_once() {
    let s = Setup::new(3000, TansuBroker::start_in_memory());
    let producer = s.produce(&s.events_file, 300);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = s.worker(port_a);
    wait_until(
        "a third of the events applied",
        Duration::from_secs(90),
        || scrape(port_a, APPLIED) >= 1000.0,
    );
    let mut b = s.worker(port_b);
    wait_until(
        "the second worker's assignment",
        Duration::from_secs(90),
        || scrape(port_b, "recsys_nearline_rebalances_total{kind=\"assign\"}") >= 1.0,
    );
    finished(producer);
    let converged = s.converges(Duration::from_secs(90)).await;
    let applied_a = scrape(port_a, APPLIED);
    let applied_b = scrape(port_b, APPLIED);
    sigterm(&mut a);
    sigterm(&mut b);
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    converged.unwrap();
    assert!(
        applied_b > 0.0,
        "the second worker took partitions and applied events"
    );
    assert!(
        applied_a + applied_b >= 3000.0,
        "{applied_a} + {applied_b} applied"
    );
    assert!(sa.success() && sb.success(), "{sa} {sb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_restarted_mid_stream_loses_nothing() {
    let storage = tempfile::tempdir().unwrap();
    let broker = TansuBroker::start(
        free_port(),
        TansuStorage::Sqlite(storage.path().to_path_buf()),
    );
    let s = Setup::new(2000, broker);
    // First half, then the broker restarts, then the second half.
    let half = s.events.len() / 2;
    let write = |name: &str, events: &[Event]| {
        let path = s.events_file.with_file_name(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for e in events {
            f.write_all(&e.to_json()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        path
    };
    let first = write("first.jsonl", &s.events[..half]);
    let second = write("second.jsonl", &s.events[half..]);
    finished(s.produce(&first, 0));
    let port = free_port();
    let mut worker = s.worker(port);
    wait_until("some events applied", Duration::from_secs(90), || {
        scrape(port, APPLIED) >= 200.0
    });
    let mut s = s;
    s.broker.restart();
    finished(s.produce(&second, 0));
    let converged = s.converges(Duration::from_secs(120)).await;
    let status = stop(&mut worker);
    converged.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impressions_and_thumbs_downs_through_a_killed_worker_hide_what_from_scratch_hides() {
    let s = Setup::with_feedback(2000, TansuBroker::start_in_memory());
    // The reference must hide items both ways, or the comparison proves little.
    let scratch = tempfile::tempdir().unwrap();
    let expected = s.expected(scratch.path()).await;
    let (mut shown_hidden, mut blocked) = (0, 0);
    for m in 0..MEMBERS {
        for h in expected.get(&format!("m{m}")).await.unwrap().hidden {
            if h.until_ms == recsys_store::feedback::BLOCKED {
                blocked += 1;
            } else {
                shown_hidden += 1;
            }
        }
    }
    assert!(
        shown_hidden >= MEMBERS && blocked >= 10,
        "{shown_hidden} hidden by impressions, {blocked} by thumbs-downs"
    );

    let events = s.produce(&s.events_file, 300);
    let impressions = s.produce_impressions();
    let port = free_port();
    let mut worker = s.worker(port);
    wait_until(
        "a third of the events applied",
        Duration::from_secs(90),
        || scrape(port, APPLIED) >= 600.0,
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    // Tansu 0.6 keeps a dead group leader subscribed to two topics in the next generation
    // (the newcomer gets an empty assignment) unless its session expired first: wait it out.
    std::thread::sleep(Duration::from_secs(12));
    let port = free_port();
    let mut worker = s.worker(port);
    for producer in [events, impressions] {
        finished(producer);
    }
    // Every impression again: redeliveries change nothing.
    finished(s.produce_impressions());
    let converged = s.converges(Duration::from_secs(120)).await;
    let impressions_applied = scrape(port, "recsys_nearline_impressions_total");
    let status = stop(&mut worker);
    converged.unwrap();
    assert!(impressions_applied > 0.0, "the worker consumed impressions");
    assert!(status.success(), "{status}");
}
