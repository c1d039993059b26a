//! Property tests of the update codecs: each round-trips within its stated bound on random
//! tensors, and error feedback's accounting is exact.

use fedprompt_fl::codec::{Codec, Compression, ErrorFeedback};
use fedprompt_fl::Params;
use proptest::prelude::*;

/// A parameter set of two tensors (a matrix and a vector) with values in ±`range`.
fn params_strategy(range: f32) -> impl Strategy<Value = Params> {
    (1usize..6, 1usize..20, 0usize..9).prop_flat_map(move |(rows, cols, n)| {
        (
            prop::collection::vec(-range..range, rows * cols),
            prop::collection::vec(-range..range, n),
        )
            .prop_map(move |(m, v)| {
                Params::new()
                    .with("matrix", vec![rows, cols], m)
                    .unwrap()
                    .with("vector", vec![n], v)
                    .unwrap()
            })
    })
}

/// The largest error a symmetric quantiser with `levels` steps each side may make on a block
/// whose largest magnitude is `max`: half a step (`scale / 2`, `scale = max / levels`) plus
/// f32 rounding. Computing `x / scale` rounds by at most `levels · 2⁻²⁴` steps (which can tip a
/// value at a tie to the far neighbour), and the decoder's `q · scale` rounds by at most
/// `max · 2⁻²⁴`: together at most `max · ε` (ε = 2⁻²³) beyond half a step.
fn half_step_bound(block: &[f32], levels: f32) -> f32 {
    let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
    (max / levels) * 0.5 + 2.0 * max * f32::EPSILON + f32::MIN_POSITIVE
}

fn round_trip(codec: Codec, p: &Params) -> Params {
    codec
        .decode(&codec.encode(p).unwrap(), &p.layout())
        .unwrap()
}

