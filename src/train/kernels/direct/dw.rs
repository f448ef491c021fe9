//! dW of the direct convolution: the forward microkernel's shape with the reduction over
//! pixels, and the transpose of dY it reads (see [`Packed::dw_images`]).

use std::ops::Range;

use pulp::{f32x16, x86::V4};

use super::{load16, transpose16, vec_or_zero, Packed, LANES};

impl Packed {
    /// Output channels per row of [`Packed::dw_images`]'s `dyt`: `co` in whole vectors.
    pub(in crate::train::kernels) fn co_pad(&self) -> usize {
        self.co.next_multiple_of(LANES)
    }

    /// Rows of [`Packed::dw_images`]'s `dyt`: the output pixels taken wide.
    pub(in crate::train::kernels) fn wide(&self) -> usize {
        self.ho * self.wq
    }

    /// Adds `n` images' kernel gradient to `dwt` (`k x co_pad`, transposed): `dwt[k][c] +=
    /// sum over images and output pixels of xq[off[k] + q] * dyt[q][c]`, where `xq` holds the
    /// images' phased images ([`Packed::xq_len`] each) and `dyt` their dY transposed and taken
    /// wide ([`Packed::transpose_dy`]; [`Packed::wide`] rows of [`Packed::co_pad`] each, zero in
    /// the padding channels). The forward microkernel's shape again, with the reduction over
    /// pixels: per pixel, four vectors of dY (64 channels) and six broadcast image values, 24
    /// accumulators. Only the `wo` real columns of each row are summed, and all `n` images
    /// run through the accumulators before they go back to `dwt`, so that a `dwt` too big for
    /// L2 (2.4 MB at 3x3x256 -> 256) is read and written once per group of images, not per
    /// image; rows are taken about 256 pixels at a time, so that what a block reads stays in L2.
    pub(in crate::train::kernels) fn dw_images(&self, simd: V4, xq: &[f32], dyt: &[f32], n: usize, dwt: &mut [f32]) {
        simd.vectorize(DwOp { packed: self, simd, xq, dyt, n, dwt })
    }

    #[inline(always)]
    fn dw_impl(&self, simd: V4, xq: &[f32], dyt: &[f32], n: usize, dwt: &mut [f32]) {
        let (k, cp) = (self.k, self.co_pad());
        let rows = (256 / self.wo).max(1);
        for r0 in (0..self.ho).step_by(rows) {
            let mut k0 = 0;
            while k0 < k {
                let nk = if k0 + DW_NK <= k { DW_NK } else { 1 };
                let mut c0 = 0;
                while c0 < cp {
                    // 4, 2 or 1 vectors of channels: what is left, rounded down.
                    let nv = match (cp - c0) / LANES {
                        v if v >= DW_NV => DW_NV,
                        2 | 3 => 2,
                        _ => 1,
                    };
                    let at = DwAt { rows: r0..(r0 + rows).min(self.ho), k0, c0, cp, n };
                    match (nk == DW_NK, nv) {
                        (true, DW_NV) => self.dw_block::<DW_NK, DW_NV>(simd, xq, dyt, &at, dwt),
                        (true, 2) => self.dw_block::<DW_NK, 2>(simd, xq, dyt, &at, dwt),
                        (true, _) => self.dw_block::<DW_NK, 1>(simd, xq, dyt, &at, dwt),
                        (false, DW_NV) => self.dw_block::<1, DW_NV>(simd, xq, dyt, &at, dwt),
                        (false, 2) => self.dw_block::<1, 2>(simd, xq, dyt, &at, dwt),
                        (false, _) => self.dw_block::<1, 1>(simd, xq, dyt, &at, dwt),
                    }
                    c0 += LANES * nv;
                }
                k0 += nk;
            }
        }
    }

