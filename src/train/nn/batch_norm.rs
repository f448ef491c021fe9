//! Batch normalisation over NCHW as one fused CPU op with its backward pass.
//!
//! Composed from candle's ops, batch norm in training mode reduces over the batch and spatial
//! axes (0, 2, 3) several times forward and backward (every broadcast's gradient is such a sum),
//! and candle runs reductions over non-trailing axes one element at a time with index
//! arithmetic: more than half of a small-CNN training step went there. Here the statistics and
//! the gradients' per-channel sums are plain loops over each (image, channel) plane, contiguous
//! runs of planes split across the cores. [`stock`] keeps the composed version for the stock backend.
//!
//! Inference mode uses the moving statistics; training mode the batch's (biased) statistics, and
//! moves the moving ones towards them as Keras does: `moving = moving * 0.99 + batch * 0.01`.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::train::error::TrainError;
use crate::train::kernels::{self, with_f32, Act};
use crate::train::nn::ctx::{Backend, ForwardCtx, BN_MOMENTUM};
use crate::train::nn::params::ParamStore;

/// Batch norm of `x` (`[n, c, h, w]`) with layer `name`'s parameters, then `act` (fused: the
/// activation layer after a batch norm costs no pass of its own, forward or backward).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &Tensor,
    name: &str,
    c: usize,
    epsilon: f64,
    act: Act,
    params: &ParamStore,
    ctx: &ForwardCtx,
) -> Result<Tensor, TrainError> {
    if ctx.backend == Backend::Stock || x.rank() != 4 || x.dtype() != candle_core::DType::F32 || !x.device().is_cpu() {
        return crate::train::nn::ops::stock_epilogue(stock(x, name, c, epsilon, params, ctx)?, None, act);
    }
    let gamma = params.tensor(name, "gamma", ctx.grad)?;
    let beta = params.tensor(name, "beta", ctx.grad)?;
    let x = x.contiguous()?;
    let (mean, var) = if ctx.bn_training {
        let (mean, var) = with_f32(&x, |data| channel_stats(data, x.dims()))??;
        for (stat, batch) in [("moving_mean", &mean), ("moving_variance", &var)] {
            let p = params
                .get(&format!("{name}.{stat}"))
                .ok_or_else(|| TrainError::MissingParam(format!("{name}.{stat}")))?;
            let batch = Tensor::from_slice(batch, c, x.device())?;
            p.var.set(&((p.var.as_detached_tensor() * BN_MOMENTUM)? + (batch * (1.0 - BN_MOMENTUM))?)?)?;
        }
        (mean, var)
    } else {
        (
            params.tensor(name, "moving_mean", false)?.to_vec1()?,
            params.tensor(name, "moving_variance", false)?.to_vec1()?,
        )
    };
    let inv_std = var.iter().map(|v| 1.0 / (v + epsilon as f32).sqrt()).collect();
    Ok(x.apply_op3(&gamma, &beta, BatchNorm { mean, inv_std, training: ctx.bn_training, act })?)
}

/// The op: per-channel statistics fixed at forward time (the batch's or the moving ones).
struct BatchNorm {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// The statistics came from this batch, so the input's gradient flows through them too.
    training: bool,
    /// Applied to the output; its gradient is read off the output.
    act: Act,
}

const LANES: usize = 16;

