//! One image-channel plane: its geometry under a kernel, stride and padding, and the padded
//! "phase" layouts the plane kernels (depthwise convolution, max pooling) and the dense
//! convolution's im2col read from.
//!
//! For stride `s`, a phase holds the padded columns `j*s + r` (and, in the 2-D layout, the rows
//! `i*s + r` too), so that every tap of a strided kernel reads a contiguous, in-bounds slice.

use candle_core::Result;

use super::{gather_row, Axis, Pad};

/// Values of slack the layouts keep at their end (one vector block), so that a sweep's last
/// block may read past the last row.
pub(crate) const LANES: usize = 16;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub pt: usize,
    pub pl: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        padding: Pad,
    ) -> Result<Self> {
        let ay = Axis::along(true, h, kh, stride, padding)?;
        let ax = Axis::along(false, w, kw, stride, padding)?;
        Ok(Self { n, c, h, w, kh, kw, s: stride, pt: ay.pad, pl: ax.pad, ho: ay.out, wo: ax.out })
    }
    pub(crate) fn plane_in(&self) -> usize {
        self.h * self.w
    }
    pub(crate) fn plane_out(&self) -> usize {
        self.ho * self.wo
    }
    /// Rows of the padded plane that the output reads.
    pub(crate) fn hp(&self) -> usize {
        (self.ho - 1) * self.s + self.kh
    }
    /// Values of [`phase_pad_2d`]'s layout of one plane.
    pub(crate) fn phased_len(&self) -> usize {
        self.s * self.s * self.hq() * self.wq()
    }
    /// Rows of each phase of [`phase_pad_2d`]'s layout.
    pub(crate) fn hq(&self) -> usize {
        self.ho + (self.kh - 1) / self.s
    }
    /// Columns of each phase of the padded plane.
    pub(crate) fn wq(&self) -> usize {
        self.wo + (self.kw - 1) / self.s
    }
    /// Where tap `(ky, kx)` of output `(0, 0)` lies in [`phase_pad_2d`]'s layout; output
    /// `(oy, ox)` reads `oy * wq + ox` further on.
    pub(crate) fn tap_offset(&self, ky: usize, kx: usize) -> usize {
        let s = self.s;
        (((ky % s) * s + kx % s) * self.hq() + ky / s) * self.wq() + kx / s
    }
}

/// A padded plane in phase form: phase `r` row `i` column `j` is padded column `j*s + r`.
#[derive(Clone, Copy)]
pub(crate) struct Phased<'a> {
    pub q: &'a [f32],
    pub hp: usize,
    pub wq: usize,
    pub s: usize,
}

impl<'a> Phased<'a> {
    /// The `len` values read by tap column `kx` for padded row `row`.
    #[inline(always)]
    pub(crate) fn tap_row(&self, row: usize, kx: usize, len: usize) -> &'a [f32] {
        let (r, off) = (kx % self.s, kx / self.s);
        &self.q[(r * self.hp + row) * self.wq + off..][..len]
    }
}

/// Copies `plane` (`h x w`) into `q` in phase form, padded with `fill`.
#[inline(always)]
pub(crate) fn phase_pad(g: &Geom, plane: &[f32], fill: f32, q: &mut Vec<f32>, row: &mut Vec<f32>) {
    let (hp, wq, s) = (g.hp(), g.wq(), g.s);
    // LANES values of slack at the end, so that a row's last block may read past its end.
    q.resize(s * hp * wq + LANES, 0.0);
    row.resize(s * wq, fill);
    for prow in 0..hp {
        let iy = prow as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            for r in 0..s {
                q[(r * hp + prow) * wq..][..wq].fill(fill);
            }
            continue;
        }
        let src = &plane[iy as usize * g.w..][..g.w];
        if s == 1 {
            gather_row(&mut q[prow * wq..][..wq], src, -(g.pl as isize), 1, fill);
        } else {
            pad_row(row, src, g.pl, fill);
            deinterleave(row, s, |r| (r * hp + prow) * wq, wq, q);
        }
    }
}

/// `row` = `pl` values of `fill`, `src`, then `fill` to the end (`src` cut to fit).
#[inline(always)]
fn pad_row(row: &mut [f32], src: &[f32], pl: usize, fill: f32) {
    let width = row.len();
    let n = src.len().min(width.saturating_sub(pl));
    row[..pl.min(width)].fill(fill);
    row[pl..pl + n].copy_from_slice(&src[..n]);
    row[pl + n..].fill(fill);
}

