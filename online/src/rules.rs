//! Business rules applied after scoring (`online.rules`): items **pinned** to the top of every
//! list they may appear in, in the configured order; items **boosted** (their score multiplied by
//! a factor > 0 — divided, for a negative score — before the list is re-sorted); items
//! **buried** (moved behind every other candidate, so they show only when too few others remain).
//!
//! A rule never shows an item the list's filters exclude (seen, excluded, unavailable in the
//! country, already on the page), and ids the served model does not know are ignored. It owns
//! only the re-ordering; scoring and filtering stay in [`crate::rpc`].

use recsys_shared::config::RulesConfig;

use crate::catalog::Catalog;
use recsys_shared::model::top_k::Scored;

/// How many candidates beyond `k` a list needs so that `k` remain after the rules.
pub fn extra_candidates(rules: &RulesConfig) -> usize {
    rules.bury.len() + rules.boost.len()
}

/// The rules applied to `candidates` (best first, possibly longer than `k`). `score_of` gives
/// the score of an item missing from the candidates (the member's exact score), if the list has
/// one; `allowed` is the list's filter.
pub fn apply(
    rules: &RulesConfig,
    catalog: &Catalog,
    mut candidates: Vec<Scored>,
    k: usize,
    score_of: impl Fn(u32) -> Option<f32>,
    allowed: impl Fn(u32) -> bool,
) -> Vec<Scored> {
    if rules.is_empty() {
        candidates.truncate(k);
        return candidates;
    }
    let known = |id: &String| catalog.index_of(id);
    let scored_or_missing = |candidates: &[Scored], index: u32| -> Option<f32> {
        candidates
            .iter()
            .find(|s| s.index == index)
            .map(|s| s.score)
            .or_else(|| score_of(index))
    };
    // Boost: adjust the score (adding a boosted item the scorer left out), re-sort.
    for (id, &factor) in &rules.boost {
        let Some(index) = known(id).filter(|&i| allowed(i)) else {
            continue;
        };
        let Some(score) = scored_or_missing(&candidates, index) else {
            continue;
        };
        let factor = factor as f32;
        let boosted = if score >= 0.0 {
            score * factor
        } else {
            score / factor
        };
        match candidates.iter_mut().find(|s| s.index == index) {
            Some(s) => s.score = boosted,
            None => candidates.push(Scored {
                index,
                score: boosted,
            }),
        }
    }
    if !rules.boost.is_empty() {
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    }
    // Bury: behind everything else, in their order.
    if !rules.bury.is_empty() {
        let buried: Vec<u32> = rules.bury.iter().filter_map(known).collect();
        let (kept, moved): (Vec<Scored>, Vec<Scored>) = candidates
            .into_iter()
            .partition(|s| !buried.contains(&s.index));
        candidates = kept;
        candidates.extend(moved);
    }
    // Pin: to the front, in the configured order.
    let mut pinned = Vec::new();
    for index in rules.pin.iter().filter_map(known) {
        if !allowed(index) || pinned.iter().any(|s: &Scored| s.index == index) {
            continue;
        }
        let score = match candidates.iter().position(|s| s.index == index) {
            Some(at) => candidates.remove(at).score,
            None => score_of(index).unwrap_or(0.0),
        };
        pinned.push(Scored { index, score });
    }
    pinned.extend(candidates);
    pinned.truncate(k);
    pinned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        let version =
            recsys_shared::artifact::synthetic::synthetic_model(dir.path(), 20, 5, 4, 1).unwrap();
        Catalog::load(
            &recsys_shared::artifact::ModelRoot::new(dir.path()),
            &version,
        )
        .unwrap()
    }

    fn list(catalog: &Catalog, ids: &[(&str, f32)]) -> Vec<Scored> {
        ids.iter()
            .map(|(id, score)| Scored {
                index: catalog.index_of(id).unwrap(),
                score: *score,
            })
            .collect()
    }

    fn ids(catalog: &Catalog, list: &[Scored]) -> Vec<String> {
        list.iter()
            .map(|s| catalog.item_id(s.index).to_owned())
            .collect()
    }

    #[test]
    fn pin_boost_and_bury_reorder_within_the_filters() {
        let catalog = catalog();
        let id = |i: u32| catalog.item_id(i).to_owned();
        let candidates = list(
            &catalog,
            &[(&id(0), 5.0), (&id(1), 4.0), (&id(2), 3.0), (&id(3), 2.0)],
        );
        let rules = RulesConfig {
            pin: vec![id(9), id(2), "not-in-the-model".into(), id(8)],
            boost: [(id(3), 3.0), (id(7), 10.0)].into_iter().collect(),
            bury: vec![id(0)],
        };
        let excluded = catalog.index_of(&id(8)).unwrap();
        let out = apply(
            &rules,
            &catalog,
            candidates,
            5,
            // Item 7 is missing from the candidates; the list knows its score.
            |i| (i == catalog.index_of(&id(7)).unwrap()).then_some(0.5),
            |i| i != excluded,
        );
        // Pinned 9 (not a candidate, no score: 0), pinned 2; then by boosted score: 3 (2×3 = 6),
        // 7 (0.5×10 = 5), 1 (4); buried 0 is past k; 8 is excluded, unknown ids ignored.
        assert_eq!(ids(&catalog, &out), [id(9), id(2), id(3), id(7), id(1)]);
        assert_eq!(out[2].score, 6.0);
        // No rules: the list as scored, cut at k.
        let plain = apply(
            &RulesConfig::default(),
            &catalog,
            list(&catalog, &[(&id(0), 1.0), (&id(1), 0.5)]),
            1,
            |_| None,
            |_| true,
        );
        assert_eq!(ids(&catalog, &plain), [id(0)]);
        // A buried item still fills a list that has nothing else.
        let only = apply(
            &rules,
            &catalog,
            list(&catalog, &[(&id(0), 1.0)]),
            3,
            |_| None,
            |i| i == catalog.index_of(&id(0)).unwrap(),
        );
        assert_eq!(ids(&catalog, &only), [id(0)]);
    }
}
