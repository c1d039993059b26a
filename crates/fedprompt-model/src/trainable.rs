//! The trainable set: the named tensors a method trains, the only thing that crosses the
//! network in a federation, saved and loaded as safetensors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::error::{ModelError, Result};

/// Named trainable variables, ordered by name.
#[derive(Clone, Default, Debug)]
pub struct TrainableSet {
    vars: BTreeMap<String, Var>,
}

impl TrainableSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a variable.
    pub fn insert(&mut self, name: &str, var: Var) {
        self.vars.insert(name.to_string(), var);
    }

    /// Adds every variable of `other`.
    pub fn extend(&mut self, other: BTreeMap<String, Var>) {
        self.vars.extend(other);
    }

    /// The variable called `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(|s| s.as_str())
    }

    /// `(name, var)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The variables, for an optimiser.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A detached copy of the current values.
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// Overwrites the values in place. `values` must hold exactly this set's names and shapes.
    pub fn assign(&self, values: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
        for name in values.keys() {
            if !self.vars.contains_key(name) {
                return Err(ModelError::Adapter {
                    path: origin.to_path_buf(),
                    msg: format!(
                        "unexpected tensor `{name}` (this method trains: {})",
                        self.name_list()
                    ),
                });
            }
        }
        for (name, var) in &self.vars {
            let v = values.get(name).ok_or_else(|| ModelError::Adapter {
                path: origin.to_path_buf(),
                msg: format!("tensor `{name}` is missing"),
            })?;
            if v.dims() != var.dims() {
                return Err(ModelError::Adapter {
                    path: origin.to_path_buf(),
                    msg: format!(
                        "tensor `{name}` has shape {:?}, this model needs {:?} (adapter for another model or method?)",
                        v.dims(),
                        var.dims()
                    ),
                });
            }
            let v = v.to_dtype(candle_core::DType::F32)?;
            var.set(&v)?;
        }
        Ok(())
    }

    fn name_list(&self) -> String {
        let names: Vec<&str> = self.names().take(6).collect();
        let more = if self.len() > 6 { ", ..." } else { "" };
        format!("{}{more}", names.join(", "))
    }

    /// Writes the values to a safetensors file atomically (temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let snap = self.snapshot()?;
        save_tensors(&snap, path)
    }

    /// Reads values written by [`save`](Self::save) and assigns them.
    pub fn load(&self, path: &Path) -> Result<()> {
        let w = crate::weights::Weights::open_file(path)?;
        let mut values = BTreeMap::new();
        for name in w.shapes().keys() {
            values.insert(name.clone(), w.get_any(name)?);
        }
        self.assign(&values, path)
    }
}

/// Saves named tensors as a safetensors file, atomically.
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    save_tensors_with_metadata(tensors, None, path)
}

/// Saves named tensors with optional string metadata, atomically.
pub fn save_tensors_with_metadata(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (k, t) in tensors {
        let v: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((k.clone(), bytes, t.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let bytes =
        safetensors::tensor::serialize(views, metadata).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically ([`fedprompt_io::write_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    fedprompt_io::write_atomic(path, bytes).map_err(|e| ModelError::io(path, e))
}
