//! The models page: every version in the model root with its family, evaluation (metrics with
//! their 95 % intervals, the popularity baseline) and the gate's verdict; which one `CURRENT`
//! names and which one this server serves; one version's curves and activity buckets; and
//! promote / roll back — a confirmation, then `CURRENT` moved as `recsys offline rollback` moves
//! it, refused when it moved since the confirmation was shown: on a local root under the
//! writer lock (`ModelRoot::rollback`), on a root this server mirrors from object storage under a
//! writer lease with the compare-and-swap on `CURRENT`'s ETag (`RemoteModelRoot::rollback`).

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use recsys_shared::artifact::{Evaluation, Manifest, ModelRoot, RemoteModelRoot};
use recsys_shared::object_storage::RemoteLocation;

use super::page::{self, esc, url, Line, Page};
use super::session::Caller;
use super::ConsoleState;

/// The metrics the versions table shows, in this order, when the evaluation has them.
const HEADLINE: [&str; 6] = [
    "recall@20",
    "ndcg@20",
    "ndcg@100",
    "recall@50",
    "recall@10",
    "ndcg@10",
];

/// Versions listed at most (newest first).
const MAX_LISTED: usize = 50;

fn headline(evaluation: &Evaluation) -> Vec<&str> {
    let shown: Vec<&str> = HEADLINE
        .iter()
        .copied()
        .filter(|m| evaluation.metrics.contains_key(*m))
        .take(2)
        .collect();
    if shown.is_empty() {
        evaluation
            .metrics
            .keys()
            .take(2)
            .map(String::as_str)
            .collect()
    } else {
        shown
    }
}

fn metric_cell(evaluation: &Evaluation, metric: &str) -> String {
    let Some(value) = evaluation.metrics.get(metric) else {
        return "–".into();
    };
    let interval = evaluation
        .intervals
        .get(metric)
        .map(|[lo, hi]| format!(" <span class=muted>[{lo:.4}, {hi:.4}]</span>"))
        .unwrap_or_default();
    let popularity = evaluation
        .popularity
        .get(metric)
        .map(|p| format!("<br><span class=muted>popularity {p:.4}</span>"))
        .unwrap_or_default();
    format!("{value:.4}{interval}{popularity}")
}

fn gate_tag(manifest: &Manifest) -> String {
    match &manifest.gate {
        Some(gate) => {
            let class = if gate.starts_with("refused") {
                "tag bad"
            } else if gate.contains("overridden") {
                "tag warn"
            } else {
                "tag"
            };
            format!("<span class=\"{class}\">{}</span>", esc(gate))
        }
        None => "<span class=muted>not recorded</span>".into(),
    }
}

