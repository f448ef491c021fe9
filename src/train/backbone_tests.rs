//! Tests of the real backbones against the pretrained files in `../shared/weights` (never copied
//! into the repository): parity with Keras, an ImageNet check with torchvision's weights,
//! Xception's Keras parameter counts and its backward pass, importer errors, partial unfreezing,
//! per-group learning rates and prediction.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::train::fit::{loss, optim};
use crate::train::model::{Convention, Model};
use crate::train::nn::ForwardCtx;
use crate::train::*;

fn weights_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/weights")
}

fn backbone(architecture: Architecture, alpha: Option<f32>, units: usize, dropout: f32) -> ModelSpec {
    ModelSpec {
        backbone: BackboneSpec { architecture, weights: None, widths: None, alpha },
        head: HeadSpec { pooling: Pooling::Avg, dropout, units },
    }
}

fn side(n: u32) -> InputSpec {
    InputSpec { height: n, width: n, ..InputSpec::default() }
}

fn inference() -> ForwardCtx {
    ForwardCtx::new(false, false, false, rng::rng(0, rng::Stream::Dropout, 0, 0, 0))
}

/// The largest absolute difference between our feature map and Keras's, for one width.
fn keras_parity(alpha: f32, weights: &str, reference: &str) -> (f32, f32) {
    let spec = backbone(Architecture::MobilenetV2, Some(alpha), 1, 0.0);
    let input = side(160);
    let (tensors, convention) =
        weights::import(&spec, &input, WeightsFormat::Keras, &weights_dir().join(weights), false).unwrap();
    assert_eq!(convention, Convention::Keras);
    let model = Model::with_convention(&spec, &input, 0, convention).unwrap();
    model.params.load(&tensors, |n| n.starts_with("backbone.")).unwrap();
    let reference = load_weights(weights_dir().join("reference").join(reference)).unwrap();
    // NHWC 0..255 → NCHW, rescaled as Keras's preprocess_input: x / 127.5 - 1.
    let x = reference["input_nhwc_0_255"].permute((0, 3, 1, 2)).unwrap().affine(1.0 / 127.5, -1.0).unwrap();
    let ours = model.features(&x.contiguous().unwrap(), &mut inference()).unwrap(); // [4, 1280, 5, 5]
    let keras = reference["feature_map_nhwc"].permute((0, 3, 1, 2)).unwrap();
    assert_eq!(ours.dims(), keras.dims());
    let diff =
        (ours - keras).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale =
        reference["feature_map_nhwc"].abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("alpha {alpha}: max |ours - keras| = {diff:e}, max |keras| = {scale}");
    (diff, scale)
}

#[test]
fn mobilenet_v2_matches_keras_at_alpha_0_35() {
    crate::test_support::require_shared_data!();
    let (diff, scale) = keras_parity(
        0.35,
        "mobilenet_v2_0.35_224_imagenet.keras.safetensors",
        "mobilenet_v2_0.35_160.keras_reference.safetensors",
    );
    assert!(diff < 1e-4, "max |ours - keras| = {diff} (feature maps up to {scale})");
}

#[test]
fn mobilenet_v2_matches_keras_at_alpha_1() {
    crate::test_support::require_shared_data!();
    let (diff, scale) = keras_parity(
        1.0,
        "mobilenet_v2_1.0_224_imagenet.keras.safetensors",
        "mobilenet_v2_1.0_160.keras_reference.safetensors",
    );
    assert!(diff < 1e-4, "max |ours - keras| = {diff} (feature maps up to {scale})");
}

