//! Update codecs and Gaussian differential privacy.

use fedprompt_fl::codec::Codec;
use fedprompt_fl::dp::{add_gaussian_noise, clip_to_norm, GaussianDp};
use fedprompt_fl::DpFedAvg;
use fedprompt_fl::{round_rng, ClientUpdate, FlError, Params, Phase, RoundPolicy, Strategy};

fn params(n: usize) -> Params {
    let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let b: Vec<f32> = (0..7).map(|i| i as f32 - 3.0).collect();
    Params::new()
        .with("prompt", vec![1, n], a)
        .unwrap()
        .with("head", vec![7], b)
        .unwrap()
}

/// Bytes after the safetensors header.
fn payload_len(bytes: &[u8]) -> usize {
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes.len() - 8 - header
}

#[test]
fn f32_codec_is_lossless() {
    let p = params(100);
    let bytes = Codec::F32.encode(&p).unwrap();
    assert_eq!(payload_len(&bytes), p.byte_size());
    assert_eq!(Codec::F32.decode(&bytes, &p.layout()).unwrap(), p);
}

#[test]
fn f16_error_bound_and_size() {
    let p = params(1000);
    let bytes = Codec::F16.encode(&p).unwrap();
    let q = Codec::F16.decode(&bytes, &p.layout()).unwrap();
    for ((_, a), (_, b)) in p.iter().zip(q.iter()) {
        for (x, y) in a.data().iter().zip(b.data()) {
            // Round-to-nearest in f16: relative error ≤ 2^-11 for normal values, 2^-25 absolute near 0.
            assert!(
                (x - y).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25),
                "{x} vs {y}"
            );
        }
    }
    assert_eq!(payload_len(&bytes), p.num_elements() * 2);
    let huge = Params::new().with("w", vec![1], vec![1e6]).unwrap();
    assert!(matches!(Codec::F16.encode(&huge), Err(FlError::Codec(_))));
}

#[test]
fn int8_error_is_at_most_half_a_step() {
    let p = params(1000);
    let bytes = Codec::Int8.encode(&p).unwrap();
    let q = Codec::Int8.decode(&bytes, &p.layout()).unwrap();
    for ((_, a), (_, b)) in p.iter().zip(q.iter()) {
        let max = a.data().iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = max / 127.0;
        for (x, y) in a.data().iter().zip(b.data()) {
            // Half a step plus f32 rounding of x / scale and q · scale (see codec_props.rs).
            assert!(
                (x - y).abs() <= scale * 0.5 + 2.0 * max * f32::EPSILON,
                "{x} vs {y} (scale {scale})"
            );
        }
        // The largest magnitude is exact up to float rounding.
        let imax = a
            .data()
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .unwrap()
            .0;
        assert!((a.data()[imax] - b.data()[imax]).abs() <= 1e-6 * a.data()[imax].abs());
    }
    // One byte per value plus one f32 scale per tensor.
    assert_eq!(payload_len(&bytes), p.num_elements() + 4 * p.len());
    // All-zero tensors round-trip.
    let z = params(10).zeros_like();
    assert_eq!(
        Codec::Int8
            .decode(&Codec::Int8.encode(&z).unwrap(), &z.layout())
            .unwrap(),
        z
    );
}

