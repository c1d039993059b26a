//! A small reader for NumPy `.npy` arrays and `.npz` archives (a zip of `.npy` files).
//!
//! Supports what lang2vec's data uses: C-order arrays of `f4`/`f8` (either byte order) and
//! fixed-width strings `U<n>` (UTF-32) and `S<n>` (bytes). Pickled object arrays (`O`) and
//! Fortran-order arrays of more than one dimension are rejected with an error, never a panic.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{LangError, Result};

/// The element data of one array, flattened in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `f4` values.
    F32(Vec<f32>),
    /// `f8` values.
    F64(Vec<f64>),
    /// `U<n>` or `S<n>` values with trailing NULs removed.
    Str(Vec<String>),
}

/// One array: its shape and flattened data.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C order.
    pub data: NpyData,
}

impl NpyArray {
    /// Number of elements (product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data as `f64`, converting from `f4` if needed; `None` for strings.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match &self.data {
            NpyData::F32(v) => Some(v.iter().map(|&x| f64::from(x)).collect()),
            NpyData::F64(v) => Some(v.clone()),
            NpyData::Str(_) => None,
        }
    }

    /// The data as strings; `None` for numbers.
    pub fn as_strings(&self) -> Option<&[String]> {
        match &self.data {
            NpyData::Str(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F32 { big: bool },
    F64 { big: bool },
    Utf32 { chars: usize, big: bool },
    Bytes { len: usize },
}

impl Dtype {
    fn item_size(self) -> Option<usize> {
        match self {
            Dtype::F32 { .. } => Some(4),
            Dtype::F64 { .. } => Some(8),
            Dtype::Utf32 { chars, .. } => chars.checked_mul(4),
            Dtype::Bytes { len } => Some(len),
        }
    }
}

/// Parses one `.npy` file's bytes; `name` only labels errors.
pub fn parse_npy(name: &str, bytes: &[u8]) -> Result<NpyArray> {
    let err = |reason: String| LangError::Npy {
        name: name.to_string(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not an .npy file (bad magic)".into()));
    }
    let major = bytes[6];
    let (header_len, header_start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header".into()));
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (
                usize::try_from(n).map_err(|_| err("header too long".into()))?,
                12,
            )
        }
        v => return Err(err(format!("unsupported .npy format version {v}"))),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| err("truncated header".into()))?;
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| err("header is not text".into()))?;
    let descr = dict_value(header, "descr").ok_or_else(|| err("header lacks 'descr'".into()))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| err("header lacks 'fortran_order'".into()))?;
    let shape_text =
        dict_value(header, "shape").ok_or_else(|| err("header lacks 'shape'".into()))?;

    let dtype = parse_descr(descr.trim().trim_matches(|c| c == '\'' || c == '"')).map_err(err)?;
    let shape = parse_shape(shape_text).map_err(err)?;
    let fortran = match fortran.trim() {
        "True" => true,
        "False" => false,
        other => return Err(err(format!("bad fortran_order {other:?}"))),
    };
    if fortran && shape.len() > 1 {
        return Err(err("Fortran-order arrays are not supported".into()));
    }

    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err("shape overflows".into()))?;
    let item = dtype
        .item_size()
        .ok_or_else(|| err("item size overflows".into()))?;
    let need = count
        .checked_mul(item)
        .ok_or_else(|| err("array size overflows".into()))?;
    let body = &bytes[data_start..];
    if body.len() != need {
        return Err(err(format!(
            "expected {need} data bytes for shape {shape:?}, found {}",
            body.len()
        )));
    }

    let data = match dtype {
        Dtype::F32 { big } => NpyData::F32(
            body.chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    if big {
                        f32::from_be_bytes(b)
                    } else {
                        f32::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        Dtype::F64 { big } => NpyData::F64(
            body.chunks_exact(8)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                    if big {
                        f64::from_be_bytes(b)
                    } else {
                        f64::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        Dtype::Utf32 { chars, big } => {
            let mut out = Vec::with_capacity(count);
            if chars == 0 {
                out.resize(count, String::new());
            } else {
                for cell in body.chunks_exact(chars * 4) {
                    let mut s = String::new();
                    for c in cell.chunks_exact(4) {
                        let b = [c[0], c[1], c[2], c[3]];
                        let cp = if big {
                            u32::from_be_bytes(b)
                        } else {
                            u32::from_le_bytes(b)
                        };
                        if cp == 0 {
                            break;
                        }
                        s.push(
                            char::from_u32(cp)
                                .ok_or_else(|| err(format!("invalid code point {cp:#x}")))?,
                        );
                    }
                    out.push(s);
                }
            }
            NpyData::Str(out)
        }
        Dtype::Bytes { len } => {
            let mut out = Vec::with_capacity(count);
            if len == 0 {
                out.resize(count, String::new());
            } else {
                for cell in body.chunks_exact(len) {
                    let end = cell.iter().position(|&b| b == 0).unwrap_or(cell.len());
                    out.push(String::from_utf8_lossy(&cell[..end]).into_owned());
                }
            }
            NpyData::Str(out)
        }
    };
    Ok(NpyArray { shape, data })
}

/// Reads every `.npy` member of an `.npz` archive, keyed by name without the `.npy` suffix.
///
/// `only`, when given, restricts reading to those names (others are not decompressed).
pub fn read_npz(path: &Path, only: Option<&[&str]>) -> Result<BTreeMap<String, NpyArray>> {
    let file = std::fs::File::open(path).map_err(|cause| LangError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|cause| LangError::Zip {
            path: path.to_path_buf(),
            cause,
        })?;
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|cause| LangError::Zip {
            path: path.to_path_buf(),
            cause,
        })?;
        let full = entry.name().to_string();
        let Some(key) = full.strip_suffix(".npy") else {
            continue;
        };
        if only.is_some_and(|names| !names.contains(&key)) {
            continue;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 28));
        entry
            .read_to_end(&mut bytes)
            .map_err(|cause| LangError::Io {
                path: path.to_path_buf(),
                cause,
            })?;
        let array = parse_npy(&format!("{}:{full}", path.display()), &bytes)?;
        out.insert(key.to_string(), array);
    }
    Ok(out)
}

