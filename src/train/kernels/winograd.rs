//! Dense 3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3), for CPUs with
//! AVX-512.
//!
//! Each 2x2 block of outputs ("tile") is computed from the 4x4 block of input under it as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: the elementwise product has 16 terms where the direct
//! convolution takes 36 multiplications, so summed over input channels, the 16 products are 16
//! matrix products `M[ξ] = U[ξ] V[ξ]` (`U[ξ]`: `Co x Ci`, the transformed weights; `V[ξ]`:
//! `Ci x tiles`, the transformed input), 2.25x fewer multiply-adds than the direct kernel. The
//! transforms themselves are additions only (`G` has halves), and in f32 they add rounding
//! error of the order of a few ulps of the sums (the tests hold it to the GEMM path's 1e-4).
//!
//! Layout: the image is padded and split into its 2x2 phases ([`phase::phase_pad_2d_into`] with
//! a 4x4 "kernel" at stride 2), where value `(i, j)` of tile `(ty, tx)` lies at a fixed offset
//! plus `ty * wq + tx`: tiles are numbered row by row over `wq = tw + 1` columns (one column of
//! junk tiles per row, as the direct kernel computes garbage columns), and 16 consecutive tiles'
//! `d[i][j]` are one vector load. `V` and `M` keep tiles in the vectors too (`[ξ][channel]
//! [tile]`), so nothing is transposed: the microkernel takes 32 tiles x up to 14 output
//! channels (28 accumulators), per input channel two vector loads of `V` and one broadcast of
//! `U` per output channel. The tiles go in bands small enough that a band's `V` and `M` stay in
//! L2 between the three passes (input transform, products, output transform).

use std::ops::Range;

use pulp::{f32x16, x86::V4};

use super::direct::load16;
use super::epilogue::{Act, Epilogue};
use super::phase;

/// `$body` with `R` a constant: `$n` itself from 1 to 13, else [`R_MAX`] (a microkernel's rows
/// are a const generic, so that its accumulators are an array LLVM keeps in registers).
macro_rules! with_rows {
    ($n:expr, $body:expr) => {
        match $n {
            1 => {
                const R: usize = 1;
                $body
            }
            2 => {
                const R: usize = 2;
                $body
            }
            3 => {
                const R: usize = 3;
                $body
            }
            4 => {
                const R: usize = 4;
                $body
            }
            5 => {
                const R: usize = 5;
                $body
            }
            6 => {
                const R: usize = 6;
                $body
            }
            7 => {
                const R: usize = 7;
                $body
            }
            8 => {
                const R: usize = 8;
                $body
            }
            9 => {
                const R: usize = 9;
                $body
            }
            10 => {
                const R: usize = 10;
                $body
            }
            11 => {
                const R: usize = 11;
                $body
            }
            12 => {
                const R: usize = 12;
                $body
            }
            13 => {
                const R: usize = 13;
                $body
            }
            _ => {
                const R: usize = R_MAX;
                $body
            }
        }
    };
}

mod dw;
pub(super) use dw::DwBufs;

const LANES: usize = 16;
/// Points of the transform (4 x 4).
const XI: usize = 16;
/// Tiles per microkernel pass (two vectors).
const TILE_T: usize = 2 * LANES;
/// Most output channels per microkernel pass (`2 x R_MAX` accumulators).
const R_MAX: usize = 14;
/// Bytes of `V` and `M` together per band (both stay in L2 with `U`'s rows).
const BAND_BYTES: usize = 512 << 10;

/// The AVX-512 token when this CPU has it and neither the direct kernels nor Winograd is
/// switched off ([`KernelSettings::winograd`](super::KernelSettings) off takes 3x3 stride-1
/// convolutions back to the direct kernel).
pub(super) fn simd() -> Option<V4> {
    super::direct::simd().filter(|_| super::settings::settings().winograd)
}

