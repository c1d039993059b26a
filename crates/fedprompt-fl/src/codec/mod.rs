//! Update codecs: lossy encodings of [`Params`] with exact byte counts.
//!
//! Every encoding is a safetensors buffer tagged with the codec in its
//! metadata, so a mismatched decoder fails clearly. Top-k is meant for update
//! deltas (`local − global`), not raw parameters, and with [`ErrorFeedback`].

use std::borrow::Cow;
use std::collections::HashMap;

use half::f16;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{FlError, ParamsError, Result};
use crate::params::{dtype_name, f32s_to_le, le_to_f32s, BytesView, Layout, Params};

mod feedback;
pub use feedback::{encode_once, Compression, Encoded, ErrorFeedback};

const META_KEY: &str = "fedprompt.codec";

/// An update encoding, chosen by `type = "..."`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Codec {
    /// Lossless f32 (the plain wire format plus a codec tag).
    #[default]
    F32,
    /// IEEE half precision (relative error ≤ 2⁻¹¹ within f16's normal range).
    F16,
    /// Symmetric int8 with one f32 scale per tensor (`scale = max|x| / 127`).
    Int8,
    /// Symmetric int8 with one f32 scale per row (the last dimension; one row for 0-d and
    /// 1-d tensors): error at most half a step of the row's own scale.
    #[serde(rename = "int8-rows")]
    Int8Rows,
    /// Symmetric 4-bit integers in [-7, 7], two per byte, with one f32 scale per row
    /// (`scale = max|x| / 7`): 1/8 of the f32 bytes plus the scales; error at most half a
    /// step of the row's scale. Meant for deltas with error feedback.
    #[serde(rename = "int4-rows")]
    Int4Rows,
    /// Keeps the `⌈fraction·n⌉` largest-magnitude values of each tensor (u32 index + f32 value).
    TopK {
        /// Fraction of values kept, in (0, 1].
        fraction: f64,
    },
}

fn codec_err(msg: impl Into<String>) -> FlError {
    FlError::Codec(msg.into())
}

