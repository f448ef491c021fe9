//! The layer list as it runs: batch norms folded into frozen convolutions ([`fold`]), chains of
//! padding, convolution, batch norm and activation merged into one kernel call ([`fusion`]), and
//! the forward pass over them ([`run`]). Above [`nn`](crate::train::nn), below the models.

mod fold;
mod forward;
mod fusion;

pub use fold::{plan as fold_frozen, plan_inference as fold_inference, Folding};
pub use forward::run;
