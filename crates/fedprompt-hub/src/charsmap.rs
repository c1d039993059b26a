//! Compiles a per-codepoint normalisation map into sentencepiece's `precompiled_charsmap`.
//!
//! Format: a u32 (little endian) trie size in bytes, then a darts-clone double-array trie whose
//! keys are the UTF-8 source strings and whose values are byte offsets into the blob that
//! follows, a sequence of NUL-terminated normalised strings.

use std::collections::BTreeMap;

use crate::error::{HubError, Result};

/// Builds a precompiled charsmap from `(source, replacement)` pairs. An empty replacement
/// deletes the source. Sources must be non-empty, unique and free of NUL.
pub fn build_precompiled_charsmap<S: AsRef<str>, T: AsRef<str>>(map: &[(S, T)]) -> Result<Vec<u8>> {
    let mut blob: Vec<u8> = Vec::new();
    let mut offsets: BTreeMap<&str, u32> = BTreeMap::new();
    let mut keys: BTreeMap<&[u8], u32> = BTreeMap::new();
    for (src, dst) in map {
        let (src, dst) = (src.as_ref(), dst.as_ref());
        if src.is_empty() || src.contains('\0') || dst.contains('\0') {
            return Err(HubError::Tokenizer(format!(
                "charsmap entry {src:?} -> {dst:?}: keys must be non-empty and no string may contain NUL"
            )));
        }
        let off = match offsets.get(dst) {
            Some(&o) => o,
            None => {
                let o = u32::try_from(blob.len())
                    .ok()
                    .filter(|&o| o < (1 << 31))
                    .ok_or_else(|| HubError::Tokenizer("charsmap blob too large".into()))?;
                blob.extend_from_slice(dst.as_bytes());
                blob.push(0);
                offsets.insert(dst, o);
                o
            }
        };
        if keys.insert(src.as_bytes(), off).is_some() {
            return Err(HubError::Tokenizer(format!(
                "charsmap key {src:?} appears twice"
            )));
        }
    }
    let keyset: Vec<(&[u8], u32)> = keys.into_iter().collect();
    let trie = yada::builder::DoubleArrayBuilder::build(&keyset)
        .ok_or_else(|| HubError::Tokenizer("building the double-array trie failed".into()))?;
    let size =
        u32::try_from(trie.len()).map_err(|_| HubError::Tokenizer("trie too large".into()))?;
    let mut out = Vec::with_capacity(4 + trie.len() + blob.len());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&trie);
    out.extend_from_slice(&blob);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::normalizers::Precompiled;
    use tokenizers::{NormalizedString, Normalizer};

    #[test]
    fn tokenizers_precompiled_reads_our_charsmap() {
        let map = [
            ("Ａ", "A"),
            ("\t", " "),
            ("\u{200b}", ""),
            ("ﬁ", "fi"),
            ("①", "1"),
        ];
        let bytes = build_precompiled_charsmap(&map).unwrap();
        let pc = Precompiled::from(&bytes).unwrap();
        for (s, d) in map {
            assert_eq!(pc.transform(s), Some(d), "{s:?}");
        }
        assert_eq!(pc.transform("b"), None);
        let mut n = NormalizedString::from("xＡ\tﬁ\u{200b}①y");
        pc.normalize(&mut n).unwrap();
        assert_eq!(n.get(), "xA fi1y");
    }

    #[test]
    fn duplicate_and_empty_keys_are_rejected() {
        assert!(build_precompiled_charsmap(&[("a", "b"), ("a", "c")]).is_err());
        assert!(build_precompiled_charsmap(&[("", "b")]).is_err());
    }
}
