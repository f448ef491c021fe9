//! Depthwise 2D convolution (NCHW, weights `[C, 1, kh, kw]`), plane by plane.
//!
//! Each `H x W` plane of one image and channel is independent: threads take contiguous runs of
//! planes. A plane is first copied, padded, into a small scratch in "phase" form (for stride `s`,
//! `s` sub-planes holding the columns `j*s + r`), so that every tap of the kernel reads a
//! contiguous, in-bounds row slice; the taps are then fused into one sweep per output row, 16
//! lanes at a time (one AVX-512 register when the CPU has it).
//!
//! Backward, per plane, in one pass: dW accumulates `dY * shifted X` per tap in row buffers
//! (per-thread partial sums), and dX is a gather: the stride-1 correlation of `dY` (zero-upsampled
//! by the stride and padded) with the flipped kernel, i.e. the forward sweep again.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::epilogue::{self, Act, Epilogue};
use super::par::{par_items_zeroed, Items};
use super::phase::{phase_pad, phase_pad_2d, Geom, Phased, LANES};
use super::prefetch::{next_plane, Ahead};
use super::simd::{dispatch, Kernel};
use super::{dims4, f32_slice, Pad};

/// Planes narrower than this run "flat" (3x3 and 5x5 kernels): rows are swept as one long vector
/// instead of one short row at a time, which on a 10x10 or 5x5 plane would use 10 or 5 of
/// the 16 lanes and pay the loop overhead per row.
const FLAT_MAX_WIDTH: usize = 64;
/// Outputs per segment of a flat sweep (one prefetch step each). A multiple of LANES, so that
/// the last segment's whole-block reads end where the unsegmented sweep's did.
const SEG: usize = 32;
const _: () = assert!(SEG.is_multiple_of(LANES));

/// Where each tap of a `k x k` kernel (`T = k * k` taps) reads output `(0, 0)` in
/// [`phase_pad_2d`]'s layout.
fn flat_offsets<const T: usize>(g: &Geom, k: usize) -> [usize; T] {
    std::array::from_fn(|t| g.tap_offset(t / k, t % k))
}

/// One `ho x wo` output plane of a square kernel of `T` taps swept flat over a padded plane
/// (see [`phase_pad_2d`]), whose `l` values from output `a` on each tap reads are `src(a, l)`:
/// `wide` (scratch) gets `ho` rows of `wq`, whose first `wo` columns are the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plane_fwd_flat<'q, const T: usize, const FMA: bool>(
    ahead: &mut Ahead<'_>,
    src: impl Fn(usize, usize) -> [&'q [f32]; T],
    w: &[f32],
    ho: usize,
    wo: usize,
    wq: usize,
    wide: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = ho * wq;
    wide.resize(n, 0.0);
    let wt: &[f32; T] = w.try_into().expect("one weight per tap");
    for (si, seg) in wide.chunks_mut(SEG).enumerate() {
        let a = si * SEG;
        let l = seg.len().next_multiple_of(LANES);
        taps::<T, FMA>(seg, &src(a, l), wt);
        ahead.step();
    }
    for (orow, wrow) in out.chunks_exact_mut(wo).zip(wide.chunks_exact(wq)) {
        orow.copy_from_slice(&wrow[..wo]);
    }
}

/// The nine taps' source slices. Written out: `std::array::from_fn` here stayed an out-of-line
/// call per segment or row (5% of a 28x28 stride-2 forward).
#[inline(always)]
fn nine<'a>(f: impl Fn(usize) -> &'a [f32]) -> [&'a [f32]; 9] {
    [f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8)]
}

/// `sum a[i] * b[i]` in 16 lanes (`a.len()` a multiple of 16, `b` at least as long).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (a, b) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(a[i], b[i], acc[i]);
        }
    }
    acc.iter().sum()
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

/// `out[x] = sum_t w[t] * src[t][x]`; each `src[t]` holds `out.len()` rounded up to `LANES`.
#[inline(always)]
fn taps<const T: usize, const FMA: bool>(out: &mut [f32], src: &[&[f32]; T], w: &[f32; T]) {
    let n = out.len();
    let mut x = 0;
    while x + LANES <= n {
        let mut acc = [0.0f32; LANES];
        for t in 0..T {
            let s: &[f32; LANES] = src[t][x..x + LANES].try_into().expect("16 lanes");
            for i in 0..LANES {
                acc[i] = madd::<FMA>(s[i], w[t], acc[i]);
            }
        }
        out[x..x + LANES].copy_from_slice(&acc);
        x += LANES;
    }
    if x < n {
        // The tail as one more full block: the sources have LANES - 1 values of slack.
        let mut acc = [0.0f32; LANES];
        for t in 0..T {
            let s: &[f32; LANES] = src[t][x..x + LANES].try_into().expect("16 lanes");
            for i in 0..LANES {
                acc[i] = madd::<FMA>(s[i], w[t], acc[i]);
            }
        }
        out[x..].copy_from_slice(&acc[..n - x]);
    }
}