#[test]
fn torchvision_weights_see_a_cat() {
    crate::test_support::require_shared_data!();
    let spec = backbone(Architecture::MobilenetV2, None, 1000, 0.0);
    let input = InputSpec {
        height: 224,
        width: 224,
        mean: Some([0.485, 0.456, 0.406]),
        std: Some([0.229, 0.224, 0.225]),
        ..InputSpec::default()
    };
    let path = weights_dir().join("mobilenet_v2_1.0_224_imagenet.torchvision.safetensors");
    let (tensors, convention) = weights::import(&spec, &input, WeightsFormat::Torchvision, &path, true).unwrap();
    assert_eq!(convention, Convention::Torchvision);
    let model = Model::with_convention(&spec, &input, 0, convention).unwrap();
    model.params.load(&tensors, |_| true).unwrap();
    // Two clear cat photos (of the first ten validation cats, five get P(cat) > 0.5 with this
    // plain resize and no crop; these two get 0.95 and 0.98).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cats_and_dogs_filtered/validation/cats");
    let samples: Vec<Sample> =
        [2007, 2009].iter().map(|k| Sample { path: dir.join(format!("cat.{k}.jpg")), label: 0 }).collect();
    let (ds, skipped) = data::Dataset::decode(&samples, &input);
    assert_eq!(skipped, 0);
    let batch = data::make_batch(&ds, &[0, 1], None, data::augment::Normalize::new(&input, spec.backbone.architecture));
    let logits = model.forward(&batch.tensor(&Device::Cpu).unwrap(), &mut inference()).unwrap();
    let p: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&logits).unwrap().to_vec2().unwrap();
    for (sample, p) in samples.iter().zip(p) {
        let cat: f32 = p[281..=285].iter().sum();
        assert!(cat > 0.5, "{}: P(domestic cat) = {cat}", sample.path.display());
    }
}

#[test]
fn xception_counts_match_keras_at_150() {
    let spec = backbone(Architecture::Xception, None, 1, 0.2);
    let phase = |trainable: &[&str]| PhaseSpec {
        name: trainable.join("+"),
        trainable: trainable.iter().map(|s| s.to_string()).collect(),
        unfreeze_top_blocks: None,
        optimizer: OptimizerSpec {
            kind: OptimizerKind::Adam,
            learning_rate: 1e-3,
            learning_rates: None,
            beta1: None,
            beta2: None,
            epsilon: None,
            momentum: None,
        },
        epochs: 1,
        batch_norm: BatchNormMode::Inference,
        early_stopping: None,
        reduce_lr_on_plateau: None,
        on_divergence: Default::default(),
    };
    let mut top2 = phase(&["head"]);
    top2.unfreeze_top_blocks = Some(2);
    let s = summarize(&spec, &side(150), &[phase(&["head"]), phase(&["all"]), top2]).unwrap();
    let base: usize = s.layers.iter().filter(|l| l.name.starts_with("backbone.")).map(|l| l.params).sum();
    assert_eq!(base, 20_861_480);
    assert_eq!(s.total_params, 20_863_529);
    assert_eq!((s.phases[0].trainable_params, s.phases[0].non_trainable_params), (2_049, 20_861_480));
    assert_eq!((s.phases[1].trainable_params, s.phases[1].non_trainable_params), (20_809_001, 54_528));
    let last = s.layers.iter().rfind(|l| l.name.starts_with("backbone.")).unwrap();
    assert_eq!(last.output_shape, vec![5, 5, 2048]);
    let layer = |n: &str| s.layers.iter().find(|l| l.name == n).unwrap();
    assert_eq!(layer("backbone.block2_pool").kind, "MaxPooling2D");
    assert_eq!(layer("backbone.block4_sepconv1").kind, "SeparableConv2D");
    // Blocks 13 and 14 with the head: block 14's two separable convs and BNs, block 13's too
    // plus its shortcut conv and BN.
    assert_eq!(layer("backbone.block13_shortcut").trainable, vec![false, true, true]);
    assert_eq!(layer("backbone.block12_sepconv3").trainable, vec![false, true, false]);
    let s13_14: usize = s
        .layers
        .iter()
        .filter(|l| l.name.starts_with("backbone.block13_") || l.name.starts_with("backbone.block14_"))
        .map(|l| if l.kind == "BatchNormalization" { l.params / 2 } else { l.params })
        .sum();
    assert_eq!(s.phases[2].trainable_params, s13_14 + 2_049);
}

