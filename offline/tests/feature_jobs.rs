//! The DataFusion feature jobs on small fixtures: weights, rating threshold, de-duplication,
//! `--as-of`, time decay, minimum-interaction filters, catalog filtering, Hive partitions, a
//! replacement query from the config, and explicit negative events.

use std::path::Path;

use recsys_offline::features::{FeatureJob, Features, NegativeEvents};
use recsys_offline::input::InputTable;
use recsys_offline::tables::{
    interactions_schema, items_schema, InteractionRow, ItemRow, TableWriter,
};
use recsys_offline::train::run_features;
use recsys_shared::config::FeatureConfig;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_790_000_000_000;

fn event(
    user: &str,
    item: &str,
    event_type: &'static str,
    value: Option<f64>,
    day: i64,
) -> InteractionRow {
    InteractionRow {
        user_id: user.into(),
        item_id: item.into(),
        event_type,
        value,
        ts_ms: T0 + day * DAY,
    }
}

fn write_interactions(path: &Path, rows: &[InteractionRow]) {
    let mut w = TableWriter::create(path, interactions_schema()).unwrap();
    w.write_interactions(rows).unwrap();
    w.finish().unwrap();
}

fn write_items(path: &Path, ids: &[&str]) {
    let mut w = TableWriter::create(path, items_schema()).unwrap();
    let rows: Vec<ItemRow> = ids
        .iter()
        .map(|id| ItemRow {
            item_id: id.to_string(),
            title: format!("Title {id}"),
            ..Default::default()
        })
        .collect();
    w.write_items(&rows).unwrap();
    w.finish().unwrap();
}

fn run(
    interactions: &Path,
    items: Option<&Path>,
    config: &FeatureConfig,
    as_of_ms: Option<i64>,
) -> Features {
    run_with_negatives(interactions, items, config, as_of_ms, Default::default()).unwrap()
}

fn run_with_negatives(
    interactions: &Path,
    items: Option<&Path>,
    config: &FeatureConfig,
    as_of_ms: Option<i64>,
    negatives: NegativeEvents,
) -> recsys_offline::Result<Features> {
    let input = InputTable::discover(interactions).unwrap();
    let catalog = items.map(|p| InputTable::discover(p).unwrap());
    // These catalogs miss items on purpose; the share that fails a job has its own test.
    let config = &FeatureConfig {
        max_dropped_share: 1.0,
        ..config.clone()
    };
    let job = FeatureJob {
        config,
        as_of_ms,
        threads: 2,
        cluster: None,
        negatives,
    };
    run_features(&job, &input, catalog.as_ref())
}

/// (user, item) → strength.
fn strengths(f: &Features) -> Vec<(String, String, f32)> {
    f.training
        .pairs
        .iter()
        .map(|p| {
            (
                f.training.user_ids[p.user as usize].clone(),
                f.training.item_ids[p.item as usize].clone(),
                p.strength,
            )
        })
        .collect()
}

fn fixture() -> Vec<InteractionRow> {
    vec![
        event("alice", "a", "play", Some(0.9), 0),
        event("alice", "a", "play", Some(0.9), 0), // exact duplicate: counted once
        event("alice", "a", "click", None, 1),
        event("alice", "b", "rating", Some(5.0), 2),
        event("alice", "c", "rating", Some(3.5), 3), // below the threshold: not a positive
        event("bob", "a", "add_to_list", None, 4),
        event("bob", "d", "play", None, 10), // after the as-of below
        event("carol", "x", "play", None, 1), // item not in the catalog
    ]
}

