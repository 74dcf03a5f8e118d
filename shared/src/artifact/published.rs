//! A published version's model as the serving tiers hold it, whatever its family: the item ids in
//! row order, the whole-catalog [`Scorer`] and — for families whose member is a vector — the
//! [`FoldIn`] that turns a history into one. The one place that reads a family's files back
//! ([`PublishedModel::load`]) and the one place that writes them ([`write_model`]); online and
//! nearline both load through here, so they can never disagree on what a version means.

use super::{
    files, read_factor_ids, read_factors, read_weights, write_factors, write_raw_factors,
    write_weights, FactorTable, ItemIds, Manifest, ModelParams, ModelRoot, StagedVersion, Texts,
};
use crate::config::AnnIndexConfig;
use crate::kernels;
use crate::model::ials::ann::{IndexShape, ItemIndex};
use crate::model::ials::train::AlsModel;
use crate::model::ials::{FoldIn, ItemMatrix};
use crate::model::item_weights::ItemWeights;
use crate::model::{Family, MemberInput, MemberState, Scorer};
use crate::progress::Progress;
use crate::{Result, SharedError};

/// One version's model, validated.
#[derive(Debug)]
pub struct PublishedModel {
    pub family: Family,
    /// Row `i` of the scorer is `ids.get(i)`; `ids.row(id)` finds it.
    pub ids: ItemIds,
    pub scorer: Scorer,
    /// iALS: the fold-in with the version's own objective (`α₀ YᵀY` computed once).
    pub fold_in: Option<FoldIn>,
    /// iALS: the version's item index, when it has one and the loader asked for it.
    pub item_index: Option<ItemIndex>,
    /// iALS: the version's similar-items index (over unit rows), likewise.
    pub similar_index: Option<ItemIndex>,
}

/// How a serving tier holds a version's model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Map an iALS version's exact item factors from its raw file rather than hold them (a
    /// version published without one is read as usual).
    pub map_factors: bool,
    /// Map the version's item index, when it has one, its searches exploring this many
    /// candidates (efSearch).
    pub item_index: Option<usize>,
}

/// Searches of one item index that may run at once: more than a server has threads.
const INDEX_SEARCH_SLOTS: usize = 256;

/// What a family's training produced, ready to be written into a version.
pub enum TrainedModel {
    /// iALS: item and member factors (row `u` of the member factors is `member_ids[u]`).
    Factors {
        model: AlsModel,
        member_ids: Vec<String>,
    },
    /// The history families: item × item weights.
    Weights(ItemWeights),
}

/// The file a version of `family` scores the catalog with: every version must list it.
pub fn scorer_file(family: Family) -> &'static str {
    match family.member_state() {
        MemberState::Vector => files::ITEM_FACTORS,
        MemberState::History => files::ITEM_WEIGHTS,
    }
}

/// Writes `model` into `staged`: row `i` of what it scores is `item_ids[i]`. An iALS model is
/// published with its item index when `ann_index` wants one for its catalog.
pub fn write_model(
    staged: &StagedVersion,
    model: TrainedModel,
    item_ids: Vec<String>,
    ann_index: &AnnIndexConfig,
) -> Result<()> {
    match model {
        TrainedModel::Factors { model, member_ids } => {
            write_raw_factors(&staged.path(files::ITEM_FACTORS_RAW), &model.item_factors)?;
            if ann_index.wanted(item_ids.len()) {
                save_index(
                    &staged.path(files::ITEM_INDEX),
                    build_item_index(&model.item_factors, model.factors, ann_index)?,
                )?;
                if ann_index.similar_items {
                    save_index(
                        &staged.path(files::SIMILAR_INDEX),
                        build_similar_index(&model.item_factors, model.factors, ann_index)?,
                    )?;
                }
            }
            for (name, column, ids, vectors) in [
                (files::ITEM_FACTORS, "item_id", item_ids, model.item_factors),
                (
                    files::USER_FACTORS,
                    "user_id",
                    member_ids,
                    model.user_factors,
                ),
            ] {
                let table = FactorTable {
                    ids,
                    vectors,
                    factors: model.factors,
                };
                write_factors(&staged.path(name), column, &table)?;
            }
            Ok(())
        }
        TrainedModel::Weights(weights) => write_weights(
            &staged.path(files::ITEM_WEIGHTS),
            &item_ids,
            weights.matrix(),
        ),
    }
}