/// The versions table.
pub fn list(state: &ConsoleState, caller: &Caller) -> Response {
    let mut page = Page::new("Models", "models");
    let current = state.root.current_version();
    let serving = state.ranker.catalog().map(|c| c.version.clone());
    let versions = match state.root.versions() {
        Ok(versions) => versions,
        Err(e) => {
            page.html(&format!(
                "<p class=err>The model root {} cannot be listed: {}</p>",
                esc(&state.root.path().display().to_string()),
                esc(&e.to_string())
            ));
            return page.render(caller);
        }
    };
    let current = match current {
        Ok(current) => current,
        Err(e) => {
            page.html(&format!(
                "<p class=err>CURRENT cannot be read: {}</p>",
                esc(&e.to_string())
            ));
            None
        }
    };
    let mut html = format!(
        "<p>Model root <code>{}</code>{} · CURRENT <b id=current>{}</b> · this server serves <b id=serving>{}</b></p>",
        esc(&state.root.path().display().to_string()),
        state
            .mirrored_from
            .as_ref()
            .map(|m| format!(" (mirror of <code>{}</code>)", esc(m)))
            .unwrap_or_default(),
        esc(current.as_deref().unwrap_or("none")),
        esc(serving.as_deref().unwrap_or("nothing yet")),
    );
    html.push_str(
        "<table id=versions><tr><th>Version</th><th>Created</th><th>Family</th><th>Data</th>\
         <th>Evaluation</th><th></th><th></th><th>Gate</th><th></th></tr>",
    );
    let newest_first: Vec<&String> = versions.iter().rev().take(MAX_LISTED).collect();
    for version in &newest_first {
        let is_current = current.as_deref() == Some(version.as_str());
        let mut tags = String::new();
        if is_current {
            tags.push_str(" <span class=\"tag cur\">CURRENT</span>");
        }
        if serving.as_deref() == Some(version.as_str()) {
            tags.push_str(" <span class=tag>serving</span>");
        }
        let _ = write!(
            html,
            "<tr data-version=\"{v}\"><td><a href=\"/console/models/{u}\">{v}</a>{tags}</td>",
            v = esc(version),
            u = url(version)
        );
        match state.root.manifest(version) {
            Ok(m) => {
                let _ = write!(
                    html,
                    "<td>{}</td><td>{}<br><span class=muted>{}</span></td><td class=n>{} members<br>{} items</td>",
                    m.created_at.format("%Y-%m-%d %H:%M UTC"),
                    esc(m.algorithm.family().name()),
                    esc(&m.algorithm.model.describe()),
                    m.rows.members,
                    m.rows.items,
                );
                match &m.evaluation {
                    Some(e) => {
                        let shown = headline(e);
                        let _ = write!(
                            html,
                            "<td class=muted>{}<br>{} members</td>",
                            esc(&e.protocol),
                            e.evaluated_members
                        );
                        for n in 0..2 {
                            match shown.get(n) {
                                Some(metric) => {
                                    let _ = write!(
                                        html,
                                        "<td class=n><span class=muted>{}</span><br>{}</td>",
                                        esc(metric),
                                        metric_cell(e, metric)
                                    );
                                }
                                None => html.push_str("<td></td>"),
                            }
                        }
                    }
                    None => html.push_str("<td class=muted colspan=3>not evaluated</td>"),
                }
                let _ = write!(html, "<td>{}</td>", gate_tag(&m));
            }
            Err(e) => {
                let _ = write!(
                    html,
                    "<td colspan=7 class=err>unreadable: {}</td>",
                    esc(&e.to_string())
                );
            }
        }
        if caller.operate && !is_current {
            let newer = current.as_deref().is_none_or(|c| version.as_str() > c);
            let _ = write!(
                html,
                "<td><a class=act href=\"/console/models/{}/promote\">{}</a></td></tr>",
                url(version),
                if newer { "Promote" } else { "Roll back to" }
            );
        } else {
            html.push_str("<td></td></tr>");
        }
    }
    html.push_str("</table>");
    if newest_first.is_empty() {
        html.push_str("<p>No version published yet: run <code>recsys offline train</code>.</p>");
    } else if versions.len() > MAX_LISTED {
        let _ = write!(
            html,
            "<p class=muted>The newest {MAX_LISTED} of {} versions.</p>",
            versions.len()
        );
    }
    page.html(&html);
    page.render(caller)
}

