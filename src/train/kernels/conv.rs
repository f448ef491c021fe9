//! Dense 2D convolution (NCHW, weights OIHW).
//!
//! On CPUs with AVX-512, 3x3 stride-1 convolutions with 16+ channels run Winograd's F(2x2, 3x3)
//! ([`winograd`](super::winograd): forward, dX as a forward pass over dY, and dW with 32+ input
//! channels), and the rest [`direct`](super::direct)'s microkernel, which reads the padded,
//! phase-split image directly (forward, dX at stride 1 as a forward pass over dY, and dW).
//! Otherwise, and for 1x1 stride-1 convolutions or `K < 64`, tiled im2col + single-threaded
//! GEMM per piece:
//!
//! Forward, per image: `Y[Co, P] = W[Co, K] * col[K, P]` with `K = Ci*kh*kw` and `P = Ho*Wo`,
//! built tile by tile (a few hundred output pixels, so the im2col buffer stays in L2) from the
//! image padded and split into its stride phases once, so that every read is a plain copy. 1x1
//! stride-1 unpadded convolutions skip im2col (the image already is `col`).
//!
//! Backward, per image and tile: `dW += dY_tile * col_tile^T` (per-thread partial sums, added at
//! the end) and `dcol = W^T * dY_tile`, folded back into dX (col2im). Threads own whole images,
//! so nothing is shared while they write.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

#[cfg(target_arch = "x86_64")]
use super::direct;
#[cfg(target_arch = "x86_64")]
use super::winograd;
#[cfg(target_arch = "x86_64")]
mod direct_path;
use super::epilogue::{self, Act, Epilogue};
use super::gemm::{sgemm, Mat};
use super::par::{par_items, par_items_zeroed, threads};
use super::phase;
use super::{dims4, f32_slice, Axis, Pad};
#[cfg(target_arch = "x86_64")]
use direct_path::{backward_direct, forward_direct, forward_winograd, winograd_plan};

/// Fewest input and output channels for [`Geom::winograd`].
#[cfg(target_arch = "x86_64")]
const WINOGRAD_MIN: usize = 16;
/// Fewest input channels for [`Geom::winograd_dw`]: dW's passes take 32 input channels, so
/// with 16 half of each would be padding (16 -> 16 at 96x96: 7 ms against the direct kernel's 6).
#[cfg(target_arch = "x86_64")]
const WINOGRAD_DW_MIN_CI: usize = 32;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    s: usize,
    pt: usize,
    pl: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(xl: &Layout, wl: &Layout, stride: usize, padding: Pad) -> Result<Self> {
        let (n, ci, h, w) = dims4(xl, "conv2d input")?;
        let (co, wci, kh, kw) = dims4(wl, "conv2d kernel")?;
        if wci != ci {
            bail!("conv2d: the input has {ci} channels but the kernel expects {wci}")
        }
        let ay = Axis::along(true, h, kh, stride, padding)?;
        let ax = Axis::along(false, w, kw, stride, padding)?;
        Ok(Self { n, ci, h, w, co, kh, kw, s: stride, pt: ay.pad, pl: ax.pad, ho: ay.out, wo: ax.out })
    }
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.ho * self.wo
    }
    fn img_in(&self) -> usize {
        self.ci * self.h * self.w
    }
    fn img_out(&self) -> usize {
        self.co * self.p()
    }
    /// One input plane's geometry, for [`phase::phase_pad_2d_into`].
    fn plane_geom(&self) -> phase::Geom {
        phase::Geom {
            n: self.n,
            c: self.ci,
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            s: self.s,
            pt: self.pt,
            pl: self.pl,
            ho: self.ho,
            wo: self.wo,
        }
    }
    /// Whether the direct kernel (`direct.rs`) runs this convolution: on AVX-512 CPUs, unless
    /// the image is its own im2col matrix (1x1, stride 1) or `K` is too short to amortise a
    /// tile's stores (the 3-channel first layer: K = 27, where im2col + GEMM measured faster).
    #[cfg(target_arch = "x86_64")]
    fn direct_kernel(&self) -> Option<pulp::x86::V4> {
        direct::simd().filter(|_| !self.direct() && self.k() >= 64)
    }
    /// Whether Winograd's F(2x2, 3x3) (`winograd.rs`) runs this convolution: 3x3 at stride 1,
    /// on AVX-512 CPUs, with at least WINOGRAD_MIN channels in and out (fewer, and the
    /// transforms cost more than the products they save).
    #[cfg(target_arch = "x86_64")]
    fn winograd(&self) -> Option<pulp::x86::V4> {
        winograd::simd().filter(|_| {
            self.kh == 3 && self.kw == 3 && self.s == 1 && self.ci >= WINOGRAD_MIN && self.co >= WINOGRAD_MIN
        })
    }
    /// Whether Winograd computes this convolution's dW too (see [`WINOGRAD_DW_MIN_CI`]).
    #[cfg(target_arch = "x86_64")]
    fn winograd_dw(&self) -> Option<pulp::x86::V4> {
        self.winograd().filter(|_| self.ci >= WINOGRAD_DW_MIN_CI)
    }
    /// 1x1, stride 1, no padding: the image is its own im2col matrix.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.pt == 0 && self.pl == 0
    }
    /// Output pixels per im2col tile: the tile (K x pixels) takes about
    /// [`KernelSettings::conv_tile_kib`](super::KernelSettings) (default 1 MiB) so that it stays
    /// in L2 next to the GEMM's packed panels.
    fn tile(&self) -> usize {
        let kib = super::settings::settings().conv_tile_kib.max(1);
        (kib * 256 / self.k()).max(16).min(self.p())
    }
}