/// `acc[t][x] += dy[x] * src[t][x]` for every tap `t` (`acc` is `T` rows of `dy.len()`).
#[inline(always)]
fn taps_dw<const T: usize, const FMA: bool>(acc: &mut [f32], dy: &[f32], src: &[&[f32]; T]) {
    let n = dy.len();
    for (a, s) in acc.chunks_exact_mut(n).zip(src) {
        for ((a, d), s) in a.iter_mut().zip(dy).zip(&s[..n]) {
            *a = madd::<FMA>(*d, *s, *a);
        }
    }
}

/// One output plane (`ho x wo`) from a phased padded input plane.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn plane_fwd<const FMA: bool>(
    v: Phased<'_>,
    kh: usize,
    kw: usize,
    s: usize,
    w: &[f32],
    out: &mut [f32],
    wo: usize,
    ahead: &mut Ahead<'_>,
) {
    for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
        ahead.step();
        if kh == 3 && kw == 3 {
            let len = wo.next_multiple_of(LANES);
            let src = nine(|t| v.tap_row(oy * s + t / 3, t % 3, len));
            let w9: &[f32; 9] = w.try_into().expect("9 taps");
            taps::<9, FMA>(orow, &src, w9);
        } else if kh == 5 && kw == 5 {
            let len = wo.next_multiple_of(LANES);
            let src: [&[f32]; 25] = std::array::from_fn(|t| v.tap_row(oy * s + t / 5, t % 5, len));
            let w25: &[f32; 25] = w.try_into().expect("25 taps");
            taps::<25, FMA>(orow, &src, w25);
        } else {
            orow.fill(0.0);
            for ky in 0..kh {
                for kx in 0..kw {
                    let wt = w[ky * kw + kx];
                    for (o, x) in orow.iter_mut().zip(v.tap_row(oy * s + ky, kx, wo)) {
                        *o = madd::<FMA>(*x, wt, *o);
                    }
                }
            }
        }
    }
}

struct Fwd<'a, 'o> {
    g: &'a Geom,
    x: &'a [f32],
    w: &'a [f32],
    out: &'a mut Items<'o>,
    ep: &'a Epilogue<'a>,
}

impl Kernel for Fwd<'_, '_> {
    type Out = ();
    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let g = self.g;
        let (kk, pin) = (g.kh * g.kw, g.plane_in());
        let (mut q, mut wide, mut row) = (Vec::new(), Vec::new(), Vec::new());
        let flat = g.kh == g.kw && matches!(g.kh, 3 | 5) && g.wo < FLAT_MAX_WIDTH;
        let (offsets3, offsets5) = (flat_offsets::<9>(g, 3), flat_offsets::<25>(g, 5));
        let planes = self.out.remaining();
        while let Some((pi, out)) = self.out.next_zeroed() {
            let c = pi % g.c;
            let (plane, w) = (&self.x[pi * pin..][..pin], &self.w[c * kk..][..kk]);
            let next = next_plane(self.x, pin, pi, &planes);
            if flat {
                phase_pad_2d(g, plane, 0.0, &mut q, &mut row);
                let mut ahead = Ahead::new(next, (g.ho * g.wq()).div_ceil(SEG));
                let (ho, wo, wq) = (g.ho, g.wo, g.wq());
                if g.kh == 3 {
                    let src = |a, l| nine(|t| &q[offsets3[t] + a..][..l]);
                    plane_fwd_flat::<9, FMA>(&mut ahead, src, w, ho, wo, wq, &mut wide, out);
                } else {
                    let src = |a, l| std::array::from_fn(|t| &q[offsets5[t] + a..][..l]);
                    plane_fwd_flat::<25, FMA>(&mut ahead, src, w, ho, wo, wq, &mut wide, out);
                }
            } else {
                phase_pad(g, plane, 0.0, &mut q, &mut row);
                let v = Phased { q: &q, hp: g.hp(), wq: g.wq(), s: g.s };
                plane_fwd::<FMA>(v, g.kh, g.kw, g.s, w, out, g.wo, &mut Ahead::new(next, g.ho));
            }
            self.ep.apply(c, out);
        }
    }
}

