//! The experiments page: the file in force (each experiment's traffic and variants with what they
//! choose), requests per variant — counted since start and per second over the last hour —, the
//! take-rate report saved for each experiment (`recsys offline experiment-report --out`), and the
//! last file refused, with its error.

use std::fmt::Write;

use axum::response::Response;

use super::health::variant_rates;
use super::page::{esc, Page};
use super::session::Caller;
use super::ConsoleState;
use crate::metrics::EXPERIMENT_REQUESTS;
use recsys_shared::take_rate::ExperimentReport;

pub fn page(state: &ConsoleState, caller: &Caller) -> Response {
    let mut page = Page::new("Experiments", "experiments");
    let set = state.ranker.experiments();
    let file = state.ranker.experiments_file();
    let mut html = String::new();
    let _ = write!(
        html,
        "<p>Experiments file <code>{}</code>: {}</p>",
        esc(&file
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not set".into())),
        match (&set.text, set.experiments.experiments.len()) {
            (None, _) => "none in force".to_string(),
            (Some(_), n) => format!("<b id=in-force>{n}</b> experiment(s) in force"),
        }
    );
    if let Some(refused) = &file.refused {
        let _ = write!(
            html,
            "<div id=refused><h2>Last refused file <span class=\"tag bad\">{}</span></h2>\
             <p class=err>{}</p><p class=muted>The file in force before it stays in force until a \
             corrected file is written.</p><pre>{}</pre></div>",
            refused.at.format("%Y-%m-%d %H:%M:%S UTC"),
            esc(&refused.error),
            esc(&refused.text)
        );
    }
    for experiment in &set.experiments.experiments {
        let _ = write!(
            html,
            "<h2>{}</h2><p class=muted>{:.0} % of members, salt <code>{}</code></p><div class=row><div class=col>\
             <table class=variants><tr><th>Variant</th><th>Weight</th><th>Model version</th><th>Rows</th>\
             <th>Retrieval</th><th>Requests</th></tr>",
            esc(&experiment.name),
            experiment.traffic * 100.0,
            esc(&experiment.salt)
        );
        for variant in &experiment.variants {
            let requests = EXPERIMENT_REQUESTS
                .get_metric_with_label_values(&[&experiment.name, &variant.name])
                .map(|c| c.get())
                .unwrap_or(0);
            let _ = write!(
                html,
                "<tr><td>{}</td><td class=n>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{requests}</td></tr>",
                esc(&variant.name),
                variant.weight,
                esc(variant.model_version.as_deref().unwrap_or("CURRENT")),
                esc(&variant
                    .recipe
                    .as_ref()
                    .map(|r| r.rows().map(|k| k.name()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "default".into())),
                variant
                    .retrieval
                    .map(|r| format!("{r:?}").to_lowercase())
                    .unwrap_or_else(|| "default".into()),
            );
        }
        html.push_str("</table>");
        html.push_str(&take_rates(state, &experiment.name));
        let _ = write!(
            html,
            "</div><div class=col><div class=plot><b>Requests per second by variant</b><br>{}\
             <br><code>sum by (variant) (rate(recsys_experiment_requests_total{{experiment=\"{}\"}}[1m]))</code></div></div></div>",
            variant_rates(&state.sampler, &experiment.name),
            esc(&experiment.name)
        );
    }
    if let Some(text) = &set.text {
        let _ = write!(
            html,
            "<h2>The file in force</h2><pre id=file>{}</pre>",
            esc(text)
        );
    }
    page.html(&html);
    page.render(caller)
}

/// The saved take-rate report of `experiment`, as a table; where to save one when there is none.
fn take_rates(state: &ConsoleState, experiment: &str) -> String {
    let path = state.reports.join(format!("experiment-{experiment}.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) => {
            return format!(
                "<p class=muted>No take-rate report: <code>recsys offline experiment-report \
                 --impressions … --events … --experiment {} --out {}</code> over the archives.</p>",
                esc(experiment),
                esc(&path.display().to_string())
            )
        }
    };
    let report: ExperimentReport = match serde_json::from_str(&text) {
        Ok(report) => report,
        Err(e) => {
            return format!(
                "<p class=err>{} is not a take-rate report: {}</p>",
                esc(&path.display().to_string()),
                esc(&e.to_string())
            )
        }
    };
    let saved = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_default();
    let mut html = format!(
        "<table class=take-rates><tr><th>Variant</th><th>Members</th><th>Impressions</th><th>Plays</th>\
         <th>Take rate [95 %]</th><th>Plays / member [95 %]</th><th>Lift vs {}</th><th>p</th></tr>",
        esc(&report.control)
    );
    for v in &report.variants {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n>{:.4} <span class=muted>[{:.4}, {:.4}]</span></td>\
             <td class=n>{:.3} <span class=muted>[{:.3}, {:.3}]</span></td><td class=n>{}</td><td class=n>{}</td></tr>",
            esc(&v.variant),
            v.members,
            v.impressions,
            v.plays,
            v.take_rate,
            v.take_rate_ci95[0],
            v.take_rate_ci95[1],
            v.plays_per_member,
            v.plays_per_member_ci95[0],
            v.plays_per_member_ci95[1],
            v.lift.map_or("–".into(), |l| format!("{:+.1} %", l * 100.0)),
            v.p_value.map_or("–".into(), |p| format!("{p:.2e}")),
        );
    }
    let _ = write!(
        html,
        "</table><p class=muted>Take-rate report saved {saved}{}</p>",
        if report.members_in_several_variants > 0 {
            format!(
                " — <span class=\"tag bad\">{} members appear in several variants</span>",
                report.members_in_several_variants
            )
        } else {
            String::new()
        }
    );
    html
}