/// A 3x3 stride-1 convolution's transformed weights and tile geometry.
pub(super) struct Plan {
    ci: usize,
    co: usize,
    /// `U`, `[ξ][ci][co]`: the output channels of one input channel contiguous, for the
    /// microkernel's broadcasts.
    u: Vec<f32>,
    /// `co` long (zeros without a bias).
    bias: Vec<f32>,
    act: Act,
    /// One input plane padded and split into 2x2 phases (a 4x4 "kernel" at stride 2: output
    /// `(ty, tx)` of that geometry is tile `(ty, tx)`).
    tiles: phase::Geom,
    /// Where `d[i][j]` of tile `(0, 0)` lies in a phased plane, for `i * 4 + j`.
    offs: [usize; XI],
    ho: usize,
    wo: usize,
    /// Tiles per band (a multiple of [`TILE_T`]).
    band: usize,
}

/// Per-thread scratch: the phased image, `V` and `M` of one band.
#[derive(Default)]
pub(super) struct Bufs {
    xq: Vec<f32>,
    row: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

impl Plan {
    /// `g`: one input plane's geometry under the 3x3 stride-1 kernel (its `c` is `ci`); `w(o,
    /// i, ky, kx)`: the kernel's weight from input channel `i` to output channel `o`; `ep`:
    /// what the output gets.
    pub(super) fn new(
        g: &phase::Geom,
        co: usize,
        w: impl Fn(usize, usize, usize, usize) -> f32,
        ep: &Epilogue<'_>,
    ) -> Self {
        let mut p = Self::layout(g, co);
        let ci = g.c;
        p.u = vec![0.0f32; XI * ci * co];
        // 16 output channels at a time, lane by lane: each (block, input channel) writes 16
        // runs of 16 values, one per point. Kernel by kernel, every value went to its own cache
        // line 4 * ci * co bytes from the last: 5 ms of a 16 ms 256-channel convolution.
        for o0 in (0..co).step_by(LANES) {
            let n = (co - o0).min(LANES);
            for i in 0..ci {
                let mut g = [[0.0f32; LANES]; 9];
                for (o, lane) in (o0..o0 + n).enumerate() {
                    for (k, gk) in g.iter_mut().enumerate() {
                        gk[o] = w(lane, i, k / 3, k % 3);
                    }
                }
                for (xi, val) in transform_kernels(&g).iter().enumerate() {
                    p.u[(xi * ci + i) * co + o0..][..n].copy_from_slice(&val[..n]);
                }
            }
        }
        if let Some(b) = ep.bias {
            p.bias.copy_from_slice(&b[..co]);
        }
        p.act = ep.act;
        p
    }

    /// The tile geometry alone (what dW needs): no weights, no epilogue.
    pub(super) fn layout(g: &phase::Geom, co: usize) -> Self {
        debug_assert!(g.kh == 3 && g.kw == 3 && g.s == 1);
        let ci = g.c;
        let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
        let tiles = phase::Geom { kh: 4, kw: 4, s: 2, ho: th, wo: tw, ..*g };
        let offs = std::array::from_fn(|k| tiles.tap_offset(k / 4, k % 4));
        let nt = th * tiles.wq();
        let band = (BAND_BYTES / (4 * XI * (ci + co)) / TILE_T * TILE_T)
            .clamp(TILE_T, nt.next_multiple_of(TILE_T).max(TILE_T));
        Self { ci, co, u: Vec::new(), bias: vec![0.0; co], act: Act::Identity, tiles, offs, ho: g.ho, wo: g.wo, band }
    }