#[test]
fn topk_keeps_largest_values_exactly() {
    let p = Params::new()
        .with(
            "w",
            vec![2, 5],
            vec![0.1, -9.0, 0.2, 3.0, -0.3, 0.0, 5.0, -0.4, 0.05, 1.0],
        )
        .unwrap();
    let c = Codec::TopK { fraction: 0.3 };
    let bytes = c.encode(&p).unwrap();
    let q = c.decode(&bytes, &p.layout()).unwrap();
    assert_eq!(
        q.get("w").unwrap().data(),
        &[0.0, -9.0, 0.0, 3.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(q.get("w").unwrap().shape(), &[2, 5]);
    assert_eq!(Codec::topk_count(0.3, 10), 3);
    assert_eq!(Codec::topk_count(0.01, 10), 1);
    assert_eq!(Codec::topk_count(1.0, 10), 10);
    // Size: k·(4+4) bytes of payload plus the header.
    let big = params(10_000);
    let c = Codec::TopK { fraction: 0.01 };
    let b = c.encode(&big).unwrap();
    // k = ⌈0.01·10000⌉ = 100 and ⌈0.01·7⌉ = 1 (index + value, 8 bytes each).
    assert_eq!(payload_len(&b), (100 + 1) * 8);
    assert!(matches!(
        Codec::TopK { fraction: 0.0 }.encode(&big),
        Err(FlError::Config(_))
    ));
}

#[test]
fn decoding_with_the_wrong_codec_or_layout_fails() {
    let p = params(50);
    let bytes = Codec::Int8.encode(&p).unwrap();
    assert!(matches!(
        Codec::F16.decode(&bytes, &p.layout()),
        Err(FlError::Codec(_))
    ));
    assert!(Codec::Int8
        .decode(&bytes[..bytes.len() - 1], &p.layout())
        .is_err());
    let other = params(51);
    let e = Codec::Int8.decode(&bytes, &other.layout()).unwrap_err();
    assert!(e.to_string().contains("prompt"), "{e}");
    // Plain wire params carry no codec tag.
    assert!(Codec::F32
        .decode(&p.to_safetensors().unwrap(), &p.layout())
        .is_err());
}

#[test]
fn clipping() {
    let mut d = Params::new().with("w", vec![2], vec![3.0, 4.0]).unwrap();
    assert_eq!(clip_to_norm(&mut d, 10.0), 5.0);
    assert_eq!(d.get("w").unwrap().data(), &[3.0, 4.0]);
    assert_eq!(clip_to_norm(&mut d, 1.0), 5.0);
    assert!((d.l2_norm() - 1.0).abs() < 1e-6);
    assert_eq!(d.get("w").unwrap().data(), &[0.6, 0.8]);
}

#[test]
fn noise_has_the_requested_std() {
    let mut p = Params::new()
        .with("w", vec![20_000], vec![0.0; 20_000])
        .unwrap();
    let mut rng = round_rng(3, 1, Phase::Fit);
    add_gaussian_noise(&mut p, 0.5, &mut rng).unwrap();
    let d = p.get("w").unwrap().data();
    let mean = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
    let var = d.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / d.len() as f64;
    assert!(mean.abs() < 0.02, "{mean}");
    assert!((var.sqrt() - 0.5).abs() < 0.02, "{}", var.sqrt());
}

#[test]
fn dp_fedavg_without_noise_averages_clipped_deltas() {
    let g = Params::new().with("w", vec![2], vec![1.0, 1.0]).unwrap();
    let u = [
        // Δ = [3, 4] → clipped to [0.6, 0.8]
        ClientUpdate::new(
            "a",
            Params::new().with("w", vec![2], vec![4.0, 5.0]).unwrap(),
            1,
        ),
        // Δ = [0, 0.5] (inside the ball), weight ignored
        ClientUpdate::new(
            "b",
            Params::new().with("w", vec![2], vec![1.0, 1.5]).unwrap(),
            1000,
        ),
    ];
    let mut s = DpFedAvg::new(
        RoundPolicy::default(),
        GaussianDp {
            clip_norm: 1.0,
            noise_multiplier: 0.0,
        },
    )
    .unwrap();
    let out = s.aggregate_fit(1, &g, &u, &[]).unwrap();
    let w = out.get("w").unwrap().data();
    assert!(
        (w[0] - 1.3).abs() < 1e-6 && (w[1] - 1.65).abs() < 1e-6,
        "{w:?}"
    );
    // With noise: deterministic per seed and round, and different from the noiseless result.
    let mut n1 = DpFedAvg::new(
        RoundPolicy::default(),
        GaussianDp {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
        },
    )
    .unwrap();
    let mut n2 = n1.clone();
    let a = n1.aggregate_fit(1, &g, &u, &[]).unwrap();
    assert_eq!(a, n2.aggregate_fit(1, &g, &u, &[]).unwrap());
    assert_ne!(a, out);
    assert!(GaussianDp {
        clip_norm: -1.0,
        noise_multiplier: 1.0
    }
    .validate()
    .is_err());
    assert!(GaussianDp {
        clip_norm: 1.0,
        noise_multiplier: f64::NAN
    }
    .validate()
    .is_err());
}
