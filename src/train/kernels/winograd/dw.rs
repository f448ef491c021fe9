//! dW of the Winograd convolution, the forward's steps taken backwards: the output gradient
//! of each tile transformed by the adjoint of the output transform (`dZ = A dY Aᵀ`), the
//! products' adjoint summed over tiles (`dU[ξ][o][i] = Σ_t dZ[ξ][o][t] V[ξ][i][t]`, with `V`
//! the forward's input transform), and the weight transform's adjoint applied once at the end
//! (`dW = Gᵀ dU G`).
//!
//! The sum over tiles is a product of the forward's shape with the reduction over tiles, so here
//! both transforms keep channels in the vectors (`Vᵀ[ξ][t][i]`, `dZᵀ[ξ][t][o]`): per tile, two
//! vectors of 32 input channels and a broadcast per output channel. They are computed from the
//! image and dY laid out channels-last first ([`Plan::channels_last`], 16x16 register
//! transposes), which moves 4 values per tile and channel where transposing `V` moved 16.

use pulp::{f32x16, x86::V4};

use super::super::direct::{transpose16, vec_or_zero};
use super::super::prefetch;
use super::{fma_pass, input_points, load16, store, stride, Plan, Rows, LANES, R_MAX, TILE_T, XI};

/// Per-thread scratch for dW: the padded image and dY channels-last, and `Vᵀ` and `dZᵀ` of one
/// band.
#[derive(Default)]
pub(in crate::train::kernels) struct DwBufs {
    xp: Vec<f32>,
    dyp: Vec<f32>,
    vt: Vec<f32>,
    dzt: Vec<f32>,
}

/// One channel-major image and the channels-last copy [`Plan::channels_last`] makes of it.
struct Layout {
    /// Channels, rows and columns of the source.
    c: usize,
    h: usize,
    w: usize,
    /// Zero rows and columns before the source's in the copy.
    pt: usize,
    pl: usize,
    /// Rows and columns of the copy (the source's and its zero padding).
    hp: usize,
    wp: usize,
    /// Values per pixel of the copy (`c` and zeros, a multiple of 16).
    cpad: usize,
}

impl Plan {
    /// Input channels per row of `dU` and tile of `Vᵀ`: whole microkernel passes of 32.
    fn ci_pad(&self) -> usize {
        self.ci.next_multiple_of(TILE_T)
    }

    /// Output channels per tile of `dZᵀ` (the microkernel broadcasts up to 14 from any start).
    fn co_pad(&self) -> usize {
        self.co.next_multiple_of(LANES)
    }

    /// Values of a `dU` accumulator ([`Plan::dw_image`]): `[ξ][co][ci_pad]`.
    pub(in crate::train::kernels) fn du_len(&self) -> usize {
        XI * self.co * self.ci_pad()
    }

    /// The image padded so that every tile's 4x4 input lies inside it.
    fn x_layout(&self) -> Layout {
        let g = &self.tiles;
        Layout {
            c: self.ci,
            h: g.h,
            w: g.w,
            pt: g.pt,
            pl: g.pl,
            hp: 2 * g.ho + 2,
            wp: 2 * g.wo + 2,
            cpad: self.ci_pad(),
        }
    }

    /// dY padded to whole 2x2 tiles (a zero row and column for odd sizes).
    fn dy_layout(&self) -> Layout {
        let g = &self.tiles;
        Layout { c: self.co, h: self.ho, w: self.wo, pt: 0, pl: 0, hp: 2 * g.ho, wp: 2 * g.wo, cpad: self.co_pad() }
    }

