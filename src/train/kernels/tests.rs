//! Each op against candle's own op (forward and autograd) where candle has one, and against naive
//! loops and finite differences where it does not.

use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{conv2d, depthwise_conv2d, max_pool2d, Axis, Pad, SamePadding};

/// TensorFlow's "same" padding of a `k` x `k` window at stride `s` over an `h` x `w` input.
fn tf_same(h: usize, w: usize, k: usize, s: usize) -> Pad {
    Pad::same(k, s, h, w, SamePadding::TensorFlow)
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn rand_t(dims: &[usize], seed: u64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(rand_vec(n, seed), dims, &Device::Cpu).unwrap()
}

/// Distinct values (a shuffled ramp), so that max-pool windows have no ties.
fn distinct_t(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - n as f32 * 0.005).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[track_caller]
fn assert_close(ours: &Tensor, reference: &Tensor, tol: f32, what: &str) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shapes differ");
    let (a, b) = (to_vec(ours), to_vec(reference));
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol * scale, "{what}: max abs difference {worst} (scale {scale})");
}

/// `sum(y * r)` for a fixed random `r`: its gradient with respect to `y` is `r`.
fn loss(y: &Tensor, seed: u64) -> Tensor {
    let r = rand_t(y.dims(), seed);
    (y * r).unwrap().sum_all().unwrap()
}

/// Gradients of `loss(f(x, w))` for tracked `x` and `w`.
fn grads(f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>, x: &Tensor, w: &Tensor) -> (Tensor, Tensor, Tensor) {
    try_grads(f, x, w).unwrap()
}

fn try_grads(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (xv, wv) = (Var::from_tensor(x)?, Var::from_tensor(w)?);
    let y = f(xv.as_tensor(), wv.as_tensor())?;
    let g = loss(&y, 99).backward()?;
    let (dx, dw) = (g.get(xv.as_tensor()).expect("dx").clone(), g.get(wv.as_tensor()).expect("dw").clone());
    Ok((y, dx, dw))
}

/// Naive grouped convolution with explicit top/left padding and output size.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    groups: usize,
    pt: usize,
    pl: usize,
    ho: usize,
    wo: usize,
) -> Tensor {
    let (n, ci, h, wd) = x.dims4().unwrap();
    let (co, cig, kh, kw) = w.dims4().unwrap();
    assert_eq!(cig * groups, ci);
    let (xs, ws) = (to_vec(x), to_vec(w));
    let cog = co / groups;
    let mut y = vec![0.0f32; n * co * ho * wo];
    for b in 0..n {
        for o in 0..co {
            let g = o / cog;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0.0f64;
                    for c in 0..cig {
                        let cin = g * cig + c;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky) as isize - pt as isize;
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    let xv = xs[((b * ci + cin) * h + iy as usize) * wd + ix as usize];
                                    acc += (xv * ws[((o * cig + c) * kh + ky) * kw + kx]) as f64;
                                }
                            }
                        }
                    }
                    y[((b * co + o) * ho + oy) * wo + ox] = acc as f32;
                }
            }
        }
    }
    Tensor::from_vec(y, (n, co, ho, wo), &Device::Cpu).unwrap()
}

