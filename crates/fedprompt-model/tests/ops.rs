//! Every fused op against the composed candle version it replaces: values and gradients, on
//! random inputs of odd shapes, contiguous and strided.

use candle_core::{DType, Device, Tensor, Var, D};
use fedprompt_model::nn::{ForwardCtx, FusedAct, LayerNorm, Linear, LoraDelta};
use fedprompt_model::ops;
use fedprompt_model::ops::attention::{attention_dropout_mask, AttnDropout};

mod common;

use common::max_abs;

const TOL: f32 = 1e-5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `|a − b|∞ ≤ TOL · max(1, |b|∞)`.
fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let d = max_abs(&(a - b).unwrap());
    let scale = max_abs(b).max(1.0);
    assert!(d <= TOL * scale, "{what}: differ by {d} (scale {scale})");
}

/// Gradient of `Σ f(x) ⊙ r` with respect to `x`, and the value `f(x)`.
fn value_and_grad(x: &Var, r: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let y = f(x.as_tensor());
    let loss = (&y * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gx = g.get(x.as_tensor()).expect("gradient").clone();
    (y.detach(), gx)
}

// ---------------------------------------------------------------------------------------------
// Frozen linear

fn composed_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: FusedAct) -> Tensor {
    let mut y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
    if let Some(b) = b {
        y = y.broadcast_add(b).unwrap();
    }
    match act {
        FusedAct::Identity => y,
        FusedAct::GeluErf => y.gelu_erf().unwrap(),
    }
}

fn check_linear(rows: usize, k: usize, n: usize, bias: bool, act: FusedAct, transposed: bool) {
    let w = randn(&[n, k], 1);
    let b = bias.then(|| randn(&[n], 2));
    let x0 = if transposed {
        randn(&[k, rows], 3)
    } else {
        randn(&[rows, k], 3)
    };
    let r = randn(&[rows, n], 4);
    let xv = Var::from_tensor(&x0).unwrap();
    let view = |x: &Tensor| {
        if transposed {
            x.t().unwrap()
        } else {
            x.clone()
        }
    };
    let (y1, g1) = value_and_grad(&xv, &r, |x| {
        let x = view(x);
        if transposed && rows > 1 && k > 1 {
            assert!(!x.is_contiguous());
        }
        ops::linear::frozen_linear(&x, &w, b.as_ref(), act).unwrap()
    });
    let (y2, g2) = value_and_grad(&xv, &r, |x| composed_linear(&view(x), &w, b.as_ref(), act));
    let what = format!("linear {rows}x{k}->{n} bias {bias} {act:?} transposed {transposed}");
    assert_close(&y1, &y2, &format!("{what}: value"));
    assert_close(&g1, &g2, &format!("{what}: gradient"));
}

#[test]
fn frozen_linear_matches_composed() {
    for &(rows, k, n) in &[(1, 1, 1), (7, 13, 5), (33, 64, 96), (150, 48, 130)] {
        for bias in [true, false] {
            for act in [FusedAct::Identity, FusedAct::GeluErf] {
                for transposed in [false, true] {
                    check_linear(rows, k, n, bias, act, transposed);
                }
            }
        }
    }
}

#[test]
fn frozen_linear_on_rank_3_inputs() {
    // [B, L, K] contiguous and a strided [B, L, K] view (made contiguous by the op's wrapper).
    let w = randn(&[9, 12], 70);
    let b = randn(&[9], 71);
    let r = randn(&[2, 5, 9], 72);
    for strided in [false, true] {
        let x = if strided {
            Var::from_tensor(&randn(&[2, 12, 5], 73)).unwrap()
        } else {
            Var::from_tensor(&randn(&[2, 5, 12], 73)).unwrap()
        };
        let view = |x: &Tensor| {
            if strided {
                x.transpose(1, 2).unwrap()
            } else {
                x.clone()
            }
        };
        for act in [FusedAct::Identity, FusedAct::GeluErf] {
            let (y1, g1) = value_and_grad(&x, &r, |x| {
                ops::linear::frozen_linear(&view(x), &w, Some(&b), act).unwrap()
            });
            let (y2, g2) = value_and_grad(&x, &r, |x| composed_linear(&view(x), &w, Some(&b), act));
            assert_close(&y1, &y2, "rank-3 linear value");
            assert_close(&g1, &g2, "rank-3 linear gradient");
        }
    }
}

