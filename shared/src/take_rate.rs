//! The take-rate report of one experiment (`recsys offline experiment-report`): per variant,
//! members, impressions, plays, the take rate and plays per member with 95 % intervals, and the
//! lift against the control with its p-value. The offline job computes it; the console shows the
//! one saved with `--out`. Data only: no computation here.

use serde::{Deserialize, Serialize};

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantFigures {
    pub variant: String,
    pub members: u64,
    pub impressions: u64,
    pub plays: u64,
    pub take_rate: f64,
    pub take_rate_ci95: [f64; 2],
    pub plays_per_member: f64,
    pub plays_per_member_ci95: [f64; 2],
    /// Against the control (none for the control itself).
    pub lift: Option<f64>,
    pub p_value: Option<f64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub experiment: String,
    pub control: String,
    pub variants: Vec<VariantFigures>,
    /// Members whose impressions name more than one variant.
    pub members_in_several_variants: u64,
}

impl std::fmt::Display for ExperimentReport {
    /// The report as a table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "experiment {:?} (control: {}){}",
            self.experiment,
            self.control,
            if self.members_in_several_variants > 0 {
                format!(
                    " — WARNING: {} members appear in several variants",
                    self.members_in_several_variants
                )
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "{:<16} {:>8} {:>11} {:>8} {:>26} {:>24} {:>9} {:>9}",
            "variant",
            "members",
            "impressions",
            "plays",
            "take rate [95% CI]",
            "plays/member [95% CI]",
            "lift",
            "p"
        )?;
        for v in &self.variants {
            writeln!(
            f,
                "{:<16} {:>8} {:>11} {:>8} {:>8.4} [{:.4}, {:.4}] {:>7.3} [{:.3}, {:.3}] {:>9} {:>9}",
                v.variant,
                v.members,
                v.impressions,
                v.plays,
                v.take_rate,
                v.take_rate_ci95[0],
                v.take_rate_ci95[1],
                v.plays_per_member,
                v.plays_per_member_ci95[0],
                v.plays_per_member_ci95[1],
                v.lift.map_or("—".into(), |l| format!("{:+.1}%", l * 100.0)),
                v.p_value.map_or("—".into(), |p| format!("{p:.2e}")),
            )?;
        }
        Ok(())
    }
}
