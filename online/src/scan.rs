//! Batched whole-catalog scans of member vectors (`online.batch`).
//!
//! A request that needs its member's vector scored against the whole catalog joins a queue. The
//! scan thread takes the first queued request, then every other one already queued (up to
//! `max_members`, waiting at most `max_wait_us` for more), and scores them all in one pass over
//! the item codes ([`ItemMatrix::top_k_batch`], which spreads a large catalog's pass over every
//! core), each with its own filter and `k`; the answers go back to the waiting requests. A lone
//! request is a batch of one and waits for nothing; requests arriving during a pass form the
//! next one, so under load batches fill by themselves.
//!
//! A request whose deadline passed while it was queued is answered without being scanned. A scan
//! that panics answers its batch with an error and the thread carries on. Owns no catalog: each
//! request brings the one it was admitted with, and requests on different catalogs (experiment
//! variants) share a pass only with their own.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_shared::config::ScanBatchConfig;
use recsys_shared::model::ials::{BatchQuery, ItemMatrix};
use recsys_shared::model::top_k::Scored;
use recsys_shared::model::Scorer;
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::metrics::{SCAN_BATCH_MEMBERS, SCAN_QUEUE_SECONDS};

/// Which items a request may be shown, asked from a scan thread.
pub type ItemFilter = Box<dyn Fn(u32) -> bool + Send + Sync>;

/// Why a queued scan gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The request's deadline passed while it waited in the queue.
    #[error("the deadline passed while the scan was queued")]
    DeadlineExceeded,
    /// The queue is full (only when `online.max_in_flight` admits more requests than it holds).
    #[error("the scan queue is full")]
    Full,
    /// The scan failed (a panic, logged) or the scan thread is gone.
    #[error("the scan failed: {0}")]
    Failed(String),
}

struct Job {
    catalog: Arc<Catalog>,
    user: Vec<f32>,
    k: usize,
    allowed: ItemFilter,
    deadline: Instant,
    queued: Instant,
    reply: oneshot::Sender<Result<Vec<Scored>, ScanError>>,
}

/// The queue and its scan thread; the thread ends when the queue is dropped.
pub struct ScanQueue {
    sender: SyncSender<Job>,
    passes: Arc<Passes>,
}

/// What one queue's thread has scanned (the process-wide histogram sums every queue).
#[derive(Debug, Default)]
pub struct Passes {
    passes: AtomicU64,
    members: AtomicU64,
}

impl Passes {
    /// Passes over the catalog so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Member vectors scored in those passes.
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::Relaxed)
    }

    fn record(&self, members: usize) {
        SCAN_BATCH_MEMBERS.observe(members as f64);
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.members.fetch_add(members as u64, Ordering::Relaxed);
    }
}

impl ScanQueue {
    /// Starts the scan thread.
    pub fn start(config: &ScanBatchConfig) -> ScanQueue {
        // Admission bounds the requests in progress, so the queue holds at most that many; the
        // bound only matters when `online.max_in_flight` is set above it.
        let max_members = config.max_members.max(1);
        let (sender, receiver) = mpsc::sync_channel(max_members * 64);
        let max_wait = Duration::from_micros(config.max_wait_us);
        let passes = Arc::new(Passes::default());
        let counted = passes.clone();
        std::thread::Builder::new()
            .name("recsys-scan".into())
            .spawn(move || scan_thread(&receiver, max_members, max_wait, &counted))
            .expect("spawns the scan thread");
        ScanQueue { sender, passes }
    }

    /// What this queue's thread has scanned.
    pub fn passes(&self) -> &Passes {
        &self.passes
    }

    /// The member's `k` best items among `allowed` by the catalog's factor scorer, scored in the
    /// next pass (refused when the catalog's model does not score vectors: a history family).
    pub async fn top_k(
        &self,
        catalog: Arc<Catalog>,
        user: Vec<f32>,
        k: usize,
        allowed: ItemFilter,
        deadline: Instant,
    ) -> Result<Vec<Scored>, ScanError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            catalog,
            user,
            k,
            allowed,
            deadline,
            queued: Instant::now(),
            reply,
        };
        self.sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ScanError::Full,
            TrySendError::Disconnected(_) => ScanError::Failed("the scan thread is gone".into()),
        })?;
        answer
            .await
            .map_err(|_| ScanError::Failed("the scan thread dropped the request".into()))?
    }
}

fn scan_thread(receiver: &Receiver<Job>, max_members: usize, max_wait: Duration, passes: &Passes) {
    loop {
        let Some(jobs) = next_batch(receiver, max_members, max_wait) else {
            return;
        };
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            SCAN_QUEUE_SECONDS.observe(now.duration_since(job.queued).as_secs_f64());
            if job.deadline <= now {
                let _ = job.reply.send(Err(ScanError::DeadlineExceeded));
            } else {
                live.push(job);
            }
        }
        // Requests on the same catalog share a pass (there is one catalog unless an experiment
        // pins another version).
        while !live.is_empty() {
            let catalog = live[0].catalog.clone();
            let (same, rest): (Vec<Job>, Vec<Job>) = live
                .into_iter()
                .partition(|j| Arc::ptr_eq(&j.catalog, &catalog));
            live = rest;
            scan(&catalog, same, passes);
        }
    }
}

