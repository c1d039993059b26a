//! Named f32 tensors ([`Params`]) and their safetensors wire format.

use std::borrow::Cow;
use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::error::ParamsError;

/// A dense, row-major f32 tensor whose data length always matches its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

#[derive(Deserialize)]
struct RawTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl TryFrom<RawTensor> for Tensor {
    type Error = ParamsError;
    fn try_from(r: RawTensor) -> Result<Self, ParamsError> {
        Tensor::new(r.shape, r.data)
    }
}

/// Number of elements a shape holds, or an error on overflow.
pub(crate) fn shape_len(name: &str, shape: &[usize]) -> Result<usize, ParamsError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ParamsError::ShapeOverflow {
            name: name.to_string(),
            shape: shape.to_vec(),
        })
}

impl Tensor {
    /// Creates a tensor; errors if `data.len()` differs from the shape's element count.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ParamsError> {
        let expected = shape_len("", &shape)?;
        if expected != data.len() {
            return Err(ParamsError::DataLength {
                name: String::new(),
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros with the given shape.
    pub fn zeros(shape: Vec<usize>) -> Result<Self, ParamsError> {
        let n = shape_len("", &shape)?;
        Ok(Self {
            shape,
            data: vec![0.0; n],
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable values (the length cannot change).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor, returning `(shape, data)`.
    pub fn into_parts(self) -> (Vec<usize>, Vec<f32>) {
        (self.shape, self.data)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A tensor's name and shape: what two parameter sets must share to be combined.
pub type Layout = BTreeMap<String, Vec<usize>>;

/// A named set of f32 tensors, ordered by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params {
    tensors: BTreeMap<String, Tensor>,
}

/// Borrowed view used to serialise without copying data twice.
pub(crate) struct BytesView<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
    /// Payload length in bytes; equals `bytes.len()` unless only the header is wanted.
    pub len: usize,
}

impl<'a> BytesView<'a> {
    pub(crate) fn new(dtype: Dtype, shape: Vec<usize>, bytes: Cow<'a, [u8]>) -> Self {
        let len = bytes.len();
        Self {
            dtype,
            shape,
            bytes,
            len,
        }
    }
}

impl View for BytesView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes.as_ref())
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

pub(crate) fn f32s_to_le(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn f64s_to_le(data: &[f64]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn le_to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(crate) fn le_to_f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Length of the safetensors buffer `views` would serialise to, without copying data.
pub(crate) fn safetensors_len<'a>(
    views: impl IntoIterator<Item = (String, BytesView<'a>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<usize, ParamsError> {
    let mut payload = 0usize;
    let header_views: Vec<(String, BytesView<'a>)> = views
        .into_iter()
        .map(|(n, mut v)| {
            payload += v.len;
            v.bytes = Cow::Borrowed(&[]);
            (n, v)
        })
        .collect();
    let header = safetensors::serialize(header_views, metadata)?;
    Ok(header.len() + payload)
}

pub(crate) fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) a tensor, returning the previous one.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Inserts a tensor built from `shape` and `data`, naming it in any error.
    pub fn insert_vec(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<(), ParamsError> {
        let name = name.into();
        let t = Tensor::new(shape, data).map_err(|e| name_error(e, &name))?;
        self.tensors.insert(name, t);
        Ok(())
    }

    /// Builder-style [`Params::insert_vec`].
    pub fn with(
        mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<Self, ParamsError> {
        self.insert_vec(name, shape, data)?;
        Ok(self)
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Mutable access to the tensor called `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    /// Removes and returns the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Tensor names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// `(name, tensor)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Mutable `(name, tensor)` pairs in name order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.tensors.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalar values.
    pub fn num_elements(&self) -> usize {
        self.tensors.values().map(Tensor::len).sum()
    }

    /// Raw payload size in bytes (4 per value), without any header.
    pub fn byte_size(&self) -> usize {
        self.num_elements() * 4
    }

    /// Names and shapes.
    pub fn layout(&self) -> Layout {
        self.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect()
    }

    /// Whether `other` has exactly the same names and shapes.
    pub fn same_layout(&self, other: &Params) -> bool {
        self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|((a, ta), (b, tb))| a == b && ta.shape == tb.shape)
    }

    /// Checks that this set has exactly the names and shapes of `expected`,
    /// naming the first offending tensor.
    pub fn check_layout(&self, expected: &Layout) -> Result<(), ParamsError> {
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => return Err(ParamsError::Missing(name.clone())),
                Some(t) if &t.shape != shape => {
                    return Err(ParamsError::Shape {
                        name: name.clone(),
                        expected: shape.clone(),
                        actual: t.shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self.tensors.keys().find(|k| !expected.contains_key(*k)) {
            return Err(ParamsError::Unexpected(extra.clone()));
        }
        Ok(())
    }

    /// Like [`Params::check_layout`] against another set's layout.
    pub fn check_same_layout(&self, expected: &Params) -> Result<(), ParamsError> {
        for (name, t) in &expected.tensors {
            match self.tensors.get(name) {
                None => return Err(ParamsError::Missing(name.clone())),
                Some(s) if s.shape != t.shape => {
                    return Err(ParamsError::Shape {
                        name: name.clone(),
                        expected: t.shape.clone(),
                        actual: s.shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| !expected.tensors.contains_key(*k))
        {
            return Err(ParamsError::Unexpected(extra.clone()));
        }
        Ok(())
    }

    /// Errors on the first NaN or infinite value, naming tensor and index.
    pub fn check_finite(&self) -> Result<(), ParamsError> {
        for (name, t) in &self.tensors {
            if let Some((index, &value)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ParamsError::NonFinite {
                    name: name.clone(),
                    index,
                    value,
                });
            }
        }
        Ok(())
    }

    /// A set with the same layout, all zeros.
    pub fn zeros_like(&self) -> Params {
        Params {
            tensors: self
                .tensors
                .iter()
                .map(|(k, t)| {
                    (
                        k.clone(),
                        Tensor {
                            shape: t.shape.clone(),
                            data: vec![0.0; t.data.len()],
                        },
                    )
                })
                .collect(),
        }
    }

    /// Euclidean norm over all values, computed in f64.
    pub fn l2_norm(&self) -> f64 {
        self.tensors
            .values()
            .flat_map(|t| t.data.iter())
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// `self - other` elementwise; layouts must match.
    pub fn sub(&self, other: &Params) -> Result<Params, ParamsError> {
        other.check_same_layout(self)?;
        let mut out = self.clone();
        for (name, t) in out.tensors.iter_mut() {
            let o = &other.tensors[name];
            for (a, b) in t.data.iter_mut().zip(&o.data) {
                *a -= *b;
            }
        }
        Ok(out)
    }

    /// `self += alpha * other` elementwise; layouts must match.
    pub fn add_scaled(&mut self, other: &Params, alpha: f32) -> Result<(), ParamsError> {
        other.check_same_layout(self)?;
        for (name, t) in self.tensors.iter_mut() {
            let o = &other.tensors[name];
            for (a, b) in t.data.iter_mut().zip(&o.data) {
                *a += alpha * *b;
            }
        }
        Ok(())
    }

    /// Multiplies every value by `alpha`.
    pub fn scale(&mut self, alpha: f32) {
        for t in self.tensors.values_mut() {
            for v in &mut t.data {
                *v *= alpha;
            }
        }
    }

    fn views(&self) -> impl Iterator<Item = (String, BytesView<'static>)> + '_ {
        self.tensors.iter().map(|(k, t)| {
            (
                k.clone(),
                BytesView::new(Dtype::F32, t.shape.clone(), Cow::Owned(f32s_to_le(&t.data))),
            )
        })
    }

    /// Serialises to safetensors bytes (F32, little-endian): the wire format.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ParamsError> {
        Ok(safetensors::serialize(self.views(), None)?)
    }

    /// Exact length of [`Params::to_safetensors`]'s output, computed without building it.
    pub fn wire_len(&self) -> Result<usize, ParamsError> {
        let views = self.tensors.iter().map(|(k, t)| {
            (
                k.clone(),
                BytesView {
                    dtype: Dtype::F32,
                    shape: t.shape.clone(),
                    bytes: Cow::Borrowed(&[]),
                    len: t.data.len() * 4,
                },
            )
        });
        safetensors_len(views, None)
    }

    /// Parses safetensors bytes; every tensor must be F32.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Params, ParamsError> {
        let st = SafeTensors::deserialize(bytes)?;
        let mut out = Params::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ParamsError::Dtype {
                    name,
                    expected: "F32".into(),
                    actual: dtype_name(view.dtype()),
                });
            }
            let data = le_to_f32s(view.data());
            out.insert_vec(name, view.shape().to_vec(), data)?;
        }
        Ok(out)
    }

    /// Parses safetensors bytes and checks layout against `expected` and finiteness.
    pub fn from_safetensors_checked(
        bytes: &[u8],
        expected: &Layout,
    ) -> Result<Params, ParamsError> {
        let p = Params::from_safetensors(bytes)?;
        p.check_layout(expected)?;
        p.check_finite()?;
        Ok(p)
    }
}

impl FromIterator<(String, Tensor)> for Params {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        Params {
            tensors: iter.into_iter().collect(),
        }
    }
}

fn name_error(e: ParamsError, name: &str) -> ParamsError {
    match e {
        ParamsError::DataLength {
            shape,
            expected,
            actual,
            ..
        } => ParamsError::DataLength {
            name: name.to_string(),
            shape,
            expected,
            actual,
        },
        ParamsError::ShapeOverflow { shape, .. } => ParamsError::ShapeOverflow {
            name: name.to_string(),
            shape,
        },
        other => other,
    }
}