/// Writes a built index to `path`.
fn save_index(path: &std::path::Path, index: ItemIndex) -> Result<()> {
    index
        .save(path)
        .map_err(|e| SharedError::Training(e.to_string()))
}

/// Builds the item index over `item_factors` as `config` says, with progress on a terminal (log
/// lines otherwise).
pub fn build_item_index(
    item_factors: &[f32],
    factors: usize,
    config: &AnnIndexConfig,
) -> Result<ItemIndex> {
    build_with_progress(
        "item index",
        item_factors,
        factors,
        config,
        config.expansion_add,
        |f, k, shape, threads, progress| ItemIndex::build(f, k, shape, threads, progress),
    )
}

/// Builds the similar-items index (over the rows scaled to length 1) as `config` says, with
/// progress.
pub fn build_similar_index(
    item_factors: &[f32],
    factors: usize,
    config: &AnnIndexConfig,
) -> Result<ItemIndex> {
    build_with_progress(
        "similar-items index",
        item_factors,
        factors,
        config,
        config.similar_expansion_add,
        |f, k, shape, threads, progress| ItemIndex::build_unit(f, k, shape, threads, progress),
    )
}

fn build_with_progress(
    what: &'static str,
    item_factors: &[f32],
    factors: usize,
    config: &AnnIndexConfig,
    expansion_add: usize,
    build: impl FnOnce(
        &[f32],
        usize,
        IndexShape,
        usize,
        &(dyn Fn(usize) + Sync),
    ) -> std::result::Result<ItemIndex, crate::model::ials::ann::AnnError>,
) -> Result<ItemIndex> {
    let items = item_factors.len() / factors.max(1);
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let progress = std::sync::Mutex::new((Progress::new(what, items as u64), 0usize));
    let started = std::time::Instant::now();
    let index = build(
        item_factors,
        factors,
        IndexShape {
            connectivity: config.connectivity,
            expansion_add,
        },
        threads,
        &|linked| {
            let mut guard = progress.lock().expect("not poisoned");
            let (bar, shown) = &mut *guard;
            // Chunks finish out of order; advance by what is new.
            if linked > *shown {
                bar.advance((linked - *shown) as u64, "items linked");
                *shown = linked;
            }
        },
    )
    .map_err(|e| SharedError::Training(e.to_string()))?;
    progress.into_inner().expect("not poisoned").0.finish();
    tracing::info!(
        items,
        seconds = started.elapsed().as_secs_f64(),
        mib = index.bytes() >> 20,
        "{what} built"
    );
    Ok(index)
}

impl PublishedModel {
    /// Reads the model of verified version `version` (its `manifest`) from `root`, the item
    /// factors held in memory.
    pub fn load(root: &ModelRoot, version: &str, manifest: &Manifest) -> Result<PublishedModel> {
        Self::load_with(root, version, manifest, LoadOptions::default())
    }

