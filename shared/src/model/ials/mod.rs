//! iALS: implicit alternating least squares. Its [`Objective`] (λ, α, α₀, ν) is what the trainer
//! minimises and what every fold-in must use; [`FoldIn`] turns a member's history into their vector.

mod fold_in;

pub use fold_in::{cholesky_solve, FoldIn, Objective};
