//! The member preview: type a member id and see their homepage as they would (the same
//! `Homepage` answer, without logging an impression), with the variant of each experiment, where
//! the member's taste came from, why each item is there (the row's reason, the history item
//! behind "because you watched", the rule that pinned, boosted or buried it), what the filters
//! left out, and the member's recent history beside it.

use std::collections::HashSet;
use std::fmt::Write;

use axum::response::Response;
use recsys_shared::proto::v1::{HomepageRequest, VectorSource};

use super::page::{esc, Page};
use super::session::Caller;
use super::ConsoleState;

/// History entries shown, newest first.
const HISTORY_SHOWN: usize = 50;

pub async fn page(
    state: &ConsoleState,
    caller: &Caller,
    member: Option<String>,
    country: Option<String>,
) -> Response {
    let mut page = Page::new("Member preview", "member");
    let mut html = format!(
        "<form method=get action=/console/member><input name=id id=member-id placeholder=\"member id\" value=\"{}\" size=32> \
         <input name=country placeholder=\"country (optional)\" value=\"{}\" size=10> \
         <button class=act id=preview>Preview</button></form>",
        esc(member.as_deref().unwrap_or("")),
        esc(country.as_deref().unwrap_or(""))
    );
    if let Some(member) = member {
        html.push_str(&preview(state, &member, country).await);
    }
    page.html(&html);
    page.render(caller)
}