    /// [`PublishedModel::load`], held as `options` say.
    pub fn load_with(
        root: &ModelRoot,
        version: &str,
        manifest: &Manifest,
        options: LoadOptions,
    ) -> Result<PublishedModel> {
        let map_factors = options.map_factors;
        let dir = root.version_dir(version);
        let invalid = |problem: String| SharedError::Artifact {
            root: root.path().to_path_buf(),
            version: version.to_string(),
            problem,
        };
        let family = manifest.algorithm.family();
        // The item indexes first (opening one reads every node of it, and drops each range's
        // pages once open): a hot swap's peak is then the old version plus the larger of the new
        // one's index range and its rows, not both.
        let (item_index, similar_index) = match (&manifest.algorithm.model, options.item_index) {
            (ModelParams::Ials(record), Some(expansion)) => {
                let open = |file: &str| -> Result<Option<ItemIndex>> {
                    if !manifest.files.contains_key(file) {
                        return Ok(None);
                    }
                    let path = dir.join(file);
                    let index = ItemIndex::items_in(&path)
                        .and_then(|items| {
                            ItemIndex::open(
                                &path,
                                items,
                                record.factors,
                                expansion,
                                INDEX_SEARCH_SLOTS,
                            )
                        })
                        .map_err(|e| invalid(e.to_string()))?;
                    Ok(Some(index))
                };
                (open(files::ITEM_INDEX)?, open(files::SIMILAR_INDEX)?)
            }
            _ => (None, None),
        };
        let texts =
            |ids: &[String]| Texts::new(ids).map_err(|e| invalid(format!("{e} in the model")));
        let (item_ids, scorer, fold_in) = match &manifest.algorithm.model {
            ModelParams::Ials(record) => {
                let raw = dir.join(files::ITEM_FACTORS_RAW);
                let k = record.factors;
                let finite = |first: usize, rows: &[f32], ids: &Texts| match rows
                    .iter()
                    .position(|x| !x.is_finite())
                {
                    Some(bad) => Err(invalid(format!(
                        "item {} has a non-finite factor",
                        ids.get((first + bad / k.max(1)) as u32)
                    ))),
                    None => Ok(()),
                };
                let (ids, items, gram) =
                    if map_factors && manifest.files.contains_key(files::ITEM_FACTORS_RAW) {
                        let ids = read_factor_ids(&dir.join(files::ITEM_FACTORS), "item_id")?;
                        // One pass over the mapped rows: checked, summed into YᵀY and quantised
                        // a chunk at a time, each chunk dropped from memory once read.
                        let mut gram = kernels::Gram::new(k);
                        let mut refused = Ok(());
                        let mut rows_seen = 0;
                        let items = ItemMatrix::map_visiting(&raw, k, |first, rows| {
                            rows_seen = first + rows.len() / k.max(1);
                            if refused.is_ok() && rows_seen <= ids.len() {
                                refused = finite(first, rows, &ids);
                                gram.add(rows);
                            }
                        })
                        .map_err(|e| invalid(format!("{}: {e}", files::ITEM_FACTORS_RAW)))?;
                        if items.len() != ids.len() {
                            return Err(invalid(format!(
                                "{} holds {} rows, {} names {} items",
                                files::ITEM_FACTORS_RAW,
                                items.len(),
                                files::ITEM_FACTORS,
                                ids.len()
                            )));
                        }
                        refused?;
                        (ids, items, gram.finish())
                    } else {
                        let table = read_factors(&dir.join(files::ITEM_FACTORS), "item_id")?;
                        if table.factors != k {
                            return Err(invalid(format!(
                                "item factors are {} wide, the manifest says {k}",
                                table.factors
                            )));
                        }
                        let ids = texts(&table.ids)?;
                        finite(0, &table.vectors, &ids)?;
                        let gram = kernels::gram(&table.vectors, k);
                        (ids, ItemMatrix::new(table.vectors, k), gram)
                    };
                let fold_in = FoldIn::with_gram(k, record.objective, gram);
                (ids, Scorer::Factors(items), Some(fold_in))
            }
            ModelParams::Ease(_) | ModelParams::ItemKnn(_) | ModelParams::Bspm(_) => {
                let path = dir.join(files::ITEM_WEIGHTS);
                if !path.exists() {
                    return Err(invalid(format!(
                        "a {} version without {}",
                        family.name(),
                        files::ITEM_WEIGHTS
                    )));
                }
                let (ids, weights) = read_weights(&path)?;
                (
                    texts(&ids)?,
                    Scorer::Weights(ItemWeights::from_matrix(weights)),
                    None,
                )
            }
        };
        if item_ids.is_empty() {
            return Err(invalid("no items".into()));
        }
        let ids =
            ItemIds::from_texts(item_ids).map_err(|e| invalid(format!("{e} in the model")))?;
        for (file, index) in [
            (files::ITEM_INDEX, &item_index),
            (files::SIMILAR_INDEX, &similar_index),
        ] {
            if let Some(index) = index.as_ref().filter(|i| i.len() != ids.len()) {
                return Err(invalid(format!(
                    "{file}: {} items, the version has {}",
                    index.len(),
                    ids.len()
                )));
            }
        }
        let model = PublishedModel {
            family,
            ids,
            scorer,
            fold_in,
            item_index,
            similar_index,
        };
        // The rows read while loading, and index pages touched since.
        model.release_mapped_pages();
        Ok(model)
    }

