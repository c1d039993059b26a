//! Reading frozen weights from a Hugging Face folder, with checked names and shapes.
//!
//! We do not use candle's `VarBuilder` or `MmapedSafetensors` here: a frozen backbone wants
//! plain tensors (no gradient tracking), the trainable part wants `Var`s, and a user who points
//! fedprompt at the wrong folder deserves an error that names the file and the tensor.
//!
//! Memory: tensors are read with positioned reads (`pread`) straight into the tensor's own
//! buffer, so a loaded weight exists once (no memory-mapped pages of the file stay resident
//! beside the copy). The word-embedding table, most of an XLM-R model's bytes, is not loaded at
//! all when frozen: [`FileTable`] reads only the rows of the tokens looked up, each with one
//! positioned read. (A memory map was tried first and measured worse: the kernel maps up to
//! 16 neighbouring pages around each touched row ("fault-around"), so a batch of tokens spread
//! over a 250k vocabulary made nearly the whole 750 MB table resident.)

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use safetensors::Dtype;

use crate::error::{ModelError, Result};

/// Which float type the frozen backbone's matrices are kept in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// f32: exact, the numerics of the parity tests (the default).
    #[default]
    F32,
    /// bf16 matrices (half the bytes; products accumulated in f32). Biases, norms, embeddings,
    /// the trainable set and the optimizer stay f32.
    Bf16,
}

impl WeightDtype {
    /// The name used in experiment files and on the command line (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            other => Err(format!(
                "unknown weight dtype `{other}`: use `f32` (exact) or `bf16` (fast)"
            )),
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One weight file, open for positioned reads.
struct Shard {
    path: PathBuf,
    file: Arc<File>,
}

/// Where a tensor's bytes are.
#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the file.
    start: usize,
    len: usize,
}

