//! Whole-model step times, this project's kernels vs candle's stock ops in the same run, and
//! the feature cache vs running the frozen backbone every epoch.
//!
//! `cargo bench --bench model_steps` (a few minutes; `BENCH_QUICK=1` for fewer runs,
//! `BENCH_NO_STOCK=1` to skip candle's ops, `BENCH_FILTER=substring` for some cases only).
//! Cases: (c) the small CNN (conv3x3–BN–ReLU–pool blocks 32/64/128/256, 96x96, batch 32)
//! forward and full training step; (d) MobileNetV2 alpha 1.0 at 160x160, batch 32, a training
//! step with the backbone frozen and with everything trainable; then an epoch of a frozen-backbone
//! phase on cached features vs one that runs the backbone; (e) EfficientNet-Lite0 at 160x160,
//! the same two steps as (d). `benches/keras_steps.py` times (c), (d) and (e) in Keras.
//!
//! Steps run as the fit loop runs them: frozen phases with batch norm in inference mode and
//! folded into the frozen convolutions, trainable ones with batch norm in training mode (as
//! Keras's `fit`). Only the convolution/pooling ops differ between the two columns (the
//! forward context's [`Backend`]).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rand::Rng;
use tanuki::train::bench::{rng, train_step, train_step_from, Backend, ForwardCtx, LossKind, Model, Optimizer, Stream};
use tanuki::train::*;

const BATCH: usize = 32;
/// Images in the epoch of the feature-cache comparison.
const EPOCH_IMAGES: usize = 256;
struct Bench {
    runs: usize,
    budget: Duration,
    stock: bool,
    filter: String,
}

impl Bench {
    /// Median milliseconds after one warm-up call: at least 3 runs, at most `runs`, fewer once
    /// the budget is spent (candle's stock steps take seconds).
    fn time_ms(&self, mut f: impl FnMut()) -> f64 {
        f();
        let start = Instant::now();
        let mut runs = Vec::new();
        while runs.len() < 3 || (runs.len() < self.runs && start.elapsed() < self.budget) {
            let t = Instant::now();
            f();
            runs.push(t.elapsed().as_secs_f64() * 1e3);
        }
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    }

    /// Times `f` under both backends and prints one table row.
    fn row(&self, name: &str, mut f: impl FnMut(Backend)) {
        if !self.filter.is_empty() && !name.contains(&self.filter) {
            return;
        }
        let fast = self.time_ms(|| f(Backend::Fast));
        if self.stock {
            let stock = self.time_ms(|| f(Backend::Stock));
            println!("| {name:<50} | {fast:>9.1} | {stock:>9.1} | {:>7.1}x |", stock / fast);
        } else {
            println!("| {name:<50} | {fast:>9.1} | {:>9} | {:>8} |", "-", "-");
        }
    }
}

fn images(side: usize) -> Tensor {
    let mut rng = rng(1, Stream::Augment, 0, 0, 0);
    let v: Vec<f32> = (0..BATCH * 3 * side * side).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, (BATCH, 3, side, side), &Device::Cpu).expect("input")
}

fn ctx(backend: Backend, grad: bool, bn_training: bool) -> ForwardCtx {
    ForwardCtx { backend, ..ForwardCtx::new(grad, bn_training, grad, rng(1, Stream::Dropout, 0, 0, 0)) }
}

