//! Side-by-side timings of tanuki's CPU kernels and candle's stock ops, in one run.
//!
//! `cargo bench --bench kernels` (about two minutes). Prints, per case, the median milliseconds
//! per call of ours and of candle's stock op, and their ratio. `benches/keras_kernels.py` times
//! the same cases in TensorFlow/Keras. Environment: `TANUKI_KERNEL_THREADS`,
//! `TANUKI_KERNEL_NO_AVX512=1`, `TANUKI_CONV_TILE_KIB`, `TANUKI_CONV_NO_DIRECT=1`, `TANUKI_CONV_NO_WINOGRAD=1` (as the service reads them, `tanuki --help`), and `BENCH_QUICK=1` (fewer runs), `BENCH_FILTER=substring` (only those cases),
//! `BENCH_NO_STOCK=1` (skip candle's ops, e.g. to profile ours), `BENCH_DEFAULT_MALLOC=1` (run
//! without `tanuki::process_env::TUNED_ENV`).

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor, Var};
use tanuki::train::bench as kernels;
use tanuki::train::bench::{Pad, SamePadding};

fn rand_t(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap()
}

/// Median milliseconds per call after one warm-up call; at least 3 and at most `max_runs`
/// runs, stopping early once `budget` is spent.
fn time_ms(max_runs: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < 3 || (runs.len() < max_runs && start.elapsed() < budget) {
        let t = Instant::now();
        f();
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

type Op = dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Forward only, or forward and backward with both inputs tracked. The backward pass starts
/// from the output itself (candle seeds it with ones), so no loss op is timed with the kernel.
fn step(op: &Op, x: &Var, w: &Var, backward: bool) {
    if backward {
        let y = op(x.as_tensor(), w.as_tensor()).unwrap();
        let g = y.backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some());
    } else {
        op(x.as_tensor(), w.as_tensor()).unwrap();
    }
}

struct Bench {
    /// Only the cases whose name contains this (`BENCH_FILTER`).
    filter: String,
    runs: usize,
    budget: Duration,
}

impl Bench {
    fn case(&self, name: &str, x_dims: &[usize], w_dims: &[usize], ours: &Op, stock: Option<&Op>) {
        let x = Var::from_tensor(&rand_t(x_dims)).unwrap();
        let w = Var::from_tensor(&rand_t(w_dims)).unwrap();
        if !self.filter.is_empty() && !name.contains(&self.filter) {
            return;
        }
        for backward in [false, true] {
            let label = format!("{name} {}", if backward { "fwd+bwd" } else { "fwd" });
            let t_ours = time_ms(self.runs, self.budget, || step(ours, &x, &w, backward));
            match stock.filter(|_| std::env::var_os("BENCH_NO_STOCK").is_none()) {
                Some(stock) => {
                    // The slow stock ops get fewer runs.
                    let t_stock = time_ms(self.runs, self.budget, || step(stock, &x, &w, backward));
                    println!("| {label:<44} | {t_ours:>9.2} | {t_stock:>9.2} | {:>7.1}x |", t_stock / t_ours);
                }
                None => println!("| {label:<44} | {t_ours:>9.2} | {:>9} | {:>8} |", "-", "-"),
            }
        }
    }
}

fn gemm_gflops(n: usize) -> f64 {
    let a = rand_t(&[n, n]);
    let b = rand_t(&[n, n]);
    let ms = time_ms(10, Duration::from_secs(3), || {
        a.matmul(&b).unwrap();
    });
    2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9
}

fn main() {
    tanuki::train::configure_kernels(tanuki::config::KernelArgs::from_env().settings()).expect("first kernel settings");
    // The service's allocator and thread-pool settings (read at start-up only), as it runs with
    // them: re-run with them unless told not to.
    if std::env::var_os("BENCH_DEFAULT_MALLOC").is_none() {
        tanuki::process_env::reexec_with_tuned_env();
    }
    println!(
        "glibc malloc: MALLOC_MMAP_THRESHOLD_={}, MALLOC_ARENA_MAX={}; CANDLE_BARRIER_POOL_SPIN_LIMIT={} (BENCH_DEFAULT_MALLOC=1 runs without the tuning)",
        std::env::var("MALLOC_MMAP_THRESHOLD_").unwrap_or_else(|_| "default".into()),
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "default".into()),
        std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").unwrap_or_else(|_| "default".into())
    );
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let bench = Bench {
        filter: std::env::var("BENCH_FILTER").unwrap_or_default(),
        runs: if quick { 3 } else { 11 },
        budget: Duration::from_secs(if quick { 1 } else { 4 }),
    };
    println!(
        "tanuki kernels: {} threads, AVX-512 path: {}; candle matmul 2048^3: {:.0} GFLOP/s",
        kernels::threads(),
        kernels::has_avx512(),
        gemm_gflops(2048)
    );
    println!("batch 32, f32, NCHW; milliseconds per call, median\n");
    println!("| {:<44} | {:>9} | {:>9} | {:>8} |", "case", "tanuki", "candle", "speed-up");
    println!("|{:-<46}|{:-<11}|{:-<11}|{:-<10}|", "", "", "", "");

    let conv = |s: usize| move |x: &Tensor, w: &Tensor| kernels::conv2d(x, w, s, Pad::uniform(1));
    let stock_conv = |s: usize| move |x: &Tensor, w: &Tensor| x.conv2d(w, 1, s, 1, 1);
    bench.case("conv3x3 56x56 64->64 s1", &[32, 64, 56, 56], &[64, 64, 3, 3], &conv(1), Some(&stock_conv(1)));
    bench.case("conv3x3 56x56 64->64 s2", &[32, 64, 56, 56], &[64, 64, 3, 3], &conv(2), None);
    bench.case("conv3x3 14x14 256->256 s1", &[32, 256, 14, 14], &[256, 256, 3, 3], &conv(1), Some(&stock_conv(1)));
    let conv1 = |x: &Tensor, w: &Tensor| kernels::conv2d(x, w, 1, Pad::uniform(0));
    let stock1 = |x: &Tensor, w: &Tensor| x.conv2d(w, 0, 1, 1, 1);
    bench.case("conv1x1 28x28 192->64", &[32, 192, 28, 28], &[64, 192, 1, 1], &conv1, Some(&stock1));

    let dw = |s: usize| move |x: &Tensor, w: &Tensor| kernels::depthwise_conv2d(x, w, s, Pad::uniform(1));
    let stock_dw = |s: usize| move |x: &Tensor, w: &Tensor| x.conv2d(w, 1, s, 1, x.dim(1)?);
    bench.case("depthwise3x3 112x112x96 s1", &[32, 96, 112, 112], &[96, 1, 3, 3], &dw(1), Some(&stock_dw(1)));
    bench.case(
        "depthwise3x3 112x112x96 s2 (TF same)",
        &[32, 96, 112, 112],
        &[96, 1, 3, 3],
        &|x, w| kernels::depthwise_conv2d(x, w, 2, Pad::same(3, 2, 112, 112, SamePadding::TensorFlow)),
        None,
    );
    bench.case("depthwise3x3 28x28x192 s1", &[32, 192, 28, 28], &[192, 1, 3, 3], &dw(1), Some(&stock_dw(1)));
    bench.case("depthwise3x3 28x28x192 s2", &[32, 192, 28, 28], &[192, 1, 3, 3], &dw(2), None);

    // Max-pool: candle can run 3x3/2 forward but not backward; w is unused.
    let pool =
        |x: &Tensor, _: &Tensor| kernels::max_pool2d(x, 3, 2, Pad::same(3, 2, 147, 147, SamePadding::TensorFlow));
    bench.case("maxpool3x3 s2 (TF same) 147x147x64", &[32, 64, 147, 147], &[1], &pool, None);
    if !"maxpool".contains(&bench.filter) && !bench.filter.is_empty() {
        return;
    }
    let x = rand_t(&[32, 64, 147, 147]);
    let ours = time_ms(bench.runs, bench.budget, || {
        kernels::max_pool2d(&x, 3, 2, Pad::uniform(0)).unwrap();
    });
    let stock = time_ms(bench.runs, bench.budget, || {
        x.max_pool2d_with_stride(3, 2).unwrap();
    });
    println!(
        "| {:<44} | {ours:>9.2} | {stock:>9.2} | {:>7.1}x |",
        "maxpool3x3 s2 (valid) 147x147x64 fwd",
        stock / ours
    );
}
