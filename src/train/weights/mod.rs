//! Importing pretrained weights: our own checkpoints, Keras, torchvision and EfficientNet-PyTorch
//! files, each mapped onto our parameter names and layouts, and checked against the architecture
//! before anything trains ([`check_weights`], which the service calls at upload time).
//!
//! An importer is a table: for every parameter of the model, the name(s) it may have in the file,
//! its shape there and how that layout becomes ours ([`Expected`]). Reading goes through the
//! `safetensors` parser, which refuses a malformed header or truncated data with an error; a
//! wrong dtype, a wrong shape, a missing tensor or a non-finite value is an error naming the
//! tensor. Nothing here panics on a hostile file.

pub mod efficientnet_pytorch;
pub mod keras;
pub mod torchvision;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::train::error::WeightsError;
use crate::train::model::{self, Convention};
use crate::train::nn::Layer;
use crate::train::spec::{Architecture, InputSpec, ModelSpec, WeightsFormat};

/// The metadata key under which our checkpoints record the numerics of their weights.
pub const CONVENTION_KEY: &str = "tanuki.convention";

/// The weights formats a file for `architecture` may be in: the one place this matrix is written.
pub fn formats(architecture: Architecture) -> &'static [WeightsFormat] {
    match architecture {
        Architecture::SmallCnn => &[WeightsFormat::Tanuki],
        Architecture::MobilenetV2 => &[WeightsFormat::Keras, WeightsFormat::Torchvision, WeightsFormat::Tanuki],
        Architecture::Xception => &[WeightsFormat::Keras, WeightsFormat::Tanuki],
        Architecture::EfficientnetLite0 => &[WeightsFormat::EfficientnetPytorch, WeightsFormat::Tanuki],
    }
}

/// What a file that fits the architecture holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WeightsReport {
    pub format: WeightsFormat,
    /// Tensors that map onto the backbone.
    pub tensors: usize,
    /// Values in them.
    pub params: usize,
    /// Tensors of the file that the backbone does not use (e.g. a classifier), sorted.
    pub unused: Vec<String>,
    /// `keras` or `torchvision`: the numerics a model built on these weights runs with.
    pub convention: String,
}

/// How the file's layout becomes ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Same,
    /// TensorFlow conv kernel `(h, w, in, out)` → `[out, in, h, w]`.
    Hwio,
    /// TensorFlow depthwise kernel `(h, w, c, 1)` → `[c, 1, h, w]`.
    Depthwise,
    /// PyTorch linear `[out, in]` → Keras dense `[in, out]`.
    Transposed,
}

impl Layout {
    /// Our shape in the file's layout.
    pub fn file_shape(self, ours: &[usize]) -> Vec<usize> {
        match (self, ours) {
            (Layout::Hwio, [o, i, h, w]) => vec![*h, *w, *i, *o],
            (Layout::Depthwise, [c, m, h, w]) => vec![*h, *w, *c, *m],
            (Layout::Transposed, [i, o]) => vec![*o, *i],
            _ => ours.to_vec(),
        }
    }

    fn to_ours(self, t: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Layout::Same => Ok(t),
            Layout::Hwio => t.permute((3, 2, 0, 1))?.contiguous(),
            Layout::Depthwise => t.permute((2, 3, 0, 1))?.contiguous(),
            Layout::Transposed => t.t()?.contiguous(),
        }
    }
}

/// One parameter as a file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Our name, `<layer>.<weight>`.
    pub ours: String,
    /// Names it may have in the file; the first is the one errors cite.
    pub names: Vec<String>,
    /// Our shape.
    pub shape: Vec<usize>,
    pub layout: Layout,
}