/// The weights of a model folder: `model.safetensors` or the sharded index form.
pub struct Weights {
    shards: Vec<Shard>,
    origin: PathBuf,
    entries: HashMap<String, Entry>,
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
        let mut entries = HashMap::new();
        let mut shards = Vec::with_capacity(files.len());
        for (k, f) in files.iter().enumerate() {
            let file = File::open(f).map_err(|e| ModelError::io(f, e))?;
            // SAFETY: the file is opened read-only; fedprompt never writes to a model folder
            // while it reads it. A concurrent writer would be a user error, as with any mmap.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(f, e))?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
                ModelError::Safetensors {
                    path: f.clone(),
                    msg: e.to_string(),
                }
            })?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                names.insert(name.clone(), view.shape().to_vec());
                let data = view.data();
                entries.insert(
                    name,
                    Entry {
                        shard: k,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        start: data.as_ptr() as usize - base,
                        len: data.len(),
                    },
                );
            }
            drop(st);
            // Only the header's pages were touched; unmapping leaves nothing resident.
            drop(mmap);
            shards.push(Shard {
                path: f.clone(),
                file: Arc::new(file),
            });
        }
        Ok(Weights {
            shards,
            origin,
            entries,
            names,
        })
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

    fn entry(&self, name: &str, shape: Option<&[usize]>) -> Result<&Entry> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                path: self.origin.clone(),
            })?;
        if let Some(shape) = shape {
            if e.shape.as_slice() != shape {
                return Err(ModelError::ShapeMismatch {
                    name: name.to_string(),
                    path: self.origin.clone(),
                    expected: shape.to_vec(),
                    got: e.shape.clone(),
                });
            }
        }
        Ok(e)
    }

    fn not_float(&self, name: &str, dtype: Dtype) -> ModelError {
        ModelError::Safetensors {
            path: self.origin.clone(),
            msg: format!("tensor `{name}` has dtype {dtype:?}; expected a float type"),
        }
    }

    /// Loads a tensor as f32, checking its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let e = self.entry(name, Some(shape))?;
        self.read_f32(name, e)
    }

    /// Loads a tensor as f32 whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let e = self.entry(name, None)?;
        self.read_f32(name, e)
    }

    /// Loads a matrix in `dtype` (f32, or bf16 rounded to nearest even), checking its shape.
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: WeightDtype) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        Ok(match dtype {
            WeightDtype::F32 => t,
            WeightDtype::Bf16 => t.to_dtype(DType::BF16)?,
        })
    }

    /// The rows of `name` (`[rows, cols]`) left in the file: nothing is read until rows are
    /// looked up, and then only theirs.
    pub fn file_table(&self, name: &str, shape: &[usize]) -> Result<FileTable> {
        let e = self.entry(name, Some(shape))?;
        if shape.len() != 2 {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                path: self.origin.clone(),
                expected: shape.to_vec(),
                got: e.shape.clone(),
            });
        }
        if !matches!(e.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(self.not_float(name, e.dtype));
        }
        Ok(FileTable {
            file: self.shards[e.shard].file.clone(),
            path: self.shards[e.shard].path.clone(),
            name: name.to_string(),
            dtype: e.dtype,
            start: e.start,
            rows: shape[0],
            cols: shape[1],
        })
    }

    /// Reads the bytes of `e` with positioned reads straight into an f32 buffer (f32 files),
    /// or into a byte buffer converted once (f16, bf16, f64).
    fn read_f32(&self, name: &str, e: &Entry) -> Result<Tensor> {
        let shard = &self.shards[e.shard];
        let n: usize = e.shape.iter().product();
        let dtype = match e.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => return Err(self.not_float(name, other)),
        };
        if e.len != n * dtype.size_in_bytes() {
            return Err(ModelError::Safetensors {
                path: shard.path.clone(),
                msg: format!("tensor `{name}`: {} bytes for {n} elements", e.len),
            });
        }
        if dtype == DType::F32 {
            let mut v = vec![0f32; n];
            // SAFETY: every bit pattern is a valid f32; the byte view covers exactly `v`.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), n * 4) };
            read_at(&shard.file, bytes, e.start).map_err(|err| ModelError::io(&shard.path, err))?;
            if cfg!(target_endian = "big") {
                v.iter_mut()
                    .for_each(|x| *x = f32::from_bits(x.to_bits().swap_bytes()));
            }
            return Ok(Tensor::from_vec(v, e.shape.as_slice(), &Device::Cpu)?);
        }
        let mut bytes = vec![0u8; e.len];
        read_at(&shard.file, &mut bytes, e.start)
            .map_err(|err| ModelError::io(&shard.path, err))?;
        let t = Tensor::from_raw_buffer(&bytes, dtype, &e.shape, &Device::Cpu)?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// Fills `buf` from `file` at byte `offset`.
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset as u64)
}

/// Fills `buf` from `file` at byte `offset`.
#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: usize) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset as u64))?;
    f.read_exact(buf)
}

/// A frozen `[rows, cols]` table (the word embeddings) left in its file: a lookup reads only
/// the looked-up rows (one positioned read each, through the page cache, which is not counted
/// in the process's memory), so the rows of unused tokens never occupy memory.
#[derive(Clone)]
pub struct FileTable {
    file: Arc<File>,
    path: PathBuf,
    name: String,
    dtype: Dtype,
    /// Byte offset of row 0 in the file.
    start: usize,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for FileTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTable")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl FileTable {
    /// Rows in the table.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Width of a row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The rows `ids` as f32, one after the other (`ids.len() × cols`); an id beyond the table
    /// is an error.
    pub fn gather(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let c = self.cols;
        let size = match self.dtype {
            Dtype::F32 => 4,
            _ => 2,
        };
        let mut out = vec![0f32; ids.len() * c];
        let mut raw = vec![0u8; c * size];
        for (dst, &id) in out.chunks_mut(c.max(1)).zip(ids) {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!(
                    "token id {id} is outside the vocabulary of {} rows of `{}`",
                    self.rows,
                    self.name
                );
            }
            read_at(&self.file, &mut raw, self.start + id * c * size).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "reading row {id} of `{}` from {}: {e}",
                    self.name,
                    self.path.display()
                ))
            })?;
            match self.dtype {
                Dtype::F32 => dst
                    .iter_mut()
                    .zip(raw.chunks_exact(4))
                    .for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                Dtype::BF16 => dst
                    .iter_mut()
                    .zip(raw.chunks_exact(2))
                    .for_each(|(d, b)| *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                _ => dst
                    .iter_mut()
                    .zip(raw.chunks_exact(2))
                    .for_each(|(d, b)| *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            }
        }
        Ok(out)
    }
}

