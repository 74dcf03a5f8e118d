//! The DataFusion feature jobs on small fixtures: weights, rating threshold, de-duplication,
//! `--as-of`, time decay, minimum-interaction filters, catalog filtering, Hive partitions, and a
//! replacement query from the config.

use std::path::Path;

use recsys_offline::features::{FeatureJob, Features};
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
    let input = InputTable::discover(interactions).unwrap();
    let catalog = items.map(|p| InputTable::discover(p).unwrap());
    let job = FeatureJob {
        config,
        as_of_ms,
        threads: 2,
        cluster: None,
    };
    run_features(&job, &input, catalog.as_ref()).unwrap()
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
        .filter(|h| h.user_id == "bob")
        .map(|h| h.item_id.as_str())
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
