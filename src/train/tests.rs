//! End-to-end tests of the training module on tiny synthetic images (and a few real photos):
//! the Keras transfer-learning semantics that the rest of the service relies on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

use crate::train::nn::ForwardCtx;
use crate::train::*;

/// Collects every event.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) events: Vec<TrainEvent>,
}

impl Observer for Recorder {
    fn on_event(&mut self, event: &TrainEvent) {
        self.events.push(event.clone());
    }
}

impl Recorder {
    fn epochs(&self) -> Vec<(usize, u32, Metrics, Option<Metrics>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::EpochEnded { phase_index, epoch, train, validation, .. } => {
                    Some((*phase_index, *epoch, *train, *validation))
                }
                _ => None,
            })
            .collect()
    }

    fn checkpoints(&self) -> Vec<(CheckpointFile, CheckpointFile, ResumeState)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::CheckpointWritten { weights, optimizer, resume, .. } => {
                    Some((weights.clone(), optimizer.clone(), resume.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// Two separable classes: reddish images with a bright left half vs bluish ones, with noise.
pub(super) fn synthetic(dir: &Path, per_class: usize, side: u32) -> Vec<Sample> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut samples = Vec::new();
    for label in 0..2 {
        for i in 0..per_class {
            let img = RgbImage::from_fn(side + 3, side + 1, |x, _| {
                let n: i32 = rng.gen_range(-30..30);
                let v = |base: i32| (base + n).clamp(0, 255) as u8;
                if label == 0 {
                    Rgb([v(200), v(if x < side / 2 { 180 } else { 40 }), v(40)])
                } else {
                    Rgb([v(40), v(60), v(200)])
                }
            });
            let path = dir.join(format!("c{label}_{i}.png"));
            img.save(&path).unwrap();
            samples.push(Sample { path, label });
        }
    }
    samples
}

pub(super) fn phase(name: &str, trainable: &[&str], lr: f64, epochs: u32) -> PhaseSpec {
    PhaseSpec {
        name: name.into(),
        trainable: trainable.iter().map(|s| s.to_string()).collect(),
        optimizer: OptimizerSpec {
            kind: OptimizerKind::Adam,
            learning_rate: lr,
            learning_rates: None,
            beta1: None,
            beta2: None,
            epsilon: None,
            momentum: None,
        },
        epochs,
        batch_norm: BatchNormMode::Inference,
        early_stopping: None,
        reduce_lr_on_plateau: None,
        on_divergence: Default::default(),
        unfreeze_top_blocks: None,
    }
}

pub(super) fn spec(phases: Vec<PhaseSpec>) -> JobSpec {
    JobSpec {
        name: None,
        dataset_id: "d".into(),
        validation_dataset_id: None,
        split: SplitSpec { validation: 0.25, test: 0.0, seed: 3 },
        input: InputSpec { height: 16, width: 16, ..InputSpec::default() },
        augmentation: AugmentationSpec { horizontal_flip: true, rotation: 0.05 },
        model: ModelSpec {
            backbone: BackboneSpec {
                architecture: Architecture::SmallCnn,
                weights: None,
                alpha: None,
                widths: Some(vec![4, 8]),
            },
            head: HeadSpec { pooling: Pooling::Avg, dropout: 0.1, units: 1 },
        },
        batch_size: 8,
        seed: 42,
        log_every_steps: 1,
        phases,
        class_weights: None,
        webhook: None,
    }
}

pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) samples: Vec<Sample>,
}

pub(super) fn fixture(per_class: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let samples = synthetic(&images, per_class, 16);
    Fixture { dir, samples }
}

impl Fixture {
    pub(super) fn job(&self, spec: JobSpec, run: &str) -> TrainJob {
        TrainJob {
            spec,
            classes: vec!["a".into(), "b".into()],
            samples: self.samples.clone(),
            validation_samples: None,
            initial_weights: None,
            resume: None,
            checkpoint_dir: self.dir.path().join(run),
        }
    }
}

pub(super) fn run_ok(job: &TrainJob) -> (TrainOutcome, Recorder) {
    let mut rec = Recorder::default();
    let out = run(job, &Control::new(), &mut rec).unwrap();
    (out, rec)
}

fn initial_weights(spec: &JobSpec) -> HashMap<String, Tensor> {
    model::Model::new(&spec.model, &spec.input, spec.seed).unwrap().params.snapshot().unwrap()
}

pub(super) fn same(a: &Tensor, b: &Tensor) -> bool {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) && a.len() == b.len()
}

pub(super) fn final_weights(out: &TrainOutcome) -> HashMap<String, Tensor> {
    load_weights(&out.weights.as_ref().unwrap().path).unwrap()
}

