//! `recsys offline experiment-report`: the take rate of each variant of one experiment, from the
//! archived impressions and the member events attributed to them (`request_id`).
//!
//! DataFusion SQL joins every item shown in the experiment with the plays that carry the request
//! id of the answer that showed it (a play counts once per item and answer), per member. The
//! statistics are per member, because members — not requests — are what the experiment
//! randomises:
//! - take rate r = plays / impressions (items shown), with its standard error by the delta
//!   method for a ratio of per-member sums, se² = Σ(pₘ − r·iₘ)² / (N(N−1)·ī²);
//! - plays per member, with the standard error of a mean;
//! - for every other variant against the control: the relative lift of the take rate and its
//!   two-sided p-value (z-test on the difference, se = √(se_a² + se_b²)).
//!
//! 95 % intervals are r ± 1.96·se. A member seen in more than one variant (which allocation never
//! does) is reported, since it means the impressions do not come from one experiment's split.

use datafusion::prelude::SessionContext;
pub use recsys_shared::take_rate::{ExperimentReport, VariantFigures};

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};

use crate::features::string_literal;
use crate::input::InputTable;
use crate::{OfflineError, Result};

/// What to report.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    pub experiment: String,
    /// Event types that count as taking a recommendation. Default `play`.
    pub positive_events: Vec<String>,
    /// The variant the others are compared with; default `control` if there is one, else the
    /// first by name.
    pub control: Option<String>,
}

/// One member's sums in one variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberSums {
    pub impressions: f64,
    pub plays: f64,
}