    /// Adds one image's `dU` into `du` ([`Plan::du_len`] long): `ximg` the image, `dyimg` its
    /// output gradient (`co x ho x wo`).
    pub(in crate::train::kernels) fn dw_image(
        &self,
        simd: V4,
        ximg: &[f32],
        dyimg: &[f32],
        b: &mut DwBufs,
        du: &mut [f32],
    ) {
        if self.ho * self.wo == 0 {
            return;
        }
        let (xl, dl) = (self.x_layout(), self.dy_layout());
        b.xp.resize(xl.hp * xl.wp * xl.cpad, 0.0);
        b.dyp.resize(dl.hp * dl.wp * dl.cpad, 0.0);
        b.vt.resize(XI * stride(self.band, self.ci_pad()), 0.0);
        b.dzt.resize(XI * stride(self.band, self.co_pad()), 0.0);
        simd.vectorize(DwOp { plan: self, simd, ximg, dyimg, b, du })
    }

    #[inline(always)]
    fn dw_impl(&self, simd: V4, ximg: &[f32], dyimg: &[f32], b: &mut DwBufs, du: &mut [f32]) {
        let (xl, dl) = (self.x_layout(), self.dy_layout());
        self.channels_last(simd, ximg, &xl, &mut b.xp);
        self.channels_last(simd, dyimg, &dl, &mut b.dyp);
        let nt = self.tiles.ho * self.tiles.wq();
        for f0 in (0..nt).step_by(self.band) {
            let (bt, nb) = ((nt - f0).min(self.band).next_multiple_of(TILE_T), (nt - f0).min(self.band));
            self.transform_input_t(simd, &b.xp, xl.wp, f0, bt, nb, &mut b.vt);
            self.transform_dy_t(simd, &b.dyp, dl.wp, f0, bt, nb, &mut b.dzt);
            self.dw_products(simd, &b.vt, &b.dzt, bt, du);
        }
    }

    /// `dst` = `src` laid out as `l` says: 16x16 blocks of channels x pixels transposed in
    /// registers, zero around and past the channels.
    #[inline(always)]
    fn channels_last(&self, simd: V4, src: &[f32], l: &Layout, dst: &mut [f32]) {
        let (cp, zero, plane) = (l.cpad, simd.splat_f32x16(0.0), l.h * l.w);
        for py in 0..l.hp {
            let row = &mut dst[py * l.wp * cp..][..l.wp * cp];
            let Some(iy) = py.checked_sub(l.pt).filter(|&iy| iy < l.h) else {
                row.fill(0.0);
                continue;
            };
            row[..l.pl * cp].fill(0.0);
            row[(l.pl + l.w) * cp..].fill(0.0);
            let mut next = 0;
            while next < l.w {
                // Blocks of 16 pixels; the last one overlaps the one before where the row
                // has 16 (a shorter row is read through a zeroed copy).
                let x0 = if next + LANES > l.w && l.w >= LANES { l.w - LANES } else { next };
                let n = LANES.min(l.w - x0);
                for c0 in (0..cp).step_by(LANES) {
                    let chans = l.c.saturating_sub(c0).min(LANES);
                    if next == 0 && iy + 1 < l.h {
                        // The next row of these planes (12 KiB and more apart, which the
                        // hardware prefetcher does not follow): half the time went on waiting.
                        for k in 0..chans {
                            prefetch::lines(&src[(c0 + k) * plane + (iy + 1) * l.w..][..l.w]);
                        }
                    }
                    let mut rows = [zero; LANES];
                    for (k, r) in rows.iter_mut().enumerate().take(chans) {
                        *r = vec_or_zero(&src[(c0 + k) * plane + iy * l.w + x0..][..n]);
                    }
                    for (j, col) in transpose16(simd, rows).into_iter().enumerate().take(n) {
                        store(row, (l.pl + x0 + j) * cp + c0, col);
                    }
                }
                next = x0 + LANES;
            }
        }
    }

