//! Helpers shared by the parity and adapter tests: the fixture folder, reference files and
//! tensor comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use fedprompt_model::Batch;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn labels3() -> Vec<String> {
    vec!["a".into(), "b".into(), "c".into()]
}

pub fn load_refs(name: &str) -> BTreeMap<String, Tensor> {
    let path = fixtures().join("refs").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .expect("reference file")
        .into_iter()
        .collect()
}

pub fn batch_from(refs: &BTreeMap<String, Tensor>) -> Batch {
    let to_u32 = |t: &Tensor| t.to_dtype(DType::U32).unwrap();
    let ids = to_u32(&refs["input_ids"]);
    let lengths = refs["attention_mask"]
        .to_dtype(DType::F32)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as usize)
        .collect();
    Batch {
        input_ids: ids,
        attention_mask: to_u32(&refs["attention_mask"]),
        token_type_ids: refs.get("token_type_ids").map(to_u32),
        lengths,
    }
}

/// `|a|∞`.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `|a − b|∞`.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}