/// The fault: a catalog missing 96 % of the interactions' items dropped them with a warning and
/// the model was published.
#[test]
fn a_catalog_missing_more_than_the_allowed_share_of_interactions_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let interactions = dir.path().join("interactions.parquet");
    write_interactions(&interactions, &fixture());
    let items = dir.path().join("items.parquet");
    write_items(&items, &["a", "b", "c", "d"]);
    let job = |config: &FeatureConfig| {
        let input = InputTable::discover(&interactions).unwrap();
        let catalog = InputTable::discover(&items).unwrap();
        let job = FeatureJob {
            config,
            as_of_ms: None,
            threads: 2,
            cluster: None,
            negatives: NegativeEvents::default(),
        };
        run_features(&job, &input, Some(&catalog))
    };
    // 1 of 8 interactions (carol's "x") is outside the catalog: 12.5 % > the default 1 %.
    let Err(e) = job(&FeatureConfig::default()) else {
        panic!("the job went on without 12.5 % of its interactions");
    };
    let e = e.to_string();
    assert!(
        e.contains("items.parquet")
            && e.contains("1 of 8 interactions")
            && e.contains("offline.features.max_dropped_share"),
        "{e}"
    );
    // Within the share the job goes on without them.
    let lenient = FeatureConfig {
        max_dropped_share: 0.2,
        ..Default::default()
    };
    let f = job(&lenient).unwrap();
    assert!(f.training.item_ids.iter().all(|i| i != "x"));
}

#[test]
fn training_table_applies_weights_threshold_dedup_and_catalog() {
    let dir = tempfile::tempdir().unwrap();
    write_interactions(&dir.path().join("interactions.parquet"), &fixture());
    write_items(&dir.path().join("items.parquet"), &["a", "b", "c", "d"]);
    let config = FeatureConfig::default();
    let f = run(
        &dir.path().join("interactions.parquet"),
        Some(&dir.path().join("items.parquet")),
        &config,
        None,
    );
    assert_eq!(
        strengths(&f),
        vec![
            ("alice".into(), "a".into(), 1.25), // play 1.0 once + click 0.25
            ("alice".into(), "b".into(), 1.0),
            ("bob".into(), "a".into(), 0.5),
            ("bob".into(), "d".into(), 1.0),
        ]
    );
    assert_eq!(f.interactions.rows, 8);
    // Popularity: a has 2 members, b and d 1; scores scaled by the top item.
    let pop: Vec<(String, u64, f32)> = f
        .popularity
        .iter()
        .map(|p| (p.item_id.clone(), p.members, p.score))
        .collect();
    assert_eq!(
        pop,
        vec![
            ("a".into(), 2, 1.0),
            ("b".into(), 1, 0.5),
            ("d".into(), 1, 0.5)
        ]
    );
    // History: newest first per member.
    let bob: Vec<&str> = f
        .history
        .iter()
        .filter(|(user, ..)| *user == "bob")
        .map(|(_, item, ..)| item)
        .collect();
    assert_eq!(bob, vec!["d", "a"]);
    assert_eq!(
        f.items
            .as_ref()
            .unwrap()
            .1
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        4
    );
}

#[test]
fn as_of_ignores_later_events_and_decay_weights_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interactions.parquet");
    write_interactions(&path, &fixture());
    let mut config = FeatureConfig::default();
    let as_of = T0 + 5 * DAY;
    let f = run(&path, None, &config, Some(as_of));
    let pairs = strengths(&f);
    assert!(
        !pairs.iter().any(|(u, i, _)| u == "bob" && i == "d"),
        "{pairs:?}"
    );
    assert!(
        pairs.iter().any(|(u, i, _)| u == "carol" && i == "x"),
        "without a catalog every item counts"
    );
    assert_eq!(
        f.interactions.last_ts_ms,
        Some(T0 + 10 * DAY),
        "validation still reads every row"
    );

    // Half-life of 1 day, reference = as-of (day 5): bob's add_to_list on day 4 is one half-life old.
    config.decay_half_life_days = Some(1.0);
    let f = run(&path, None, &config, Some(as_of));
    let bob_a = strengths(&f)
        .into_iter()
        .find(|(u, i, _)| u == "bob" && i == "a")
        .unwrap()
        .2;
    assert!((bob_a - 0.25).abs() < 1e-6, "{bob_a}");
}