/// `(sum f(a, b).0, sum f(a, b).1)` over two equally long planes, in f64, accumulated in 16 f32
/// lanes so that it vectorises, the lanes added into the f64 totals every 4096 values (so each
/// f32 lane sums 256 values at most, whatever the plane size).
#[inline(always)]
fn lanes_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    const BLOCK: usize = 256 * LANES;
    let (mut t0, mut t1) = (0f64, 0f64);
    for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut s0, mut s1) = ([0f32; LANES], [0f32; LANES]);
        let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail = ac.remainder().iter().zip(bc.remainder());
        for (a, b) in ac.zip(bc) {
            let (a, b): (&[f32; LANES], &[f32; LANES]) = (a.try_into().expect("lanes"), b.try_into().expect("lanes"));
            for j in 0..LANES {
                let (x, y) = f(a[j], b[j]);
                s0[j] += x;
                s1[j] += y;
            }
        }
        t0 += s0.iter().map(|&v| v as f64).sum::<f64>();
        t1 += s1.iter().map(|&v| v as f64).sum::<f64>();
        for (&a, &b) in tail {
            let (x, y) = f(a, b);
            t0 += x as f64;
            t1 += y as f64;
        }
    }
    (t0, t1)
}

/// One channel's affine map in inference form, `z = x * scale + shift`, and its statistics.
#[derive(Clone, Copy)]
struct Channel {
    mean: f32,
    scale: f32,
    shift: f32,
}

/// Per plane, compiled for AVX-512 where the CPU has it ([`kernels::dispatch`]): the three
/// sweeps of the op.
enum PlaneKernel<'a> {
    /// `out = act(x * scale + shift)`.
    Apply { x: &'a [f32], out: &'a mut [f32], ch: Channel, act: Act },
    /// `(sum g, sum g * (x - mean))` with `g = dy` where the activation passes at `z`.
    Sums { dy: &'a [f32], x: &'a [f32], ch: Channel, gate: (f32, f32) },
    /// `out = k * (g - mdy - (x - mean) * mdyx)`.
    Dx { dy: &'a [f32], x: &'a [f32], out: &'a mut [f32], ch: Channel, gate: (f32, f32), k: f32, mdy: f32, mdyx: f32 },
}

impl kernels::Kernel for PlaneKernel<'_> {
    type Out = (f64, f64);
    #[inline(always)]
    fn run<const FMA: bool>(self) -> (f64, f64) {
        match self {
            PlaneKernel::Apply { x, out, ch, act } => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * ch.scale + ch.shift;
                }
                kernels::Epilogue { bias: None, act }.apply(0, out);
                (0.0, 0.0)
            }
            // The activation's gate is evaluated on z, recomputed from x, rather than read from
            // the output: one memory stream fewer.
            PlaneKernel::Sums { dy, x, ch, gate } => lanes_sum(dy, x, |dy, x| {
                let g = kernels::gated(dy, x * ch.scale + ch.shift, gate);
                (g, g * (x - ch.mean))
            }),
            PlaneKernel::Dx { dy, x, out, ch, gate, k, mdy, mdyx } => {
                for ((o, &dy), &x) in out.iter_mut().zip(dy).zip(x) {
                    let g = kernels::gated(dy, x * ch.scale + ch.shift, gate);
                    *o = k * (g - mdy - (x - ch.mean) * mdyx);
                }
                (0.0, 0.0)
            }
        }
    }
}

/// Per channel, `f(channel, plane index)` summed over images into two f64 sums. The `n * c`
/// planes are split into contiguous runs across the cores, each thread summing its run into its
/// own per-channel totals (added up in thread order afterwards): every thread reads memory front
/// to back, one stream the hardware prefetcher follows, where walking one channel's planes
/// (`c` planes apart) restarted it at every plane.
fn per_channel(n: usize, c: usize, f: impl Fn(usize, usize) -> (f64, f64) + Sync) -> Vec<(f64, f64)> {
    let planes = n * c;
    let t = kernels::threads().min(planes).max(1);
    let per = planes.div_ceil(t).max(1);
    let f = &f;
    let run = move |start: usize| {
        let mut sums = vec![(0.0, 0.0); c];
        for i in start..(start + per).min(planes) {
            let (a, b) = f(i % c, i);
            sums[i % c].0 += a;
            sums[i % c].1 += b;
        }
        sums
    };
    let parts: Vec<Vec<(f64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..planes).step_by(per).map(|start| s.spawn(move || run(start))).collect();
        handles.into_iter().map(|h| h.join().expect("batch norm thread panicked")).collect()
    });
    let mut total = vec![(0.0, 0.0); c];
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            t.0 += p.0;
            t.1 += p.1;
        }
    }
    total
}

