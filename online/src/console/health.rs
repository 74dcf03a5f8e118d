//! The health page and its ring buffer: every `online.console.sample_seconds` the [`Sampler`]
//! reads this process's Prometheus registry (and each `online.console.scrape` endpoint — the
//! nearline workers) and keeps the last hour of the series the page plots, so the page needs no
//! Prometheus server. Memory is bounded: a fixed list of metric names, at most
//! [`MAX_SERIES`] series, one hour of samples.
//!
//! Plots show rates of counters (per second between samples), gauges as they were, and the p99 of
//! histograms over each interval; each names the PromQL expression that gives the same in
//! Prometheus.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::Response;
use prometheus::proto::MetricType;

use super::page::{self, esc, Line, Page};
use super::session::Caller;
use super::ConsoleState;

/// Series kept at most; beyond it new series are not sampled (and counted in the page).
pub const MAX_SERIES: usize = 5_000;

/// The metric families the console samples (a histogram's `_bucket`, `_count` and `_sum` go with
/// its name).
const SAMPLED: &[&str] = &[
    "recsys_rpc_requests_total",
    "recsys_rpc_latency_seconds",
    "recsys_rpc_shed_total",
    "recsys_rpc_in_flight",
    "recsys_rpc_queued",
    "recsys_cache_requests_total",
    "recsys_breaker_open",
    "recsys_member_vector_source_total",
    "recsys_store_read_seconds",
    "recsys_experiment_requests_total",
    "recsys_nearline_consumer_lag",
    "recsys_nearline_stalled",
    "recsys_nearline_dead_letters_total",
    "recsys_nearline_events_total",
    "recsys_nearline_fold_in_seconds",
];

/// One series: its metric (with the `_bucket`/`_count`/`_sum` suffix for histograms) and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

