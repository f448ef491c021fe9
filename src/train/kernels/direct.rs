//! Dense convolution without an im2col matrix ("implicit GEMM"), for CPUs with AVX-512.
//!
//! In the phased image of [`super::phase::phase_pad_2d_into`] (each channel padded and split
//! into its stride phases along both axes), tap `(ky, kx)` of output `(oy, ox)` lies at a fixed
//! offset `off[k]` plus `oy * wq + ox` (`k = (ci, ky, kx)`, `wq` the phased row length): the
//! microkernel reads the image itself where im2col + GEMM would write an im2col tile and GEMM
//! a packed copy of it.
//!
//! Forward, pixel-major: a tile is up to 14 consecutive output pixels of one row x 32 output
//! channels, 28 AVX-512 accumulators; per `k`, the 14 pixels' values are broadcast from the
//! image and 32 channels of weights loaded (weights packed `[k][channel]` once per call).
//! Channels in the vectors, not pixels, so no tile straddles rows and no padding column is
//! computed (a pixel-vector tile of 48 on a 14-wide plane computed 16 columns per 14 and cut
//! across rows; measured as fast or faster on every shape, 56x56 included). The outer loop runs
//! over 32-channel blocks, so a block's weights (`K x 32`) stay in L2 while every tile of the
//! image runs over them. The output is written channel-major, transposed from the registers
//! with the epilogue applied.
//!
//! dW has the same microkernel shape with the reduction over pixels (see [`Packed::dw_image`]).

use std::ops::Range;

use pulp::{f32x16, x86::V4};

use super::epilogue::{Act, Epilogue};
use super::phase;

const LANES: usize = 16;
/// Most output pixels per forward tile (registers: `TILE_MAX x TILE_NV` accumulators).
const TILE_MAX: usize = 14;
/// Vectors of output channels per forward tile (32 channels).
const TILE_NV: usize = 2;
/// Output channels per forward tile.
const TILE_C: usize = TILE_NV * LANES;

/// The AVX-512 token when this CPU has it and the direct path is not switched off
/// (`TANUKI_CONV_DIRECT=0` falls back to im2col + GEMM).
pub(super) fn simd() -> Option<V4> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("TANUKI_CONV_DIRECT").map_or(true, |v| v != "0") && super::simd::has_avx512());
    if on {
        V4::try_new()
    } else {
        None
    }
}

/// A convolution's weights packed for the microkernel, and where each row `k` reads in one
/// phased image.
pub(super) struct Packed {
    co: usize,
    k: usize,
    /// `[k][cpad]`: channels contiguous, padded so that a 32-channel load from any channel
    /// below `co` stays in bounds.
    wn: Vec<f32>,
    cpad: usize,
    /// Per `k`: the offset of output `(0, 0)`'s value in the phased image.
    offs: Vec<usize>,
    ho: usize,
    wo: usize,
    wq: usize,
    /// Values the phased image must hold (with slack for the reads past its last row).
    xq_len: usize,
    /// The epilogue's bias, `cpad` long (zero past `co`, and all zero without one).
    bias: Vec<f32>,
    act: Act,
}

impl Packed {
    /// `w`: `[co][ci][kh][kw]`; `g`: one input plane's geometry (its `c` is `ci`); `ep`: what
    /// the forward kernel applies to its output.
    pub(super) fn new(w: &[f32], co: usize, g: &phase::Geom, ep: &Epilogue<'_>) -> Self {
        let (ci, kh, kw, s) = (g.c, g.kh, g.kw, g.s);
        let taps = kh * kw;
        let k = ci * taps;
        let cpad = co.next_multiple_of(LANES) + TILE_C;
        let mut wn = vec![0.0f32; k * cpad];
        for c in 0..co {
            for (kk, &v) in w[c * k..][..k].iter().enumerate() {
                wn[kk * cpad + c] = v;
            }
        }
        let (hq, wq, per) = (g.hq(), g.wq(), g.phased_len());
        let tap_off: Vec<usize> = (0..taps)
            .map(|t| {
                let (ky, kx) = (t / kw, t % kw);
                (((ky % s) * s + kx % s) * hq + ky / s) * wq + kx / s
            })
            .collect();
        let offs: Vec<usize> = (0..k).map(|kk| (kk / taps) * per + tap_off[kk % taps]).collect();
        // dW reads whole vectors of 16 pixels from every offset.
        let xq_len = offs.iter().max().copied().unwrap_or(0) + (g.ho * wq).next_multiple_of(LANES) + LANES;
        let mut bias = vec![0.0f32; cpad];
        if let Some(b) = ep.bias {
            bias[..co].copy_from_slice(&b[..co]);
        }
        Self { co, k, wn, cpad, offs, ho: g.ho, wo: g.wo, wq, xq_len: xq_len.max(ci * per), bias, act: ep.act }
    }

