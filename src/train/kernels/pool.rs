//! Max pooling (NCHW) with any kernel, stride and padding, and its backward pass.
//!
//! Both passes read phase-padded planes (`phase.rs`; padding is `-inf`, so it never
//! wins). Backward recomputes each window's arg-max (the first maximum in row-major window order)
//! a row at a time and adds the output gradient there, into a padded plane of the same layout;
//! a plane belongs to one thread, so the adds never race.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::par::{par_items_zeroed, Items};
use super::phase::{phase_pad, Geom, Phased};
use super::prefetch::{next_plane, Ahead};
use super::simd::{dispatch, Kernel};
use super::{dims4, f32_slice, Pad};

fn geom(l: &Layout, kernel: usize, stride: usize, padding: Pad) -> Result<Geom> {
    let (n, c, h, w) = dims4(l, "max_pool2d input")?;
    Geom::new(n, c, h, w, kernel, kernel, stride, padding)
}

/// 2x2 windows at stride 2 that lie inside the plane (small_cnn's pools: no padding, or padding
/// no window reaches): they tile it, so both passes read the plane directly, two rows at a time.
fn tiles_2x2(g: &Geom) -> bool {
    g.kh == 2 && g.kw == 2 && g.s == 2 && g.pt == 0 && g.pl == 0 && 2 * g.ho <= g.h && 2 * g.wo <= g.w
}

/// The maximum of a window in row-major order and its index (the first maximum wins; a NaN
/// propagates to the value, as in the general path), branch-free.
#[inline(always)]
fn window_max(v: [f32; 4]) -> (f32, u32) {
    let (mut best, mut arg, mut nan) = (v[0], 0u32, v[0].is_nan());
    for (t, &x) in v.iter().enumerate().skip(1) {
        let gt = x > best;
        best = if gt { x } else { best };
        arg = if gt { t as u32 } else { arg };
        nan |= x.is_nan();
    }
    (if nan { f32::NAN } else { best }, arg)
}

fn forward(g: &Geom, x: &[f32]) -> Vec<f32> {
    par_items_zeroed(g.n * g.c, g.ho * g.wo, 0, |out| dispatch(Fwd { g, x, out })).0
}

struct Fwd<'a, 'o> {
    g: &'a Geom,
    x: &'a [f32],
    out: &'a mut Items<'o>,
}

impl Kernel for Fwd<'_, '_> {
    type Out = ();
    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let Fwd { g, x, out: items } = self;
        let (pin, wo) = (g.h * g.w, g.wo);
        let planes = items.remaining();
        if tiles_2x2(g) {
            while let Some((pi, out)) = items.next_zeroed() {
                let plane = &x[pi * pin..][..pin];
                let mut ahead = Ahead::new(next_plane(x, pin, pi, &planes), g.ho);
                for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
                    ahead.step();
                    let (r0, r1) = (&plane[2 * oy * g.w..][..g.w], &plane[(2 * oy + 1) * g.w..][..g.w]);
                    for ((o, a), b) in orow.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                        *o = window_max([a[0], a[1], b[0], b[1]]).0;
                    }
                }
            }
            return;
        }
        let (mut q, mut row) = (Vec::new(), Vec::new());
        while let Some((pi, out)) = items.next_zeroed() {
            phase_pad(g, &x[pi * pin..][..pin], f32::NEG_INFINITY, &mut q, &mut row);
            let v = Phased { q: &q, hp: g.hp(), wq: g.wq(), s: g.s };
            let mut ahead = Ahead::new(next_plane(x, pin, pi, &planes), g.ho);
            for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
                ahead.step();
                orow.copy_from_slice(v.tap_row(oy * g.s, 0, wo));
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        for (o, v) in orow.iter_mut().zip(v.tap_row(oy * g.s + ky, kx, wo)) {
                            // Not f32::max: a NaN must propagate, as in the reference ops.
                            *o = if *v > *o || v.is_nan() { *v } else { *o };
                        }
                    }
                }
            }
        }
    }
}

fn backward(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    par_items_zeroed(g.n * g.c, g.h * g.w, 0, |dxs| dispatch(Bwd { g, x, dy, dxs })).0
}

struct Bwd<'a, 'o> {
    g: &'a Geom,
    x: &'a [f32],
    dy: &'a [f32],
    dxs: &'a mut Items<'o>,
}

