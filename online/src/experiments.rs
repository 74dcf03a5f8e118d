//! Homepage experiments: which members see which model version and which row recipe.
//!
//! An experiments file (TOML, `online.experiments_file`, else `experiments.toml` in the model
//! root so it ships with the models) lists experiments; each has a salt, a traffic share and
//! weighted variants, and a variant may choose a published **model version** and/or a **row
//! recipe** (`["top_picks", "because_you_watched*2", "trending"]`):
//!
//! ```toml
//! [[experiment]]
//! name = "ials-tuned"
//! salt = "2026-12-a"          # default: the name
//! traffic = 1.0               # share of members in the experiment, 0..=1
//! overrides = { "qa-member-1" = "treatment" }
//!
//! [[experiment.variant]]
//! name = "control"
//! weight = 1
//!
//! [[experiment.variant]]
//! name = "treatment"
//! weight = 1
//! model_version = "20261130T120000Z-3f2a"
//! rows = ["top_picks", "because_you_watched*2", "trending"]
//! retrieval = "ann"           # or "exact"; default: online.retrieval
//! ```
//!
//! Allocation is a pure function of the member id and the salt — SHA-256(salt, 0, member): the
//! first 64 bits decide whether the member is in the experiment (below `traffic`), the next 64
//! which variant (by weight) — so every server gives a member the same variant with no shared
//! state, and experiments with different salts are independent. A member can be in several
//! experiments; the first in file order whose variant names a model version chooses the model,
//! and likewise for the row recipe and the retrieval. A control or holdout is a variant like any other.
//!
//! This module owns parsing, validation and allocation. It must not hold per-member state or do
//! I/O on the request path; loading the named model versions is the server's job
//! ([`crate::server`]), which keeps serving the last good file when a new one is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use recsys_shared::config::Retrieval;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A refused experiments file: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentsError {
    /// e.g. `experiment[0] "ials-tuned".variant[1].weight`.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ExperimentsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ExperimentsError {}

fn refuse(field: impl Into<String>, problem: impl Into<String>) -> ExperimentsError {
    ExperimentsError {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default, rename = "experiment")]
    experiments: Vec<ExperimentSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentSpec {
    name: String,
    salt: Option<String>,
    #[serde(default = "full_traffic")]
    traffic: f64,
    #[serde(default, rename = "variant")]
    variants: Vec<VariantSpec>,
    #[serde(default)]
    overrides: BTreeMap<String, String>,
}

fn full_traffic() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantSpec {
    name: String,
    weight: f64,
    model_version: Option<String>,
    rows: Option<Vec<String>>,
    retrieval: Option<Retrieval>,
}

/// A kind of homepage row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// The member's top-scored items.
    TopPicks,
    /// Items similar to one of the member's newest history items (one seed per row).
    BecauseYouWatched,
    /// The popularity ranking.
    Trending,
}

impl RowKind {
    pub const ALL: [RowKind; 3] = [
        RowKind::TopPicks,
        RowKind::BecauseYouWatched,
        RowKind::Trending,
    ];

    /// The name used in files, responses and impressions.
    pub fn name(self) -> &'static str {
        match self {
            RowKind::TopPicks => "top_picks",
            RowKind::BecauseYouWatched => "because_you_watched",
            RowKind::Trending => "trending",
        }
    }
}

/// Which rows a homepage has, in order: each kind with how many rows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRecipe(pub Vec<(RowKind, usize)>);

impl RowRecipe {
    /// Parses `["top_picks", "because_you_watched*2", "trending"]` (`×2` and `x2` are accepted
    /// for `*2`); `field` names the list in errors.
    pub fn parse(entries: &[String], field: &str) -> Result<RowRecipe, ExperimentsError> {
        if entries.is_empty() {
            return Err(refuse(field, "a row recipe needs at least one row"));
        }
        let mut rows = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let entry = entry.trim();
            let (kind, count) = match entry.split_once(['*', '×']).or_else(|| {
                // `because_you_watchedx2`: an `x` followed by digits only.
                entry
                    .rsplit_once('x')
                    .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            }) {
                Some((kind, count)) => {
                    let count: usize = count
                        .trim()
                        .parse()
                        .map_err(|_| refuse(&at, format!("{count:?} is not a row count")))?;
                    (kind.trim(), count)
                }
                None => (entry, 1),
            };
            if !(1..=20).contains(&count) {
                return Err(refuse(
                    &at,
                    format!("{count} rows: between 1 and 20 are allowed"),
                ));
            }
            let kind = RowKind::ALL
                .into_iter()
                .find(|k| k.name() == kind)
                .ok_or_else(|| {
                    refuse(
                        &at,
                        format!(
                            "unknown row kind {kind:?} (known: {})",
                            RowKind::ALL.map(RowKind::name).join(", ")
                        ),
                    )
                })?;
            rows.push((kind, count));
        }
        Ok(RowRecipe(rows))
    }

    /// The rows in order, each kind repeated its count.
    pub fn rows(&self) -> impl Iterator<Item = RowKind> + '_ {
        self.0
            .iter()
            .flat_map(|&(kind, count)| std::iter::repeat_n(kind, count))
    }
}