    pub(super) fn xq_len(&self) -> usize {
        self.xq_len
    }

    /// Writes output channels `chans` of one image into `y` (`chans.len() x ho x wo`), from its
    /// phased image `xq` ([`Packed::xq_len`] long), with the epilogue applied.
    pub(super) fn image(&self, simd: V4, xq: &[f32], chans: Range<usize>, y: &mut [f32]) {
        simd.vectorize(ImageOp { packed: self, simd, xq, chans, y })
    }

    #[inline(always)]
    fn image_impl(&self, simd: V4, xq: &[f32], chans: Range<usize>, y: &mut [f32]) {
        let (wo, wq, plane) = (self.wo, self.wq, self.ho * self.wo);
        // Each row in near-equal tiles of at most TILE_MAX pixels (56 = 4 x 14, 12 = 12).
        let len = wo.div_ceil(wo.div_ceil(TILE_MAX));
        for c in chans.clone().step_by(TILE_C) {
            for oy in 0..self.ho {
                for ox in (0..wo).step_by(len) {
                    let at = TileAt { q: oy * wq + ox, c, chans: chans.clone(), p: oy * wo + ox, plane };
                    match len.min(wo - ox) {
                        1 => self.tile::<1>(simd, xq, &at, y),
                        2 => self.tile::<2>(simd, xq, &at, y),
                        3 => self.tile::<3>(simd, xq, &at, y),
                        4 => self.tile::<4>(simd, xq, &at, y),
                        5 => self.tile::<5>(simd, xq, &at, y),
                        6 => self.tile::<6>(simd, xq, &at, y),
                        7 => self.tile::<7>(simd, xq, &at, y),
                        8 => self.tile::<8>(simd, xq, &at, y),
                        9 => self.tile::<9>(simd, xq, &at, y),
                        10 => self.tile::<10>(simd, xq, &at, y),
                        11 => self.tile::<11>(simd, xq, &at, y),
                        12 => self.tile::<12>(simd, xq, &at, y),
                        13 => self.tile::<13>(simd, xq, &at, y),
                        _ => self.tile::<TILE_MAX>(simd, xq, &at, y),
                    }
                }
            }
        }
    }

