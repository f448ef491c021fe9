//! The direct kernel's side of the dense convolution (`super::direct`): threads, the dX
//! convolution at stride 1, and dW's per-thread buffers. x86-64 only.

use std::ops::Range;

use super::{
    backward_gemm, direct, par_items, par_items_zeroed, phase_image, phase_image_into, threads, winograd,
    zeroed_with_room, Bufs, Geom,
};

/// [`forward`] by the direct kernel.
/// Returns the output with room for `extra` more values after it.
pub(super) fn forward_direct(
    simd: pulp::x86::V4,
    g: &Geom,
    x: &[f32],
    packed: &direct::Packed,
    extra: usize,
) -> Vec<f32> {
    // A thread given 4 channels would still compute a tile of 32: whole tiles per thread.
    forward_split(g, x, extra, direct::TILE_C, |ximg, chans, yrows, b: &mut Bufs| {
        phase_image(g, ximg, &mut b.xq, &mut b.row, packed.xq_len());
        packed.image(simd, &b.xq, chans, yrows);
    })
}

/// [`forward`] by Winograd's F(2x2, 3x3) (3x3 stride-1 convolutions).
/// Returns the output with room for `extra` more values after it.
pub(super) fn forward_winograd(
    simd: pulp::x86::V4,
    g: &Geom,
    x: &[f32],
    plan: &winograd::Plan,
    extra: usize,
) -> Vec<f32> {
    forward_split(g, x, extra, 1, |ximg, chans, yrows, b: &mut winograd::Bufs| plan.image(simd, ximg, chans, yrows, b))
}

/// The transformed weights of `g` (3x3, stride 1; `w`: `[co][ci][3][3]`).
pub(super) fn winograd_plan(g: &Geom, w: &[f32], ep: &super::Epilogue<'_>) -> winograd::Plan {
    let ci = g.ci;
    winograd::Plan::new(&g.plane_geom(), g.co, |o, i, ky, kx| w[((o * ci + i) * 3 + ky) * 3 + kx], ep)
}

/// Runs `run(image, output channels, their output rows, scratch)` over the batch: images split
/// across the cores, or, when the batch is smaller than the core count, each image's output
/// channels in pieces of whole `block`s.
/// Returns the output with room for `extra` more values after it.
fn forward_split<S: Default>(
    g: &Geom,
    x: &[f32],
    extra: usize,
    block: usize,
    run: impl Fn(&[f32], Range<usize>, &mut [f32], &mut S) + Sync,
) -> Vec<f32> {
    let (img_in, img_out) = (g.img_in(), g.img_out());
    if img_out == 0 {
        // No output values (dX of an empty plane): nothing to split, nor to compute.
        return zeroed_with_room(0, extra);
    }
    if g.n >= threads() {
        return par_items_zeroed(g.n, img_out, extra, |imgs| {
            let mut b = S::default();
            while let Some((n, yimg)) = imgs.next_zeroed() {
                run(&x[n * img_in..][..img_in], 0..g.co, yimg, &mut b);
            }
        })
        .0;
    }
    let mut y = zeroed_with_room(g.n * img_out, extra);
    let per = g.co.div_ceil(threads()).next_multiple_of(block);
    for (n, yimg) in y.chunks_exact_mut(img_out).enumerate() {
        let ximg = &x[n * img_in..][..img_in];
        std::thread::scope(|scope| {
            for (t, yrows) in yimg.chunks_mut(per * g.p()).enumerate() {
                let run = &run;
                scope.spawn(move || run(ximg, t * per..((t + 1) * per).min(g.co), yrows, &mut S::default()));
            }
        });
    }
    y
}

/// The convolution whose output is this one's dX, at stride 1: dY, padded by `k - 1 - pad`,
/// correlated with the kernel flipped and its channels swapped ([`direct::Packed::transposed`]).
fn transposed(g: &Geom) -> Geom {
    debug_assert_eq!(g.s, 1);
    let (kh, kw) = (g.kh, g.kw);
    Geom {
        n: g.n,
        ci: g.co,
        h: g.ho,
        w: g.wo,
        co: g.ci,
        kh,
        kw,
        s: 1,
        pt: kh - 1 - g.pt,
        pl: kw - 1 - g.pl,
        ho: g.h,
        wo: g.w,
    }
}

