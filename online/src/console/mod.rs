//! The console: what a homepage team looks at every day, served as HTML under `/console` on the
//! REST port (`online.rest_listen`, `online.console`).
//!
//! Four pages, each one server-rendered document that works without JavaScript: [`models`]
//! (versions, their evaluation and the gate's verdict, promote and roll back), [`experiments`]
//! (the file in force, the last refused one, requests per variant), [`member`] (a member's
//! homepage as they see it, with the reason for each item) and [`health`] (the last hour of the
//! server's — and its workers' — series from an in-process ring buffer; a small script only
//! refreshes the plots).
//!
//! Access goes through the API keys (`online.auth`): a key granted `ConsoleRead` sees every page,
//! `ConsoleOperate` may also move `CURRENT`. A browser signs in once with its key (a form) and
//! holds a session cookie (`HttpOnly`, `SameSite=Strict`); scripts may send the key as for the
//! API. With `online.auth` off, everyone is an operator. Every form that changes something
//! carries the session's CSRF token and asks for confirmation first.
//!
//! This module owns the pages; it ranks through [`Ranker`] like every transport and moves
//! `CURRENT` only as `recsys offline rollback` does: `ModelRoot::rollback` under the root's
//! writer lock, or on the object-storage root this server mirrors, `RemoteModelRoot::rollback`
//! under a lease with a compare-and-swap.

pub mod experiments;
pub mod health;
pub mod member;
pub mod models;
mod page;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use recsys_shared::artifact::ModelRoot;
use recsys_shared::config::ConsoleConfig;

use crate::auth::ApiKeys;
use crate::metrics::CONSOLE_RENDER;
use crate::rpc::Ranker;

pub use health::Sampler;
use session::{Caller, Sessions};

/// The cookie holding a browser's session.
const COOKIE: &str = "recsys_console";

/// What every console handler shares.
#[derive(Clone)]
pub struct ConsoleState {
    pub ranker: Arc<Ranker>,
    pub keys: Option<Arc<ApiKeys>>,
    pub root: ModelRoot,
    /// The model root is a mirror of one on object storage: `CURRENT` moves there, not here.
    pub mirrored_from: Option<String>,
    pub sampler: Arc<Sampler>,
    /// Where the take-rate reports are (`experiment-<name>.json`).
    pub reports: std::path::PathBuf,
    sessions: Arc<Sessions>,
    /// Cookies only over TLS.
    secure: bool,
}

impl ConsoleState {
    pub fn new(
        ranker: Arc<Ranker>,
        keys: Option<Arc<ApiKeys>>,
        root: ModelRoot,
        mirrored_from: Option<String>,
        sampler: Arc<Sampler>,
        config: &ConsoleConfig,
        secure: bool,
    ) -> Self {
        let reports = config
            .reports_dir
            .clone()
            .unwrap_or_else(|| root.path().join("reports"));
        ConsoleState {
            reports,
            ranker,
            keys,
            root,
            mirrored_from,
            sampler,
            sessions: Arc::new(Sessions::new(Duration::from_secs(
                config.session_hours * 3600,
            ))),
            secure,
        }
    }
}

/// The console's routes, all under `/console`.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/models") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/models") }),
        )
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route(
            "/console/style.css",
            get(|| async { static_file("text/css", page::STYLE) }),
        )
        .route(
            "/console/live.js",
            get(|| async { static_file("text/javascript", page::LIVE_JS) }),
        )
        .route("/console/models", get(models_page))
        .route("/console/models/{version}", get(model_page))
        .route(
            "/console/models/{version}/promote",
            get(promote_confirm).post(promote),
        )
        .route("/console/experiments", get(experiments_page))
        .route("/console/member", get(member_page))
        .route("/console/health", get(health_page))
        .route("/console/health/plots", get(health_plots))
        .with_state(state)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The caller of a page that needs `ConsoleRead`; a handler taking one is only run for such a
/// caller (see [`authorise`] for the answer otherwise).
struct Reader(Caller);

/// The caller of a page that needs `ConsoleOperate` as well.
struct Operator(Caller);

impl axum::extract::FromRequestParts<ConsoleState> for Reader {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ConsoleState,
    ) -> Result<Self, Response> {
        authorise(state, &parts.headers, false)
            .map(Reader)
            .map_err(|r| *r)
    }
}

impl axum::extract::FromRequestParts<ConsoleState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ConsoleState,
    ) -> Result<Self, Response> {
        authorise(state, &parts.headers, true)
            .map(Operator)
            .map_err(|r| *r)
    }
}