    /// One tile: `M` pixels from wide position `at.q`, 32 channels from `at.c`.
    #[inline(always)]
    fn tile<const M: usize>(&self, simd: V4, xq: &[f32], at: &TileAt, y: &mut [f32]) {
        let zero = simd.splat_f32x16(0.0);
        let mut acc = [[zero; TILE_NV]; M];
        let cpad = self.cpad;
        let wn = &self.wn[at.c..];
        for (kk, &off) in self.offs.iter().enumerate() {
            let w: &[f32; TILE_C] = wn[kk * cpad..][..TILE_C].try_into().expect("32 weights");
            let wv: [f32x16; TILE_NV] = pulp::cast(*w);
            let xs: &[f32; M] = xq[off + at.q..][..M].try_into().expect("M pixels");
            for i in 0..M {
                let xv = simd.splat_f32x16(xs[i]);
                for v in 0..TILE_NV {
                    acc[i][v] = simd.mul_add_f32x16(xv, wv[v], acc[i][v]);
                }
            }
        }
        // The epilogue in registers (channels in the lanes: one bias vector per 16), then
        // transposed into the output's rows (channel-major).
        let bias: [f32x16; TILE_NV] = pulp::cast(*<&[f32; TILE_C]>::try_from(&self.bias[at.c..][..TILE_C]).expect("32 biases"));
        let f = simd.avx512f;
        let (zero, six) = (pulp::cast(simd.splat_f32x16(0.0)), pulp::cast(simd.splat_f32x16(6.0)));
        // By value (no `iter_mut` over `acc`): with its address taken, LLVM kept the
        // accumulators in memory across the k loop, 2.5x slower.
        let vals: [[[f32; LANES]; TILE_NV]; M] = std::array::from_fn(|i| {
            std::array::from_fn(|v| {
                let z = f._mm512_add_ps(pulp::cast(acc[i][v]), pulp::cast(bias[v]));
                // maxps/minps return their second operand when either is NaN: ReLU gives 0 on
                // NaN as f32::max does, ReLU6 keeps NaN as f32::clamp does (the scalar epilogue).
                pulp::cast(match self.act {
                    Act::Identity => z,
                    Act::Relu => f._mm512_max_ps(z, zero),
                    Act::Relu6 => f._mm512_min_ps(six, f._mm512_max_ps(zero, z)),
                })
            })
        });
        let c0 = at.chans.start;
        for j in 0..TILE_C.min(at.chans.end - at.c) {
            let row: &mut [f32; M] = (&mut y[(at.c + j - c0) * at.plane + at.p..][..M]).try_into().expect("M outputs");
            for (i, o) in row.iter_mut().enumerate() {
                *o = vals[i][j / LANES][j % LANES];
            }
        }
    }
}

/// Where a forward tile lies: wide position `q` of its first pixel, first channel `c` (of the
/// output's channels `chans`), its first pixel `p` in an output plane of `plane` values.
struct TileAt {
    q: usize,
    c: usize,
    chans: Range<usize>,
    p: usize,
    plane: usize,
}

/// [`Packed::image`]'s body, as a type whose `call` is `#[inline(always)]`: `V4::vectorize` only
/// compiles for AVX-512 what is inlined into it, and a closure there was not (it became a
/// plain call, with every intrinsic an out-of-line function: 50x slower).
struct ImageOp<'a> {
    packed: &'a Packed,
    simd: V4,
    xq: &'a [f32],
    chans: Range<usize>,
    y: &'a mut [f32],
}

impl pulp::NullaryFnOnce for ImageOp<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.packed.image_impl(self.simd, self.xq, self.chans, self.y)
    }
}

impl Packed {
    /// Output channels per row of [`Packed::dw_image`]'s `dyt`: `co` in whole vectors.
    pub(super) fn co_pad(&self) -> usize {
        self.co.next_multiple_of(LANES)
    }

    /// Rows of [`Packed::dw_image`]'s `dyt`: the output pixels taken wide.
    pub(super) fn wide(&self) -> usize {
        self.ho * self.wq
    }

    /// Adds one image's kernel gradient to `dwt` (`k x co_pad`, transposed): `dwt[k][c] +=
    /// sum_q xq[off[k] + q] * dyt[q][c]`, where `dyt` is dY transposed and taken wide
    /// ([`Packed::wide`] rows of [`Packed::co_pad`], zero in the garbage columns and the padding
    /// channels, so that what the image holds there does not count) and `xq` the phased image.
    /// The forward microkernel's shape again, with the reduction over `q`: per `q`, four vectors
    /// of dY (64 channels) and six broadcast image values, 24 accumulators; `q` is cut into
    /// chunks so that the chunk of `dyt` stays in L2 while every `k` runs over it.
    pub(super) fn dw_image(&self, simd: V4, xq: &[f32], dyt: &[f32], dwt: &mut [f32]) {
        simd.vectorize(DwOp { packed: self, simd, xq, dyt, dwt })
    }

