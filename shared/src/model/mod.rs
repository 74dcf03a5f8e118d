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
//! The family's own numerics live in one folder here (`ials/`); a new family is a folder beside
//! it plus one [`Family`] variant, which the tiers' `match`es then ask them to handle. The tiers
//! hold none of a family's numerics: offline builds the matrix and calls the trainer, nearline
//! and online call the member-state update, online calls the scorer.

pub mod ials;
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
    pub const ALL: &'static [Family] = &[Family::Ials];

    /// The name in manifests and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ials => "ials",
        }
    }

    /// How this family represents a member between events.
    pub fn member_state(self) -> MemberState {
        match self {
            Family::Ials => MemberState::Vector,
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
    }
}