fn naive_max_pool(x: &Tensor, k: usize, s: usize, padding: Pad) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let (ay, ax) = (Axis::along(true, h, k, s, padding).unwrap(), Axis::along(false, w, k, s, padding).unwrap());
    let xs = to_vec(x);
    let mut y = Vec::new();
    for p in 0..n * c {
        for oy in 0..ay.out {
            for ox in 0..ax.out {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * s + ky) as isize - ay.pad as isize;
                        let ix = (ox * s + kx) as isize - ax.pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            m = m.max(xs[(p * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                y.push(m);
            }
        }
    }
    Tensor::from_vec(y, (n, c, ay.out, ax.out), &Device::Cpu).unwrap()
}

/// Central finite differences of `loss(f(.))` at a few coordinates of `t`, against `analytic`.
#[track_caller]
fn check_fd(f: &dyn Fn(&Tensor) -> Tensor, t: &Tensor, analytic: &Tensor, what: &str) {
    let base = to_vec(t);
    let an = to_vec(analytic);
    // The loss is summed in f64 so that rounding does not swamp the difference quotient; max-pool
    // inputs are at least 0.01 apart (distinct_t), so the step never crosses a kink.
    let eps = 1e-3f32;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let eval = |v: &[f32]| -> f64 {
        let tt = Tensor::from_vec(v.to_vec(), t.dims(), &Device::Cpu).unwrap();
        let y = f(&tt);
        let r = to_vec(&rand_t(y.dims(), 99));
        to_vec(&y).iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    for _ in 0..24 {
        let i = rng.gen_range(0..base.len());
        let mut v = base.clone();
        v[i] = base[i] + eps;
        let up = eval(&v);
        v[i] = base[i] - eps;
        let down = eval(&v);
        let num = ((up - down) / (2.0 * eps as f64)) as f32;
        assert!(
            (num - an[i]).abs() <= 2e-2 * (1.0 + an[i].abs()),
            "{what}[{i}]: finite difference {num}, analytic {}",
            an[i]
        );
    }
}

/// (batch, in channels, height, width, out channels, kernel, stride, padding)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

const CONV_CASES: &[ConvCase] = &[
    (2, 3, 7, 9, 4, 3, 1, 1),
    (1, 5, 8, 8, 6, 3, 2, 1),
    (3, 4, 11, 6, 5, 1, 1, 0),
    (2, 3, 9, 9, 2, 1, 2, 0),
    (2, 2, 10, 7, 3, 3, 2, 0),
    (1, 3, 5, 5, 4, 5, 1, 2),
    (1, 32, 40, 40, 8, 3, 1, 1),  // batch 1, several im2col tiles
    (3, 32, 33, 31, 8, 3, 2, 1),  // odd sizes, several tiles, stride 2
    (2, 40, 12, 12, 16, 1, 1, 0), // 1x1 without im2col
    (2, 40, 9, 22, 10, 3, 1, 1),  // direct kernel: tiles of 11
    (1, 16, 6, 7, 37, 3, 1, 1),   // direct kernel: 32-channel blocks and a partial one, batch 1
    (2, 8, 21, 23, 9, 3, 2, 1),   // direct kernel at stride 2 (dX by col2im)
];

#[test]
fn conv2d_matches_candle_forward_and_gradients() {
    for (i, &(n, ci, h, w, co, k, s, p)) in CONV_CASES.iter().enumerate() {
        let x = rand_t(&[n, ci, h, w], i as u64);
        let wt = rand_t(&[co, ci, k, k], 100 + i as u64);
        let (y, dx, dw) = grads(&|x, w| conv2d(x, w, s, Pad::uniform(p)), &x, &wt);
        assert_close(&y, &x.conv2d(&wt, p, s, 1, 1).unwrap(), 1e-5, &format!("conv case {i} forward"));
        let f = |x: &Tensor, w: &Tensor| conv2d(x, w, s, Pad::uniform(p));
        check_fd(&|x| f(x, &wt).unwrap(), &x, &dx, &format!("conv case {i} dx (finite differences)"));
        check_fd(&|w| f(&x, w).unwrap(), &wt, &dw, &format!("conv case {i} dw (finite differences)"));
        // candle's autograd, where it works (its conv2d backward fails on some stride-2 shapes
        // with a shape mismatch from conv_transpose2d).
        if let Ok((_, dxr, dwr)) = try_grads(&|x, w| x.conv2d(w, p, s, 1, 1), &x, &wt) {
            assert_close(&dx, &dxr, 1e-4, &format!("conv case {i} dx"));
            assert_close(&dw, &dwr, 1e-4, &format!("conv case {i} dw"));
        } else {
            assert_eq!(s, 2, "candle's conv2d backward failed at stride 1");
        }
    }
}

#[test]
fn conv2d_tf_same_matches_explicit_padding() {
    // (batch, in, h, w, out, kernel, stride)
    for (i, &(n, ci, h, w, co, k, s)) in [
        (2, 3, 8, 8, 4, 3, 2),
        (1, 3, 7, 9, 5, 3, 2),
        (2, 4, 6, 5, 3, 3, 1),
        (2, 3, 8, 6, 4, 1, 2),
        (1, 2, 9, 8, 3, 5, 2),
    ]
    .iter()
    .enumerate()
    {
        let x = rand_t(&[n, ci, h, w], 10 + i as u64);
        let wt = rand_t(&[co, ci, k, k], 20 + i as u64);
        let same = tf_same(h, w, k, s);
        let (ay, ax) = (Axis::along(true, h, k, s, same).unwrap(), Axis::along(false, w, k, s, same).unwrap());
        assert_eq!((ay.out, ax.out), (h.div_ceil(s), w.div_ceil(s)));
        let explicit = |x: &Tensor, w: &Tensor| {
            let pb = ((ay.out - 1) * s + k).saturating_sub(h) - ay.pad;
            let pr = ((ax.out - 1) * s + k).saturating_sub(x.dim(3)?) - ax.pad;
            let _ = w;
            x.pad_with_zeros(2, ay.pad, pb)?.pad_with_zeros(3, ax.pad, pr)?.conv2d(w, 0, s, 1, 1)
        };
        let (y, dx, dw) = grads(&|x, w| conv2d(x, w, s, same), &x, &wt);
        let (yr, dxr, dwr) = grads(&explicit, &x, &wt);
        assert_close(&y, &yr, 1e-5, &format!("same case {i} forward"));
        assert_close(
            &y,
            &naive_conv(&x, &wt, s, 1, ay.pad, ax.pad, ay.out, ax.out),
            1e-5,
            &format!("same case {i} naive"),
        );
        assert_close(&dx, &dxr, 1e-4, &format!("same case {i} dx"));
        assert_close(&dw, &dwr, 1e-4, &format!("same case {i} dw"));
    }
    // Stride 2, even input, 3x3: TF pads bottom/right only.
    let a = Axis::along(true, 8, 3, 2, tf_same(8, 8, 3, 2)).unwrap();
    assert_eq!((a.pad, a.out), (0, 4));
    let a = Axis::along(true, 7, 3, 2, tf_same(7, 7, 3, 2)).unwrap();
    assert_eq!((a.pad, a.out), (1, 4));
}

#[test]
fn frozen_input_gets_no_gradient() {
    let x = rand_t(&[2, 3, 6, 6], 1);
    let w = Var::from_tensor(&rand_t(&[4, 3, 3, 3], 2)).unwrap();
    let y = conv2d(&x, w.as_tensor(), 1, Pad::uniform(1)).unwrap();
    let g = loss(&y, 3).backward().unwrap();
    assert!(g.get(&x).is_none());
    let wv = Var::from_tensor(&rand_t(&[4, 3, 3, 3], 2)).unwrap();
    let yr = x.conv2d(wv.as_tensor(), 1, 1, 1, 1).unwrap();
    let gr = loss(&yr, 3).backward().unwrap();
    assert_close(g.get(w.as_tensor()).unwrap(), gr.get(wv.as_tensor()).unwrap(), 1e-4, "dw with frozen input");

    // And a frozen kernel: only dX.
    let xv = Var::from_tensor(&x).unwrap();
    let wf = rand_t(&[3, 1, 3, 3], 4);
    let y = depthwise_conv2d(xv.as_tensor(), &wf, 2, tf_same(6, 6, 3, 2)).unwrap();
    let g = loss(&y, 5).backward().unwrap();
    assert!(g.get(&wf).is_none());
    assert!(g.get(xv.as_tensor()).is_some());
}

// (batch, channels, height, width, kernel, stride, padding)
const DW_CASES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (2, 3, 7, 9, 3, 1, 1),
    (1, 4, 8, 8, 3, 2, 1),
    (2, 5, 11, 10, 3, 2, 0),
    (3, 2, 20, 37, 3, 1, 1), // rows longer than 16 lanes, with a tail
    (1, 1, 5, 70, 3, 1, 1),  // swept row by row (70 wide)
    (1, 2, 7, 131, 3, 2, 1), // stride 2 row by row (output 66 wide), odd width
    (1, 2, 7, 65, 3, 2, 1),  // output flat (33 wide), input gradient row by row (65 wide)
    (1, 3, 9, 9, 5, 1, 2),
    (2, 3, 10, 9, 5, 2, 2),
    (1, 2, 20, 37, 5, 1, 2), // 5x5 flat over rows longer than 16 lanes
    (1, 2, 6, 70, 5, 1, 2),  // 5x5 row by row (70 wide)
    (1, 2, 7, 140, 5, 2, 2), // 5x5 stride 2 row by row (output 70 wide)
    (2, 2, 6, 6, 1, 1, 0),
];

#[test]
fn depthwise_matches_grouped_conv_forward_and_gradients() {
    for (i, &(n, c, h, w, k, s, p)) in DW_CASES.iter().enumerate() {
        let x = rand_t(&[n, c, h, w], 30 + i as u64);
        let wt = rand_t(&[c, 1, k, k], 40 + i as u64);
        let (y, dx, dw) = grads(&|x, w| depthwise_conv2d(x, w, s, Pad::uniform(p)), &x, &wt);
        let (ay, ax) = (
            Axis::along(true, h, k, s, Pad::uniform(p)).unwrap(),
            Axis::along(false, w, k, s, Pad::uniform(p)).unwrap(),
        );
        assert_close(&y, &naive_conv(&x, &wt, s, c, p, p, ay.out, ax.out), 1e-5, &format!("dw case {i} naive"));
        let f = |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, s, Pad::uniform(p));
        check_fd(&|x| f(x, &wt).unwrap(), &x, &dx, &format!("dw case {i} dx (finite differences)"));
        check_fd(&|w| f(&x, w).unwrap(), &wt, &dw, &format!("dw case {i} dw (finite differences)"));
        // candle's grouped convolution, where its backward works (it fails on some stride-2
        // shapes with a shape mismatch in conv_transpose2d).
        let reference = try_grads(&|x, w| x.conv2d(w, p, s, 1, c), &x, &wt);
        if let Ok((yr, dxr, dwr)) = reference {
            assert_close(&y, &yr, 1e-5, &format!("dw case {i} forward"));
            assert_close(&dx, &dxr, 1e-4, &format!("dw case {i} dx"));
            assert_close(&dw, &dwr, 1e-4, &format!("dw case {i} dw"));
        }
    }
}

