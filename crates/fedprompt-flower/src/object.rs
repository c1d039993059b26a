//! Content-addressed objects, as Flower stores and ships them.
//!
//! An object's bytes are `"<Class> <child ids, comma-separated> <body length>" + b"\0" + body`,
//! and its id is the lowercase hex SHA-256 of those bytes. The SuperLink re-hashes what it
//! receives; this node re-hashes what it pulls.

use sha2::{Digest, Sha256};

use crate::error::{FlowerError, Result};

/// Flower's largest array chunk (`FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`, 5 MiB).
pub const MAX_CHUNK_BYTES: usize = 5_242_880;

/// The id of an object: lowercase hex SHA-256 of its bytes.
pub fn object_id(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Whether `id` looks like an object id (64 hex digits).
pub fn is_object_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Builds an object's bytes from its class, its children's ids and its body.
pub fn encode(class: &str, children: &[String], body: &[u8]) -> Vec<u8> {
    let head = format!("{class} {} {}", children.join(","), body.len());
    let mut out = Vec::with_capacity(head.len() + 1 + body.len());
    out.extend_from_slice(head.as_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// An object's parts, borrowed from its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectView<'a> {
    /// Class name (`Message`, `RecordDict`, `ArrayRecord`, `Array`, `ArrayChunk`, ...).
    pub class: &'a str,
    /// Child ids, in the order of the head.
    pub children: Vec<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// Splits an object's bytes, checking that its id is the hash of its bytes, that the head is
/// well formed and that the body has the length the head announces.
pub fn parse<'a>(id: &str, content: &'a [u8]) -> Result<ObjectView<'a>> {
    let actual = object_id(content);
    if actual != id {
        return Err(FlowerError::object(
            id,
            format!("its bytes hash to {actual}: the object was corrupted or substituted"),
        ));
    }
    let nul = content
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| FlowerError::object(id, "no head/body divider"))?;
    let head = std::str::from_utf8(&content[..nul])
        .map_err(|_| FlowerError::object(id, "the head is not UTF-8"))?;
    let body = &content[nul + 1..];
    let mut parts = head.split(' ');
    let (Some(class), Some(children), Some(len), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(FlowerError::object(
            id,
            format!("head `{head}` is not `<class> <children> <length>`"),
        ));
    };
    let len: usize = len
        .parse()
        .map_err(|_| FlowerError::object(id, format!("body length `{len}` is not a number")))?;
    if len != body.len() {
        return Err(FlowerError::object(
            id,
            format!(
                "the head announces a {len}-byte body but {} bytes follow (truncated?)",
                body.len()
            ),
        ));
    }
    let children: Vec<&str> = if children.is_empty() {
        Vec::new()
    } else {
        children.split(',').collect()
    };
    if let Some(bad) = children.iter().find(|c| !is_object_id(c)) {
        return Err(FlowerError::object(
            id,
            format!("child id `{bad}` is not a SHA-256 hex digest"),
        ));
    }
    Ok(ObjectView {
        class,
        children,
        body,
    })
}

/// `ids` without repeats, first occurrences kept in order (Flower's children are a dict).
pub fn unique(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_checks() {
        let child = object_id(b"x");
        let bytes = encode("ArrayRecord", std::slice::from_ref(&child), b"{}");
        let id = object_id(&bytes);
        let v = parse(&id, &bytes).unwrap();
        assert_eq!(v.class, "ArrayRecord");
        assert_eq!(v.children, vec![child.as_str()]);
        assert_eq!(v.body, b"{}");
        // Wrong id, truncated body, bad head.
        assert!(parse(&object_id(b"other"), &bytes).is_err());
        let cut = &bytes[..bytes.len() - 1];
        let e = parse(&object_id(cut), cut).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let bad = b"Array 3\0abc".to_vec();
        assert!(parse(&object_id(&bad), &bad).is_err());
    }

    #[test]
    fn empty_children_head() {
        let bytes = encode("ArrayChunk", &[], b"abc");
        assert_eq!(&bytes[..], b"ArrayChunk  3\0abc");
        assert!(parse(&object_id(&bytes), &bytes)
            .unwrap()
            .children
            .is_empty());
    }
}
