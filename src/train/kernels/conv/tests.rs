//! The direct kernel against im2col + GEMM on shapes that take each of its tile sizes
//! (on CPUs without AVX-512 there is nothing to compare: the GEMM path is all that runs).
use super::*;
use crate::train::kernels::SamePadding;

fn rand(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(worst <= 1e-5 * scale * 10.0, "{what}: worst difference {worst} (scale {scale})");
}

/// Forward (with `ep`), dX and dW of `g` on random data, by the direct kernel (or Winograd,
/// where it takes the shape) and by im2col + GEMM; `seed` picks the data.
fn compare(simd: pulp::x86::V4, g: &Geom, ep: &Epilogue<'_>, seed: u64, what: &str) {
    let x = rand(g.n * g.img_in(), seed);
    let wt = rand(g.co * g.k(), seed + 1000);
    let yd = forward_direct(simd, g, &x, &direct::Packed::new(&wt, g.co, &g.plane_geom(), ep), 0);
    let yg = forward_gemm(g, &x, &wt, ep);
    close(&yd, &yg, &format!("{what}: forward"));
    if g.winograd().is_some() {
        // `backward` below takes Winograd for these too (dX and dW).
        close(&forward(g, &x, &wt, ep), &yg, &format!("{what}: Winograd forward"));
    }
    let dy = rand(g.n * g.img_out(), seed + 2000);
    let (mut dwd, mut dwg) = (vec![0.0; g.co * g.k()], vec![0.0; g.co * g.k()]);
    let dxd = backward(g, &x, &wt, &dy, true, Some(&mut dwd), 0);
    let dxg = backward_gemm(g, &x, &wt, &dy, true, Some(&mut dwg), 0);
    close(&dxd, &dxg, &format!("{what}: dx"));
    close(&dwd, &dwg, &format!("{what}: dw"));
}

#[test]
fn direct_kernel_matches_gemm_on_every_branch() {
    let Some(simd) = direct::simd() else { return };
    // (batch, in, h, w, out, kernel, stride, padding, what it takes)
    let cases = [
        (2, 40, 22, 21, 10, 3, 1, 1, "rows in tiles of 11, a partial channel block"),
        (1, 8, 5, 48, 12, 3, 1, 1, "rows in tiles of 12, batch 1 split by channels"),
        (2, 16, 9, 7, 37, 3, 1, 1, "a 7-pixel tile, 32-channel blocks and a partial one"),
        (3, 8, 50, 45, 9, 3, 2, 1, "stride 2, tiles of 12 and 11"),
        (2, 24, 15, 15, 20, 3, 2, 0, "stride 2, no padding"),
        (2, 70, 6, 26, 16, 1, 2, 0, "1x1 stride 2"),
        (1, 12, 11, 30, 7, 5, 1, 2, "5x5"),
    ];
    for (i, &(n, ci, h, w, co, k, s, p, what)) in cases.iter().enumerate() {
        let xl = Layout::contiguous((n, ci, h, w));
        let wl = Layout::contiguous((co, ci, k, k));
        let g = Geom::new(&xl, &wl, s, Pad::uniform(p)).unwrap();
        assert!(g.direct_kernel().is_some(), "{what}: takes the direct kernel");
        let bias = rand(co, 200 + i as u64);
        compare(simd, &g, &Epilogue { bias: Some(&bias), act: Act::Relu6 }, i as u64, what);
    }
}

/// Random geometries (fixed seed): batch 1-3, 1-40 channels either way, planes from 1 to 30
/// wide, kernels 1-5, strides 1-2, every padding kind; the direct kernel wherever it takes
/// the shape, against im2col + GEMM.
#[test]
fn direct_kernel_matches_gemm_on_random_shapes() {
    let Some(simd) = direct::simd() else { return };
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = |n: usize| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as usize % n
    };
    let mut ran = 0;
    for i in 0..200 {
        let (n, ci, co, k, st) = (1 + next(3), 1 + next(40), 1 + next(40), 1 + next(5), 1 + next(2));
        let (h, w) = (k + next(24), k + next(30));
        let padding = match next(3) {
            0 => Pad::uniform(next(k)),
            1 => Pad::same(k, st, h, w, SamePadding::TensorFlow),
            _ => Pad { top: next(k), bottom: next(k), left: next(k), right: next(k) },
        };
        let (xl, wl) = (Layout::contiguous((n, ci, h, w)), Layout::contiguous((co, ci, k, k)));
        let Ok(g) = Geom::new(&xl, &wl, st, padding) else { continue };
        if g.direct_kernel().is_none() {
            continue;
        }
        ran += 1;
        let what = format!("case {i}: n {n} ci {ci} {h}x{w} co {co} k {k} s {st} {padding:?}");
        compare(simd, &g, &Epilogue::default(), 100 + i as u64, &what);
    }
    assert!(ran > 50, "only {ran} shapes took the direct kernel");
}

/// Winograd's F(2x2, 3x3) against im2col + GEMM, forward (with an epilogue), dX and dW, on odd and
/// even planes, every padding kind, a batch smaller than the core count, bands of several
/// rows and one that ends mid-row, and planes smaller than a tile.
#[test]
fn winograd_matches_gemm() {
    let Some(simd) = winograd::simd() else { return };
    let cases = [
        (2, 40, 22, 21, 20, Pad::uniform(1), Act::Relu6, "odd width, 'same'"),
        (3, 16, 15, 16, 33, Pad::uniform(0), Act::Relu, "'valid', odd output"),
        (1, 24, 9, 13, 17, Pad::same(3, 1, 9, 13, SamePadding::TensorFlow), Act::Identity, "batch 1 split by channels"),
        (2, 16, 7, 40, 16, Pad { top: 2, bottom: 0, left: 0, right: 2 }, Act::Identity, "asymmetric padding"),
        (2, 64, 30, 30, 64, Pad::uniform(1), Act::Relu, "64 channels, several bands"),
        (2, 300, 14, 14, 20, Pad::uniform(1), Act::Identity, "a band of one microkernel pass"),
        (2, 16, 1, 2, 16, Pad::uniform(1), Act::Relu6, "a plane smaller than a tile"),
    ];
    for (i, &(n, ci, h, w, co, padding, act, what)) in cases.iter().enumerate() {
        let xl = Layout::contiguous((n, ci, h, w));
        let wl = Layout::contiguous((co, ci, 3, 3));
        let g = Geom::new(&xl, &wl, 1, padding).unwrap();
        assert!(g.winograd().is_some(), "{what}: takes Winograd");
        let x = rand(g.n * g.img_in(), 300 + i as u64);
        let wt = rand(g.co * g.k(), 400 + i as u64);
        let bias = rand(co, 500 + i as u64);
        let ep = Epilogue { bias: Some(&bias), act };
        let yw = forward_winograd(simd, &g, &x, &winograd_plan(&g, &wt, &ep), 0);
        close(&yw, &forward_gemm(&g, &x, &wt, &ep), &format!("{what}: forward"));
        let dy = rand(g.n * g.img_out(), 600 + i as u64);
        let (mut dww, mut dwg) = (vec![0.0; g.co * g.k()], vec![0.0; g.co * g.k()]);
        let dxw = backward(&g, &x, &wt, &dy, true, Some(&mut dww), 0);
        close(&dxw, &backward_gemm(&g, &x, &wt, &dy, true, Some(&mut dwg), 0), &format!("{what}: dx"));
        close(&dww, &dwg, &format!("{what}: dw"));
    }
}