    /// `Vᵀ[ξ][t][i] = (Bᵀ d B)[ξ]` for the band's `bt` tiles from `f0`, channels in the vectors
    /// (read from [`Plan::channels_last`]'s image); zero for its junk tiles and those past its
    /// `nb` real ones, whose `dZ` is zero anyway.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn transform_input_t(&self, simd: V4, xp: &[f32], wp: usize, f0: usize, bt: usize, nb: usize, vt: &mut [f32]) {
        let (wq, tw, cip, vs) = (self.tiles.wq(), self.tiles.wo, self.ci_pad(), stride(bt, self.ci_pad()));
        let zero = simd.splat_f32x16(0.0);
        for t in 0..bt {
            let (ty, tx) = ((f0 + t) / wq, (f0 + t) % wq);
            if t >= nb || tx >= tw {
                for xi in 0..XI {
                    for c0 in (0..cip).step_by(LANES) {
                        store(vt, xi * vs + t * cip + c0, zero);
                    }
                }
                continue;
            }
            let base = (2 * ty * wp + 2 * tx) * cip;
            for c0 in (0..cip).step_by(LANES) {
                let mut d = [zero; XI];
                for (k, dk) in d.iter_mut().enumerate() {
                    *dk = load16(xp, base + ((k / 4) * wp + k % 4) * cip + c0);
                }
                for (xi, val) in input_points(simd, &d).into_iter().enumerate() {
                    store(vt, xi * vs + t * cip + c0, val);
                }
            }
        }
    }

    /// `dZᵀ[ξ][t][o] = (A dY Aᵀ)[ξ]` for the band's `bt` tiles from `f0`, channels in the
    /// vectors (read from [`Plan::channels_last`]'s dY, `wp` pixels wide); zero for its junk
    /// tiles and those past its `nb` real ones.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn transform_dy_t(&self, simd: V4, dyp: &[f32], wp: usize, f0: usize, bt: usize, nb: usize, dzt: &mut [f32]) {
        let (wq, tw, cop, zs) = (self.tiles.wq(), self.tiles.wo, self.co_pad(), stride(bt, self.co_pad()));
        let zero = simd.splat_f32x16(0.0);
        for t in 0..bt {
            let (ty, tx) = ((f0 + t) / wq, (f0 + t) % wq);
            let real = t < nb && tx < tw;
            let base = (2 * ty * wp + 2 * tx) * cop;
            for o0 in (0..cop).step_by(LANES) {
                let points = if real {
                    let at = |a: usize, b: usize| load16(dyp, base + (a * wp + b) * cop + o0);
                    dy_points(simd, [[at(0, 0), at(0, 1)], [at(1, 0), at(1, 1)]])
                } else {
                    [zero; XI]
                };
                for (xi, val) in points.into_iter().enumerate() {
                    store(dzt, xi * zs + t * cop + o0, val);
                }
            }
        }
    }

    /// `dU[ξ][o][i] += Σ_t dZᵀ[ξ][t][o] Vᵀ[ξ][t][i]` over the band's `bt` tiles.
    #[inline(always)]
    fn dw_products(&self, simd: V4, vt: &[f32], dzt: &[f32], bt: usize, du: &mut [f32]) {
        let (co, cip, cop) = (self.co, self.ci_pad(), self.co_pad());
        let len = co.div_ceil(co.div_ceil(R_MAX));
        for xi in 0..XI {
            let vtx = &vt[xi * stride(bt, cip)..][..bt * cip];
            let dzx = &dzt[xi * stride(bt, cop)..][..bt * cop];
            let dux = &mut du[xi * co * cip..][..co * cip];
            for o0 in (0..co).step_by(len) {
                let at = DwPass { bt, cip, cop, o0 };
                for i0 in (0..cip).step_by(TILE_T) {
                    with_rows!(len.min(co - o0), dw_pass::<R>(simd, vtx, dzx, &at, i0, dux));
                }
            }
        }
    }

    /// Adds `Gᵀ dU G` (`du` summed over images, [`Plan::du_len`] long) into `dw` (`[co][ci][3]
    /// [3]`).
    pub(in crate::train::kernels) fn dw_finish(&self, du: &[f32], dw: &mut [f32]) {
        let (ci, co, cip) = (self.ci, self.co, self.ci_pad());
        // Gᵀ = [1 ½ ½ 0; 0 ½ -½ 0; 0 ½ ½ 1], applied to the four values of a column or row.
        let gt = |v: [f32; 4]| [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]];
        for o in 0..co {
            // This output channel's 16 rows of dU, read in step (each `ci` contiguous).
            let rows: [&[f32]; XI] = std::array::from_fn(|xi| &du[(xi * co + o) * cip..][..ci]);
            for (i, dwk) in dw[o * ci * 9..][..ci * 9].chunks_exact_mut(9).enumerate() {
                let d: [f32; XI] = std::array::from_fn(|xi| rows[xi][i]);
                let cols: [[f32; 3]; 4] = std::array::from_fn(|j| gt([d[j], d[4 + j], d[8 + j], d[12 + j]]));
                for ky in 0..3 {
                    let row = gt([cols[0][ky], cols[1][ky], cols[2][ky], cols[3][ky]]);
                    for kx in 0..3 {
                        dwk[ky * 3 + kx] += row[kx];
                    }
                }
            }
        }
    }
}