/// The caller of a page that needs `ConsoleRead` (and `ConsoleOperate` when `operate`), or the
/// answer instead: the sign-in page for a browser without a session, 401/403 otherwise.
fn authorise(
    state: &ConsoleState,
    headers: &HeaderMap,
    operate: bool,
) -> Result<Caller, Box<Response>> {
    let caller = match &state.keys {
        None => Caller::anonymous(),
        Some(keys) => match session::presented_key(headers) {
            Some(key) => match Caller::from_key(keys, key) {
                Some(caller) => caller,
                None => {
                    return Err(Box::new(page::error(
                        StatusCode::UNAUTHORIZED,
                        "The API key is not valid.",
                    )))
                }
            },
            None => match session::cookie(headers, COOKIE).and_then(|t| state.sessions.get(t)) {
                Some(caller) => caller,
                None => return Err(Box::new(Redirect::to("/console/login").into_response())),
            },
        },
    };
    if !caller.read {
        return Err(Box::new(page::error(
            StatusCode::FORBIDDEN,
            &format!(
                "The key {:?} may not use the console (ConsoleRead).",
                caller.name
            ),
        )));
    }
    if operate && !caller.operate {
        return Err(Box::new(page::error(
            StatusCode::FORBIDDEN,
            &format!(
                "The key {:?} has the read-only role: moving CURRENT needs ConsoleOperate.",
                caller.name
            ),
        )));
    }
    Ok(caller)
}

/// A rendered page, timed into `recsys_console_render_seconds`.
fn timed(name: &'static str, render: impl FnOnce() -> Response) -> Response {
    let timer = CONSOLE_RENDER.with_label_values(&[name]).start_timer();
    let response = render();
    timer.observe_duration();
    response
}

async fn login_form(State(state): State<ConsoleState>) -> Response {
    if state.keys.is_none() {
        return Redirect::to("/console/models").into_response();
    }
    page::login(None)
}

async fn login(State(state): State<ConsoleState>, body: axum::body::Bytes) -> Response {
    let Some(keys) = &state.keys else {
        return Redirect::to("/console/models").into_response();
    };
    let form = page::form(&body);
    let key = form.get("key").map(String::as_str).unwrap_or("");
    let Some(caller) = Caller::from_key(keys, key) else {
        return page::login(Some("That key is not valid."));
    };
    if !caller.read {
        return page::login(Some(
            "That key may not use the console (it lacks ConsoleRead).",
        ));
    }
    let token = state.sessions.start(caller);
    let secure = if state.secure { "; Secure" } else { "" };
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/console/models".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict{secure}"),
            ),
        ],
    )
        .into_response()
}

async fn logout(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Some(token) = session::cookie(&headers, COOKIE) {
        state.sessions.end(token);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/console/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

async fn models_page(State(state): State<ConsoleState>, Reader(caller): Reader) -> Response {
    blocking("models", move || models::list(&state, &caller)).await
}

async fn model_page(
    State(state): State<ConsoleState>,
    Path(version): Path<String>,
    Reader(caller): Reader,
) -> Response {
    blocking("model", move || models::detail(&state, &caller, &version)).await
}

async fn promote_confirm(
    State(state): State<ConsoleState>,
    Path(version): Path<String>,
    Operator(caller): Operator,
) -> Response {
    let timer = CONSOLE_RENDER.with_label_values(&["promote"]).start_timer();
    let response = models::confirm(&state, &caller, &version).await;
    timer.observe_duration();
    response
}

async fn promote(
    State(state): State<ConsoleState>,
    Path(version): Path<String>,
    Operator(caller): Operator,
    body: axum::body::Bytes,
) -> Response {
    let form = page::form(&body);
    if !caller.csrf_ok(form.get("csrf").map(String::as_str)) {
        return page::error(
            StatusCode::FORBIDDEN,
            "The form is stale or came from another site; open the page again.",
        );
    }
    let expected = form.get("expected").cloned().unwrap_or_default();
    models::promote(&state, &caller, &version, &expected).await
}

async fn experiments_page(State(state): State<ConsoleState>, Reader(caller): Reader) -> Response {
    timed("experiments", || experiments::page(&state, &caller))
}

async fn member_page(
    State(state): State<ConsoleState>,
    uri: axum::http::Uri,
    Reader(caller): Reader,
) -> Response {
    let timer = CONSOLE_RENDER.with_label_values(&["member"]).start_timer();
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let response = member::page(&state, &caller, get("id"), get("country")).await;
    timer.observe_duration();
    response
}

async fn health_page(State(state): State<ConsoleState>, Reader(caller): Reader) -> Response {
    timed("health", || health::page(&state, &caller))
}

async fn health_plots(State(state): State<ConsoleState>, _: Reader) -> Response {
    timed("health_plots", || health::plots(&state))
}

/// A page that reads files (manifests, `CURRENT`), rendered off the async workers.
async fn blocking(
    name: &'static str,
    render: impl FnOnce() -> Response + Send + 'static,
) -> Response {
    tokio::task::spawn_blocking(move || timed(name, render))
        .await
        .unwrap_or_else(|e| {
            page::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("rendering the page failed: {e}"),
            )
        })
}
