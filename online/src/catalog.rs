//! The in-memory catalog (Netflix Hollow's idea): the whole current model — its scorer (item
//! factors or item weights, whatever the family), ids, titles, availability and popularity —
//! loaded, validated and then swapped in atomically as one immutable value. Requests hold an
//! `Arc` to the catalog they started with, so a swap never changes a request's model halfway.

use std::collections::HashMap;
use std::path::PathBuf;

use recsys_shared::artifact::published::{LoadOptions, PublishedModel, Taste};
use recsys_shared::artifact::{files, read_catalog, read_popularity, Manifest, ModelRoot, Texts};
use recsys_shared::config::MaturityConfig;
use recsys_shared::model::MemberState;
use recsys_store::features::HistoryEntry;

use crate::error::OnlineError;

/// Bitset over item indices.
#[derive(Debug, Clone)]
pub struct ItemSet(Vec<u64>);

impl ItemSet {
    fn new(n: usize) -> Self {
        ItemSet(vec![0; n.div_ceil(64)])
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        let i = i as usize;
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// One published model version, ready to serve.
#[derive(Debug)]
pub struct Catalog {
    pub version: String,
    pub manifest: Manifest,
    /// The version's model: its item ids and index, its scorer and (iALS) its fold-in.
    pub model: PublishedModel,
    /// Empty when the catalog has no title for the item.
    pub titles: Texts,
    /// Items shown everywhere (no country list).
    unrestricted: ItemSet,
    /// Per country: the items whose list names it.
    available_in: HashMap<String, ItemSet>,
    /// Per item: its maturity rating, an index into `maturity_labels`; `UNRATED` when none.
    maturity: Vec<u16>,
    /// The distinct maturity ratings of the catalog.
    maturity_labels: Vec<String>,
    /// Item indices, most popular first, with their popularity scores.
    pub popularity: Vec<(u32, f32)>,
}

/// An item without a maturity rating.
const UNRATED: u16 = u16::MAX;

/// The catalog's ratings one member may see (see [`Catalog::maturity_filter`]).
#[derive(Debug, Clone)]
pub struct MaturityFilter {
    /// Per distinct rating of the catalog.
    labels: Vec<bool>,
    unrated: bool,
}

impl Catalog {
    /// Loads and validates version `version` of `root` (checksums, shapes, ids).
    pub fn load(root: &ModelRoot, version: &str) -> Result<Catalog, OnlineError> {
        Self::load_with(root, version, LoadOptions::default())
    }

    /// [`Catalog::load`], the model held as `options` say (`online.item_factors`, the item index
    /// for `online.retrieval = "ann"`).
    pub fn load_with(
        root: &ModelRoot,
        version: &str,
        options: LoadOptions,
    ) -> Result<Catalog, OnlineError> {
        let manifest = root.verify(version)?;
        let dir = root.version_dir(version);
        let model = PublishedModel::load_with(root, version, &manifest, options)?;
        let invalid = |problem: String| OnlineError::InvalidModel {
            version: version.to_string(),
            problem,
        };
        let n = model.len();
        let mut titles = vec![String::new(); n];
        let mut unrestricted = ItemSet::new(n);
        let mut available_in: HashMap<String, ItemSet> = HashMap::new();
        let mut restricted = vec![false; n];
        let mut maturity = vec![UNRATED; n];
        let mut maturity_labels: Vec<String> = Vec::new();
        for row in read_catalog(&dir.join(files::ITEMS))? {
            let Some(i) = model.ids.row(&row.item_id) else {
                continue;
            };
            let i = i as usize;
            titles[i] = row.title.unwrap_or_default();
            if let Some(rating) = row.maturity {
                let label = match maturity_labels.iter().position(|l| *l == rating) {
                    Some(label) => label,
                    None if maturity_labels.len() < usize::from(UNRATED) => {
                        maturity_labels.push(rating);
                        maturity_labels.len() - 1
                    }
                    None => {
                        return Err(invalid(format!(
                            "items.parquet: more than {UNRATED} distinct maturity ratings"
                        )))
                    }
                };
                maturity[i] = label as u16;
            }
            if let Some(countries) = row.available_countries {
                restricted[i] = true;
                for c in countries {
                    available_in
                        .entry(c)
                        .or_insert_with(|| ItemSet::new(n))
                        .insert(i);
                }
            }
        }
        for (i, r) in restricted.iter().enumerate() {
            if !r {
                unrestricted.insert(i);
            }
        }
        let mut popularity: Vec<(u32, f32)> = read_popularity(&dir.join(files::ITEM_POPULARITY))?
            .into_iter()
            .filter_map(|row| model.ids.row(&row.item_id).map(|i| (i, row.score)))
            .collect();
        popularity.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let titles = Texts::new(&titles).map_err(|e| invalid(format!("items.parquet: {e}")))?;
        Ok(Catalog {
            version: version.to_string(),
            manifest,
            model,
            titles,
            unrestricted,
            available_in,
            maturity,
            maturity_labels,
            popularity,
        })
    }

    /// What a member limited to `max_maturity` may be shown; `None` when unrestricted. A rating
    /// the configured list lacks is shown to unrestricted members only; a member limited to such
    /// a rating sees the least mature level only.
    pub fn maturity_filter(
        &self,
        config: &MaturityConfig,
        max_maturity: Option<&str>,
    ) -> Option<MaturityFilter> {
        let max = max_maturity?;
        let max_level = config.level(max).unwrap_or(0);
        Some(MaturityFilter {
            labels: self
                .maturity_labels
                .iter()
                .map(|l| config.level(l).is_some_and(|level| level <= max_level))
                .collect(),
            unrated: config.unrated_allowed,
        })
    }

    /// Whether `filter` lets item `i` through.
    pub fn maturity_allows(&self, filter: Option<&MaturityFilter>, i: u32) -> bool {
        let Some(filter) = filter else {
            return true;
        };
        match self.maturity[i as usize] {
            UNRATED => filter.unrated,
            label => filter.labels[usize::from(label)],
        }
    }

    /// Loads `CURRENT`, or says there is none.
    pub fn load_current(root: &ModelRoot) -> Result<Catalog, OnlineError> {
        let version = root
            .current_version()?
            .ok_or_else(|| OnlineError::NoModel(PathBuf::from(root.path())))?;
        Self::load(root, &version)
    }

    pub fn len(&self) -> usize {
        self.model.len()
    }

    pub fn is_empty(&self) -> bool {
        self.model.is_empty()
    }

    /// Item `i`'s id.
    pub fn item_id(&self, i: u32) -> &str {
        self.model.ids.get(i)
    }

    /// Item `id`'s index, when the model knows it.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.model.ids.row(id)
    }

    /// Whether item `i` may be shown in `country` (`None`: no filter).
    #[inline]
    pub fn available(&self, i: u32, country: Option<&str>) -> bool {
        match country {
            None => true,
            Some(c) => {
                self.unrestricted.contains(i)
                    || self.available_in.get(c).is_some_and(|s| s.contains(i))
            }
        }
    }

    pub fn title(&self, i: u32) -> &str {
        self.titles.get(i)
    }

    /// The member's taste from their history when nothing is stored for this model: the fold-in
    /// with the version's own objective (iALS), or the history's known items (the history
    /// families). `None` when the history holds no item the model knows.
    pub fn taste_from_history(
        &self,
        history: &[HistoryEntry],
    ) -> Result<Option<Taste>, OnlineError> {
        Ok(match self.model.family.member_state() {
            MemberState::Vector => self
                .model
                .fold_in(history.iter().map(|e| (e.item_id.as_str(), e.strength)))?
                .map(Taste::Vector),
            MemberState::History => {
                let known = self
                    .model
                    .history_indices(history.iter().map(|e| e.item_id.as_str()));
                (!known.is_empty()).then_some(Taste::History(known))
            }
        })
    }

    /// Bytes of the scorer in memory (iALS: `n × k × 4`; the history families: their weights).
    pub fn scorer_bytes(&self) -> usize {
        self.model.scorer_bytes()
    }
}
