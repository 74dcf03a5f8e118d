//! The feature jobs: DataFusion SQL over the input Parquet producing the training table, item
//! popularity and member histories.
//!
//! The queries live in `offline/sql/*.sql` (compiled in) and can be replaced from the config
//! (`offline.features.*_sql`). Parameters are substituted as `${name}`; every value substituted is
//! a number or a quoted, escaped string literal produced here, never raw user text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, UInt64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use recsys_shared::config::BallistaConfig;

use recsys_shared::artifact::{HistoryRow, PopularityRow};
use recsys_shared::config::FeatureConfig;
use recsys_shared::SharedError;

use crate::input::{InputTable, InteractionStats};
use crate::matrix::SparseMatrix;
use crate::{OfflineError, Result};

const TRAINING_TABLE_SQL: &str = include_str!("../sql/training_table.sql");
const ITEM_POPULARITY_SQL: &str = include_str!("../sql/item_popularity.sql");
const USER_HISTORY_SQL: &str = include_str!("../sql/user_history.sql");

/// One (member, item) pair of the training table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub user: u32,
    pub item: u32,
    /// Interaction strength `r` (confidence `1 + α r`).
    pub strength: f32,
    pub last_ts_ms: i64,
}

/// The training table with ids mapped to dense indices (both id lists sorted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingTable {
    pub user_ids: Vec<String>,
    pub item_ids: Vec<String>,
    /// Sorted by (user, item).
    pub pairs: Vec<Pair>,
}

impl TrainingTable {
    /// Builds the table from `(user_id, item_id, strength, last_ts_ms)` rows.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str, f32, i64)>) -> Self {
        let rows: Vec<_> = rows.into_iter().collect();
        let mut user_ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        let mut item_ids: Vec<String> = rows.iter().map(|r| r.1.to_string()).collect();
        for ids in [&mut user_ids, &mut item_ids] {
            ids.sort_unstable();
            ids.dedup();
        }
        let user_index: HashMap<&str, u32> = user_ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let item_index: HashMap<&str, u32> = item_ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let mut pairs: Vec<Pair> = rows
            .iter()
            .map(|(u, i, strength, ts)| Pair {
                user: user_index[u],
                item: item_index[i],
                strength: *strength,
                last_ts_ms: *ts,
            })
            .collect();
        pairs.sort_unstable_by_key(|p| (p.user, p.item));
        TrainingTable {
            user_ids,
            item_ids,
            pairs,
        }
    }

    /// The members × items strength matrix of the pairs `keep` accepts.
    pub fn matrix(&self, keep: impl Fn(&Pair) -> bool) -> SparseMatrix {
        let triplets = self
            .pairs
            .iter()
            .filter(|p| keep(p))
            .map(|p| (p.user, p.item, p.strength))
            .collect();
        SparseMatrix::from_triplets(self.user_ids.len(), self.item_ids.len(), triplets)
    }

    /// Pairs of each member: `ranges[u]` indexes `pairs`.
    pub fn member_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut ranges = vec![0..0; self.user_ids.len()];
        let mut start = 0;
        while start < self.pairs.len() {
            let user = self.pairs[start].user;
            let mut end = start;
            while end < self.pairs.len() && self.pairs[end].user == user {
                end += 1;
            }
            ranges[user as usize] = start..end;
            start = end;
        }
        ranges
    }
}

/// Everything the feature jobs produce.
#[derive(Debug, Clone)]
pub struct Features {
    pub training: TrainingTable,
    pub popularity: Vec<PopularityRow>,
    pub history: Vec<HistoryRow>,
    pub interactions: InteractionStats,
    /// Seconds spent checking every input row before the queries.
    pub validation_seconds: f64,
    /// The catalog as read (columns of the input schema), when an items table was given.
    pub items: Option<(Arc<Schema>, Vec<RecordBatch>)>,
}

/// Runs the feature jobs over the given inputs.
pub struct FeatureJob<'a> {
    pub config: &'a FeatureConfig,
    /// Ignore every event after this instant (ms since the epoch).
    pub as_of_ms: Option<i64>,
    /// DataFusion partitions (0 = every core).
    pub threads: usize,
    /// The Ballista cluster to run on (`offline.engine = "ballista"`); `None` runs locally.
    pub cluster: Option<&'a BallistaConfig>,
}

