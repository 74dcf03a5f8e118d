//! A synthetic interaction log with planted structure, so tests, benchmarks and the quickstart
//! need no download.
//!
//! Items belong to genre clusters and have power-law (Zipf-like) popularity; members prefer one
//! or two genres and have power-law activity; events are plays, clicks, ratings (high on preferred
//! genres, low elsewhere) and list adds, spread over the 90 days before `end`. A model that learns
//! the clusters beats popularity on every metric, which the tests rely on.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::progress::Progress;
use crate::tables::{interactions_schema, items_schema, InteractionRow, ItemRow, TableWriter};
use crate::{OfflineError, Result};

/// Sizes and seed of a synthetic data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthSpec {
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    pub seed: u64,
}

const COUNTRIES: [&str; 6] = ["US", "GB", "DE", "FR", "JP", "BR"];
const MATURITY: [&str; 4] = ["G", "PG", "PG-13", "R"];
const DAY_MS: i64 = 86_400_000;
/// Events end at 2026-11-01T00:00:00Z so generated data is reproducible.
const END_MS: i64 = 1_793_491_200_000;

/// The generator's world: item genres and popularity, member tastes and activity.
pub struct SynthWorld {
    spec: SynthSpec,
    genres: usize,
    item_genres: Vec<(u16, Option<u16>)>,
    /// Items of each genre with cumulative popularity for sampling.
    genre_items: Vec<(Vec<u32>, Vec<f64>)>,
    user_tastes: Vec<(u16, u16)>,
    user_activity_cdf: Vec<f64>,
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut total = 0.0;
    weights
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

fn sample(cdf: &[f64], rng: &mut StdRng) -> usize {
    let x = rng.random::<f64>() * cdf.last().copied().unwrap_or(0.0);
    cdf.partition_point(|&c| c < x)
        .min(cdf.len().saturating_sub(1))
}

impl SynthWorld {
    pub fn new(spec: SynthSpec) -> Result<Self> {
        if spec.users == 0 || spec.items == 0 || spec.interactions == 0 {
            return Err(OfflineError::Usage(
                "--users, --items and --interactions must be positive".into(),
            ));
        }
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let genres = (spec.items / 50).clamp(2, 20);
        let item_genres: Vec<(u16, Option<u16>)> = (0..spec.items)
            .map(|_| {
                let g = rng.random_range(0..genres) as u16;
                let second =
                    (rng.random::<f32>() < 0.3).then(|| rng.random_range(0..genres) as u16);
                (g, second.filter(|s| *s != g))
            })
            .collect();
        // Popularity by a random rank: weight ∝ 1 / (rank + 10)^0.9.
        let mut ranks: Vec<usize> = (0..spec.items).collect();
        for i in (1..ranks.len()).rev() {
            ranks.swap(i, rng.random_range(0..=i));
        }
        let popularity: Vec<f64> = ranks
            .iter()
            .map(|r| 1.0 / ((r + 10) as f64).powf(0.9))
            .collect();
        let mut genre_members: Vec<Vec<u32>> = vec![Vec::new(); genres];
        for (i, (g, second)) in item_genres.iter().enumerate() {
            genre_members[*g as usize].push(i as u32);
            if let Some(s) = second {
                genre_members[*s as usize].push(i as u32);
            }
        }
        let genre_items = genre_members
            .into_iter()
            .map(|items| {
                let cdf = cumulative(items.iter().map(|&i| popularity[i as usize]));
                (items, cdf)
            })
            .collect();
        let user_tastes = (0..spec.users)
            .map(|_| {
                let a = rng.random_range(0..genres) as u16;
                let b = if rng.random::<f32>() < 0.5 {
                    a
                } else {
                    rng.random_range(0..genres) as u16
                };
                (a, b)
            })
            .collect();
        let mut user_ranks: Vec<usize> = (0..spec.users).collect();
        for i in (1..user_ranks.len()).rev() {
            user_ranks.swap(i, rng.random_range(0..=i));
        }
        let user_activity_cdf =
            cumulative(user_ranks.iter().map(|r| 1.0 / ((r + 5) as f64).powf(0.8)));
        Ok(SynthWorld {
            spec,
            genres,
            item_genres,
            genre_items,
            user_tastes,
            user_activity_cdf,
        })
    }