impl Series {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Sample {
    at: Instant,
    /// Indexed by series number; NaN where the series had no value.
    values: Vec<f64>,
}

#[derive(Default)]
struct Buffer {
    series: Vec<Series>,
    index: HashMap<Series, usize>,
    samples: VecDeque<Sample>,
    /// Series seen but not kept (beyond `MAX_SERIES`).
    dropped: usize,
    /// The last scrape error per endpoint (`None`: the last scrape worked).
    scrape_errors: BTreeMap<String, Option<String>>,
}

/// The ring buffer and what fills it.
pub struct Sampler {
    every: Duration,
    keep: usize,
    scrape: Vec<String>,
    buffer: Mutex<Buffer>,
}

impl Sampler {
    /// A sampler of every `every`, keeping an hour; `scrape`: other processes' `/metrics`.
    pub fn new(every: Duration, scrape: Vec<String>) -> Self {
        let keep = (3600 / every.as_secs().max(1)) as usize + 1;
        Sampler {
            every,
            keep,
            scrape,
            buffer: Mutex::new(Buffer::default()),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Samples now and then every `every` until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let sampler = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sampler.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sampler.sample().await;
            }
        })
    }

    /// One sample of this process and of every scraped endpoint.
    pub async fn sample(&self) {
        let mut read = local();
        let mut errors = BTreeMap::new();
        for endpoint in &self.scrape {
            match scrape(endpoint).await {
                Ok(text) => {
                    read.extend(parse_text(&text, endpoint));
                    errors.insert(endpoint.clone(), None);
                }
                Err(e) => {
                    errors.insert(endpoint.clone(), Some(e));
                }
            }
        }
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.scrape_errors = errors;
        let mut values = vec![f64::NAN; buffer.series.len()];
        for (series, value) in read {
            let n = match buffer.index.get(&series) {
                Some(&n) => n,
                None if buffer.series.len() >= MAX_SERIES => {
                    buffer.dropped += 1;
                    continue;
                }
                None => {
                    let n = buffer.series.len();
                    buffer.series.push(series.clone());
                    buffer.index.insert(series, n);
                    values.push(f64::NAN);
                    n
                }
            };
            values[n] = value;
        }
        buffer.samples.push_back(Sample {
            at: Instant::now(),
            values,
        });
        while buffer.samples.len() > self.keep {
            buffer.samples.pop_front();
        }
    }

    /// Per-second rates of the counters named `name` passing `keep`, summed per `group` label.
    fn rates(
        &self,
        name: &str,
        keep: impl Fn(&Series) -> bool,
        group: impl Fn(&Series) -> String,
    ) -> BTreeMap<String, Vec<(f64, Option<f64>)>> {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let groups = buffer.groups(name, keep, group);
        let now = Instant::now();
        let mut out = BTreeMap::new();
        for (label, members) in groups {
            let mut points = Vec::new();
            for pair in buffer.samples.iter().collect::<Vec<_>>().windows(2) {
                let seconds = pair[1].at.duration_since(pair[0].at).as_secs_f64();
                let mut delta = None;
                for &n in &members {
                    let (a, b) = (value(pair[0], n), value(pair[1], n));
                    if let Some(b) = b {
                        // A restarted process starts its counters again: count from zero.
                        let d = match a {
                            Some(a) if b >= a => b - a,
                            _ => b,
                        };
                        *delta.get_or_insert(0.0) += d;
                    }
                }
                points.push((
                    now.duration_since(pair[1].at).as_secs_f64(),
                    delta.map(|d| d / seconds.max(1e-9)),
                ));
            }
            out.insert(label, points);
        }
        out
    }

    /// The gauges named `name` passing `keep`, summed per `group` label.
    fn gauges(
        &self,
        name: &str,
        keep: impl Fn(&Series) -> bool,
        group: impl Fn(&Series) -> String,
    ) -> BTreeMap<String, Vec<(f64, Option<f64>)>> {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let groups = buffer.groups(name, keep, group);
        let now = Instant::now();
        groups
            .into_iter()
            .map(|(label, members)| {
                let points = buffer
                    .samples
                    .iter()
                    .map(|s| {
                        let sum = members
                            .iter()
                            .filter_map(|&n| value(s, n))
                            .fold(None, |acc: Option<f64>, v| Some(acc.unwrap_or(0.0) + v));
                        (now.duration_since(s.at).as_secs_f64(), sum)
                    })
                    .collect();
                (label, points)
            })
            .collect()
    }

    /// The `q` quantile of histogram `name` over each interval, per `group` label (seconds).
    fn quantiles(
        &self,
        name: &str,
        q: f64,
        keep: impl Fn(&Series) -> bool,
        group: impl Fn(&Series) -> String,
    ) -> BTreeMap<String, Vec<(f64, Option<f64>)>> {
        let bucket = format!("{name}_bucket");
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let groups = buffer.groups(&bucket, keep, group);
        let now = Instant::now();
        let samples: Vec<&Sample> = buffer.samples.iter().collect();
        let mut out = BTreeMap::new();
        for (label, members) in groups {
            let mut points = Vec::new();
            for pair in samples.windows(2) {
                // Counts per upper bound over the interval, summed across the group's series.
                let mut by_le: BTreeMap<OrderedF64, f64> = BTreeMap::new();
                for &n in &members {
                    let le = match buffer.series[n].label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(le) => le,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    if let Some(b) = value(pair[1], n) {
                        let d = match value(pair[0], n) {
                            Some(a) if b >= a => b - a,
                            _ => b,
                        };
                        *by_le.entry(OrderedF64(le)).or_default() += d;
                    }
                }
                points.push((
                    now.duration_since(pair[1].at).as_secs_f64(),
                    quantile(q, &by_le),
                ));
            }
            out.insert(label, points);
        }
        out
    }

    /// The time the samples cover (at least 10 s, at most the hour kept), and its label.
    fn span(&self) -> (f64, String) {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let covered = match (buffer.samples.front(), buffer.samples.back()) {
            (Some(first), Some(last)) => last.at.duration_since(first.at).as_secs_f64(),
            _ => 0.0,
        };
        let span = covered.max(10.0);
        let label = if span >= 120.0 {
            format!("-{:.0}m", span / 60.0)
        } else {
            format!("-{span:.0}s")
        };
        (span, label)
    }

    /// What the page says of its sources.
    fn status(&self) -> (usize, usize, usize, BTreeMap<String, Option<String>>) {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        (
            buffer.samples.len(),
            buffer.series.len(),
            buffer.dropped,
            buffer.scrape_errors.clone(),
        )
    }
}

