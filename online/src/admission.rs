//! Admission control and request accounting, as a tower layer in front of every gRPC service.
//!
//! Scoring is CPU work on two cores; when requests arrive faster than they finish, queueing them
//! all only makes every one of them late. So a Ranking request first takes one of
//! `online.max_in_flight` slots; when none is free it waits in a queue of at most
//! `online.max_queued`, and beyond that it is **shed at once** with `RESOURCE_EXHAUSTED` — before
//! its message is even decoded, so shedding costs microseconds. A queued request whose deadline
//! passes is answered `DEADLINE_EXCEEDED` without being worked on. Health checks and reflection
//! are never shed (a probe must see an overloaded server as alive).
//!
//! The layer also stamps each request with its deadline (the client's `grpc-timeout`, capped by
//! `online.max_request_ms`, counted from arrival) and records every answer in
//! `recsys_rpc_requests_total` / `recsys_rpc_latency_seconds` — including those that never reach
//! a handler (shed, undecodable, unknown method).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::auth::ApiKeys;
use crate::metrics::{IN_FLIGHT, LATENCY, QUEUED, REQUESTS, SHED};

/// When the request must be answered by: stamped on arrival, read by the handlers.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub Instant);

/// The slots and the queue.
pub struct Admission {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    queued: AtomicUsize,
    /// `recsys_rpc_queued` (a gauge of its own in unit tests).
    queued_gauge: IntGauge,
    max_queued: usize,
    max_request: Duration,
}

impl Admission {
    pub fn new(max_in_flight: usize, max_queued: usize, max_request: Duration) -> Arc<Self> {
        Arc::new(Admission {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            max_in_flight: max_in_flight.max(1),
            queued: AtomicUsize::new(0),
            queued_gauge: QUEUED.clone(),
            max_queued,
            max_request,
        })
    }

    /// A slot, after waiting in the queue if there is room in it; `RESOURCE_EXHAUSTED` at once when
    /// there is none, `DEADLINE_EXCEEDED` when `deadline` passes in the queue.
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Status> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // The place in the queue is held by a guard, so a caller that stops waiting (a client
        // that cancels, a connection that closes: the future is dropped) gives it back too.
        let place = QueuePlace::take(&self.queued);
        if place.ahead >= self.max_queued {
            let ahead = place.ahead;
            drop(place);
            SHED.with_label_values(&["queue_full"]).inc();
            return Err(Status::resource_exhausted(format!(
                "server overloaded: {} requests in progress and {ahead} queued; retry with backoff",
                self.max_in_flight
            )));
        }
        let _counted = place.counted(&self.queued_gauge);
        let waited = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await;
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(Status::unavailable("server shutting down")),
            Err(_) => {
                SHED.with_label_values(&["deadline_in_queue"]).inc();
                Err(Status::deadline_exceeded(
                    "deadline passed while queued behind other requests",
                ))
            }
        }
    }

    /// The deadline of a request arriving now with these headers.
    pub fn deadline(&self, headers: &http::HeaderMap) -> Instant {
        self.deadline_after(grpc_timeout(headers))
    }

    /// The deadline of a request arriving now that asks for `timeout` (capped by
    /// `online.max_request_ms`).
    pub fn deadline_after(&self, timeout: Option<Duration>) -> Instant {
        Instant::now() + timeout.map_or(self.max_request, |t| t.min(self.max_request))
    }
}

/// The client's `grpc-timeout` header, if it has a valid one.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    // The spec allows at most 8 digits.
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount = digits.parse::<u64>().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The RPC's metric label, from a bounded set (the names in [`recsys_shared::rpcs::RPCS`]).
fn rpc_label(path: &str) -> &'static str {
    recsys_shared::rpcs::of_path(path).map_or("unknown", |rpc| rpc.name)
}

/// The status of a unary gRPC answer: in the headers when the call failed before a message
/// (a trailers-only answer), otherwise `Ok` (tonic puts a handler's success in the trailers).
fn status_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// Counts one answer of `transport` (`grpc`, `rest`) and its latency from arrival.
pub(crate) fn record(rpc: &str, code: Code, started: Instant, transport: &str) {
    let code = format!("{code:?}");
    REQUESTS.with_label_values(&[rpc, &code, transport]).inc();
    LATENCY
        .with_label_values(&[rpc, &code, transport])
        .observe(started.elapsed().as_secs_f64());
}

