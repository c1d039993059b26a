//! Params API and the safetensors wire format.

use std::collections::HashMap;

use fedprompt_fl::{Params, ParamsError, Tensor};
use safetensors::tensor::{Dtype, TensorView};

fn sample() -> Params {
    Params::new()
        .with("prompt", vec![1, 4], vec![0.5, -1.0, 2.25, 3.0])
        .unwrap()
        .with("head.bias", vec![3], vec![0.1, 0.2, -0.3])
        .unwrap()
        .with("scalar", vec![], vec![7.0])
        .unwrap()
}

#[test]
fn basic_api() {
    let p = sample();
    assert_eq!(p.len(), 3);
    assert_eq!(
        p.names().collect::<Vec<_>>(),
        ["head.bias", "prompt", "scalar"]
    );
    assert_eq!(p.num_elements(), 8);
    assert_eq!(p.byte_size(), 32);
    assert_eq!(p.get("prompt").unwrap().shape(), &[1, 4]);
    assert!(p.same_layout(&p.zeros_like()));
    let mut q = p.clone();
    q.insert_vec("prompt", vec![4], vec![0.0; 4]).unwrap();
    assert!(!p.same_layout(&q));
    assert!(
        (sample().l2_norm() - (0.25f64 + 1.0 + 5.0625 + 9.0 + 0.01 + 0.04 + 0.09 + 49.0).sqrt())
            .abs()
            < 1e-6
    );
}

#[test]
fn tensor_length_must_match_shape() {
    let e = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err();
    assert!(matches!(
        e,
        ParamsError::DataLength {
            expected: 6,
            actual: 5,
            ..
        }
    ));
    let e = Params::new()
        .insert_vec("w", vec![2], vec![1.0])
        .unwrap_err();
    assert!(e.to_string().contains("`w`"), "{e}");
    let e = Tensor::new(vec![usize::MAX, 3], vec![]).unwrap_err();
    assert!(matches!(e, ParamsError::ShapeOverflow { .. }));
}

#[test]
fn layout_errors_name_the_tensor() {
    let p = sample();
    let layout = p.layout();
    let mut missing = p.clone();
    missing.remove("prompt");
    assert_eq!(
        missing.check_layout(&layout),
        Err(ParamsError::Missing("prompt".into()))
    );
    let mut extra = p.clone();
    extra.insert_vec("zzz", vec![1], vec![0.0]).unwrap();
    assert_eq!(
        extra.check_layout(&layout),
        Err(ParamsError::Unexpected("zzz".into()))
    );
    let mut reshaped = p.clone();
    reshaped
        .insert_vec("prompt", vec![4, 1], vec![0.0; 4])
        .unwrap();
    let e = reshaped.check_layout(&layout).unwrap_err();
    assert_eq!(
        e,
        ParamsError::Shape {
            name: "prompt".into(),
            expected: vec![1, 4],
            actual: vec![4, 1]
        }
    );
    let mut nan = p.clone();
    nan.get_mut("head.bias").unwrap().data_mut()[2] = f32::NAN;
    let e = nan.check_finite().unwrap_err();
    assert!(matches!(e, ParamsError::NonFinite { ref name, index: 2, .. } if name == "head.bias"));
    let mut inf = p;
    inf.get_mut("scalar").unwrap().data_mut()[0] = f32::NEG_INFINITY;
    assert!(inf.check_finite().is_err());
}

#[test]
fn safetensors_round_trip_and_exact_length() {
    let p = sample();
    let bytes = p.to_safetensors().unwrap();
    assert_eq!(p.wire_len().unwrap(), bytes.len());
    let back = Params::from_safetensors(&bytes).unwrap();
    assert_eq!(back, p);
    let checked = Params::from_safetensors_checked(&bytes, &p.layout()).unwrap();
    assert_eq!(checked, p);
    // Deterministic encoding.
    assert_eq!(bytes, p.clone().to_safetensors().unwrap());
    // Empty set round-trips too.
    let empty = Params::new();
    let b = empty.to_safetensors().unwrap();
    assert_eq!(empty.wire_len().unwrap(), b.len());
    assert!(Params::from_safetensors(&b).unwrap().is_empty());
}

#[test]
fn wire_len_matches_for_large_and_odd_shapes() {
    let mut p = Params::new();
    for (i, shape) in [vec![0], vec![3, 0, 2], vec![1, 768], vec![17, 3, 5]]
        .into_iter()
        .enumerate()
    {
        let n: usize = shape.iter().product();
        p.insert_vec(
            format!("t{i}/name.with.dots"),
            shape,
            (0..n).map(|x| x as f32).collect(),
        )
        .unwrap();
    }
    assert_eq!(p.wire_len().unwrap(), p.to_safetensors().unwrap().len());
}

#[test]
fn corrupt_bytes_are_errors() {
    let bytes = sample().to_safetensors().unwrap();
    // Truncated anywhere: header length, header, data.
    for cut in [0, 4, 8, 20, bytes.len() - 1] {
        let e = Params::from_safetensors(&bytes[..cut]).unwrap_err();
        assert!(matches!(e, ParamsError::Safetensors(_)), "cut {cut}: {e:?}");
    }
    // Trailing garbage: the data no longer matches the offsets.
    let mut longer = bytes.clone();
    longer.extend([0u8; 4]);
    assert!(Params::from_safetensors(&longer).is_err());
    // Header length pointing past the end.
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(Params::from_safetensors(&bad).is_err());
    // Not JSON.
    let mut garbage = 8u64.to_le_bytes().to_vec();
    garbage.extend(b"notjson!");
    assert!(Params::from_safetensors(&garbage).is_err());
}

#[test]
fn wrong_dtype_nan_and_layout_on_the_wire() {
    let data = [0u8; 16];
    let v = TensorView::new(Dtype::F64, vec![2], &data).unwrap();
    let bytes = safetensors::serialize([("w", v)], None::<HashMap<String, String>>).unwrap();
    let e = Params::from_safetensors(&bytes).unwrap_err();
    assert_eq!(
        e,
        ParamsError::Dtype {
            name: "w".into(),
            expected: "F32".into(),
            actual: "F64".into()
        }
    );

    let p = sample();
    let mut nan = p.clone();
    nan.get_mut("prompt").unwrap().data_mut()[1] = f32::NAN;
    let e =
        Params::from_safetensors_checked(&nan.to_safetensors().unwrap(), &p.layout()).unwrap_err();
    assert!(
        e.to_string().contains("prompt") && e.to_string().contains("index 1"),
        "{e}"
    );

    let mut wrong = p.clone();
    wrong
        .insert_vec("head.bias", vec![4], vec![0.0; 4])
        .unwrap();
    let e = Params::from_safetensors_checked(&wrong.to_safetensors().unwrap(), &p.layout())
        .unwrap_err();
    assert!(matches!(e, ParamsError::Shape { ref name, .. } if name == "head.bias"));
}

#[test]
fn arithmetic_helpers() {
    let a = sample();
    let mut b = a.clone();
    b.scale(2.0);
    let d = b.sub(&a).unwrap();
    assert_eq!(d, a);
    let mut c = a.zeros_like();
    c.add_scaled(&a, 3.0).unwrap();
    assert_eq!(c.get("prompt").unwrap().data(), &[1.5, -3.0, 6.75, 9.0]);
    let other = Params::new().with("x", vec![1], vec![1.0]).unwrap();
    assert!(a.sub(&other).is_err());
}