/// The first queued job (waiting for it) and the ones queued behind it.
fn next_batch(
    receiver: &Receiver<Job>,
    max_members: usize,
    max_wait: Duration,
) -> Option<Vec<Job>> {
    let first = receiver.recv().ok()?;
    let mut jobs = vec![first];
    let until = Instant::now() + max_wait;
    while jobs.len() < max_members {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match receiver.recv_timeout(left) {
                    Ok(job) => jobs.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
    }
    Some(jobs)
}

fn scan(catalog: &Catalog, jobs: Vec<Job>, passes: &Passes) {
    let Scorer::Factors(items) = &catalog.model.scorer else {
        for job in jobs {
            let _ = job.reply.send(Err(ScanError::Failed(
                "a vector scan of a model without item factors".into(),
            )));
        }
        return;
    };
    let (jobs, misfits): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| job.user.len() == items.factors());
    for job in misfits {
        let why = format!(
            "a member vector of {} factors for a model of {}",
            job.user.len(),
            items.factors()
        );
        let _ = job.reply.send(Err(ScanError::Failed(why)));
    }
    if jobs.is_empty() {
        return;
    }
    passes.record(jobs.len());
    match std::panic::catch_unwind(AssertUnwindSafe(|| answers(items, &jobs))) {
        Ok(answers) => {
            for (job, answer) in jobs.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(members = jobs.len(), error = %why, "a batched scan failed");
            for job in jobs {
                let _ = job.reply.send(Err(ScanError::Failed(why.clone())));
            }
        }
    }
}

fn answers(items: &ItemMatrix, jobs: &[Job]) -> Vec<Vec<Scored>> {
    let queries: Vec<BatchQuery> = jobs
        .iter()
        .map(|job| BatchQuery {
            user: &job.user,
            k: job.k,
            allowed: job.allowed.as_ref(),
        })
        .collect();
    items.top_k_batch(&queries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_shared::artifact::synthetic::synthetic_model;
    use recsys_shared::artifact::ModelRoot;

    fn catalog(dir: &std::path::Path) -> Arc<Catalog> {
        let version = synthetic_model(dir, 3_000, 5, 32, 9).unwrap();
        Arc::new(Catalog::load(&ModelRoot::new(dir), &version).unwrap())
    }

    fn vector(seed: u32) -> Vec<f32> {
        (0..32)
            .map(|j| ((seed * 31 + j * 17) % 23) as f32 / 11.0 - 1.0)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_requests_share_a_pass_and_get_their_own_answers() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path());
        let Scorer::Factors(items) = &catalog.model.scorer else {
            panic!("a factor model")
        };
        // Waiting up to 100 ms for eight requests: they share passes.
        let queue = Arc::new(ScanQueue::start(&ScanBatchConfig {
            enabled: true,
            max_members: 8,
            max_wait_us: 100_000,
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        let asks: Vec<_> = (0..8u32)
            .map(|m| {
                let queue = queue.clone();
                let catalog = catalog.clone();
                tokio::spawn(async move {
                    queue
                        .top_k(
                            catalog,
                            vector(m),
                            5 + m as usize,
                            Box::new(move |i| i % (m + 2) != 0),
                            deadline,
                        )
                        .await
                })
            })
            .collect();
        for (m, ask) in asks.into_iter().enumerate() {
            let got = ask.await.unwrap().unwrap();
            let m = m as u32;
            let alone = items.top_k(&vector(m), 5 + m as usize, |i| i % (m + 2) != 0);
            assert_eq!(got, alone, "member {m}");
            assert_eq!(got.len(), 5 + m as usize);
        }
        // This queue's own counts: other tests' queues feed the process-wide histogram at the
        // same time.
        let batches = queue.passes().passes();
        assert_eq!(queue.passes().members(), 8);
        assert!(
            batches < 8,
            "8 requests queued together took {batches} passes"
        );
    }

    #[tokio::test]
    async fn late_or_malformed_requests_are_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path());
        let queue = ScanQueue::start(&ScanBatchConfig::default());
        let passed = Instant::now() - Duration::from_millis(1);
        let late = queue
            .top_k(catalog.clone(), vector(1), 5, Box::new(|_| true), passed)
            .await;
        assert_eq!(late, Err(ScanError::DeadlineExceeded));
        let later = Instant::now() + Duration::from_secs(10);
        let narrow = queue
            .top_k(catalog.clone(), vec![1.0; 31], 5, Box::new(|_| true), later)
            .await;
        assert!(
            matches!(&narrow, Err(ScanError::Failed(why)) if why.contains("31 factors")),
            "{narrow:?}"
        );
        let fine = queue
            .top_k(catalog, vector(2), 5, Box::new(|_| true), later)
            .await
            .unwrap();
        assert_eq!(fine.len(), 5, "the queue still answers");
    }
}
