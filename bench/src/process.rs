//! What the benchmarks that start a `recsys` server process share: a free port to give it,
//! waiting until it says it is ready, and reading its memory.

use std::time::{Duration, Instant};

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Asks `/readyz` at `metrics` until it answers 200; false after `within`.
pub async fn wait_ready(metrics: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(metrics).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`, `RssAnon:`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// MiB of each file mapped into process `pid` that is resident in it, by the file's name,
/// largest first: which of a version's files the resident file pages are.
pub fn resident_files_mib(pid: u32) -> Vec<(String, f64)> {
    let mut files: Vec<(String, f64)> = recsys_shared::memory::resident_kib_by_file(Some(pid))
        .into_iter()
        .map(|(path, kib)| {
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            (name, kib as f64 / 1024.0)
        })
        .collect();
    files.sort_by(|a, b| b.1.total_cmp(&a.1));
    files
}
