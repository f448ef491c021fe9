//! Running a range of layers as the steps [`fusion`](crate::train::graph::fusion) makes of them.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use candle_core::Tensor;

use crate::train::error::TrainError;
use crate::train::graph::fold::Folding;
use crate::train::graph::fusion;
use crate::train::nn::{ForwardCtx, Layer, LayerKind, ParamStore};

/// Runs `layers[range]` on `x`, wiring named inputs, as the steps [`fusion::plan`] makes of them
/// (padding, folded batch norms and activations merged into the kernel calls). `folding` is used
/// only when batch norm runs in inference mode. Only outputs referenced later are kept: with
/// detached (frozen) weights nothing else holds an activation, so a frozen prefix keeps just the
/// tensor the trainable part starts from.
pub fn run(
    layers: &[Layer],
    params: &ParamStore,
    range: Range<usize>,
    x: &Tensor,
    ctx: &mut ForwardCtx,
    folding: &Folding,
) -> Result<Tensor, TrainError> {
    let referenced: HashSet<&str> = layers.iter().flat_map(|l| l.inputs.iter().map(String::as_str)).collect();
    let folds = (!ctx.bn_training).then_some(folding);
    let mut saved: HashMap<&str, Tensor> = HashMap::new();
    let mut x = x.clone();
    for step in fusion::plan(layers, range, folds, &referenced) {
        let layer = &layers[step.layer];
        let input = |name: &String| {
            saved.get(name.as_str()).ok_or_else(|| TrainError::Graph(format!("{}: no output named {name}", layer.name)))
        };
        x = match (&layer.kind, layer.inputs.as_slice()) {
            // Folded into the convolution before it: the identity.
            (_, []) if folds.is_some_and(|f| f.batch_norms.contains(&layer.name)) => x,
            (LayerKind::Add, [a, b]) => (input(a)? + input(b)?)?,
            (_, []) => layer.forward_fused(&x, params, ctx, step.fusion)?,
            (_, [a]) => layer.forward_fused(input(a)?, params, ctx, step.fusion)?,
            _ => return Err(TrainError::Graph(format!("{}: unexpected inputs {:?}", layer.name, layer.inputs))),
        };
        // Only a step's last layer can be read by name (fusion keeps the others private).
        let last = layers[step.span.end - 1].name.as_str();
        if referenced.contains(last) {
            saved.insert(last, x.clone());
        }
    }
    Ok(x)
}