#[test]
fn loss_goes_down_on_a_separable_set() {
    let f = fixture(12);
    let (_, rec) = run_ok(&f.job(spec(vec![phase("all", &["all"], 0.02, 6)]), "run"));
    let epochs = rec.epochs();
    let (first, last) = (epochs[0].2.loss, epochs.last().unwrap().2.loss);
    assert!(last < first * 0.8, "training loss {first} -> {last}");
}

#[test]
fn head_only_phase_keeps_frozen_weights_bit_identical() {
    let f = fixture(6);
    let s = spec(vec![phase("head", &["head"], 0.05, 2)]);
    let before = initial_weights(&s);
    let (out, rec) = run_ok(&f.job(s, "run"));
    let after = final_weights(&out);
    assert!(matches!(&rec.events[1], TrainEvent::PhaseStarted { execution, .. } if execution == "backbone_forward"));
    for (name, t) in &before {
        if name.starts_with("backbone.") {
            assert!(same(t, &after[name]), "{name} changed");
        }
    }
    assert!(!same(&before["head.dense.kernel"], &after["head.dense.kernel"]));
}

#[test]
fn two_phase_flow_fine_tunes_backbone_but_keeps_bn_statistics() {
    let f = fixture(6);
    let s = spec(vec![phase("head", &["head"], 0.05, 1), phase("fine_tune", &["all"], 1e-3, 1)]);
    let (out, rec) = run_ok(&f.job(s, "run"));
    let after_phase1 = load_weights(&rec.checkpoints()[0].0.path).unwrap();
    let after = final_weights(&out);
    assert!(!same(&after_phase1["backbone.block1.conv.kernel"], &after["backbone.block1.conv.kernel"]));
    assert!(!same(&after_phase1["backbone.block2.bn.gamma"], &after["backbone.block2.bn.gamma"]));
    for stat in ["moving_mean", "moving_variance"] {
        let name = format!("backbone.block1.bn.{stat}");
        assert!(same(&after_phase1[&name], &after[&name]), "{name} changed in inference mode");
    }
    let executions: Vec<_> = rec
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::PhaseStarted { execution, .. } => Some(execution.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(executions, ["backbone_forward", "full_backward"]);
}

#[test]
fn batch_norm_training_mode_updates_moving_statistics() {
    let f = fixture(4);
    let mut p = phase("bn", &["head"], 0.01, 1);
    p.batch_norm = BatchNormMode::Training;
    let s = spec(vec![p]);
    let before = initial_weights(&s);
    let (out, _) = run_ok(&f.job(s, "run"));
    let after = final_weights(&out);
    assert!(!same(&before["backbone.block1.bn.moving_mean"], &after["backbone.block1.bn.moving_mean"]));
    assert!(!same(&before["backbone.block2.bn.moving_variance"], &after["backbone.block2.bn.moving_variance"]));
    // Gamma is frozen (head only), so it stays.
    assert!(same(&before["backbone.block1.bn.gamma"], &after["backbone.block1.bn.gamma"]));
}

#[test]
fn cancel_stops_within_one_batch() {
    struct CancelOnStep<'a> {
        control: &'a Control,
        steps: usize,
    }
    impl Observer for CancelOnStep<'_> {
        fn on_event(&mut self, event: &TrainEvent) {
            if matches!(event, TrainEvent::Step { .. }) {
                self.steps += 1;
                self.control.request_stop(StopReason::Cancel);
            }
        }
    }
    let f = fixture(12);
    let job = f.job(spec(vec![phase("all", &["all"], 0.01, 3)]), "run");
    let control = Control::new();
    let mut obs = CancelOnStep { control: &control, steps: 0 };
    let err = run(&job, &control, &mut obs).unwrap_err();
    assert!(matches!(err, TrainError::Stopped(StopReason::Cancel)), "{err}");
    assert_eq!(obs.steps, 1);
}

