//! The console in a real browser: Debian's `chromium`, headless, driven through `chromedriver`
//! (WebDriver), against `recsys online serve` with two trained versions and an experiments file.
//!
//! Every page loads without a browser console error; the member preview shows the items the
//! gRPC Homepage gives that member; a read-only key sees no promote action and is refused one;
//! an operator's roll back moves `CURRENT` and the server swaps the version in; a refused
//! experiments file is shown with its error. Screenshots of the four pages are saved under
//! `$CARGO_TARGET_TMPDIR/console/` (the README's pictures come from there).
//!
//! Prints SKIPPED when `chromedriver` or `chromium` is missing (`.ci/run` installs both).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::HomepageRequest;
use recsys_shared::testkit::{free_port, wait_for_port};
use serde_json::{json, Value};

mod common;
use common::{last_json, recsys, stderr, synth, wait_until, Process, NO_ENV};

const OPERATOR_KEY: &str = "operator-key-0123456789abcdef";
const VIEWER_KEY: &str = "viewer-key-0123456789abcdef";
const MEMBER: &str = "u0000007";

/// One HTTP/1.1 exchange with chromedriver; the JSON answer's `value`.
fn webdriver(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read the head, then exactly Content-Length bytes (chromedriver keeps the connection open).
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    let (head, body) = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{method} {path}: chromedriver closed the connection");
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("chromedriver sends Content-Length");
            while answer.len() < end + 4 + length {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "{method} {path}: the answer was cut short");
                answer.extend_from_slice(&buf[..n]);
            }
            break (
                head,
                String::from_utf8_lossy(&answer[end + 4..end + 4 + length]).to_string(),
            );
        }
    };
    let value: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {head}\n{body}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path}: {head}\n{value}"
    );
    value["value"].clone()
}

/// A headless browser session.
struct Browser {
    port: u16,
    session: String,
    base: String,
    shots: PathBuf,
    _driver: Process,
}