    /// Items the model scores.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Factors per vector (0 for the history families).
    pub fn factors(&self) -> usize {
        match &self.scorer {
            Scorer::Factors(items) => items.factors(),
            Scorer::Weights(_) => 0,
        }
    }

    /// With mapped exact item rows (`online.item_factors = "mapped"`): drops the pages of those
    /// rows from this process's memory (see [`ItemMatrix::release_mapped_rows`]) — the rows an
    /// exact cosine scan read through the mapping. The item indexes' pages stay: searches read
    /// them all the time, and a version in service holds them whole
    /// ([`PublishedModel::make_indexes_resident`]). Nothing for held rows or item weights.
    pub fn release_mapped_rows(&self) {
        if let Scorer::Factors(items) = &self.scorer {
            items.release_mapped_rows();
        }
    }

    /// Makes the item indexes' pages resident ([`ItemIndex::make_resident`]): for a version that
    /// has just gone into service, once the version it replaced has let go of its own.
    pub fn make_indexes_resident(&self) {
        for index in self.item_index.iter().chain(&self.similar_index) {
            index.make_resident();
        }
    }

    /// Drops every mapped page of this version from this process's memory: the mapped rows'
    /// (above) and the item indexes' ([`ItemIndex::release_pages`]), held rows or mapped. For a
    /// version that stops serving, so that its pages do not stay resident beside the next one's
    /// while requests still on it finish; they read back the few pages they need.
    pub fn release_mapped_pages(&self) {
        self.release_mapped_rows();
        for index in self.item_index.iter().chain(&self.similar_index) {
            index.release_pages();
        }
    }

    /// Bytes of the scorer in memory.
    pub fn scorer_bytes(&self) -> usize {
        match &self.scorer {
            Scorer::Factors(items) => items.heap_bytes(),
            Scorer::Weights(weights) => weights.heap_bytes(),
        }
    }

    /// Whether the model knows `item_id`.
    pub fn knows(&self, item_id: &str) -> bool {
        self.ids.contains(item_id)
    }

    /// The history's item indices (unknown items skipped), in the history's order.
    pub fn history_indices<'h>(&self, history: impl IntoIterator<Item = &'h str>) -> Vec<u32> {
        history
            .into_iter()
            .filter_map(|id| self.ids.row(id))
            .collect()
    }

    /// The member's vector from their whole history with the version's own objective (iALS);
    /// `None` when no item is known, or when the family keeps no vector.
    pub fn fold_in<'h>(
        &self,
        history: impl IntoIterator<Item = (&'h str, f32)>,
    ) -> Result<Option<Vec<f32>>> {
        match (&self.fold_in, &self.scorer) {
            (Some(fold_in), Scorer::Factors(items)) => {
                fold_in.solve_ids(items.as_slice(), |id| self.ids.row(id), history)
            }
            _ => Ok(None),
        }
    }
}

/// A member as a [`PublishedModel`] scores them: what [`MemberInput`] borrows.
#[derive(Debug, Clone, PartialEq)]
pub enum Taste {
    /// iALS: the member's vector.
    Vector(Vec<f32>),
    /// The history families: the item indices of the history (never empty).
    History(Vec<u32>),
}

