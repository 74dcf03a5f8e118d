//! The feature jobs: DataFusion SQL over the input Parquet producing the training table, item
//! popularity and member histories.
//!
//! The queries live in `offline/sql/*.sql` (compiled in) and can be replaced from the config
//! (`offline.features.*_sql`). Parameters are substituted as `${name}`; every value substituted is
//! a number or a quoted, escaped string literal produced here, never raw user text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, UInt64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use recsys_shared::config::BallistaConfig;

use recsys_shared::artifact::PopularityRow;
use recsys_shared::config::{FeatureConfig, FeedbackConfig, NegativeFoldIn};
use recsys_shared::SharedError;

use crate::coded_jobs::BuiltinQueries;
pub use crate::feature_tables::{Histories, Pair, PairRow, TrainingTable};
use crate::id_codes::{CodedInteractions, IdIndex};
use crate::input::{InputTable, InteractionStats};
use crate::{OfflineError, Result};

const TRAINING_TABLE_SQL: &str = include_str!("../sql/training_table.sql");
const ITEM_POPULARITY_SQL: &str = include_str!("../sql/item_popularity.sql");
const USER_HISTORY_SQL: &str = include_str!("../sql/user_history.sql");

/// Everything the feature jobs produce.
#[derive(Debug, Clone)]
pub struct Features {
    pub training: TrainingTable,
    pub popularity: Vec<PopularityRow>,
    pub history: Histories,
    pub interactions: InteractionStats,
    /// Seconds spent checking every input row before the queries.
    pub validation_seconds: f64,
    /// The catalog as read (columns of the input schema), when an items table was given.
    pub items: Option<(Arc<Schema>, Vec<RecordBatch>)>,
}

/// Explicit negative events (`feedback`, when enabled): the input may hold them, they
/// are never training positives, and with `negative_fold_in = "forget"` a member's events on an
/// item up to their newest negative on it leave the training table and the history, as the
/// nearline fold-in forgets them (so the next model does not bring them back).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NegativeEvents {
    /// Event types accepted as explicit negatives.
    pub types: Vec<String>,
    /// Whether a negative forgets the member's earlier events on the item.
    pub forget: bool,
}

impl NegativeEvents {
    /// The negatives `feedback` defines; none when feedback is off.
    pub fn from_config(feedback: &FeedbackConfig) -> Self {
        if !feedback.enabled {
            return NegativeEvents::default();
        }
        NegativeEvents {
            types: feedback.negative_event_types.clone(),
            forget: feedback.negative_fold_in == NegativeFoldIn::Forget,
        }
    }
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
    /// Explicit negative events in the input.
    pub negatives: NegativeEvents,
}

