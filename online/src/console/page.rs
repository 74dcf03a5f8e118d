//! The console's HTML: the frame every page shares, escaping, forms, and line plots drawn as
//! inline SVG on the server (so they show without JavaScript).

use std::collections::HashMap;
use std::fmt::Write;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::session::Caller;

/// The stylesheet (`/console/style.css`).
pub const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d232b;color:#fff;display:flex;align-items:center;gap:24px;padding:0 20px;height:48px}
header a{color:#c9d1db;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .who{margin-left:auto;color:#9aa5b1;font-size:12px}header form{display:inline}
header button{background:none;border:1px solid #55606c;color:#c9d1db;border-radius:4px;cursor:pointer}
main{padding:16px 20px;max-width:1200px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff;margin-bottom:12px}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.tag{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;background:#e3e6ea}
.cur{background:#cfe8d6}.bad{background:#f6d3d3}.warn{background:#f8e7c2}
.muted{color:#6b7682;font-size:12px}pre{background:#fff;border:1px solid #e3e6ea;padding:8px;overflow:auto;max-height:320px}
.row{display:flex;gap:24px;flex-wrap:wrap}.col{flex:1;min-width:320px}
.items{display:flex;gap:8px;overflow-x:auto;margin-bottom:8px;padding-bottom:4px}
.item{background:#fff;border:1px solid #e3e6ea;border-radius:4px;padding:6px 8px;min-width:130px;max-width:130px;font-size:12px}
.item b{display:block;font-size:13px}.plots{display:flex;flex-wrap:wrap;gap:12px}
.plot{background:#fff;border:1px solid #e3e6ea;padding:6px 8px;width:370px}.plot code{font-size:11px;color:#6b7682;word-break:break-all}
button.act{background:#1f6feb;color:#fff;border:0;border-radius:4px;padding:4px 10px;cursor:pointer}
input{padding:4px 6px}.err{color:#a4161a}
"#;

/// The only script: the health page's plots refreshed in place every sample.
pub const LIVE_JS: &str = r#"(function(){
var box=document.getElementById('plots');if(!box)return;
var every=(+box.getAttribute('data-every')||10)*1000;
setInterval(function(){fetch('/console/health/plots',{credentials:'same-origin'})
.then(function(r){return r.ok?r.text():null}).then(function(t){if(t!==null)box.innerHTML=t})
.catch(function(){})},every);})();
"#;

/// HTML-escapes text for element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Builds one page inside the shared frame.
pub struct Page {
    title: String,
    tab: &'static str,
    body: String,
}

impl Page {
    pub fn new(title: impl Into<String>, tab: &'static str) -> Self {
        Page {
            title: title.into(),
            tab,
            body: String::new(),
        }
    }

    /// Appends raw HTML (already escaped).
    pub fn html(&mut self, html: &str) -> &mut Self {
        self.body.push_str(html);
        self
    }

    /// The complete document for `caller`.
    pub fn render(&self, caller: &Caller) -> Response {
        let mut out = String::with_capacity(self.body.len() + 2048);
        let _ = write!(
            out,
            "<!doctype html><html lang=en><head><meta charset=utf-8>\
             <meta name=viewport content=\"width=device-width\">\
             <title>{} · recsys console</title>\
             <link rel=stylesheet href=/console/style.css>\
             <link rel=icon href=\"data:,\"></head><body><header><b>recsys</b>",
            esc(&self.title)
        );
        for (tab, label) in [
            ("models", "Models"),
            ("experiments", "Experiments"),
            ("member", "Member preview"),
            ("health", "Health"),
        ] {
            let class = if tab == self.tab { " class=on" } else { "" };
            let _ = write!(out, "<a href=/console/{tab}{class}>{label}</a>");
        }
        let role = if caller.operate {
            "operator"
        } else {
            "read-only"
        };
        let _ = write!(
            out,
            "<span class=who>{} · {role}</span>\
             <form method=post action=/console/logout><button>Sign out</button></form>\
             </header><main><h1>{}</h1>{}</main></body></html>",
            esc(&caller.name),
            esc(&self.title),
            self.body
        );
        html(StatusCode::OK, out)
    }
}

/// An HTML answer with the console's headers.
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body,
    )
        .into_response()
}

/// A page that says only what went wrong.
pub fn error(status: StatusCode, message: &str) -> Response {
    html(
        status,
        format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · recsys console</title>\
             <link rel=stylesheet href=/console/style.css><link rel=icon href=\"data:,\"></head>\
             <body><main><h1>{}</h1><p class=err>{}</p><p><a href=/console/models>Back to the console</a> · \
             <a href=/console/login>Sign in with another key</a></p></main></body></html>",
            status.as_u16(),
            status,
            esc(message)
        ),
    )
}

/// The sign-in form, with what went wrong the last time.
pub fn login(problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=err>{}</p>", esc(p)))
        .unwrap_or_default();
    // 200 with the problem on the form, as a browser expects from a form it may fill in again.
    html(
        StatusCode::OK,
        format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in · recsys console</title>\
             <link rel=stylesheet href=/console/style.css><link rel=icon href=\"data:,\"></head><body>\
             <header><b>recsys</b></header><main><h1>Sign in</h1>{problem}\
             <form method=post action=/console/login><p>API key (one of <code>online.auth.keys</code> \
             granted <code>ConsoleRead</code>)</p><input type=password name=key id=key size=48 \
             autocomplete=off autofocus> <button class=act id=signin>Sign in</button></form></main></body></html>"
        ),
    )
}

/// A hidden CSRF field for `caller`'s forms.
pub fn csrf_field(caller: &Caller) -> String {
    match &caller.csrf {
        Some(token) => format!("<input type=hidden name=csrf value={}>", esc(token)),
        None => String::new(),
    }
}

/// One line of a plot.
pub struct Line<'a> {
    pub label: &'a str,
    /// `(seconds before now, value)`; `None` values are gaps.
    pub points: Vec<(f64, Option<f64>)>,
}

const COLOURS: [&str; 6] = [
    "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a",
];

/// A line plot of `lines` over `span` (x runs from `span` ago to now), as inline SVG; `axis`
/// labels the left and right ends of the x axis.
pub fn plot(lines: &[Line<'_>], span: f64, unit: &str, axis: (&str, &str)) -> String {
    let (w, h, left, bottom) = (360.0, 110.0, 44.0, 16.0);
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1))
        .fold(0.0f64, f64::max);
    let top = match unit {
        "%" => 100.0,
        _ if max <= 0.0 => 1.0,
        _ => max * 1.1,
    };
    let mut svg = format!(
        "<svg width={w} height={} viewBox=\"0 0 {w} {}\" role=img>\
         <line x1={left} y1=0 x2={left} y2={} stroke=#c9d1db />\
         <line x1={left} y1={} x2={w} y2={} stroke=#c9d1db />\
         <text x=2 y=10 font-size=10 fill=#6b7682>{}</text>\
         <text x=2 y={} font-size=10 fill=#6b7682>0</text>\
         <text x={left} y={} font-size=10 fill=#6b7682>{}</text>\
         <text x={} y={} font-size=10 fill=#6b7682 text-anchor=end>{}</text>",
        h + 30.0,
        h + 30.0,
        h - bottom,
        h - bottom,
        h - bottom,
        format_value(top, unit),
        h - bottom,
        h - 2.0,
        esc(axis.0),
        w - 2.0,
        h - 2.0,
        esc(axis.1),
    );
    let x = |age: f64| left + (w - left) * (1.0 - age / span).clamp(0.0, 1.0);
    let y = |v: f64| (h - bottom) * (1.0 - v / top);
    for (n, line) in lines.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let mut path = String::new();
        let mut pen_down = false;
        for &(age, value) in &line.points {
            match value {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(age),
                        y(v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                svg,
                "<path d=\"{path}\" fill=none stroke={colour} stroke-width=1.5 />"
            );
        }
        let last = line.points.iter().rev().find_map(|p| p.1);
        let _ = write!(
            svg,
            "<text x={} y={} font-size=10 fill={colour}>{} {}</text>",
            left + 4.0 + (n % 3) as f64 * 105.0,
            h + 4.0 + (n / 3) as f64 * 12.0,
            esc(&truncate(line.label, 14)),
            last.map(|v| format_value(v, unit))
                .unwrap_or_else(|| "–".into())
        );
    }
    svg.push_str("</svg>");
    svg
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars().take(n - 1).chain(['…']).collect()
    }
}

