//! `recsys offline report`: one self-contained HTML page about a published version — its
//! figures with 95 % confidence intervals next to the popularity baseline and any compared
//! versions, Recall@k and NDCG@k curves for k = 1..100, the figures by member activity, and the
//! tuning trials that chose its hyper-parameters.
//!
//! Plots are inline SVG written here (polylines and circles on linear axes: no plotting runtime,
//! no JavaScript, no fonts to embed), so the file can be mailed, archived next to the model, or
//! opened offline. Every series carries a `data-series` attribute naming it.
//!
//! It reads manifests only: it must not change a model root.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use recsys_shared::artifact::{Curves, Evaluation, Manifest, ModelRoot};
use recsys_shared::SharedError;

use crate::tuning::TuningResult;
use crate::{OfflineError, Result};

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportJob {
    pub model_root: PathBuf,
    /// The version to report [default: CURRENT].
    pub version: Option<String>,
    /// Versions drawn next to it.
    pub compare: Vec<String>,
    /// The HTML file to write.
    pub out: PathBuf,
}

/// A named series of points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Points only (a scatter), instead of a line.
    pub dots: bool,
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Escapes text for HTML and SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Up to ~6 round tick values covering `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn tick_label(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG chart of `series` on linear axes; `x_labels` replaces the x tick values with names
/// (for categories at x = 0, 1, 2, …).
pub fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_labels: Option<&[String]>,
) -> String {
    chart_marked(title, x_label, y_label, series, x_labels, None)
}

/// One point of a chart ringed and named in the legend (the chosen trial).
pub struct Mark<'a> {
    pub x: f64,
    pub y: f64,
    pub label: &'a str,
}

/// [`chart`] with `mark` ringed. The legend sits below the frame, one entry a line, so it never
/// covers a point; the frame keeps 72 px on the left for the tick labels and the axis label.
pub fn chart_marked(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_labels: Option<&[String]>,
    mark: Option<Mark<'_>>,
) -> String {
    let (width, frame_height) = (640.0, 360.0);
    let entries = series.len() + usize::from(mark.is_some());
    let height = frame_height + 8.0 + 16.0 * entries as f64;
    let (left, right, top, bottom) = (72.0, 20.0, 36.0, 48.0);
    let height_of_frame = frame_height;
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_lo, mut x_hi, mut y_hi) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        x_lo = x_lo.min(x);
        x_hi = x_hi.max(x);
        y_hi = y_hi.max(y);
    }
    if x_lo > x_hi {
        (x_lo, x_hi) = (0.0, 1.0);
    }
    if x_hi == x_lo {
        x_hi = x_lo + 1.0;
    }
    // Category labels sit in the middle of their own slot, so the first and last are not cut
    // off at the frame's edges.
    if let Some(labels) = x_labels {
        (x_lo, x_hi) = (-0.5, labels.len().max(1) as f64 - 0.5);
    }
    let y_hi = if y_hi <= 0.0 { 1.0 } else { y_hi * 1.08 };
    let plot_w = width - left - right;
    let plot_h = height_of_frame - top - bottom;
    let sx = |x: f64| left + (x - x_lo) / (x_hi - x_lo) * plot_w;
    let sy = |y: f64| top + plot_h - y / y_hi * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12" role="img" aria-label="{t}"><title>{t}</title><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"##,
        t = escape(title),
        cx = width / 2.0,
    );
    // Axes, grid and ticks.
    for y in ticks(0.0, y_hi) {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            x2 = width - right,
            py = sy(y),
            tx = left - 6.0,
            ty = sy(y) + 4.0,
            label = tick_label(y)
        );
    }
    match x_labels {
        Some(labels) => {
            for (i, label) in labels.iter().enumerate() {
                let _ = write!(
                    svg,
                    r##"<text x="{px:.1}" y="{ty}" text-anchor="middle">{l}</text>"##,
                    px = sx(i as f64),
                    ty = height_of_frame - bottom + 16.0,
                    l = escape(label)
                );
            }
        }
        None => {
            for x in ticks(x_lo, x_hi) {
                let _ = write!(
                    svg,
                    r##"<text x="{px:.1}" y="{ty}" text-anchor="middle">{l}</text>"##,
                    px = sx(x),
                    ty = height_of_frame - bottom + 16.0,
                    l = tick_label(x)
                );
            }
        }
    }
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/><text x="{cx}" y="{xy}" text-anchor="middle">{xl}</text><text transform="translate(16,{cy}) rotate(-90)" text-anchor="middle">{yl}</text>"##,
        cx = left + plot_w / 2.0,
        xy = height_of_frame - 10.0,
        xl = escape(x_label),
        cy = top + plot_h / 2.0,
        yl = escape(y_label),
    );
    // Series, then the legend.
    for (n, s) in series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let name = escape(&s.name);
        if s.dots {
            let _ = write!(svg, r##"<g data-series="{name}" fill="{colour}">"##);
            for &(x, y) in &s.points {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="3"/>"##,
                    sx(x),
                    sy(y)
                );
            }
            svg.push_str("</g>");
        } else {
            let coords: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = write!(
                svg,
                r##"<polyline data-series="{name}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
                coords.join(" ")
            );
        }
        let ly = height_of_frame + 8.0 + 16.0 * (n as f64 + 0.75);
        let _ = write!(
            svg,
            r##"<rect class="legend" x="{lx}" y="{ry:.1}" width="12" height="4" fill="{colour}"/><text x="{tx}" y="{ty:.1}">{name}</text>"##,
            lx = left,
            ry = ly - 6.0,
            tx = left + 18.0,
            ty = ly,
        );
    }
    if let Some(mark) = mark {
        let ly = height_of_frame + 8.0 + 16.0 * (series.len() as f64 + 0.75);
        let _ = write!(
            svg,
            r##"<circle class="mark" cx="{:.1}" cy="{:.1}" r="7" fill="none" stroke="#000" stroke-width="2"/><circle cx="{lx}" cy="{cy:.1}" r="5" fill="none" stroke="#000" stroke-width="2"/><text x="{tx}" y="{ty:.1}">{name}</text>"##,
            sx(mark.x),
            sy(mark.y),
            lx = left + 6.0,
            cy = ly - 4.0,
            tx = left + 18.0,
            ty = ly,
            name = escape(mark.label),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `a − b` with a 95 % interval from their own intervals, as if independent (the half-widths add
/// in quadrature): wider than the paired interval of the same members, so on the safe side.
fn difference(
    a: f64,
    a_interval: Option<&[f64; 2]>,
    b: f64,
    b_interval: Option<&[f64; 2]>,
) -> String {
    let half = |i: Option<&[f64; 2]>| i.map(|[lo, hi]| (hi - lo) / 2.0);
    match (half(a_interval), half(b_interval)) {
        (Some(ha), Some(hb)) => {
            let d = a - b;
            let h = (ha * ha + hb * hb).sqrt();
            format!("{d:+.4} <small>[{:+.4}, {:+.4}]</small>", d - h, d + h)
        }
        _ => format!("{:+.4}", a - b),
    }
}

/// The figure with its interval, as the report prints it.
fn figure(value: f64, interval: Option<&[f64; 2]>) -> String {
    match interval {
        Some([lo, hi]) => format!("{value:.4} <small>[{lo:.4}, {hi:.4}]</small>"),
        None => format!("{value:.4}"),
    }
}

fn curve(name: String, values: &[f64]) -> Series {
    Series {
        name,
        points: values
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1) as f64, *v))
            .collect(),
        dots: false,
    }
}

/// Writes the report; returns the version reported.
pub fn write_report(job: &ReportJob) -> Result<String> {
    let root = ModelRoot::new(&job.model_root);
    let version = match &job.version {
        Some(v) => v.clone(),
        None => root.current_version()?.ok_or_else(|| {
            OfflineError::Usage(format!(
                "{} has no CURRENT version; name one with --version",
                job.model_root.display()
            ))
        })?,
    };
    let manifest = root.manifest(&version)?;
    let evaluation = manifest.evaluation.as_ref().ok_or_else(|| {
        OfflineError::Usage(format!(
            "version {version} was published with --skip-eval: it has no evaluation to report"
        ))
    })?;
    let mut compared: Vec<(String, Evaluation)> = Vec::new();
    for other in &job.compare {
        let m = root.manifest(other)?;
        match m.evaluation {
            Some(e) => compared.push((other.clone(), e)),
            None => {
                return Err(OfflineError::Usage(format!(
                    "version {other} (--compare) has no evaluation"
                )))
            }
        }
    }
    let tuning = tuning_of(&manifest);
    let html = render(&version, &manifest, evaluation, &compared, tuning.as_ref());
    if let Some(dir) = job.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| SharedError::io(dir, e))?;
    }
    let tmp = job.out.with_extension("html.tmp");
    std::fs::write(&tmp, html).map_err(|e| SharedError::io(&tmp, e))?;
    std::fs::rename(&tmp, &job.out).map_err(|e| SharedError::io(&job.out, e))?;
    Ok(version)
}

/// The tuning run recorded in the manifest, if its file is still there.
fn tuning_of(manifest: &Manifest) -> Option<TuningResult> {
    let source = manifest
        .algorithm
        .tuning
        .as_ref()?
        .get("source")?
        .as_str()?;
    TuningResult::read(Path::new(source)).ok()
}

/// The HTML page.
pub fn render(
    version: &str,
    manifest: &Manifest,
    evaluation: &Evaluation,
    compared: &[(String, Evaluation)],
    tuning: Option<&TuningResult>,
) -> String {
    let mut html = String::new();
    let a = &manifest.algorithm;
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>recsys model {v}</title><style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}small{{color:#666}}svg{{display:block;margin:1em 0}}</style></head><body><h1>Model {v}</h1><p>Published {created}; {protocol} evaluation on {members} held-out members; {rows} training pairs, {m} members, {i} items.</p>"#,
        v = escape(version),
        created = manifest.created_at.format("%Y-%m-%d %H:%M UTC"),
        protocol = escape(&evaluation.protocol),
        members = evaluation.evaluated_members,
        rows = manifest.rows.training_pairs,
        m = manifest.rows.members,
        i = manifest.rows.items,
    );
    let _ = write!(
        html,
        "<h2>Hyper-parameters</h2><p>{}: {}{}</p>",
        a.family().name(),
        escape(&a.model.describe()),
        match &a.tuning {
            Some(t) => format!(
                "; chosen by tuning (<code>{}</code>)",
                escape(t.get("source").and_then(|s| s.as_str()).unwrap_or("?"))
            ),
            None => "; not tuned".into(),
        }
    );
    // The figures table.
    html.push_str("<h2>Figures (95 % bootstrap intervals)</h2><p><small>Differences carry an interval from the two figures' own, as if independent: wider than the paired one, so an interval clear of 0 is a real difference.</small></p><table id=\"figures\"><tr><th>metric</th><th>this model</th><th>popularity</th><th>this − popularity</th>");
    for (other, _) in compared {
        let _ = write!(html, "<th>{o}</th><th>this − {o}</th>", o = escape(other));
    }
    html.push_str("</tr>");
    for (key, value) in &evaluation.metrics {
        let _ = write!(
            html,
            "<tr data-metric=\"{k}\"><td>{k}</td><td class=\"model\">{}</td><td class=\"popularity\">{}</td><td class=\"difference\">{}</td>",
            figure(*value, evaluation.intervals.get(key)),
            evaluation
                .popularity
                .get(key)
                .map_or("—".into(), |p| figure(*p, evaluation.popularity_intervals.get(key))),
            evaluation.popularity.get(key).map_or("—".into(), |p| difference(
                *value,
                evaluation.intervals.get(key),
                *p,
                evaluation.popularity_intervals.get(key)
            )),
            k = escape(key),
        );
        for (_, e) in compared {
            let _ = write!(
                html,
                "<td>{}</td><td>{}</td>",
                e.metrics
                    .get(key)
                    .map_or("—".into(), |v| figure(*v, e.intervals.get(key))),
                e.metrics.get(key).map_or("—".into(), |v| difference(
                    *value,
                    evaluation.intervals.get(key),
                    *v,
                    e.intervals.get(key)
                ))
            );
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    // Curves.
    if let Some(curves) = &evaluation.curves {
        type Pick = fn(&Curves) -> &[f64];
        let recall: (Pick, Pick) = (|c| &c.recall, |c| &c.popularity_recall);
        let ndcg: (Pick, Pick) = (|c| &c.ndcg, |c| &c.popularity_ndcg);
        for (title, label, (pick, pick_pop)) in
            [("Recall@k", "recall", recall), ("NDCG@k", "ndcg", ndcg)]
        {
            let mut series = vec![
                curve(format!("model {version}"), pick(curves)),
                curve("popularity".into(), pick_pop(curves)),
            ];
            for (other, e) in compared {
                if let Some(c) = &e.curves {
                    series.push(curve(format!("model {other}"), pick(c)));
                }
            }
            let _ = write!(
                html,
                "<h2>{title}</h2>{}",
                chart(
                    &format!("{title}, k = 1..{}", pick(curves).len()),
                    "k",
                    label,
                    &series,
                    None
                )
            );
        }
    }
    // By activity.
    if !evaluation.by_activity.is_empty() {
        let key = evaluation
            .metrics
            .keys()
            .find(|k| k.starts_with("ndcg"))
            .cloned()
            .unwrap_or_else(|| "ndcg@100".into());
        let labels: Vec<String> = evaluation
            .by_activity
            .iter()
            .map(|b| format!("{} ({})", b.label, b.members))
            .collect();
        let pick = |popularity: bool| -> Vec<(f64, f64)> {
            evaluation
                .by_activity
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let m = if popularity {
                        &b.popularity
                    } else {
                        &b.metrics
                    };
                    (i as f64, m.get(&key).copied().unwrap_or(0.0))
                })
                .collect()
        };
        let series = [
            Series {
                name: format!("model {version}"),
                points: pick(false),
                dots: false,
            },
            Series {
                name: "popularity".into(),
                points: pick(true),
                dots: false,
            },
        ];
        let _ = write!(
            html,
            "<h2>By member activity</h2><p>Members grouped by the number of items they were ranked from (members in brackets).</p>{}",
            chart(
                &format!("{key} by history size"),
                "items in the history",
                &key,
                &series,
                Some(&labels)
            )
        );
        html.push_str("<table id=\"activity\"><tr><th>history</th><th>members</th>");
        let _ = write!(
            html,
            "<th>{k} model</th><th>{k} popularity</th></tr>",
            k = escape(&key)
        );
        for b in &evaluation.by_activity {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                escape(&b.label),
                b.members,
                b.metrics.get(&key).copied().unwrap_or(0.0),
                b.popularity.get(&key).copied().unwrap_or(0.0)
            );
        }
        html.push_str("</table>");
    }
    // Tuning trials.
    html.push_str("<h2>Tuning</h2>");
    match tuning {
        Some(t) => {
            // The families side by side, on the search's validation split.
            let settings = t.family_settings();
            let _ = write!(
                html,
                "<table id=\"families\"><tr><th>family</th><th>settings scored</th><th>best validation {}</th><th></th></tr>",
                escape(&t.metric)
            );
            for (family, score) in &t.family_best {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{}{}</td></tr>",
                    escape(family),
                    settings.get(family).copied().unwrap_or(0),
                    score,
                    if *family == t.family.name() {
                        "chosen"
                    } else {
                        ""
                    },
                    if t.families_cut.iter().any(|f| f.name() == family) {
                        " (budget ran out)"
                    } else {
                        ""
                    },
                );
            }
            html.push_str("</table>");
            if let Some(iterations) = t.final_iterations {
                let _ = write!(
                    html,
                    "<p>iALS's final fits train {iterations} iterations, chosen on the validation split by early stopping.</p>"
                );
            }
            let rungs = t.trials.iter().map(|r| r.rung).max().unwrap_or(0);
            let series: Vec<Series> = (0..=rungs)
                .map(|rung| Series {
                    name: format!(
                        "rung {rung} ({} iterations)",
                        t.trials
                            .iter()
                            .find(|r| r.rung == rung)
                            .map_or(0, |r| r.setting.iterations)
                    ),
                    points: t
                        .trials
                        .iter()
                        .filter(|r| r.rung == rung)
                        .map(|r| (r.trial as f64, r.score))
                        .collect(),
                    dots: true,
                })
                .collect();
            // The chosen setting's search score at the rung it was chosen from.
            let chosen = t
                .trials
                .iter()
                .find(|r| r.trial == t.best_trial && r.setting == t.best)
                .map(|r| {
                    (
                        r.trial as f64,
                        r.score,
                        format!("chosen: trial {} at rung {}", r.trial, r.rung),
                    )
                });
            let _ = write!(
                html,
                "<p>{} settings, successive halving; the chosen one is trial {} ({} {:.4} on {} validation members).</p>{}",
                t.settings_tried(),
                t.best_trial,
                escape(&t.metric),
                t.validation.get(&t.metric).copied().unwrap_or(0.0),
                t.validation_members,
                chart_marked(
                    &format!("validation {} of every trial", t.metric),
                    "trial",
                    &t.metric,
                    &series,
                    None,
                    chosen.as_ref().map(|(x, y, label)| Mark {
                        x: *x,
                        y: *y,
                        label
                    })
                )
            );
        }
        None => html.push_str(
            "<p>This version was not trained from a tuning run (or its tuning.json is gone).</p>",
        ),
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number in the first ` name="…"` attribute of `svg`.
    fn attribute(svg: &str, name: &str) -> f64 {
        let after = svg
            .split(&format!(" {name}=\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name}"));
        after.split('"').next().unwrap().parse().unwrap()
    }

    /// The `points` of the first polyline in `svg`.
    fn polyline_points(svg: &str) -> &str {
        let after = svg.split("points=\"").nth(1).expect("a polyline");
        after.split('"').next().expect("closing quote")
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(1.0, 100.0);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert!(t.iter().all(|v| (1.0..=100.0).contains(v)));
    }

    #[test]
    fn the_report_shows_the_evaluation_its_curves_and_the_compared_version() {
        use crate::evaluate::tests::clustered_table;
        use recsys_shared::artifact::synthetic::synthetic_model;
        use recsys_shared::config::EvaluationConfig;
        let dir = tempfile::tempdir().unwrap();
        let table = clustered_table();
        let params = recsys_shared::model::ials::train::AlsParams {
            factors: 8,
            threads: 2,
            compute_loss: false,
            ..Default::default()
        };
        let config = EvaluationConfig::default();
        let (good, _) = crate::evaluate::evaluate(&table, &params, &config, |_| {}).unwrap();
        let weak_params = recsys_shared::model::ials::train::AlsParams {
            iterations: 1,
            ..params.clone()
        };
        let (weak, _) = crate::evaluate::evaluate(&table, &weak_params, &config, |_| {}).unwrap();
        // Two published versions, their manifests given the evaluations.
        let root = ModelRoot::new(dir.path());
        let mut versions = Vec::new();
        for evaluation in [weak.clone(), good.clone()] {
            let v = synthetic_model(dir.path(), 50, 10, 4, 1).unwrap();
            let path = root.version_dir(&v).join("manifest.json");
            let mut manifest = root.manifest(&v).unwrap();
            manifest.evaluation = Some(evaluation);
            std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
            versions.push(v);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let out = dir.path().join("out/report.html");
        let reported = write_report(&ReportJob {
            model_root: dir.path().to_path_buf(),
            version: Some(versions[1].clone()),
            compare: vec![versions[0].clone()],
            out: out.clone(),
        })
        .unwrap();
        assert_eq!(reported, versions[1]);
        let html = std::fs::read_to_string(&out).unwrap();
        assert!(!html.contains("<script"), "self-contained, no JavaScript");
        // The numbers are the evaluation's.
        for (key, value) in &good.metrics {
            let row = html
                .split(&format!("<tr data-metric=\"{key}\">"))
                .nth(1)
                .unwrap_or_else(|| panic!("no row for {key}"));
            let [lo, hi] = good.intervals.get(key).copied().unwrap_or([*value, *value]);
            let model_cell = row.split("<td class=\"model\">").nth(1).unwrap();
            assert!(
                model_cell.starts_with(&format!("{value:.4}")),
                "{key}: {model_cell:.60}"
            );
            if good.intervals.contains_key(key) {
                assert!(model_cell.contains(&format!("[{lo:.4}, {hi:.4}]")));
            }
            let popularity = good.popularity[key];
            let difference = row.split("<td class=\"difference\">").nth(1).unwrap();
            assert!(
                difference.starts_with(&format!("{:+.4}", value - popularity)),
                "{key}: {difference:.60}"
            );
            if good.intervals.contains_key(key) {
                assert!(difference.contains("<small>["), "{key}: an interval");
            }
            let compared = format!("{:.4}", weak.metrics[key]);
            assert!(
                row.split("</tr>").next().unwrap().contains(&compared),
                "{key}"
            );
        }
        // Both curves, each with the model, the baseline and the compared version.
        for title in ["Recall@k, k = 1..100", "NDCG@k, k = 1..100"] {
            let svg = html
                .split(&format!("<title>{title}</title>"))
                .nth(1)
                .unwrap();
            let svg = svg.split("</svg>").next().unwrap();
            for name in [
                format!("model {}", versions[1]),
                "popularity".into(),
                format!("model {}", versions[0]),
            ] {
                let line = svg
                    .split(&format!("data-series=\"{name}\""))
                    .nth(1)
                    .unwrap_or_else(|| panic!("{title}: no series {name}"));
                let points = polyline_points(line);
                assert_eq!(points.split(' ').count(), 100, "{title} {name}");
            }
        }
        assert!(html.contains("By member activity"));
        assert!(html.contains("not trained from a tuning run"));
        // A version without an evaluation is refused by name.
        let bare = synthetic_model(dir.path(), 50, 10, 4, 2).unwrap();
        let err = write_report(&ReportJob {
            model_root: dir.path().to_path_buf(),
            version: Some(bare.clone()),
            compare: vec![],
            out: dir.path().join("x.html"),
        })
        .unwrap_err();
        assert!(err.to_string().contains(&bare), "{err}");
    }

    #[test]
    fn the_report_shows_the_tuned_families_side_by_side() {
        use crate::evaluate::tests::clustered_table;
        use recsys_shared::artifact::synthetic::synthetic_model;
        let dir = tempfile::tempdir().unwrap();
        let mut config = recsys_shared::config::Config::default();
        config.offline.als.threads = 2;
        config.offline.tuning.trials = 2;
        config.offline.tuning.max_iterations = 2;
        config.offline.tuning.recheck_top = 0;
        let tuning_dir = dir.path().join("tuning");
        let job = crate::tuning::TuneJob {
            trials: 2,
            budget: None,
            seed: 1,
            out: tuning_dir.clone(),
            final_fits: true,
        };
        let tuned = crate::tuning::tune(&clustered_table(), &config, &job).unwrap();
        let root = ModelRoot::new(dir.path());
        let v = synthetic_model(dir.path(), 50, 10, 4, 1).unwrap();
        let mut manifest = root.manifest(&v).unwrap();
        manifest.evaluation = tuned.test.clone();
        manifest.algorithm.tuning = Some(tuned.provenance(&tuning_dir));
        std::fs::write(
            root.version_dir(&v).join("manifest.json"),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        let out = dir.path().join("report.html");
        write_report(&ReportJob {
            model_root: dir.path().to_path_buf(),
            version: Some(v),
            compare: vec![],
            out: out.clone(),
        })
        .unwrap();
        let html = std::fs::read_to_string(&out).unwrap();
        let table = html
            .split("<table id=\"families\">")
            .nth(1)
            .expect("the families table")
            .split("</table>")
            .next()
            .unwrap();
        for family in ["ials", "ease", "item_knn"] {
            let row = table
                .split(&format!("<tr><td>{family}</td>"))
                .nth(1)
                .unwrap_or_else(|| panic!("no row for {family}: {table}"))
                .split("</tr>")
                .next()
                .unwrap();
            let best = format!("{:.4}", tuned.family_best[family]);
            assert!(row.contains(&best), "{family}: {row}");
            assert_eq!(
                row.contains("chosen"),
                tuned.family.name() == family,
                "{row}"
            );
        }
    }

    #[test]
    fn a_chart_draws_every_series_within_its_frame() {
        let series = [
            curve("model <a&b>".into(), &[0.1, 0.2, 0.3]),
            Series {
                name: "dots".into(),
                points: vec![(0.0, 1.0), (5.0, 0.5)],
                dots: true,
            },
        ];
        let svg = chart_marked(
            "t",
            "x",
            "y",
            &series,
            None,
            Some(Mark {
                x: 5.0,
                y: 0.5,
                label: "chosen: trial 5",
            }),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // The fault: the legend sat inside the frame over the points, the chosen trial was not
        // marked, and the y axis label was cut off. The legend is below the frame now, and the
        // mark rings the chosen point.
        let frame_bottom = 360.0 - 48.0;
        for legend in svg.split(r#"<rect class="legend" "#).skip(1) {
            let y = attribute(legend, "y");
            assert!(y > frame_bottom, "a legend entry at y {y} inside the frame");
        }
        let mark = svg
            .split(r#"<circle class="mark" "#)
            .nth(1)
            .expect("the mark");
        assert!(mark.starts_with(r#"cx="620.0" cy="#), "{mark:.40}");
        assert!(svg.contains(">chosen: trial 5</text>"));
        // Category labels sit inside the frame, the last one too (it was cut off at the edge).
        let labels: Vec<String> = ["0–9 (13)", "10–19 (84)", "50–99 (12)"]
            .map(String::from)
            .to_vec();
        let categories = chart("c", "x", "y", &series[..1], Some(&labels));
        let last = categories
            .split("<text x=\"")
            .find(|t| t.contains(">50–99 (12)<"))
            .unwrap();
        let x: f64 = last.split('"').next().unwrap().parse().unwrap();
        assert!(x + 40.0 <= 640.0 - 20.0, "the last label is centred at {x}");
        let height = attribute(&svg, "height");
        assert!(
            height >= 360.0 + 3.0 * 16.0,
            "room for three legend lines: {height}"
        );
        assert!(svg.contains(r#"data-series="model &lt;a&amp;b&gt;""#));
        assert!(svg.contains(r#"<g data-series="dots""#));
        // Two dots, then the mark and its ring in the legend.
        assert_eq!(svg.matches("<circle").count(), 2 + 2);
        // Every polyline point lies inside the 640 × 360 frame.
        let points = polyline_points(&svg);
        assert_eq!(points.split(' ').count(), 3);
        for p in points.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (72.0..=620.0).contains(&x) && (36.0..=312.0).contains(&y),
                "{p}"
            );
        }
    }
}