#[test]
fn linear_layer_routes_frozen_and_trainable_weights() {
    // A frozen layer (fused) and the same layer with trainable weights (stock) agree, and the
    // trainable one still gets weight gradients.
    let w = randn(&[6, 10], 5);
    let b = randn(&[6], 6);
    let x = Var::from_tensor(&randn(&[2, 3, 10], 7)).unwrap();
    let r = randn(&[2, 3, 6], 8);
    let ctx = ForwardCtx::eval();
    let frozen = Linear::new(w.clone(), Some(b.clone()));
    assert!(frozen.is_frozen());
    let wv = Var::from_tensor(&w).unwrap();
    let bv = Var::from_tensor(&b).unwrap();
    let train = Linear::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone()));
    assert!(!train.is_frozen());
    for act in [FusedAct::Identity, FusedAct::GeluErf] {
        let (y1, g1) = value_and_grad(&x, &r, |x| frozen.forward_act(x, act, &ctx).unwrap());
        let y2 = train.forward_act(x.as_tensor(), act, &ctx).unwrap();
        let grads = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(&y1, &y2, "frozen vs trainable: value");
        assert_close(
            &g1,
            grads.get(x.as_tensor()).unwrap(),
            "frozen vs trainable: dx",
        );
        assert!(grads.get(wv.as_tensor()).is_some() && grads.get(bv.as_tensor()).is_some());
    }
}

#[test]
fn linear_with_lora_matches_composed() {
    let w = randn(&[6, 10], 9);
    let b = randn(&[6], 10);
    let a = Var::from_tensor(&randn(&[2, 10], 11)).unwrap();
    let bb = Var::from_tensor(&randn(&[6, 2], 12)).unwrap();
    let lin = Linear::new(w.clone(), Some(b.clone())).with_lora(LoraDelta {
        a: a.as_tensor().clone(),
        b: bb.as_tensor().clone(),
        scale: 2.0,
        dropout: 0.0,
    });
    let x = Var::from_tensor(&randn(&[5, 10], 13)).unwrap();
    let r = randn(&[5, 6], 14);
    for act in [FusedAct::Identity, FusedAct::GeluErf] {
        let y = lin
            .forward_act(x.as_tensor(), act, &ForwardCtx::eval())
            .unwrap();
        let delta = x
            .as_tensor()
            .matmul(&a.as_tensor().t().unwrap())
            .unwrap()
            .matmul(&bb.as_tensor().t().unwrap())
            .unwrap();
        let pre = (composed_linear(x.as_tensor(), &w, Some(&b), FusedAct::Identity)
            + (delta * 2.0).unwrap())
        .unwrap();
        let y2 = match act {
            FusedAct::Identity => pre,
            FusedAct::GeluErf => pre.gelu_erf().unwrap(),
        };
        assert_close(&y, &y2, "lora value");
        let g1 = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), a.as_tensor(), bb.as_tensor()] {
            assert_close(g1.get(t).unwrap(), g2.get(t).unwrap(), "lora gradient");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norm

fn composed_layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let xn = xc
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap();
    xn.broadcast_mul(g).unwrap().broadcast_add(b).unwrap()
}

