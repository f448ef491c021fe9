//! Optimizers: Adam (Keras defaults β1 0.9, β2 0.999, ε 1e-7) and SGD with optional momentum,
//! over an explicit list of variables, with state that can be exported to and imported from
//! named tensors (for checkpoints and resume).
//!
//! An optimizer is built per phase over exactly that phase's trainable weights (the guide's
//! re-compile); anything not in its list is never touched.
//!
//! Per-group learning rates: each weight's rate is its group's (the longest selector of
//! `learning_rates` that matches its layer) or the default `learning_rate`, held as a fixed
//! multiple of the current default rate, so reduce-on-plateau (which changes the default)
//! scales every group alike.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::train::error::TrainError;
use crate::train::model::selector_matches;
use crate::train::nn::ParamStore;
use crate::train::spec::{OptimizerKind, OptimizerSpec};

/// The learnable variables of one phase with the optimizer's per-variable state.
#[derive(Debug)]
pub struct Optimizer {
    kind: Kind,
    vars: Vec<(String, Var)>,
    /// Per variable: its learning rate divided by the default one.
    rate_factors: Vec<f64>,
    /// The spec's groups (selector → rate at the spec's default rate).
    groups: BTreeMap<String, f64>,
    /// The spec's default rate (the groups' reference when the current rate has been cut).
    base_rate: f64,
    /// Adam: first moments; SGD: velocities (only with momentum).
    slot_a: Vec<Tensor>,
    /// Adam: second moments.
    slot_b: Vec<Tensor>,
    step: u64,
    learning_rate: f64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Adam { beta1: f64, beta2: f64, epsilon: f64 },
    Sgd { momentum: f64 },
}

impl Optimizer {
    /// Over every trainable parameter of `params`, in store order.
    pub fn new(spec: &OptimizerSpec, params: &ParamStore) -> Result<Self, TrainError> {
        let groups = spec.learning_rates.clone().unwrap_or_default();
        let trainable: Vec<_> = params.iter().filter(|p| p.trainable()).collect();
        let rate_factors =
            trainable.iter().map(|p| group_rate(&groups, &p.layer).map_or(1.0, |r| r / spec.learning_rate)).collect();
        let vars: Vec<(String, Var)> = trainable.iter().map(|p| (p.name.clone(), p.var.clone())).collect();
        let kind = match spec.kind {
            OptimizerKind::Adam => Kind::Adam {
                beta1: spec.beta1.unwrap_or(0.9),
                beta2: spec.beta2.unwrap_or(0.999),
                epsilon: spec.epsilon.unwrap_or(1e-7),
            },
            OptimizerKind::Sgd => Kind::Sgd { momentum: spec.momentum.unwrap_or(0.0) },
        };
        let zeros = |vars: &[(String, Var)]| -> Result<Vec<Tensor>, TrainError> {
            vars.iter().map(|(_, v)| Ok(v.as_tensor().zeros_like()?)).collect()
        };
        let (slot_a, slot_b) = match kind {
            Kind::Adam { .. } => (zeros(&vars)?, zeros(&vars)?),
            Kind::Sgd { momentum } if momentum > 0.0 => (zeros(&vars)?, Vec::new()),
            Kind::Sgd { .. } => (Vec::new(), Vec::new()),
        };
        Ok(Self {
            kind,
            vars,
            rate_factors,
            groups,
            base_rate: spec.learning_rate,
            slot_a,
            slot_b,
            step: 0,
            learning_rate: spec.learning_rate,
        })
    }

    /// The default rate (weights outside every group).
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    /// The current rate of each group of the spec (empty without groups).
    pub fn learning_rates(&self) -> BTreeMap<String, f64> {
        let scale = self.learning_rate / self.base_rate;
        self.groups.iter().map(|(k, v)| (k.clone(), v * scale)).collect()
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.learning_rate = lr;
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from `grads`. A variable without a gradient (unused in the loss) is skipped.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TrainError> {
        self.step += 1;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let lr = self.learning_rate * self.rate_factors[i];
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = g.detach();
            let theta = var.as_detached_tensor();
            match self.kind {
                Kind::Adam { beta1, beta2, epsilon } => {
                    // Keras's form: the bias corrections fold into the step size, ε outside the sqrt.
                    let t = self.step as i32;
                    let alpha = lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t));
                    let m = ((&self.slot_a[i] * beta1)? + (&g * (1.0 - beta1))?)?;
                    let v = ((&self.slot_b[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let update = ((&m * alpha)? / (v.sqrt()? + epsilon)?)?;
                    var.set(&(theta - update)?)?;
                    self.slot_a[i] = m;
                    self.slot_b[i] = v;
                }
                Kind::Sgd { momentum } if momentum > 0.0 => {
                    // Keras: velocity = momentum * velocity - lr * g; theta += velocity.
                    let velocity = ((&self.slot_a[i] * momentum)? - (&g * lr)?)?;
                    var.set(&(theta + &velocity)?)?;
                    self.slot_a[i] = velocity;
                }
                Kind::Sgd { .. } => var.set(&(theta - (&g * lr)?)?)?,
            }
        }
        Ok(())
    }

    /// The state as named tensors: `<param>.m` / `<param>.v` (Adam), `<param>.momentum` (SGD),
    /// plus `step` and `learning_rate` as f64 scalars (exact for step counts up to 2^53).
    pub fn export(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let device = candle_core::Device::Cpu;
        let mut out = HashMap::new();
        let (a, b) = self.slot_names();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let (Some(a), Some(t)) = (a, self.slot_a.get(i)) {
                out.insert(format!("{name}.{a}"), t.copy()?);
            }
            if let (Some(b), Some(t)) = (b, self.slot_b.get(i)) {
                out.insert(format!("{name}.{b}"), t.copy()?);
            }
        }
        out.insert("step".into(), Tensor::new(&[self.step as f64], &device)?);
        out.insert("learning_rate".into(), Tensor::new(&[self.learning_rate], &device)?);
        Ok(out)
    }

    /// Restores state written by [`Optimizer::export`] for the same set of variables.
    pub fn import(&mut self, state: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let get = |name: &str| state.get(name).ok_or_else(|| TrainError::OptimizerState(format!("no tensor {name}")));
        let (a, b) = self.slot_names();
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (slot, slots) in [(a, &mut self.slot_a), (b, &mut self.slot_b)] {
                let Some(slot) = slot else { continue };
                let key = format!("{name}.{slot}");
                let t = get(&key)?;
                if t.dims() != var.dims() {
                    return Err(TrainError::OptimizerState(format!("tensor {key} has the wrong shape")));
                }
                slots[i] = t.copy()?;
            }
        }
        self.step = get("step")?.flatten_all()?.to_vec1::<f64>()?[0] as u64;
        self.learning_rate = get("learning_rate")?.flatten_all()?.to_vec1::<f64>()?[0];
        Ok(())
    }

    fn slot_names(&self) -> (Option<&'static str>, Option<&'static str>) {
        match self.kind {
            Kind::Adam { .. } => (Some("m"), Some("v")),
            Kind::Sgd { momentum } if momentum > 0.0 => (Some("momentum"), None),
            Kind::Sgd { .. } => (None, None),
        }
    }
}

/// The rate of the most specific (longest) selector of `groups` that matches `layer`; `all`
/// is the least specific.
pub fn group_rate(groups: &BTreeMap<String, f64>, layer: &str) -> Option<f64> {
    groups
        .iter()
        .filter(|(sel, _)| selector_matches(sel, layer))
        .max_by_key(|(sel, _)| if sel.as_str() == "all" { 0 } else { sel.len() })
        .map(|(_, &rate)| rate)
}