#[test]
fn checkpoints_round_trip_and_are_described_truthfully() {
    let f = fixture(4);
    let (out, rec) = run_ok(&f.job(spec(vec![phase("all", &["all"], 0.01, 2)]), "run"));
    let checkpoints = rec.checkpoints();
    assert_eq!(checkpoints.len(), 2);
    for (w, o, _) in &checkpoints {
        for file in [w, o] {
            let bytes = std::fs::read(&file.path).unwrap();
            assert_eq!(bytes.len() as u64, file.size);
            use sha2::Digest;
            assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), file.sha256);
        }
        let opt = load_weights(&o.path).unwrap();
        assert!(opt.contains_key("head.dense.kernel.m") && opt.contains_key("step"));
    }
    // No early stopping: the final weights are the last checkpoint's, every tensor identical.
    let last = load_weights(&checkpoints[1].0.path).unwrap();
    let fin = final_weights(&out);
    assert_eq!(last.len(), fin.len());
    assert!(last.contains_key("backbone.block1.bn.moving_variance"));
    for (name, t) in &last {
        assert!(same(t, &fin[name]), "{name}");
    }
    // And a store written and read back is identical.
    let s = spec(vec![phase("all", &["all"], 0.01, 1)]);
    let snap = initial_weights(&s);
    let file = checkpoint::write(f.dir.path(), "rt.safetensors", &snap).unwrap();
    let back = load_weights(&file.path).unwrap();
    assert!(snap.iter().all(|(k, t)| same(t, &back[k])));
}

#[test]
fn same_seed_gives_identical_metrics() {
    let f = fixture(6);
    let s = spec(vec![phase("head", &["head"], 0.05, 1), phase("all", &["all"], 1e-3, 1)]);
    let (out_a, a) = run_ok(&f.job(s.clone(), "a"));
    let (out_b, b) = run_ok(&f.job(s, "b"));
    assert_eq!(a.epochs(), b.epochs());
    assert_eq!(out_a.validation, out_b.validation);
}