#[test]
fn depthwise_tf_same_matches_naive_and_finite_differences() {
    for (i, &(n, c, h, w, k, s)) in
        [(2, 3, 8, 8, 3, 2), (1, 2, 7, 10, 3, 2), (2, 3, 9, 6, 3, 1), (1, 2, 6, 7, 5, 2)].iter().enumerate()
    {
        let x = rand_t(&[n, c, h, w], 50 + i as u64);
        let wt = rand_t(&[c, 1, k, k], 60 + i as u64);
        let same = tf_same(h, w, k, s);
        let (ay, ax) = (Axis::along(true, h, k, s, same).unwrap(), Axis::along(false, w, k, s, same).unwrap());
        let f = |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, s, same);
        let (y, dx, dw) = grads(&f, &x, &wt);
        assert_close(
            &y,
            &naive_conv(&x, &wt, s, c, ay.pad, ax.pad, ay.out, ax.out),
            1e-5,
            &format!("dw same {i} forward"),
        );
        check_fd(&|x| f(x, &wt).unwrap(), &x, &dx, &format!("dw same {i} dx"));
        check_fd(&|w| f(&x, w).unwrap(), &wt, &dw, &format!("dw same {i} dw"));
    }
}

#[test]
fn conv2d_finite_differences() {
    let x = rand_t(&[2, 3, 7, 6], 70);
    let wt = rand_t(&[4, 3, 3, 3], 71);
    let f = |x: &Tensor, w: &Tensor| conv2d(x, w, 2, tf_same(7, 6, 3, 2));
    let (_, dx, dw) = grads(&f, &x, &wt);
    check_fd(&|x| f(x, &wt).unwrap(), &x, &dx, "conv dx");
    check_fd(&|w| f(&x, w).unwrap(), &wt, &dw, "conv dw");
}