#[test]
fn xception_fine_tunes_through_its_max_pooling() {
    let spec = backbone(Architecture::Xception, None, 1, 0.2);
    let input = side(71);
    let mut model = Model::new(&spec, &input, 3).unwrap();
    model.set_trainable(&["all".to_string()]);
    assert_eq!(model.execution(), "full_backward");
    let opt_spec = OptimizerSpec {
        kind: OptimizerKind::Sgd,
        learning_rate: 0.01,
        learning_rates: None,
        beta1: None,
        beta2: None,
        epsilon: None,
        momentum: None,
    };
    let mut opt = optim::Optimizer::new(&opt_spec, &model.params).unwrap();
    let before = model.params.snapshot().unwrap();
    let x = Tensor::randn(0f32, 1f32, (2, 3, 71, 71), &Device::Cpu).unwrap();
    let mut ctx = ForwardCtx::new(true, false, true, rng::rng(1, rng::Stream::Dropout, 0, 0, 0));
    let (loss, _) = fit::train_step(&model, &mut opt, loss::LossKind::Binary, &x, &[0, 1], &mut ctx).unwrap();
    assert!(loss.is_finite());
    // The stem is below every max pool: it only changes if gradients flow through all of them.
    for name in [
        "backbone.block1_conv1.kernel",
        "backbone.block2_sepconv1.depthwise_kernel",
        "backbone.block14_sepconv2.pointwise_kernel",
    ] {
        let after = model.params.get(name).unwrap().var.as_tensor();
        let changed = (after - &before[name]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(changed > 0.0, "{name} did not change");
    }
}

fn write_file(dir: &std::path::Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let map = tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    checkpoint::write(dir, name, &map).unwrap().path
}

#[test]
fn check_weights_names_the_first_bad_tensor() {
    crate::test_support::require_shared_data!();
    let spec = backbone(Architecture::MobilenetV2, Some(0.35), 1, 0.2);
    let keras = weights_dir().join("mobilenet_v2_0.35_224_imagenet.keras.safetensors");
    let report = check_weights(&spec, WeightsFormat::Keras, &keras).unwrap();
    assert_eq!((report.tensors, report.params, report.unused.len()), (260, 410_208, 0));
    // The wrong width: the stem has 16 filters at 0.35 but 32 at 1.0.
    let wide = backbone(Architecture::MobilenetV2, Some(1.0), 1, 0.2);
    let err = check_weights(&wide, WeightsFormat::Keras, &keras).unwrap_err();
    assert_eq!(err.tensor(), Some("Conv1/kernel"), "{err}");
    assert!(err.to_string().contains("[3, 3, 3, 16]"), "{err}");
    // The wrong format: nothing is named as torchvision names it.
    let err = check_weights(&spec, WeightsFormat::Torchvision, &keras).unwrap_err();
    assert_eq!(err.tensor(), Some("features.0.0.weight"));
    // torchvision's file fits alpha 1.0 and has a classifier the backbone does not use.
    let tv = weights_dir().join("mobilenet_v2_1.0_224_imagenet.torchvision.safetensors");
    let report = check_weights(&wide, WeightsFormat::Torchvision, &tv).unwrap();
    assert_eq!(report.unused, ["classifier.1.bias", "classifier.1.weight"]);
    assert_eq!(report.convention, "torchvision");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    assert!(matches!(check_weights(&spec, WeightsFormat::Keras, &garbage), Err(WeightsError::Unreadable(_))));
    std::fs::write(&garbage, b"").unwrap();
    assert!(matches!(check_weights(&spec, WeightsFormat::Keras, &garbage), Err(WeightsError::Unreadable(_))));
    let small = backbone(Architecture::SmallCnn, None, 1, 0.2);
    let ints = Tensor::zeros((16, 3, 3, 3), DType::U32, &Device::Cpu).unwrap();
    let path = write_file(dir.path(), "ints.safetensors", &[("backbone.block1.conv.kernel", ints)]);
    let err = check_weights(&small, WeightsFormat::Tanuki, &path).unwrap_err();
    assert!(matches!(err, WeightsError::Dtype { ref tensor, .. } if tensor == "backbone.block1.conv.kernel"), "{err}");
    let nan = Tensor::full(f32::NAN, (16, 3, 3, 3), &Device::Cpu).unwrap();
    let path = write_file(dir.path(), "nan.safetensors", &[("backbone.block1.conv.kernel", nan)]);
    let err = check_weights(&small, WeightsFormat::Tanuki, &path).unwrap_err();
    assert!(matches!(err, WeightsError::NotFinite { .. }), "{err}");
    let err =
        check_weights(&backbone(Architecture::Xception, None, 1, 0.2), WeightsFormat::Torchvision, &tv).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported(_)), "{err}");
}

