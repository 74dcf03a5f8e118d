//! The model seam: what a model family is to the tiers.
//!
//! A family is named in every version's manifest ([`Family`], `algorithm.family`; a manifest
//! written before families existed is iALS) with its own parameters, flattened into
//! `algorithm` so the JSON keeps its shape. Each tier dispatches on the family when it loads a
//! version:
//!
//! - what a version publishes besides the catalog and popularity (iALS: item and member factors);
//! - how a member is represented between events ([`MemberState`]): a vector folded in from the
//!   history (iALS), or the history itself (item-item families);
//! - how a member event changes that state (iALS: the exact fold-in of the whole history,
//!   [`ials::FoldIn`], the one function every tier uses);
//! - how it is trained from the member × item matrix ([`matrix::SparseMatrix`]; iALS:
//!   [`ials::train`]);
//! - how a member's scores over the whole catalog are computed (iALS: the item factors times the
//!   member's vector, [`ials::ItemMatrix`]), ending in the shared [`top_k`] selection.
//!
//! The family's own numerics live in one folder here (`ials/`, `ease/`, `item_knn/`, `bspm/`); a new
//! family is a folder beside them plus one [`Family`] variant, which the tiers' `match`es then ask
//! them to handle. The history families share what they serve: item × item weights
//! ([`item_weights::ItemWeights`]) summed over the member's history. The tiers hold none of a
//! family's numerics: offline builds the matrix and calls the trainer, nearline and online call
//! the member-state update, online calls the scorer.

pub mod bspm;
pub mod ease;
pub mod ials;
pub mod item_knn;
pub mod item_weights;
pub mod matrix;
pub mod top_k;

use serde::{Deserialize, Serialize};

/// The model families recsys trains and serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Implicit ALS (Hu, Koren & Volinsky 2008; Rendle et al. 2022): item and member factors.
    #[default]
    Ials,
    /// EASE (Steck 2019): a closed-form item × item model, pruned to the largest weights per
    /// item for serving.
    Ease,
    /// Item-kNN: each item's nearest items by shrunk cosine.
    ItemKnn,
    /// BSPM (Choi et al. 2023): a linear filter over the normalised item graph (blurring, an
    /// ideal low-pass filter, sharpening), pruned to the largest weights per item for serving.
    Bspm,
}

/// What a trained version scores the catalog with, whatever its family.
#[derive(Debug, Clone)]
pub enum Scorer {
    /// iALS: the item factors; a member is a vector.
    Factors(ials::ItemMatrix),
    /// The history families: item × item weights; a member is their history.
    Weights(item_weights::ItemWeights),
}

/// A member as a [`Scorer`] takes them.
#[derive(Debug, Clone, Copy)]
pub enum MemberInput<'a> {
    Vector(&'a [f32]),
    /// Item indices of the history.
    History(&'a [u32]),
}

impl Scorer {
    /// Items scored.
    pub fn items(&self) -> usize {
        match self {
            Scorer::Factors(items) => items.len(),
            Scorer::Weights(weights) => weights.items(),
        }
    }

    /// Writes the member's exact score for every item into `out` (`items()` long).
    ///
    /// # Panics
    /// If the member is not of the scorer's kind (a vector for weights, a history for factors):
    /// the family decides which one a member is, see [`Family::member_state`].
    pub fn score_all(&self, member: MemberInput<'_>, out: &mut [f32]) {
        match (self, member) {
            (Scorer::Factors(items), MemberInput::Vector(v)) => items.score_all_exact(v, out),
            (Scorer::Weights(weights), MemberInput::History(h)) => {
                out.fill(0.0);
                weights.score_history(h, out);
            }
            (Scorer::Factors(_), MemberInput::History(_)) => {
                panic!("factor models score a member's vector, not their history")
            }
            (Scorer::Weights(_), MemberInput::Vector(_)) => {
                panic!("weight models score a member's history, not a vector")
            }
        }
    }
}

impl Scorer {
    /// The member's `k` best items among `allowed`, best first.
    ///
    /// # Panics
    /// If the member is not of the scorer's kind (see [`Scorer::score_all`]).
    pub fn top_k(
        &self,
        member: MemberInput<'_>,
        k: usize,
        allowed: impl Fn(u32) -> bool + Sync,
    ) -> Vec<top_k::Scored> {
        match (self, member) {
            (Scorer::Factors(items), MemberInput::Vector(v)) => items.top_k(v, k, allowed),
            (Scorer::Weights(weights), MemberInput::History(h)) => weights.top_k(h, k, allowed),
            _ => panic!("a {} member for a {} scorer", member.kind(), self.kind()),
        }
    }

    /// The member's score for item `i`.
    ///
    /// # Panics
    /// If the member is not of the scorer's kind (see [`Scorer::score_all`]).
    pub fn score(&self, i: u32, member: MemberInput<'_>) -> f32 {
        match (self, member) {
            (Scorer::Factors(items), MemberInput::Vector(v)) => items.score(i as usize, v),
            (Scorer::Weights(weights), MemberInput::History(h)) => weights.score_item(h, i),
            _ => panic!("a {} member for a {} scorer", member.kind(), self.kind()),
        }
    }

    /// The `k` items nearest item `i` among `allowed` (iALS: cosine of the factors; the history
    /// families: the items `i` pushes up most), `i` left out.
    pub fn similar(&self, i: u32, k: usize, allowed: impl Fn(u32) -> bool) -> Vec<top_k::Scored> {
        match self {
            Scorer::Factors(items) => items.similar(i as usize, k, allowed),
            Scorer::Weights(weights) => weights.similar(i as usize, k, allowed),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Scorer::Factors(_) => "factor",
            Scorer::Weights(_) => "weight",
        }
    }
}

impl MemberInput<'_> {
    fn kind(&self) -> &'static str {
        match self {
            MemberInput::Vector(_) => "vector",
            MemberInput::History(_) => "history",
        }
    }
}

/// How a family represents a member between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// A vector folded in from the member's history against the version's item factors.
    Vector,
    /// The history itself; the scorer reads it directly.
    History,
}

impl Family {
    /// Every family, for help texts and errors.
    pub const ALL: &'static [Family] = &[Family::Ials, Family::Ease, Family::ItemKnn, Family::Bspm];

    /// The name in manifests and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ials => "ials",
            Family::Ease => "ease",
            Family::ItemKnn => "item_knn",
            Family::Bspm => "bspm",
        }
    }

    /// The name as people write it, for what a person reads.
    pub fn title(self) -> &'static str {
        match self {
            Family::Ials => "iALS",
            Family::Ease => "EASE",
            Family::ItemKnn => "item-kNN",
            Family::Bspm => "BSPM",
        }
    }

    /// How this family represents a member between events.
    pub fn member_state(self) -> MemberState {
        match self {
            Family::Ials => MemberState::Vector,
            Family::Ease | Family::ItemKnn | Family::Bspm => MemberState::History,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_serialise_by_name() {
        for family in Family::ALL {
            let json = serde_json::to_string(family).unwrap();
            assert_eq!(json, format!("\"{}\"", family.name()));
            assert_eq!(serde_json::from_str::<Family>(&json).unwrap(), *family);
        }
        assert_eq!(Family::default(), Family::Ials);
        assert_eq!(Family::Ials.member_state(), MemberState::Vector);
        assert_eq!(Family::Ease.member_state(), MemberState::History);
        assert_eq!(Family::ItemKnn.member_state(), MemberState::History);
        assert_eq!(Family::Bspm.member_state(), MemberState::History);
    }
}