impl Buffer {
    /// Series numbers of metric `name` passing `keep`, by group.
    fn groups(
        &self,
        name: &str,
        keep: impl Fn(&Series) -> bool,
        group: impl Fn(&Series) -> String,
    ) -> BTreeMap<String, Vec<usize>> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (n, series) in self.series.iter().enumerate() {
            if series.name == name && keep(series) {
                groups.entry(group(series)).or_default().push(n);
            }
        }
        groups
    }
}

fn value(sample: &Sample, n: usize) -> Option<f64> {
    sample.values.get(n).copied().filter(|v| !v.is_nan())
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedF64(f64);
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The `q` quantile from cumulative bucket counts, interpolated linearly inside the bucket (as
/// PromQL's `histogram_quantile`); `None` without observations.
fn quantile(q: f64, cumulative: &BTreeMap<OrderedF64, f64>) -> Option<f64> {
    let total = cumulative.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (&OrderedF64(le), &count) in cumulative {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let share = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// This process's sampled series.
fn local() -> Vec<(Series, f64)> {
    let mut out = Vec::new();
    for family in prometheus::gather() {
        let name = family.name();
        if !SAMPLED.contains(&name) {
            continue;
        }
        for metric in family.get_metric() {
            let labels: Vec<(String, String)> = metric
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let series = |name: String, labels: Vec<(String, String)>| Series { name, labels };
            match family.get_field_type() {
                MetricType::COUNTER => out.push((
                    series(name.to_string(), labels),
                    metric.get_counter().get_value(),
                )),
                MetricType::GAUGE => out.push((
                    series(name.to_string(), labels),
                    metric.get_gauge().get_value(),
                )),
                MetricType::HISTOGRAM => {
                    let h = metric.get_histogram();
                    for b in h.get_bucket() {
                        let mut labels = labels.clone();
                        labels.push(("le".into(), format_le(b.upper_bound())));
                        out.push((
                            series(format!("{name}_bucket"), labels),
                            b.cumulative_count() as f64,
                        ));
                    }
                    let mut inf = labels.clone();
                    inf.push(("le".into(), "+Inf".into()));
                    out.push((
                        series(format!("{name}_bucket"), inf),
                        h.get_sample_count() as f64,
                    ));
                    out.push((
                        series(format!("{name}_count"), labels),
                        h.get_sample_count() as f64,
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

fn format_le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        format!("{le}")
    }
}

/// The sampled series of a Prometheus text exposition, each labelled with its `instance` (the
/// endpoint's host and port).
fn parse_text(text: &str, endpoint: &str) -> Vec<(Series, f64)> {
    let instance = endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(endpoint)
        .to_string();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..open], &line[open..=close])
            }
            None => (line.split_whitespace().next().unwrap_or(""), ""),
        };
        let base = head
            .strip_suffix("_bucket")
            .or_else(|| head.strip_suffix("_count"))
            .unwrap_or(head);
        if !SAMPLED.contains(&head) && !SAMPLED.contains(&base) {
            continue;
        }
        let after = if rest.is_empty() {
            &line[head.len()..]
        } else {
            &line[head.len() + rest.len()..]
        };
        let Some(value) = after
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let mut labels = parse_labels(rest);
        labels.push(("instance".into(), instance.clone()));
        out.push((
            Series {
                name: head.to_string(),
                labels,
            },
            value,
        ));
    }
    out
}

/// `{a="1",b="x\"y"}` → pairs.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let inner = text.trim_start_matches('{').trim_end_matches('}');
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((name.trim().to_string(), value));
    }
    labels
}

/// GET `endpoint` (plain HTTP/1.1), its body; an error in words.
async fn scrape(endpoint: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| "not an http:// address".to_string())?;
    let (host, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/metrics"),
    };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut body = Vec::new();
        // A bounded read: an exposition larger than 16 MiB is not a metrics page.
        stream
            .take(16 << 20)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "no HTTP answer".to_string())?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!(
                "answered {}",
                head.lines().next().unwrap_or("nothing")
            ));
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(dechunk(body));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
}

/// A chunked body's data.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// One plot: title, PromQL, unit and lines.
struct Plot {
    id: &'static str,
    title: &'static str,
    promql: &'static str,
    unit: &'static str,
    lines: BTreeMap<String, Vec<(f64, Option<f64>)>>,
}