#[test]
fn minimum_interaction_filters_and_replacement_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interactions.parquet");
    write_interactions(&path, &fixture());
    let config = FeatureConfig {
        min_user_interactions: 2,
        min_item_interactions: 2,
        ..Default::default()
    };
    let f = run(&path, None, &config, None);
    // Members with ≥ 2 items: alice (a, b), bob (a, d); items with ≥ 2 members: a.
    assert_eq!(
        strengths(&f),
        vec![
            ("alice".into(), "a".into(), 1.25),
            ("bob".into(), "a".into(), 0.5)
        ]
    );

    let sql = dir.path().join("custom.sql");
    std::fs::write(&sql, "SELECT user_id, item_id, 7.0 AS strength, CAST(ts AS BIGINT) AS last_ts_ms FROM interactions WHERE event_type = 'rating'").unwrap();
    let config = FeatureConfig {
        training_table_sql: Some(sql),
        ..Default::default()
    };
    let f = run(&path, None, &config, None);
    assert_eq!(
        strengths(&f),
        vec![
            ("alice".into(), "b".into(), 7.0),
            ("alice".into(), "c".into(), 7.0)
        ]
    );
}

#[test]
fn hive_partitioned_directories_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let rows = fixture();
    write_interactions(
        &dir.path().join("date=2026-09-01/part-0.parquet"),
        &rows[..4],
    );
    write_interactions(
        &dir.path().join("date=2026-09-02/part-0.parquet"),
        &rows[4..],
    );
    let f = run(dir.path(), None, &FeatureConfig::default(), None);
    assert_eq!(f.interactions.rows, 8);
    assert_eq!(strengths(&f).len(), 5);
}