struct Bwd<'a, 'o> {
    g: &'a Geom,
    x: &'a [f32],
    w: &'a [f32],
    dy: &'a [f32],
    /// dX of this thread's planes (empty planes when dX is not wanted).
    dx: &'a mut Items<'o>,
    want_x: bool,
    want_w: bool,
}

impl Kernel for Bwd<'_, '_> {
    /// Per-thread partial dW (`C x kh*kw`), or empty.
    type Out = Vec<f32>;
    #[inline(always)]
    fn run<const FMA: bool>(self) -> Vec<f32> {
        let g = self.g;
        let (kh, kw) = (g.kh, g.kw);
        let (kk, pin, pout) = (kh * kw, g.plane_in(), g.plane_out());
        let mut dw = if self.want_w { vec![0.0f32; g.c * kk] } else { Vec::new() };
        let (mut q, mut u, mut acc, mut wide, mut row) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let flat_w = kh == 3 && kw == 3 && g.wo < FLAT_MAX_WIDTH;
        let flat_x = kh == 3 && kw == 3 && g.w < FLAT_MAX_WIDTH;
        let offsets = flat_offsets::<9>(g, 3);
        // The dX gather's geometry: stride 1 over U, (h + kh - 1) x (w + kw - 1).
        let (oh, ow) = (kh - 1 - g.pt, kw - 1 - g.pl);
        let (uh, uw) = (g.h + kh - 1, g.w + kw - 1);
        // Prefetch steps per plane: dW's row loop (when not flat) and dX's sweep.
        let steps = if self.want_w && !flat_w { g.ho } else { 0 }
            + match (pin == 0 || !self.want_x, flat_x) {
                (true, _) => 0,
                (false, true) => (g.h * uw).div_ceil(SEG),
                (false, false) => g.h,
            };
        let planes = self.dx.remaining();
        while let Some((pi, dx)) = self.dx.next_zeroed() {
            let c = pi % g.c;
            let dyp = &self.dy[pi * pout..][..pout];
            let mut ahead =
                Ahead::pair(next_plane(self.x, pin, pi, &planes), next_plane(self.dy, pout, pi, &planes), steps);
            if self.want_w && flat_w {
                // dW[t] = sum over the plane of dY * the tap's view, as one dot product per tap
                // over the flat layout: dY spread to rows of wq with zeros in the garbage columns.
                phase_pad_2d(g, &self.x[pi * pin..][..pin], 0.0, &mut q, &mut row);
                let wq = g.wq();
                let len = (g.ho * wq).next_multiple_of(LANES);
                wide.clear();
                wide.resize(len, 0.0);
                for (wrow, dyrow) in wide.chunks_exact_mut(wq).zip(dyp.chunks_exact(g.wo)) {
                    wrow[..g.wo].copy_from_slice(dyrow);
                }
                for (t, off) in offsets.iter().enumerate() {
                    dw[c * kk + t] += dot::<FMA>(&wide, &q[*off..][..len]);
                }
            } else if self.want_w {
                phase_pad(g, &self.x[pi * pin..][..pin], 0.0, &mut q, &mut row);
                let v = Phased { q: &q, hp: g.hp(), wq: g.wq(), s: g.s };
                acc.clear();
                acc.resize(kk * g.wo, 0.0);
                for (oy, dyrow) in dyp.chunks_exact(g.wo).enumerate() {
                    ahead.step();
                    if kk == 9 {
                        let src = nine(|t| v.tap_row(oy * g.s + t / 3, t % 3, g.wo));
                        taps_dw::<9, FMA>(&mut acc, dyrow, &src);
                    } else {
                        for t in 0..kk {
                            let src = [v.tap_row(oy * g.s + t / kw, t % kw, g.wo)];
                            taps_dw::<1, FMA>(&mut acc[t * g.wo..][..g.wo], dyrow, &src);
                        }
                    }
                }
                for (t, row) in acc.chunks_exact(g.wo).enumerate() {
                    dw[c * kk + t] += row.iter().sum::<f32>();
                }
            }
            // (An empty plane has no dX to gather; the sweeps below need rows of at least one.)
            if self.want_x && pin != 0 {
                u.clear();
                u.resize(uh * uw + 2 * LANES, 0.0);
                for (oy, dyrow) in dyp.chunks_exact(g.wo).enumerate() {
                    let urow = &mut u[(oy * g.s + oh) * uw..][..uw];
                    if g.s == 1 {
                        urow[ow..ow + g.wo].copy_from_slice(dyrow);
                    } else {
                        for (ox, d) in dyrow.iter().enumerate() {
                            urow[ox * g.s + ow] = *d;
                        }
                    }
                }
                let wc = &self.w[c * kk..][..kk];
                if flat_x {
                    // U at stride 1 is its own (single) phase: tap (ky, kx) at ky * uw + kx.
                    let flipped: [f32; 9] = std::array::from_fn(|t| wc[8 - t]);
                    let offsets: [usize; 9] = std::array::from_fn(|t| t / 3 * uw + t % 3);
                    let src = |a, l| nine(|t| &u[offsets[t] + a..][..l]);
                    plane_fwd_flat::<9, FMA>(&mut ahead, src, &flipped, g.h, g.w, uw, &mut wide, dx);
                } else {
                    let flipped: Vec<f32> = (0..kk).map(|t| wc[kk - 1 - t]).collect();
                    let v = Phased { q: &u, hp: uh, wq: uw, s: 1 };
                    plane_fwd::<FMA>(v, kh, kw, 1, &flipped, dx, g.w, &mut ahead);
                }
            }
            ahead.finish();
        }
        dw
    }
}