fn label_or(series: &Series, name: &str, default: &str) -> String {
    series.label(name).unwrap_or(default).to_string()
}

fn all(_: &Series) -> bool {
    true
}

fn plot_sections(sampler: &Sampler) -> Vec<(&'static str, Vec<Plot>)> {
    let ms = |mut lines: BTreeMap<String, Vec<(f64, Option<f64>)>>| {
        for points in lines.values_mut() {
            for p in points.iter_mut() {
                p.1 = p.1.map(|s| s * 1000.0);
            }
        }
        lines
    };
    let cache_hit = {
        let hits = sampler.rates(
            "recsys_cache_requests_total",
            |s| s.label("result") == Some("hit"),
            |_| "hit rate".into(),
        );
        let total = sampler.rates("recsys_cache_requests_total", all, |_| "hit rate".into());
        let mut lines = BTreeMap::new();
        if let (Some(h), Some(t)) = (hits.get("hit rate"), total.get("hit rate")) {
            let points = h
                .iter()
                .zip(t)
                .map(|(h, t)| {
                    (
                        h.0,
                        match (h.1, t.1) {
                            (Some(h), Some(t)) if t > 0.0 => Some(100.0 * h / t),
                            _ => None,
                        },
                    )
                })
                .collect();
            lines.insert("hit rate".to_string(), points);
        }
        lines
    };
    vec![
        (
            "Online",
            vec![
                Plot {
                    id: "qps",
                    title: "Requests per second",
                    promql: "sum by (rpc) (rate(recsys_rpc_requests_total[1m]))",
                    unit: "/s",
                    lines: sampler.rates("recsys_rpc_requests_total", all, |s| {
                        label_or(s, "rpc", "?")
                    }),
                },
                Plot {
                    id: "p99",
                    title: "p99 latency",
                    promql: "histogram_quantile(0.99, sum by (le, rpc) (rate(recsys_rpc_latency_seconds_bucket[1m])))",
                    unit: "ms",
                    lines: ms(sampler.quantiles("recsys_rpc_latency_seconds", 0.99, all, |s| {
                        label_or(s, "rpc", "?")
                    })),
                },
                Plot {
                    id: "failed",
                    title: "Failed requests per second",
                    promql: "sum by (code) (rate(recsys_rpc_requests_total{code!=\"Ok\"}[1m]))",
                    unit: "/s",
                    lines: sampler.rates(
                        "recsys_rpc_requests_total",
                        |s| s.label("code") != Some("Ok"),
                        |s| label_or(s, "code", "?"),
                    ),
                },
                Plot {
                    id: "shed",
                    title: "Shed requests per second",
                    promql: "sum by (reason) (rate(recsys_rpc_shed_total[1m]))",
                    unit: "/s",
                    lines: sampler.rates("recsys_rpc_shed_total", all, |s| {
                        label_or(s, "reason", "?")
                    }),
                },
            ],
        ),
        (
            "Feature store and cache",
            vec![
                Plot {
                    id: "cache",
                    title: "Cache hit rate",
                    promql: "sum(rate(recsys_cache_requests_total{result=\"hit\"}[1m])) / sum(rate(recsys_cache_requests_total[1m]))",
                    unit: "%",
                    lines: cache_hit,
                },
                Plot {
                    id: "breakers",
                    title: "Breakers open",
                    promql: "recsys_breaker_open",
                    unit: "",
                    lines: sampler.gauges("recsys_breaker_open", all, |s| {
                        label_or(s, "dependency", "?")
                    }),
                },
                Plot {
                    id: "sources",
                    title: "Member vectors by source",
                    promql: "sum by (source) (rate(recsys_member_vector_source_total[1m]))",
                    unit: "/s",
                    lines: sampler.rates("recsys_member_vector_source_total", all, |s| {
                        label_or(s, "source", "?")
                    }),
                },
                Plot {
                    id: "store_p99",
                    title: "Store read p99",
                    promql: "histogram_quantile(0.99, sum by (le) (rate(recsys_store_read_seconds_bucket[1m])))",
                    unit: "ms",
                    lines: ms(sampler.quantiles("recsys_store_read_seconds", 0.99, all, |s| {
                        label_or(s, "backend", "store")
                    })),
                },
            ],
        ),
        (
            "Nearline",
            vec![
                Plot {
                    id: "lag",
                    title: "Consumer lag by partition",
                    promql: "recsys_nearline_consumer_lag",
                    unit: "",
                    lines: sampler.gauges("recsys_nearline_consumer_lag", all, |s| {
                        format!("{}/{}", label_or(s, "topic", "?"), label_or(s, "partition", "?"))
                    }),
                },
                Plot {
                    id: "stalled",
                    title: "Stalled workers",
                    promql: "sum(recsys_nearline_stalled)",
                    unit: "",
                    lines: sampler.gauges("recsys_nearline_stalled", all, |_| "stalled".into()),
                },
                Plot {
                    id: "dead_letters",
                    title: "Dead letters per second",
                    promql: "sum by (reason) (rate(recsys_nearline_dead_letters_total[1m]))",
                    unit: "/s",
                    lines: sampler.rates("recsys_nearline_dead_letters_total", all, |s| {
                        label_or(s, "reason", "?")
                    }),
                },
                Plot {
                    id: "fold_ins",
                    title: "Fold-ins and events per second",
                    promql: "rate(recsys_nearline_fold_in_seconds_count[1m]), sum(rate(recsys_nearline_events_total[1m]))",
                    unit: "/s",
                    lines: {
                        let mut lines =
                            sampler.rates("recsys_nearline_fold_in_seconds_count", all, |_| {
                                "fold-ins".into()
                            });
                        lines.extend(
                            sampler.rates("recsys_nearline_events_total", all, |_| "events".into()),
                        );
                        lines
                    },
                },
            ],
        ),
    ]
}

