//! Dense convolution without an im2col matrix ("implicit GEMM"), for CPUs with AVX-512.
//!
//! In the phased image of [`super::phase::phase_pad_2d_into`] (each channel padded and split
//! into its stride phases along both axes), tap `(ky, kx)` of output `(oy, ox)` lies at a fixed
//! offset plus `oy * wq + ox`. So row `k = (ci, ky, kx)` of the im2col matrix, over the output
//! pixels taken "wide" (`wq` columns per output row, the last `wq - wo` of them garbage), is the
//! contiguous slice `xq[off[k] + q..]`: the microkernel reads its right-hand operand straight
//! from the image, and neither an im2col tile nor GEMM's packed copy of it is ever written.
//!
//! The microkernel keeps an `MR x TILE` block of the output (8 channels x 48 wide pixels, 24
//! AVX-512 registers) in registers over a run of `k`, with one broadcast weight and three vector
//! loads per `k`. Per 48-pixel tile, `k` is cut into chunks whose image rows fit in L1 and every
//! channel block runs over a chunk before the next, so the image is read from L1 `Co / 8`
//! times and from memory once.

use std::ops::Range;

use pulp::{f32x16, x86::V4};

use super::epilogue::Epilogue;
use super::phase;

const LANES: usize = 16;
/// Vectors of wide output pixels per tile.
const NV: usize = 3;
/// Wide output pixels per tile.
const TILE: usize = NV * LANES;
/// Output channels per tile (and per block of [`Packed::image`]'s `blocks`).
pub(super) const MR: usize = 8;
/// Bytes of image rows a `k` chunk may read (a little under half of a 48 KiB L1).
const CHUNK_BYTES: usize = 20 * 1024;

type Acc = [[f32x16; NV]; MR];

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

/// A convolution's weights packed for the microkernel (per block of 8 output channels, `k`-major,
/// zero rows past the last channel), and where each row `k` reads in one image.
pub(super) struct Packed {
    co: usize,
    k: usize,
    blocks: usize,
    /// `[block][k][MR]`.
    wp: Vec<f32>,
    /// Per `k`: the offset of output `(0, 0)`'s value in the phased image.
    offs: Vec<usize>,
    /// `k` rows per chunk.
    kchunk: usize,
    ho: usize,
    wo: usize,
    wq: usize,
    /// Values the phased image must hold (with slack for the last tile's reads).
    xq_len: usize,
    /// Whether the pixel-major kernel runs (planes under [`NARROW_BELOW`] wide).
    narrow: bool,
    /// `[k][cpad]`, for the pixel-major kernel.
    wn: Vec<f32>,
    cpad: usize,
}