proptest! {
    #[test]
    fn f16_relative_error_is_at_most_2_pow_minus_11(p in params_strategy(60_000.0)) {
        let q = round_trip(Codec::F16, &p);
        for ((_, a), (_, b)) in p.iter().zip(q.iter()) {
            for (x, y) in a.data().iter().zip(b.data()) {
                // Normal range: relative 2^-11; subnormal range: absolute 2^-25.
                prop_assert!((x - y).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{} vs {}", x, y);
            }
        }
    }

    #[test]
    fn int8_error_is_at_most_half_a_step_of_the_tensor_scale(p in params_strategy(100.0)) {
        let q = round_trip(Codec::Int8, &p);
        for ((_, a), (_, b)) in p.iter().zip(q.iter()) {
            let bound = half_step_bound(a.data(), 127.0);
            for (x, y) in a.data().iter().zip(b.data()) {
                prop_assert!((x - y).abs() <= bound, "{} vs {}", x, y);
            }
        }
    }

    #[test]
    fn int8_rows_error_is_at_most_half_a_step_of_the_row_scale(p in params_strategy(100.0)) {
        let q = round_trip(Codec::Int8Rows, &p);
        for ((name, a), (_, b)) in p.iter().zip(q.iter()) {
            let row = if a.shape().len() >= 2 { a.shape()[a.shape().len() - 1] } else { a.len().max(1) };
            for (ra, rb) in a.data().chunks(row).zip(b.data().chunks(row)) {
                let bound = half_step_bound(ra, 127.0);
                for (x, y) in ra.iter().zip(rb) {
                    prop_assert!((x - y).abs() <= bound, "{}: {} vs {}", name, x, y);
                }
            }
        }
    }

    #[test]
    fn int4_rows_error_is_at_most_half_a_step_of_the_row_scale(p in params_strategy(100.0)) {
        let codec = Codec::Int4Rows;
        let bytes = codec.encode(&p).unwrap();
        let q = codec.decode(&bytes, &p.layout()).unwrap();
        for ((name, a), (_, b)) in p.iter().zip(q.iter()) {
            let row = if a.shape().len() >= 2 { a.shape()[a.shape().len() - 1] } else { a.len().max(1) };
            for (ra, rb) in a.data().chunks(row).zip(b.data().chunks(row)) {
                let bound = half_step_bound(ra, 7.0);
                for (x, y) in ra.iter().zip(rb) {
                    prop_assert!((x - y).abs() <= bound, "{}: {} vs {}", name, x, y);
                }
            }
        }
        // Half a byte per value (rounded up per tensor) plus one f32 per row: never more
        // than int8-rows' bytes.
        let int8 = Codec::Int8Rows.encode(&p).unwrap();
        prop_assert!(bytes.len() <= int8.len());
    }

    #[test]
    fn topk_sends_exactly_the_largest_values(p in params_strategy(10.0), fraction in 0.01f64..=1.0) {
        let codec = Codec::TopK { fraction };
        let q = round_trip(codec, &p);
        for ((_, a), (_, b)) in p.iter().zip(q.iter()) {
            let k = Codec::topk_count(fraction, a.len());
            let sent: Vec<usize> = (0..a.len()).filter(|&i| b.data()[i] != 0.0).collect();
            let nonzero = a.data().iter().filter(|v| **v != 0.0).count();
            prop_assert_eq!(sent.len(), k.min(nonzero));
            // Sent values are exact; every unsent value is no larger than every sent one.
            let min_sent = sent.iter().map(|&i| a.data()[i].abs()).fold(f32::INFINITY, f32::min);
            for i in 0..a.len() {
                if b.data()[i] != 0.0 {
                    prop_assert_eq!(b.data()[i], a.data()[i]);
                } else {
                    prop_assert!(a.data()[i].abs() <= min_sent);
                }
            }
        }
    }

    #[test]
    fn error_feedback_with_topk_loses_nothing(
        rounds in prop::collection::vec(prop::collection::vec(-512i32..512, 24), 1..6),
        fraction in 0.05f64..0.5,
    ) {
        // Deltas are multiples of 2^-8 below 2 in magnitude: every sum over ≤ 6 rounds is
        // exact in f32, so the identity Σ sent + residual = Σ delta must hold bit for bit.
        let codec = Codec::TopK { fraction };
        let mut ef = ErrorFeedback::new();
        let mut sum_delta = [0f32; 24];
        let mut sum_sent = [0f32; 24];
        for r in &rounds {
            let delta: Vec<f32> = r.iter().map(|&v| v as f32 / 256.0).collect();
            let d = Params::new().with("w", vec![4, 6], delta.clone()).unwrap();
            let enc = ef.encode(&codec, &d).unwrap();
            for (s, v) in sum_delta.iter_mut().zip(&delta) { *s += v; }
            for (s, v) in sum_sent.iter_mut().zip(enc.sent.get("w").unwrap().data()) { *s += v; }
            let res = ef.residual().unwrap().get("w").unwrap().data();
            for i in 0..24 {
                prop_assert_eq!(sum_sent[i] + res[i], sum_delta[i], "index {}", i);
            }
        }
    }
}

#[test]
fn error_feedback_with_int8_keeps_the_quantisation_error() {
    let mut ef = ErrorFeedback::new();
    let d = Params::new()
        .with("w", vec![2, 3], vec![0.3, -0.01, 0.004, 1.0, 0.5, -0.77])
        .unwrap();
    let mut total_sent = [0f64; 6];
    for _ in 0..5 {
        let enc = ef.encode(&Codec::Int8, &d).unwrap();
        for (t, v) in total_sent.iter_mut().zip(enc.sent.get("w").unwrap().data()) {
            *t += f64::from(*v);
        }
    }
    let res = ef.residual().unwrap().get("w").unwrap().data();
    for (i, &x) in d.get("w").unwrap().data().iter().enumerate() {
        // Σ sent + residual = 5·delta up to f32 rounding.
        let err = (total_sent[i] + f64::from(res[i]) - 5.0 * f64::from(x)).abs();
        assert!(err < 1e-6, "index {i}: {err}");
    }
}

#[test]
fn compression_settings_parse_with_their_defaults() {
    let c: Compression = toml::from_str("codec = { type = \"topk\", fraction = 0.1 }").unwrap();
    assert!(c.feedback());
    assert_eq!(c.label(), "topk 10%+ef");
    let c: Compression = toml::from_str("codec = { type = \"int8-rows\" }").unwrap();
    assert!(!c.feedback());
    assert_eq!(c.label(), "int8-rows");
    let c: Compression =
        toml::from_str("codec = { type = \"f16\" }\nerror_feedback = true").unwrap();
    assert_eq!(c.label(), "f16+ef");
    let c: Compression = toml::from_str("codec = { type = \"int4-rows\" }").unwrap();
    assert_eq!(c.label(), "int4-rows");
    let e = toml::from_str::<Compression>("codec = { type = \"int4\" }").unwrap_err();
    assert!(e.to_string().contains("int4"), "{e}");
    let e = toml::from_str::<Compression>("codec = { type = \"f16\" }\nfeedback = 1").unwrap_err();
    assert!(e.to_string().contains("feedback"), "{e}");
}

#[test]
fn int4_rows_packs_two_values_a_byte_and_rejects_a_wrong_layout() {
    // Row 0 has scale 7/7 = 1: its values are integers and come back exactly; row 1 has
    // scale 0.7/7 = 0.1 (odd row length: the nibbles run across rows).
    let p = Params::new()
        .with("w", vec![2, 3], vec![7.0, -3.0, 0.0, 0.7, -0.35, 0.04])
        .unwrap();
    let codec = Codec::Int4Rows;
    let bytes = codec.encode(&p).unwrap();
    let q = codec.decode(&bytes, &p.layout()).unwrap();
    let got = q.get("w").unwrap().data();
    assert_eq!(&got[..3], &[7.0, -3.0, 0.0]);
    // 0.7 → 7 steps; -0.35 → -3.5 steps rounds away from zero to -4; 0.04 → 0.4 → 0.
    let want = [0.7f32, -0.4, 0.0];
    for (g, w) in got[3..].iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
    // A decoder told of another shape refuses instead of reading past the packed bytes.
    let other = Params::new().with("w", vec![2, 5], vec![0.0; 10]).unwrap();
    let e = codec
        .decode(&bytes, &other.layout())
        .unwrap_err()
        .to_string();
    assert!(e.contains("packed byte"), "{e}");
    // And an int8 decoder refuses an int4 encoding by its tag.
    let e = Codec::Int8Rows
        .decode(&bytes, &p.layout())
        .unwrap_err()
        .to_string();
    assert!(e.contains("int4-rows"), "{e}");
}
