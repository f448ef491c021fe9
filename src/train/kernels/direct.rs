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
//! dW has the same microkernel shape with the reduction over pixels (see [`Packed::dw_images`]).

use std::ops::Range;

use pulp::{f32x16, x86::V4};

use super::epilogue::{Act, Epilogue};
use super::phase;

mod dw;

const LANES: usize = 16;
/// Most output pixels per forward tile (registers: `TILE_MAX x TILE_NV` accumulators).
const TILE_MAX: usize = 14;
/// Vectors of output channels per forward tile (32 channels).
const TILE_NV: usize = 2;
/// Output channels per forward tile.
pub(super) const TILE_C: usize = TILE_NV * LANES;

/// The AVX-512 token when this CPU has it and the direct path is not switched off
/// ([`KernelSettings::direct_conv`](super::KernelSettings) off falls back to im2col + GEMM).
pub(super) fn simd() -> Option<V4> {
    if super::settings::settings().direct_conv && super::simd::has_avx512() {
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
    /// Values the phased image holds (`ci` phased planes).
    xq_len: usize,
    /// The epilogue's bias, `cpad` long (zero past `co`, and all zero without one).
    bias: Vec<f32>,
    act: Act,
}

impl Packed {
    /// `w`: `[co][ci][kh][kw]`; `g`: one input plane's geometry (its `c` is `ci`); `ep`: what
    /// the forward kernel applies to its output.
    pub(super) fn new(w: &[f32], co: usize, g: &phase::Geom, ep: &Epilogue<'_>) -> Self {
        let mut p = Self::layout(co, g);
        let k = p.k;
        // Channel blocks of 16 outermost: 16 rows of `w` read in step, whole 16-channel runs of
        // `wn` written (either loop order alone makes one side a stride-k or stride-cpad walk).
        p.wn = vec![0.0f32; k * p.cpad];
        for c0 in (0..co).step_by(LANES) {
            for kk in 0..k {
                for c in c0..(c0 + LANES).min(co) {
                    p.wn[kk * p.cpad + c] = w[c * k + kk];
                }
            }
        }
        if let Some(b) = ep.bias {
            p.bias[..co].copy_from_slice(&b[..co]);
        }
        p.act = ep.act;
        p
    }

    /// For the convolution whose output is dX at stride 1 (of one with weights `w`, `[co][ci][kh]
    /// [kw]`): its input is dY (`co` channels), its kernel `w` flipped with the channels swapped,
    /// packed straight from `w`. `g`: the geometry of dY padded for it (its `c` is `co`).
    pub(super) fn transposed(w: &[f32], ci: usize, g: &phase::Geom) -> Self {
        let mut p = Self::layout(ci, g);
        let (co, taps) = (g.c, g.kh * g.kw);
        p.wn = vec![0.0f32; p.k * p.cpad];
        for c0 in (0..ci).step_by(LANES) {
            for o in 0..co {
                for t in 0..taps {
                    let row = &mut p.wn[(o * taps + taps - 1 - t) * p.cpad..];
                    for c in c0..(c0 + LANES).min(ci) {
                        row[c] = w[(o * ci + c) * taps + t];
                    }
                }
            }
        }
        p
    }

    /// The geometry and offsets alone (what dW needs): no weights, no epilogue.
    pub(super) fn layout(co: usize, g: &phase::Geom) -> Self {
        let (ci, kh, kw) = (g.c, g.kh, g.kw);
        let taps = kh * kw;
        let k = ci * taps;
        let cpad = co.next_multiple_of(LANES) + TILE_C;
        let (wq, per) = (g.wq(), g.phased_len());
        let tap_off: Vec<usize> = (0..taps).map(|t| g.tap_offset(t / kw, t % kw)).collect();
        let offs: Vec<usize> = (0..k).map(|kk| (kk / taps) * per + tap_off[kk % taps]).collect();
        // Every read stays inside its channel's phased plane: the last output of a tap reads
        // (hq - 1) * wq + wq - 1 past its phase's start at most.
        let xq_len = ci * per;
        Self {
            co,
            k,
            wn: Vec::new(),
            cpad,
            offs,
            ho: g.ho,
            wo: g.wo,
            wq,
            xq_len,
            bias: vec![0.0; cpad],
            act: Act::Identity,
        }
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
        if M > REG_STORE_MAX {
            return self.store_scalar(acc, at, y);
        }
        // The epilogue in registers (channels in the lanes: one bias vector per 16), then
        // transposed into the output's rows (channel-major).
        let bias: [f32x16; TILE_NV] =
            pulp::cast(*<&[f32; TILE_C]>::try_from(&self.bias[at.c..][..TILE_C]).expect("32 biases"));
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
        let valid = TILE_C.min(at.chans.end - at.c);
        for (v, block) in (0..TILE_NV).zip((0..valid).step_by(LANES)) {
            // This vector's 16 channels x M pixels, transposed: one vector per channel.
            let rows: [f32x16; LANES] =
                std::array::from_fn(|i| if i < M { pulp::cast(vals[i][v]) } else { pulp::cast(zero) });
            let cols = transpose16(simd, rows);
            for (j, col) in cols.iter().enumerate().take(valid - block) {
                let row: &mut [f32; M] =
                    (&mut y[(at.c + block + j - c0) * at.plane + at.p..][..M]).try_into().expect("M outputs");
                let col: [f32; LANES] = pulp::cast(*col);
                *row = *<&[f32; M]>::try_from(&col[..M]).expect("M <= 16");
            }
        }
    }
}

impl Packed {
    /// [`Packed::tile`]'s store for tiles of 13 and 14 pixels: with 26-28 accumulators, the
    /// in-register epilogue and transpose made LLVM spill inside the k loop (2.5x slower), so
    /// these go through memory: scalar moves into each channel's row, then the epilogue on it
    /// (the same operations, so the same values).
    #[inline(always)]
    fn store_scalar<const M: usize>(&self, acc: [[f32x16; TILE_NV]; M], at: &TileAt, y: &mut [f32]) {
        let vals: [[[f32; LANES]; TILE_NV]; M] = acc.map(|a| a.map(pulp::cast));
        let c0 = at.chans.start;
        for j in 0..TILE_C.min(at.chans.end - at.c) {
            let (c, b) = (at.c + j, self.bias[at.c + j]);
            let row: &mut [f32; M] = (&mut y[(c - c0) * at.plane + at.p..][..M]).try_into().expect("M outputs");
            for (i, o) in row.iter_mut().enumerate() {
                let z = vals[i][j / LANES][j % LANES] + b;
                *o = match self.act {
                    Act::Identity => z,
                    Act::Relu => z.max(0.0),
                    Act::Relu6 => z.clamp(0.0, 6.0),
                };
            }
        }
    }
}

/// Most pixels per tile for [`Packed::tile`]'s in-register store.
const REG_STORE_MAX: usize = 12;

/// The transpose of a 16 x 16 block (row `i` lane `j` becomes row `j` lane `i`): 64 shuffles
/// in four rounds (32-bit, 64-bit and two 128-bit interleaves), where scalar moves took 256
/// loads and stores.
#[inline(always)]
pub(super) fn transpose16(simd: V4, r: [f32x16; LANES]) -> [f32x16; LANES] {
    use core::arch::x86_64::{__m512, __m512d};
    let f = simd.avx512f;
    let r: [__m512; LANES] = r.map(pulp::cast);
    let t: [__m512; LANES] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            f._mm512_unpacklo_ps(a, b)
        } else {
            f._mm512_unpackhi_ps(a, b)
        }
    });
    let pd = |x: __m512| -> __m512d { pulp::cast(x) };
    let u: [__m512; LANES] = std::array::from_fn(|i| {
        let (base, m) = (i & !3, i & 3);
        let (a, b) = (pd(t[base + m / 2]), pd(t[base + m / 2 + 2]));
        pulp::cast(if m % 2 == 0 { f._mm512_unpacklo_pd(a, b) } else { f._mm512_unpackhi_pd(a, b) })
    });
    let v: [__m512; LANES] = std::array::from_fn(|i| {
        let (half, m) = (i / 8 * 8, i % 4);
        let (a, b) = (u[half + m], u[half + 4 + m]);
        if i % 8 < 4 {
            f._mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            f._mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    std::array::from_fn(|i| {
        let m = i % 8;
        let (a, b) = (v[m], v[8 + m]);
        pulp::cast(if i < 8 { f._mm512_shuffle_f32x4::<0x88>(a, b) } else { f._mm512_shuffle_f32x4::<0xdd>(a, b) })
    })
}

/// The 16 values of `s` from `at`, as a vector.
#[inline(always)]
pub(super) fn load16(s: &[f32], at: usize) -> f32x16 {
    pulp::cast(*<&[f32; LANES]>::try_from(&s[at..at + LANES]).expect("16 values"))
}

/// Up to 16 values as a vector, zero past `s.len()` (a short piece goes through a zeroed copy).
#[inline(always)]
pub(super) fn vec_or_zero(s: &[f32]) -> f32x16 {
    match <&[f32; LANES]>::try_from(s) {
        Ok(full) => pulp::cast(*full),
        Err(_) => {
            let mut part = [0.0f32; LANES];
            part[..s.len()].copy_from_slice(s);
            pulp::cast(part)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `transpose16` under the AVX-512 target features.
    struct Transpose(V4, [f32x16; LANES]);

    impl pulp::NullaryFnOnce for Transpose {
        type Output = [f32x16; LANES];

        #[inline(always)]
        fn call(self) -> Self::Output {
            transpose16(self.0, self.1)
        }
    }

    #[test]
    fn transpose16_transposes() {
        let Some(simd) = simd() else { return };
        let m: [[f32; LANES]; LANES] = std::array::from_fn(|i| std::array::from_fn(|j| (i * LANES + j) as f32));
        let t: [[f32; LANES]; LANES] = simd.vectorize(Transpose(simd, m.map(pulp::cast))).map(pulp::cast);
        for i in 0..LANES {
            for j in 0..LANES {
                assert_eq!(t[j][i], m[i][j], "({i}, {j})");
            }
        }
    }
}
