//! `recsys online bench --console`: every console page timed on a server holding the bench's
//! catalog and members while Homepage traffic runs — the server's own render time
//! (`recsys_console_render_seconds`), the time a client waits, and the page's weight, against
//! the targets (≤ 300 ms server time, ≤ 200 KB).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http1::Connection;
use crate::process::{free_port, wait_ready};

/// Requests per page.
const ROUNDS: usize = 30;
/// Seconds of traffic and health samples before the pages are timed.
const WARM_SECONDS: u64 = 20;

/// Times the pages on a server of `models` whose members are `m0…m{members-1}`.
pub async fn run(members: usize, models: &Path) -> Result<serde_json::Value, String> {
    let (grpc, metrics, rest) = (free_port(), free_port(), free_port());
    let store = models.with_file_name("features");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["online", "serve"])
        .env("RECSYS__MODEL__ROOT", models)
        .env("RECSYS__STORE__EMBEDDED__PATH", &store)
        .env("RECSYS__ONLINE__LISTEN", format!("127.0.0.1:{grpc}"))
        .env(
            "RECSYS__ONLINE__METRICS_LISTEN",
            format!("127.0.0.1:{metrics}"),
        )
        .env("RECSYS__ONLINE__REST_LISTEN", format!("127.0.0.1:{rest}"))
        .env("RECSYS__ONLINE__CONSOLE__SAMPLE_SECONDS", "1")
        .env("RECSYS_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = async {
        if !wait_ready(&format!("127.0.0.1:{metrics}"), Duration::from_secs(300)).await {
            return Err("the server did not become ready".to_string());
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], rest));
        // Homepage traffic while the pages are timed (and before, so the plots have data).
        let traffic = tokio::spawn(async move {
            let mut connection = Connection::open(addr).await.ok()?;
            let mut n = 0usize;
            loop {
                let body = format!("{{\"user_id\":\"m{}\"}}", (n * 7919) % members);
                connection.post("/v1/homepage", body.as_bytes()).await.ok()?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            #[allow(unreachable_code)]
            Some(())
        });
        tokio::time::sleep(Duration::from_secs(WARM_SECONDS)).await;
        let version = std::fs::read_to_string(models.join("CURRENT"))
            .map_err(|e| e.to_string())?
            .trim()
            .to_string();
        let pages = [
            ("models", "/console/models".to_string()),
            ("model", format!("/console/models/{version}")),
            ("experiments", "/console/experiments".to_string()),
            ("member", format!("/console/member?id=m{}", members / 2)),
            ("health", "/console/health".to_string()),
        ];
        let mut connection = Connection::open(addr).await.map_err(|e| e.to_string())?;
        let mut report = serde_json::Map::new();
        for (page, path) in pages {
            let sum_before = scrape_page(metrics, page, "sum");
            let count_before = scrape_page(metrics, page, "count");
            let mut waits = Vec::with_capacity(ROUNDS);
            let mut bytes = 0;
            for _ in 0..ROUNDS {
                let started = Instant::now();
                let (status, body) = connection
                    .get(&path, &[])
                    .await
                    .map_err(|e| format!("{path}: {e}"))?;
                waits.push(started.elapsed().as_secs_f64() * 1000.0);
                if status != 200 {
                    return Err(format!("{path} answered {status}"));
                }
                bytes = body.len();
            }
            waits.sort_by(f64::total_cmp);
            let count = scrape_page(metrics, page, "count") - count_before;
            let server_ms = 1000.0 * (scrape_page(metrics, page, "sum") - sum_before) / count.max(1.0);
            let (p50, max) = (waits[waits.len() / 2], waits[waits.len() - 1]);
            let met = server_ms <= 300.0 && bytes <= 200 * 1024;
            eprintln!(
                "console {page}: server {server_ms:.2} ms mean, client p50 {p50:.2} ms, max {max:.2} ms; {:.1} KB (targets ≤ 300 ms, ≤ 200 KB: {})",
                bytes as f64 / 1024.0,
                if met { "met" } else { "NOT met" }
            );
            report.insert(
                page.to_string(),
                serde_json::json!({
                    "server_mean_ms": server_ms, "client_p50_ms": p50, "client_max_ms": max,
                    "bytes": bytes,
                }),
            );
        }
        traffic.abort();
        Ok(serde_json::Value::Object(report))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `recsys_console_render_seconds_{sum,count}` of one page.
fn scrape_page(port: u16, page: &str, part: &str) -> f64 {
    recsys_shared::ops::scrape(
        port,
        &format!("recsys_console_render_seconds_{part}{{page=\"{page}\"}}"),
    )
}