impl Kernel for Bwd<'_, '_> {
    type Out = ();
    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let Bwd { g, x, dy, dxs } = self;
        let (pin, pout, wo, s) = (g.h * g.w, g.ho * g.wo, g.wo, g.s);
        let planes = dxs.remaining();
        if tiles_2x2(g) {
            // Windows do not overlap: each input pixel gets its window's gradient or nothing,
            // written directly (dx starts zeroed, so an odd last row or column stays 0).
            while let Some((pi, dxp)) = dxs.next_zeroed() {
                let plane = &x[pi * pin..][..pin];
                let mut ahead = Ahead::pair(next_plane(x, pin, pi, &planes), next_plane(dy, pout, pi, &planes), g.ho);
                for (oy, dyrow) in dy[pi * pout..][..pout].chunks_exact(wo).enumerate() {
                    ahead.step();
                    let (r0, r1) = (&plane[2 * oy * g.w..][..g.w], &plane[(2 * oy + 1) * g.w..][..g.w]);
                    let (d0, d1) = dxp[2 * oy * g.w..][..2 * g.w].split_at_mut(g.w);
                    let (xs, ds) = (
                        r0.chunks_exact(2).zip(r1.chunks_exact(2)),
                        d0.chunks_exact_mut(2).zip(d1.chunks_exact_mut(2)),
                    );
                    for (((a, b), (da, db)), &gy) in xs.zip(ds).zip(dyrow) {
                        let t = window_max([a[0], a[1], b[0], b[1]]).1;
                        da[0] = if t == 0 { gy } else { 0.0 };
                        da[1] = if t == 1 { gy } else { 0.0 };
                        db[0] = if t == 2 { gy } else { 0.0 };
                        db[1] = if t == 3 { gy } else { 0.0 };
                    }
                }
            }
            return;
        }
        let (hp, wq, kk) = (g.hp(), g.wq(), g.kh * g.kw);
        let (mut q, mut dq, mut row) = (Vec::new(), Vec::new(), Vec::new());
        let (mut best, mut arg) = (vec![0.0f32; wo], vec![0u32; wo]);
        let mut padded = vec![0.0f32; s * wq];
        // Where tap (ky, kx) of output (0, 0) lies in the phase layout (no divisions per element).
        let tap_offset: Vec<usize> = (0..kk).map(|t| (t % g.kw % s * hp + t / g.kw) * wq + t % g.kw / s).collect();
        while let Some((pi, dxp)) = dxs.next_zeroed() {
            phase_pad(g, &x[pi * pin..][..pin], f32::NEG_INFINITY, &mut q, &mut row);
            let v = Phased { q: &q, hp, wq, s };
            let mut ahead = Ahead::pair(next_plane(x, pin, pi, &planes), next_plane(dy, pout, pi, &planes), g.ho);
            // The gradient of the padded plane, in the same phase layout.
            dq.clear();
            dq.resize(q.len(), 0.0);
            for (oy, dyrow) in dy[pi * pout..][..pout].chunks_exact(wo).enumerate() {
                ahead.step();
                // Arg-max per output column, in window order (the first maximum wins).
                best.copy_from_slice(v.tap_row(oy * s, 0, wo));
                arg.fill(0);
                for t in 1..kk {
                    for ((b, a), v) in
                        best.iter_mut().zip(arg.iter_mut()).zip(v.tap_row(oy * s + t / g.kw, t % g.kw, wo))
                    {
                        // Branch-free, so that it vectorises.
                        let gt = *v > *b;
                        *b = if gt { *v } else { *b };
                        *a = if gt { t as u32 } else { *a };
                    }
                }
                let base = oy * s * wq;
                for (ox, (&t, d)) in arg.iter().zip(dyrow).enumerate() {
                    dq[tap_offset[t as usize] + base + ox] += d;
                }
            }
            // (`max(1)`: an empty plane has no rows to fill.)
            for (iy, row) in dxp.chunks_exact_mut(g.w.max(1)).enumerate() {
                let prow = iy + g.pt;
                if prow >= hp {
                    row.fill(0.0);
                    continue;
                }
                // Interleave the phases' rows back into the padded row (padded column j*s + r
                // is phase r, index j), then drop the padding: contiguous, vectorisable moves.
                let phase_row = |r: usize| &dq[(r * hp + prow) * wq..][..wq];
                if s == 2 {
                    for ((pair, &a), &b) in padded.chunks_exact_mut(2).zip(phase_row(0)).zip(phase_row(1)) {
                        pair[0] = a;
                        pair[1] = b;
                    }
                } else {
                    for r in 0..s {
                        for (chunk, &v) in padded[r..].chunks_mut(s).zip(phase_row(r)) {
                            chunk[0] = v;
                        }
                    }
                }
                // Input columns no window reaches (past the last one) get no gradient.
                let n = g.w.min(padded.len().saturating_sub(g.pl));
                row[..n].copy_from_slice(&padded[g.pl..g.pl + n]);
                row[n..].fill(0.0);
            }
        }
    }
}

/// The forward op; see [`super::max_pool2d`].
pub(crate) struct MaxPool {
    pub kernel: usize,
    pub stride: usize,
    pub padding: Pad,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "tanuki-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geom(l, self.kernel, self.stride, self.padding)?;
        let x = f32_slice(s, l, "max_pool2d input")?;
        let y = forward(&g, x);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let op = MaxPoolBackward { kernel: self.kernel, stride: self.stride, padding: self.padding };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

struct MaxPoolBackward {
    kernel: usize,
    stride: usize,
    padding: Pad,
}

impl candle_core::CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "tanuki-max-pool2d-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geom(l1, self.kernel, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "max_pool2d input")?;
        let dy = f32_slice(s2, l2, "max_pool2d output gradient")?;
        if l2.dims() != [g.n, g.c, g.ho, g.wo] {
            candle_core::bail!(
                "max_pool2d backward: output gradient has shape {:?}, expected {:?}",
                l2.dims(),
                [g.n, g.c, g.ho, g.wo]
            )
        }
        let dx = backward(&g, x, dy);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