    #[inline(always)]
    fn dw_impl(&self, simd: V4, xq: &[f32], dyt: &[f32], dwt: &mut [f32]) {
        const QCHUNK: usize = 256;
        let (k, cp, wide) = (self.k, self.co_pad(), self.wide());
        for q0 in (0..wide).step_by(QCHUNK) {
            let q1 = (q0 + QCHUNK).min(wide);
            let mut k0 = 0;
            while k0 < k {
                let nk = if k0 + DW_NK <= k { DW_NK } else { 1 };
                let mut c0 = 0;
                while c0 < cp {
                    let nv = ((cp - c0) / LANES).min(DW_NV);
                    let at = DwAt { q: q0..q1, k0, c0, cp };
                    match (nk, nv) {
                        (DW_NK, DW_NV) => dw_block::<DW_NK, DW_NV>(simd, xq, &self.offs, dyt, &at, dwt),
                        (DW_NK, 2) | (DW_NK, 3) => dw_block::<DW_NK, 2>(simd, xq, &self.offs, dyt, &at, dwt),
                        (DW_NK, _) => dw_block::<DW_NK, 1>(simd, xq, &self.offs, dyt, &at, dwt),
                        (_, DW_NV) => dw_block::<1, DW_NV>(simd, xq, &self.offs, dyt, &at, dwt),
                        _ => dw_block::<1, 1>(simd, xq, &self.offs, dyt, &at, dwt),
                    }
                    c0 += LANES * if nv == DW_NV { DW_NV } else if nv >= 2 { 2 } else { 1 };
                }
                k0 += nk;
            }
        }
    }
}

/// `k` per dW block.
const DW_NK: usize = 6;
/// Vectors of output channels per dW block.
const DW_NV: usize = 4;

/// Where a dW block lies: pixels `q`, rows `k0..k0 + NK` of `dwt`, channels `c0..c0 + 16 NV`
/// (of `cp` per row).
struct DwAt {
    q: Range<usize>,
    k0: usize,
    c0: usize,
    cp: usize,
}

/// `dwt[k0 + j][c0 + 16 v..][..16] += sum_q xq[offs[k0 + j] + q] * dyt[q][c0 + 16 v..][..16]`.
#[inline(always)]
fn dw_block<const NK: usize, const NV: usize>(simd: V4, xq: &[f32], offs: &[usize], dyt: &[f32], at: &DwAt, dwt: &mut [f32]) {
    let (n, cp) = (at.q.len(), at.cp);
    let mut acc: [[f32x16; NV]; NK] = std::array::from_fn(|j| std::array::from_fn(|v| pulp::cast(vec16(dwt, (at.k0 + j) * cp + at.c0 + v * LANES))));
    // Each operand cut to exactly n steps, so that the loop's indexing needs no checks.
    let xs: [&[f32]; NK] = std::array::from_fn(|j| &xq[offs[at.k0 + j] + at.q.start..][..n]);
    let rows = &dyt[at.q.start * cp..][..n * cp];
    for (i, row) in rows.chunks_exact(cp).enumerate() {
        let d: [f32x16; NV] = std::array::from_fn(|v| pulp::cast(vec16(row, at.c0 + v * LANES)));
        for j in 0..NK {
            let xv = simd.splat_f32x16(xs[j][i]);
            for v in 0..NV {
                acc[j][v] = simd.mul_add_f32x16(xv, d[v], acc[j][v]);
            }
        }
    }
    for (j, accj) in acc.iter().enumerate() {
        for (v, a) in accj.iter().enumerate() {
            let at = (at.k0 + j) * cp + at.c0 + v * LANES;
            dwt[at..at + LANES].copy_from_slice(&pulp::cast::<f32x16, [f32; LANES]>(*a));
        }
    }
}

#[inline(always)]
fn vec16(s: &[f32], at: usize) -> [f32; LANES] {
    *<&[f32; LANES]>::try_from(&s[at..at + LANES]).expect("16 lanes")
}

/// [`Packed::dw_image`]'s body (see [`ImageOp`]).
struct DwOp<'a> {
    packed: &'a Packed,
    simd: V4,
    xq: &'a [f32],
    dyt: &'a [f32],
    dwt: &'a mut [f32],
}

impl pulp::NullaryFnOnce for DwOp<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.packed.dw_impl(self.simd, self.xq, self.dyt, self.dwt)
    }
}