#[test]
fn max_pool_matches_naive_and_finite_differences() {
    // (batch, channels, height, width, kernel, stride, padding)
    let cases: &[(usize, usize, usize, usize, usize, usize, Pad)] = &[
        (2, 3, 9, 9, 3, 2, Pad::uniform(0)),
        (1, 2, 10, 11, 3, 2, tf_same(10, 11, 3, 2)),
        (2, 2, 8, 8, 3, 2, tf_same(8, 8, 3, 2)),
        (2, 3, 7, 7, 3, 1, Pad::uniform(1)),
        (1, 2, 8, 6, 2, 2, Pad::uniform(0)),
        (2, 3, 9, 7, 2, 2, Pad::uniform(0)), // 2x2 tiling with an odd last row and column
        (2, 2, 7, 9, 2, 2, tf_same(7, 9, 2, 2)), // 2x2 with bottom/right padding: not a tiling
        (1, 2, 8, 6, 2, 2, tf_same(8, 6, 2, 2)), // ... unless no window reaches the padding
        (3, 2, 19, 40, 3, 2, Pad::uniform(1)),
    ];
    for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
        let x = distinct_t(&[n, c, h, w], 80 + i as u64);
        let xv = Var::from_tensor(&x).unwrap();
        let y = max_pool2d(xv.as_tensor(), k, s, p).unwrap();
        assert_close(&y, &naive_max_pool(&x, k, s, p), 0.0, &format!("pool case {i} forward"));
        let dx = loss(&y, 99).backward().unwrap().get(xv.as_tensor()).unwrap().clone();
        check_fd(&|x| max_pool2d(x, k, s, p).unwrap(), &x, &dx, &format!("pool case {i} dx"));
        if k == s && p == Pad::default() {
            // Forward only: candle 0.11.1's max-pool backward multiplies the gradient by the
            // window's share of maxima (1/k² with distinct values) where it should not scale it
            // (backprop.rs:371-374); the finite differences above are the reference.
            let yr = x.max_pool2d_with_stride(k, s).unwrap();
            assert_close(&y, &yr, 0.0, "pool vs candle");
        }
    }
}

