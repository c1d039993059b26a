//! The `.npy` format in which Flower's arrays travel (`Array.stype == "numpy.ndarray"`).
//!
//! Hand-written because the bytes must be exactly those of `np.save(allow_pickle=False)`
//! (objects are content-addressed, and a test compares with numpy's own output byte for
//! byte), and only a handful of plain numeric dtypes are needed; no crate promises either.

/// Magic prefix of every `.npy` file.
const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy's header alignment (`ARRAY_ALIGN`).
const ALIGN: usize = 64;
/// numpy's spare room for growing the first axis in place (`GROWTH_AXIS_MAX_DIGITS`).
const GROWTH_DIGITS: usize = 21;

/// A decoded `.npy` file: dtype descriptor, shape and the raw element bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Npy {
    /// numpy's dtype descriptor, e.g. `<f4`.
    pub descr: String,
    /// The shape (C order).
    pub shape: Vec<usize>,
    /// Element bytes, `numel × itemsize` of them.
    pub data: Vec<u8>,
}

fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes a float32 array as `np.save` does (format 1.0, little-endian `<f4`).
pub fn encode_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
        shape_repr(shape)
    );
    if let Some(first) = shape.first() {
        header.push_str(&" ".repeat(GROWTH_DIGITS.saturating_sub(first.to_string().len())));
    }
    let hlen = header.len() + 1;
    let pad = ALIGN - ((MAGIC.len() + 2 + 2 + hlen) % ALIGN);
    let total = hlen + pad;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + total + values.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(total as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Item size of a supported dtype descriptor (`<f4`, `>f8`, `<i8`, `|u1`, ...).
fn itemsize(descr: &str) -> Option<usize> {
    let (order, kind) = descr.split_at(1.min(descr.len()));
    if !matches!(order, "<" | ">" | "|" | "=") {
        return None;
    }
    match kind {
        "f2" | "i2" | "u2" => Some(2),
        "f4" | "i4" | "u4" => Some(4),
        "f8" | "i8" | "u8" => Some(8),
        "i1" | "u1" | "b1" => Some(1),
        _ => None,
    }
}

/// Reads a `.npy` file (format 1.0, 2.0 or 3.0; C order; plain numeric dtypes).
pub fn decode(bytes: &[u8]) -> Result<Npy, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not an .npy file (no \\x93NUMPY magic)".into());
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let fortran =
        dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    if fortran != "False" {
        return Err("Fortran-order arrays are not supported (save with C order)".into());
    }
    let shape_s = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let inner = shape_s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad .npy shape `{shape_s}`"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad .npy shape `{shape_s}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let size = itemsize(&descr).ok_or_else(|| {
        format!("dtype `{descr}` is not supported (plain integer and float dtypes only)")
    })?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the .npy shape overflows")?;
    let data = &bytes[end..];
    if Some(data.len()) != numel.checked_mul(size) {
        return Err(format!(
            "shape {shape:?} of `{descr}` needs {} data bytes but {} follow the header (truncated chunk?)",
            numel.saturating_mul(size),
            data.len()
        ));
    }
    Ok(Npy {
        descr,
        shape,
        data: data.to_vec(),
    })
}

/// The text after `'key':` up to the next top-level comma of a Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let at = header.find(&pat)? + pat.len();
    let rest = header[at..].trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

impl Npy {
    /// The elements as f32 (float16/32/64 and integer dtypes are converted; integers and
    /// float64 values must fit f32's range).
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        let big = self.descr.starts_with('>');
        let kind = &self.descr[1..];
        let size = itemsize(&self.descr).ok_or_else(|| format!("dtype `{}`", self.descr))?;
        let mut out = Vec::with_capacity(self.data.len() / size);
        for c in self.data.chunks_exact(size) {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            if big {
                b[..size].reverse();
            }
            let v = match kind {
                "f4" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                "f8" => f64::from_le_bytes(b) as f32,
                "f2" => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
                "i1" => b[0] as i8 as f32,
                "u1" | "b1" => b[0] as f32,
                "i2" => i16::from_le_bytes([b[0], b[1]]) as f32,
                "u2" => u16::from_le_bytes([b[0], b[1]]) as f32,
                "i4" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
                "u4" => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
                "i8" => i64::from_le_bytes(b) as f32,
                "u8" => u64::from_le_bytes(b) as f32,
                _ => return Err(format!("dtype `{}` is not supported", self.descr)),
            };
            out.push(v);
        }
        Ok(out)
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m × 2^-24.
            let v = m as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_numpy() {
        // Bytes of np.save(np.zeros((2, 3), np.float32)), header part, from numpy 2.4.
        let b = encode_f32(&[2, 3], &[0.0; 6]);
        assert_eq!(b.len(), 152);
        assert_eq!(&b[..10], b"\x93NUMPY\x01\x00v\x00");
        assert!(
            b[10..128].starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")
        );
        assert_eq!(b[127], b'\n');
        assert_eq!(encode_f32(&[5], &[0.0; 5]).len(), 148);
        assert_eq!(encode_f32(&[], &[1.5]).len(), 132);
    }

    #[test]
    fn roundtrip() {
        let v = [1.0f32, -2.5, 3.25, 0.0, 7.0, 8.5];
        let n = decode(&encode_f32(&[3, 2], &v)).unwrap();
        assert_eq!(n.descr, "<f4");
        assert_eq!(n.shape, vec![3, 2]);
        assert_eq!(n.to_f32().unwrap(), v);
    }

    #[test]
    fn rejects_bad_input() {
        let ok = encode_f32(&[2, 2], &[1.0; 4]);
        assert!(decode(&ok[..ok.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        assert!(decode(b"garbage bytes here").is_err());
        let swap = |from: &str, to: &str| {
            let mut b = ok.clone();
            let at = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[at..at + to.len()].copy_from_slice(to.as_bytes());
            b
        };
        assert!(decode(&swap("<f4", "|O8"))
            .unwrap_err()
            .contains("not supported"));
        assert!(decode(&swap("False", "True "))
            .unwrap_err()
            .contains("Fortran"));
    }

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), f32::powi(2.0, -24));
    }
}