impl Codec {
    /// Tag stored in the encoding.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::F32 => "f32",
            Codec::F16 => "f16",
            Codec::Int8 => "int8",
            Codec::Int8Rows => "int8-rows",
            Codec::Int4Rows => "int4-rows",
            Codec::TopK { .. } => "topk",
        }
    }

    /// Checks parameters.
    pub fn validate(&self) -> Result<()> {
        if let Codec::TopK { fraction } = *self {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(FlError::Config(format!(
                    "top-k fraction must be in (0, 1], got {fraction}"
                )));
            }
        }
        Ok(())
    }

    /// Values kept per tensor of `n` elements by top-k.
    pub fn topk_count(fraction: f64, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            ((fraction * n as f64 - 1e-9).ceil() as usize).clamp(1, n)
        }
    }

    /// Encodes `params` (which must be finite).
    pub fn encode(&self, params: &Params) -> Result<Vec<u8>> {
        self.validate()?;
        params.check_finite()?;
        let mut views: Vec<(String, BytesView<'static>)> = Vec::new();
        for (name, t) in params.iter() {
            let shape = t.shape().to_vec();
            match *self {
                Codec::F32 => views.push((
                    name.to_string(),
                    BytesView::new(Dtype::F32, shape, Cow::Owned(f32s_to_le(t.data()))),
                )),
                Codec::F16 => {
                    let mut bytes = Vec::with_capacity(t.len() * 2);
                    for (i, &x) in t.data().iter().enumerate() {
                        let h = f16::from_f32(x);
                        if !h.is_finite() {
                            return Err(codec_err(format!(
                                "tensor `{name}`: value {x} at index {i} overflows f16"
                            )));
                        }
                        bytes.extend(h.to_le_bytes());
                    }
                    views.push((
                        name.to_string(),
                        BytesView::new(Dtype::F16, shape, Cow::Owned(bytes)),
                    ));
                }
                Codec::Int8 | Codec::Int8Rows => {
                    let row = match self {
                        Codec::Int8Rows => row_len(&shape, t.len()),
                        _ => t.len().max(1),
                    };
                    let mut q = Vec::with_capacity(t.len());
                    let mut scales = Vec::with_capacity(t.len().div_ceil(row).max(1));
                    for chunk in t.data().chunks(row) {
                        let max = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                        let scale = max / 127.0;
                        scales.push(scale);
                        q.extend(chunk.iter().map(|&x| {
                            let v = if scale > 0.0 {
                                (x / scale).round().clamp(-127.0, 127.0)
                            } else {
                                0.0
                            };
                            (v as i8) as u8
                        }));
                    }
                    if scales.is_empty() {
                        scales.push(0.0); // an empty tensor still carries its scale
                    }
                    let scale_shape = match self {
                        Codec::Int8Rows => vec![scales.len()],
                        _ => vec![],
                    };
                    views.push((
                        format!("q/{name}"),
                        BytesView::new(Dtype::I8, shape, Cow::Owned(q)),
                    ));
                    views.push((
                        format!("scale/{name}"),
                        BytesView::new(Dtype::F32, scale_shape, Cow::Owned(f32s_to_le(&scales))),
                    ));
                }
                Codec::Int4Rows => {
                    let row = row_len(&shape, t.len());
                    let (packed, scales) = int4_encode(t.data(), row);
                    views.push((
                        format!("q4/{name}"),
                        BytesView::new(Dtype::U8, vec![packed.len()], Cow::Owned(packed)),
                    ));
                    views.push((
                        format!("scale/{name}"),
                        BytesView::new(
                            Dtype::F32,
                            vec![scales.len()],
                            Cow::Owned(f32s_to_le(&scales)),
                        ),
                    ));
                }
                Codec::TopK { fraction } => {
                    let n = t.len();
                    if u32::try_from(n).is_err() {
                        return Err(codec_err(format!(
                            "tensor `{name}` too large for u32 indices"
                        )));
                    }
                    let k = Self::topk_count(fraction, n);
                    let mut order: Vec<usize> = (0..n).collect();
                    let d = t.data();
                    order.sort_by(|&a, &b| d[b].abs().total_cmp(&d[a].abs()).then(a.cmp(&b)));
                    let mut keep = order[..k].to_vec();
                    keep.sort_unstable();
                    let idx: Vec<u8> = keep
                        .iter()
                        .flat_map(|&i| (i as u32).to_le_bytes())
                        .collect();
                    let vals: Vec<f32> = keep.iter().map(|&i| d[i]).collect();
                    views.push((
                        format!("idx/{name}"),
                        BytesView::new(Dtype::U32, vec![k], Cow::Owned(idx)),
                    ));
                    views.push((
                        format!("val/{name}"),
                        BytesView::new(Dtype::F32, vec![k], Cow::Owned(f32s_to_le(&vals))),
                    ));
                }
            }
        }
        let meta = HashMap::from([(META_KEY.to_string(), self.name().to_string())]);
        Ok(safetensors::serialize(views, Some(meta)).map_err(ParamsError::from)?)
    }

    /// Decodes bytes made by [`Codec::encode`] with this codec; the result must fit `layout`.
    pub fn decode(&self, bytes: &[u8], layout: &Layout) -> Result<Params> {
        self.validate()?;
        let st = SafeTensors::deserialize(bytes).map_err(ParamsError::from)?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(ParamsError::from)?;
        let tag = meta.metadata().as_ref().and_then(|m| m.get(META_KEY));
        if tag.map(String::as_str) != Some(self.name()) {
            return Err(codec_err(format!(
                "encoded with {:?}, decoder is `{}`",
                tag,
                self.name()
            )));
        }
        let get = |name: &str, dtype: Dtype| -> Result<safetensors::tensor::TensorView<'_>> {
            let v = st
                .tensor(name)
                .map_err(|_| ParamsError::Missing(name.to_string()))?;
            if v.dtype() != dtype {
                return Err(ParamsError::Dtype {
                    name: name.to_string(),
                    expected: dtype_name(dtype),
                    actual: dtype_name(v.dtype()),
                }
                .into());
            }
            Ok(v)
        };
        let per_tensor = match self {
            Codec::F32 | Codec::F16 => 1,
            Codec::Int8 | Codec::Int8Rows | Codec::Int4Rows | Codec::TopK { .. } => 2,
        };
        if st.len() != layout.len() * per_tensor {
            return Err(codec_err(format!(
                "{} tensors in the encoding, layout needs {}",
                st.len(),
                layout.len() * per_tensor
            )));
        }
        let mut out = Params::new();
        for (name, shape) in layout {
            let data: Vec<f32> = match *self {
                Codec::F32 => le_to_f32s(get(name, Dtype::F32)?.data()),
                Codec::F16 => get(name, Dtype::F16)?
                    .data()
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Codec::Int8 | Codec::Int8Rows => {
                    let q = get(&format!("q/{name}"), Dtype::I8)?;
                    check_shape(name, shape, q.shape())?;
                    let scales = le_to_f32s(get(&format!("scale/{name}"), Dtype::F32)?.data());
                    let n = q.data().len();
                    let row = match self {
                        Codec::Int8Rows => row_len(shape, n),
                        _ => n.max(1),
                    };
                    if scales.len() != n.div_ceil(row).max(1) {
                        return Err(codec_err(format!(
                            "tensor `{name}`: {} scale(s) for {} row(s)",
                            scales.len(),
                            n.div_ceil(row).max(1)
                        )));
                    }
                    if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
                        return Err(codec_err(format!("tensor `{name}`: invalid scale {bad}")));
                    }
                    q.data()
                        .chunks(row)
                        .zip(&scales)
                        .flat_map(|(c, &scale)| c.iter().map(move |&b| f32::from(b as i8) * scale))
                        .collect()
                }
                Codec::Int4Rows => {
                    let n = crate::params::shape_len(name, shape)?;
                    let q = get(&format!("q4/{name}"), Dtype::U8)?;
                    let scales = le_to_f32s(get(&format!("scale/{name}"), Dtype::F32)?.data());
                    int4_decode(name, q.data(), &scales, n, row_len(shape, n))?
                }
                Codec::TopK { .. } => {
                    let n = crate::params::shape_len(name, shape)?;
                    let idx = get(&format!("idx/{name}"), Dtype::U32)?;
                    let val = get(&format!("val/{name}"), Dtype::F32)?;
                    let idx: Vec<usize> = idx
                        .data()
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
                        .collect();
                    let val = le_to_f32s(val.data());
                    if idx.len() != val.len() {
                        return Err(codec_err(format!(
                            "tensor `{name}`: {} indices but {} values",
                            idx.len(),
                            val.len()
                        )));
                    }
                    if idx.windows(2).any(|w| w[0] >= w[1]) || idx.last().is_some_and(|&i| i >= n) {
                        return Err(codec_err(format!(
                            "tensor `{name}`: indices not strictly increasing below {n}"
                        )));
                    }
                    let mut d = vec![0.0f32; n];
                    for (i, v) in idx.into_iter().zip(val) {
                        d[i] = v;
                    }
                    d
                }
            };
            if matches!(self, Codec::F32 | Codec::F16) {
                let found = st.tensor(name).map_err(ParamsError::from)?;
                check_shape(name, shape, found.shape())?;
            }
            out.insert_vec(name.clone(), shape.clone(), data)?;
        }
        out.check_finite()?;
        Ok(out)
    }
}