    /// `dwt[k0 + j][c0 + 16 v..][..16] += sum xq[off[k0 + j] + q] * dyt[q][c0 + 16 v..][..16]`
    /// over the images and the real pixels of rows `at.rows`.
    #[inline(always)]
    fn dw_block<const NK: usize, const NV: usize>(
        &self,
        simd: V4,
        xq: &[f32],
        dyt: &[f32],
        at: &DwAt,
        dwt: &mut [f32],
    ) {
        let (wo, wq, cp) = (self.wo, self.wq, at.cp);
        let mut acc: [[f32x16; NV]; NK] =
            std::array::from_fn(|j| std::array::from_fn(|v| load16(dwt, (at.k0 + j) * cp + at.c0 + v * LANES)));
        for img in 0..at.n {
            let (xq, dyt) =
                (&xq[img * self.xq_len..][..self.xq_len], &dyt[img * self.wide() * cp..][..self.wide() * cp]);
            for oy in at.rows.clone() {
                let q0 = oy * wq;
                // Each operand cut to exactly wo steps, so that the loop's indexing needs no checks.
                let xs: [&[f32]; NK] = std::array::from_fn(|j| &xq[self.offs[at.k0 + j] + q0..][..wo]);
                for (i, row) in dyt[q0 * cp..][..wo * cp].chunks_exact(cp).enumerate() {
                    let d: [f32x16; NV] = std::array::from_fn(|v| load16(row, at.c0 + v * LANES));
                    for j in 0..NK {
                        let xv = simd.splat_f32x16(xs[j][i]);
                        for v in 0..NV {
                            acc[j][v] = simd.mul_add_f32x16(xv, d[v], acc[j][v]);
                        }
                    }
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
}

impl Packed {
    /// Writes one image's dY (`co x ho x wo`) into [`Packed::dw_images`]'s `dyt`, transposed and
    /// taken wide: `dyt[(oy * wq + ox) * co_pad + c] = dy[c][oy * wo + ox]`, in 16 x 16 blocks
    /// transposed in registers (the garbage rows and padding channels are left as they are:
    /// zero from the caller).
    pub(in crate::train::kernels) fn transpose_dy(&self, simd: V4, dy: &[f32], dyt: &mut [f32]) {
        simd.vectorize(TransposeOp { packed: self, simd, dy, dyt })
    }

    #[inline(always)]
    fn transpose_dy_impl(&self, simd: V4, dy: &[f32], dyt: &mut [f32]) {
        let (co, wo, wq, cp, plane) = (self.co, self.wo, self.wq, self.co_pad(), self.ho * self.wo);
        let zero = simd.splat_f32x16(0.0);
        for oy in 0..self.ho {
            for ox in (0..wo).step_by(LANES) {
                let np = LANES.min(wo - ox);
                for c in (0..co).step_by(LANES) {
                    let rows: [f32x16; LANES] = std::array::from_fn(|j| {
                        if c + j >= co {
                            return zero;
                        }
                        vec_or_zero(&dy[(c + j) * plane + oy * wo + ox..][..np])
                    });
                    for (i, col) in transpose16(simd, rows).iter().enumerate().take(np) {
                        let dst: &mut [f32; LANES] =
                            (&mut dyt[(oy * wq + ox + i) * cp + c..][..LANES]).try_into().expect("16 channels");
                        *dst = pulp::cast(*col);
                    }
                }
            }
        }
    }
}

/// [`Packed::transpose_dy`]'s body (see [`ImageOp`]).
struct TransposeOp<'a> {
    packed: &'a Packed,
    simd: V4,
    dy: &'a [f32],
    dyt: &'a mut [f32],
}

impl pulp::NullaryFnOnce for TransposeOp<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.packed.transpose_dy_impl(self.simd, self.dy, self.dyt)
    }
}

/// `k` per dW block.
const DW_NK: usize = 6;
/// Vectors of output channels per dW block.
const DW_NV: usize = 4;

/// Where a dW block lies: output rows `rows` of `n` images, rows `k0..k0 + NK` of `dwt`,
/// channels `c0..c0 + 16 NV` (of `cp` per row).
struct DwAt {
    rows: Range<usize>,
    k0: usize,
    c0: usize,
    cp: usize,
    n: usize,
}

/// [`Packed::dw_images`]'s body (see [`ImageOp`]).
struct DwOp<'a> {
    packed: &'a Packed,
    simd: V4,
    xq: &'a [f32],
    dyt: &'a [f32],
    n: usize,
    dwt: &'a mut [f32],
}

impl pulp::NullaryFnOnce for DwOp<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.packed.dw_impl(self.simd, self.xq, self.dyt, self.n, self.dwt)
    }
}