/// The tower layer over the whole router: the API-key check (when configured), then admission.
#[derive(Clone)]
pub struct AdmissionLayer {
    pub admission: Arc<Admission>,
    pub keys: Option<Arc<ApiKeys>>,
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.admission.clone(),
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Arc<Admission>,
    keys: Option<Arc<ApiKeys>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Admitted<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let rpc = rpc_label(request.uri().path());
        let deadline = self.admission.deadline(request.headers());
        request.extensions_mut().insert(RequestDeadline(deadline));
        // The clone that was made ready is the one that is called (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = self.admission.clone();
        // Refused before it takes a slot or is decoded.
        if let Some(keys) = &self.keys {
            if let Err(status) = keys.check(rpc, request.headers()) {
                record(rpc, status.code(), started, "grpc");
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(async move {
            let ranking = recsys_shared::rpcs::named(rpc).is_some_and(|r| r.ranking);
            let permit = if ranking {
                match admission.admit(deadline).await {
                    Ok(permit) => Some(permit),
                    Err(status) => {
                        record(rpc, status.code(), started, "grpc");
                        return Ok(status.into_http());
                    }
                }
            } else {
                None
            };
            let _in_flight = permit.as_ref().map(|_| InFlight::enter());
            let response = inner.call(request).await?;
            record(rpc, status_of(response.headers()), started, "grpc");
            Ok(response)
        })
    }
}

/// A place in the admission queue, given back when dropped — whether the wait ended or the
/// waiting future was dropped with it.
struct QueuePlace<'a> {
    queued: &'a AtomicUsize,
    /// How many were queued ahead when the place was taken.
    ahead: usize,
}

impl<'a> QueuePlace<'a> {
    fn take(queued: &'a AtomicUsize) -> Self {
        let ahead = queued.fetch_add(1, Ordering::AcqRel);
        QueuePlace { queued, ahead }
    }

    /// Counted in `gauge` (`recsys_rpc_queued`) too, for as long as both are held.
    fn counted(self, gauge: &IntGauge) -> (Self, QueuedGauge) {
        gauge.inc();
        (self, QueuedGauge(gauge.clone()))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request in `recsys_rpc_queued` while it is held.
struct QueuedGauge(IntGauge);

impl Drop for QueuedGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts a request in `recsys_rpc_in_flight` while it is held.
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn enter() -> Self {
        IN_FLIGHT.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_parse_from_grpc_timeout() {
        let admission = Admission::new(1, 0, Duration::from_secs(5));
        let mut headers = http::HeaderMap::new();
        let within = |headers: &http::HeaderMap, expect: Duration| {
            let left = admission.deadline(headers) - Instant::now();
            assert!(
                left <= expect && left + Duration::from_millis(50) > expect,
                "{left:?} vs {expect:?}"
            );
        };
        within(&headers, Duration::from_secs(5));
        headers.insert("grpc-timeout", "250m".parse().unwrap());
        within(&headers, Duration::from_millis(250));
        headers.insert("grpc-timeout", "2H".parse().unwrap());
        within(&headers, Duration::from_secs(5));
        for bad in ["x", "m", "123456789S", "5X"] {
            headers.insert("grpc-timeout", bad.parse().unwrap());
            within(&headers, Duration::from_secs(5));
        }
    }

    #[tokio::test]
    async fn a_full_queue_sheds_at_once_and_a_queued_request_waits_for_a_slot() {
        let admission = Admission::new(1, 1, Duration::from_secs(5));
        let far = Instant::now() + Duration::from_secs(5);
        let held = admission.admit(far).await.unwrap();
        let queued = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(far).await.map(|_| ()) })
        };
        while admission.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let shed = admission.admit(far).await.unwrap_err();
        assert_eq!(shed.code(), Code::ResourceExhausted);
        assert!(shed.message().contains("overloaded"), "{}", shed.message());
        drop(held);
        queued
            .await
            .unwrap()
            .expect("the queued request got the freed slot");
        // A queued request whose deadline passes is not worked on.
        let _held = admission.admit(far).await.unwrap();
        let late = admission
            .admit(Instant::now() + Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert_eq!(admission.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_its_place_in_the_queue_back() {
        let mut admission = Admission::new(1, 2, Duration::from_secs(5));
        Arc::get_mut(&mut admission).unwrap().queued_gauge =
            IntGauge::new("queued", "this test's own gauge").unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        let held = admission.admit(far).await.unwrap();
        // Two callers wait, then go away the way a cancelled call does: their futures dropped.
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit(far).await.map(|_| ()) })
            })
            .collect();
        // Both counted in the gauge, as a scrape would show them.
        while admission.queued_gauge.get() < 2 {
            tokio::task::yield_now().await;
        }
        for task in waiting {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert_eq!(admission.queued.load(Ordering::Acquire), 0);
        assert_eq!(
            admission.queued_gauge.get(),
            0,
            "recsys_rpc_queued back at 0"
        );
        // The queue has room again: two more wait instead of being shed.
        let again: Vec<_> = (0..2)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit(far).await.map(|_| ()) })
            })
            .collect();
        while admission.queued.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in again {
            task.await
                .unwrap()
                .expect("admitted after the slot was freed");
        }
    }

    #[test]
    fn statuses_and_labels() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), Code::Ok);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(status_of(&headers), Code::InvalidArgument);
        assert_eq!(rpc_label("/recsys.v1.Ranking/Rank"), "Rank");
        assert_eq!(rpc_label("/grpc.health.v1.Health/Check"), "Health");
        assert_eq!(rpc_label("/evil/../path"), "unknown");
    }
}