    /// Writes output channels `chans` of one image into `y` (`chans.len() x ho x wo`), with the
    /// epilogue applied.
    pub(super) fn image(&self, simd: V4, ximg: &[f32], chans: Range<usize>, y: &mut [f32], b: &mut Bufs) {
        if self.ho * self.wo == 0 || chans.is_empty() {
            return;
        }
        // Slack past the last plane: a band's last vectors read up to 31 tiles past the end.
        b.xq.resize(self.ci * self.tiles.phased_len() + 2 * TILE_T, 0.0);
        b.v.resize(XI * stride(self.ci, self.band), 0.0);
        // Slack: the output transform loads whole vectors from a band's last tiles.
        b.m.resize(XI * stride(chans.len(), self.band) + LANES, 0.0);
        simd.vectorize(ImageOp { plan: self, simd, ximg, b, chans, y })
    }

    /// Pads and splits `ximg` into `xq` (compiled inside `vectorize`, where the de-interleave
    /// of the stride-2 split gets AVX-512 code).
    #[inline(always)]
    fn phase_split(&self, ximg: &[f32], xq: &mut [f32], row: &mut Vec<f32>) {
        let (plane_in, per) = (self.tiles.h * self.tiles.w, self.tiles.phased_len());
        if plane_in == 0 {
            xq.fill(0.0);
            return;
        }
        for (plane, q) in ximg.chunks_exact(plane_in).zip(xq.chunks_exact_mut(per)) {
            phase::phase_pad_2d_into(&self.tiles, plane, 0.0, q, row);
        }
    }

    #[inline(always)]
    fn image_impl(&self, simd: V4, xq: &[f32], v: &mut [f32], m: &mut [f32], chans: Range<usize>, y: &mut [f32]) {
        let nt = self.tiles.ho * self.tiles.wq();
        for f0 in (0..nt).step_by(self.band) {
            // This band's tiles, in whole microkernel passes (the last ones junk).
            let bt = (nt - f0).min(self.band).next_multiple_of(TILE_T);
            self.transform_input(simd, xq, f0, bt, v);
            self.products(simd, v, bt, chans.clone(), m);
            self.transform_output(simd, m, f0, bt, (nt - f0).min(bt), chans.clone(), y);
        }
    }

    /// `V[ξ][c][t]` for the band's `bt` tiles from `f0`.
    #[inline(always)]
    fn transform_input(&self, simd: V4, xq: &[f32], f0: usize, bt: usize, v: &mut [f32]) {
        let per = self.tiles.phased_len();
        for c in 0..self.ci {
            for t in (0..bt).step_by(LANES) {
                let at = c * per + f0 + t;
                // Plain loops, no closures: inside `vectorize` a closure was not inlined (every
                // intrinsic in it became a call).
                let mut d = [simd.splat_f32x16(0.0); XI];
                for (dk, &off) in d.iter_mut().zip(&self.offs) {
                    *dk = load16(xq, at + off);
                }
                for (xi, val) in input_points(simd, &d).into_iter().enumerate() {
                    store(v, xi * stride(self.ci, bt) + c * bt + t, val);
                }
            }
        }
    }

    /// `M[ξ][o][t] = Σ_c U[ξ][c][o] V[ξ][c][t]` for output channels `chans`.
    #[inline(always)]
    fn products(&self, simd: V4, v: &[f32], bt: usize, chans: Range<usize>, m: &mut [f32]) {
        let (ci, no) = (self.ci, chans.len());
        // Near-equal groups of at most R_MAX channels (64 = 13 + 13 + 13 + 13 + 12).
        let len = no.div_ceil(no.div_ceil(R_MAX));
        for xi in 0..XI {
            let vx = &v[xi * stride(ci, bt)..][..ci * bt];
            let ux = &self.u[xi * ci * self.co..][..ci * self.co];
            let mx = &mut m[xi * stride(no, bt)..][..no * bt];
            for r0 in (0..no).step_by(len) {
                let at = Pass { bt, c0: chans.start + r0, r0 };
                for t in (0..bt).step_by(TILE_T) {
                    with_rows!(len.min(no - r0), self.pass::<R>(simd, vx, ux, &at, t, mx));
                }
            }
        }
    }