impl Taste {
    pub fn input(&self) -> MemberInput<'_> {
        match self {
            Taste::Vector(v) => MemberInput::Vector(v),
            Taste::History(h) => MemberInput::History(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::synthetic::synthetic_model_of;

    #[test]
    fn every_family_writes_and_reads_back_through_one_reader() {
        let dir = tempfile::tempdir().unwrap();
        for family in Family::ALL {
            let version = synthetic_model_of(*family, dir.path(), 50, 10, 8, 3).unwrap();
            let root = ModelRoot::new(dir.path());
            let manifest = root.verify(&version).unwrap();
            assert_eq!(manifest.algorithm.family(), *family);
            assert!(manifest.files.contains_key(scorer_file(*family)));
            let model = PublishedModel::load(&root, &version, &manifest).unwrap();
            assert_eq!(model.family, *family);
            assert_eq!(model.len(), 50);
            assert_eq!(model.ids.row("i7"), Some(7));
            let history = [("i1", 1.0), ("i2", 1.0), ("unknown", 1.0)];
            let taste = match family.member_state() {
                MemberState::Vector => {
                    let v = model.fold_in(history).unwrap().expect("known items");
                    assert_eq!(v.len(), 8);
                    Taste::Vector(v)
                }
                MemberState::History => {
                    assert_eq!(model.fold_in(history).unwrap(), None, "no vector kept");
                    let known = model.history_indices(history.iter().map(|h| h.0));
                    assert_eq!(known, vec![1, 2]);
                    Taste::History(known)
                }
            };
            let top = model.scorer.top_k(taste.input(), 5, |i| i != 1 && i != 2);
            assert_eq!(top.len(), 5);
            for s in &top {
                assert_eq!(model.scorer.score(s.index, taste.input()), s.score);
            }
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn mapped_rows_keep_the_item_index_out_of_resident_memory_too() {
        use crate::artifact::synthetic::{synthetic_model_reusing_index, synthetic_model_with};
        use crate::memory::resident_kib;
        let dir = tempfile::tempdir().unwrap();
        let index = AnnIndexConfig {
            enabled: true,
            min_items: 0,
            similar_items: false,
            ..Default::default()
        };
        let (items, members, k) = (20_000, 10, 16);
        let built =
            synthetic_model_with(Family::Ials, dir.path(), items, members, k, 5, &index).unwrap();
        let root = ModelRoot::new(dir.path());
        // A second version reusing the first one's index: the same items, so the same answers.
        let built_index = root.version_dir(&built).join(files::ITEM_INDEX);
        let reused = tempfile::tempdir().unwrap();
        let version =
            synthetic_model_reusing_index(reused.path(), items, members, k, 5, &built_index)
                .unwrap();
        let reused_root = ModelRoot::new(reused.path());
        let manifest = reused_root.verify(&version).unwrap();
        assert!(manifest.files.contains_key(files::ITEM_INDEX));
        let path = reused_root.version_dir(&version).join(files::ITEM_INDEX);
        let load = |map_factors| {
            let options = LoadOptions {
                map_factors,
                item_index: Some(64),
            };
            PublishedModel::load_with(&reused_root, &version, &manifest, options).unwrap()
        };
        let search = |model: &PublishedModel| {
            let Scorer::Factors(items) = &model.scorer else {
                panic!("factors")
            };
            let user = vec![0.3; k];
            model
                .item_index
                .as_ref()
                .unwrap()
                .search(&user, 20, 20, |_| true, |i| items.score(i as usize, &user))
                .unwrap()
        };
        // Opening reads every node and drops each range's pages once open, held rows or mapped;
        // searches read back what they need.
        let held = load(false);
        let held_kib = resident_kib(&path);
        assert!(held_kib <= 8, "held: {held_kib} KiB resident after loading");
        let answer = search(&held);
        assert!(resident_kib(&path) > 0, "the search read the index");
        drop(held);
        // Mapped rows: loaded with the index's pages dropped; searches read some back, and the
        // release drops them again.
        let mapped = load(true);
        assert!(
            resident_kib(&path) <= 8,
            "{} KiB resident after loading ({held_kib} held)",
            resident_kib(&path)
        );
        assert_eq!(search(&mapped), answer);
        let searched_kib = resident_kib(&path);
        assert!(searched_kib > 0, "the search read the index");
        // The periodic release drops the rows an exact scan read, not the index's pages.
        let factors = reused_root
            .version_dir(&version)
            .join(files::ITEM_FACTORS_RAW);
        let Scorer::Factors(items) = &mapped.scorer else {
            panic!("factors")
        };
        items.similar(0, 10, |_| true);
        assert!(resident_kib(&factors) > 0, "the scan read the rows");
        mapped.release_mapped_rows();
        assert_eq!(resident_kib(&factors), 0, "rows released");
        assert_eq!(resident_kib(&path), searched_kib, "index pages kept");
        // A version leaving drops both.
        items.similar(0, 10, |_| true);
        mapped.release_mapped_pages();
        assert_eq!(resident_kib(&factors), 0);
        assert!(resident_kib(&path) <= 8, "{} KiB", resident_kib(&path));
        assert_eq!(search(&mapped), answer);
        // In service, the whole index is resident, not what searches happened to fault in.
        mapped.make_indexes_resident();
        let file_kib = std::fs::metadata(&path).unwrap().len() / 1024;
        let whole = resident_kib(&path);
        assert!(whole >= file_kib, "{whole} KiB of {file_kib} resident");
        assert_eq!(search(&mapped), answer);
    }

    #[test]
    fn an_item_index_of_another_catalog_is_refused_naming_both_counts() {
        use crate::artifact::synthetic::synthetic_model_with;
        let index = AnnIndexConfig {
            enabled: true,
            min_items: 0,
            similar_items: false,
            ..Default::default()
        };
        let larger = tempfile::tempdir().unwrap();
        let built =
            synthetic_model_with(Family::Ials, larger.path(), 300, 10, 8, 5, &index).unwrap();
        let larger_index = ModelRoot::new(larger.path())
            .version_dir(&built)
            .join(files::ITEM_INDEX);
        let dir = tempfile::tempdir().unwrap();
        let version =
            synthetic_model_with(Family::Ials, dir.path(), 299, 10, 8, 5, &index).unwrap();
        let root = ModelRoot::new(dir.path());
        let manifest = root.verify(&version).unwrap();
        // The version's own index replaced by the larger catalog's (a copy gone wrong).
        std::fs::copy(
            &larger_index,
            root.version_dir(&version).join(files::ITEM_INDEX),
        )
        .unwrap();
        for map_factors in [false, true] {
            let options = LoadOptions {
                map_factors,
                item_index: Some(64),
            };
            let Err(error) = PublishedModel::load_with(&root, &version, &manifest, options) else {
                panic!("an index of 300 items under a version of 299 loaded");
            };
            let error = error.to_string();
            assert!(
                error.contains(files::ITEM_INDEX) && error.contains("300") && error.contains("299"),
                "{error}"
            );
        }
        // Without the index asked for, the version loads.
        PublishedModel::load(&root, &version, &manifest).unwrap();
    }

    #[test]
    fn a_history_version_without_its_weights_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let version = synthetic_model_of(Family::ItemKnn, dir.path(), 20, 5, 4, 1).unwrap();
        let root = ModelRoot::new(dir.path());
        let manifest = root.verify(&version).unwrap();
        std::fs::remove_file(root.version_dir(&version).join(files::ITEM_WEIGHTS)).unwrap();
        let error = PublishedModel::load(&root, &version, &manifest)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("item_knn version without item_weights.parquet"),
            "{error}"
        );
    }
}