/// Sets the phase's trainable set as the fit loop does (folds only with inference-mode BN).
fn phase(model: &mut Model, selectors: &[&str], bn_training: bool) -> Optimizer {
    model.set_trainable(&selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    if bn_training {
        model.unfold();
    } else {
        model.fold_frozen_batch_norms().expect("fold");
    }
    let adam = OptimizerSpec {
        kind: OptimizerKind::Adam,
        learning_rate: 1e-4,
        learning_rates: None,
        beta1: None,
        beta2: None,
        epsilon: None,
        momentum: None,
    };
    Optimizer::new(&adam, &model.params).expect("optimizer")
}

fn model(backbone: BackboneSpec, side: u32) -> Model {
    let spec = ModelSpec { backbone, head: HeadSpec { dropout: 0.2, ..HeadSpec::default() } };
    Model::new(&spec, &InputSpec { height: side, width: side, ..InputSpec::default() }, 1).expect("model")
}

/// A 160x160 model's training step with the backbone frozen (batch norm in inference mode, as
/// the guide's head phase), then with everything trainable.
fn frozen_and_full(bench: &Bench, name: &str, net: &mut Model, x: &Tensor, labels: &[u32]) {
    let mut opt = phase(net, &["head"], false);
    bench.row(&format!("{name} 160, step, backbone frozen"), |backend| {
        train_step(net, &mut opt, LossKind::Binary, x, labels, &mut ctx(backend, true, false)).expect("step");
    });
    let mut opt = phase(net, &["all"], true);
    bench.row(&format!("{name} 160, step, all trainable"), |backend| {
        train_step(net, &mut opt, LossKind::Binary, x, labels, &mut ctx(backend, true, true)).expect("step");
    });
}

fn main() {
    tanuki::train::configure_kernels(tanuki::config::KernelArgs::from_env().settings()).expect("first kernel settings");
    // The service's allocator and thread-pool settings (read at start-up only), as it runs with
    // them: re-run with them unless told not to.
    if std::env::var_os("BENCH_DEFAULT_MALLOC").is_none() {
        tanuki::process_env::reexec_with_tuned_env();
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let bench = Bench {
        runs: if quick { 3 } else { 7 },
        budget: Duration::from_secs(if quick { 2 } else { 8 }),
        stock: std::env::var_os("BENCH_NO_STOCK").is_none(),
        filter: std::env::var("BENCH_FILTER").unwrap_or_default(),
    };
    println!("batch {BATCH}, f32; milliseconds per step, median; kernel threads: {}", tanuki::train::bench::threads());
    println!("| {:<50} | {:>9} | {:>9} | {:>8} |", "case", "tanuki", "stock", "speed-up");
    println!("|{:-<52}|{:-<11}|{:-<11}|{:-<10}|", "", "", "", "");
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 2).collect();

    // (c) small CNN.
    let small = BackboneSpec {
        architecture: Architecture::SmallCnn,
        weights: None,
        alpha: None,
        widths: Some(vec![32, 64, 128, 256]),
    };
    let mut cnn = model(small, 96);
    let x = images(96);
    // Inference, as Keras's `model(x, training=False)`: batch norms folded into the convolutions
    // (TensorFlow's graph optimiser fuses them too), as evaluation and prediction run.
    let folding = cnn.inference_folding().expect("fold");
    bench.row("(c) small CNN 96x96, forward", |backend| {
        cnn.forward_inference_on(backend, 0, &x, &folding).expect("forward");
    });
    let mut opt = phase(&mut cnn, &["all"], true);
    bench.row("(c) small CNN 96x96, training step", |backend| {
        train_step(&cnn, &mut opt, LossKind::Binary, &x, &labels, &mut ctx(backend, true, true)).expect("step");
    });
    drop(cnn);

    // (d) MobileNetV2.
    let mobilenet =
        BackboneSpec { architecture: Architecture::MobilenetV2, weights: None, alpha: Some(1.0), widths: None };
    let mut net = model(mobilenet, 160);
    let x = images(160);
    frozen_and_full(&bench, "(d) MobileNetV2", &mut net, &x, &labels);

    // (e) EfficientNet-Lite0.
    let lite0 =
        BackboneSpec { architecture: Architecture::EfficientnetLite0, weights: None, alpha: None, widths: None };
    frozen_and_full(&bench, "(e) EfficientNet-Lite0", &mut model(lite0, 160), &x, &labels);

    // A frozen-backbone epoch: the backbone every step vs the head on cached features (the
    // cache is built once per phase; its cost is one backbone pass per image, shown apart).
    if !bench.filter.is_empty() && !"feature cache".contains(&bench.filter) {
        return;
    }
    let mut opt = phase(&mut net, &["head"], false);
    let end = net.cacheable_prefix().expect("head-only phase is cacheable");
    let steps = EPOCH_IMAGES / BATCH;
    let mut backbone_epoch = || {
        for _ in 0..steps {
            train_step(&net, &mut opt, LossKind::Binary, &x, &labels, &mut ctx(Backend::Fast, true, false))
                .expect("step");
        }
    };
    let plain = bench.time_ms(&mut backbone_epoch);
    let t = Instant::now();
    let feats = net.forward_prefix(end, &x, &mut ctx(Backend::Fast, false, false)).expect("features");
    let cache_batch_ms = t.elapsed().as_secs_f64() * 1e3;
    let cached = Tensor::cat(&vec![feats; steps], 0).expect("cache"); // [EPOCH_IMAGES, 1280]
    let order: Vec<u32> = (0..EPOCH_IMAGES as u32).rev().collect();
    let mut opt = phase(&mut net, &["head"], false);
    let cached_epoch = bench.time_ms(|| {
        for chunk in order.chunks(BATCH) {
            let idx = Tensor::new(chunk, &Device::Cpu).expect("idx");
            let f = cached.index_select(&idx, 0).expect("select");
            train_step_from(&net, end, &mut opt, LossKind::Binary, &f, &labels, &mut ctx(Backend::Fast, true, false))
                .expect("step");
        }
    });
    println!(
        "\nMobileNetV2 160, frozen backbone, epoch of {EPOCH_IMAGES} images: running the backbone {plain:.1} ms, \
         on cached features {cached_epoch:.2} ms: 1/{:.0} (building the cache: {:.1} ms, once per phase)",
        plain / cached_epoch,
        cache_batch_ms * steps as f64
    );
}