impl FeatureJob<'_> {
    /// Validates the inputs and runs the queries.
    pub async fn run(
        &self,
        interactions: &InputTable,
        items: Option<&InputTable>,
    ) -> Result<Features> {
        let started = std::time::Instant::now();
        let stats = interactions.validate_interactions(&self.config.event_weights)?;
        if let Some(items) = items {
            items.validate_items()?;
        }
        let validation_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            rows = stats.rows,
            files = interactions.files.len(),
            seconds = validation_seconds,
            "input validated"
        );
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads
        };
        let ctx = crate::engine::session(self.cluster, threads).await?;
        let on_cluster = self.cluster.is_some();
        interactions
            .register(&ctx, "interactions", on_cluster)
            .await?;
        let catalog = match items {
            Some(items) => {
                items.register(&ctx, "items", on_cluster).await?;
                let batches = query(&ctx, "reading the catalog", "SELECT item_id, title, genres, available_countries, maturity FROM items ORDER BY item_id").await?;
                let schema = batches.first().map(|b| b.schema()).ok_or_else(|| {
                    OfflineError::input(&items.path, "the items table has no rows")
                })?;
                let unknown = count(&ctx, "SELECT COUNT(*) FROM interactions WHERE item_id NOT IN (SELECT item_id FROM items)").await?;
                if unknown > 0 {
                    tracing::warn!(
                        interactions = unknown,
                        catalog = %items.path.display(),
                        "interactions with items missing from the catalog are left out of training"
                    );
                }
                Some((schema, batches))
            }
            None => {
                query(
                    &ctx,
                    "defining the catalog",
                    "CREATE VIEW items AS SELECT DISTINCT item_id FROM interactions",
                )
                .await?;
                None
            }
        };
        register_event_weights(&ctx, self.config).await?;

        let reference_ms = self.as_of_ms.or(stats.last_ts_ms).unwrap_or(0);
        let [training_sql, popularity_sql, history_sql] = self.queries(reference_ms)?;
        let training = query(&ctx, "training-table job", &training_sql).await?;
        let training_table = training_table(&training)?;
        if training_table.pairs.is_empty() {
            return Err(OfflineError::input(
                &interactions.path,
                "no positive interactions remain after the training-table job (check the event weights, \
                 the rating threshold, --as-of and the minimum-interaction filters)",
            ));
        }
        if on_cluster {
            // On the cluster the training table stays a view: its rows would otherwise travel
            // inside every later query plan.
            query(
                &ctx,
                "defining the training table",
                &format!(
                    "CREATE VIEW training AS {}",
                    training_sql.trim().trim_end_matches(';')
                ),
            )
            .await?;
        } else {
            let schema = training[0].schema();
            let mem = MemTable::try_new(schema, vec![training])
                .map_err(OfflineError::datafusion("staging the training table"))?;
            ctx.register_table("training", Arc::new(mem))
                .map_err(OfflineError::datafusion("registering the training table"))?;
        }

        let popularity = popularity_rows(&query(&ctx, "popularity job", &popularity_sql).await?)?;
        let history = history_rows(&query(&ctx, "history job", &history_sql).await?)?;

        Ok(Features {
            training: training_table,
            popularity,
            history,
            interactions: stats,
            validation_seconds,
            items: catalog,
        })
    }
}

impl FeatureJob<'_> {
    /// The three jobs' SQL (training table, popularity, histories) with the parameters
    /// substituted; `reference_ms` is the instant decay is measured from. The benchmark gives the
    /// same text to DuckDB.
    pub fn queries(&self, reference_ms: i64) -> Result<[String; 3]> {
        let half_life_ms = self.config.decay_half_life_days.unwrap_or(0.0) * 86_400_000.0;
        let params: Vec<(&str, String)> = vec![
            ("as_of_ms", self.as_of_ms.unwrap_or(i64::MAX).to_string()),
            ("reference_ms", reference_ms.to_string()),
            ("half_life_ms", format!("{half_life_ms:.1}")),
            (
                "rating_event_type",
                string_literal(&self.config.rating_event_type),
            ),
            (
                "rating_threshold",
                format!("{:?}", self.config.rating_threshold),
            ),
            (
                "min_user_interactions",
                self.config.min_user_interactions.to_string(),
            ),
            (
                "min_item_interactions",
                self.config.min_item_interactions.to_string(),
            ),
            ("history_cap", self.config.history_cap.to_string()),
        ];
        let sql = |path: Option<&Path>, builtin: &str| -> Result<String> {
            render(&load_sql(path, builtin)?, &params)
        };
        Ok([
            sql(
                self.config.training_table_sql.as_deref(),
                TRAINING_TABLE_SQL,
            )?,
            sql(self.config.popularity_sql.as_deref(), ITEM_POPULARITY_SQL)?,
            sql(self.config.user_history_sql.as_deref(), USER_HISTORY_SQL)?,
        ])
    }
}

async fn query(ctx: &SessionContext, job: &str, sql: &str) -> Result<Vec<RecordBatch>> {
    let started = std::time::Instant::now();
    let df = ctx
        .sql(sql)
        .await
        .map_err(OfflineError::datafusion(format!("{job}: planning")))?;
    let batches = df
        .collect()
        .await
        .map_err(OfflineError::datafusion(format!("{job}: running")))?;
    tracing::info!(
        job,
        rows = batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        seconds = started.elapsed().as_secs_f64(),
        "query done"
    );
    Ok(batches)
}