/// A new output of `n * c` planes written plane by plane with `f(channel, plane index, out
/// plane)`, contiguous runs of planes split across the cores (each plane zeroed in cache just
/// before `f` writes it, see [`kernels::par_items_zeroed`]).
fn per_plane(n: usize, c: usize, plane: usize, f: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    let f = &f;
    kernels::par_items_zeroed(n * c, plane, 0, |planes| {
        while let Some((i, out)) = planes.next_zeroed() {
            f(i % c, i, out);
        }
    })
    .0
}

/// Biased mean and variance per channel (two passes, for accuracy).
fn channel_stats(x: &[f32], dims: &[usize]) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let &[n, c, h, w] = dims else { bail!("batch norm: expected NCHW, got {dims:?}") };
    let (plane, m) = (h * w, (n * h * w) as f64);
    let at = |i: usize| &x[i * plane..(i + 1) * plane];
    let mean: Vec<f32> =
        per_channel(n, c, |_, i| lanes_sum(at(i), at(i), |v, _| (v, 0.0))).iter().map(|s| (s.0 / m) as f32).collect();
    let var = per_channel(n, c, |ch, i| lanes_sum(at(i), at(i), |v, _| ((v - mean[ch]) * (v - mean[ch]), 0.0)));
    Ok((mean, var.iter().map(|s| (s.0 / m) as f32).collect()))
}