/// One version: its parameters, every metric with intervals, the curves and the buckets.
pub fn detail(state: &ConsoleState, caller: &Caller, version: &str) -> Response {
    let manifest = match state.root.manifest(version) {
        Ok(m) => m,
        Err(e) => return page::error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let mut page = Page::new(format!("Version {version}"), "models");
    let mut html = String::new();
    let _ = write!(
        html,
        "<p><a href=/console/models>All versions</a></p><table>\
         <tr><th>Family</th><td>{} ({})</td></tr><tr><th>Parameters</th><td>{}</td></tr>\
         <tr><th>Created</th><td>{}</td></tr><tr><th>Data</th><td>{} interactions, {} training pairs, {} members, {} items, {} catalog items</td></tr>\
         <tr><th>Events</th><td>{} → {}</td></tr><tr><th>Gate</th><td>{}</td></tr>\
         <tr><th>Tuning</th><td>{}</td></tr></table>",
        esc(manifest.algorithm.family().name()),
        esc(&manifest.algorithm.name),
        esc(&manifest.algorithm.model.describe()),
        manifest.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        manifest.rows.interactions,
        manifest.rows.training_pairs,
        manifest.rows.members,
        manifest.rows.items,
        manifest.rows.catalog_items,
        manifest
            .data_window
            .first_event
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "–".into()),
        manifest
            .data_window
            .last_event
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "–".into()),
        gate_tag(&manifest),
        manifest
            .algorithm
            .tuning
            .as_ref()
            .map(|t| format!("<code>{}</code>", esc(&t.to_string())))
            .unwrap_or_else(|| "defaults or the config".into()),
    );
    match &manifest.evaluation {
        None => html.push_str("<p>Trained with <code>--skip-eval</code>: no evaluation.</p>"),
        Some(e) => {
            let _ = write!(
                html,
                "<h2>Evaluation</h2><p class=muted>{}, {} members; 95 % bootstrap intervals</p>\
                 <table id=metrics><tr><th>Metric</th><th>Model</th><th>Interval</th><th>Popularity</th><th>Interval</th></tr>",
                esc(&e.protocol),
                e.evaluated_members
            );
            for (metric, value) in &e.metrics {
                let interval = |m: &std::collections::BTreeMap<String, [f64; 2]>| {
                    m.get(metric)
                        .map(|[lo, hi]| format!("[{lo:.4}, {hi:.4}]"))
                        .unwrap_or_else(|| "–".into())
                };
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td class=n>{value:.4}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                    esc(metric),
                    interval(&e.intervals),
                    e.popularity
                        .get(metric)
                        .map(|p| format!("{p:.4}"))
                        .unwrap_or_else(|| "–".into()),
                    interval(&e.popularity_intervals),
                );
            }
            html.push_str("</table>");
            if let Some(curves) = &e.curves {
                let depth = curves.recall.len() as f64;
                // The plot's x axis runs over k = 1..depth, drawn as "age" from depth down to 0.
                let line = |label, values: &[f64]| Line {
                    label,
                    points: values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (depth - 1.0 - i as f64, Some(*v)))
                        .collect(),
                };
                let _ = write!(
                    html,
                    "<h2>Curves (k = 1 … {depth})</h2><div class=plots><div class=plot>Recall@k<br>{}</div>\
                     <div class=plot>NDCG@k<br>{}</div></div>",
                    page::plot(
                        &[
                            line("model", &curves.recall),
                            line("popularity", &curves.popularity_recall)
                        ],
                        (depth - 1.0).max(1.0),
                        "",
                        ("k=1", &format!("k={depth}"))
                    ),
                    page::plot(
                        &[
                            line("model", &curves.ndcg),
                            line("popularity", &curves.popularity_ndcg)
                        ],
                        (depth - 1.0).max(1.0),
                        "",
                        ("k=1", &format!("k={depth}"))
                    ),
                );
            }
            if !e.by_activity.is_empty() {
                html.push_str("<h2>By member activity</h2><table><tr><th>History</th><th>Members</th><th>Model</th><th>Popularity</th></tr>");
                for bucket in &e.by_activity {
                    let metrics = |m: &std::collections::BTreeMap<String, f64>| {
                        m.iter()
                            .map(|(k, v)| format!("{} {v:.4}", esc(k)))
                            .collect::<Vec<_>>()
                            .join("<br>")
                    };
                    let _ = write!(
                        html,
                        "<tr><td>{}</td><td class=n>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&bucket.label),
                        bucket.members,
                        metrics(&bucket.metrics),
                        metrics(&bucket.popularity)
                    );
                }
                html.push_str("</table>");
            }
        }
    }
    page.html(&html);
    page.render(caller)
}

/// Where `CURRENT` is moved: the local root, or the object-storage root it mirrors.
enum Origin {
    Local,
    Remote(RemoteModelRoot),
}

fn origin(state: &ConsoleState) -> Result<Origin, String> {
    match &state.mirrored_from {
        None => Ok(Origin::Local),
        Some(url) => RemoteLocation::parse(url)
            .map(|location| Origin::Remote(RemoteModelRoot::new(location)))
            .map_err(|e| e.to_string()),
    }
}

/// What `CURRENT` names where it is moved.
async fn current_at(state: &ConsoleState, origin: &Origin) -> Result<Option<String>, String> {
    let read = match origin {
        Origin::Local => {
            let root = state.root.clone();
            tokio::task::spawn_blocking(move || root.current_version())
                .await
                .map_err(|e| e.to_string())?
        }
        Origin::Remote(remote) => remote.current_version().await,
    };
    read.map_err(|e| e.to_string())
}