/// Quantises `data` to 4-bit integers in [-7, 7] with one scale per `row` values, packed
/// two per byte (the earlier value in the low nibble, a final odd value with 0 above it).
fn int4_encode(data: &[f32], row: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(data.len().div_ceil(row).max(1));
    for chunk in data.chunks(row) {
        let max = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = max / 7.0;
        scales.push(scale);
        q.extend(chunk.iter().map(|&x| {
            if scale > 0.0 {
                (x / scale).round().clamp(-7.0, 7.0) as i8
            } else {
                0
            }
        }));
    }
    if scales.is_empty() {
        scales.push(0.0); // an empty tensor still carries its scale
    }
    let nibble = |v: i8| (v as u8) & 0x0f;
    let packed = q
        .chunks(2)
        .map(|p| nibble(p[0]) | p.get(1).map_or(0, |&v| nibble(v) << 4))
        .collect();
    (packed, scales)
}

/// Inverse of [`int4_encode`] for a tensor of `n` values, checking every length and scale.
fn int4_decode(
    name: &str,
    packed: &[u8],
    scales: &[f32],
    n: usize,
    row: usize,
) -> Result<Vec<f32>> {
    if packed.len() != n.div_ceil(2) {
        return Err(codec_err(format!(
            "tensor `{name}`: {} packed byte(s) for {n} value(s), expected {}",
            packed.len(),
            n.div_ceil(2)
        )));
    }
    let rows = n.div_ceil(row).max(1);
    if scales.len() != rows {
        return Err(codec_err(format!(
            "tensor `{name}`: {} scale(s) for {rows} row(s)",
            scales.len()
        )));
    }
    if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
        return Err(codec_err(format!("tensor `{name}`: invalid scale {bad}")));
    }
    // Sign-extend a nibble: 0x8..=0xf are -8..=-1 (-8 is never written; it decodes as -8).
    let value = |b: u8| ((b << 4) as i8 >> 4) as f32;
    Ok((0..n)
        .map(|i| {
            let b = packed[i / 2];
            let v = if i % 2 == 0 {
                value(b & 0x0f)
            } else {
                value(b >> 4)
            };
            v * scales[i / row]
        })
        .collect())
}

/// Values per row for per-row scales: the last dimension (the whole tensor when it has
/// fewer than two dimensions; at least 1).
fn row_len(shape: &[usize], len: usize) -> usize {
    match shape {
        [.., _, last] => (*last).max(1),
        _ => len.max(1),
    }
}

fn check_shape(name: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected != actual {
        return Err(ParamsError::Shape {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        }
        .into());
    }
    Ok(())
}