/// A value with its unit, short.
pub fn format_value(v: f64, unit: &str) -> String {
    let number = if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    match unit {
        "" => number,
        "%" => format!("{number}%"),
        unit => format!("{number} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc("<b a=\"1\">'x' & y</b>"),
            "&lt;b a=&quot;1&quot;&gt;&#39;x&#39; &amp; y&lt;/b&gt;"
        );
        assert_eq!(url("a b/é"), "a+b%2F%C3%A9");
        let fields = form(b"key=a%2Bb+c&csrf=1");
        assert_eq!(fields["key"], "a+b c");
    }

    #[test]
    fn a_plot_draws_each_line_and_breaks_at_gaps() {
        let svg = plot(
            &[
                Line {
                    label: "p0",
                    points: vec![(60.0, Some(1.0)), (30.0, None), (0.0, Some(3.0))],
                },
                Line {
                    label: "<p1>",
                    points: vec![(60.0, Some(2.0)), (0.0, Some(2.0))],
                },
            ],
            3600.0,
            "",
            ("-60m", "now"),
        );
        assert_eq!(svg.matches("<path").count(), 2);
        // The gap lifts the pen: two moves on the first line.
        let first = svg.split("<path d=\"").nth(1).unwrap();
        assert_eq!(first.split('"').next().unwrap().matches('M').count(), 2);
        assert!(svg.contains("&lt;p1&gt;"), "labels are escaped");
    }
}