#[test]
fn selectors_and_blocks_follow_keras_names() {
    use crate::train::model::{blocks, selector_matches};
    assert!(selector_matches("backbone.block_1", "backbone.block_1_expand_BN"));
    assert!(!selector_matches("backbone.block_1", "backbone.block_16_expand"));
    assert!(selector_matches("backbone.Conv_1", "backbone.Conv_1_bn"));
    assert!(!selector_matches("backbone.Conv1", "backbone.Conv_1"));
    assert!(selector_matches("backbone.block1", "backbone.block1_conv2_bn"));
    assert!(!selector_matches("backbone.block1", "backbone.block13_sepconv1"));
    let mobilenet = blocks(&backbone(Architecture::MobilenetV2, None, 1, 0.2));
    assert_eq!(mobilenet.len(), 18);
    assert_eq!(mobilenet.last().unwrap(), "backbone.Conv_1");
    let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
        "dataset_id": "d",
        "input": {"height": 96, "width": 96},
        "model": {"backbone": {"architecture": "mobilenet_v2", "alpha": 0.35}},
        "phases": [{"name": "top", "unfreeze_top_blocks": 3, "optimizer": {"type": "adam", "learning_rate": 1e-4,
                    "learning_rates": {"head": 1e-3, "backbone.block_16": 1e-5}}, "epochs": 1}]
    }))
    .unwrap();
    validate(&spec).unwrap();
    spec.phases[0].unfreeze_top_blocks = Some(19);
    assert_eq!(validate(&spec).unwrap_err().field, "phases[0].unfreeze_top_blocks");
    spec.phases[0].unfreeze_top_blocks = Some(3);
    spec.model.backbone.alpha = Some(0.0);
    assert_eq!(validate(&spec).unwrap_err().field, "model.backbone.alpha");
    spec.model.backbone.alpha = None;
    spec.input.height = 31;
    assert_eq!(validate(&spec).unwrap_err().field, "input.height");
    spec.input.height = 96;
    spec.phases[0].optimizer.learning_rates.as_mut().unwrap().insert("backbone.nope".into(), 1e-3);
    assert_eq!(validate(&spec).unwrap_err().field, "phases[0].optimizer.learning_rates.backbone.nope");
    spec.model.backbone.alpha = Some(0.35);
    spec.model.backbone.architecture = Architecture::Xception;
    assert_eq!(validate(&spec).unwrap_err().field, "model.backbone.alpha");
    spec.model.backbone.alpha = None;
    spec.input.width = 64;
    assert_eq!(validate(&spec).unwrap_err().field, "input.width");
}

#[test]
fn group_rates_pick_the_longest_selector() {
    let groups: BTreeMap<String, f64> =
        [("all", 1.0), ("backbone", 2.0), ("backbone.block_3", 3.0)].map(|(k, v)| (k.to_string(), v)).into();
    assert_eq!(optim::group_rate(&groups, "backbone.block_3_expand"), Some(3.0));
    assert_eq!(optim::group_rate(&groups, "backbone.block_4_expand"), Some(2.0));
    assert_eq!(optim::group_rate(&groups, "head.dense"), Some(1.0));
    assert_eq!(optim::group_rate(&BTreeMap::new(), "head.dense"), None);
}

