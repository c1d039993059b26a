//! Conversion between a classifier's trainable set (candle tensors) and the federated core's
//! transport-free [`Params`].

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use fedprompt_fl::Params;
use fedprompt_model::TrainableSet;

use crate::trainer::TrainError;

/// The current values of a trainable set as `Params`.
pub fn to_params(set: &TrainableSet) -> Result<Params, TrainError> {
    let mut p = Params::new();
    for (name, var) in set.iter() {
        let data: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        p.insert_vec(name, var.dims().to_vec(), data)
            .map_err(|e| TrainError::Config(format!("tensor `{name}`: {e}")))?;
    }
    Ok(p)
}

/// Overwrites a trainable set with `params` (names and shapes must match exactly).
pub fn assign_params(set: &TrainableSet, params: &Params) -> Result<(), TrainError> {
    let mut values = BTreeMap::new();
    for (name, t) in params.iter() {
        values.insert(
            name.to_string(),
            Tensor::from_slice(t.data(), t.shape(), &Device::Cpu)?,
        );
    }
    set.assign(&values, Path::new("<global parameters>"))?;
    Ok(())
}

/// The values as candle tensors (for FedProx's proximal term).
pub fn params_to_tensors(params: &Params) -> Result<BTreeMap<String, Tensor>, TrainError> {
    params
        .iter()
        .map(|(n, t)| {
            Ok((
                n.to_string(),
                Tensor::from_slice(t.data(), t.shape(), &Device::Cpu)?,
            ))
        })
        .collect()
}