impl FeatureJob<'_> {
    /// Validates the inputs and runs the queries.
    ///
    /// With the built-in queries on the local engine, the ids are coded as integers while the
    /// rows are validated and the jobs run over the coded rows ([`crate::coded_jobs`]); the
    /// results are the same as the SQL's over the strings. Replaced queries and the cluster run
    /// the SQL over the Parquet as it is.
    pub async fn run(
        &self,
        interactions: &InputTable,
        items: Option<&InputTable>,
    ) -> Result<Features> {
        let started = std::time::Instant::now();
        let coded = self.cluster.is_none() && self.uses_builtin_sql();
        let mut event_types: Vec<String> = self.config.event_weights.keys().cloned().collect();
        event_types.extend(self.negatives.types.iter().cloned());
        let (stats, codes) = if coded {
            let (stats, codes) =
                interactions.validate_and_code_interactions(&event_types, self.as_of_ms)?;
            (stats, Some(codes))
        } else {
            (interactions.validate_interactions(&event_types)?, None)
        };
        if let Some(items) = items {
            items.validate_items()?;
        }
        let validation_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            rows = stats.rows,
            files = interactions.files.len(),
            seconds = validation_seconds,
            coded = coded,
            "input validated"
        );
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads
        };
        let ctx = crate::engine::session(self.cluster, threads).await?;
        let on_cluster = self.cluster.is_some();
        let catalog = match items {
            Some(items) => {
                items.register(&ctx, "items", on_cluster).await?;
                let batches = query(&ctx, "reading the catalog", "SELECT item_id, title, genres, available_countries, maturity FROM items ORDER BY item_id").await?;
                let schema = batches.first().map(|b| b.schema()).ok_or_else(|| {
                    OfflineError::input(&items.path, "the items table has no rows")
                })?;
                Some((schema, batches))
            }
            None => None,
        };
        let reference_ms = self.as_of_ms.or(stats.last_ts_ms).unwrap_or(0);
        let (training, popularity, history, outside_catalog) = match codes {
            Some(codes) => {
                let in_catalog = match &catalog {
                    Some((_, batches)) => Some(catalog_codes(batches, &codes)?),
                    None => None,
                };
                let jobs = self.builtin_queries(&codes, reference_ms);
                let out = jobs.run(codes, in_catalog.as_deref());
                (
                    out.training,
                    out.popularity,
                    out.history,
                    out.outside_catalog,
                )
            }
            None => {
                self.run_sql(
                    &ctx,
                    interactions,
                    catalog.is_some(),
                    on_cluster,
                    reference_ms,
                )
                .await?
            }
        };
        let dropped_share = outside_catalog as f64 / stats.rows.max(1) as f64;
        if let Some(items) = items.filter(|_| dropped_share > self.config.max_dropped_share) {
            return Err(OfflineError::input(
                &items.path,
                format!(
                    "{outside_catalog} of {} interactions ({:.1} %) name items missing from this catalog, more than offline.features.max_dropped_share = {}: check that the catalog and the interactions belong together (or raise the share)",
                    stats.rows,
                    dropped_share * 100.0,
                    self.config.max_dropped_share
                ),
            ));
        }
        if outside_catalog > 0 {
            tracing::warn!(
                interactions = outside_catalog,
                catalog = %items.map_or(PathBuf::new(), |i| i.path.clone()).display(),
                "interactions with items missing from the catalog are left out of training"
            );
        }
        if training.pairs.is_empty() {
            return Err(no_positives(interactions));
        }
        Ok(Features {
            training,
            popularity,
            history,
            interactions: stats,
            validation_seconds,
            items: catalog,
        })
    }

    /// The built-in queries' parameters over `codes`.
    fn builtin_queries(&self, codes: &CodedInteractions, reference_ms: i64) -> BuiltinQueries {
        let config = self.config;
        BuiltinQueries {
            weights: codes
                .events
                .iter()
                .map(|e| config.event_weights.get(e).copied())
                .collect(),
            forgetting: codes
                .events
                .iter()
                .map(|e| self.negatives.forget && self.negatives.types.contains(e))
                .collect(),
            rating: Some(codes.event_code(&config.rating_event_type))
                .filter(|&code| code >= 0)
                .map(|code| (code, config.rating_threshold)),
            reference_ms,
            half_life_ms: config.decay_half_life_days.unwrap_or(0.0) * 86_400_000.0,
            min_user_interactions: config.min_user_interactions.into(),
            min_item_interactions: config.min_item_interactions.into(),
            history_cap: config.history_cap,
        }
    }

    /// The three queries' SQL run by DataFusion (locally or on the cluster) over the Parquet;
    /// `items` is registered already when `has_catalog`. Returns the tables and the rows
    /// outside the catalog.
    async fn run_sql(
        &self,
        ctx: &SessionContext,
        interactions: &InputTable,
        has_catalog: bool,
        on_cluster: bool,
        reference_ms: i64,
    ) -> Result<(TrainingTable, Vec<PopularityRow>, Histories, u64)> {
        interactions
            .register(ctx, "interactions", on_cluster)
            .await?;
        let outside_catalog = if has_catalog {
            count(ctx, "SELECT COUNT(*) FROM interactions WHERE item_id NOT IN (SELECT item_id FROM items)").await?
        } else {
            query(
                ctx,
                "defining the catalog",
                "CREATE VIEW items AS SELECT DISTINCT item_id FROM interactions",
            )
            .await?;
            0
        };
        register_event_weights(ctx, self.config).await?;
        let forgetting: &[String] = if self.negatives.forget {
            &self.negatives.types
        } else {
            &[]
        };
        register_event_types(ctx, "forgetting_events", forgetting).await?;
        let [training_sql, popularity_sql, history_sql] = self.queries(reference_ms)?;
        let training = query(ctx, "training-table job", &training_sql).await?;
        let training_table = training_table(&training)?;
        if training_table.pairs.is_empty() {
            return Err(no_positives(interactions));
        }
        if on_cluster {
            // On the cluster the training table stays a view: its rows would otherwise travel
            // inside every later query plan.
            query(
                ctx,
                "defining the training table",
                &format!(
                    "CREATE VIEW training AS {}",
                    training_sql.trim().trim_end_matches(';')
                ),
            )
            .await?;
        } else {
            let schema = training[0].schema();
            register_memory(ctx, "training", schema, vec![training])?;
        }
        let popularity = popularity_rows(&query(ctx, "popularity job", &popularity_sql).await?)?;
        let history = history_rows(&query(ctx, "history job", &history_sql).await?)?;
        Ok((training_table, popularity, history, outside_catalog as u64))
    }

    /// Whether all three queries are the built-in ones.
    fn uses_builtin_sql(&self) -> bool {
        self.config.training_table_sql.is_none()
            && self.config.popularity_sql.is_none()
            && self.config.user_history_sql.is_none()
    }
}