#[test]
fn resume_after_interruption_matches_an_uninterrupted_run() {
    struct ShutdownAfterCheckpoints<'a> {
        control: &'a Control,
        left: usize,
        rec: Recorder,
    }
    impl Observer for ShutdownAfterCheckpoints<'_> {
        fn on_event(&mut self, event: &TrainEvent) {
            self.rec.on_event(event);
            if matches!(event, TrainEvent::CheckpointWritten { .. }) {
                self.left -= 1;
                if self.left == 0 {
                    self.control.request_stop(StopReason::Shutdown);
                }
            }
        }
    }
    let f = fixture(6);
    let mut head = phase("head", &["head"], 0.05, 2);
    head.reduce_lr_on_plateau =
        Some(ReduceLrSpec { monitor: Monitor::ValLoss, factor: 0.5, patience: 1, min_delta: 0.0, min_lr: 0.0 });
    let s = spec(vec![head, phase("all", &["all"], 1e-3, 2)]);
    let (reference_out, reference) = run_ok(&f.job(s.clone(), "ref"));

    // Stop after the first checkpoint (mid phase 0), resume, stop after phase 0's last, resume.
    let mut all_epochs = Vec::new();
    let mut resume = None;
    let mut outcome = None;
    for stop_after in [1, 1, usize::MAX] {
        let control = Control::new();
        let mut obs = ShutdownAfterCheckpoints { control: &control, left: stop_after, rec: Recorder::default() };
        let mut job = f.job(s.clone(), "interrupted");
        job.resume = resume.take();
        let result = run(&job, &control, &mut obs);
        all_epochs.extend(obs.rec.epochs());
        let (weights, optimizer, state) = obs.rec.checkpoints().pop().unwrap();
        resume = Some(ResumeFrom { weights: weights.path, optimizer: optimizer.path, state, phase_best_weights: None });
        match result {
            Err(TrainError::Stopped(StopReason::Shutdown)) => {}
            Ok(out) => outcome = Some(out),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(all_epochs.len(), 4);
    assert_eq!(all_epochs, reference.epochs());
    assert_eq!(outcome.unwrap().validation, reference_out.validation);
}

#[test]
fn early_stopping_restores_the_best_weights_of_the_phase() {
    let f = fixture(6);
    let mut p = phase("all", &["all"], 0.3, 4);
    p.early_stopping =
        Some(EarlyStoppingSpec { monitor: Monitor::ValLoss, patience: 10, min_delta: 0.0, restore_best_weights: true });
    let (out, rec) = run_ok(&f.job(spec(vec![p]), "run"));
    let epochs = rec.epochs();
    let best = epochs.iter().min_by(|a, b| a.3.unwrap().loss.total_cmp(&b.3.unwrap().loss)).map(|e| e.1).unwrap();
    let restored = rec.events.iter().find_map(|e| match e {
        TrainEvent::PhaseEnded { restored_best_epoch, .. } => Some(*restored_best_epoch),
        _ => None,
    });
    assert_eq!(restored, Some(Some(best)));
    let best_ckpt = load_weights(&rec.checkpoints()[best as usize - 1].0.path).unwrap();
    let fin = final_weights(&out);
    assert!(best_ckpt.iter().all(|(k, t)| same(t, &fin[k])));
    assert_eq!(out.validation, epochs[best as usize - 1].3);
}

#[test]
fn early_stopping_stops_when_patience_runs_out() {
    let f = fixture(4);
    let mut p = phase("all", &["all"], 1e-9, 6);
    // A learning rate this small cannot improve the loss by min_delta.
    p.early_stopping =
        Some(EarlyStoppingSpec { monitor: Monitor::ValLoss, patience: 1, min_delta: 1.0, restore_best_weights: true });
    let (_, rec) = run_ok(&f.job(spec(vec![p]), "run"));
    assert_eq!(rec.epochs().len(), 2);
    assert!(rec
        .events
        .iter()
        .any(|e| matches!(e, TrainEvent::PhaseEnded { stopped_early: true, restored_best_epoch: Some(1), .. })));
}

#[test]
fn softmax_head_with_a_test_split() {
    let f = fixture(6);
    let mut s = spec(vec![phase("all", &["all"], 0.01, 1)]);
    s.model.head.units = 2;
    s.split.test = 0.25;
    let (out, rec) = run_ok(&f.job(s, "run"));
    assert!(out.test.is_some_and(|m| m.loss.is_finite()));
    assert!(matches!(
        rec.events[0],
        TrainEvent::DataReady { train_images: 6, validation_images: 3, test_images: 3, .. }
    ));
}

#[test]
fn head_units_must_fit_the_classes() {
    let f = fixture(2);
    let mut s = spec(vec![phase("all", &["all"], 0.01, 1)]);
    s.model.head.units = 3;
    let err = run(&f.job(s, "run"), &Control::new(), &mut Recorder::default()).unwrap_err();
    assert!(matches!(err, TrainError::Spec(ref e) if e.field == "model.head.units"), "{err}");
}

#[test]
fn initial_weights_take_the_backbone_and_check_names() {
    let f = fixture(4);
    let (first, _) = run_ok(&f.job(spec(vec![phase("all", &["all"], 0.01, 1)]), "first"));
    let source = final_weights(&first);
    let mut s = spec(vec![phase("head", &["head"], 0.01, 1)]);
    s.seed = 99;
    let mut job = f.job(s.clone(), "second");
    job.initial_weights =
        Some(InitialWeights { path: first.weights.clone().unwrap().path, format: WeightsFormat::Tanuki });
    let (out, _) = run_ok(&job);
    let fin = final_weights(&out);
    assert!(same(&source["backbone.block2.conv.kernel"], &fin["backbone.block2.conv.kernel"]));

    let mut partial = source.clone();
    partial.remove("backbone.block1.bn.beta");
    let file = checkpoint::write(f.dir.path(), "partial.safetensors", &partial).unwrap();
    job.initial_weights = Some(InitialWeights { path: file.path, format: WeightsFormat::Tanuki });
    let err = run(&job, &Control::new(), &mut Recorder::default()).unwrap_err();
    assert!(matches!(err, TrainError::Weights(ref e) if e.to_string().contains("backbone.block1.bn.beta")), "{err}");
}

#[test]
fn undecodable_files_are_skipped_and_counted() {
    let mut f = fixture(4);
    let bad = f.dir.path().join("images/bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    f.samples.push(Sample { path: bad, label: 0 });
    let (_, rec) = run_ok(&f.job(spec(vec![phase("head", &["head"], 0.01, 1)]), "run"));
    assert!(matches!(rec.events[0], TrainEvent::DataReady { skipped_images: 1, .. }));
}

#[test]
fn trains_on_real_photos() {
    crate::test_support::require_shared_data!();
    let dir = tempfile::tempdir().unwrap();
    let job = real_photo_job(dir.path(), vec![phase("head", &["head"], 1e-3, 1)]);
    let (_, rec) = run_ok(&job);
    assert!(matches!(
        rec.events[0],
        TrainEvent::DataReady { train_images: 6, validation_images: 2, skipped_images: 0, .. }
    ));
    assert!(rec.epochs()[0].2.loss.is_finite());
}

#[test]
fn frozen_prefix_builds_no_graph() {
    let s = spec(vec![phase("p", &["backbone.block2", "head"], 0.01, 1)]);
    let mut m = model::Model::new(&s.model, &s.input, 1).unwrap();
    m.set_trainable(&["backbone.block2".to_string(), "head".to_string()]);
    assert_eq!(m.execution(), "partial_backward");
    let mut ctx = ForwardCtx::new(true, false, true, rng::rng(1, rng::Stream::Dropout, 0, 0, 0));
    let mut x = Tensor::zeros((2, 3, 16, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    for layer in &m.layers {
        x = layer.forward(&x, &m.params, &mut ctx).unwrap();
        let trainable_so_far = !layer.name.starts_with("backbone.block1");
        assert_eq!(x.track_op(), trainable_so_far, "after {}", layer.name);
    }
    let grads = x.sum_all().unwrap().backward().unwrap();
    let grad_of = |n: &str| grads.get(m.params.get(n).unwrap().var.as_tensor()).is_some();
    assert!(!grad_of("backbone.block1.conv.kernel"));
    assert!(!grad_of("backbone.block2.bn.moving_mean"));
    assert!(grad_of("backbone.block2.conv.kernel"));
    assert!(grad_of("head.dense.kernel"));
}

/// Eight real photos (four cats, four dogs) at 32x32.
fn real_photo_job(dir: &Path, phases: Vec<PhaseSpec>) -> TrainJob {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cats_and_dogs_filtered/train");
    let mut samples = Vec::new();
    for (label, class) in ["cats", "dogs"].iter().enumerate() {
        for i in 0..4 {
            samples.push(Sample { path: root.join(class).join(format!("{}.{i}.jpg", &class[..3])), label });
        }
    }
    let mut s = spec(phases);
    s.input = InputSpec { height: 32, width: 32, ..InputSpec::default() };
    TrainJob {
        spec: s,
        classes: vec!["cats".into(), "dogs".into()],
        samples,
        validation_samples: None,
        initial_weights: None,
        resume: None,
        checkpoint_dir: dir.to_path_buf(),
    }
}

fn all_finite(weights: &HashMap<String, Tensor>) -> bool {
    weights.values().all(|t| {
        let v: Vec<f32> = t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap();
        v.iter().all(|x| x.is_finite())
    })
}

#[test]
fn an_absurd_learning_rate_fails_the_run_as_diverged_with_the_last_finite_metrics() {
    crate::test_support::require_shared_data!();
    let dir = tempfile::tempdir().unwrap();
    let mut boom = phase("boom", &["all"], 1e35, 3);
    boom.optimizer.kind = OptimizerKind::Sgd;
    let mut job = real_photo_job(dir.path(), vec![boom]);
    // Several steps an epoch, so the loss goes non-finite within one.
    job.spec.batch_size = 2;
    let mut rec = Recorder::default();
    let error = run(&job, &Control::new(), &mut rec).unwrap_err();
    let TrainError::Diverged(at) = error else { panic!("expected a divergence, got {error:?}") };
    assert_eq!((at.phase_index, at.epoch), (0, 1), "{at}");
    // The first step's loss comes before any update, so it is finite and reported.
    assert!(at.global_step >= 2, "{at}");
    let last = at.last_finite.expect("a finite step came before");
    assert!(last.loss.is_finite() && last.accuracy.is_finite(), "{at}");
    assert!(at.to_string().contains("not finite"), "{at}");
    // No epoch finished: nothing non-finite was checkpointed.
    assert!(rec.checkpoints().is_empty());
}

#[test]
fn restore_best_on_divergence_goes_back_and_trains_the_next_phase() {
    crate::test_support::require_shared_data!();
    let dir = tempfile::tempdir().unwrap();
    let head = phase("head", &["head"], 1e-3, 1);
    let mut boom = phase("boom", &["all"], 1e35, 2);
    boom.optimizer.kind = OptimizerKind::Sgd;
    boom.on_divergence = OnDivergence::RestoreBest;
    let after = phase("after", &["head"], 1e-3, 1);
    let mut job = real_photo_job(dir.path(), vec![head, boom, after]);
    job.spec.batch_size = 2;
    let (out, rec) = run_ok(&job);
    let ended: Vec<_> = rec
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::PhaseEnded { phase_index, diverged, restored_best_epoch, .. } => {
                Some((*phase_index, diverged.clone(), *restored_best_epoch))
            }
            _ => None,
        })
        .collect();
    assert_eq!(ended.len(), 3);
    let (_, diverged, restored) = &ended[1];
    let at = diverged.as_ref().expect("the boom phase diverged");
    assert_eq!((at.phase_index, at.epoch, restored), (1, 1, &None), "{at}");
    assert!(ended[0].1.is_none() && ended[2].1.is_none());
    // The phase after it trained one epoch from restored (finite) weights and ended finite.
    let after_epochs: Vec<_> = rec.epochs().into_iter().filter(|e| e.0 == 2).collect();
    assert_eq!(after_epochs.len(), 1);
    assert!(after_epochs[0].2.loss.is_finite());
    assert!(all_finite(&final_weights(&out)));
}
