//! The layer set and what it is built from: layers as data ([`Layer`], [`LayerKind`]), their
//! parameters ([`ParamStore`]), the forward context, the tensor ops and batch normalisation.
//! Below it only the [`kernels`](crate::train::kernels); above it the graph and the models.

mod batch_norm;
mod ctx;
mod layer;
mod ops;
mod params;

pub use ctx::{Backend, ForwardCtx, BN_EPSILON, TORCH_BN_EPSILON};
pub use layer::{Folded, Fusion, Layer, LayerKind};
pub use ops::{Pad, SamePadding};
pub use params::{ParamStore, Role};