/// Ties go to the first maximum in row-major window order, in both the 2x2 tiling path and the
/// general one (3x3 windows).
#[test]
fn max_pool_ties_go_to_the_first_maximum() {
    for (k, expected) in [
        (2, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        (3, {
            let mut v = vec![0.0; 16];
            v[0] = 1.0;
            v
        }),
    ] {
        let xv =
            Var::from_tensor(&Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let y = max_pool2d(xv.as_tensor(), k, k, Pad::uniform(0)).unwrap();
        let dx = y.sum_all().unwrap().backward().unwrap().get(xv.as_tensor()).unwrap().clone();
        assert_eq!(to_vec(&dx), expected, "{k}x{k}");
    }
}

#[test]
fn explicit_padding_matches_padded_reference() {
    let x = rand_t(&[2, 3, 9, 8], 90);
    let p = Pad { top: 0, bottom: 2, left: 1, right: 0 };
    let padded = x.pad_with_zeros(2, 0, 2).unwrap().pad_with_zeros(3, 1, 0).unwrap();
    let w = rand_t(&[4, 3, 3, 3], 91);
    assert_close(&conv2d(&x, &w, 2, p).unwrap(), &padded.conv2d(&w, 0, 2, 1, 1).unwrap(), 1e-5, "explicit conv");
    let f = |x: &Tensor, w: &Tensor| conv2d(x, w, 2, p);
    let (_, dx, dw) = grads(&f, &x, &w);
    check_fd(&|x| f(x, &w).unwrap(), &x, &dx, "explicit conv dx");
    check_fd(&|w| f(&x, w).unwrap(), &w, &dw, "explicit conv dw");
    let wd = rand_t(&[3, 1, 3, 3], 92);
    assert_close(
        &depthwise_conv2d(&x, &wd, 1, p).unwrap(),
        &padded.conv2d(&wd, 0, 1, 1, 3).unwrap(),
        1e-5,
        "explicit depthwise",
    );
    let f = |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, 2, p);
    let (_, dx, dw) = grads(&f, &x, &wd);
    check_fd(&|x| f(x, &wd).unwrap(), &x, &dx, "explicit depthwise dx");
    check_fd(&|w| f(&x, w).unwrap(), &wd, &dw, "explicit depthwise dw");
    let xd = distinct_t(&[2, 3, 9, 8], 93);
    let xv = Var::from_tensor(&xd).unwrap();
    let y = max_pool2d(xv.as_tensor(), 3, 2, p).unwrap();
    assert_eq!(y.dims(), &[2, 3, 5, 4]);
    let dx = loss(&y, 99).backward().unwrap().get(xv.as_tensor()).unwrap().clone();
    check_fd(&|x| max_pool2d(x, 3, 2, p).unwrap(), &xd, &dx, "explicit pool dx");
    assert!(conv2d(&x, &w, 1, Pad { top: 3, bottom: 0, left: 0, right: 0 }).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    let x = rand_t(&[1, 3, 5, 5], 1);
    assert!(conv2d(&x, &rand_t(&[4, 2, 3, 3], 2), 1, Pad::uniform(1)).is_err());
    assert!(depthwise_conv2d(&x, &rand_t(&[4, 1, 3, 3], 2), 1, Pad::uniform(1)).is_err());
    assert!(conv2d(&x, &rand_t(&[4, 3, 7, 7], 2), 1, Pad::uniform(0)).is_err());
    assert!(max_pool2d(&x.to_dtype(candle_core::DType::F64).unwrap(), 3, 2, tf_same(5, 5, 3, 2)).is_err());
}

/// The fused bias + activation ops against the kernel followed by candle's own bias add and
/// activation: forward, and the gradients of the input, the kernel and the bias.
#[test]
fn fused_bias_and_activation_match_separate_ops() {
    use super::{conv2d_fused, depthwise_conv2d_fused, Act};
    let stock_act = |y: Tensor, act: Act| match act {
        Act::Identity => Ok(y),
        Act::Relu => y.relu(),
        Act::Relu6 => y.clamp(0f32, 6f32),
    };
    // Inputs scaled so that outputs land on both sides of 0 and of 6.
    // 8 channels: the 3x3 convolution has K = 72, which takes the direct kernel (on AVX-512).
    let x = (rand_t(&[2, 8, 9, 8], 1) * 4.0).unwrap();
    let cases: [(&str, Vec<usize>, usize, Pad); 4] = [
        ("conv3x3 s1", vec![5, 8, 3, 3], 1, Pad::uniform(1)),
        ("conv1x1", vec![5, 8, 1, 1], 1, Pad::uniform(0)),
        ("depthwise s2", vec![8, 1, 3, 3], 2, tf_same(9, 8, 3, 2)),
        ("depthwise s1", vec![8, 1, 3, 3], 1, Pad { top: 0, bottom: 2, left: 1, right: 0 }),
    ];
    for (name, wdims, stride, padding) in cases {
        let depthwise = name.starts_with("depthwise");
        let w = rand_t(&wdims, 2);
        let b = rand_t(&[wdims[0]], 3);
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            for with_bias in [true, false] {
                let what = format!("{name} {act:?} bias {with_bias}");
                let (xv, wv, bv) =
                    (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
                let bias = with_bias.then(|| bv.as_tensor());
                let fused = if depthwise {
                    depthwise_conv2d_fused(xv.as_tensor(), wv.as_tensor(), bias, act, stride, padding)
                } else {
                    conv2d_fused(xv.as_tensor(), wv.as_tensor(), bias, act, stride, padding)
                }
                .unwrap();
                let plain = if depthwise {
                    depthwise_conv2d(xv.as_tensor(), wv.as_tensor(), stride, padding)
                } else {
                    conv2d(xv.as_tensor(), wv.as_tensor(), stride, padding)
                }
                .unwrap();
                let plain = match bias {
                    Some(b) => plain.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap(),
                    None => plain,
                };
                let separate = stock_act(plain, act).unwrap();
                assert_close(&fused, &separate, 1e-5, &format!("{what} forward"));
                let gf = loss(&fused, 7).backward().unwrap();
                let gs = loss(&separate, 7).backward().unwrap();
                for (v, label) in [(&xv, "dx"), (&wv, "dw")] {
                    assert_close(
                        gf.get(v.as_tensor()).unwrap(),
                        gs.get(v.as_tensor()).unwrap(),
                        1e-4,
                        &format!("{what} {label}"),
                    );
                }
                if with_bias {
                    assert_close(
                        gf.get(bv.as_tensor()).unwrap(),
                        gs.get(bv.as_tensor()).unwrap(),
                        1e-4,
                        &format!("{what} dbias"),
                    );
                }
            }
        }
    }
}

/// Planes with no columns but enough padding for an output (a client cannot send such an image,
/// but a layer can be given one): every op runs forward and backward without panicking, and the
/// input's gradient is empty.
#[test]
fn zero_width_planes_with_padding_run_forward_and_backward() {
    let pad = Pad { top: 1, bottom: 1, left: 1, right: 2 };
    let x = Var::from_tensor(&Tensor::zeros((2, 3, 4, 0), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    let dw = Var::from_tensor(&rand_t(&[3, 1, 3, 3], 1)).unwrap();
    let cw = Var::from_tensor(&rand_t(&[4, 3, 3, 3], 2)).unwrap();
    let outs = [
        depthwise_conv2d(x.as_tensor(), dw.as_tensor(), 1, pad).unwrap(),
        conv2d(x.as_tensor(), cw.as_tensor(), 1, pad).unwrap(),
        max_pool2d(x.as_tensor(), 3, 1, pad).unwrap(),
    ];
    for y in outs {
        assert_eq!(y.dims()[3], 1, "one output column from the padding alone");
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).expect("dx").dims(), &[2, 3, 4, 0]);
    }
    // Enough channels for Winograd (dX and dW) and the direct kernel, and a batch smaller than
    // the core count, where they split each image's output channels across the threads.
    for (h, w, stride) in [(0, 8, 1), (8, 0, 1), (0, 0, 1), (0, 8, 2), (8, 0, 2)] {
        let x =
            Var::from_tensor(&Tensor::zeros((1, 32, h, w), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let cw = Var::from_tensor(&rand_t(&[32, 32, 3, 3], 3)).unwrap();
        let y = conv2d(x.as_tensor(), cw.as_tensor(), stride, Pad::uniform(2)).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).expect("dx").dims(), &[1, 32, h, w], "{h}x{w} stride {stride}");
        assert_eq!(g.get(cw.as_tensor()).expect("dw").dims(), &[32, 32, 3, 3]);
    }
}
