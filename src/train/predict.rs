//! Prediction: class probabilities of encoded images from a trained model's weights, through
//! exactly the job's preprocessing (decode, resize, rescale or normalise; never augmentation) and
//! the model in inference mode (dropout off, batch norm on its moving statistics).

use std::path::Path;

use candle_core::Tensor;

use crate::train::checkpoint::load_weights;
use crate::train::data::augment::{self, Normalize};
use crate::train::data::decode;
use crate::train::error::TrainError;
use crate::train::fit::loss_kind;
use crate::train::model::Model;
use crate::train::spec::{InputSpec, ModelSpec};
use crate::train::weights;

/// Images per forward pass (bounds memory whatever the number of images).
const BATCH: usize = 16;

/// Per image, in order: `(class, probability)` most likely first, or why it could not be read.
pub type Predictions = Vec<Result<Vec<(String, f32)>, String>>;

/// Runs the model of `model`/`input` with the weights at `weights` (one of our checkpoints, every
/// parameter included) on `images` (encoded JPEG or PNG). One logit means two classes (sigmoid:
/// the probability of `classes[1]`); more means softmax over `classes`.
pub fn predict(
    model: &ModelSpec,
    input: &InputSpec,
    classes: &[String],
    weights: &Path,
    images: &[Vec<u8>],
) -> Result<Predictions, TrainError> {
    let kind = loss_kind(model.head.units, classes.len())?;
    let convention = weights::file_convention(weights)?;
    let m = Model::with_convention(model, input, 0, convention)?;
    m.params.load(&load_weights(weights)?, |_| true)?;
    let (h, w) = (input.height as usize, input.width as usize);
    let inputs: Vec<Result<Vec<f32>, String>> = images.iter().map(|bytes| preprocess(model, input, bytes)).collect();
    let ok: Vec<(usize, &Vec<f32>)> =
        inputs.iter().enumerate().filter_map(|(i, d)| d.as_ref().ok().map(|p| (i, p))).collect();
    let mut out: Predictions = inputs.iter().map(|d| d.as_ref().map(|_| Vec::new()).map_err(Clone::clone)).collect();

    let folding = m.inference_folding()?;
    for chunk in ok.chunks(BATCH) {
        let pixels: Vec<f32> = chunk.iter().flat_map(|(_, x)| x.iter().copied()).collect();
        let x = Tensor::from_vec(pixels, (chunk.len(), 3, h, w), &m.device)?; // [n, 3, h, w]
        let logits = m.forward_inference(0, &x, &folding)?; // [n, units]
        let probs = kind.probabilities(&logits)?;
        for ((i, _), p) in chunk.iter().zip(probs) {
            let mut ranked: Vec<(String, f32)> = classes.iter().cloned().zip(p).collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            out[*i] = Ok(ranked);
        }
    }
    Ok(out)
}

/// The network's input for one encoded image (JPEG or PNG): decoded, resized and scaled as the
/// job's `input` says, `3 * height * width` floats, channel-major; or why it cannot be read.
pub fn preprocess(model: &ModelSpec, input: &InputSpec, image: &[u8]) -> Result<Vec<f32>, String> {
    // A decoder that panics on a hostile file fails that image, not the request.
    let pixels = std::panic::catch_unwind(|| decode::decode_bytes(image, input))
        .map_err(|_| "the decoder failed on this image".to_string())?
        .map_err(|e| format!("cannot decode image: {e}"))?
        .into_raw();
    let (h, w) = (input.height as usize, input.width as usize);
    let mut out = vec![0f32; 3 * h * w];
    augment::write_image(&pixels, h, w, None, Normalize::new(input, model.backbone.architecture), &mut out);
    Ok(out)
}