/// One variant of an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub weight: f64,
    /// The published model version this variant is served by; `None` = `CURRENT`.
    pub model_version: Option<String>,
    /// The homepage rows; `None` = the default rows.
    pub recipe: Option<RowRecipe>,
    /// How member vectors find their items (`exact` or `ann`); `None` = `online.retrieval`.
    pub retrieval: Option<Retrieval>,
}

/// One experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub salt: String,
    /// Share of members in the experiment.
    pub traffic: f64,
    pub variants: Vec<Variant>,
    /// Running sums of the weights, for the variant lookup.
    cumulative: Vec<f64>,
    /// QA: members forced into a variant (index), whatever their hash says.
    overrides: HashMap<String, usize>,
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Experiments {
    pub experiments: Vec<Experiment>,
}

/// A member's variant in one experiment.
#[derive(Debug, Clone, Copy)]
pub struct Assignment<'a> {
    pub experiment: &'a Experiment,
    pub variant: &'a Variant,
}

/// Two independent uniform draws in [0, 1) for (salt, member).
fn draws(salt: &str, member: &str) -> (f64, f64) {
    let mut hash = Sha256::new();
    hash.update(salt.as_bytes());
    hash.update([0u8]);
    hash.update(member.as_bytes());
    let digest = hash.finalize();
    let word = |i: usize| u64::from_be_bytes(digest[i..i + 8].try_into().expect("8 bytes"));
    // 53 bits: exactly representable, uniform in [0, 1).
    let unit = |w: u64| (w >> 11) as f64 / (1u64 << 53) as f64;
    (unit(word(0)), unit(word(8)))
}

impl Experiment {
    /// The member's variant, or `None` when they are outside the experiment's traffic.
    pub fn assign(&self, member: &str) -> Option<&Variant> {
        if let Some(&forced) = self.overrides.get(member) {
            return Some(&self.variants[forced]);
        }
        let (inside, pick) = draws(&self.salt, member);
        if inside >= self.traffic {
            return None;
        }
        let total = *self.cumulative.last().expect("at least one variant");
        let target = pick * total;
        let index = self
            .cumulative
            .iter()
            .position(|&c| target < c)
            .unwrap_or(self.variants.len() - 1);
        Some(&self.variants[index])
    }
}