/// The image padded and split per channel into its `s x s` phases (one phase at stride 1),
/// where every im2col read is a contiguous, in-bounds copy, whatever the stride and padding:
/// tap `(ky, kx)` of output row `oy` reads phase `(ky % s, kx % s)`, row `oy + ky / s`, columns
/// from `kx / s` on. One pass over the image, against a bounds-checked (and at stride 2,
/// strided) gather per row segment of every tile: 1.3-1.6x faster im2col at stride 2.
fn phase_image(g: &Geom, ximg: &[f32], xq: &mut Vec<f32>, row: &mut Vec<f32>, len: usize) {
    xq.resize(len.max(g.ci * g.plane_geom().phased_len()), 0.0);
    phase_image_into(g, ximg, xq, row);
}

/// [`phase_image`] into `xq` (at least `ci` phased planes long).
fn phase_image_into(g: &Geom, ximg: &[f32], xq: &mut [f32], row: &mut Vec<f32>) {
    let dg = g.plane_geom();
    if g.h * g.w == 0 {
        // Empty planes: their phased form is all padding.
        xq.fill(0.0);
        return;
    }
    for (plane, q) in ximg.chunks_exact(g.h * g.w).zip(xq.chunks_exact_mut(dg.phased_len())) {
        phase::phase_pad_2d_into(&dg, plane, 0.0, q, row);
    }
}

/// Fills `col` (`K x len`, row-major) with the im2col columns of output pixels `p0..p0 + len`,
/// from the phased image of [`phase_image`].
fn im2col(g: &Geom, xq: &[f32], p0: usize, len: usize, col: &mut [f32]) {
    let dg = g.plane_geom();
    let (hq, wq, s, per) = (dg.hq(), dg.wq(), g.s, dg.phased_len());
    for ci in 0..g.ci {
        let planes = &xq[ci * per..][..per];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let phase = &planes[((ky % s) * s + kx % s) * hq * wq..][..hq * wq];
                let dst = &mut col[r * len..][..len];
                let (mut p, mut d) = (p0, 0);
                while d < len {
                    let (oy, ox0) = (p / g.wo, p % g.wo);
                    let seg = (g.wo - ox0).min(len - d);
                    dst[d..d + seg].copy_from_slice(&phase[(oy + ky / s) * wq + ox0 + kx / s..][..seg]);
                    p += seg;
                    d += seg;
                }
            }
        }
    }
}

