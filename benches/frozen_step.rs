//! What freezing buys: milliseconds per training step of the small CNN with only the head
//! trainable (the backbone runs forward without a graph) versus everything trainable, next to a
//! plain forward pass. Run with `cargo bench --bench frozen_step`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use tanuki::train::bench::{rng, train_step, ForwardCtx, LossKind, Model, Optimizer, Stream};
use tanuki::train::*;

const BATCH: usize = 32;
const SIDE: u32 = 96;
const WARMUP: usize = 2;
const ITERS: usize = 5;

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<f64> = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[ITERS / 2]
}

fn main() {
    tanuki::train::configure_kernels(tanuki::config::KernelArgs::from_env().settings()).expect("first kernel settings");
    let model_spec = ModelSpec {
        backbone: BackboneSpec {
            architecture: Architecture::SmallCnn,
            weights: None,
            alpha: None,
            widths: Some(vec![32, 64, 128, 256]),
        },
        head: HeadSpec::default(),
    };
    let input = InputSpec { height: SIDE, width: SIDE, ..InputSpec::default() };
    let mut model = Model::new(&model_spec, &input, 1).expect("model");
    let mut draws = rng(1, Stream::Augment, 0, 0, 0);
    let x = {
        use rand::Rng;
        let n = BATCH * 3 * (SIDE * SIDE) as usize;
        let v: Vec<f32> = (0..n).map(|_| draws.gen_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, (BATCH, 3, SIDE as usize, SIDE as usize), &Device::Cpu).expect("input")
    };
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 2).collect();
    let adam = OptimizerSpec {
        kind: OptimizerKind::Adam,
        learning_rate: 1e-4,
        learning_rates: None,
        beta1: None,
        beta2: None,
        epsilon: None,
        momentum: None,
    };
    let ctx = |grad| ForwardCtx::new(grad, false, grad, rng(1, Stream::Dropout, 0, 0, 0));

    let forward = median_ms(|| {
        model.forward(&x, &mut ctx(false)).expect("forward");
    });
    let step_ms = |model: &mut Model, selectors: &[&str]| {
        model.set_trainable(&selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut opt = Optimizer::new(&adam, &model.params).expect("optimizer");
        let execution = model.execution();
        let ms = median_ms(|| {
            train_step(model, &mut opt, LossKind::Binary, &x, &labels, &mut ctx(true)).expect("step");
        });
        (execution, ms)
    };
    let (head_exec, head) = step_ms(&mut model, &["head"]);
    let (all_exec, all) = step_ms(&mut model, &["all"]);

    println!("small_cnn widths 32/64/128/256, {SIDE}x{SIDE}, batch {BATCH}: median of {ITERS} after {WARMUP} warm-up");
    println!("{:<32} {:>10} {:>12} {:>12}", "", "ms/step", "x forward", "x head-only");
    println!("{:<32} {:>10.1} {:>12.2} {:>12.2}", "forward only (no graph)", forward, 1.0, forward / head);
    println!("{:<32} {:>10.1} {:>12.2} {:>12.2}", format!("head only ({head_exec})"), head, head / forward, 1.0);
    println!(
        "{:<32} {:>10.1} {:>12.2} {:>12.2}",
        format!("all trainable ({all_exec})"),
        all,
        all / forward,
        all / head
    );
}
