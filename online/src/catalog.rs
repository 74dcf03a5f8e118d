//! The in-memory catalog (Netflix Hollow's idea): the whole current model — item factors in one
//! contiguous matrix, ids, titles, availability and popularity — loaded, validated and then swapped
//! in atomically as one immutable value. Requests hold an `Arc` to the catalog they started with,
//! so a swap never changes a request's model halfway.

use std::collections::HashMap;
use std::path::PathBuf;

use recsys_shared::artifact::{
    files, read_catalog, read_factors, read_popularity, Manifest, ModelRoot,
};
use recsys_shared::config::MaturityConfig;
use recsys_shared::model::ials::FoldIn;
use recsys_shared::model::Family;
use recsys_store::features::HistoryEntry;

use crate::error::OnlineError;
use recsys_shared::model::ials::ItemMatrix;

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
    pub items: ItemMatrix,
    pub item_ids: Vec<String>,
    pub index: HashMap<String, u32>,
    /// Empty when the catalog has no title for the item.
    pub titles: Vec<String>,
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
    /// The fold-in of members with a history and no stored vector (`α₀ YᵀY` computed once per
    /// model).
    pub fold_in: FoldIn,
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
        let manifest = root.verify(version)?;
        let dir = root.version_dir(version);
        let factors = read_factors(&dir.join(files::ITEM_FACTORS), "item_id")?;
        let invalid = |problem: String| OnlineError::InvalidModel {
            version: version.to_string(),
            problem,
        };
        let k = factors.factors;
        if k != manifest.algorithm.factors {
            return Err(invalid(format!(
                "item factors are {k} wide, the manifest says {}",
                manifest.algorithm.factors
            )));
        }
        if factors.ids.is_empty() {
            return Err(invalid("no items".into()));
        }
        if let Some(bad) = factors.vectors.iter().position(|x| !x.is_finite()) {
            return Err(invalid(format!(
                "item {} has a non-finite factor",
                factors.ids[bad / k]
            )));
        }
        let n = factors.ids.len();
        let mut index = HashMap::with_capacity(n);
        for (i, id) in factors.ids.iter().enumerate() {
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(invalid(format!(
                    "item {id} appears twice in the item factors"
                )));
            }
        }
        let mut titles = vec![String::new(); n];
        let mut unrestricted = ItemSet::new(n);
        let mut available_in: HashMap<String, ItemSet> = HashMap::new();
        let mut restricted = vec![false; n];
        let mut maturity = vec![UNRATED; n];
        let mut maturity_labels: Vec<String> = Vec::new();
        for row in read_catalog(&dir.join(files::ITEMS))? {
            let Some(&i) = index.get(&row.item_id) else {
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
            .filter_map(|row| index.get(&row.item_id).map(|&i| (i, row.score)))
            .collect();
        popularity.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let fold_in = match manifest.algorithm.family {
            Family::Ials => FoldIn::new(&factors.vectors, k, manifest.algorithm.fold_in_params()),
            family @ (Family::Ease | Family::ItemKnn) => {
                return Err(invalid(format!(
                    "a {} version; this release serves iALS versions only",
                    family.name()
                )))
            }
        };
        Ok(Catalog {
            version: version.to_string(),
            manifest,
            items: ItemMatrix::new(factors.vectors, k),
            item_ids: factors.ids,
            index,
            titles,
            unrestricted,
            available_in,
            maturity,
            maturity_labels,
            popularity,
            fold_in,
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
        self.item_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.item_ids.is_empty()
    }

    pub fn factors(&self) -> usize {
        self.items.factors()
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
        &self.titles[i as usize]
    }

    /// The member's vector computed from their history by the offline tier's fold-in, with this
    /// model's λ and α. Items the model does not know are skipped; `None` when none is known.
    pub fn fold_in(&self, history: &[HistoryEntry]) -> Result<Option<Vec<f32>>, OnlineError> {
        let history = history.iter().map(|e| (e.item_id.as_str(), e.strength));
        Ok(self
            .fold_in
            .solve_ids(self.items.as_slice(), &self.index, history)?)
    }

    /// Bytes of the factor matrix as published (`n × k × 4`).
    pub fn factor_bytes(&self) -> usize {
        self.len() * self.factors() * 4
    }
}