/// `row[start + j * step] += src[j]` wherever that index lies inside `row`.
fn scatter_add_row(row: &mut [f32], src: &[f32], start: isize, step: usize) {
    let w = row.len() as isize;
    if step == 1 {
        let len = src.len() as isize;
        let lo = (-start).clamp(0, len) as usize;
        let hi = (w - start).clamp(lo as isize, len) as usize;
        if hi == lo {
            // The whole segment lies past either end of the row (a tap reaching into wide
            // right padding): `start` may even be past the end, which `row[s..s]` rejects.
            return;
        }
        let s = (start + lo as isize) as usize;
        for (o, v) in row[s..s + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
            *o += v;
        }
    } else {
        for (j, v) in src.iter().enumerate() {
            let i = start + (j * step) as isize;
            if i >= 0 && i < w {
                row[i as usize] += v;
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds `dcol` (`K x len`) into the image gradient `dximg`.
fn col2im_add(g: &Geom, dcol: &[f32], p0: usize, len: usize, dximg: &mut [f32]) {
    let plane_len = g.h * g.w;
    for ci in 0..g.ci {
        let plane = &mut dximg[ci * plane_len..][..plane_len];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let src = &dcol[r * len..][..len];
                let mut p = p0;
                let mut d = 0;
                while d < len {
                    let (oy, ox0) = (p / g.wo, p % g.wo);
                    let seg = (g.wo - ox0).min(len - d);
                    let iy = (oy * g.s + ky) as isize - g.pt as isize;
                    if iy >= 0 && iy < g.h as isize {
                        let row = &mut plane[iy as usize * g.w..][..g.w];
                        scatter_add_row(row, &src[d..d + seg], (ox0 * g.s + kx) as isize - g.pl as isize, g.s);
                    }
                    p += seg;
                    d += seg;
                }
            }
        }
    }
}

/// Output rows `rows` (output channels) of one image: `yrows` is `rows.len() x P`, the epilogue
/// applied tile by tile while the tile is in cache.
#[allow(clippy::too_many_arguments)]
fn fwd_rows(
    g: &Geom,
    ximg: &[f32],
    w: &[f32],
    rows: std::ops::Range<usize>,
    yrows: &mut [f32],
    b: &mut Bufs,
    ep: &Epilogue<'_>,
) {
    let (k, p) = (g.k(), g.p());
    let m = rows.len();
    let wmat = Mat { data: &w[rows.start * k..rows.end * k], rs: k, cs: 1 };
    let tile = g.tile();
    if !g.direct() {
        b.col.resize(k * tile, 0.0);
        b.image(g, ximg);
    }
    for p0 in (0..p).step_by(tile) {
        let len = tile.min(p - p0);
        if g.direct() {
            sgemm(m, len, k, &mut yrows[p0..], p, false, wmat, Mat { data: &ximg[p0..], rs: p, cs: 1 });
        } else {
            let col = b.im2col(g, p0, len);
            sgemm(m, len, k, &mut yrows[p0..], p, false, wmat, Mat { data: col, rs: len, cs: 1 });
        }
        if !ep.is_identity() {
            for (r, row) in yrows.chunks_exact_mut(p).enumerate() {
                ep.apply(rows.start + r, &mut row[p0..p0 + len]);
            }
        }
    }
}

/// The output `N x Co x Ho x Wo`.
fn forward(g: &Geom, x: &[f32], w: &[f32], ep: &Epilogue<'_>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = g.winograd() {
        return forward_winograd(simd, g, x, &winograd_plan(g, w, ep), 0);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = g.direct_kernel() {
        return forward_direct(simd, g, x, &direct::Packed::new(w, g.co, &g.plane_geom(), ep), 0);
    }
    forward_gemm(g, x, w, ep)
}

/// A zeroed output of `len` values with room for `extra` more (for the direct kernel's path
/// that splits one image across the cores, where [`par_items_zeroed`]'s per-image items do not
/// apply; its output may be dX, with dW appended after it).
#[cfg(target_arch = "x86_64")]
fn zeroed_with_room(len: usize, extra: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len + extra);
    v.resize(len, 0.0);
    v
}

/// [`forward`] by im2col + GEMM.
fn forward_gemm(g: &Geom, x: &[f32], w: &[f32], ep: &Epilogue<'_>) -> Vec<f32> {
    let (img_in, img_out) = (g.img_in(), g.img_out());
    if g.n >= threads() {
        return par_items_zeroed(g.n, img_out, 0, |imgs| {
            let mut b = Bufs::default();
            while let Some((n, yimg)) = imgs.next_zeroed() {
                fwd_rows(g, &x[n * img_in..][..img_in], w, 0..g.co, yimg, &mut b, ep);
            }
        })
        .0;
    }
    // Fewer images than cores: split each image's output channels instead.
    let mut y = vec![0.0f32; g.n * img_out];
    for (n, yimg) in y.chunks_exact_mut(img_out).enumerate() {
        let ximg = &x[n * img_in..][..img_in];
        par_items(g.co, yimg, |rows, yrows| fwd_rows(g, ximg, w, rows, yrows, &mut Bufs::default(), ep));
    }
    y
}

/// Per-thread scratch: the im2col tile, its gradient, and the phased image tiles are cut from.
#[derive(Default)]
struct Bufs {
    col: Vec<f32>,
    dcol: Vec<f32>,
    xq: Vec<f32>,
    row: Vec<f32>,
}

impl Bufs {
    /// Call once per image before [`Bufs::im2col`] on its tiles.
    fn image(&mut self, g: &Geom, ximg: &[f32]) {
        phase_image(g, ximg, &mut self.xq, &mut self.row, 0);
    }

    /// The im2col tile of output pixels `p0..p0 + len` (in `col`, `K x len`) of the image
    /// given to [`Bufs::image`].
    fn im2col(&mut self, g: &Geom, p0: usize, len: usize) -> &[f32] {
        let col = &mut self.col[..g.k() * len];
        im2col(g, &self.xq, p0, len, col);
        col
    }
}

fn bwd_image(
    g: &Geom,
    ximg: &[f32],
    w: &[f32],
    dyimg: &[f32],
    dximg: Option<&mut [f32]>,
    mut dw: Option<&mut [f32]>,
    b: &mut Bufs,
) {
    let (k, p, co) = (g.k(), g.p(), g.co);
    let wt = Mat { data: w, rs: 1, cs: k };
    if g.direct() {
        if let Some(dw) = dw {
            sgemm(co, k, p, dw, k, true, Mat { data: dyimg, rs: p, cs: 1 }, Mat { data: ximg, rs: 1, cs: p });
        }
        if let Some(dx) = dximg {
            sgemm(k, p, co, dx, p, false, wt, Mat { data: dyimg, rs: p, cs: 1 });
        }
        return;
    }
    let mut dximg = dximg;
    let tile = g.tile();
    for p0 in (0..p).step_by(tile) {
        let len = tile.min(p - p0);
        let dy_tile = Mat { data: &dyimg[p0..], rs: p, cs: 1 };
        if let Some(dw) = dw.as_deref_mut() {
            b.col.resize(k * tile, 0.0);
            if p0 == 0 {
                b.image(g, ximg);
            }
            let col = b.im2col(g, p0, len);
            sgemm(co, k, len, dw, k, true, dy_tile, Mat { data: col, rs: 1, cs: len });
        }
        if let Some(dx) = dximg.as_deref_mut() {
            b.dcol.resize(k * tile, 0.0);
            let dcol = &mut b.dcol[..k * len];
            sgemm(k, len, co, dcol, len, false, wt, dy_tile);
            col2im_add(g, dcol, p0, len, dx);
        }
    }
}

/// Returns dX (`N x Ci x H x W`, with room for `extra` more values after it) if `want_dx`, else
/// an empty `Vec` with that room; adds dW (`Co x K`) into `dw` if given.
fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
    dw: Option<&mut [f32]>,
    extra: usize,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = g.direct_kernel() {
        return backward_direct(simd, g, x, w, dy, want_dx, dw, extra);
    }
    backward_gemm(g, x, w, dy, want_dx, dw, extra)
}