    /// One microkernel pass: tiles `t..t + 32` x output channels `at.c0..at.c0 + R`.
    #[inline(always)]
    fn pass<const R: usize>(&self, simd: V4, vx: &[f32], ux: &[f32], at: &Pass, t: usize, mx: &mut [f32]) {
        let v = Rows { s: vx, stride: at.bt, at: t };
        let u = Rows { s: ux, stride: self.co, at: at.c0 };
        let acc = fma_pass::<R>(simd, &v, &u, self.ci, [[simd.splat_f32x16(0.0); 2]; R]);
        for (r, a) in acc.into_iter().enumerate() {
            let dst: &mut [f32; TILE_T] = (&mut mx[(at.r0 + r) * at.bt + t..][..TILE_T]).try_into().expect("32 tiles");
            *dst = pulp::cast(a);
        }
    }

    /// `Y = Aᵀ M A` for the band's `nb` real tiles from `f0`, with the epilogue, into the
    /// output planes (junk tiles, and rows and columns past the output's edge, dropped).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn transform_output(
        &self,
        simd: V4,
        m: &[f32],
        f0: usize,
        bt: usize,
        nb: usize,
        chans: Range<usize>,
        y: &mut [f32],
    ) {
        let (wq, tw, no, ms) = (self.tiles.wq(), self.tiles.wo, chans.len(), stride(chans.len(), bt));
        let (ho, wo) = (self.ho, self.wo);
        let zero = simd.splat_f32x16(0.0);
        for ty in f0 / wq..(f0 + nb).div_ceil(wq) {
            // This row's real tiles in the band.
            let (lo, hi) = ((ty * wq).max(f0), (ty * wq + tw).min(f0 + nb));
            if lo >= hi {
                continue;
            }
            let rows = (ho - 2 * ty).min(2);
            for r in 0..no {
                let bias = simd.splat_f32x16(self.bias[chans.start + r]);
                let yp = &mut y[(r * ho + 2 * ty) * wo..][..rows * wo];
                let mut s = lo;
                loop {
                    // Whole vectors of 16 tiles; the last one overlaps the one before rather
                    // than writing a short piece (which would be a call to memmove).
                    let s_at = if s + LANES > hi && hi - lo >= LANES { hi - LANES } else { s };
                    let mut mv = [zero; XI];
                    for (xi, mx) in mv.iter_mut().enumerate() {
                        *mx = load16(m, xi * ms + r * bt + s_at - f0);
                    }
                    let out = output_points(simd, &mv);
                    let ox = 2 * (s_at - ty * wq);
                    let count = (2 * (hi - s_at)).min(2 * LANES).min(wo - ox);
                    for (a, &[y0, y1]) in out.iter().enumerate().take(rows) {
                        let pair = self.interleave(simd, self.epilogue(simd, y0, bias), self.epilogue(simd, y1, bias));
                        let dst = &mut yp[a * wo + ox..][..count];
                        if let Ok(whole) = <&mut [f32; TILE_T]>::try_from(&mut *dst) {
                            *whole = pulp::cast(pair);
                        } else {
                            let vals: [f32; TILE_T] = pulp::cast(pair);
                            dst.copy_from_slice(&vals[..count]);
                        }
                    }
                    s = s_at + LANES;
                    if s >= hi {
                        break;
                    }
                }
            }
        }
    }

    /// Two vectors of outputs at even and odd columns, as 32 consecutive columns.
    #[inline(always)]
    fn interleave(&self, simd: V4, even: f32x16, odd: f32x16) -> [f32x16; 2] {
        let f = simd.avx512f;
        let (e, o) = (pulp::cast(even), pulp::cast(odd));
        let (lo, hi) = (pulp::cast(INTERLEAVE[0]), pulp::cast(INTERLEAVE[1]));
        [pulp::cast(f._mm512_permutex2var_ps(e, lo, o)), pulp::cast(f._mm512_permutex2var_ps(e, hi, o))]
    }
}