impl BatchNorm {
    /// Per channel: the statistics and the inference-form affine map they give with `gamma`
    /// and `beta`.
    fn channels(&self, gamma: &[f32], beta: &[f32]) -> Vec<Channel> {
        (0..self.mean.len())
            .map(|ch| {
                let scale = gamma[ch] * self.inv_std[ch];
                Channel { mean: self.mean[ch], scale, shift: beta[ch] - self.mean[ch] * scale }
            })
            .collect()
    }
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "tanuki-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = kernels::f32_slice(xs, xl, "batch norm input")?;
        let (gamma, beta) = (kernels::f32_slice(gs, gl, "gamma")?, kernels::f32_slice(bs, bl, "beta")?);
        let (n, c, h, w) = kernels::dims4(xl, "batch norm input")?;
        if gamma.len() != c || beta.len() != c || self.mean.len() != c {
            bail!("batch norm: {c} channels but {} gammas, {} betas", gamma.len(), beta.len())
        }
        let chans = self.channels(gamma, beta);
        let plane = h * w;
        let y = per_plane(n, c, plane, |ch, i, out| {
            kernels::dispatch(PlaneKernel::Apply {
                x: &x[i * plane..(i + 1) * plane],
                out,
                ch: chans[ch],
                act: self.act,
            });
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let (plane, m) = (h * w, (n * h * w) as f32);
        let dy = dy.contiguous()?;
        let (gamma_v, beta_v): (Vec<f32>, Vec<f32>) = (gamma.to_vec1()?, beta.to_vec1()?);
        let chans = self.channels(&gamma_v, &beta_v);
        let (inv_std, training, gate) = (&self.inv_std, self.training, self.act.gate());
        // The first trainable layer's input has no gradient to compute.
        let want_x = x.track_op();
        let (dx, sums) = with_f32(x, |x| {
            with_f32(&dy, |dy| {
                fn at(t: &[f32], i: usize, plane: usize) -> &[f32] {
                    &t[i * plane..(i + 1) * plane]
                }
                // Per channel: sum(g) and sum(g * (x - mean)), g the gradient of the batch
                // norm's own output (dy where the activation passes).
                let sums = per_channel(n, c, |ch, i| {
                    kernels::dispatch(PlaneKernel::Sums {
                        dy: at(dy, i, plane),
                        x: at(x, i, plane),
                        ch: chans[ch],
                        gate,
                    })
                });
                let dx = want_x.then(|| {
                    per_plane(n, c, plane, |ch, i, out| {
                        // Training mode: the batch statistics depend on x too.
                        let (mdy, mdyx) = if training {
                            (sums[ch].0 as f32 / m, sums[ch].1 as f32 / m * inv_std[ch] * inv_std[ch])
                        } else {
                            (0.0, 0.0)
                        };
                        let k = gamma_v[ch] * inv_std[ch];
                        kernels::dispatch(PlaneKernel::Dx {
                            dy: at(dy, i, plane),
                            x: at(x, i, plane),
                            out,
                            ch: chans[ch],
                            gate,
                            k,
                            mdy,
                            mdyx,
                        });
                    })
                });
                (dx, sums)
            })
        })??;
        let dev = x.device();
        let dx = dx.map(|v| Tensor::from_vec(v, (n, c, h, w), dev)).transpose()?;
        let dgamma: Vec<f32> = sums.iter().zip(inv_std).map(|(s, is)| s.1 as f32 * is).collect();
        let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        let dgamma = gamma.track_op().then(|| Tensor::from_vec(dgamma, c, dev)).transpose()?;
        let dbeta = beta.track_op().then(|| Tensor::from_vec(dbeta, c, dev)).transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}

/// Batch norm composed from candle's ops (the stock backend, and the reference of the tests).
pub(super) fn stock(
    x: &Tensor,
    name: &str,
    c: usize,
    epsilon: f64,
    params: &ParamStore,
    ctx: &ForwardCtx,
) -> Result<Tensor, TrainError> {
    let (training, grad) = (ctx.bn_training, ctx.grad);
    let gamma = params.tensor(name, "gamma", grad)?.reshape((1, c, 1, 1))?;
    let beta = params.tensor(name, "beta", grad)?.reshape((1, c, 1, 1))?;
    if training {
        // [1, c, 1, 1]
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
        let y = centered.broadcast_div(&(var.clone() + epsilon)?.sqrt()?)?;
        for (stat, batch) in [("moving_mean", &mean), ("moving_variance", &var)] {
            let p = params
                .get(&format!("{name}.{stat}"))
                .ok_or_else(|| TrainError::MissingParam(format!("{name}.{stat}")))?;
            let moved =
                ((p.var.as_detached_tensor() * BN_MOMENTUM)? + (batch.detach().flatten_all()? * (1.0 - BN_MOMENTUM))?)?;
            p.var.set(&moved)?;
        }
        Ok(y.broadcast_mul(&gamma)?.broadcast_add(&beta)?)
    } else {
        let mean = params.tensor(name, "moving_mean", false)?.reshape((1, c, 1, 1))?;
        let var = params.tensor(name, "moving_variance", false)?.reshape((1, c, 1, 1))?;
        // [1, c, 1, 1]
        let scale = gamma.broadcast_div(&(var + epsilon)?.sqrt()?)?;
        let shift = beta.broadcast_sub(&mean.broadcast_mul(&scale)?)?;
        Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::train::kernels::Act;
    use crate::train::nn::ForwardCtx;
    use crate::train::nn::{ParamStore, Role};
    use crate::train::rng::{self, Stream};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The statistics against an f64 reference where a one-pass sum of squares would cancel: a
    /// large offset with a small spread, and a first image far from the rest.
    #[test]
    fn statistics_match_f64_reference_on_offset_data() {
        let (n, c, plane) = (6, 3, 37 * 29);
        let x: Vec<f32> = (0..n * c * plane)
            .map(|i| {
                let (img, ch, p) = (i / (c * plane), i / plane % c, i % plane);
                let noise = ((p * 7919 + img * 104_729 + ch * 31) % 1000) as f32 / 1000.0 - 0.5;
                match ch {
                    0 => 1000.0 + 0.01 * noise,
                    1 => noise + if img == 0 { 50.0 } else { 0.0 },
                    _ => -3.0 + 4.0 * noise,
                }
            })
            .collect();
        let (mean, var) = super::channel_stats(&x, &[n, c, 37, 29]).unwrap();
        for ch in 0..c {
            let vals: Vec<f64> =
                (0..n).flat_map(|img| x[(img * c + ch) * plane..][..plane].iter().map(|&v| v as f64)).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
            assert!((mean[ch] as f64 - m).abs() <= 1e-6 * m.abs().max(1.0), "channel {ch}: mean {} vs {m}", mean[ch]);
            assert!((var[ch] as f64 - v).abs() <= 1e-3 * v, "channel {ch}: variance {} vs {v}", var[ch]);
        }
    }

    #[test]
    fn fused_matches_composed_forward_gradients_and_moving_statistics() {
        let dev = Device::Cpu;
        let c = 5;
        for (training, act) in [(true, Act::Identity), (false, Act::Identity), (true, Act::Relu6), (false, Act::Relu)] {
            let make = || {
                let mut p = ParamStore::new();
                // Scales up to 4, so that some outputs pass 6 and ReLU6 clips on both sides.
                p.insert("bn", "gamma", Role::Weight, Tensor::rand(0.5f32, 4.0, c, &dev).unwrap()).unwrap();
                p.insert("bn", "beta", Role::Weight, Tensor::rand(-1f32, 1.0, c, &dev).unwrap()).unwrap();
                p.insert("bn", "moving_mean", Role::Stat, Tensor::rand(-1f32, 1.0, c, &dev).unwrap()).unwrap();
                p.insert("bn", "moving_variance", Role::Stat, Tensor::rand(0.5f32, 2.0, c, &dev).unwrap()).unwrap();
                p.set_trainable(|_| true);
                p
            };
            let (fused_p, stock_p) = (make(), make());
            stock_p.load(&fused_p.snapshot().unwrap(), |_| true).unwrap();
            let x =
                candle_core::Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, c, 4, 7), &dev).unwrap() + 0.7).unwrap())
                    .unwrap();
            // A non-uniform upstream gradient, so every term of the backward formula shows.
            let weights = Tensor::randn(0f32, 1.0, (3, c, 4, 7), &dev).unwrap();
            let ctx = ForwardCtx::new(false, training, true, rng::rng(0, Stream::Dropout, 0, 0, 0));
            let fused = super::forward(x.as_tensor(), "bn", c, 1e-3, act, &fused_p, &ctx).unwrap();
            let stock = super::stock(x.as_tensor(), "bn", c, 1e-3, &stock_p, &ctx).unwrap();
            let stock = match act {
                Act::Identity => stock,
                Act::Relu => stock.relu().unwrap(),
                Act::Relu6 => stock.clamp(0f32, 6f32).unwrap(),
            };
            assert!(max_diff(&fused, &stock) < 1e-5, "forward ({training}, {act:?})");
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (stock * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |g: &candle_core::backprop::GradStore, p: &ParamStore, w: &str| {
                g.get(&p.get(w).unwrap().var).unwrap().clone()
            };
            assert!(max_diff(gf.get(&x).unwrap(), gs.get(&x).unwrap()) < 1e-4, "dx ({training}, {act:?})");
            for w in ["bn.gamma", "bn.beta"] {
                assert!(max_diff(&grad(&gf, &fused_p, w), &grad(&gs, &stock_p, w)) < 1e-4, "{w} ({training})");
            }
            for s in ["bn.moving_mean", "bn.moving_variance"] {
                assert!(
                    max_diff(fused_p.get(s).unwrap().var.as_tensor(), stock_p.get(s).unwrap().var.as_tensor()) < 1e-6,
                    "{s}"
                );
            }
        }
    }
}
