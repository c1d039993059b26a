//! Reading frozen weights from a Hugging Face folder, with checked names and shapes.
//!
//! We do not use candle's `VarBuilder` here: a frozen backbone wants plain tensors (no
//! gradient tracking), the trainable part wants `Var`s, and a user who points fedprompt at the
//! wrong folder deserves an error that names the file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};

use crate::error::{ModelError, Result};

/// The weights of a model folder: `model.safetensors` or the sharded index form.
pub struct Weights {
    st: MmapedSafetensors,
    origin: PathBuf,
    names: HashMap<String, Vec<usize>>,
}

impl Weights {
    /// Opens the weights of a model folder.
    pub fn open(folder: &Path) -> Result<Self> {
        let single = folder.join("model.safetensors");
        let index = folder.join("model.safetensors.index.json");
        if single.is_file() {
            Self::open_files(std::slice::from_ref(&single), single.clone())
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Config {
                    path: index.clone(),
                    msg: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    path: index.clone(),
                    msg: "no `weight_map` object".into(),
                })?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| folder.join(f))
                .collect();
            files.sort();
            files.dedup();
            if files.is_empty() {
                return Err(ModelError::Config {
                    path: index,
                    msg: "`weight_map` lists no files".into(),
                });
            }
            for f in &files {
                if !f.is_file() {
                    return Err(ModelError::NotFound {
                        what: "weight shard",
                        path: f.clone(),
                        hint: "the index names a shard that is not in the folder; copy all shards",
                    });
                }
            }
            Self::open_files(&files, index)
        } else if folder.join("pytorch_model.bin").is_file() {
            Err(ModelError::NotFound {
                what: "model.safetensors",
                path: single,
                hint: "only pytorch_model.bin is present; convert it with `transformers` (save_pretrained(..., safe_serialization=True))",
            })
        } else {
            Err(ModelError::NotFound {
                what: "model weights (model.safetensors or model.safetensors.index.json)",
                path: folder.to_path_buf(),
                hint: "point --model at a Hugging Face model folder",
            })
        }
    }

    fn open_files(files: &[PathBuf], origin: PathBuf) -> Result<Self> {
        // Validate each file's header and sizes first so that a corrupt file is named.
        let mut names = HashMap::new();
        for f in files {
            let file = std::fs::File::open(f).map_err(|e| ModelError::io(f, e))?;
            // SAFETY: the file is opened read-only; fedprompt never writes to a model folder
            // while it reads it. A concurrent writer would be a user error, as with any mmap.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(f, e))?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
                ModelError::Safetensors {
                    path: f.clone(),
                    msg: e.to_string(),
                }
            })?;
            for (name, view) in st.tensors() {
                names.insert(name, view.shape().to_vec());
            }
        }
        // SAFETY: as above, read-only mmap of files we just validated.
        let st =
            unsafe { MmapedSafetensors::multi(files) }.map_err(|e| ModelError::Safetensors {
                path: origin.clone(),
                msg: e.to_string(),
            })?;
        Ok(Weights { st, origin, names })
    }

    /// Opens a single safetensors file (an adapter or a head file).
    pub fn open_file(file: &Path) -> Result<Self> {
        if !file.is_file() {
            return Err(ModelError::NotFound {
                what: "safetensors file",
                path: file.to_path_buf(),
                hint: "check the path",
            });
        }
        Self::open_files(&[file.to_path_buf()], file.to_path_buf())
    }

    /// The file (or index) the weights came from, for messages.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// All tensor names with their shapes.
    pub fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.names
    }

    /// Loads a tensor as f32, checking its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let got = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                path: self.origin.clone(),
            })?;
        if got.as_slice() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                path: self.origin.clone(),
                expected: shape.to_vec(),
                got: got.clone(),
            });
        }
        self.get_any(name)
    }

    /// Loads a tensor as f32 whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let t = self
            .st
            .load(name, &Device::Cpu)
            .map_err(|e| ModelError::Safetensors {
                path: self.origin.clone(),
                msg: format!("tensor `{name}`: {e}"),
            })?;
        let t = match t.dtype() {
            DType::F32 => t,
            DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            other => {
                return Err(ModelError::Safetensors {
                    path: self.origin.clone(),
                    msg: format!("tensor `{name}` has dtype {other:?}; expected a float type"),
                })
            }
        };
        Ok(t)
    }
}

/// Where layer constructors take their parameters from: frozen weights, optionally turned
/// into trainable variables that are recorded in a [`TrainableSet`](crate::TrainableSet).
pub struct ParamSource<'a> {
    weights: &'a Weights,
    prefix: String,
    trainable: Option<&'a std::cell::RefCell<BTreeMap<String, Var>>>,
}

impl<'a> ParamSource<'a> {
    /// Frozen parameters: plain tensors, no gradients.
    pub fn frozen(weights: &'a Weights) -> Self {
        ParamSource {
            weights,
            prefix: String::new(),
            trainable: None,
        }
    }

    /// Trainable parameters: every tensor becomes a `Var` recorded in `vars`.
    pub fn trainable(
        weights: &'a Weights,
        vars: &'a std::cell::RefCell<BTreeMap<String, Var>>,
    ) -> Self {
        ParamSource {
            weights,
            prefix: String::new(),
            trainable: Some(vars),
        }
    }

    /// A source whose names are prefixed by `p.` (candle's `pp`).
    pub fn pp(&self, p: impl std::fmt::Display) -> ParamSource<'a> {
        let prefix = if self.prefix.is_empty() {
            p.to_string()
        } else {
            format!("{}.{p}", self.prefix)
        };
        ParamSource {
            weights: self.weights,
            prefix,
            trainable: self.trainable,
        }
    }

    /// The full name of `name` under this source's prefix.
    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Loads `name` with the given shape.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        let t = self.weights.get(&full, shape)?;
        match self.trainable {
            None => Ok(t),
            Some(vars) => {
                let var = Var::from_tensor(&t)?;
                let out = var.as_tensor().clone();
                vars.borrow_mut().insert(full, var);
                Ok(out)
            }
        }
    }

    /// Whether `name` exists under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.full_name(name))
    }
}
