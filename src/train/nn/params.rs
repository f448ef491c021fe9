//! The parameter store: every weight of a model as a named candle [`Var`], with its role and a
//! per-phase trainable flag.
//!
//! Keras's distinction is kept: a *weight* is trainable unless its layer is frozen; a *statistic*
//! (batch norm's moving mean and variance) is never trainable and only changes when batch norm runs
//! in training mode. Frozen parameters are handed out detached, so a forward pass through a frozen
//! part builds no autograd graph and backward never walks into it.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::train::error::{TrainError, WeightsError};

/// What a parameter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Learned by gradient descent when its layer is trainable.
    Weight,
    /// A running statistic: never trainable, updated only by batch norm in training mode.
    Stat,
}

/// One named parameter.
#[derive(Debug)]
pub struct Param {
    /// `<layer>.<weight>`, e.g. `backbone.block1.bn.moving_variance`.
    pub name: String,
    /// The layer it belongs to, e.g. `backbone.block1.bn`.
    pub layer: String,
    pub role: Role,
    pub var: Var,
    trainable: bool,
}

impl Param {
    /// Trainable in the current phase (always false for statistics).
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// The tensor to compute with: the variable itself when trainable and `grad` is wanted
    /// (gradients flow), a detached view otherwise (no graph is built through it).
    pub fn tensor(&self, grad: bool) -> Tensor {
        if grad && self.trainable {
            self.var.as_tensor().clone()
        } else {
            self.var.as_detached_tensor()
        }
    }

    pub fn elem_count(&self) -> usize {
        self.var.elem_count()
    }
}

/// All parameters of a model, in creation order (which is also checkpoint order).
#[derive(Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter, frozen until [`ParamStore::set_trainable`] says otherwise.
    pub fn insert(&mut self, layer: &str, weight: &str, role: Role, value: Tensor) -> Result<(), TrainError> {
        let name = format!("{layer}.{weight}");
        let var = Var::from_tensor(&value)?;
        self.by_name.insert(name.clone(), self.params.len());
        self.params.push(Param { name, layer: layer.to_string(), role, var, trainable: false });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.by_name.get(name).map(|&i| &self.params[i])
    }

    /// The tensor of `<layer>.<weight>` to compute with (see [`Param::tensor`]).
    pub fn tensor(&self, layer: &str, weight: &str, grad: bool) -> Result<Tensor, TrainError> {
        let name = format!("{layer}.{weight}");
        self.get(&name).map(|p| p.tensor(grad)).ok_or_else(|| TrainError::MissingParam(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    /// Makes exactly the weights of layers for which `selected(layer)` holds trainable; every
    /// other parameter, and every statistic, is frozen.
    pub fn set_trainable(&mut self, selected: impl Fn(&str) -> bool) {
        for p in &mut self.params {
            p.trainable = p.role == Role::Weight && selected(&p.layer);
        }
    }

    /// Parameter counts: (trainable, non-trainable).
    pub fn counts(&self) -> (usize, usize) {
        let trainable: usize = self.params.iter().filter(|p| p.trainable).map(Param::elem_count).sum();
        let total: usize = self.params.iter().map(Param::elem_count).sum();
        (trainable, total - trainable)
    }

    /// The first parameter holding a NaN or an infinity, if any (a sum per tensor: NaN and
    /// infinities propagate through it, where a max would skip a NaN).
    pub fn first_non_finite(&self) -> Result<Option<&str>, TrainError> {
        for p in &self.params {
            let sum = p.var.as_tensor().sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
            if !sum.is_finite() {
                return Ok(Some(&p.name));
            }
        }
        Ok(None)
    }

    /// Deep copies of every parameter (statistics included), by name. Copies, not views:
    /// optimizer steps write into the variables' storage in place.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        self.params.iter().map(|p| Ok((p.name.clone(), p.var.as_tensor().copy()?))).collect()
    }

    /// Overwrites parameters from `tensors`. Every parameter for which `wanted(name)` holds must be
    /// present with the right shape; others in `tensors` are ignored.
    pub fn load(&self, tensors: &HashMap<String, Tensor>, wanted: impl Fn(&str) -> bool) -> Result<(), TrainError> {
        for p in self.params.iter().filter(|p| wanted(&p.name)) {
            let expected = p.var.dims().to_vec();
            let Some(t) = tensors.get(&p.name) else {
                return Err(WeightsError::Missing { tensor: p.name.clone(), expected }.into());
            };
            if t.dims() != expected {
                return Err(WeightsError::Shape { tensor: p.name.clone(), found: t.dims().to_vec(), expected }.into());
            }
            let t = t.to_dtype(p.var.dtype())?;
            p.var.set(&t)?;
        }
        Ok(())
    }
}