fn geom(xl: &Layout, wl: &Layout, stride: usize, padding: Pad) -> Result<Geom> {
    let (n, c, h, w) = dims4(xl, "depthwise input")?;
    let (wc, one, kh, kw) = dims4(wl, "depthwise kernel")?;
    if wc != c || one != 1 {
        bail!(
            "depthwise_conv2d: kernel shape {:?} does not match {c} input channels (expected [{c}, 1, kh, kw])",
            wl.dims()
        )
    }
    Geom::new(n, c, h, w, kh, kw, stride, padding)
}

/// The forward op; see [`super::depthwise_conv2d_fused`]. A `CustomOp2` over `(x, w)`, or a
/// `CustomOp3` over `(x, w, bias)`.
pub(crate) struct Depthwise {
    pub stride: usize,
    pub padding: Pad,
    pub act: Act,
}

impl Depthwise {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geom(l1, l2, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "depthwise input")?;
        let w = f32_slice(s2, l2, "depthwise kernel")?;
        let ep = Epilogue { bias, act: self.act };
        ep.check(g.c, "depthwise_conv2d")?;
        let (y, _) = par_items_zeroed(g.n * g.c, g.plane_out(), 0, |out| dispatch(Fwd { g: &g, x, w, out, ep: &ep }));
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    /// The gradients of `x`, `w` and `bias` (each only if it tracks one).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (stride, padding) = (self.stride, self.padding);
        epilogue::fused_grads(self.act, x, w, bias, y, dy, |want_x, want_w| DepthwiseBackward {
            stride,
            padding,
            want_x,
            want_w,
        })
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "tanuki-depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.grads(x, w, None, res, dy)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Depthwise {
    fn name(&self) -> &'static str {
        "tanuki-depthwise-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, Some(f32_slice(s3, l3, "depthwise bias")?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.grads(x, w, Some(b), res, dy)?;
        Ok((dx, dw, db))
    }
}

struct DepthwiseBackward {
    stride: usize,
    padding: Pad,
    want_x: bool,
    want_w: bool,
}

impl CustomOp3 for DepthwiseBackward {
    fn name(&self) -> &'static str {
        "tanuki-depthwise-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geom(l1, l2, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "depthwise input")?;
        let w = f32_slice(s2, l2, "depthwise kernel")?;
        let dy = f32_slice(s3, l3, "depthwise output gradient")?;
        if l3.dims() != [g.n, g.c, g.ho, g.wo] {
            bail!(
                "depthwise backward: output gradient has shape {:?}, expected {:?}",
                l3.dims(),
                [g.n, g.c, g.ho, g.wo]
            )
        }
        let dx_len = if self.want_x { g.n * g.c * g.plane_in() } else { 0 };
        let dw_len = if self.want_w { g.c * g.kh * g.kw } else { 0 };
        let (want_x, want_w) = (self.want_x, self.want_w);
        let dx_plane = if want_x { g.plane_in() } else { 0 };
        let (mut out, parts) =
            par_items_zeroed(g.n * g.c, dx_plane, dw_len, |dx| dispatch(Bwd { g: &g, x, w, dy, dx, want_x, want_w }));
        out.resize(dx_len + dw_len, 0.0);
        let dw = &mut out[dx_len..];
        if want_w {
            for part in parts {
                for (d, v) in dw.iter_mut().zip(&part) {
                    *d += v;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(dx_len + dw_len)))
    }
}