#[test]
fn top_blocks_and_group_rates_drive_a_phase() {
    use crate::train::tests::*;
    let f = fixture(4);
    let mut p = phase("top", &[], 0.05, 1);
    p.unfreeze_top_blocks = Some(1);
    p.trainable = vec!["head".into()];
    p.optimizer.learning_rates = Some([("backbone".to_string(), 0.01)].into());
    let s = spec(vec![p]);
    let before = model::Model::new(&s.model, &s.input, s.seed).unwrap().params.snapshot().unwrap();
    let summary = summarize(&s.model, &s.input, &s.phases).unwrap();
    let (out, rec) = run_ok(&f.job(s, "run"));
    let started = rec.events.iter().find_map(|e| match e {
        TrainEvent::PhaseStarted { learning_rates, trainable_params, .. } => {
            Some((learning_rates.clone(), *trainable_params))
        }
        _ => None,
    });
    let (rates, trainable) = started.unwrap();
    assert_eq!(rates, BTreeMap::from([("backbone".to_string(), 0.01)]));
    // block2 of widths [4, 8]: conv 3*3*4*8 + BN gamma/beta 2*8; head 8 + 1.
    assert_eq!(trainable, 288 + 16 + 9);
    assert_eq!(summary.phases[0].trainable_params, trainable);
    let after = final_weights(&out);
    assert!(same(&before["backbone.block1.conv.kernel"], &after["backbone.block1.conv.kernel"]));
    assert!(!same(&before["backbone.block2.conv.kernel"], &after["backbone.block2.conv.kernel"]));
}

#[test]
fn a_job_from_torchvision_weights_keeps_their_numerics_through_predict() {
    crate::test_support::require_shared_data!();
    use crate::train::tests::*;
    let f = fixture(3);
    let mut s = spec(vec![phase("head", &["head"], 0.01, 1)]);
    s.model = backbone(Architecture::MobilenetV2, None, 1, 0.2);
    s.input = InputSpec {
        height: 32,
        width: 32,
        mean: Some([0.485, 0.456, 0.406]),
        std: Some([0.229, 0.224, 0.225]),
        ..InputSpec::default()
    };
    let mut job = f.job(s.clone(), "run");
    let path = weights_dir().join("mobilenet_v2_1.0_224_imagenet.torchvision.safetensors");
    job.initial_weights = Some(InitialWeights { path: path.clone(), format: WeightsFormat::Torchvision });
    let (out, _) = run_ok(&job);
    let fin = out.weights.unwrap().path;
    assert_eq!(weights::file_convention(&fin).unwrap(), Convention::Torchvision);
    let (imported, _) = weights::import(&s.model, &s.input, WeightsFormat::Torchvision, &path, false).unwrap();
    let after = load_weights(&fin).unwrap();
    assert!(same(&imported["backbone.block_16_project.kernel"], &after["backbone.block_16_project.kernel"]));

    // predict: the same preprocessing and numerics as evaluation, and a per-image error.
    let classes = ["a".to_string(), "b".to_string()];
    let png = std::fs::read(&f.samples[0].path).unwrap();
    let answers = predict(&s.model, &s.input, &classes, &fin, &[png, b"not an image".to_vec()]).unwrap();
    let first = answers[0].as_ref().unwrap();
    assert!(answers[1].is_err());
    assert!(first[0].1 >= first[1].1 && (first[0].1 + first[1].1 - 1.0).abs() < 1e-5);
    let m = Model::with_convention(&s.model, &s.input, 0, Convention::Torchvision).unwrap();
    m.params.load(&after, |_| true).unwrap();
    let (ds, _) = data::Dataset::decode(&f.samples[..1], &s.input);
    let batch =
        data::make_batch(&ds, &[0], None, data::augment::Normalize::new(&s.input, s.model.backbone.architecture));
    let logit = m.forward(&batch.tensor(&Device::Cpu).unwrap(), &mut inference()).unwrap();
    let p_b = candle_nn::ops::sigmoid(&logit).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    let ours = first.iter().find(|(c, _)| c == "b").unwrap().1;
    assert!((ours - p_b).abs() < 1e-6, "{ours} vs {p_b}");
}