    pub fn user_id(u: usize) -> String {
        format!("u{u:07}")
    }

    pub fn item_id(i: usize) -> String {
        format!("i{i:06}")
    }

    /// The catalog.
    pub fn items(&self) -> Vec<ItemRow> {
        let mut rng = StdRng::seed_from_u64(self.spec.seed ^ 0x17e5);
        self.item_genres
            .iter()
            .enumerate()
            .map(|(i, (g, second))| {
                let mut genres = vec![format!("genre-{g:02}")];
                if let Some(s) = second {
                    genres.push(format!("genre-{s:02}"));
                }
                let available_countries = (rng.random::<f32>() < 0.2).then(|| {
                    COUNTRIES
                        .iter()
                        .filter(|_| rng.random::<f32>() < 0.5)
                        .map(|c| c.to_string())
                        .collect()
                });
                ItemRow {
                    item_id: Self::item_id(i),
                    title: format!("Synthetic Title {i} ({})", genres.join(", ")),
                    genres,
                    available_countries,
                    maturity: (rng.random::<f32>() < 0.9)
                        .then(|| MATURITY[rng.random_range(0..MATURITY.len())].to_string()),
                }
            })
            .collect()
    }

    /// Generates every event in chunks of about `chunk` events, calling `sink` with each chunk of
    /// `(user, item, event type, value, ts_ms)`.
    pub fn events(
        &self,
        chunk: usize,
        mut sink: impl FnMut(&[(u32, u32, &'static str, Option<f64>, i64)]) -> Result<()>,
    ) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(self.spec.seed.wrapping_add(1));
        let mut buf = Vec::with_capacity(chunk);
        for _ in 0..self.spec.interactions {
            let u = sample(&self.user_activity_cdf, &mut rng);
            let (a, b) = self.user_tastes[u];
            let roll = rng.random::<f32>();
            let (genre, preferred) = if roll < 0.85 {
                (if rng.random::<bool>() { a } else { b }, true)
            } else {
                (rng.random_range(0..self.genres) as u16, false)
            };
            let (items, cdf) = &self.genre_items[genre as usize];
            if items.is_empty() {
                continue;
            }
            let item = items[sample(cdf, &mut rng)];
            let preferred = preferred || {
                let (g, s) = self.item_genres[item as usize];
                g == a || g == b || s == Some(a) || s == Some(b)
            };
            let kind = rng.random::<f32>();
            let (event, value) = if kind < 0.55 {
                ("play", Some(0.2 + 0.8 * f64::from(rng.random::<f32>())))
            } else if kind < 0.80 {
                ("click", None)
            } else if kind < 0.92 {
                let high = rng.random::<f32>() < if preferred { 0.8 } else { 0.2 };
                let stars = if high {
                    rng.random_range(4..=5)
                } else {
                    rng.random_range(1..=3)
                };
                ("rating", Some(f64::from(stars)))
            } else {
                ("add_to_list", None)
            };
            let ts = END_MS - rng.random_range(0..90 * DAY_MS);
            buf.push((u as u32, item, event, value, ts));
            if buf.len() == chunk {
                sink(&buf)?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            sink(&buf)?;
        }
        Ok(())
    }

    /// Writes `interactions.parquet` and `items.parquet` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut items = TableWriter::create(&dir.join("items.parquet"), items_schema())?;
        items.write_items(&self.items())?;
        items.finish()?;
        let mut writer =
            TableWriter::create(&dir.join("interactions.parquet"), interactions_schema())?;
        let mut progress = Progress::new("synth", self.spec.interactions as u64);
        self.events(256 * 1024, |chunk| {
            let rows: Vec<InteractionRow> = chunk
                .iter()
                .map(|&(u, i, event_type, value, ts_ms)| InteractionRow {
                    user_id: Self::user_id(u as usize),
                    item_id: Self::item_id(i as usize),
                    event_type,
                    value,
                    ts_ms,
                })
                .collect();
            writer.write_interactions(&rows)?;
            progress.advance(rows.len() as u64, "events");
            Ok(())
        })?;
        progress.finish();
        writer.finish()
    }
}