impl Packed {
    /// `w`: `[co][ci][kh][kw]`; `g`: one input plane's geometry (its `c` is `ci`).
    pub(super) fn new(w: &[f32], co: usize, g: &phase::Geom) -> Self {
        let (ci, kh, kw, s) = (g.c, g.kh, g.kw, g.s);
        let taps = kh * kw;
        let k = ci * taps;
        let blocks = co.div_ceil(MR);
        let mut wp = vec![0.0f32; blocks * k * MR];
        for c in 0..co {
            let (b, i) = (c / MR, c % MR);
            for (kk, &v) in w[c * k..][..k].iter().enumerate() {
                wp[(b * k + kk) * MR + i] = v;
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
        let bytes_per_ci = kh * (TILE + kw) * 4;
        let kchunk = (CHUNK_BYTES / bytes_per_ci).clamp(1, ci) * taps;
        let wide = (g.ho * wq).next_multiple_of(TILE);
        let xq_len = offs.iter().max().copied().unwrap_or(0) + wide;
        // Narrow planes go pixel-major (see `narrow_image`), with the weights `[k][cpad]`:
        // channels contiguous, padded so that a 32-channel load from any channel below `co`
        // stays in bounds.
        let narrow = g.wo < NARROW_BELOW;
        let cpad = co.next_multiple_of(LANES) + NARROW_NV * LANES;
        let mut wn = Vec::new();
        if narrow {
            wn = vec![0.0f32; k * cpad];
            for c in 0..co {
                for (kk, &v) in w[c * k..][..k].iter().enumerate() {
                    wn[kk * cpad + c] = v;
                }
            }
        }
        Self { co, k, blocks, wp, offs, kchunk, ho: g.ho, wo: g.wo, wq, xq_len: xq_len.max(ci * per), narrow, wn, cpad }
    }

    pub(super) fn xq_len(&self) -> usize {
        self.xq_len
    }

    pub(super) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Writes output channels `8 * blocks` (up to `co`) of one image into `y`
    /// (`channels x ho x wo`), from its phased image `xq` ([`Packed::xq_len`] long), with the
    /// epilogue applied.
    pub(super) fn image(&self, simd: V4, xq: &[f32], blocks: Range<usize>, y: &mut [f32], ep: &Epilogue<'_>, tiles: &mut Vec<Acc>) {
        simd.vectorize(ImageOp { packed: self, simd, xq, blocks, y, ep, tiles })
    }

    #[inline(always)]
    fn image_impl(&self, simd: V4, xq: &[f32], blocks: Range<usize>, y: &mut [f32], ep: &Epilogue<'_>, tiles: &mut Vec<Acc>) {
        if self.narrow {
            let chans = (blocks.start * MR).min(self.co)..(blocks.end * MR).min(self.co);
            return self.narrow_image(simd, xq, chans, y, ep);
        }
        let zero = simd.splat_f32x16(0.0);
        tiles.resize(blocks.len(), [[zero; NV]; MR]);
        let (k, wq, wo) = (self.k, self.wq, self.wo);
        let wide = self.ho * wq;
        let c0 = blocks.start * MR;
        let xq = &xq[..self.xq_len];
        // Rows a whole number of tiles wide are cut row by row (no garbage column is computed,
        // every tile is one fixed-size copy out); others are swept flat across rows.
        let by_rows = wo % TILE == 0;
        let starts: Vec<usize> = if by_rows {
            (0..self.ho).flat_map(|oy| (0..wo).step_by(TILE).map(move |x| oy * wq + x)).collect()
        } else {
            (0..wide).step_by(TILE).collect()
        };
        for q0 in starts {
            for k0 in (0..k).step_by(self.kchunk) {
                let k1 = (k0 + self.kchunk).min(k);
                let offs = &self.offs[k0..k1];
                for (b, acc) in blocks.clone().zip(tiles.iter_mut()) {
                    if k0 == 0 {
                        *acc = [[zero; NV]; MR];
                    }
                    let wp = &self.wp[(b * k + k0) * MR..(b * k + k1) * MR];
                    micro(simd, xq, q0, offs, wp, acc);
                }
            }
            for (b, acc) in blocks.clone().zip(tiles.iter()) {
                self.store(q0, b, acc, c0, y, ep);
            }
        }
    }

    /// Copies the tile at `q0` of block `b` out into `y` (whose first channel is `c0`),
    /// dropping the garbage columns, with the epilogue applied. A tile inside one row's valid
    /// columns (every tile of a plane cut by rows) is a single fixed-size copy per channel.
    #[inline(always)]
    fn store(&self, q0: usize, b: usize, acc: &Acc, c0: usize, y: &mut [f32], ep: &Epilogue<'_>) {
        let (wq, wo) = (self.wq, self.wo);
        let (wide, plane) = (self.ho * wq, self.ho * wo);
        let q1 = (q0 + TILE).min(wide);
        let mut segs = [(0usize, 0usize, 0usize); TILE / 2 + 2];
        let mut nseg = 0;
        let mut q = q0;
        while q < q1 {
            let (oy, ox) = (q / wq, q % wq);
            let row_end = (oy * wq + wq).min(q1);
            if ox < wo {
                let end = (oy * wq + wo).min(q1);
                segs[nseg] = (q - q0, oy * wo + ox, end - q);
                nseg += 1;
            }
            q = row_end;
        }
        let segs = &segs[..nseg];
        let whole = matches!(segs, [(0, _, TILE)]);
        for (i, rowacc) in acc.iter().enumerate() {
            let c = b * MR + i;
            if c >= self.co {
                break;
            }
            let mut vals: [f32; TILE] = pulp::cast(*rowacc);
            ep.apply(c, &mut vals);
            let yc = &mut y[(c - c0) * plane..][..plane];
            if whole {
                let dst: &mut [f32; TILE] = (&mut yc[segs[0].1..][..TILE]).try_into().expect("a whole tile");
                *dst = vals;
            } else {
                for &(src, dst, len) in segs {
                    yc[dst..dst + len].copy_from_slice(&vals[src..src + len]);
                }
            }
        }
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

/// [`Packed::image`]'s body, as a type whose `call` is `#[inline(always)]`: `V4::vectorize` only
/// compiles for AVX-512 what is inlined into it, and a closure there was not (it became a
/// plain call, with every intrinsic an out-of-line function: 50x slower).
struct ImageOp<'a, 'b> {
    packed: &'a Packed,
    simd: V4,
    xq: &'a [f32],
    blocks: Range<usize>,
    y: &'a mut [f32],
    ep: &'a Epilogue<'b>,
    tiles: &'a mut Vec<Acc>,
}

impl pulp::NullaryFnOnce for ImageOp<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.packed.image_impl(self.simd, self.xq, self.blocks, self.y, self.ep, self.tiles)
    }
}

/// Planes narrower than this run pixel-major: on a 12- or 14-wide plane the wide sweep
/// computes 14 or 16 columns per 12 or 14 and cuts 48-pixel tiles across rows (75-85% of its
/// products useful); one output row at a time, with channels in the vectors, wastes none.
const NARROW_BELOW: usize = 20;
/// Most output pixels per pixel-major tile (registers: `NARROW_MAX x NARROW_NV` accumulators).
const NARROW_MAX: usize = 14;
/// Vectors of output channels per pixel-major tile (32 channels).
const NARROW_NV: usize = 2;

impl Packed {
    /// Channels `chans` of one image, pixel-major: tiles of up to 14 pixels of one output row x
    /// 32 channels, each pixel's value broadcast from the phased image, 32 channels of weights
    /// loaded per `k`. Channel blocks outermost, so that a block's weights (`k x 32`) stay in L2
    /// while every tile of the image runs over them.
    #[inline(always)]
    fn narrow_image(&self, simd: V4, xq: &[f32], chans: Range<usize>, y: &mut [f32], ep: &Epilogue<'_>) {
        let (wo, wq, plane) = (self.wo, self.wq, self.ho * self.wo);
        let pieces = wo.div_ceil(NARROW_MAX);
        let len = wo.div_ceil(pieces);
        for c in chans.clone().step_by(NARROW_NV * LANES) {
            for oy in 0..self.ho {
                for ox in (0..wo).step_by(len) {
                    let m = len.min(wo - ox);
                    let at = NarrowAt { q: oy * wq + ox, c, chans: chans.clone(), p: oy * wo + ox, plane };
                    match m {
                        1 => self.narrow_tile::<1>(simd, xq, &at, y, ep),
                        2 => self.narrow_tile::<2>(simd, xq, &at, y, ep),
                        3 => self.narrow_tile::<3>(simd, xq, &at, y, ep),
                        4 => self.narrow_tile::<4>(simd, xq, &at, y, ep),
                        5 => self.narrow_tile::<5>(simd, xq, &at, y, ep),
                        6 => self.narrow_tile::<6>(simd, xq, &at, y, ep),
                        7 => self.narrow_tile::<7>(simd, xq, &at, y, ep),
                        8 => self.narrow_tile::<8>(simd, xq, &at, y, ep),
                        9 => self.narrow_tile::<9>(simd, xq, &at, y, ep),
                        10 => self.narrow_tile::<10>(simd, xq, &at, y, ep),
                        11 => self.narrow_tile::<11>(simd, xq, &at, y, ep),
                        12 => self.narrow_tile::<12>(simd, xq, &at, y, ep),
                        13 => self.narrow_tile::<13>(simd, xq, &at, y, ep),
                        _ => self.narrow_tile::<NARROW_MAX>(simd, xq, &at, y, ep),
                    }
                }
            }
        }
    }

    /// One pixel-major tile: `M` pixels from wide position `at.q`, 32 channels from `at.c`.
    #[inline(always)]
    fn narrow_tile<const M: usize>(&self, simd: V4, xq: &[f32], at: &NarrowAt, y: &mut [f32], ep: &Epilogue<'_>) {
        let zero = simd.splat_f32x16(0.0);
        let mut acc = [[zero; NARROW_NV]; M];
        let cpad = self.cpad;
        // The weights of these 32 channels, row k at k * cpad (bounds checked once per row).
        let wn = &self.wn[at.c..];
        for (kk, &off) in self.offs.iter().enumerate() {
            let w: &[f32; NARROW_NV * LANES] = wn[kk * cpad..][..NARROW_NV * LANES].try_into().expect("32 weights");
            let wv: [f32x16; NARROW_NV] = pulp::cast(*w);
            let xs: &[f32; M] = xq[off + at.q..][..M].try_into().expect("M pixels");
            for i in 0..M {
                let xv = simd.splat_f32x16(xs[i]);
                for v in 0..NARROW_NV {
                    acc[i][v] = simd.mul_add_f32x16(xv, wv[v], acc[i][v]);
                }
            }
        }
        // Transpose into the output's rows (channel-major), with the epilogue.
        let vals: [[[f32; LANES]; NARROW_NV]; M] = acc.map(|a| a.map(pulp::cast));
        let c0 = at.chans.start;
        for j in 0..(NARROW_NV * LANES).min(at.chans.end - at.c) {
            let c = at.c + j;
            let row = &mut y[(c - c0) * at.plane + at.p..][..M];
            for (i, o) in row.iter_mut().enumerate() {
                *o = vals[i][j / LANES][j % LANES];
            }
            ep.apply(c, row);
        }
    }
}

/// Where a pixel-major tile lies: wide position `q` of its first pixel, first channel `c` (of
/// the output's channels `chans`), its first pixel `p` in an output plane of `plane` values.
struct NarrowAt {
    q: usize,
    c: usize,
    chans: Range<usize>,
    p: usize,
    plane: usize,
}

/// `acc[i][v] += sum_k wp[k][i] * xq[q0 + offs[k] + 16 v..][..16]`.
#[inline(always)]
fn micro(simd: V4, xq: &[f32], q0: usize, offs: &[usize], wp: &[f32], acc: &mut Acc) {
    let mut a = *acc;
    for (&off, w) in offs.iter().zip(wp.chunks_exact(MR)) {
        let src: &[f32; TILE] = xq[q0 + off..][..TILE].try_into().expect("a tile of the image");
        let bv: [f32x16; NV] = pulp::cast(*src);
        let w: &[f32; MR] = w.try_into().expect("MR weights");
        for i in 0..MR {
            let wi = simd.splat_f32x16(w[i]);
            for v in 0..NV {
                a[i][v] = simd.mul_add_f32x16(wi, bv[v], a[i][v]);
            }
        }
    }
    *acc = a;
}