impl Plan {
    /// `act(z + bias)`, as the direct kernel's epilogue (on NaN, ReLU gives 0 and ReLU6 keeps it).
    #[inline(always)]
    fn epilogue(&self, simd: V4, z: f32x16, bias: f32x16) -> f32x16 {
        let f = simd.avx512f;
        let z = pulp::cast(simd.add_f32x16(z, bias));
        let zero = pulp::cast(simd.splat_f32x16(0.0));
        pulp::cast(match self.act {
            Act::Identity => z,
            Act::Relu => f._mm512_max_ps(z, zero),
            Act::Relu6 => f._mm512_min_ps(pulp::cast(simd.splat_f32x16(6.0)), f._mm512_max_ps(zero, z)),
        })
    }
}

/// Values from one transform point's matrix (`V[ξ]` or `M[ξ]`, `rows x bt`) to the next: one
/// vector more than it holds. Without it the 16 points lay a multiple of 4 KiB apart (64 x 64
/// floats = 16 KiB), the same L1 set for all 16 streams of the transforms, more than its ways:
/// the input transform took 4.2 ms of a 27 ms convolution.
#[inline(always)]
fn stride(rows: usize, bt: usize) -> usize {
    rows * bt + LANES
}

/// `_mm512_permutex2var_ps` indices that interleave two vectors `e`, `o` (lane `i` of `o` is
/// index `16 + i`): `[e0 o0 e1 o1 ... e7 o7]`, then `[e8 o8 ... e15 o15]`.
const INTERLEAVE: [[i32; LANES]; 2] = {
    let mut idx = [[0; LANES]; 2];
    let mut i = 0;
    while i < LANES {
        idx[0][i] = (i / 2 + (i % 2) * LANES) as i32;
        idx[1][i] = (LANES / 2 + i / 2 + (i % 2) * LANES) as i32;
        i += 1;
    }
    idx
};

/// `k` rows of a microkernel operand: row `kk` starts at `at + kk * stride` of `s`.
struct Rows<'a> {
    s: &'a [f32],
    stride: usize,
    at: usize,
}

/// The products' microkernel, forward and dW alike: `acc[r] += Σ_kk b[kk][r] a[kk][0..32]` over
/// `k` rows, 32 values of `a` in two vectors and `R` broadcasts of `b` per row. The accumulators
/// go in and out by value (with their address taken, LLVM kept them in memory; see
/// `direct.rs`).
#[inline(always)]
fn fma_pass<const R: usize>(
    simd: V4,
    a: &Rows<'_>,
    b: &Rows<'_>,
    k: usize,
    mut acc: [[f32x16; 2]; R],
) -> [[f32x16; 2]; R] {
    for kk in 0..k {
        let av: [f32x16; 2] =
            pulp::cast(*<&[f32; TILE_T]>::try_from(&a.s[a.at + kk * a.stride..][..TILE_T]).expect("32 values"));
        let bs: &[f32; R] = b.s[b.at + kk * b.stride..][..R].try_into().expect("R values");
        for r in 0..R {
            let bv = simd.splat_f32x16(bs[r]);
            acc[r][0] = simd.mul_add_f32x16(bv, av[0], acc[r][0]);
            acc[r][1] = simd.mul_add_f32x16(bv, av[1], acc[r][1]);
        }
    }
    acc
}

/// Where a microkernel pass writes: `M`'s rows from `r0` (output channel `c0`), `bt` tiles each.
struct Pass {
    bt: usize,
    c0: usize,
    r0: usize,
}

