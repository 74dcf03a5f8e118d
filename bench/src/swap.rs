//! `recsys online bench --swap`: a version hot-swapped while the server is under load — failed
//! requests, how long the swap took, and the server's memory before and during it.
//!
//! The new version is the served one published again under a new id (its files hard-linked,
//! hashed and committed like any version, then `CURRENT` moved), so a ten-million-item swap costs
//! what loading costs, not another training or index build. Peak memory during the swap is the
//! kernel's high-water mark reset just before publishing (`/proc/PID/clear_refs` = 5), checked
//! against RSS sampled every 50 ms.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_shared::artifact::ModelRoot;

use crate::process::proc_status_kib;

/// What one hot swap under load cost.
#[derive(Debug, Clone)]
pub(crate) struct SwapFigures {
    /// RSS with the first version served, under load, just before publishing.
    pub steady_rss_mib: f64,
    /// The least and the most RSS sampled over the steady window.
    pub steady_range_mib: (f64, f64),
    /// The most RSS from publishing until the new version served.
    pub peak_rss_mib: f64,
    /// Anonymous and file-backed RSS of the sample with the most RSS (every 50 ms): what the peak
    /// is made of.
    pub peak_sample_anon_file_mib: (f64, f64),
    /// Publishing the new version (hard links, hashes, `CURRENT` moved).
    pub publish_seconds: f64,
    /// From `CURRENT` moved to the server serving the new version.
    pub swap_seconds: f64,
}

/// How long the steady RSS is sampled before the swap: the server's period of releasing mapped
/// rows (`online/src/server.rs`).
const STEADY_WINDOW: Duration = Duration::from_secs(10);

/// Publishes the version `CURRENT` names again under a new id and moves `CURRENT` to it.
pub(crate) fn republish(root: &Path) -> Result<String, String> {
    let root = ModelRoot::new(root);
    let lock = root.lock().map_err(|e| e.to_string())?;
    let served = root
        .current_version()
        .map_err(|e| e.to_string())?
        .ok_or("no CURRENT version to publish again")?;
    let manifest = root.manifest(&served).map_err(|e| e.to_string())?;
    let version = ModelRoot::new_version_id();
    let staged = root.stage(&lock, &version).map_err(|e| e.to_string())?;
    for name in manifest.files.keys() {
        let from = root.version_dir(&served).join(name);
        std::fs::hard_link(&from, staged.path(name))
            .map_err(|e| format!("{}: {e}", from.display()))?;
    }
    staged.commit(manifest).map_err(|e| e.to_string())?;
    root.set_current(&lock, &version)
        .map_err(|e| e.to_string())?;
    Ok(version)
}

/// Watches a server under load while a new version is published and swapped in: returns once the
/// server's swap counter moved (and `stop` is set two seconds later, ending the load), or with
/// an error after `limit`.
pub(crate) async fn watch(
    pid: u32,
    metrics_port: u16,
    models: &Path,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> Result<SwapFigures, String> {
    let swapped = move || {
        recsys_shared::ops::scrape(metrics_port, "recsys_model_swaps_total{result=\"swapped\"}")
    };
    let before = tokio::task::spawn_blocking(swapped)
        .await
        .map_err(|e| e.to_string())?;
    let rss = |field| proc_status_kib(pid, field).unwrap_or(0) as f64 / 1024.0;
    // The steady RSS is the mean over one period of the server's release of mapped rows: if
    // exact scans read rows, it rises with them and falls at each release, so one sample could
    // be taken anywhere between the two.
    let mut steady = Vec::new();
    let window = Instant::now();
    while window.elapsed() < STEADY_WINDOW {
        steady.push(rss("VmRSS:"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let steady_rss_mib = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    let steady_range_mib = steady.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    // Resets the high-water mark to the current RSS (root, or the owner of the process).
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    // The largest sample: (RSS, anonymous, file-backed) KiB.
    let sampled = Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64)));
    let sampler = {
        let sampled = sampled.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let kib = |field| proc_status_kib(pid, field).unwrap_or(0);
                let sample = (kib("VmRSS:"), kib("RssAnon:"), kib("RssFile:"));
                {
                    let mut most = sampled.lock().unwrap();
                    if sample.0 > most.0 {
                        *most = sample;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let result = async {
        let started = Instant::now();
        let root = models.to_path_buf();
        let version = tokio::task::spawn_blocking(move || republish(&root))
            .await
            .map_err(|e| e.to_string())??;
        let publish_seconds = started.elapsed().as_secs_f64();
        let moved = Instant::now();
        eprintln!("  published {version} in {publish_seconds:.1} s; waiting for the swap");
        loop {
            if tokio::task::spawn_blocking(swapped)
                .await
                .map_err(|e| e.to_string())?
                > before
            {
                break;
            }
            if moved.elapsed() > limit {
                return Err(format!(
                    "the server did not swap {version} in within {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let swap_seconds = moved.elapsed().as_secs_f64();
        // Load on the new version for a moment before the figures are taken.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let hwm = if reset { rss("VmHWM:") } else { 0.0 };
        let (most, anon, file) = *sampled.lock().unwrap();
        let peak = (most as f64 / 1024.0).max(hwm);
        Ok(SwapFigures {
            steady_rss_mib,
            steady_range_mib,
            peak_rss_mib: peak,
            peak_sample_anon_file_mib: (anon as f64 / 1024.0, file as f64 / 1024.0),
            publish_seconds,
            swap_seconds,
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    result
}
