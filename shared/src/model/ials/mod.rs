//! iALS: implicit alternating least squares, the whole family in one folder. Its [`Objective`]
//! (λ, α, α₀, ν) is what the trainer ([`train`]) minimises and what every fold-in must use;
//! [`FoldIn`] turns a member's history into their vector; [`ItemMatrix`] scores a member's vector
//! against the whole catalog, and [`ann::ItemIndex`] finds its nearest items approximately. What
//! a version publishes of it is written and read by [`crate::artifact::published`].

pub mod ann;
mod codes;
mod fold_in;
mod score;
pub mod train;

pub use fold_in::{cholesky_solve, FoldIn, Objective};
pub use score::{candidates, BatchQuery, ItemMatrix};
