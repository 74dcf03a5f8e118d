//! The offline tier through the real `recsys` binary: synth → train → publish, the publish gate,
//! rollback, crashes injected mid-publish, and every bad-input case, each leaving `CURRENT` as it
//! was.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

mod common;
use common::{last_json, recsys, stderr, synth, NO_ENV};

/// The fixture's model: iALS (what these tests look at: factors, fold-in), 16 factors, 6
/// iterations.
const SMALL_IALS: [&str; 6] = ["--family", "ials", "--factors", "16", "--iterations", "6"];

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        synth(&data, 400, 150, 20000, "3");
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("models")
    }

    fn train_with(&self, interactions: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec![
            "offline",
            "train",
            "--interactions",
            interactions.to_str().unwrap(),
            "--items",
            self.dir
                .path()
                .join("data/items.parquet")
                .to_str()
                .unwrap()
                .to_owned()
                .leak(),
            "--model-root",
            self.root().to_str().unwrap().to_owned().leak(),
        ];
        args.extend(SMALL_IALS);
        args.extend_from_slice(extra);
        recsys(&args, env)
    }

    fn train(&self, extra: &[&str]) -> Output {
        self.train_with(&self.path("data/interactions.parquet"), extra, &[])
    }

    /// Trains without evaluation and returns the version published.
    fn publish(&self) -> String {
        let o = self.train(&["--skip-eval"]);
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)["version"].as_str().unwrap().to_string()
    }

    /// `recsys offline <command> --model-root <root> <extra>`.
    fn on_root(&self, command: &str, extra: &[&str]) -> Output {
        let root = self.root();
        let mut args = vec!["offline", command, "--model-root", root.to_str().unwrap()];
        args.extend_from_slice(extra);
        recsys(&args, NO_ENV)
    }

    fn current(&self) -> Option<String> {
        fs::read_to_string(self.root().join("CURRENT"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| {
                        self.root().join(n).join("manifest.json").exists() && !n.starts_with('.')
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[test]
fn train_publishes_a_complete_version_and_beats_popularity() {
    let f = Fixture::new();
    let o = f.train(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let result = last_json(&o);
    assert_eq!(result["published"], true);
    let version = result["version"].as_str().unwrap();
    assert_eq!(f.current().as_deref(), Some(version));
    assert!(result["train_seconds"].as_f64().unwrap() > 0.0);
    let model = &result["metrics"]["model"];
    let popularity = &result["metrics"]["popularity"];
    for key in ["recall@20", "recall@50", "ndcg@100"] {
        assert!(
            model[key].as_f64().unwrap() > popularity[key].as_f64().unwrap(),
            "{key}: {result}"
        );
    }
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(f.root().join(version).join("manifest.json")).unwrap(),
    )
    .unwrap();
    for file in [
        "item_factors.parquet",
        "user_factors.parquet",
        "item_popularity.parquet",
        "items.parquet",
        "user_history.parquet",
    ] {
        assert_eq!(
            manifest["files"][file]["sha256"].as_str().unwrap().len(),
            64,
            "{file}"
        );
    }
    assert_eq!(manifest["algorithm"]["factors"], 16);
    assert_eq!(manifest["rows"]["catalog_items"], 150);
    let items = recsys_shared::artifact::read_factors(
        &f.root().join(version).join("item_factors.parquet"),
        "item_id",
    )
    .unwrap();
    assert_eq!(items.factors, 16);
    assert_eq!(
        items.ids.len() as u64,
        manifest["rows"]["items"].as_u64().unwrap()
    );
    // `versions` lists the figures for people: four decimals, next to popularity's.
    let listed = f.on_root("versions", &[]);
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("* {version}")))
        .unwrap_or_else(|| panic!("{out}"));
    let recall = model["recall@20"].as_f64().unwrap();
    let shown = format!(
        "recall@20 {recall:.4} (popularity {:.4})",
        popularity["recall@20"].as_f64().unwrap()
    );
    assert!(line.contains(&shown), "{line}");
    assert!(
        !line.contains(&recall.to_string()),
        "full precision: {line}"
    );
    assert!(
        line.contains(&format!("{version}  ials, ")),
        "the family: {line}"
    );
}

#[test]
fn the_gate_refuses_a_worse_model_unless_forced_and_rollback_moves_current() {
    let f = Fixture::new();
    let good = last_json(&f.train(&[]))["version"]
        .as_str()
        .unwrap()
        .to_string();
    // An absurd regularisation shrinks every vector to ~0: the ranking is noise.
    let o = f.train(&["--regularization", "100000"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let refused = last_json(&o);
    assert_eq!(refused["published"], false);
    assert!(
        refused["gate"].as_str().unwrap().starts_with("refused"),
        "{refused}"
    );
    assert_eq!(f.current().as_deref(), Some(good.as_str()));

    let forced = f.train(&["--regularization", "100000", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let forced = last_json(&forced);
    assert_eq!(forced["published"], true);
    assert_eq!(f.current().as_deref(), forced["version"].as_str());

    let o = f.on_root("rollback", &["--to", &good]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(f.current().as_deref(), Some(good.as_str()));
    let o = f.on_root("rollback", &["--to", "19700101T000000.000Z-dead"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such version"), "{}", stderr(&o));
    assert_eq!(f.current().as_deref(), Some(good.as_str()));
}

#[test]
fn retention_keeps_the_newest_versions() {
    let f = Fixture::new();
    for _ in 0..3 {
        let o = f.train_with(
            &f.path("data/interactions.parquet"),
            &["--skip-eval"],
            &[("RECSYS__MODEL__KEEP_VERSIONS", "2")],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let versions = f.versions();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(f.current().as_ref(), versions.last());

    // `versions --verify` checks every file's sha256: a flipped byte in the current version is
    // reported as CORRUPT (without --verify it was listed as current and fine) and fails the run.
    let listed = f.on_root("versions", &["--verify"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("CORRUPT"));
    let factors = f.root().join(&versions[1]).join("item_factors.parquet");
    let mut bytes = fs::read(&factors).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&factors, bytes).unwrap();
    let listed = f.on_root("versions", &["--verify"]);
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!listed.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("* {}  CORRUPT: ", versions[1]))
                && l.contains("item_factors.parquet")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("  {}  ", versions[0])) && !l.contains("CORRUPT")),
        "{out}"
    );
}

#[test]
fn a_crash_mid_publish_leaves_current_on_the_previous_version() {
    let f = Fixture::new();
    let first = f.publish();
    for failpoint in ["publish-mid-write", "publish-before-current"] {
        let o = f.train_with(
            &f.path("data/interactions.parquet"),
            &["--skip-eval"],
            &[("RECSYS_FAILPOINT", failpoint)],
        );
        assert!(
            !o.status.success(),
            "{failpoint}: the process should have died"
        );
        assert!(
            stderr(&o).contains(&format!("failpoint {failpoint}")),
            "{}",
            stderr(&o)
        );
        assert_eq!(f.current().as_deref(), Some(first.as_str()), "{failpoint}");
        // The current version is still intact.
        recsys_shared::artifact::ModelRoot::new(f.root())
            .current()
            .unwrap()
            .unwrap();
    }
    // The mid-write crash left a staging directory, which the next publish removes.
    let o = f.train(&["--skip-eval"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!fs::read_dir(f.root())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-")));
}

fn write_parquet(path: &Path, batch: RecordBatch) {
    recsys_shared::artifact::write_batches(path, batch.schema(), &[batch]).unwrap();
}

fn text(values: &[&str]) -> Arc<StringArray> {
    Arc::new(StringArray::from(values.to_vec()))
}

/// Each bad input: a non-zero exit, a message naming what is wrong, and `CURRENT` untouched.
#[test]
fn bad_input_is_refused_with_a_precise_error_and_current_untouched() {
    let f = Fixture::new();
    let first = f.publish();
    let good = f.path("data/interactions.parquet");

    // One event whose `ts` column is dropped or replaced by `ts_column`.
    let one_event = |name: &str, ts_column: Option<(DataType, Arc<dyn arrow::array::Array>)>| {
        let mut fields = vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("item_id", DataType::Utf8, false),
            Field::new("event_type", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ];
        let mut columns: Vec<Arc<dyn arrow::array::Array>> = vec![
            text(&["u"]),
            text(&["i"]),
            text(&["play"]),
            Arc::new(arrow::array::Float64Array::from(vec![None])),
        ];
        if let Some((data_type, column)) = ts_column {
            fields.push(Field::new("ts", data_type, false));
            columns.push(column);
        }
        let path = f.path(name);
        write_parquet(
            &path,
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap(),
        );
        path
    };
    let missing_ts = one_event("missing_ts.parquet", None);
    let int_ts = one_event(
        "int_ts.parquet",
        Some((DataType::Int64, Arc::new(Int64Array::from(vec![1])))),
    );

    let empty = f.path("empty.parquet");
    {
        let w = recsys_offline::tables::TableWriter::create(
            &empty,
            recsys_offline::tables::interactions_schema(),
        )
        .unwrap();
        w.finish().unwrap();
    }

    let truncated = f.path("truncated.parquet");
    let bytes = fs::read(&good).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let rows = |name: &str, user: &str, event: &'static str| {
        let path = f.path(name);
        let mut w = recsys_offline::tables::TableWriter::create(
            &path,
            recsys_offline::tables::interactions_schema(),
        )
        .unwrap();
        let ok = recsys_offline::tables::InteractionRow {
            user_id: "u0000001".into(),
            item_id: "i000001".into(),
            event_type: "play",
            value: None,
            ts_ms: 1,
        };
        let bad = recsys_offline::tables::InteractionRow {
            user_id: user.into(),
            event_type: event,
            ..ok.clone()
        };
        w.write_interactions(&[ok.clone(), ok, bad]).unwrap();
        w.finish().unwrap();
        path
    };
    let unknown_event = rows("unknown_event.parquet", "u0000002", "purchase");
    let bad_id = rows("bad_id.parquet", "bad\nid", "play");

    let cases: Vec<(&str, &Path, Vec<&str>)> = vec![
        (
            "missing column",
            &missing_ts,
            vec!["missing_ts.parquet", "`ts`", "missing"],
        ),
        (
            "mistyped column",
            &int_ts,
            vec!["int_ts.parquet", "`ts`", "Int64", "Timestamp(ms)"],
        ),
        ("empty table", &empty, vec!["empty.parquet", "no rows"]),
        ("truncated file", &truncated, vec!["truncated.parquet"]),
        (
            "unknown event type",
            &unknown_event,
            vec!["row 2", "`event_type`", "\"purchase\""],
        ),
        (
            "unknown id format",
            &bad_id,
            vec!["row 2", "`user_id`", "control character"],
        ),
    ];
    for (case, input, expected) in cases {
        let o = f.train_with(input, &["--skip-eval"], &[]);
        assert_eq!(o.status.code(), Some(1), "{case}: {}", stderr(&o));
        let err = stderr(&o);
        for needle in expected {
            assert!(err.contains(needle), "{case}: {needle:?} not in {err}");
        }
        assert_eq!(f.current().as_deref(), Some(first.as_str()), "{case}");
    }

    // An unwritable model root: its parent is a regular file.
    let blocker = f.path("blocker");
    fs::write(&blocker, "").unwrap();
    let o = recsys(
        &[
            "offline",
            "train",
            "--interactions",
            good.to_str().unwrap(),
            "--items",
            f.path("data/items.parquet").to_str().unwrap(),
            "--model-root",
            blocker.join("models").to_str().unwrap(),
            "--skip-eval",
        ],
        NO_ENV,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("blocker/models"), "{}", stderr(&o));

    // A second writer: another process holds the lock.
    let lock = fs::OpenOptions::new()
        .write(true)
        .open(f.root().join(".lock"))
        .unwrap();
    lock.lock().unwrap();
    let o = f.train(&["--skip-eval"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("another writer"), "{}", stderr(&o));
    drop(lock);
    assert_eq!(f.current().as_deref(), Some(first.as_str()));
}

#[test]
fn evaluate_reports_both_protocols_and_exports_the_split() {
    let f = Fixture::new();
    let interactions = f.path("data/interactions.parquet");
    let split = f.path("split");
    // Both protocols on the fixture's log, 16 factors, 6 iterations.
    let interactions_path = interactions.to_str().unwrap();
    let evaluate = |protocol: &[&str]| {
        let mut args = vec!["offline", "evaluate", "--interactions", interactions_path];
        args.extend(SMALL_IALS);
        args.push("--protocol");
        args.extend_from_slice(protocol);
        let o = recsys(&args, NO_ENV);
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)
    };
    let result = evaluate(&[
        "strong-generalization",
        "--heldout-fraction",
        "0.25",
        "--seed",
        "9",
        "--export-split",
        split.to_str().unwrap(),
    ]);
    for key in ["recall@20", "recall@50", "ndcg@100", "coverage@20"] {
        assert!(
            result["metrics"][key].as_f64().unwrap() > 0.0,
            "{key}: {result}"
        );
        assert!(result["popularity"][key].is_number(), "{key}");
    }
    for file in ["train", "foldin", "target"] {
        let rows =
            recsys_offline::input::InputTable::discover(&split.join(format!("{file}.parquet")))
                .unwrap();
        assert_eq!(rows.files.len(), 1);
    }
    let result = evaluate(&["leave-last-out"]);
    assert!(
        result["metrics"]["hr@10"].as_f64().unwrap()
            > result["popularity"]["hr@10"].as_f64().unwrap(),
        "{result}"
    );
}

/// A benchmark split with planted structure: 4 groups of 50 members, each group's members
/// having items of its own 30 only; every member has 6 training and 2 test items.
fn planted_split(dir: &Path) -> (PathBuf, PathBuf) {
    let mut train = String::from("user_id,item_id\n");
    let mut test = String::from("user_id,item_id\n");
    for member in 0..200u32 {
        let group = member % 4;
        for j in 0..8u32 {
            let item = group * 30 + (member * 7 + j * 11) % 30;
            let line = format!("m{member},i{item}\n");
            if j < 6 {
                train.push_str(&line);
            } else {
                test.push_str(&line);
            }
        }
    }
    let (train_path, test_path) = (dir.join("train.csv"), dir.join("test.csv"));
    fs::write(&train_path, train).unwrap();
    fs::write(&test_path, test).unwrap();
    (train_path, test_path)
}

#[test]
fn every_family_evaluates_on_the_log_and_on_a_benchmark_split() {
    let f = Fixture::new();
    let interactions = f.path("data/interactions.parquet");
    for family in ["ease", "item-knn", "bspm"] {
        let o = recsys(
            &[
                "offline",
                "evaluate",
                "--interactions",
                interactions.to_str().unwrap(),
                "--family",
                family,
                "--lambda",
                "50",
            ],
            NO_ENV,
        );
        assert!(o.status.success(), "{family}: {}", stderr(&o));
        let result = last_json(&o);
        assert!(
            result["metrics"]["recall@20"].as_f64().unwrap()
                > result["popularity"]["recall@20"].as_f64().unwrap(),
            "{family}: {result}"
        );
    }

    // The published protocol: every unseen item ranked, recall over all test items. Planted
    // groups make any working family find most of them; popularity across 4 equal groups could
    // not (a quarter of its picks are in the member's group).
    let (train, test) = planted_split(f.dir.path());
    let on_split = |test: &Path, extra: &[&str]| {
        let mut args = vec!["offline", "evaluate", "--train", train.to_str().unwrap()];
        args.extend(["--test", test.to_str().unwrap()]);
        args.extend_from_slice(extra);
        recsys(&args, NO_ENV)
    };
    for family in ["ials", "ease", "item-knn", "bspm"] {
        let o = on_split(
            &test,
            &[
                "--family",
                family,
                "--k",
                "10",
                "--lambda",
                "5",
                "--factors",
                "8",
            ],
        );
        assert!(o.status.success(), "{family}: {}", stderr(&o));
        let result = last_json(&o);
        assert_eq!(result["family"], family.replace('-', "_"));
        assert_eq!(result["evaluated_members"], 200);
        assert_eq!(result["test_pairs"], 400);
        assert_eq!(result["items"], 120);
        let recall = result["recall"]["mean"].as_f64().unwrap();
        let [low, high] = [0, 1].map(|i| result["recall"]["interval"][i].as_f64().unwrap());
        assert!(low <= recall && recall <= high, "{result}");
        assert!(recall > 0.6, "{family}: {result}");
        assert!(result["ndcg"]["mean"].as_f64().unwrap() > 0.3, "{result}");
    }

    // A test pair that is also a training pair is refused, naming the file and line.
    let overlap = f.path("overlap.csv");
    let line = fs::read_to_string(&train)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    fs::write(&overlap, format!("user_id,item_id\n{line}\n")).unwrap();
    let o = on_split(&overlap, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("overlap.csv: line 2"), "{}", stderr(&o));

    // A history family publishes its weights, and its manifest names it with its parameters.
    for (family, top_n) in [
        ("ease", "RECSYS__OFFLINE__EASE__TOP_N"),
        ("bspm", "RECSYS__OFFLINE__BSPM__TOP_N"),
    ] {
        // A root of its own: the publish gate compares with nothing.
        let root = f.path(&format!("models-{family}"));
        let o = recsys(
            &[
                "offline",
                "train",
                "--interactions",
                interactions.to_str().unwrap(),
                "--items",
                f.path("data/items.parquet").to_str().unwrap(),
                "--model-root",
                root.to_str().unwrap(),
            ],
            &[("RECSYS__OFFLINE__FAMILY", family), (top_n, "7")],
        );
        assert!(o.status.success(), "{family}: {}", stderr(&o));
        let version = last_json(&o)["version"].as_str().unwrap().to_string();
        let dir = root.join(&version);
        let manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["algorithm"]["family"], family, "{manifest}");
        assert_eq!(manifest["algorithm"]["top_n"], 7, "{manifest}");
        assert!(manifest["algorithm"].get("factors").is_none(), "{manifest}");
        assert!(
            manifest["files"].get("item_weights.parquet").is_some(),
            "{manifest}"
        );
        assert!(
            manifest["files"].get("item_factors.parquet").is_none(),
            "{manifest}"
        );
        assert!(
            manifest["evaluation"]["metrics"]["recall@20"]
                .as_f64()
                .unwrap()
                > 0.0,
            "{family}: {manifest}"
        );
        // Served at the pruning it was trained with: at most top_n weights per item.
        let (_, weights) =
            recsys_shared::artifact::read_weights(&dir.join("item_weights.parquet")).unwrap();
        assert!((0..weights.rows).all(|i| weights.row(i).0.len() <= 7));
    }
}

#[test]
fn imports_movielens_latest_small_from_shared_data() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-latest-small");
    assert!(
        source.join("ratings.csv").exists(),
        "MovieLens latest-small is expected at {}",
        source.display()
    );
    let out = tempfile::tempdir().unwrap();
    let o = recsys(
        &[
            "import",
            "movielens",
            "--input",
            source.to_str().unwrap(),
            "--output",
            out.path().to_str().unwrap(),
        ],
        NO_ENV,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let result = last_json(&o);
    assert_eq!(result["interactions"], 100_836);
    assert_eq!(result["items"], 9_742);
}

#[test]
fn every_command_has_help() {
    for command in [
        "",
        "offline",
        "offline train",
        "import movielens",
        "offline bench",
        "nearline",
        "online",
        "online serve",
        "online bench",
        "offline load-store",
        "nearline run",
        "nearline produce",
        "nearline bench",
        "quickstart",
        "client",
        "client rank",
        "offline synth",
        "offline report",
        "offline versions",
        "offline rollback",
        "offline tune",
        "nearline archive",
    ] {
        let args: Vec<&str> = command.split_whitespace().chain(["--help"]).collect();
        let o = recsys(&args, NO_ENV);
        assert!(o.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(help.contains("Usage"), "{args:?}");
        // Every option says what it is (the fault: --model-root and synth's sizes were bare),
        // and defaults from the config are written one way: [config: key, default value].
        let lines: Vec<&str> = help.lines().map(str::trim_start).collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(option) = line.strip_prefix("--") else {
                continue;
            };
            // Described on its own line, or (clap's long layout) on the next.
            let inline = option
                .split_once("  ")
                .is_some_and(|(_, text)| !text.trim().is_empty());
            let below = lines
                .get(i + 1)
                .is_some_and(|next| !next.is_empty() && !next.starts_with('-'));
            assert!(
                inline || below,
                "{args:?}: undescribed option --{option}\n{help}"
            );
        }
        assert!(
            !help.contains("[model.root]") && !help.contains("[offline."),
            "{args:?}: a default written another way:\n{help}"
        );
    }
    let top = String::from_utf8_lossy(&recsys(&["--help"], NO_ENV).stdout).to_string();
    assert!(top.contains("Start with `recsys quickstart`"), "{top}");
    let archive =
        String::from_utf8_lossy(&recsys(&["nearline", "archive", "--help"], NO_ENV).stdout)
            .to_string();
    assert!(
        archive.contains("--group-id"),
        "one name for the group: {archive}"
    );
}

/// The fault: a file that made the Parquet reader panic was reported as corrupt with exit 1, but
/// the default panic hook printed `thread 'main' panicked at …` (and a backtrace with
/// `RUST_BACKTRACE=1`) before the clean message.
#[test]
fn a_file_that_makes_the_parquet_reader_panic_is_reported_without_a_panic_message() {
    use recsys_offline::input::InputTable;
    use recsys_offline::tables::{interactions_schema, InteractionRow, TableWriter};
    let f = Fixture::new();
    let intact = f.path("intact.parquet");
    let rows: Vec<InteractionRow> = (0..300)
        .map(|i| InteractionRow {
            user_id: format!("u{}", i % 17),
            item_id: format!("i{}", i % 29),
            event_type: "play",
            value: (i % 3 == 0).then_some(i as f64),
            ts_ms: 1_700_000_000_000 + i,
        })
        .collect();
    let mut writer = TableWriter::create(&intact, interactions_schema()).unwrap();
    writer.write_interactions(&rows).unwrap();
    writer.finish().unwrap();
    let bytes = fs::read(&intact).unwrap();
    // The first single-byte change inside the pages that the reader panics on.
    let damaged = f.path("damaged.parquet");
    let footer =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let panicking = (4..bytes.len() - 8 - footer)
        .flat_map(|at| [0xff_u8, 0x01, 0x80].map(|mask| (at, mask)))
        .find(|&(at, mask)| {
            let mut copy = bytes.clone();
            copy[at] ^= mask;
            fs::write(&damaged, &copy).unwrap();
            InputTable::discover(&damaged)
                .and_then(|t| t.validate_interactions(&["play".to_string()]))
                .is_err_and(|e| e.to_string().contains("cannot be decoded"))
        });
    let (at, mask) = panicking.expect("some change makes the reader panic");
    let mut copy = bytes.clone();
    copy[at] ^= mask;
    fs::write(&damaged, &copy).unwrap();
    for backtrace in ["0", "1"] {
        let o = f.train_with(&damaged, &[], &[("RUST_BACKTRACE", backtrace)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("damaged.parquet") && err.contains("corrupt"),
            "{err}"
        );
        assert!(
            !err.contains("panicked"),
            "RUST_BACKTRACE={backtrace}: {err}"
        );
        assert!(
            err.lines().count() < 10,
            "RUST_BACKTRACE={backtrace}: {err}"
        );
    }
}