/// [`backward`] by im2col + GEMM and col2im.
fn backward_gemm(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
    dw: Option<&mut [f32]>,
    extra: usize,
) -> Vec<f32> {
    let (img_in, img_out) = (g.img_in(), g.img_out());
    let want_dw = dw.is_some();
    let (dx, partials) = par_items_zeroed(g.n, if want_dx { img_in } else { 0 }, extra, |imgs| {
        let mut b = Bufs::default();
        let mut dwp = if want_dw { vec![0.0f32; g.co * g.k()] } else { Vec::new() };
        while let Some((n, dximg)) = imgs.next_zeroed() {
            let dximg = if want_dx { Some(dximg) } else { None };
            let dwo = if want_dw { Some(dwp.as_mut_slice()) } else { None };
            bwd_image(g, &x[n * img_in..][..img_in], w, &dy[n * img_out..][..img_out], dximg, dwo, &mut b);
        }
        dwp
    });
    if let Some(dw) = dw {
        for part in partials {
            for (d, v) in dw.iter_mut().zip(&part) {
                *d += v;
            }
        }
    }
    dx
}

/// The forward op; see [`super::conv2d_fused`]. A `CustomOp2` over `(x, w)`, or a `CustomOp3`
/// over `(x, w, bias)`.
pub(crate) struct Conv2d {
    pub stride: usize,
    pub padding: Pad,
    pub act: Act,
}