impl Browser {
    /// A browser; `javascript: false` starts it with the pages' scripts off (WebDriver's own
    /// still run).
    fn start(base: String, shots: PathBuf, javascript: bool) -> Browser {
        let port = free_port();
        let driver = Process(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "chromedriver did not listen"
        );
        let session = webdriver(
            port,
            "POST",
            "/session",
            Some(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium().unwrap().to_string_lossy(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000",
                             format!("--blink-settings=scriptEnabled={javascript}")]
                },
                "goog:loggingPrefs": {"browser": "ALL"}
            }}})),
        )["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            port,
            session,
            base,
            shots,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        webdriver(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
    }

    /// Opens `path` of the console and checks the browser logged no error on the way.
    fn open(&self, path: &str) {
        self.call(
            "POST",
            "/url",
            Some(json!({"url": format!("{}{path}", self.base)})),
        );
        self.assert_no_console_errors(path);
    }

    fn assert_no_console_errors(&self, during: &str) {
        let log = self.call("POST", "/se/log", Some(json!({"type": "browser"})));
        let errors: Vec<&Value> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        assert!(
            errors.is_empty(),
            "{during}: browser console errors {errors:?}"
        );
    }

    /// Reads the browser's log, which must hold only the refusal `status` (and at least one).
    fn expect_refusal(&self, status: u16) {
        let log = self.call("POST", "/se/log", Some(json!({"type": "browser"})));
        let severe: Vec<&Value> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        assert!(!severe.is_empty(), "no {status} was logged");
        for entry in severe {
            assert!(
                entry["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("status of {status}")),
                "{entry}"
            );
        }
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .as_str()
            .unwrap()
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    /// Clicks what leads to another page, and waits until `arrived` (a JavaScript expression)
    /// holds on the page the browser shows.
    fn click(&self, css: &str, arrived: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
        wait_until(
            &format!("{arrived} after clicking {css}"),
            Duration::from_secs(20),
            || {
                self.script(&format!(
                    "return document.readyState === 'complete' && !!({arrived});"
                )) == Value::Bool(true)
            },
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        );
    }

    fn sign_in(&self, key: &str) {
        self.open("/console/login");
        self.type_into("#key", key);
        self.click("#signin", "document.querySelector('header .who')");
        self.assert_no_console_errors("signing in");
    }

    fn sign_out(&self) {
        self.open("/console/models");
        self.click("header form button", "document.getElementById('key')");
    }

    fn screenshot(&self, name: &str) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::write(self.shots.join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            webdriver(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        });
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn train(data: &Path, models: &Path, factors: &str) -> String {
    let (interactions, items) = (
        data.join("interactions.parquet"),
        data.join("items.parquet"),
    );
    let args = [
        "offline",
        "train",
        "--interactions",
        interactions.to_str().unwrap(),
        "--items",
        items.to_str().unwrap(),
        "--model-root",
        models.to_str().unwrap(),
        "--family",
        "ials",
        "--factors",
        factors,
        "--iterations",
        "4",
        "--force",
    ];
    let o = recsys(&args, NO_ENV);
    assert!(o.status.success(), "{}", stderr(&o));
    last_json(&o)["version"].as_str().unwrap().to_string()
}

/// The homepage's item ids row by row, as gRPC gives them to the operator.
fn grpc_homepage(grpc: u16) -> Vec<Vec<String>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = RankingClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(HomepageRequest {
            user_id: MEMBER.into(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {OPERATOR_KEY}").parse().unwrap(),
        );
        let answer = client.homepage(request).await.unwrap().into_inner();
        answer
            .rows
            .iter()
            .map(|r| r.items.iter().map(|i| i.item_id.clone()).collect())
            .collect()
    })
}

#[test]
fn the_console_in_a_browser() {
    if chromium().is_none() || !on_path("chromedriver") {
        println!("SKIPPED: chromium and chromedriver are needed (apt-get install chromium chromium-driver)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().join("data"), dir.path().join("models"));
    synth(&data, 400, 150, 20_000, "11");
    let first = train(&data, &models, "8");
    let second = train(&data, &models, "16");
    assert_ne!(first, second);
    std::fs::write(
        models.join("experiments.toml"),
        format!(
            "[[experiment]]\nname = \"bigger-model\"\ntraffic = 1.0\n\n\
             [[experiment.variant]]\nname = \"control\"\nweight = 1\n\n\
             [[experiment.variant]]\nname = \"eight-factors\"\nweight = 1\nmodel_version = \"{first}\"\n"
        ),
    )
    .unwrap();
    // A take-rate report as `experiment-report --out` saves it, for the experiments page.
    std::fs::create_dir_all(models.join("reports")).unwrap();
    let report = recsys_shared::take_rate::ExperimentReport {
        experiment: "bigger-model".into(),
        control: "control".into(),
        variants: vec![
            variant("control", 0.0412, None),
            variant("eight-factors", 0.0475, Some((0.153, 3.1e-4))),
        ],
        members_in_several_variants: 0,
    };
    std::fs::write(
        models.join("reports/experiment-bigger-model.json"),
        serde_json::to_string(&report).unwrap(),
    )
    .unwrap();
    for (name, key) in [("operator", OPERATOR_KEY), ("viewer", VIEWER_KEY)] {
        std::fs::write(dir.path().join(format!("{name}.key")), key).unwrap();
    }
    let (grpc, metrics, rest) = (free_port(), free_port(), free_port());
    let config = dir.path().join("recsys.toml");
    std::fs::write(
        &config,
        format!(
            "[online]\nrest_listen = \"127.0.0.1:{rest}\"\n\n[online.console]\nsample_seconds = 1\n\n\
             [online.auth]\nenabled = true\n\n\
             [[online.auth.keys]]\nname = \"operator\"\nkey_file = \"{d}/operator.key\"\n\n\
             [[online.auth.keys]]\nname = \"viewer\"\nkey_file = \"{d}/viewer.key\"\nrpcs = [\"ConsoleRead\"]\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _server = Process(
        Command::new(env!("CARGO_BIN_EXE_recsys"))
            .args(["--config", config.to_str().unwrap(), "online", "serve"])
            .args(["--model-root", models.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .env("RECSYS_LOG", "warn")
            .env("RECSYS__STORE__EMBEDDED__PATH", dir.path().join("store"))
            .env("RECSYS__ONLINE__MODEL_POLL_MS", "200")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for_port(rest, Duration::from_secs(60)),
        "the REST port did not open"
    );
    // Traffic for the health plots, before the browser looks.
    let expected = grpc_homepage(grpc);
    assert!(!expected.is_empty() && !expected[0].is_empty());
    let traffic = Traffic::start(grpc);
    std::thread::sleep(Duration::from_secs(3));

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();
    let browser = Browser::start(format!("http://127.0.0.1:{rest}"), shots.clone(), true);

    // Without a session every page leads to the sign-in form.
    browser.open("/console/models");
    assert!(browser.text().contains("Sign in"), "{}", browser.text());
    browser.type_into("#key", "not-a-key-at-all-0000");
    browser.click("#signin", "document.querySelector('p.err')");
    assert!(browser.text().contains("not valid"), "{}", browser.text());

    // The read-only key: every page, no promote action, and a promote refused.
    browser.sign_in(VIEWER_KEY);
    browser.open("/console/models");
    let text = browser.text();
    assert!(text.contains(&first) && text.contains(&second), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(
        !text.contains("Roll back to"),
        "a viewer is offered a roll back: {text}"
    );
    browser.call(
        "POST",
        "/url",
        Some(json!({"url": format!("http://127.0.0.1:{rest}/console/models/{first}/promote")})),
    );
    browser.expect_refusal(403);
    assert!(
        browser.text().contains("ConsoleOperate"),
        "{}",
        browser.text()
    );
    assert_eq!(current(&models), second, "a viewer moved CURRENT");
    browser.sign_out();

    // The operator: the four pages, each without a console error.
    browser.sign_in(OPERATOR_KEY);
    browser.open("/console/models");
    assert!(browser.text().contains("operator"));
    browser.screenshot("models");
    browser.open(&format!("/console/models/{second}"));
    assert!(browser.text().contains("recall@"), "{}", browser.text());
    browser.screenshot("model");

    browser.open("/console/experiments");
    let text = browser.text();
    assert!(
        text.contains("bigger-model") && text.contains("eight-factors"),
        "{text}"
    );
    assert!(
        text.contains("0.0475") && text.contains("+15.3 %"),
        "the take-rate report: {text}"
    );
    browser.screenshot("experiments");

    browser.open("/console/member");
    browser.type_into("#member-id", MEMBER);
    browser.click("#preview", "document.getElementById('summary')");
    browser.assert_no_console_errors("the member preview");
    let shown = browser.script(
        "return Array.from(document.querySelectorAll('.items')).map(function(r){\
         return Array.from(r.querySelectorAll('.item')).map(function(i){return i.dataset.item;});});",
    );
    let shown: Vec<Vec<String>> = serde_json::from_value(shown).unwrap();
    assert_eq!(
        shown,
        grpc_homepage(grpc),
        "the preview differs from gRPC Homepage"
    );
    assert!(browser.text().contains("Recent history"));
    browser.screenshot("member");

    browser.open("/console/health");
    wait_until(
        "the health plots to have lines",
        Duration::from_secs(20),
        || {
            browser
                .script("return document.querySelectorAll('#plot-qps path').length;")
                .as_u64()
                > Some(0)
        },
    );
    // The live refresh replaces the plots in place (the script's only job).
    browser.script("document.querySelector('#plots .plot').setAttribute('data-old','1');");
    wait_until("the live refresh", Duration::from_secs(10), || {
        browser.script("return document.querySelector('#plots .plot').hasAttribute('data-old');")
            == Value::Bool(false)
    });
    browser.assert_no_console_errors("the live plots");
    browser.screenshot("health");

    // Roll back from the console: confirm, and CURRENT moves; the server swaps it in.
    browser.open("/console/models");
    browser.click(
        &format!("tr[data-version='{first}'] a.act"),
        "document.getElementById('confirm')",
    );
    assert!(browser.text().contains("Make"), "{}", browser.text());
    browser.click("#confirm", "document.getElementById('versions')");
    browser.assert_no_console_errors("the roll back");
    let url = browser.call("GET", "/url", None);
    assert_eq!(
        current(&models),
        first,
        "CURRENT did not move; the browser is at {url}: {}",
        browser.text()
    );
    wait_until(
        "the server to serve the rolled-back version",
        Duration::from_secs(20),
        || {
            browser.open("/console/models");
            browser
                .script("return document.getElementById('serving').textContent;")
                .as_str()
                == Some(first.as_str())
        },
    );

    // A refused experiments file is shown with its error; the one in force stays.
    std::fs::write(
        models.join("experiments.toml"),
        "[[experiment]]\nname = \"broken\"\ntraffic = 2.0\n",
    )
    .unwrap();
    wait_until(
        "the refusal on the experiments page",
        Duration::from_secs(20),
        || {
            browser.open("/console/experiments");
            browser.text().contains("Last refused file")
        },
    );
    let text = browser.text();
    assert!(
        text.contains("traffic") && text.contains("bigger-model"),
        "{text}"
    );

    for page in ["models", "experiments", "member", "health"] {
        let bytes = std::fs::metadata(shots.join(format!("{page}.png")))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(bytes > 10_000, "{page}.png is {bytes} bytes");
    }
    drop(browser);

    // Without JavaScript: sign-in, the member preview and the plots are all plain HTML.
    let plain = Browser::start(format!("http://127.0.0.1:{rest}"), shots.clone(), false);
    plain.sign_in(VIEWER_KEY);
    plain.open("/console/member");
    plain.type_into("#member-id", MEMBER);
    plain.click("#preview", "document.getElementById('summary')");
    let items = plain.script("return document.querySelectorAll('.items .item').length;");
    assert!(items.as_u64() > Some(0), "no items without JavaScript");
    plain.open("/console/health");
    let lines = plain.script("return document.querySelectorAll('#plot-qps path').length;");
    assert!(lines.as_u64() > Some(0), "no plot without JavaScript");
    plain.open("/console/experiments");
    assert!(plain.text().contains("bigger-model"));
    traffic.stop();
    println!("screenshots in {}", shots.display());
}

/// Homepage requests for a spread of members every 50 ms, so the health plots have data.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Traffic {
    fn start(grpc: u16) -> Traffic {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let mut client = RankingClient::connect(format!("http://127.0.0.1:{grpc}"))
                    .await
                    .unwrap();
                let mut answered = 0;
                for n in 0u64.. {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut request = tonic::Request::new(HomepageRequest {
                        user_id: format!("u{:07}", n % 400),
                        ..Default::default()
                    });
                    request.metadata_mut().insert(
                        "authorization",
                        format!("Bearer {OPERATOR_KEY}").parse().unwrap(),
                    );
                    if client.homepage(request).await.is_ok() {
                        answered += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answered
            })
        });
        Traffic { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answered = self.thread.join().unwrap();
        assert!(answered > 0, "no Homepage answered during the run");
    }
}

fn variant(
    name: &str,
    take_rate: f64,
    lift: Option<(f64, f64)>,
) -> recsys_shared::take_rate::VariantFigures {
    recsys_shared::take_rate::VariantFigures {
        variant: name.into(),
        members: 200,
        impressions: 6000,
        plays: (6000.0 * take_rate) as u64,
        take_rate,
        take_rate_ci95: [take_rate - 0.004, take_rate + 0.004],
        plays_per_member: 30.0 * take_rate,
        plays_per_member_ci95: [30.0 * take_rate - 0.1, 30.0 * take_rate + 0.1],
        lift: lift.map(|l| l.0),
        p_value: lift.map(|l| l.1),
    }
}

fn current(models: &Path) -> String {
    std::fs::read_to_string(models.join("CURRENT"))
        .unwrap()
        .trim()
        .to_string()
}