/// The plots alone (what the page's script refreshes).
fn plots_html(state: &ConsoleState) -> String {
    let sampler = &state.sampler;
    let (samples, series, dropped, scrapes) = sampler.status();
    let mut html = String::new();
    let _ = write!(
        html,
        "<p class=muted>{samples} samples every {} s ({} series{}); up to the last hour, from this server's ring buffer</p>",
        sampler.every.as_secs(),
        series,
        if dropped > 0 {
            format!(", {dropped} not kept: over {MAX_SERIES}")
        } else {
            String::new()
        }
    );
    for (endpoint, error) in &scrapes {
        match error {
            None => {
                let _ = write!(
                    html,
                    "<p class=muted>Scraping <code>{}</code>: ok</p>",
                    esc(endpoint)
                );
            }
            Some(e) => {
                let _ = write!(
                    html,
                    "<p class=err>Scraping <code>{}</code> failed: {}</p>",
                    esc(endpoint),
                    esc(e)
                );
            }
        }
    }
    let (span, from) = sampler.span();
    for (section, plots) in plot_sections(sampler) {
        let _ = write!(html, "<h2>{section}</h2><div class=plots>");
        for plot in plots {
            let lines: Vec<Line<'_>> = plot
                .lines
                .iter()
                .take(12)
                .map(|(label, points)| Line {
                    label,
                    points: points.clone(),
                })
                .collect();
            let _ = write!(
                html,
                "<div class=plot id=\"plot-{}\"><b>{}</b>{}<br>{}<br><code>{}</code></div>",
                plot.id,
                esc(plot.title),
                if lines.is_empty() {
                    " <span class=muted>(no data)</span>"
                } else {
                    ""
                },
                page::plot(&lines, span, plot.unit, (&from, "now")),
                esc(plot.promql)
            );
        }
        html.push_str("</div>");
    }
    html
}

pub fn page(state: &ConsoleState, caller: &Caller) -> Response {
    let mut page = Page::new("Health", "health");
    let reader = state.ranker.reader();
    let catalog = state.ranker.catalog();
    let mut html = String::new();
    let _ = write!(
        html,
        "<table id=now><tr><th>Model served</th><td>{}</td></tr>\
         <tr><th>Cache</th><td>{} — breaker {}</td></tr>\
         <tr><th>Feature store</th><td>{} — breaker {}</td></tr>\
         <tr><th>Store reads in flight</th><td>{}</td></tr></table>",
        esc(&catalog
            .map(|c| format!("{} ({} items)", c.version, c.len()))
            .unwrap_or_else(|| "none".into())),
        esc(reader.cache_name()),
        if reader.breaker_open() {
            "<span class=\"tag bad\">open</span>"
        } else {
            "<span class=tag>closed</span>"
        },
        esc(reader.store().backend()),
        if reader.store_breaker_open() {
            "<span class=\"tag bad\">open</span>"
        } else {
            "<span class=tag>closed</span>"
        },
        reader.flights_running(),
    );
    let _ = write!(
        html,
        "<div id=plots data-every={}>{}</div><script src=/console/live.js></script>",
        state.sampler.every.as_secs(),
        plots_html(state)
    );
    page.html(&html);
    page.render(caller)
}