/// Where layer constructors take their parameters from: frozen weights, optionally turned
/// into trainable variables that are recorded in a [`TrainableSet`](crate::TrainableSet).
pub struct ParamSource<'a> {
    weights: &'a Weights,
    prefix: String,
    trainable: Option<&'a std::cell::RefCell<BTreeMap<String, Var>>>,
    dtype: WeightDtype,
}

impl<'a> ParamSource<'a> {
    /// Frozen parameters: plain tensors, no gradients.
    pub fn frozen(weights: &'a Weights) -> Self {
        ParamSource {
            weights,
            prefix: String::new(),
            trainable: None,
            dtype: WeightDtype::F32,
        }
    }

    /// The same source with frozen matrices (see [`ParamSource::get_matrix`]) kept in `dtype`;
    /// trainable sources stay f32 whatever this says.
    pub fn with_dtype(mut self, dtype: WeightDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// The float type frozen matrices are kept in.
    pub fn dtype(&self) -> WeightDtype {
        match self.trainable {
            Some(_) => WeightDtype::F32,
            None => self.dtype,
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
            dtype: WeightDtype::F32,
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
            dtype: self.dtype,
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

    /// Loads the matrix `name` (a layer's weight): in the source's dtype when frozen (see
    /// [`ParamSource::with_dtype`]), as an f32 `Var` when trainable.
    pub fn get_matrix(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        match (self.trainable, self.dtype) {
            (None, WeightDtype::Bf16) => {
                let full = self.full_name(name);
                self.weights.get_as(&full, shape, WeightDtype::Bf16)
            }
            _ => self.get(shape, name),
        }
    }

    /// A `[rows, cols]` lookup table (the word embeddings): left in the file when frozen, an
    /// f32 `Var` (read whole) when trainable.
    pub fn get_table(&self, shape: &[usize], name: &str) -> Result<Table> {
        match self.trainable {
            None => Ok(Table::File(
                self.weights.file_table(&self.full_name(name), shape)?,
            )),
            Some(_) => Ok(Table::Dense(self.get(shape, name)?)),
        }
    }

    /// Whether `name` exists under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.full_name(name))
    }
}

/// A lookup table: left in the file (frozen) or a tensor (trainable).
#[derive(Clone, Debug)]
pub enum Table {
    /// Frozen, rows read from the file on lookup.
    File(FileTable),
    /// A tensor (a trainable `Var` in full fine-tuning).
    Dense(Tensor),
}

impl Table {
    /// The rows `ids` (`[n]`, any integer dtype) → `[n, cols]` f32.
    pub fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Table::Dense(t) => t.index_select(&ids.to_dtype(DType::U32)?, 0),
            Table::File(m) => {
                let ids: Vec<u32> = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
                let v = m.gather(&ids)?;
                Tensor::from_vec(v, (ids.len(), m.cols()), &Device::Cpu)
            }
        }
    }

    /// Width of a row.
    pub fn cols(&self) -> usize {
        match self {
            Table::Dense(t) => t.dims().get(1).copied().unwrap_or(0),
            Table::File(m) => m.cols(),
        }
    }

    /// The tensor, when the table is one (trainable); `None` when left in the file.
    pub fn tensor(&self) -> Option<&Tensor> {
        match self {
            Table::Dense(t) => Some(t),
            Table::File(_) => None,
        }
    }

    /// A copy cut from the autograd graph.
    pub fn detached(&self) -> Self {
        match self {
            Table::Dense(t) => Table::Dense(t.detach()),
            Table::File(m) => Table::File(m.clone()),
        }
    }
}
