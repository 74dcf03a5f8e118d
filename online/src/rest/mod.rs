//! The REST/JSON API beside gRPC (`online.rest_listen`): `POST /v1/rank`, `/v1/homepage` and
//! `/v1/similar-items` take and return the gRPC messages as JSON (the proto field names),
//! `POST /v1/events` takes a member's event (`online.event_ingest`, see [`crate::ingest`]), and
//! `GET /openapi.json` describes them.
//!
//! A REST call goes through what a gRPC call goes through, in the same order: the API-key check
//! (`authorization: Bearer <key>` or `x-api-key`, with the same per-RPC grants), the admission
//! queue (shed at once when full), the deadline (`x-timeout-ms`, capped by
//! `online.max_request_ms`), then the same [`Ranker`] call as the gRPC handler — the same
//! validation, limits and impression logging. Every answer is counted in
//! `recsys_rpc_requests_total` / `recsys_rpc_latency_seconds` with `transport="rest"`.
//!
//! Errors are JSON, `{"error": {"status": "INVALID_ARGUMENT", "field": "k", "message": "…"}}`,
//! with the HTTP status of the gRPC code (the mapping of google.rpc.Code). This module owns the
//! HTTP shape only; it must not rank, validate or authorise anything itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tonic::Code;

use crate::admission::{record, Admission, InFlight};
use crate::auth::ApiKeys;
use crate::ingest::EventIngest;
use crate::rpc::{RankError, Ranker};
use recsys_shared::event::Event;

/// The OpenAPI 3 document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The largest request body taken (a Rank with `MAX_EXCLUDED` long ids fits many times over).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// What every REST handler shares.
#[derive(Clone)]
pub struct RestState {
    pub ranker: Arc<Ranker>,
    pub admission: Arc<Admission>,
    pub keys: Option<Arc<ApiKeys>>,
    /// `POST /v1/events`, when `online.event_ingest` is on.
    pub ingest: Option<Arc<EventIngest>>,
}

/// The routes: the three RPCs and the document.
pub fn router(state: RestState) -> Router {
    Router::new()
        .route("/v1/rank", post(rank))
        .route("/v1/homepage", post(homepage))
        .route("/v1/similar-items", post(similar_items))
        .route("/v1/events", post(event))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn rank(State(state): State<RestState>, headers: HeaderMap, body: Bytes) -> Response {
    let ranker = state.ranker.clone();
    call(
        &state,
        "Rank",
        &headers,
        &body,
        |request, deadline| async move { ranker.answer_rank(request, deadline).await },
    )
    .await
}

async fn homepage(State(state): State<RestState>, headers: HeaderMap, body: Bytes) -> Response {
    let ranker = state.ranker.clone();
    call(
        &state,
        "Homepage",
        &headers,
        &body,
        |request, deadline| async move { ranker.answer_homepage(request, deadline).await },
    )
    .await
}

async fn similar_items(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ranker = state.ranker.clone();
    call(
        &state,
        "SimilarItems",
        &headers,
        &body,
        |request, deadline| async move { ranker.answer_similar_items(request, deadline).await },
    )
    .await
}

async fn event(State(state): State<RestState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(ingest) = state.ingest.clone() else {
        let started = Instant::now();
        record("IngestEvent", Code::Unimplemented, started, "rest");
        return error(
            Code::Unimplemented,
            None,
            "this server does not take events: `online.event_ingest` is off",
        );
    };
    let ranker = state.ranker.clone();
    call(
        &state,
        "IngestEvent",
        &headers,
        &body,
        |event: Event, deadline| async move {
            let catalog = ranker.catalog();
            let knows = |item: &str| catalog.as_ref().map(|c| c.index_of(item).is_some());
            let within = deadline.saturating_duration_since(Instant::now());
            ingest.ingest(event, knows, within).await
        },
    )
    .await
}

/// One call: key, admission, deadline, decoding, the ranker, the answer — each counted.
async fn call<Q, A, F, Fut>(
    state: &RestState,
    rpc: &'static str,
    headers: &HeaderMap,
    body: &[u8],
    answer: F,
) -> Response
where
    Q: DeserializeOwned,
    A: Serialize,
    F: FnOnce(Q, Instant) -> Fut,
    Fut: Future<Output = Result<A, RankError>>,
{
    let started = Instant::now();
    let failed = |code: Code, field: Option<&str>, message: String| {
        record(rpc, code, started, "rest");
        error(code, field, &message)
    };
    if let Some(keys) = &state.keys {
        if let Err(status) = keys.check(rpc, headers) {
            return failed(status.code(), None, status.message().to_string());
        }
    }
    let timeout = match timeout_of(headers) {
        Ok(timeout) => timeout,
        Err(message) => return failed(Code::InvalidArgument, Some("x-timeout-ms"), message),
    };
    let deadline = state.admission.deadline_after(timeout);
    let _permit = match state.admission.admit(deadline).await {
        Ok(permit) => permit,
        Err(status) => return failed(status.code(), None, status.message().to_string()),
    };
    let _in_flight = InFlight::enter();
    let request: Q = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return failed(Code::InvalidArgument, Some("body"), format!("body: {e}")),
    };
    match answer(request, deadline).await {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(json) => {
                record(rpc, Code::Ok, started, "rest");
                json_response(StatusCode::OK, json)
            }
            Err(e) => failed(Code::Internal, None, format!("encoding the answer: {e}")),
        },
        Err(e) => {
            let field = match &e {
                RankError::Invalid { field, .. } | RankError::NotFound { field, .. } => {
                    Some(*field)
                }
                _ => None,
            };
            let status = tonic::Status::from(e);
            failed(status.code(), field, status.message().to_string())
        }
    }
}

/// The client's `x-timeout-ms`, when it sends one.
fn timeout_of(headers: &HeaderMap) -> Result<Option<Duration>, String> {
    let Some(value) = headers.get("x-timeout-ms") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| format!("x-timeout-ms: {value:?} is not a positive number of milliseconds"))
}

/// The HTTP status of a gRPC code (as google.rpc.Code maps them).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).expect("a valid status"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code's canonical name, as the error body gives it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn json_response(status: StatusCode, json: Vec<u8>) -> Response {
    (
        status,
        [("content-type", HeaderValue::from_static("application/json"))],
        json,
    )
        .into_response()
}

fn error(code: Code, field: Option<&str>, message: &str) -> Response {
    let mut body = serde_json::json!({"status": code_name(code), "message": message});
    if let Some(field) = field {
        body["field"] = field.into();
    }
    let json = serde_json::json!({ "error": body })
        .to_string()
        .into_bytes();
    json_response(http_status(code), json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_an_http_status_and_a_name() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            assert_eq!(http_status(code).is_success(), code == Code::Ok, "{code:?}");
            assert_eq!(
                code_name(code).to_lowercase().replace('_', ""),
                format!("{code:?}").to_lowercase()
            );
        }
    }

    #[test]
    fn a_timeout_header_is_milliseconds_or_refused_by_name() {
        let mut headers = HeaderMap::new();
        assert_eq!(timeout_of(&headers), Ok(None));
        headers.insert("x-timeout-ms", HeaderValue::from_static("250"));
        assert_eq!(timeout_of(&headers), Ok(Some(Duration::from_millis(250))));
        for bad in ["0", "-5", "1.5", "soon"] {
            headers.insert("x-timeout-ms", HeaderValue::from_static(bad));
            assert!(
                timeout_of(&headers)
                    .unwrap_err()
                    .starts_with("x-timeout-ms"),
                "{bad}"
            );
        }
    }
}
