//! Size of a safetensors file without materialising its data.

use std::borrow::Cow;

use anyhow::Result;
use safetensors::{Dtype, View};

struct ShapeOnly {
    shape: Vec<usize>,
}

impl View for ShapeOnly {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // Only the header is written; the data length is added separately.
        Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Exact byte size of an f32 safetensors file (no metadata, as `TrainableSet::save` writes)
/// holding tensors with these names and shapes.
pub fn safetensors_size(entries: &[(String, Vec<usize>)]) -> Result<u64> {
    let data: u64 = entries
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64 * 4)
        .sum();
    // `serialize` reserves (but never touches) room for the data and writes only the header
    // here, since `data()` is empty.
    let views = entries
        .iter()
        .map(|(n, s)| (n.clone(), ShapeOnly { shape: s.clone() }));
    let header = safetensors::tensor::serialize(views, None)?;
    Ok(header.len() as u64 + data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_real_file() {
        let a: Vec<u8> = (0..6 * 4).map(|i| i as u8).collect();
        let b: Vec<u8> = vec![0; 3 * 4];
        let real = safetensors::tensor::serialize(
            [
                (
                    "b.weight".to_string(),
                    safetensors::tensor::TensorView::new(Dtype::F32, vec![3], &b).unwrap(),
                ),
                (
                    "a.weight".to_string(),
                    safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        let n = safetensors_size(&[
            ("a.weight".into(), vec![2, 3]),
            ("b.weight".into(), vec![3]),
        ])
        .unwrap();
        assert_eq!(n, real.len() as u64);
    }
}