/// The error of a job that leaves no training pair.
fn no_positives(interactions: &InputTable) -> OfflineError {
    OfflineError::input(
        &interactions.path,
        "no positive interactions remain after the training-table job (check the event weights, \
         the rating threshold, --as-of and the minimum-interaction filters)",
    )
}

/// For each item code of `codes`, whether the catalog holds the item.
fn catalog_codes(catalog: &[RecordBatch], codes: &CodedInteractions) -> Result<Vec<bool>> {
    let mut known = vec![false; codes.items.len()];
    for batch in catalog {
        let ids = column_as(batch, "reading the catalog", "item_id", &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        for r in 0..ids.len() {
            if let Some(code) = codes.items.code(ids.value(r)) {
                known[code as usize] = true;
            }
        }
    }
    Ok(known)
}

fn register_memory(
    ctx: &SessionContext,
    name: &str,
    schema: arrow::datatypes::SchemaRef,
    partitions: Vec<Vec<RecordBatch>>,
) -> Result<()> {
    let table = MemTable::try_new(schema, partitions)
        .map_err(OfflineError::datafusion(format!("staging {name}")))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(OfflineError::datafusion(format!("registering {name}")))?;
    Ok(())
}

impl FeatureJob<'_> {
    /// The three jobs' SQL (training table, popularity, histories) with the parameters
    /// substituted; `reference_ms` is the instant decay is measured from. The benchmark gives the
    /// same text to DuckDB.
    pub fn queries(&self, reference_ms: i64) -> Result<[String; 3]> {
        let rating_event = string_literal(&self.config.rating_event_type);
        let half_life_ms = self.config.decay_half_life_days.unwrap_or(0.0) * 86_400_000.0;
        let params: Vec<(&str, String)> = vec![
            ("as_of_ms", self.as_of_ms.unwrap_or(i64::MAX).to_string()),
            ("reference_ms", reference_ms.to_string()),
            ("half_life_ms", format!("{half_life_ms:.1}")),
            ("rating_event_type", rating_event),
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
/// engine can ship: Ballista cannot serialise an in-memory table). Over coded interactions the
/// event type is its code.
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

/// A view `name(event_type)` of the given event types.
async fn register_event_types(
    ctx: &SessionContext,
    name: &str,
    event_types: &[String],
) -> Result<()> {
    let rows: Vec<String> = event_types
        .iter()
        .map(|event| format!("({})", string_literal(event)))
        .collect();
    let sql = if rows.is_empty() {
        format!("CREATE VIEW {name} AS SELECT CAST(NULL AS VARCHAR) AS event_type WHERE FALSE")
    } else {
        format!(
            "CREATE VIEW {name} AS SELECT column1 AS event_type FROM (VALUES {})",
            rows.join(", ")
        )
    };
    query(ctx, &format!("registering {name}"), &sql).await?;
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

/// `s` as a SQL string literal (quotes doubled).
pub(crate) fn string_literal(s: &str) -> String {
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

/// Calls `each` with every `(user_id, item_id, strength, last_ts_ms)` row of `batches`.
fn for_each_pair(
    batches: &[RecordBatch],
    job: &str,
    mut each: impl FnMut(PairRow<'_>),
) -> Result<()> {
    for b in batches {
        let get = |name: &str, to: &DataType| column_as(b, job, name, to);
        let strength = get("strength", &DataType::Float64)?;
        let strength = strength.as_primitive::<Float64Type>();
        let ts = get("last_ts_ms", &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        let users = get("user_id", &DataType::Utf8)?;
        let items = get("item_id", &DataType::Utf8)?;
        let (users, items) = (users.as_string::<i32>(), items.as_string::<i32>());
        for r in 0..b.num_rows() {
            each((
                users.value(r),
                items.value(r),
                strength.value(r) as f32,
                ts.value(r),
            ));
        }
    }
    Ok(())
}

fn training_table(batches: &[RecordBatch]) -> Result<TrainingTable> {
    let job = "training-table job";
    // The rows borrow the query's string columns (no copy of the ids per row).
    let mut columns = Vec::with_capacity(batches.len());
    for b in batches {
        let get = |name: &str, to: &DataType| column_as(b, job, name, to);
        columns.push((
            get("user_id", &DataType::Utf8)?,
            get("item_id", &DataType::Utf8)?,
            get("strength", &DataType::Float64)?,
            get("last_ts_ms", &DataType::Int64)?,
        ));
    }
    let rows = columns.iter().flat_map(|(u, i, s, t)| {
        let (u, i) = (u.as_string::<i32>(), i.as_string::<i32>());
        let (s, t) = (
            s.as_primitive::<Float64Type>(),
            t.as_primitive::<Int64Type>(),
        );
        (0..u.len()).map(move |r| (u.value(r), i.value(r), s.value(r) as f32, t.value(r)))
    });
    Ok(TrainingTable::from_rows(rows))
}

fn history_rows(batches: &[RecordBatch]) -> Result<Histories> {
    let (mut users, mut items) = (IdIndex::default(), IdIndex::default());
    let mut rows = Vec::new();
    for_each_pair(batches, "history job", |(u, i, strength, last_ts_ms)| {
        rows.push(Pair {
            user: users.intern(u),
            item: items.intern(i),
            strength,
            last_ts_ms,
        })
    })?;
    Ok(Histories {
        user_ids: users.into_ids(),
        item_ids: items.into_ids(),
        rows,
    })
}

fn popularity_rows(batches: &[RecordBatch]) -> Result<Vec<PopularityRow>> {
    let job = "popularity job";
    let mut rows = Vec::new();
    for b in batches {
        let members = column_as(b, job, "members", &DataType::UInt64)?;
        let score = column_as(b, job, "score", &DataType::Float64)?;
        let items = column_as(b, job, "item_id", &DataType::Utf8)?;
        let (members, score, items) = (
            members.as_primitive::<UInt64Type>(),
            score.as_primitive::<Float64Type>(),
            items.as_string::<i32>(),
        );
        for r in 0..b.num_rows() {
            rows.push(PopularityRow {
                item_id: items.value(r).to_string(),
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