async fn count(ctx: &SessionContext, sql: &str) -> Result<i64> {
    let batches = query(ctx, "counting", sql).await?;
    Ok(batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<Int64Type>()
                .map(|c| c.value(0))
        })
        .unwrap_or(0))
}

/// `event_weights(event_type, weight)` from the config, as a view over `VALUES` (a plan every
/// engine can ship: Ballista cannot serialise an in-memory table).
async fn register_event_weights(ctx: &SessionContext, config: &FeatureConfig) -> Result<()> {
    let rows: Vec<String> = config
        .event_weights
        .iter()
        .map(|(event, weight)| format!("({}, CAST({weight:?} AS DOUBLE))", string_literal(event)))
        .collect();
    let sql = if rows.is_empty() {
        "CREATE VIEW event_weights AS SELECT CAST(NULL AS VARCHAR) AS event_type, CAST(NULL AS DOUBLE) AS weight WHERE FALSE".to_string()
    } else {
        format!(
            "CREATE VIEW event_weights AS SELECT column1 AS event_type, column2 AS weight FROM (VALUES {})",
            rows.join(", ")
        )
    };
    query(ctx, "registering event weights", &sql).await?;
    Ok(())
}

fn load_sql(override_path: Option<&Path>, builtin: &str) -> Result<String> {
    match override_path {
        Some(path) => std::fs::read_to_string(path).map_err(|e| SharedError::io(path, e).into()),
        None => Ok(builtin.to_string()),
    }
}

/// Substitutes `${name}` placeholders; an unknown placeholder is an error.
pub fn render(template: &str, params: &[(&str, String)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| OfflineError::Usage("unterminated ${ in a SQL template".into()))?;
        let name = &after[..end];
        let value = params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                OfflineError::Usage(format!("unknown SQL template parameter ${{{name}}}"))
            })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Column `name` of a query's output, cast to `to`; errors name the job and the column.
fn column_as(batch: &RecordBatch, job: &str, name: &str, to: &DataType) -> Result<Arc<dyn Array>> {
    let schema_error = |problem: String| -> OfflineError {
        SharedError::Schema {
            path: PathBuf::from(format!("<{job} output>")),
            column: name.into(),
            problem,
        }
        .into()
    };
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| schema_error("missing".into()))?;
    arrow::compute::cast(column, to)
        .map_err(|e| schema_error(format!("cannot be read as {to}: {e}")))
}

/// Reads `(user_id, item_id, strength, last_ts_ms)` batches.
fn pair_columns(
    batches: &[RecordBatch],
    job: &str,
) -> Result<
    Vec<(
        StringArray,
        StringArray,
        Float64Array,
        arrow::array::Int64Array,
    )>,
> {
    batches
        .iter()
        .map(|b| {
            let get = |name: &str, to: &DataType| column_as(b, job, name, to);
            Ok((
                get("user_id", &DataType::Utf8)?.as_string::<i32>().clone(),
                get("item_id", &DataType::Utf8)?.as_string::<i32>().clone(),
                get("strength", &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
                get("last_ts_ms", &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ))
        })
        .collect()
}

fn training_table(batches: &[RecordBatch]) -> Result<TrainingTable> {
    let columns = pair_columns(batches, "training-table job")?;
    let rows = columns.iter().flat_map(|(u, i, s, t)| {
        (0..u.len()).map(move |r| (u.value(r), i.value(r), s.value(r) as f32, t.value(r)))
    });
    Ok(TrainingTable::from_rows(rows))
}

fn history_rows(batches: &[RecordBatch]) -> Result<Vec<HistoryRow>> {
    let columns = pair_columns(batches, "history job")?;
    Ok(columns
        .iter()
        .flat_map(|(u, i, s, t)| {
            (0..u.len()).map(move |r| HistoryRow {
                user_id: u.value(r).to_string(),
                item_id: i.value(r).to_string(),
                strength: s.value(r) as f32,
                ts_ms: t.value(r),
            })
        })
        .collect())
}

fn popularity_rows(batches: &[RecordBatch]) -> Result<Vec<PopularityRow>> {
    let job = "popularity job";
    let mut rows = Vec::new();
    for b in batches {
        let ids = column_as(b, job, "item_id", &DataType::Utf8)?;
        let members = column_as(b, job, "members", &DataType::UInt64)?;
        let score = column_as(b, job, "score", &DataType::Float64)?;
        let (ids, members, score) = (
            ids.as_string::<i32>(),
            members.as_primitive::<UInt64Type>(),
            score.as_primitive::<Float64Type>(),
        );
        for r in 0..ids.len() {
            rows.push(PopularityRow {
                item_id: ids.value(r).to_string(),
                members: members.value(r),
                score: score.value(r) as f32,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_substitutes_and_refuses_unknown_parameters() {
        let sql = render(
            "a ${x} b ${y}",
            &[("x", "1".into()), ("y", string_literal("it's"))],
        )
        .unwrap();
        assert_eq!(sql, "a 1 b 'it''s'");
        let err = render("${nope}", &[]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