/// `G g Gᵀ` for 16 3x3 kernels (`g[ky * 3 + kx]`, one kernel per lane), `G = [1 0 0; ½ ½ ½;
/// ½ -½ ½; 0 0 1]`, as `[i * 4 + j]`.
fn transform_kernels(g: &[[f32; LANES]; 9]) -> [[f32; LANES]; XI] {
    type L = [f32; LANES];
    let half = |a: &L, b: &L, c: &L, sign: f32| -> L { std::array::from_fn(|l| 0.5 * (a[l] + sign * b[l] + c[l])) };
    let gcol = |a: &L, b: &L, c: &L| -> [L; 4] { [*a, half(a, b, c, 1.0), half(a, b, c, -1.0), *c] };
    // G g: 4 x 3, column by column; then each of its rows times Gᵀ.
    let cols: [[L; 4]; 3] = std::array::from_fn(|j| gcol(&g[j], &g[3 + j], &g[6 + j]));
    let rows: [[L; 4]; 4] = std::array::from_fn(|r| gcol(&cols[0][r], &cols[1][r], &cols[2][r]));
    std::array::from_fn(|k| rows[k / 4][k % 4])
}

/// `Bᵀ d B` of one tile (`d[i * 4 + j]`), `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`:
/// columns, then rows.
#[inline(always)]
fn input_points(simd: V4, d: &[f32x16; XI]) -> [f32x16; XI] {
    let col = |j: usize| bt_rows(simd, [d[j], d[4 + j], d[8 + j], d[12 + j]]);
    let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
    let row = |a: usize| bt_rows(simd, [c0[a], c1[a], c2[a], c3[a]]);
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    [r0[0], r0[1], r0[2], r0[3], r1[0], r1[1], r1[2], r1[3], r2[0], r2[1], r2[2], r2[3], r3[0], r3[1], r3[2], r3[3]]
}

/// `Aᵀ m A` of one tile (`m[i * 4 + j]`), `Aᵀ = [1 1 1 0; 0 1 -1 -1]`: the 2x2 outputs, row by
/// row.
#[inline(always)]
fn output_points(simd: V4, m: &[f32x16; XI]) -> [[f32x16; 2]; 2] {
    let col = |j: usize| at_rows(simd, [m[j], m[4 + j], m[8 + j], m[12 + j]]);
    let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
    [at_rows(simd, [c0[0], c1[0], c2[0], c3[0]]), at_rows(simd, [c0[1], c1[1], c2[1], c3[1]])]
}

/// `Bᵀ r` for one column of four vectors.
#[inline(always)]
fn bt_rows(simd: V4, [d0, d1, d2, d3]: [f32x16; 4]) -> [f32x16; 4] {
    [simd.sub_f32x16(d0, d2), simd.add_f32x16(d1, d2), simd.sub_f32x16(d2, d1), simd.sub_f32x16(d1, d3)]
}

/// `Aᵀ r` for one column of four vectors.
#[inline(always)]
fn at_rows(simd: V4, [m0, m1, m2, m3]: [f32x16; 4]) -> [f32x16; 2] {
    [simd.add_f32x16(simd.add_f32x16(m0, m1), m2), simd.sub_f32x16(simd.sub_f32x16(m1, m2), m3)]
}

#[inline(always)]
fn store(s: &mut [f32], at: usize, v: f32x16) {
    *<&mut [f32; LANES]>::try_from(&mut s[at..at + LANES]).expect("16 values") = pulp::cast(v);
}

/// [`Plan::image`]'s body, as a type whose `call` is `#[inline(always)]` (see `direct.rs`'s
/// `ImageOp`: a closure given to `V4::vectorize` was not inlined, and not compiled for AVX-512).
struct ImageOp<'a> {
    plan: &'a Plan,
    simd: V4,
    ximg: &'a [f32],
    b: &'a mut Bufs,
    chans: Range<usize>,
    y: &'a mut [f32],
}

impl pulp::NullaryFnOnce for ImageOp<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Bufs { xq, row, v, m } = self.b;
        self.plan.phase_split(self.ximg, xq, row);
        self.plan.image_impl(self.simd, xq, v, m, self.chans, self.y)
    }
}