/// Finds the raw text of `key`'s value in a Python dict literal such as NumPy's header.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|q| header.find(q.as_str()).map(|i| i + q.len()))?;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    // The value ends at the first comma or brace outside parentheses and quotes.
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',' | '}') if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_descr(descr: &str) -> std::result::Result<Dtype, String> {
    let (order, rest) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '=' | '|')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let big = order == '>';
    let (kind, size) = rest.split_at(rest.chars().next().map_or(0, char::len_utf8));
    let size: Option<usize> = size.parse().ok();
    match (kind, size) {
        ("f", Some(4)) => Ok(Dtype::F32 { big }),
        ("f", Some(8)) => Ok(Dtype::F64 { big }),
        ("U", Some(chars)) => Ok(Dtype::Utf32 { chars, big }),
        ("S", Some(len)) => Ok(Dtype::Bytes { len }),
        ("O", _) => Err("pickled object arrays are not supported".into()),
        _ => Err(format!("unsupported dtype {descr:?}")),
    }
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {text:?}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad shape {text:?}"))
        })
        .collect()
}

/// Encodes an array as `.npy` (format 1.0) bytes. Used for fixtures and tests.
pub fn write_npy(array: &NpyArray) -> Vec<u8> {
    let (descr, body): (String, Vec<u8>) = match &array.data {
        NpyData::F32(v) => (
            "<f4".into(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        NpyData::F64(v) => (
            "<f8".into(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        NpyData::Str(v) => {
            let width = v
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut body = Vec::with_capacity(v.len() * width * 4);
            for s in v {
                let mut n = 0;
                for c in s.chars() {
                    body.extend_from_slice(&u32::from(c).to_le_bytes());
                    n += 1;
                }
                body.resize(body.len() + (width - n) * 4, 0);
            }
            (format!("<U{width}"), body)
        }
    };
    let shape = match array.shape.as_slice() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic + version + length + header + newline is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    // The header is far below u16::MAX for any shape we write.
    out.extend_from_slice(
        &u16::try_from(header.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_numbers_and_strings() {
        let a = NpyArray {
            shape: vec![2, 3, 1],
            data: NpyData::F32(vec![0.0, 1.0, -1.0, 0.5, 0.25, 1.0]),
        };
        assert_eq!(parse_npy("a", &write_npy(&a)).unwrap(), a);
        let s = NpyArray {
            shape: vec![3],
            data: NpyData::Str(vec!["eng".into(), "yo".into(), "ñ".into()]),
        };
        assert_eq!(parse_npy("s", &write_npy(&s)).unwrap(), s);
    }

    #[test]
    fn header_alignment_is_64() {
        let a = NpyArray {
            shape: vec![1],
            data: NpyData::F64(vec![2.5]),
        };
        let bytes = write_npy(&a);
        assert_eq!((bytes.len() - 8) % 64, 0);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert!(parse_npy("x", b"").is_err());
        assert!(parse_npy("x", b"\x93NUMPY\x01\x00\xff\xff{").is_err());
        let mut ok = write_npy(&NpyArray {
            shape: vec![2],
            data: NpyData::F32(vec![1.0, 2.0]),
        });
        ok.pop();
        let e = parse_npy("x", &ok).unwrap_err().to_string();
        assert!(e.contains("expected 8 data bytes"), "{e}");
        let header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }\n";
        let mut pickled = b"\x93NUMPY\x01\x00".to_vec();
        pickled.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        pickled.extend_from_slice(header.as_bytes());
        pickled.extend_from_slice(&[0x80, 0x02]);
        let e = parse_npy("p", &pickled).unwrap_err().to_string();
        assert!(e.contains("pickled"), "{e}");
    }

    #[test]
    fn parses_big_endian_and_scalar_shape() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '>f8', 'fortran_order': False, 'shape': (), }\n";
        bytes.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f64.to_be_bytes());
        let a = parse_npy("b", &bytes).unwrap();
        assert_eq!(a.shape, Vec::<usize>::new());
        assert_eq!(a.data, NpyData::F64(vec![1.5]));
    }
}
