//! Chunked transfers, both directions: the sender splits a byte string into
//! an inline first piece (in the header message) and chunks; the receiver
//! reassembles them against the declared length and SHA-256.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Why a chunked transfer could not be reassembled (lengths in bytes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransferError {
    /// The declared length is above what the receiver accepts.
    #[error("{declared} bytes exceed the limit of {max} bytes")]
    Oversized { declared: u64, max: u64 },
    /// More bytes arrived than were declared.
    #[error("more bytes than the declared {declared}")]
    Overlong { declared: u64 },
    /// The transfer ended before the declared length.
    #[error("ended after {received} of {declared} bytes")]
    Truncated { received: u64, declared: u64 },
    /// The bytes do not have the declared SHA-256.
    #[error("the SHA-256 differs from the declared one")]
    Checksum,
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(bytes))
}

/// The pieces of `bytes` for the wire: the first goes inline in the header
/// (always present, empty for empty bytes), the others are chunks; none is
/// longer than `max_chunk`.
pub(crate) fn split(bytes: &Bytes, max_chunk: usize) -> impl Iterator<Item = Bytes> + '_ {
    let max_chunk = max_chunk.max(1);
    let first = bytes.len().min(max_chunk);
    std::iter::once(bytes.slice(..first)).chain(
        (first..bytes.len())
            .step_by(max_chunk)
            .map(move |at| bytes.slice(at..(at + max_chunk).min(bytes.len()))),
    )
}

/// A transfer being reassembled from its header's inline bytes and chunks.
#[derive(Debug)]
pub(crate) struct Reassembly {
    buf: BytesMut,
    declared: usize,
    sha256: Option<Bytes>,
}

impl Reassembly {
    /// Expects `declared_len` bytes with SHA-256 `sha256` (`None`: not
    /// checked); refuses a declared length above `max_len`.
    pub(crate) fn new(
        declared_len: u64,
        sha256: Option<Bytes>,
        max_len: u64,
    ) -> Result<Self, TransferError> {
        if declared_len > max_len {
            return Err(TransferError::Oversized {
                declared: declared_len,
                max: max_len,
            });
        }
        let declared = declared_len as usize;
        Ok(Self {
            buf: BytesMut::with_capacity(declared),
            declared,
            sha256,
        })
    }

    /// Appends the next piece; refuses one that goes past the declared length.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), TransferError> {
        if self.buf.len() + chunk.len() > self.declared {
            return Err(TransferError::Overlong {
                declared: self.declared as u64,
            });
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Whether the declared length has arrived.
    pub(crate) fn is_complete(&self) -> bool {
        self.buf.len() == self.declared
    }

    /// The error for a transfer that ends now, before it is complete.
    pub(crate) fn truncated(&self) -> TransferError {
        TransferError::Truncated {
            received: self.buf.len() as u64,
            declared: self.declared as u64,
        }
    }

    /// The bytes, once all arrived and the checksum holds.
    pub(crate) fn finish(self) -> Result<Bytes, TransferError> {
        if !self.is_complete() {
            return Err(self.truncated());
        }
        let bytes = self.buf.freeze();
        if self.sha256.is_some_and(|want| sha256(&bytes) != want) {
            return Err(TransferError::Checksum);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransferError::*;

    /// Reassembles `pieces` declared as `len` bytes with `sha`, at most 10 bytes.
    fn get(len: u64, sha: Option<Bytes>, pieces: &[&[u8]]) -> Result<Bytes, TransferError> {
        let mut r = Reassembly::new(len, sha, 10)?;
        pieces.iter().try_for_each(|p| r.push(p))?;
        r.finish()
    }

    #[test]
    fn split_pieces_reassemble() {
        for (n, max) in [(0usize, 4usize), (3, 4), (4, 4), (9, 4), (10, 3), (5, 0)] {
            let b = Bytes::from((0..n as u8).collect::<Vec<_>>());
            let pieces: Vec<Bytes> = split(&b, max).collect();
            assert_eq!(pieces.len(), n.div_ceil(max.max(1)).max(1), "{n} {max}");
            assert!(pieces.iter().all(|p| p.len() <= max.max(1)), "{n} {max}");
            let refs: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
            assert_eq!(get(n as u64, Some(sha256(&b)), &refs), Ok(b));
        }
    }

    #[test]
    fn bad_transfers_have_distinct_errors() {
        let b: &[u8] = b"0123456789";
        let sha = Some(sha256(b));
        let oversized = Oversized {
            declared: 11,
            max: 10,
        };
        assert_eq!(get(11, sha.clone(), &[b]), Err(oversized));
        assert_eq!(
            get(10, sha.clone(), &[&b[..6], &b[..6]]),
            Err(Overlong { declared: 10 })
        );
        let truncated = Truncated {
            received: 6,
            declared: 10,
        };
        assert_eq!(get(10, sha.clone(), &[&b[..6]]), Err(truncated));
        assert_eq!(
            get(10, Some(Bytes::from_static(&[0; 32])), &[b]),
            Err(Checksum)
        );
        // An empty declared checksum is a mismatch; none at all is not checked.
        assert_eq!(get(10, Some(Bytes::new()), &[b]), Err(Checksum));
        assert_eq!(get(10, None, &[b]), Ok(Bytes::from_static(b)));
    }
}
