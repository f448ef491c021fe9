//! EfficientNet-Lite0 on its real ImageNet weights (`../shared/weights`, never copied into the
//! repository): parity with an independent Keras implementation, an ImageNet check on real
//! photos, and the importer's checks of the file.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::train::model::{Convention, Model};
use crate::train::nn::ForwardCtx;
use crate::train::*;

const WEIGHTS: &str = "efficientnet_lite0_imagenet.effnetlite_names.safetensors";

fn shared(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(path)
}

fn lite0(units: usize) -> ModelSpec {
    ModelSpec {
        backbone: BackboneSpec {
            architecture: Architecture::EfficientnetLite0,
            weights: None,
            widths: None,
            alpha: None,
        },
        head: HeadSpec { pooling: Pooling::Avg, dropout: 0.0, units },
    }
}

/// The model with the file's backbone and its 1000-class classifier.
fn imagenet_model(input: &InputSpec) -> Model {
    let spec = lite0(1000);
    let path = shared("weights").join(WEIGHTS);
    let (tensors, convention) = weights::import(&spec, input, WeightsFormat::EfficientnetPytorch, &path, true).unwrap();
    assert_eq!(convention, Convention::Keras, "TensorFlow numerics: epsilon 1e-3, SAME padding");
    let model = Model::with_convention(&spec, input, 0, convention).unwrap();
    assert_eq!(tensors.len(), model.params.iter().count());
    model.params.load(&tensors, |_| true).unwrap();
    model
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn efficientnet_lite0_matches_keras() {
    crate::test_support::require_shared_data!();
    let input = InputSpec { height: 160, width: 160, ..InputSpec::default() };
    let model = imagenet_model(&input);
    // The photos the MobileNetV2 reference stores, resized there; the outputs come from
    // benches/efficientnet_lite0_reference.py (Keras layers on TensorFlow's kernels).
    let photos = load_weights(shared("weights/reference/mobilenet_v2_1.0_160.keras_reference.safetensors")).unwrap();
    let reference = load_weights(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/efficientnet_lite0_160.reference.safetensors"),
    )
    .unwrap();
    // The weights' own convention, (x - 127) / 128, is the default for this architecture.
    let (scale, offset) = input.affine(Architecture::EfficientnetLite0);
    assert_eq!((scale, offset), (1.0 / 128.0, -127.0 / 128.0));
    let x = photos["input_nhwc_0_255"].permute((0, 3, 1, 2)).unwrap().affine(scale as f64, offset as f64).unwrap();
    let x = x.contiguous().unwrap();
    let mut ctx = ForwardCtx::new(false, false, false, rng::rng(0, rng::Stream::Dropout, 0, 0, 0));
    let pooled = model.features(&x, &mut ctx).unwrap().mean((2, 3)).unwrap(); // [4, 1280]
    let logits = model.forward(&x, &mut ctx).unwrap(); // [4, 1000]
                                                       // Prediction's path: every batch norm folded into its convolution.
    let folded = model.forward_inference(0, &x, &model.inference_folding().unwrap()).unwrap();
    for (name, ours) in [("pooled", &pooled), ("logits", &logits), ("logits", &folded)] {
        let keras = &reference[name];
        assert_eq!(ours.dims(), keras.dims());
        let (diff, scale) = (max_abs(&(ours - keras).unwrap()), max_abs(keras));
        eprintln!("{name}: max |ours - keras| = {diff:e}, max |keras| = {scale}");
        assert!(diff < 1e-4, "{name}: max |ours - keras| = {diff} (values up to {scale})");
    }
}

/// Top-1 ImageNet class of the first `n` validation photos of `class`, center-cropped at 224.
fn top1(model: &Model, input: &InputSpec, class: &str, first: usize, n: usize) -> Vec<usize> {
    let dir = shared("data/cats_and_dogs_filtered/validation").join(class);
    let singular = class.trim_end_matches('s');
    let samples: Vec<Sample> =
        (first..first + n).map(|k| Sample { path: dir.join(format!("{singular}.{k}.jpg")), label: 0 }).collect();
    let (ds, skipped) = data::Dataset::decode(&samples, input);
    assert_eq!(skipped, 0);
    let norm = data::augment::Normalize::new(input, Architecture::EfficientnetLite0);
    let folding = model.inference_folding().unwrap();
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let batch = data::make_batch(&ds, chunk, None, norm);
        let logits = model.forward_inference(0, &batch.tensor(&Device::Cpu).unwrap(), &folding).unwrap();
        out.extend(logits.argmax(1).unwrap().to_vec1::<u32>().unwrap().into_iter().map(|c| c as usize));
    }
    out
}

#[test]
fn efficientnet_lite0_sees_cats_and_dogs() {
    crate::test_support::require_shared_data!();
    // As the weights were evaluated: the shorter side to 224, then the centre.
    let input = InputSpec { height: 224, width: 224, resize: ResizeMode::CenterCrop, ..InputSpec::default() };
    let model = imagenet_model(&input);
    let cats = top1(&model, &input, "cats", 2000, 20).iter().filter(|c| (281..=285).contains(*c)).count();
    let dogs = top1(&model, &input, "dogs", 2000, 20).iter().filter(|c| (151..=268).contains(*c)).count();
    eprintln!("ImageNet top-1: {cats}/20 cats in the cat classes, {dogs}/20 dogs in the dog classes");
    // What an independent implementation (torchvision's resize and crop) gets: 18 and 19.
    assert!(cats >= 18 && dogs >= 19, "{cats}/20 cats, {dogs}/20 dogs");
}

#[test]
fn efficientnet_lite0_file_is_checked() {
    crate::test_support::require_shared_data!();
    let path = shared("weights").join(WEIGHTS);
    let report = check_weights(&lite0(1), WeightsFormat::EfficientnetPytorch, &path).unwrap();
    assert_eq!((report.tensors, report.params), (245, 3_413_024));
    assert_eq!(report.unused, ["_fc.bias", "_fc.weight"]);
    assert_eq!(report.convention, "keras");
    // These names are not Keras's, and this format is for EfficientNet only.
    let err = check_weights(&lite0(1), WeightsFormat::Keras, &path).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported(_)), "{err}");
    let mobilenet = ModelSpec {
        backbone: BackboneSpec { architecture: Architecture::MobilenetV2, weights: None, widths: None, alpha: None },
        head: HeadSpec::default(),
    };
    let err = check_weights(&mobilenet, WeightsFormat::EfficientnetPytorch, &path).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported(_)), "{err}");

    // One tensor left out, one transposed: each named, with the shape expected.
    let mut tensors = load_weights(&path).unwrap();
    tensors.remove("_blocks.7._bn1.running_var");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let err = check_weights(&lite0(1), WeightsFormat::EfficientnetPytorch, &missing).unwrap_err();
    assert_eq!(err.tensor(), Some("_blocks.7._bn1.running_var"), "{err}");
    assert!(err.to_string().contains("[480]"), "{err}");
    let project = tensors["_blocks.3._project_conv.weight"].clone(); // [40, 144, 1, 1]
    tensors.insert("_blocks.3._project_conv.weight".into(), project.transpose(0, 1).unwrap().contiguous().unwrap());
    let shape = dir.path().join("shape.safetensors");
    candle_core::safetensors::save(&tensors, &shape).unwrap();
    let err = check_weights(&lite0(1), WeightsFormat::EfficientnetPytorch, &shape).unwrap_err();
    assert_eq!(err.tensor(), Some("_blocks.3._project_conv.weight"), "{err}");
    assert!(err.to_string().contains("[40, 144, 1, 1]"), "{err}");
}