async fn preview(state: &ConsoleState, member: &str, country: Option<String>) -> String {
    let ranker = &state.ranker;
    let answer = ranker
        .preview_homepage(HomepageRequest {
            user_id: member.to_string(),
            rows: 0,
            items_per_row: 0,
            country: country.unwrap_or_default(),
        })
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            let status = tonic::Status::from(e);
            return format!(
                "<p class=err id=preview-error>{:?}: {}</p>",
                status.code(),
                esc(status.message())
            );
        }
    };
    let features = ranker.reader().get(member).await;
    let catalog = ranker.catalog();
    let title = |id: &str| -> String {
        catalog
            .as_ref()
            .and_then(|c| c.index_of(id).map(|i| c.title(i).to_string()))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| id.to_string())
    };
    let rules = ranker.rules();
    let source = VectorSource::try_from(answer.vector_source)
        .map(|s| {
            match s {
                VectorSource::Store => "the feature store (the member's vector)",
                VectorSource::FoldIn => "a fold-in of the history (no vector of this model)",
                VectorSource::ColdStart => "popularity (no vector and no history)",
                _ => "unspecified",
            }
            .to_string()
        })
        .unwrap_or_else(|_| format!("unknown ({})", answer.vector_source));
    let mut html = String::new();
    let _ = write!(
        html,
        "<table id=summary><tr><th>Member</th><td>{}</td></tr><tr><th>Model version</th><td>{}</td></tr>\
         <tr><th>Taste from</th><td id=vector-source>{}{}</td></tr><tr><th>Experiments</th><td id=variants>{}</td></tr></table>",
        esc(member),
        esc(&answer.model_version),
        esc(&source),
        if answer.degraded {
            " <span class=\"tag bad\">degraded: the feature store could not be read</span>"
        } else {
            ""
        },
        if answer.experiments.is_empty() {
            "none".to_string()
        } else {
            answer
                .experiments
                .iter()
                .map(|a| format!("{}: <b>{}</b>", esc(&a.experiment), esc(&a.variant)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    html.push_str("<div class=row><div class=col>");
    for (n, row) in answer.rows.iter().enumerate() {
        let reason = match row.kind.as_str() {
            "because_you_watched" => format!(
                "similar to <b>{}</b>, in the history",
                esc(&title(&row.seed_item_id))
            ),
            "trending" => "the most popular items".to_string(),
            "top_picks" => "the member's highest scores".to_string(),
            other => esc(other),
        };
        let _ = write!(
            html,
            "<h2>{}</h2><p class=muted>{} · {}</p><div class=items id=\"row-{n}\" data-kind=\"{}\">",
            esc(&row.title),
            esc(&row.kind),
            reason,
            esc(&row.kind)
        );
        for item in &row.items {
            let mut why = Vec::new();
            if rules.pin.contains(&item.item_id) {
                why.push("pinned (online.rules.pin)".to_string());
            }
            if let Some(factor) = rules.boost.get(&item.item_id) {
                why.push(format!("boosted ×{factor} (online.rules.boost)"));
            }
            if rules.bury.contains(&item.item_id) {
                why.push("buried (online.rules.bury)".to_string());
            }
            let _ = write!(
                html,
                "<div class=item data-item=\"{}\"><b>{}</b>{}<br><span class=muted>score {:.3}{}</span></div>",
                esc(&item.item_id),
                esc(if item.title.is_empty() {
                    &item.item_id
                } else {
                    &item.title
                }),
                if item.title.is_empty() {
                    String::new()
                } else {
                    format!("<span class=muted>{}</span>", esc(&item.item_id))
                },
                item.score,
                why.iter()
                    .map(|w| format!("<br>{}", esc(w)))
                    .collect::<String>()
            );
        }
        html.push_str("</div>");
    }
    html.push_str("</div><div class=col>");
    match features {
        Err(e) => {
            let _ = write!(
                html,
                "<p class=err>The member's features cannot be read: {}</p>",
                esc(&e.to_string())
            );
        }
        Ok((features, _)) => {
            let shown: HashSet<&str> = answer
                .rows
                .iter()
                .flat_map(|r| r.items.iter().map(|i| i.item_id.as_str()))
                .collect();
            html.push_str("<h2>Left out by the filters</h2><ul id=filtered>");
            let seen = features.history.len();
            if ranker.excludes_seen() && seen > 0 {
                let _ = write!(
                    html,
                    "<li>{seen} history item(s): <code>online.exclude_seen</code></li>"
                );
            }
            let now = chrono::Utc::now().timestamp_millis();
            for hidden in features.hidden.iter().filter(|h| h.until_ms > now) {
                let until = if hidden.until_ms == recsys_store::feedback::BLOCKED {
                    "until a newer positive event".to_string()
                } else {
                    chrono::DateTime::from_timestamp_millis(hidden.until_ms)
                        .map(|t| format!("until {}", t.format("%Y-%m-%d %H:%M UTC")))
                        .unwrap_or_default()
                };
                let _ = write!(
                    html,
                    "<li>{}: hidden by the member's feedback, {}{}</li>",
                    esc(&title(&hidden.item_id)),
                    until,
                    if shown.contains(hidden.item_id.as_str()) {
                        " <span class=\"tag bad\">but shown</span>"
                    } else {
                        ""
                    }
                );
            }
            if let Some(maturity) = &features.profile.max_maturity {
                let _ = write!(
                    html,
                    "<li>items rated above {}: the member's maturity setting</li>",
                    esc(maturity)
                );
            }
            html.push_str("</ul>");
            let _ = write!(
                html,
                "<h2>Recent history</h2><p class=muted>{} entries kept{}</p><table id=history><tr><th>When</th><th>Item</th><th>Strength</th></tr>",
                features.history.len(),
                features
                    .vector
                    .as_ref()
                    .map(|v| format!(", vector of model {}", esc(&v.model_version)))
                    .unwrap_or_default()
            );
            for entry in features.history.iter().rev().take(HISTORY_SHOWN) {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{} <span class=muted>{}</span></td><td class=n>{:.2}</td></tr>",
                    chrono::DateTime::from_timestamp_millis(entry.ts_ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default(),
                    esc(&title(&entry.item_id)),
                    esc(&entry.item_id),
                    entry.strength
                );
            }
            html.push_str("</table>");
        }
    }
    html.push_str("</div></div>");
    html
}