/// Where a dW microkernel pass reads and writes: `bt` tiles, `cip` values per row of `Vᵀ` and
/// `dU`, `cop` per row of `dZᵀ`, output channels from `o0`.
struct DwPass {
    bt: usize,
    cip: usize,
    cop: usize,
    o0: usize,
}

/// `dU[o0 + r][i0..i0 + 32] += Σ_t dZᵀ[t][o0 + r] Vᵀ[t][i0..i0 + 32]` for `r < R`.
#[inline(always)]
fn dw_pass<const R: usize>(simd: V4, vtx: &[f32], dzx: &[f32], at: &DwPass, i0: usize, dux: &mut [f32]) {
    let cip = at.cip;
    let mut acc = [[simd.splat_f32x16(0.0); 2]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        *a = pulp::cast(*<&[f32; TILE_T]>::try_from(&dux[(at.o0 + r) * cip + i0..][..TILE_T]).expect("32 values"));
    }
    let (v, z) = (Rows { s: vtx, stride: cip, at: i0 }, Rows { s: dzx, stride: at.cop, at: at.o0 });
    let acc = fma_pass::<R>(simd, &v, &z, at.bt, acc);
    for (r, a) in acc.into_iter().enumerate() {
        *<&mut [f32; TILE_T]>::try_from(&mut dux[(at.o0 + r) * cip + i0..][..TILE_T]).expect("32 values") =
            pulp::cast(a);
    }
}

/// `A dY Aᵀ` of one tile's output gradient `[[y00, y01], [y10, y11]]`, `A = [1 0; 1 1; 1 -1;
/// 0 -1]`, as `[i * 4 + j]`.
#[inline(always)]
fn dy_points(simd: V4, [[p, q], [r, s]]: [[f32x16; 2]; 2]) -> [f32x16; XI] {
    let a = |u: f32x16, w: f32x16| {
        [u, simd.add_f32x16(u, w), simd.sub_f32x16(u, w), simd.sub_f32x16(simd.splat_f32x16(0.0), w)]
    };
    let (c0, c1) = (a(p, r), a(q, s));
    let (r0, r1, r2, r3) = (a(c0[0], c1[0]), a(c0[1], c1[1]), a(c0[2], c1[2]), a(c0[3], c1[3]));
    [r0[0], r0[1], r0[2], r0[3], r1[0], r1[1], r1[2], r1[3], r2[0], r2[1], r2[2], r2[3], r3[0], r3[1], r3[2], r3[3]]
}

/// [`Plan::dw_image`]'s body (see `ImageOp` in `winograd.rs`).
struct DwOp<'a> {
    plan: &'a Plan,
    simd: V4,
    ximg: &'a [f32],
    dyimg: &'a [f32],
    b: &'a mut DwBufs,
    du: &'a mut [f32],
}

impl pulp::NullaryFnOnce for DwOp<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.plan.dw_impl(self.simd, self.ximg, self.dyimg, self.b, self.du)
    }
}
