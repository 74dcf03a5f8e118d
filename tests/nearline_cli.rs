//! `recsys nearline produce` without a broker, and with events a worker would refuse: each a
//! prompt error naming the cause, nothing sent.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn produce(input: &std::path::Path, brokers: &str) -> (Output, Duration) {
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_recsys"))
        .args(["nearline", "produce", "--input", input.to_str().unwrap()])
        .args(["--brokers", brokers])
        .env("RECSYS_LOG", "warn")
        .output()
        .expect("recsys runs");
    (o, started.elapsed())
}

/// A port on loopback with nothing listening on it.
fn dead_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// The fault: with a dead broker `produce` printed nothing for more than 15 s (30 s per record),
/// even for an event it should have refused at once.
#[test]
fn produce_refuses_bad_events_before_sending_and_names_a_missing_broker_in_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let line = |user: &str, ts: i64| {
        format!(r#"{{"user_id":"{user}","item_id":"i1","event_type":"play","ts":{ts}}}"#)
    };
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n\n{}\n",
            line("m1", now),
            line("m2", -99_000_000_000_000_000)
        ),
    )
    .unwrap();
    let (o, took) = produce(&bad, &dead_port());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("bad.jsonl") && err.contains("line 3") && err.contains("`ts`"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "refused after {took:?}");

    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, format!("{}\n", line("m1", now))).unwrap();
    let broker = dead_port();
    let (o, took) = produce(&good, &broker);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no Kafka broker answered") && err.contains(&broker),
        "{err}"
    );
    assert!(took < Duration::from_secs(12), "gave up after {took:?}");
}