/// [`backward`] by the direct kernel: dX at stride 1 as the forward kernel on dY (col2im at
/// stride 2), dW as [`dw_direct`].
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_direct(
    simd: pulp::x86::V4,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
    dw: Option<&mut [f32]>,
    extra: usize,
) -> Vec<f32> {
    // At stride 1, dX is a forward convolution of dY, where its own K qualifies.
    let gt = (g.s == 1).then(|| transposed(g)).filter(|gt| gt.direct_kernel().is_some());
    let dx = match (want_dx, gt) {
        (true, Some(gt)) if gt.winograd().is_some() => {
            let (ci, co) = (g.ci, g.co);
            // Output channel o of dX reads dY's channel i through w[i][o] flipped.
            let plan = winograd::Plan::new(
                &gt.plane_geom(),
                ci,
                |o, i, ky, kx| w[((i * ci + o) * 3 + 2 - ky) * 3 + 2 - kx],
                &super::Epilogue::default(),
            );
            debug_assert_eq!(gt.ci, co);
            forward_winograd(simd, &gt, dy, &plan, extra)
        }
        (true, Some(gt)) => {
            forward_direct(simd, &gt, dy, &direct::Packed::transposed(w, g.ci, &gt.plane_geom()), extra)
        }
        (true, None) => backward_gemm(g, x, w, dy, true, None, extra),
        (false, _) => Vec::with_capacity(extra),
    };
    match dw {
        Some(dw) if g.winograd_dw().is_some() => dw_winograd(simd, g, x, dy, dw),
        Some(dw) => dw_direct(simd, g, x, dy, dw),
        None => {}
    }
    dx
}

/// dW by Winograd's F(2x2, 3x3) (see `winograd/dw.rs`): per-thread sums of `dU` over the
/// thread's images, added up, then transformed once into `dw`.
fn dw_winograd(simd: pulp::x86::V4, g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (img_in, img_out) = (g.img_in(), g.img_out());
    let plan = winograd::Plan::layout(&g.plane_geom(), g.co);
    let partials = par_items(g.n, &mut [], |imgs, _| {
        let (mut b, mut du) = (winograd::DwBufs::default(), vec![0.0f32; plan.du_len()]);
        for n in imgs {
            plan.dw_image(simd, &x[n * img_in..][..img_in], &dy[n * img_out..][..img_out], &mut b, &mut du);
        }
        du
    });
    if let Some(sum) = sum_partials(partials) {
        plan.dw_finish(&sum, dw);
    }
}

/// The per-thread partial sums added up contiguously (None without any).
fn sum_partials(partials: Vec<Vec<f32>>) -> Option<Vec<f32>> {
    let mut parts = partials.into_iter();
    let mut sum = parts.next()?;
    for part in parts {
        sum.iter_mut().zip(&part).for_each(|(s, v)| *s += v);
    }
    Some(sum)
}

/// dW by the direct kernel: per image, dY transposed and taken wide times the phased image.
fn dw_direct(simd: pulp::x86::V4, g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (img_in, img_out, k) = (g.img_in(), g.img_out(), g.k());
    let packed = direct::Packed::layout(g.co, &g.plane_geom());
    let (cp, xl, tl) = (packed.co_pad(), packed.xq_len(), packed.wide() * packed.co_pad());
    // Images per pass of the accumulators over `dwt` (see [`direct::Packed::dw_images`]): up
    // to 4, within about 8 MiB of phased images and transposed dY per thread.
    let group = (8 << 20) / ((xl + tl) * 4).max(1);
    let group = group.clamp(1, 4);
    let partials = par_items(g.n, &mut [], |imgs, _| {
        let (mut row, mut xqs, mut dyts) = (Vec::new(), vec![0.0f32; group * xl], vec![0.0f32; group * tl]);
        let mut dwt = vec![0.0f32; k * cp];
        let imgs: Vec<usize> = imgs.collect();
        for chunk in imgs.chunks(group) {
            for (i, &n) in chunk.iter().enumerate() {
                phase_image_into(g, &x[n * img_in..][..img_in], &mut xqs[i * xl..][..xl], &mut row);
                packed.transpose_dy(simd, &dy[n * img_out..][..img_out], &mut dyts[i * tl..][..tl]);
            }
            packed.dw_images(simd, &xqs, &dyts, chunk.len(), &mut dwt);
        }
        dwt
    });
    // Per-thread sums added up, then transposed once into dw.
    let Some(sum) = sum_partials(partials) else { return };
    for (c, dwrow) in dw.chunks_exact_mut(k).enumerate() {
        for (kk, d) in dwrow.iter_mut().enumerate() {
            *d += sum[kk * cp + c];
        }
    }
}
