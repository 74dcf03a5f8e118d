//! A synthetic published model for benchmarks, tests and demos that need a model of a given size
//! without training one: clustered factors (or item weights, for the history families), titles,
//! popularity and histories, written through the
//! same staging and publish path as a trained model.

use std::path::Path;

use rand::{Rng, SeedableRng};

use super::{
    files, write_catalog, write_history, write_popularity, AlgorithmParams, CatalogRow, DataWindow,
    HistoryRow, IalsRecord, Manifest, ModelParams, ModelRoot, PopularityRow, RowCounts,
};
use crate::artifact::published::{write_model, TrainedModel};
use crate::config::AnnIndexConfig;
use crate::model::ials::ann::ItemIndex;
use crate::model::ials::train::AlsModel;
use crate::model::item_weights::ItemWeights;
use crate::model::Family;
use crate::{Result, SharedError};

/// Item and member factors shaped like trained iALS factors rather than uniform noise: items
/// gather around one of `clusters` tastes (a thousandth of the catalog, at most 1,000: genres,
/// series, brands), their norms spread log-normally (popular items are longer), and each member
/// sits near one taste. Nearest-neighbour indexes are measured on these: on uniform random
/// vectors in 64 dimensions every item is about as far as every other, which no real catalog is.
pub fn clustered_factors(
    rng: &mut impl Rng,
    items: usize,
    members: usize,
    k: usize,
) -> (Vec<f32>, Vec<f32>) {
    let clusters = (items / 1000).clamp(1, 1000);
    let centers: Vec<f32> = (0..clusters * k).map(|_| 0.15 * gaussian(rng)).collect();
    let mut item_factors = Vec::with_capacity(items * k);
    for _ in 0..items {
        let c = rng.random_range(0..clusters);
        let length = (0.4 * gaussian(rng)).exp();
        item_factors.extend(
            centers[c * k..(c + 1) * k]
                .iter()
                .map(|x| (x + 0.07 * gaussian(rng)) * length),
        );
    }
    let mut member_factors = Vec::with_capacity(members * k);
    for _ in 0..members {
        let c = rng.random_range(0..clusters);
        member_factors.extend(
            centers[c * k..(c + 1) * k]
                .iter()
                .map(|x| x + 0.09 * gaussian(rng)),
        );
    }
    (item_factors, member_factors)
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl Rng) -> f32 {
    let u: f32 = rng.random_range(f32::EPSILON..1.0);
    let v: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// Publishes a synthetic iALS model ([`clustered_factors`], titles, 10% of items restricted to
/// `US`, popularity, and a 20-item history per member) into `root` and makes it `CURRENT`. Member
/// ids are `m{i}`, item ids `i{j}`. Returns the version id.
pub fn synthetic_model(
    root: &Path,
    items: usize,
    members: usize,
    k: usize,
    seed: u64,
) -> Result<String> {
    synthetic_model_of(Family::Ials, root, items, members, k, seed)
}

/// [`synthetic_model`] of any family: iALS with `k` factors, or a history family whose every item
/// pushes up `k` random others (positive weights).
pub fn synthetic_model_of(
    family: Family,
    root: &Path,
    items: usize,
    members: usize,
    k: usize,
    seed: u64,
) -> Result<String> {
    synthetic_model_with(
        family,
        root,
        items,
        members,
        k,
        seed,
        &AnnIndexConfig::default(),
    )
}

/// [`synthetic_model_of`], an iALS version published with an item index when `ann_index` wants
/// one for `items`.
pub fn synthetic_model_with(
    family: Family,
    root: &Path,
    items: usize,
    members: usize,
    k: usize,
    seed: u64,
    ann_index: &AnnIndexConfig,
) -> Result<String> {
    publish(
        family,
        root,
        items,
        members,
        k,
        seed,
        ItemIndexFrom::Build(ann_index),
    )
}

/// [`synthetic_model`] published with a copy of `item_index` (hard-linked when it can be) as its
/// item index, instead of one built here: the index must have been built over this model's item
/// factors (`clustered_factors` with the same `seed`, `items` and `k`), which a benchmark that
/// already built one for them uses to save the build. Checked to open for `items` × `k`.
pub fn synthetic_model_reusing_index(
    root: &Path,
    items: usize,
    members: usize,
    k: usize,
    seed: u64,
    item_index: &Path,
) -> Result<String> {
    publish(
        Family::Ials,
        root,
        items,
        members,
        k,
        seed,
        ItemIndexFrom::File(item_index),
    )
}

/// Where a synthetic version's item index comes from.
enum ItemIndexFrom<'a> {
    /// Built as the configuration says (or none).
    Build(&'a AnnIndexConfig),
    /// A file already built over the same items.
    File(&'a Path),
}

fn publish(
    family: Family,
    root: &Path,
    items: usize,
    members: usize,
    k: usize,
    seed: u64,
    index: ItemIndexFrom<'_>,
) -> Result<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root = ModelRoot::new(root);
    let lock = root.lock()?;
    let version = ModelRoot::new_version_id();
    let staged = root.stage(&lock, &version)?;
    let item_ids: Vec<String> = (0..items).map(|j| format!("i{j}")).collect();
    let (model, params) = match family {
        Family::Ials => {
            let (item_factors, user_factors) = clustered_factors(&mut rng, items, members, k);
            let model = AlsModel {
                factors: k,
                item_factors,
                user_factors,
            };
            let member_ids = (0..members).map(|i| format!("m{i}")).collect();
            let params = ModelParams::Ials(IalsRecord {
                factors: k,
                objective: crate::model::ials::Objective {
                    regularization: 0.1,
                    alpha: 10.0,
                    unobserved_weight: 1.0,
                    regularization_exp: 0.0,
                },
                iterations: 0,
                cg_steps: 0,
                seed,
            });
            (TrainedModel::Factors { model, member_ids }, params)
        }
        Family::Ease | Family::ItemKnn | Family::Bspm => {
            let rows = (0..items)
                .map(|i| {
                    let mut row: Vec<(u32, f32)> = Vec::with_capacity(k);
                    for _ in 0..k {
                        let j = rng.random_range(0..items as u32);
                        let w = rng.random_range(0.01f32..1.0);
                        if j as usize != i {
                            row.push((j, w));
                        }
                    }
                    row.sort_unstable_by_key(|&(j, _)| j);
                    row.dedup_by_key(|&mut (j, _)| j);
                    row
                })
                .collect();
            let params = match family {
                Family::Ease => ModelParams::Ease(crate::config::EaseConfig {
                    lambda: 100.0,
                    top_n: k,
                }),
                Family::Bspm => ModelParams::Bspm(crate::config::BspmConfig {
                    top_n: k,
                    ..Default::default()
                }),
                _ => ModelParams::ItemKnn(crate::config::ItemKnnConfig {
                    neighbours: k,
                    ..Default::default()
                }),
            };
            (TrainedModel::Weights(ItemWeights::from_rows(rows)), params)
        }
    };
    match index {
        ItemIndexFrom::Build(ann_index) => {
            write_model(&staged, model, item_ids.clone(), ann_index)?;
        }
        ItemIndexFrom::File(path) => {
            let none = AnnIndexConfig {
                enabled: false,
                ..Default::default()
            };
            write_model(&staged, model, item_ids.clone(), &none)?;
            ItemIndex::open(path, items, k, 1, 1)
                .map_err(|e| SharedError::Training(e.to_string()))?;
            let to = staged.path(files::ITEM_INDEX);
            if std::fs::hard_link(path, &to).is_err() {
                std::fs::copy(path, &to).map_err(|e| SharedError::io(&to, e))?;
            }
        }
    }
    let popularity: Vec<PopularityRow> = item_ids
        .iter()
        .enumerate()
        .map(|(j, id)| PopularityRow {
            item_id: id.clone(),
            members: (items - j) as u64,
            score: 1.0 / (j + 1) as f32,
        })
        .collect();
    write_popularity(&staged.path(files::ITEM_POPULARITY), &popularity)?;
    let catalog: Vec<CatalogRow> = item_ids
        .iter()
        .enumerate()
        .map(|(j, id)| CatalogRow {
            item_id: id.clone(),
            title: Some(format!("Title {j}")),
            available_countries: (j % 10 == 0).then(|| vec!["US".to_string()]),
            // Every 7th item (from i3) is rated R, every 7th (from i5) unrated, the rest PG.
            maturity: match j % 7 {
                3 => Some("R".to_string()),
                5 => None,
                _ => Some("PG".to_string()),
            },
        })
        .collect();
    write_catalog(&staged.path(files::ITEMS), &catalog)?;
    let history: Vec<HistoryRow> = (0..members)
        .flat_map(|i| {
            let picks: Vec<usize> = (0..20).map(|_| rng.random_range(0..items)).collect();
            picks.into_iter().enumerate().map(move |(t, j)| HistoryRow {
                user_id: format!("m{i}"),
                item_id: format!("i{j}"),
                strength: 1.0,
                ts_ms: 1_700_000_000_000 + t as i64 * 60_000,
            })
        })
        .collect();
    write_history(&staged.path(files::USER_HISTORY), &history)?;
    let manifest = Manifest {
        format_version: 0,
        version: version.clone(),
        created_at: chrono::Utc::now(),
        algorithm: AlgorithmParams {
            name: "synthetic".into(),
            model: params,
            tuning: None,
        },
        features: serde_json::json!({}),
        data_window: DataWindow::default(),
        rows: RowCounts {
            interactions: history.len() as u64,
            training_pairs: history.len() as u64,
            members: members as u64,
            items: items as u64,
            catalog_items: items as u64,
        },
        evaluation: None,
        gate: None,
        files: Default::default(),
    };
    staged.commit(manifest)?;
    root.set_current(&lock, &version)?;
    Ok(version)
}