/// Runs the report over archived impressions and events (directories, files or URLs).
pub async fn run(
    impressions: &InputTable,
    events: &InputTable,
    request: &ReportRequest,
) -> Result<ExperimentReport> {
    let ctx = SessionContext::new();
    impressions.register(&ctx, "impressions", false).await?;
    events.register(&ctx, "events", false).await?;
    let positives = if request.positive_events.is_empty() {
        vec!["play".to_string()]
    } else {
        request.positive_events.clone()
    };
    let positives: Vec<String> = positives.iter().map(|e| string_literal(e)).collect();
    let sql = format!(
        "WITH shown AS (
            SELECT DISTINCT request_id, user_id, variant, item_id
            FROM impressions WHERE experiment = {experiment}
        ),
        taken AS (
            SELECT DISTINCT request_id, item_id FROM events
            WHERE request_id IS NOT NULL AND request_id <> '' AND event_type IN ({positives})
        )
        SELECT s.user_id, s.variant, COUNT(*) AS impressions, COUNT(t.item_id) AS plays
        FROM shown s LEFT JOIN taken t ON s.request_id = t.request_id AND s.item_id = t.item_id
        GROUP BY s.user_id, s.variant",
        experiment = string_literal(&request.experiment),
        positives = positives.join(", "),
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(OfflineError::datafusion("experiment report: planning"))?
        .collect()
        .await
        .map_err(OfflineError::datafusion("experiment report: running"))?;
    let mut by_variant: std::collections::BTreeMap<String, Vec<MemberSums>> = Default::default();
    let mut variants_of: std::collections::HashMap<String, usize> = Default::default();
    for b in &batches {
        let cast = |name: &str, to: &DataType| {
            arrow::compute::cast(b.column_by_name(name).expect("selected"), to).expect("castable")
        };
        let users = cast("user_id", &DataType::Utf8);
        let variants = cast("variant", &DataType::Utf8);
        let shown = cast("impressions", &DataType::Int64);
        let taken = cast("plays", &DataType::Int64);
        let (users, variants) = (users.as_string::<i32>(), variants.as_string::<i32>());
        let (shown, taken) = (
            shown.as_primitive::<Int64Type>(),
            taken.as_primitive::<Int64Type>(),
        );
        for r in 0..b.num_rows() {
            *variants_of.entry(users.value(r).to_string()).or_default() += 1;
            by_variant
                .entry(variants.value(r).to_string())
                .or_default()
                .push(MemberSums {
                    impressions: shown.value(r) as f64,
                    plays: taken.value(r) as f64,
                });
        }
    }
    if by_variant.is_empty() {
        return Err(OfflineError::input(
            &impressions.path,
            format!(
                "no impressions of experiment {:?} (is it the experiment's name, and are the \
                 impressions archived?)",
                request.experiment
            ),
        ));
    }
    let control = match &request.control {
        Some(c) if by_variant.contains_key(c) => c.clone(),
        Some(c) => {
            return Err(OfflineError::Usage(format!(
                "--control {c:?}: no such variant in the impressions (found: {})",
                by_variant.keys().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
        None if by_variant.contains_key("control") => "control".to_string(),
        None => by_variant.keys().next().expect("not empty").clone(),
    };
    let control_stats = RatioStats::of(&by_variant[&control]);
    let variants = by_variant
        .iter()
        .map(|(variant, members)| {
            let stats = RatioStats::of(members);
            let versus = (variant != &control).then(|| stats.versus(&control_stats));
            stats.figures(variant, versus)
        })
        .collect();
    Ok(ExperimentReport {
        experiment: request.experiment.clone(),
        control,
        variants,
        members_in_several_variants: variants_of.values().filter(|&&n| n > 1).count() as u64,
    })
}

/// A ratio of per-member sums and a per-member mean, with their standard errors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioStats {
    pub members: f64,
    pub impressions: f64,
    pub plays: f64,
    pub rate: f64,
    pub rate_se: f64,
    pub per_member: f64,
    pub per_member_se: f64,
}

impl RatioStats {
    pub fn of(members: &[MemberSums]) -> RatioStats {
        let n = members.len() as f64;
        let impressions: f64 = members.iter().map(|m| m.impressions).sum();
        let plays: f64 = members.iter().map(|m| m.plays).sum();
        let rate = if impressions > 0.0 {
            plays / impressions
        } else {
            0.0
        };
        let mean_impressions = impressions / n;
        let per_member = plays / n;
        let (rate_se, per_member_se) = if n > 1.0 {
            let residual: f64 = members
                .iter()
                .map(|m| (m.plays - rate * m.impressions).powi(2))
                .sum();
            let spread: f64 = members.iter().map(|m| (m.plays - per_member).powi(2)).sum();
            (
                (residual / (n * (n - 1.0) * mean_impressions.powi(2))).sqrt(),
                (spread / ((n - 1.0) * n)).sqrt(),
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        RatioStats {
            members: n,
            impressions,
            plays,
            rate,
            rate_se,
            per_member,
            per_member_se,
        }
    }

    /// (relative lift of the rate, two-sided p-value) against `control`.
    pub fn versus(&self, control: &RatioStats) -> (f64, f64) {
        let lift = self.rate / control.rate - 1.0;
        let se = (self.rate_se.powi(2) + control.rate_se.powi(2)).sqrt();
        let z = (self.rate - control.rate) / se;
        (lift, erfc(z.abs() / std::f64::consts::SQRT_2))
    }

    fn figures(&self, variant: &str, versus: Option<(f64, f64)>) -> VariantFigures {
        let ci = |x: f64, se: f64| [x - 1.96 * se, x + 1.96 * se];
        VariantFigures {
            variant: variant.to_string(),
            members: self.members as u64,
            impressions: self.impressions as u64,
            plays: self.plays as u64,
            take_rate: self.rate,
            take_rate_ci95: ci(self.rate, self.rate_se),
            plays_per_member: self.per_member,
            plays_per_member_ci95: ci(self.per_member, self.per_member_se),
            lift: versus.map(|v| v.0),
            p_value: versus.map(|v| v.1),
        }
    }
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        // Two-sided p of z = 1.96 is 0.05.
        assert!((erfc(1.96 / std::f64::consts::SQRT_2) - 0.0500).abs() < 1e-4);
        assert!((erfc(-1.0) - 1.842_700_79).abs() < 1e-6);
    }

    #[test]
    fn ratio_standard_error_is_the_delta_method() {
        // Members with equal impressions: the ratio's se is the per-member rate's se.
        let members: Vec<MemberSums> = [0.0, 1.0, 2.0, 1.0]
            .iter()
            .map(|&p| MemberSums {
                impressions: 10.0,
                plays: p,
            })
            .collect();
        let s = RatioStats::of(&members);
        assert!((s.rate - 0.1).abs() < 1e-12);
        let rates = [0.0, 0.1, 0.2, 0.1];
        let var = rates.iter().map(|r: &f64| (r - 0.1).powi(2)).sum::<f64>() / 3.0;
        assert!((s.rate_se - (var / 4.0).sqrt()).abs() < 1e-12, "{s:?}");
        assert!((s.per_member - 1.0).abs() < 1e-12);
        // The same rate twice: no lift, p = 1.
        let (lift, p) = s.versus(&s);
        assert!(lift.abs() < 1e-12 && (p - 1.0).abs() < 1e-6);
        // Twice the plays: a lift of 100 %, and a small p with many members.
        let many = |plays: f64| -> Vec<MemberSums> {
            (0..2000)
                .map(|i| MemberSums {
                    impressions: 10.0,
                    plays: plays * (i % 3) as f64,
                })
                .collect()
        };
        let (lift, p) = RatioStats::of(&many(2.0)).versus(&RatioStats::of(&many(1.0)));
        assert!((lift - 1.0).abs() < 1e-9 && p < 1e-6, "{lift} {p}");
    }
}