#[test]
fn layer_norm_matches_composed() {
    for &(shape, eps, transposed) in &[
        (&[3usize, 5, 7][..], 1e-5, false),
        (&[1, 1][..], 1e-12, false),
        (&[4, 33][..], 1e-12, true),
        (&[2, 150, 48][..], 1e-5, false),
    ] {
        let h = *shape.last().unwrap();
        let x0 = if transposed {
            randn(&[shape[1], shape[0]], 20)
        } else {
            randn(shape, 20)
        };
        let x = Var::from_tensor(&(x0 * 3.0).unwrap()).unwrap();
        let view = |x: &Tensor| {
            if transposed {
                x.t().unwrap()
            } else {
                x.clone()
            }
        };
        let r = randn(shape, 21);
        let g = Var::from_tensor(&(randn(&[h], 22) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(&[h], 23)).unwrap();
        let run = |fused: bool| {
            let xs = view(x.as_tensor());
            let y = if fused {
                ops::norm::layer_norm(&xs, g.as_tensor(), b.as_tensor(), eps).unwrap()
            } else {
                composed_layer_norm(&xs, g.as_tensor(), b.as_tensor(), eps)
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |t: &Tensor| grads.get(t).unwrap().clone();
            (
                y,
                get(x.as_tensor()),
                get(g.as_tensor()),
                get(b.as_tensor()),
            )
        };
        let (y1, dx1, dg1, db1) = run(true);
        let (y2, dx2, dg2, db2) = run(false);
        let what = format!("layer norm {shape:?} eps {eps} transposed {transposed}");
        assert_close(&y1, &y2, &format!("{what}: value"));
        assert_close(&dx1, &dx2, &format!("{what}: dx"));
        assert_close(&dg1, &dg2, &format!("{what}: dgamma"));
        assert_close(&db1, &db2, &format!("{what}: dbeta"));
    }
}

#[test]
fn layer_norm_with_frozen_parameters() {
    let x = Var::from_tensor(&randn(&[5, 9], 24)).unwrap();
    let g = (randn(&[9], 25) + 1.0).unwrap();
    let b = randn(&[9], 26);
    let r = randn(&[5, 9], 27);
    let ln = LayerNorm::new(g.clone(), b.clone(), 1e-5);
    let (y1, g1) = value_and_grad(&x, &r, |x| candle_core::Module::forward(&ln, x).unwrap());
    let (y2, g2) = value_and_grad(&x, &r, |x| composed_layer_norm(x, &g, &b, 1e-5));
    assert_close(&y1, &y2, "frozen layer norm value");
    assert_close(&g1, &g2, "frozen layer norm dx");
}

// ---------------------------------------------------------------------------------------------
// Softmax

fn composed_softmax(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    let s = e.sum_keepdim(D::Minus1).unwrap();
    e.broadcast_div(&s).unwrap()
}

#[test]
fn softmax_matches_composed() {
    for &(shape, transposed) in &[
        (&[1usize][..], false),
        (&[3, 7][..], false),
        (&[2, 3, 5, 11][..], false),
        (&[9, 4][..], true),
    ] {
        let x0 = if transposed {
            randn(&[shape[1], shape[0]], 30)
        } else {
            randn(shape, 30)
        };
        let x = Var::from_tensor(&(x0 * 5.0).unwrap()).unwrap();
        let view = |x: &Tensor| {
            if transposed {
                x.t().unwrap()
            } else {
                x.clone()
            }
        };
        let r = randn(shape, 31);
        let (y1, g1) = value_and_grad(&x, &r, |x| {
            fedprompt_model::nn::softmax_last_dim(&view(x)).unwrap()
        });
        let (y2, g2) = value_and_grad(&x, &r, |x| composed_softmax(&view(x)));
        assert_close(&y1, &y2, &format!("softmax {shape:?}: value"));
        assert_close(&g1, &g2, &format!("softmax {shape:?}: gradient"));
    }
}

// ---------------------------------------------------------------------------------------------
// Attention core

fn composed_attention(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    drop: Option<AttnDropout>,
) -> Tensor {
    let (b, l, h3) = qkv.dims3().unwrap();
    let h = h3 / 3;
    let d = h / heads;
    let split = |i: usize| {
        qkv.narrow(2, i * h, h)
            .unwrap()
            .reshape((b, l, heads, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(0), split(1), split(2));
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (d as f64).sqrt()))
        .unwrap()
        .broadcast_add(&mask.reshape((b, 1, 1, l)).unwrap())
        .unwrap();
    let mut p = composed_softmax(&scores);
    if let Some(dr) = drop {
        p = (p * attention_dropout_mask(dr, b, heads, l).unwrap()).unwrap();
    }
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, l, h))
        .unwrap()
}

#[test]
fn attention_matches_composed() {
    for &(b, l, heads, d, p) in &[
        (1usize, 1usize, 1usize, 1usize, 0.0f32),
        (2, 7, 3, 5, 0.0),
        (3, 13, 2, 8, 0.25),
        (2, 40, 4, 16, 0.1),
    ] {
        let h = heads * d;
        let x = Var::from_tensor(&randn(&[b, l, 3 * h], 40)).unwrap();
        let r = randn(&[b, l, h], 41);
        // Right padding: sequence i has l - i real tokens (at least one).
        let mut mask = vec![0f32; b * l];
        for i in 0..b {
            for j in (l - i.min(l - 1))..l {
                mask[i * l + j] = -1e9;
            }
        }
        let mask_t = Tensor::from_vec(mask.clone(), (b, l), &Device::Cpu).unwrap();
        let drop = (p > 0.0).then_some(AttnDropout { p, seed: 42 });
        let (y1, g1) = value_and_grad(&x, &r, |x| {
            ops::attention::attention(x, &mask, heads, drop).unwrap()
        });
        let (y2, g2) = value_and_grad(&x, &r, |x| composed_attention(x, &mask_t, heads, drop));
        let what = format!("attention b{b} l{l} heads{heads} d{d} p{p}");
        assert_close(&y1, &y2, &format!("{what}: value"));
        assert_close(&g1, &g2, &format!("{what}: gradient"));
    }
}