/// The padded row (`pl` values of `fill`, `src`, then `fill`) split into its even and odd
/// columns, `e` and `o` (`wq` each), straight from `src`: the same values as [`pad_row`] then
/// [`deinterleave`], without the padded copy between them (a call to memmove per row, which on
/// 28-wide rows cost as much as the split itself).
#[inline(always)]
fn split_row2(src: &[f32], pl: usize, fill: f32, e: &mut [f32], o: &mut [f32]) {
    let wq = e.len();
    let n = src.len().min((2 * wq).saturating_sub(pl));
    if n == 0 {
        e.fill(fill);
        o.fill(fill);
        return;
    }
    // With `pl` odd, src[0] is an odd column; the pairs after it start on even ones.
    let lead = pl % 2;
    let h = pl.div_ceil(2);
    e[..h].fill(fill);
    o[..h - lead].fill(fill);
    if lead == 1 {
        o[h - 1] = src[0];
    }
    let body = &src[lead..n];
    let pairs = body.len() / 2;
    // Blocks of 8 pairs as fixed-size arrays (a permute each way), the last one overlapping the
    // one before (the same values written twice) rather than a scalar tail; under 8, one by one.
    let mut k = 0;
    while k < pairs {
        let b = if pairs >= 8 { k.min(pairs - 8) } else { k };
        if pairs >= 8 {
            let p: &[f32; 16] = body[2 * b..][..16].try_into().expect("16 values");
            let ev: &mut [f32; 8] = (&mut e[h + b..][..8]).try_into().expect("8 values");
            for (i, v) in ev.iter_mut().enumerate() {
                *v = p[2 * i];
            }
            let ov: &mut [f32; 8] = (&mut o[h + b..][..8]).try_into().expect("8 values");
            for (i, v) in ov.iter_mut().enumerate() {
                *v = p[2 * i + 1];
            }
            k = b + 8;
        } else {
            e[h + b] = body[2 * b];
            o[h + b] = body[2 * b + 1];
            k = b + 1;
        }
    }
    let mut k = h + pairs;
    o[k..].fill(fill);
    if body.len() % 2 == 1 {
        e[k] = body[body.len() - 1];
        k += 1;
    }
    e[k..].fill(fill);
}

/// Splits `row` into its `s` column phases: `q[at(r) + j] = row[j * s + r]` for `j < wq` (a
/// de-interleave that vectorises at `s == 2`, where a strided gather per phase would not).
#[inline(always)]
fn deinterleave(row: &[f32], s: usize, at: impl Fn(usize) -> usize, wq: usize, q: &mut [f32]) {
    if s == 2 {
        let (a0, a1) = (at(0), at(1));
        debug_assert!(a0 + wq <= a1);
        let (lo, hi) = q.split_at_mut(a1);
        for ((e, o), pair) in lo[a0..a0 + wq].iter_mut().zip(&mut hi[..wq]).zip(row.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
    } else {
        for r in 0..s {
            for (d, chunk) in q[at(r)..][..wq].iter_mut().zip(row[r..].chunks(s)) {
                *d = chunk[0];
            }
        }
    }
}

/// Copies `plane` into `q` padded with `fill`, split into `s x s` phases along both axes (phase
/// `(ry, rx)` row `i` column `j` is padded pixel `(i*s + ry, j*s + rx)`, each phase
/// `hq x wq`), so that tap `(ky, kx)` of output `(oy, ox)` lies at the fixed offset
/// [`flat_offsets`]`[tap] + oy * wq + ox`: a whole plane is one stride-1 sweep per tap, with
/// `wq - wo` columns of garbage per row.
#[inline(always)]
pub(crate) fn phase_pad_2d(g: &Geom, plane: &[f32], fill: f32, q: &mut Vec<f32>, row: &mut Vec<f32>) {
    // Slack: the sweep reads whole blocks of LANES past the last row.
    q.resize(g.phased_len() + 2 * LANES, 0.0);
    phase_pad_2d_into(g, plane, fill, q, row);
}

/// [`phase_pad_2d`] into `q` (at least [`Geom::phased_len`] long).
#[inline(always)]
pub(crate) fn phase_pad_2d_into(g: &Geom, plane: &[f32], fill: f32, q: &mut [f32], row: &mut Vec<f32>) {
    let (hq, wq, s) = (g.hq(), g.wq(), g.s);
    let phase = hq * wq;
    // One padded row (s * wq columns), then split into its s column phases: a copy and a
    // de-interleave that vectorise, where a strided gather per phase would not.
    row.resize(s * wq, fill);
    for ry in 0..s {
        for i in 0..hq {
            let iy = (i * s + ry) as isize - g.pt as isize;
            let at = (ry * s * hq + i) * wq;
            if iy < 0 || iy >= g.h as isize {
                for rx in 0..s {
                    q[at + rx * phase..][..wq].fill(fill);
                }
                continue;
            }
            let src = &plane[iy as usize * g.w..][..g.w];
            if s == 1 {
                gather_row(&mut q[at..][..wq], src, -(g.pl as isize), 1, fill);
            } else if s == 2 {
                let (e, o) = q[at..].split_at_mut(phase);
                split_row2(src, g.pl, fill, &mut e[..wq], &mut o[..wq]);
            } else {
                pad_row(row, src, g.pl, fill);
                deinterleave(row, s, |rx| at + rx * phase, wq, q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_row2_matches_the_padded_copy_split() {
        // Up to 24 columns, so that rows of 8 or more pairs take the blocks of 8, overlapping.
        for wq in 1..25 {
            // pad_row needs the padding inside the row, as every geometry has it.
            for pl in (0..4).filter(|&pl| pl < 2 * wq) {
                for w in 0..2 * wq + 3 {
                    let src: Vec<f32> = (0..w).map(|i| i as f32 + 1.0).collect();
                    let mut row = vec![0.0; 2 * wq];
                    pad_row(&mut row, &src, pl, -1.0);
                    let mut want = vec![0.0; 2 * wq];
                    deinterleave(&row, 2, |r| r * wq, wq, &mut want);
                    let (mut e, mut o) = (vec![f32::NAN; wq], vec![f32::NAN; wq]);
                    split_row2(&src, pl, -1.0, &mut e, &mut o);
                    assert_eq!([e, o].concat(), want, "wq {wq} pl {pl} w {w}");
                }
            }
        }
    }
}