impl Experiments {
    /// Parses and validates a file's text; errors name the field.
    pub fn parse(text: &str) -> Result<Experiments, ExperimentsError> {
        let file: FileSpec = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            refuse(span, e.message().to_string())
        })?;
        let mut names = HashSet::new();
        let mut salts = HashMap::new();
        let mut experiments = Vec::with_capacity(file.experiments.len());
        for (i, spec) in file.experiments.into_iter().enumerate() {
            let at = format!("experiment[{i}] {:?}", spec.name);
            if spec.name.trim().is_empty() {
                return Err(refuse(format!("experiment[{i}].name"), "empty"));
            }
            if !names.insert(spec.name.clone()) {
                return Err(refuse(
                    format!("{at}.name"),
                    "duplicate experiment name (names label metrics and impressions)",
                ));
            }
            let salt = spec.salt.unwrap_or_else(|| spec.name.clone());
            if let Some(other) = salts.insert(salt.clone(), spec.name.clone()) {
                return Err(refuse(
                    format!("{at}.salt"),
                    format!(
                        "the same salt as experiment {other:?}: their allocations would not be independent"
                    ),
                ));
            }
            if !(0.0..=1.0).contains(&spec.traffic) {
                return Err(refuse(
                    format!("{at}.traffic"),
                    format!("{} is not a share between 0 and 1", spec.traffic),
                ));
            }
            if spec.variants.is_empty() {
                return Err(refuse(
                    format!("{at}.variant"),
                    "an experiment needs at least one variant",
                ));
            }
            let mut variants = Vec::with_capacity(spec.variants.len());
            let mut cumulative = Vec::with_capacity(spec.variants.len());
            let mut total = 0.0;
            let mut variant_names = HashSet::new();
            for (j, v) in spec.variants.into_iter().enumerate() {
                let vat = format!("{at}.variant[{j}] {:?}", v.name);
                if v.name.trim().is_empty() {
                    return Err(refuse(format!("{at}.variant[{j}].name"), "empty"));
                }
                if !variant_names.insert(v.name.clone()) {
                    return Err(refuse(format!("{vat}.name"), "duplicate variant name"));
                }
                if !v.weight.is_finite() || v.weight < 0.0 {
                    return Err(refuse(
                        format!("{vat}.weight"),
                        format!("{} is not a finite weight ≥ 0", v.weight),
                    ));
                }
                if let Some(version) = &v.model_version {
                    if version.is_empty()
                        || version.contains(['/', '\\'])
                        || version.starts_with('.')
                    {
                        return Err(refuse(
                            format!("{vat}.model_version"),
                            format!("{version:?} is not a model version name"),
                        ));
                    }
                }
                let recipe = v
                    .rows
                    .as_deref()
                    .map(|rows| RowRecipe::parse(rows, &format!("{vat}.rows")))
                    .transpose()?;
                total += v.weight;
                cumulative.push(total);
                variants.push(Variant {
                    name: v.name,
                    weight: v.weight,
                    model_version: v.model_version,
                    recipe,
                    retrieval: v.retrieval,
                });
            }
            if !(total > 0.0 && total.is_finite()) {
                return Err(refuse(
                    format!("{at}.variant"),
                    format!("the weights must sum to a positive finite number, not {total}"),
                ));
            }
            let mut overrides = HashMap::with_capacity(spec.overrides.len());
            for (member, variant) in spec.overrides {
                let index = variants
                    .iter()
                    .position(|v| v.name == variant)
                    .ok_or_else(|| {
                        refuse(
                            format!("{at}.overrides.{member:?}"),
                            format!("unknown variant {variant:?}"),
                        )
                    })?;
                overrides.insert(member, index);
            }
            experiments.push(Experiment {
                name: spec.name,
                salt,
                traffic: spec.traffic,
                variants,
                cumulative,
                overrides,
            });
        }
        Ok(Experiments { experiments })
    }

    /// The member's variant in every experiment they are in, in file order.
    pub fn assign(&self, member: &str) -> Vec<Assignment<'_>> {
        self.experiments
            .iter()
            .filter_map(|experiment| {
                experiment.assign(member).map(|variant| Assignment {
                    experiment,
                    variant,
                })
            })
            .collect()
    }

    /// Every model version a variant names, with the field naming it first.
    pub fn model_versions(&self) -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, e) in self.experiments.iter().enumerate() {
            for (j, v) in e.variants.iter().enumerate() {
                if let Some(version) = &v.model_version {
                    if seen.insert(version.clone()) {
                        out.push((
                            version.clone(),
                            format!(
                                "experiment[{i}] {:?}.variant[{j}] {:?}.model_version",
                                e.name, v.name
                            ),
                        ));
                    }
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[experiment]]
name = "model"
traffic = 1.0
overrides = { "qa-1" = "treatment" }

[[experiment.variant]]
name = "control"
weight = 1

[[experiment.variant]]
name = "treatment"
weight = 1
model_version = "v2"
rows = ["top_picks", "because_you_watched*2", "trending"]

[[experiment]]
name = "rows"
salt = "rows-2026"
traffic = 0.2

[[experiment.variant]]
name = "a"
weight = 3

[[experiment.variant]]
name = "b"
weight = 1
rows = ["trending", "top_picks"]
"#;

    #[test]
    fn allocation_is_sticky_weighted_and_independent() {
        let experiments = Experiments::parse(FILE).unwrap();
        let again = Experiments::parse(FILE).unwrap();
        let n = 40_000;
        let mut treatment = 0;
        let mut in_rows = 0;
        let mut b = 0;
        // Joint counts of (model treatment, rows experiment entered).
        let mut both = 0;
        for m in 0..n {
            let member = format!("member-{m}");
            let a = experiments.assign(&member);
            let names: Vec<_> = a
                .iter()
                .map(|x| (x.experiment.name.clone(), x.variant.name.clone()))
                .collect();
            let names_again: Vec<_> = again
                .assign(&member)
                .iter()
                .map(|x| (x.experiment.name.clone(), x.variant.name.clone()))
                .collect();
            assert_eq!(names, names_again, "the same member, the same variants");
            assert_eq!(a[0].experiment.name, "model", "traffic 1.0 takes everyone");
            let is_treatment = a[0].variant.name == "treatment";
            treatment += is_treatment as usize;
            if let Some(rows) = a.get(1) {
                in_rows += 1;
                b += (rows.variant.name == "b") as usize;
                both += is_treatment as usize;
            }
        }
        let share = |k: usize, of: usize| k as f64 / of as f64;
        assert!((share(treatment, n) - 0.5).abs() < 0.015, "{treatment}");
        assert!((share(in_rows, n) - 0.2).abs() < 0.01, "{in_rows}");
        assert!((share(b, in_rows) - 0.25).abs() < 0.02, "{b} of {in_rows}");
        // Independent salts: the rows experiment takes members of both model variants alike.
        assert!(
            (share(both, in_rows) - 0.5).abs() < 0.03,
            "{both} of {in_rows}"
        );
    }

    #[test]
    fn overrides_force_a_variant_and_recipes_parse() {
        let experiments = Experiments::parse(FILE).unwrap();
        let qa = experiments.assign("qa-1");
        assert_eq!(qa[0].variant.name, "treatment");
        let recipe = qa[0].variant.recipe.as_ref().unwrap();
        assert_eq!(
            recipe.rows().collect::<Vec<_>>(),
            [
                RowKind::TopPicks,
                RowKind::BecauseYouWatched,
                RowKind::BecauseYouWatched,
                RowKind::Trending
            ]
        );
        assert_eq!(
            RowRecipe::parse(&["because_you_watched×3".into()], "r")
                .unwrap()
                .0,
            [(RowKind::BecauseYouWatched, 3)]
        );
        assert_eq!(
            RowRecipe::parse(&["because_you_watchedx2".into()], "r")
                .unwrap()
                .0,
            [(RowKind::BecauseYouWatched, 2)]
        );
        assert_eq!(
            experiments.model_versions(),
            [(
                "v2".to_string(),
                "experiment[0] \"model\".variant[1] \"treatment\".model_version".to_string()
            )]
        );
        assert!(Experiments::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let variant = |weight: &str, extra: &str| {
            format!(
                "[[experiment]]\nname = \"e\"\n[[experiment.variant]]\nname = \"v\"\nweight = {weight}\n{extra}"
            )
        };
        let cases = [
            (variant("0", ""), "experiment[0] \"e\".variant", "positive"),
            (
                // Each weight is finite; their sum overflows to infinity.
                variant(
                    "1.7e308",
                    "[[experiment.variant]]\nname = \"w\"\nweight = 1.7e308",
                ),
                "experiment[0] \"e\".variant",
                "positive finite",
            ),
            (
                variant("-1", ""),
                "experiment[0] \"e\".variant[0] \"v\".weight",
                "≥ 0",
            ),
            (
                variant("1", "rows = [\"top_picks\", \"recently_added\"]"),
                "experiment[0] \"e\".variant[0] \"v\".rows[1]",
                "unknown row kind \"recently_added\"",
            ),
            (
                variant("1", "model_version = \"../etc\""),
                "experiment[0] \"e\".variant[0] \"v\".model_version",
                "not a model version",
            ),
            (
                format!("{}\n{}", variant("1", ""), variant("1", "")),
                "experiment[1] \"e\".name",
                "duplicate experiment name",
            ),
            (
                variant("1", "").replace("name = \"e\"", "name = \"e\"\ntraffic = 1.5"),
                "experiment[0] \"e\".traffic",
                "between 0 and 1",
            ),
            (
                variant("1", "")
                    .replace("name = \"e\"", "name = \"e\"\noverrides = { m = \"nope\" }"),
                "experiment[0] \"e\".overrides.\"m\"",
                "unknown variant \"nope\"",
            ),
            (
                variant("1", "colour = 3"),
                "line ",
                "unknown field `colour`",
            ),
        ];
        for (text, field, problem) in cases {
            let e = Experiments::parse(&text).unwrap_err();
            assert!(e.field.starts_with(field), "{e} (wanted field {field})");
            assert!(e.problem.contains(problem), "{e} (wanted {problem})");
        }
    }
}