pub fn plots(state: &ConsoleState) -> Response {
    page::html(axum::http::StatusCode::OK, plots_html(state))
}

/// Requests per second per variant of `experiment`, for the experiments page.
pub fn variant_rates(sampler: &Sampler, experiment: &str) -> String {
    let lines = sampler.rates(
        "recsys_experiment_requests_total",
        |s| s.label("experiment") == Some(experiment),
        |s| label_or(s, "variant", "?"),
    );
    let (span, from) = sampler.span();
    let lines: Vec<Line<'_>> = lines
        .iter()
        .map(|(label, points)| Line {
            label,
            points: points.clone(),
        })
        .collect();
    page::plot(&lines, span, "/s", (&from, "now"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_interpolates_inside_its_bucket() {
        let buckets: BTreeMap<OrderedF64, f64> = [(0.1, 50.0), (0.2, 90.0), (f64::INFINITY, 100.0)]
            .into_iter()
            .map(|(le, c)| (OrderedF64(le), c))
            .collect();
        // Rank 50 is the top of the first bucket; rank 70 half way through the second.
        assert!((quantile(0.5, &buckets).unwrap() - 0.1).abs() < 1e-12);
        assert!((quantile(0.7, &buckets).unwrap() - 0.15).abs() < 1e-12);
        // Beyond the last finite bound: that bound.
        assert_eq!(quantile(0.99, &buckets), Some(0.2));
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
    }

    #[test]
    fn the_text_format_is_read_for_the_sampled_metrics_only() {
        let text = "# HELP x y\n\
            recsys_nearline_consumer_lag{topic=\"events\",partition=\"3\"} 17\n\
            recsys_nearline_fold_in_seconds_bucket{le=\"0.001\"} 4\n\
            recsys_nearline_fold_in_seconds_count 5\n\
            recsys_other_total 9\n\
            recsys_nearline_dead_letters_total{reason=\"a \\\"quoted\\\" reason\"} 2\n";
        let read = parse_text(text, "http://10.0.0.2:9101/metrics");
        assert_eq!(read.len(), 4, "{read:?}");
        assert_eq!(read[0].0.label("partition"), Some("3"));
        assert_eq!(read[0].0.label("instance"), Some("10.0.0.2:9101"));
        assert_eq!(read[0].1, 17.0);
        assert_eq!(read[1].0.name, "recsys_nearline_fold_in_seconds_bucket");
        assert_eq!(read[2].1, 5.0);
        assert_eq!(read[3].0.label("reason"), Some("a \"quoted\" reason"));
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_survive_a_restart() {
        let sampler = Sampler::new(Duration::from_secs(10), vec![]);
        let series = Series {
            name: "recsys_rpc_shed_total".into(),
            labels: vec![("reason".into(), "queue_full".into())],
        };
        {
            let mut buffer = sampler.buffer.lock().unwrap();
            buffer.series.push(series.clone());
            buffer.index.insert(series, 0);
            let start = Instant::now() - Duration::from_secs(30);
            for (i, v) in [100.0, 150.0, 20.0].into_iter().enumerate() {
                buffer.samples.push_back(Sample {
                    at: start + Duration::from_secs(10 * i as u64),
                    values: vec![v],
                });
            }
        }
        let rates = sampler.rates("recsys_rpc_shed_total", all, |s| label_or(s, "reason", "?"));
        let points = &rates["queue_full"];
        assert_eq!(points.len(), 2);
        assert!((points[0].1.unwrap() - 5.0).abs() < 1e-9);
        // The counter went back to 20: a restart, counted from zero.
        assert!((points[1].1.unwrap() - 2.0).abs() < 1e-9);
    }
}
