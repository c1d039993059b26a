//! The one-op frozen layer (`ops::layer`) against the layer composed of separate ops: values
//! and input gradients, in eval and in training (the same dropout masks from the same seeds),
//! with a padded key, in f32 and with bf16 weights; and the bf16 product against f32.

use candle_core::{DType, Device, Tensor, Var};
use fedprompt_model::{Backbone, ForwardCtx, WeightDtype};

mod common;

use common::{fixtures, max_abs};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `|a − b|∞ ≤ tol · max(1, |b|∞)`.
fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let d = max_abs(&(a - b).unwrap());
    let scale = max_abs(b).max(1.0);
    assert!(d <= tol * scale, "{what}: differ by {d} (scale {scale})");
}

fn check(family: &str, dtype: WeightDtype, train: bool) {
    let backbone = Backbone::load_with(&fixtures().join(format!("tiny-{family}")), dtype).unwrap();
    let h = backbone.config().hidden_size;
    let (b, l) = (3, 7);
    // The last two keys of sequence 1 are padding.
    let mut mask = vec![0f32; b * l];
    mask[l + l - 2..2 * l].fill(-1e9);
    let mask = Tensor::from_vec(mask, (b, 1, 1, l), &Device::Cpu).unwrap();
    let x = Var::from_tensor(&randn(&[b, l, h], 7)).unwrap();
    let r = randn(&[b, l, h], 8);
    for (i, layer) in backbone.encoder().layers().iter().enumerate() {
        let ctx = || {
            if train {
                ForwardCtx::train(42)
            } else {
                ForwardCtx::eval_with_grad()
            }
        };
        let run = |fused: bool| {
            let c = ctx();
            let y = if fused {
                layer.forward(x.as_tensor(), &mask, &c).unwrap()
            } else {
                layer.forward_composed(x.as_tensor(), &mask, &c).unwrap()
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(x.as_tensor()).expect("gradient").clone();
            // The next seed tells whether both drew the same number of seeds.
            (y.detach(), g, c.next_seed())
        };
        let (y1, g1, s1) = run(true);
        let (y2, g2, s2) = run(false);
        let what = format!("{family} layer {i} {dtype} train {train}");
        assert_close(&y1, &y2, 1e-5, &format!("{what}: value"));
        assert_close(&g1, &g2, 1e-5, &format!("{what}: input gradient"));
        assert_eq!(s1, s2, "{what}: seeds drawn");
    }
}

#[test]
fn fused_layer_matches_composed_f32() {
    for family in ["xlmr", "bert"] {
        check(family, WeightDtype::F32, false);
        check(family, WeightDtype::F32, true);
    }
}

#[test]
fn fused_layer_matches_composed_bf16() {
    check("xlmr", WeightDtype::Bf16, false);
    check("xlmr", WeightDtype::Bf16, true);
}

/// The last layer computed for the first position only (`forward_first`) against the full
/// layer cut to that position: values, input gradients (through keys and values of every
/// position) and dropout seeds, with a padded key, in eval and training.
fn check_first_row(family: &str, dtype: WeightDtype, train: bool) {
    let backbone = Backbone::load_with(&fixtures().join(format!("tiny-{family}")), dtype).unwrap();
    let h = backbone.config().hidden_size;
    let (b, l) = (3, 7);
    let mut mask = vec![0f32; b * l];
    mask[l + l - 2..2 * l].fill(-1e9);
    let mask = Tensor::from_vec(mask, (b, 1, 1, l), &Device::Cpu).unwrap();
    let x = Var::from_tensor(&randn(&[b, l, h], 11)).unwrap();
    let r = randn(&[b, 1, h], 12);
    for (i, layer) in backbone.encoder().layers().iter().enumerate() {
        let run = |first: bool| {
            let c = if train {
                ForwardCtx::train(43)
            } else {
                ForwardCtx::eval_with_grad()
            };
            let y = if first {
                layer.forward_first(x.as_tensor(), &mask, &c).unwrap()
            } else {
                layer
                    .forward(x.as_tensor(), &mask, &c)
                    .unwrap()
                    .narrow(1, 0, 1)
                    .unwrap()
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(x.as_tensor()).expect("gradient").clone();
            (y.detach(), g, c.next_seed())
        };
        let (y1, g1, s1) = run(true);
        let (y2, g2, s2) = run(false);
        let what = format!("{family} layer {i} {dtype} train {train} first row");
        assert_eq!(y1.dims(), [b, 1, h], "{what}: shape");
        assert_close(&y1, &y2, 1e-5, &format!("{what}: value"));
        assert_close(&g1, &g2, 1e-5, &format!("{what}: input gradient"));
        // Every position of x gets a gradient (keys and values), not only the first.
        let rest = g1.narrow(1, 1, l - 1).unwrap();
        assert!(max_abs(&rest) > 0.0, "{what}: no gradient past position 0");
        assert_eq!(s1, s2, "{what}: seeds drawn");
    }
}

#[test]
fn first_row_layer_matches_full_layer() {
    for family in ["xlmr", "bert"] {
        check_first_row(family, WeightDtype::F32, false);
        check_first_row(family, WeightDtype::F32, true);
    }
    check_first_row("xlmr", WeightDtype::Bf16, false);
    check_first_row("xlmr", WeightDtype::Bf16, true);
}

/// The encoder with its last layer cut to the first position against the full encoder.
#[test]
fn encoder_first_position_matches_full_encoder() {
    for family in ["xlmr", "bert"] {
        let backbone =
            Backbone::load_with(&fixtures().join(format!("tiny-{family}")), WeightDtype::F32)
                .unwrap();
        let enc = backbone.encoder();
        let h = backbone.config().hidden_size;
        let (b, l) = (2, 6);
        let x = Var::from_tensor(&randn(&[b, l, h], 21)).unwrap();
        let am = Tensor::from_vec(
            vec![1u32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
            (b, l),
            &Device::Cpu,
        )
        .unwrap();
        let r = randn(&[b, 1, h], 22);
        let run = |first: bool| {
            let c = ForwardCtx::train(5);
            let y = if first {
                enc.forward_embeds_first(x.as_tensor(), &am, None, &c)
                    .unwrap()
            } else {
                enc.forward_embeds(x.as_tensor(), &am, None, &c)
                    .unwrap()
                    .narrow(1, 0, 1)
                    .unwrap()
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y.detach(), grads.get(x.as_tensor()).unwrap().clone())
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        assert_close(&y1, &y2, 1e-5, &format!("{family} encoder: value"));
        assert_close(&g1, &g2, 1e-5, &format!("{family} encoder: input gradient"));
    }
}

#[test]
fn bf16_weights_are_the_rounded_f32_ones() {
    let dir = fixtures().join("tiny-xlmr");
    let w = fedprompt_model::weights::Weights::open(&dir).unwrap();
    let name = "roberta.encoder.layer.0.intermediate.dense.weight";
    let f = w.get(name, &[64, 32]).unwrap();
    let b = w.get_as(name, &[64, 32], WeightDtype::Bf16).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let back: Vec<f32> = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let f: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
    // Round to nearest: at most half a bf16 ulp (8 significant bits), so 2⁻⁸ of the value.
    for (&r, &x) in back.iter().zip(&f) {
        assert!((r - x).abs() <= x.abs() / 256.0, "{x} rounded to {r}");
    }
    assert!(back != f, "the weights were not rounded");
}

/// The bf16 product (AMX where present) against the f32 product of the same bf16 weight: with
/// AMX the activations are rounded to bf16 too, so the reference rounds them as well.
#[test]
fn bf16_product_matches_f32_of_rounded_operands() {
    use fedprompt_model::ops::linear::{frozen_linear, frozen_linear_packed, FusedAct};
    use fedprompt_model::ops::packs::{WeightPacks, KEEP_MAX_ROWS};
    use std::sync::Arc;
    for (rows, k, n) in [
        (37usize, 45usize, 50usize),
        (1, 1, 1),
        (64, 768, 96),
        (5, 300, 17),
        // Several row blocks of the AMX kernel's L2 blocking, an edge column block.
        (200, 3072, 40),
        (70, 64, 16),
        // A first product of many rows (above the f32 copies' limit) keeps its tile layouts too.
        (1056, 64, 48),
    ] {
        let x = randn(&[rows, k], 1);
        let w = randn(&[n, k], 2).to_dtype(DType::BF16).unwrap();
        let bias = randn(&[n], 3);
        let y = frozen_linear(&x, &w, Some(&bias), FusedAct::Identity).unwrap();
        let amx = fedprompt_model::ops::bf16::amx_enabled();
        let xr = if amx {
            x.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        } else {
            x.clone()
        };
        let wf = w.to_dtype(DType::F32).unwrap();
        let reference = xr
            .matmul(&wf.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        // Sums in another order: f32 rounding of k terms.
        assert_close(
            &y,
            &reference,
            1e-5 * (k as f32).sqrt(),
            &format!("{rows}x{k}x{n} amx {amx}"),
        );
        // The input gradient: g · W, with g rounded to bf16 under AMX.
        let xv = Var::from_tensor(&x).unwrap();
        let g = randn(&[rows, n], 4);
        let y = frozen_linear(xv.as_tensor(), &w, Some(&bias), FusedAct::Identity).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(xv.as_tensor()).unwrap();
        let gr = if amx {
            g.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        } else {
            g.clone()
        };
        let dref = gr.matmul(&wf).unwrap();
        assert_close(
            dx,
            &dref,
            1e-5 * (n as f32).sqrt(),
            &format!("grad {rows}x{k}x{n}"),
        );
        // With the weight's packed copies kept (as a layer keeps them): the first call packs,
        // the second reuses; both equal the product that packs afresh, bit for bit.
        let packs = Arc::new(WeightPacks::default());
        for call in 0..2 {
            let yp = frozen_linear_packed(
                xv.as_tensor(),
                &w,
                Some(&packs),
                Some(&bias),
                FusedAct::Identity,
            )
            .unwrap();
            assert_eq!(
                yp.to_vec2::<f32>().unwrap(),
                y.to_vec2::<f32>().unwrap(),
                "packed forward, call {call}, {rows}x{k}x{n}"
            );
            let grads = (&yp * &g).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(
                grads.get(xv.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
                dx.to_vec2::<f32>().unwrap(),
                "packed input gradient, call {call}, {rows}x{k}x{n}"
            );
        }
        // Both layouts are kept on the AMX path (bf16 pairs, padded to the tile grid) whatever
        // the product's rows; the fallback keeps both widened f32 operands (k × n each) when
        // the product has few rows, as an f32 weight keeps its copy.
        let (kp, np) = (k.div_ceil(32) * 32, n.div_ceil(32) * 32);
        let want = if amx {
            2 * (kp * np + np * kp)
        } else if rows <= KEEP_MAX_ROWS {
            2 * 4 * k * n
        } else {
            0
        };
        assert_eq!(packs.bytes(), want, "packed bytes {rows}x{k}x{n}");
    }
}