/// The built-in queries run over integer-coded ids; the same queries over the string ids (forced
/// here by naming the built-in SQL files as replacements) must give the same tables, including
/// the orders and tie-breaks that depend on how ids sort ("u10" < "u2" byte-wise).
#[test]
fn coded_ids_give_the_same_tables_as_string_ids() {
    let dir = tempfile::tempdir().unwrap();
    let types = ["play", "click", "rating", "add_to_list", "thumbs_down"];
    let mut state = 7u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut rows = Vec::new();
    for _ in 0..4000 {
        let user = format!("u{}", next(60));
        let item = format!("i{}", next(45));
        let event_type = types[next(5) as usize];
        let value = (next(3) > 0).then(|| next(6) as f64);
        // Few distinct days, so timestamps tie and the history's tie-break on item_id matters.
        let day = next(20) as i64;
        rows.push(event(&user, &item, event_type, value, day));
    }
    rows.extend(rows[..200].to_vec()); // exact duplicates
    let interactions = dir.path().join("interactions.parquet");
    write_interactions(&interactions, &rows);
    // A catalog missing some items and holding some never seen.
    let catalog: Vec<String> = (3..50).map(|i| format!("i{i}")).collect();
    let catalog: Vec<&str> = catalog.iter().map(String::as_str).collect();
    let items = dir.path().join("items.parquet");
    write_items(&items, &catalog);

    let coded = FeatureConfig {
        decay_half_life_days: Some(7.0),
        min_user_interactions: 3,
        min_item_interactions: 2,
        history_cap: 4,
        ..Default::default()
    };
    let mut strings = coded.clone();
    for (name, text) in [
        ("training.sql", include_str!("../sql/training_table.sql")),
        ("popularity.sql", include_str!("../sql/item_popularity.sql")),
        ("history.sql", include_str!("../sql/user_history.sql")),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    strings.training_table_sql = Some(dir.path().join("training.sql"));
    strings.popularity_sql = Some(dir.path().join("popularity.sql"));
    strings.user_history_sql = Some(dir.path().join("history.sql"));

    let negatives = NegativeEvents {
        types: vec!["thumbs_down".into()],
        forget: true,
    };
    for (items, as_of) in [(Some(items.as_path()), Some(T0 + 15 * DAY)), (None, None)] {
        let run = |config: &FeatureConfig| {
            run_with_negatives(&interactions, items, config, as_of, negatives.clone()).unwrap()
        };
        let (a, b) = (run(&coded), run(&strings));
        assert!(a.training.pairs.len() > 100, "{}", a.training.pairs.len());
        assert_eq!(a.training.user_ids, b.training.user_ids);
        assert_eq!(a.training.item_ids, b.training.item_ids);
        assert_eq!(a.training.pairs.len(), b.training.pairs.len());
        for (p, q) in a.training.pairs.iter().zip(&b.training.pairs) {
            assert_eq!(
                (p.user, p.item, p.last_ts_ms),
                (q.user, q.item, q.last_ts_ms)
            );
            assert!((p.strength - q.strength).abs() < 1e-5, "{p:?} vs {q:?}");
        }
        let popularity = |f: &Features| -> Vec<(String, u64)> {
            f.popularity
                .iter()
                .map(|p| (p.item_id.clone(), p.members))
                .collect()
        };
        assert_eq!(popularity(&a), popularity(&b));
        let history = |f: &Features| -> Vec<(String, String, i64)> {
            f.history
                .iter()
                .map(|(user, item, _, ts_ms)| (user.to_string(), item.to_string(), ts_ms))
                .collect()
        };
        assert_eq!(history(&a), history(&b));
        assert_eq!(a.interactions, b.interactions);
    }
}

#[test]
fn explicit_negatives_forget_the_members_earlier_events_on_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let interactions = dir.path().join("interactions.parquet");
    write_interactions(
        &interactions,
        &[
            event("alice", "a", "play", None, 0),
            event("alice", "a", "play", None, 2),
            event("alice", "a", "thumbs_down", None, 3),
            event("alice", "a", "play", None, 5), // after the negative: kept
            event("alice", "b", "play", None, 1),
            event("alice", "b", "thumbs_down", None, 4), // the only play on b is forgotten
            event("alice", "c", "not_interested", None, 1), // no positive on c at all
            event("alice", "d", "play", None, 6),
            event("bob", "b", "play", None, 1), // another member's play stays
            event("bob", "a", "play", None, 2),
        ],
    );
    let config = FeatureConfig::default();
    let types = vec!["thumbs_down".to_string(), "not_interested".to_string()];
    let mut builtin_and_replaced = vec![config.clone()];
    let mut strings = config.clone();
    let sql = dir.path().join("training.sql");
    std::fs::write(&sql, include_str!("../sql/training_table.sql")).unwrap();
    strings.training_table_sql = Some(sql);
    builtin_and_replaced.push(strings);
    for config in &builtin_and_replaced {
        let run = |forget: bool| {
            let negatives = NegativeEvents {
                types: types.clone(),
                forget,
            };
            run_with_negatives(&interactions, None, config, None, negatives).unwrap()
        };
        let (forgetting, ignoring) = (run(true), run(false));
        let pair = |f: &Features, user: &str, item: &str| {
            strengths(f)
                .into_iter()
                .find(|(u, i, _)| u == user && i == item)
                .map(|(_, _, s)| s)
        };
        let play = pair(&ignoring, "alice", "d").expect("one play");
        // `ignore`: negatives change no pair; `forget`: only events after the newest negative.
        assert_eq!(pair(&ignoring, "alice", "a"), Some(3.0 * play));
        assert_eq!(pair(&forgetting, "alice", "a"), Some(play));
        assert_eq!(pair(&ignoring, "alice", "b"), Some(play));
        assert_eq!(pair(&forgetting, "alice", "b"), None);
        for f in [&forgetting, &ignoring] {
            assert_eq!(
                pair(f, "alice", "c"),
                None,
                "a negative is never a positive"
            );
            assert_eq!(pair(f, "bob", "b"), Some(play));
            assert_eq!(pair(f, "bob", "a"), Some(play));
        }
        let history = |f: &Features| -> Vec<(String, i64)> {
            f.history
                .iter()
                .filter(|(user, ..)| *user == "alice")
                .map(|(_, item, _, ts_ms)| (item.to_string(), (ts_ms - T0) / DAY))
                .collect()
        };
        assert_eq!(
            history(&forgetting),
            [("d".to_string(), 6), ("a".to_string(), 5)]
        );
        assert_eq!(
            history(&ignoring),
            [
                ("d".to_string(), 6),
                ("a".to_string(), 5),
                ("b".to_string(), 1)
            ]
        );
    }
    // Feedback off: a negative event type is an unknown one, named with its column.
    let refused = run_with_negatives(&interactions, None, &config, None, Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("thumbs_down") && refused.contains("event_type"),
        "{refused}"
    );
}