#[test]
fn attention_accepts_a_strided_projection() {
    let (b, l, heads, d) = (2, 6, 2, 4);
    let h = heads * d;
    // [B, 3H, L] transposed to [B, L, 3H]: not contiguous.
    let x = Var::from_tensor(&randn(&[b, 3 * h, l], 50)).unwrap();
    let r = randn(&[b, l, h], 51);
    let mask = vec![0f32; b * l];
    let mask_t = Tensor::zeros((b, l), DType::F32, &Device::Cpu).unwrap();
    let (y1, g1) = value_and_grad(&x, &r, |x| {
        ops::attention::attention(&x.transpose(1, 2).unwrap(), &mask, heads, None).unwrap()
    });
    let (y2, g2) = value_and_grad(&x, &r, |x| {
        composed_attention(&x.transpose(1, 2).unwrap(), &mask_t, heads, None)
    });
    assert_close(&y1, &y2, "strided attention: value");
    assert_close(&g1, &g2, "strided attention: gradient");
}

// ---------------------------------------------------------------------------------------------
// Dropout

#[test]
fn dropout_is_seeded_and_matches_its_mask() {
    let shape = [3usize, 7000];
    let x = Var::from_tensor(&randn(&shape, 60)).unwrap();
    let r = randn(&shape, 61);
    let mask = ops::dropout::dropout_mask(&shape, 0.1, 7).unwrap();
    let (y1, g1) = value_and_grad(&x, &r, |x| ops::dropout::dropout(x, 0.1, 7).unwrap());
    let (y2, g2) = value_and_grad(&x, &r, |x| (x * &mask).unwrap());
    assert_close(&y1, &y2, "dropout value");
    assert_close(&g1, &g2, "dropout gradient");
    // Same seed, same mask; another seed, another mask; about p of the entries dropped.
    let again = ops::dropout::dropout_mask(&shape, 0.1, 7).unwrap();
    assert_eq!(max_abs(&(&again - &mask).unwrap()), 0.0);
    let other = ops::dropout::dropout_mask(&shape, 0.1, 8).unwrap();
    assert!(max_abs(&(&other - &mask).unwrap()) > 0.0);
    let dropped = mask
        .eq(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((dropped - 0.1).abs() < 0.01, "dropped fraction {dropped}");
    // Through the context: deterministic for a seed.
    let a = ForwardCtx::train(3).dropout(x.as_tensor(), 0.1).unwrap();
    let b = ForwardCtx::train(3).dropout(x.as_tensor(), 0.1).unwrap();
    assert_eq!(max_abs(&(&a - &b).unwrap()), 0.0);
}

/// An f32 weight's kept row-major `Wᵀ` (made by the first forward that uses it, reused by the
/// next) gives the same product as reading `W` column-wise, bit for bit; products too small
/// for the blocked kernel (which sum in another order) keep reading `W`, and the input
/// gradient (which reads `W` itself) keeps no copy.
#[test]
fn frozen_linear_with_kept_transpose_is_bitwise_the_same() {
    use fedprompt_model::ops::packs::{WeightPacks, KEEP_MAX_ROWS};
    use std::sync::Arc;
    for &(rows, k, n) in &[
        (1, 1, 1),
        (7, 13, 5),
        (1, 64, 300),
        (17, 16, 16),
        (300, 2, 10),
        (2, 3, 200),
        (150, 48, 130),
        (320, 384, 96),
        (40, 200, 70),
        // A first product of many rows keeps nothing.
        (1100, 24, 40),
    ] {
        let w = randn(&[n, k], 80);
        let b = randn(&[n], 81);
        let r = randn(&[rows, n], 82);
        let xv = Var::from_tensor(&randn(&[rows, k], 83)).unwrap();
        let (y0, g0) = value_and_grad(&xv, &r, |x| {
            ops::linear::frozen_linear(x, &w, Some(&b), FusedAct::GeluErf).unwrap()
        });
        let packs = Arc::new(WeightPacks::default());
        for call in 0..2 {
            let (y, g) = value_and_grad(&xv, &r, |x| {
                ops::linear::frozen_linear_packed(x, &w, Some(&packs), Some(&b), FusedAct::GeluErf)
                    .unwrap()
            });
            let what = format!("{rows}x{k}->{n}, call {call}");
            assert_eq!(
                y.to_vec2::<f32>().unwrap(),
                y0.to_vec2::<f32>().unwrap(),
                "{what}"
            );
            assert_eq!(
                g.to_vec2::<f32>().unwrap(),
                g0.to_vec2::<f32>().unwrap(),
                "{what}"
            );
        }
        // One f32 copy of Wᵀ where the blocked kernel runs (see `ops::gemm_weight`) and the
        // product has few rows.
        let blocked = rows > 1 && n > 1 && k > 2 && rows * n > 256;
        let want = if blocked && rows <= KEEP_MAX_ROWS {
            4 * k * n
        } else {
            0
        };
        assert_eq!(packs.bytes(), want, "{rows}x{k}->{n}");
    }
}