/// The parameters `format` provides for `layers` (the backbone's; the head's too with
/// `with_head`, where the format has one).
fn expected(
    model: &ModelSpec,
    layers: &[Layer],
    format: WeightsFormat,
    with_head: bool,
) -> Result<Vec<Expected>, WeightsError> {
    let architecture = model.backbone.architecture;
    if !formats(architecture).contains(&format) {
        return Err(WeightsError::Unsupported(format!(
            "{} weights are not supported for {} (supported: {})",
            format.name(),
            architecture.name(),
            formats(architecture).iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut out = Vec::new();
    for layer in layers {
        let head = layer.name.starts_with("head.");
        let has_classifier = matches!(format, WeightsFormat::Torchvision | WeightsFormat::EfficientnetPytorch);
        if head && !(with_head && has_classifier) {
            continue;
        }
        for w in layer.kind.weights() {
            let ours = format!("{}.{}", layer.name, w.name);
            let (names, layout) = match format {
                WeightsFormat::Tanuki => (vec![ours.clone()], Layout::Same),
                WeightsFormat::Keras => keras::names(layer, w.name),
                WeightsFormat::Torchvision => torchvision::names(model, layer, w.name)?,
                WeightsFormat::EfficientnetPytorch => efficientnet_pytorch::names(model, layer, w.name)?,
            };
            out.push(Expected { ours, names, shape: w.shape, layout });
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    std::fs::read(path).map_err(|e| WeightsError::Unreadable(format!("{}: {e}", path.display())))
}

fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>, WeightsError> {
    SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Unreadable(e.to_string()))
}

/// The numerics of weights in `format`; our own files say in their metadata.
fn convention_of(format: WeightsFormat, bytes: &[u8]) -> Result<Convention, WeightsError> {
    Ok(match format {
        WeightsFormat::Keras | WeightsFormat::EfficientnetPytorch => Convention::Keras,
        WeightsFormat::Torchvision => Convention::Torchvision,
        WeightsFormat::Tanuki => {
            let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| WeightsError::Unreadable(e.to_string()))?;
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get(CONVENTION_KEY))
                .and_then(|s| Convention::parse(s))
                .unwrap_or_default()
        }
    })
}

/// Maps every expected tensor of `st`, checking name, dtype, shape and values.
fn load_expected(st: &SafeTensors<'_>, expected: &[Expected]) -> Result<HashMap<String, Tensor>, WeightsError> {
    let mut out = HashMap::with_capacity(expected.len());
    for e in expected {
        let file_shape = e.layout.file_shape(&e.shape);
        let Some((name, view)) = e.names.iter().find_map(|n| st.tensor(n).ok().map(|v| (n, v))) else {
            return Err(WeightsError::Missing { tensor: e.names[0].clone(), expected: file_shape });
        };
        if view.shape() != file_shape.as_slice() {
            return Err(WeightsError::Shape {
                tensor: name.clone(),
                found: view.shape().to_vec(),
                expected: file_shape,
            });
        }
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => return Err(WeightsError::Dtype { tensor: name.clone(), dtype: format!("{other:?}") }),
        };
        let convert = || -> candle_core::Result<Tensor> {
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?.to_dtype(DType::F32)?;
            e.layout.to_ours(t)
        };
        let t = convert().map_err(|err| WeightsError::Unreadable(format!("tensor `{name}`: {err}")))?;
        let finite = t
            .flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .map(|v| v.iter().all(|x| x.is_finite()))
            .map_err(|err| WeightsError::Unreadable(format!("tensor `{name}`: {err}")))?;
        if !finite {
            return Err(WeightsError::NotFinite { tensor: name.clone() });
        }
        out.insert(e.ours.clone(), t);
    }
    Ok(out)
}

/// Parameter shapes do not depend on the input size; this one suits every architecture.
fn any_input() -> InputSpec {
    InputSpec { height: 224, width: 224, ..InputSpec::default() }
}

/// Checks that the file at `path`, read as `format`, provides every backbone parameter of
/// `model` with the right shape and a float dtype, without building the model. The error names
/// the first tensor (in the model's order, by the file's naming) that is missing or wrong.
pub fn check_weights(model: &ModelSpec, format: WeightsFormat, path: &Path) -> Result<WeightsReport, WeightsError> {
    let bytes = read(path)?;
    check_weights_bytes(model, format, &bytes)
}

/// [`check_weights`] on a file's bytes.
pub fn check_weights_bytes(
    model: &ModelSpec,
    format: WeightsFormat,
    bytes: &[u8],
) -> Result<WeightsReport, WeightsError> {
    let convention = convention_of(format, bytes)?;
    let st = parse(bytes)?;
    let layers = model::plan_with(model, &any_input(), convention)?;
    let expected = expected(model, &layers, format, false)?;
    let loaded = load_expected(&st, &expected)?;
    let used: std::collections::HashSet<&str> =
        expected.iter().filter_map(|e| e.names.iter().find(|n| st.tensor(n).is_ok()).map(String::as_str)).collect();
    let mut unused: Vec<String> = st.names().into_iter().filter(|n| !used.contains(n)).map(str::to_string).collect();
    unused.sort();
    Ok(WeightsReport {
        format,
        tensors: loaded.len(),
        params: loaded.values().map(Tensor::elem_count).sum(),
        unused,
        convention: convention.as_str().to_string(),
    })
}

/// The backbone parameters (and with `with_head` the classifier, for formats that carry one) of the
/// file at `path`, under our names and layouts, with the numerics the model must use.
pub fn import(
    model: &ModelSpec,
    input: &InputSpec,
    format: WeightsFormat,
    path: &Path,
    with_head: bool,
) -> Result<(HashMap<String, Tensor>, Convention), WeightsError> {
    let bytes = read(path)?;
    let convention = convention_of(format, &bytes)?;
    let st = parse(&bytes)?;
    let layers = model::plan_with(model, input, convention)?;
    let expected = expected(model, &layers, format, with_head)?;
    Ok((load_expected(&st, &expected)?, convention))
}

/// The numerics recorded in one of our own weights files (Keras's when none is).
pub fn file_convention(path: &Path) -> Result<Convention, WeightsError> {
    convention_of(WeightsFormat::Tanuki, &read(path)?)
}
