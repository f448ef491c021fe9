//! Max pooling (NCHW) with any kernel, stride and padding, and its backward pass.
//!
//! Forward reuses the depthwise kernel's phase-padded planes (padding is `-inf`, so it never
//! wins). Backward recomputes each window's arg-max (the first maximum in row-major window order)
//! and adds the output gradient there; a plane belongs to one thread, so the adds never race.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::depthwise::{phase_pad, Geom, Phased};
use super::par::par_items;
use super::{dims4, f32_slice, Padding};

fn geom(l: &Layout, kernel: usize, stride: usize, padding: Padding) -> Result<Geom> {
    let (n, c, h, w) = dims4(l, "max_pool2d input")?;
    Geom::new(n, c, h, w, kernel, kernel, stride, padding)
}

fn forward(g: &Geom, x: &[f32], y: &mut [f32]) {
    let (pin, pout, wo) = (g.h * g.w, g.ho * g.wo, g.wo);
    par_items(g.n * g.c, y, |planes, out| {
        let mut q = Vec::new();
        for (i, pi) in planes.enumerate() {
            phase_pad(g, &x[pi * pin..][..pin], f32::NEG_INFINITY, &mut q);
            let v = Phased { q: &q, hp: g.hp(), wq: g.wq(), s: g.s };
            for (oy, orow) in out[i * pout..][..pout].chunks_exact_mut(wo).enumerate() {
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
    });
}

fn backward(g: &Geom, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (pin, pout) = (g.h * g.w, g.ho * g.wo);
    par_items(g.n * g.c, dx, |planes, dxs| {
        for (i, pi) in planes.enumerate() {
            let xp = &x[pi * pin..][..pin];
            let dyp = &dy[pi * pout..][..pout];
            let dxp = &mut dxs[i * pin..][..pin];
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = None;
                    for ky in 0..g.kh {
                        let iy = (oy * g.s + ky) as isize - g.pt as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let ix = (ox * g.s + kx) as isize - g.pl as isize;
                            if ix < 0 || ix >= g.w as isize {
                                continue;
                            }
                            let j = iy as usize * g.w + ix as usize;
                            if at.is_none() || xp[j] > best {
                                best = xp[j];
                                at = Some(j);
                            }
                        }
                    }
                    if let Some(j) = at {
                        dxp[j] += dyp[oy * g.wo + ox];
                    }
                }
            }
        }
    });
}

/// The forward op; see [`super::max_pool2d`].
pub(crate) struct MaxPool {
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "tanuki-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geom(l, self.kernel, self.stride, self.padding)?;
        let x = f32_slice(s, l, "max_pool2d input")?;
        let mut y = vec![0.0f32; g.n * g.c * g.ho * g.wo];
        forward(&g, x, &mut y);
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
    padding: Padding,
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
            candle_core::bail!("max_pool2d backward: output gradient has shape {:?}, expected {:?}", l2.dims(), [g.n, g.c, g.ho, g.wo])
        }
        let mut dx = vec![0.0f32; x.len()];
        backward(&g, x, dy, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