impl Conv2d {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1, l2, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "conv2d input")?;
        let w = f32_slice(s2, l2, "conv2d kernel")?;
        let ep = Epilogue { bias, act: self.act };
        ep.check(g.co, "conv2d")?;
        let y = forward(&g, x, w, &ep);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.co, g.ho, g.wo))))
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
        epilogue::fused_grads(self.act, x, w, bias, y, dy, |want_x, want_w| Conv2dBackward {
            stride,
            padding,
            want_x,
            want_w,
        })
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "tanuki-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.grads(x, w, None, res, dy)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "tanuki-conv2d-bias"
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
        self.run(s1, l1, s2, l2, Some(f32_slice(s3, l3, "conv2d bias")?))
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

/// The backward op: a flat tensor holding dX (if wanted) then dW (if wanted).
struct Conv2dBackward {
    stride: usize,
    padding: Pad,
    want_x: bool,
    want_w: bool,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "tanuki-conv2d-backward"
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
        let g = Geom::new(l1, l2, self.stride, self.padding)?;
        let x = f32_slice(s1, l1, "conv2d input")?;
        let w = f32_slice(s2, l2, "conv2d kernel")?;
        let dy = f32_slice(s3, l3, "conv2d output gradient")?;
        if l3.dims() != [g.n, g.co, g.ho, g.wo] {
            bail!("conv2d backward: output gradient has shape {:?}, expected {:?}", l3.dims(), [g.n, g.co, g.ho, g.wo])
        }
        let dx_len = if self.want_x { g.n * g.img_in() } else { 0 };
        let dw_len = if self.want_w { g.co * g.k() } else { 0 };
        let mut dw = vec![0.0f32; dw_len];
        // dX is written straight into the op's output, and dW appended after it.
        let mut out = backward(&g, x, w, dy, self.want_x, self.want_w.then_some(dw.as_mut_slice()), dw_len);
        debug_assert_eq!(out.len(), dx_len);
        out.extend_from_slice(&dw);
        Ok((CpuStorage::F32(out), Shape::from(dx_len + dw_len)))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