/// "Make `version` current?" with what changes.
pub async fn confirm(state: &ConsoleState, caller: &Caller, version: &str) -> Response {
    let origin = match origin(state) {
        Ok(origin) => origin,
        Err(e) => return page::error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let manifest = match state.root.manifest(version) {
        Ok(m) => m,
        Err(e) => return page::error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let current = match current_at(state, &origin).await {
        Ok(current) => current,
        Err(e) => return page::error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    if current.as_deref() == Some(version) {
        return Redirect::to("/console/models").into_response();
    }
    let mut page = Page::new(format!("Make {version} current?"), "models");
    let _ = page.html(&format!(
        "<p>CURRENT{} moves from <b>{}</b> to <b>{}</b> ({}, {}). Every server and worker following \
         this root swaps it in within a poll; members' stored vectors of another version are folded \
         in afresh as they are read.</p>\
         <form method=post action=\"/console/models/{}/promote\">{}\
         <input type=hidden name=expected value=\"{}\">\
         <button class=act id=confirm>Yes, make {} current</button> <a href=/console/models>Cancel</a></form>",
        state
            .mirrored_from
            .as_ref()
            .map(|url| format!(" of <code>{}</code>", esc(url)))
            .unwrap_or_default(),
        esc(current.as_deref().unwrap_or("none")),
        esc(version),
        esc(manifest.algorithm.family().name()),
        manifest.created_at.format("%Y-%m-%d %H:%M UTC"),
        url(version),
        page::csrf_field(caller),
        esc(current.as_deref().unwrap_or("")),
        esc(version),
    ));
    page.render(caller)
}

/// Moves `CURRENT` to `version` when it still names `expected` (empty: no version).
pub async fn promote(
    state: &ConsoleState,
    caller: &Caller,
    version: &str,
    expected: &str,
) -> Response {
    let moved = match origin(state) {
        Err(e) => return page::error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Ok(Origin::Local) => {
            let (root, version, expected) = (
                state.root.clone(),
                version.to_string(),
                expected.to_string(),
            );
            tokio::task::spawn_blocking(move || promote_local(&root, &version, &expected))
                .await
                .unwrap_or_else(|e| Err(Refused::Failed(format!("the promote panicked: {e}"))))
        }
        Ok(Origin::Remote(remote)) => promote_remote(&remote, version, expected).await,
    };
    match moved {
        Ok(previous) => {
            tracing::warn!(caller = %caller.name, to = %version, previous = ?previous,
                root = state.mirrored_from.as_deref().unwrap_or("local"),
                "CURRENT moved from the console");
            crate::metrics::CONSOLE_PROMOTIONS.inc();
            Redirect::to("/console/models").into_response()
        }
        Err(Refused::Moved(now)) => page::error(
            StatusCode::CONFLICT,
            &format!(
                "CURRENT moved to {} since the confirmation was shown; nothing was changed.",
                now.as_deref().unwrap_or("none")
            ),
        ),
        Err(Refused::Busy(e)) => page::error(StatusCode::CONFLICT, &e),
        Err(Refused::Failed(e)) => page::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{version} cannot be made current: {e}"),
        ),
    }
}

/// Why `CURRENT` was not moved.
enum Refused {
    /// It names another version than the confirmation showed.
    Moved(Option<String>),
    /// Another writer holds the root.
    Busy(String),
    /// The version cannot be made current (missing, corrupt) or the root failed.
    Failed(String),
}

fn promote_local(
    root: &ModelRoot,
    version: &str,
    expected: &str,
) -> Result<Option<String>, Refused> {
    let lock = root.lock().map_err(|e| Refused::Busy(e.to_string()))?;
    let current = root
        .current_version()
        .map_err(|e| Refused::Failed(e.to_string()))?;
    if current.as_deref().unwrap_or("") != expected {
        return Err(Refused::Moved(current));
    }
    root.rollback(&lock, version)
        .map_err(|e| Refused::Failed(e.to_string()))
}

async fn promote_remote(
    remote: &RemoteModelRoot,
    version: &str,
    expected: &str,
) -> Result<Option<String>, Refused> {
    let mut lease = remote
        .lease(std::time::Duration::from_secs(60))
        .await
        .map_err(|e| Refused::Busy(e.to_string()))?;
    let moved = async {
        let current = remote
            .current_version()
            .await
            .map_err(|e| Refused::Failed(e.to_string()))?;
        if current.as_deref().unwrap_or("") != expected {
            return Err(Refused::Moved(current));
        }
        // The lease saw CURRENT's ETag when it was taken: the write is refused if it changed.
        remote
            .rollback(&mut lease, version)
            .await
            .map_err(|e| Refused::Failed(e.to_string()))
    }
    .await;
    if let Err(e) = remote.release(lease).await {
        tracing::warn!(error = %e, "releasing the model root's lease after a console promote");
    }
    moved
}
