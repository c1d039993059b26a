//! Vectorised `exp`, erf-GELU and its derivative over slices, for softmax and the feed-forward
//! block: std's `f32::exp` is a call per element that the compiler cannot vectorise, and it was
//! about 5% of a training step (softmax and GELU's erf).
//!
//! Hand-written (no well-kept crate offers a slice `exp` that compiles to AVX-512 on stable
//! Rust): `exp` is Cephes' `expf` (range reduction by `ln 2` in two parts, a degree-6
//! polynomial, the exponent put back through the float's bits; relative error ≈ 2 ulp, checked
//! against f64 in the tests below), written branch-free so that the loops vectorise. The loops
//! are compiled twice, for AVX-512 (chosen at run time when the CPU has it) and for the baseline.

/// `exp(x)` for one element, branch-free (the body the slice loops vectorise).
///
/// `n = round(x / ln 2)` is taken with the 1.5·2²³ trick (adding it rounds to the nearest
/// integer and leaves `n` in the low bits), because `f32::round` and a float → int cast do
/// not vectorise (the cast saturates, element by element).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2²³
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // n + 127 in the exponent field: 2ⁿ (n ∈ [−126, 127] after the clamp).
    let ni = t.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    // Below the clamp the true value is under 2⁻¹²⁵: zero, as std's exp gives for the
    // masked (−1e9) scores.
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// `erf(x)` (Abramowitz–Stegun 7.1.26; |error| < 1.5e-7), branch-free, given
/// `e = exp(−x²)` (so that GELU's derivative shares its exp).
#[inline(always)]
fn erf_with(x: f32, e: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t
            + 0.254_829_6)
            * t
            * e;
    y.copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / √(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn gelu_v(u: f32) -> f32 {
    // erf(u/√2) with exp(−u²/2).
    0.5 * u * (1.0 + erf_with(u * FRAC_1_SQRT_2, exp_f32(-0.5 * u * u)))
}

#[inline(always)]
fn gelu_grad_v(u: f32) -> f32 {
    let e = exp_f32(-0.5 * u * u);
    0.5 * (1.0 + erf_with(u * FRAC_1_SQRT_2, e)) + u * INV_SQRT_2PI * e
}

/// Defines `$name` over slices: the AVX-512 build of `$body` when the CPU has it, else the
/// baseline build.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, ($($arg:ident: $ty:ty),*), $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was just detected.
                return unsafe { $avx($($arg),*) };
            }
            $body
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $avx($($arg: $ty),*) $body
    };
}

dispatch!(
    /// `x = exp(x)` element-wise.
    exp_in_place, exp_in_place_avx512, (x: &mut [f32]), {
        x.iter_mut().for_each(|v| *v = exp_f32(*v));
    }
);

dispatch!(
    /// `out = gelu(u)` (erf GELU) element-wise.
    gelu_into, gelu_into_avx512, (u: &[f32], out: &mut [f32]), {
        out.iter_mut().zip(u).for_each(|(o, &u)| *o = gelu_v(u));
    }
);

dispatch!(
    /// `u = gelu(u)` in place.
    gelu_in_place, gelu_in_place_avx512, (u: &mut [f32]), {
        u.iter_mut().for_each(|u| *u = gelu_v(*u));
    }
);

dispatch!(
    /// `u = g · gelu'(u)` in place (the GELU backward, overwriting the pre-activation).
    gelu_grad_mul_in_place, gelu_grad_mul_in_place_avx512, (u: &mut [f32], g: &[f32]), {
        u.iter_mut().zip(g).for_each(|(u, &g)| *u = g * gelu_grad_v(*u));
    }
);

dispatch!(
    /// `out = g · gelu'(u)` element-wise.
    gelu_grad_mul_into, gelu_grad_mul_into_avx512, (u: &[f32], g: &[f32], out: &mut [f32]), {
        out.iter_mut()
            .zip(u.iter().zip(g))
            .for_each(|(o, (&u, &g))| *o = g * gelu_grad_v(u));
    }
);

dispatch!(
    /// `s += r`, then `y = (s − mean) / σ · γ + β` for one row (layer norm after a residual).
    add_layer_norm_row, add_layer_norm_row_avx512,
    (s: &mut [f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]), {
        s.iter_mut().zip(r).for_each(|(s, &r)| *s += r);
        let (mean, rstd) = row_stats(s, eps);
        for (((y, &x), &g), &b) in y.iter_mut().zip(s.iter()).zip(gamma).zip(beta) {
            *y = (x - mean) * rstd * g + b;
        }
    }
);

dispatch!(
    /// `y = (x − mean) / σ · γ + β` for one row.
    layer_norm_row, layer_norm_row_avx512,
    (x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]), {
        let (mean, rstd) = row_stats(x, eps);
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mean) * rstd * g + b;
        }
    }
);

dispatch!(
    /// The input gradient of one row's layer norm with constant `γ` at input `x`, for the
    /// output gradient `g`: `dx = (γg − mean(γg) − x̂ · mean(γg · x̂)) / σ`.
    layer_norm_grad_row, layer_norm_grad_row_avx512,
    (x: &[f32], g: &[f32], gamma: &[f32], eps: f32, dx: &mut [f32]), {
        let h = x.len();
        let (mean, rstd) = row_stats(x, eps);
        let mut sa = [0f32; 16];
        let mut sb = [0f32; 16];
        let whole = h / 16 * 16;
        for ((x, g), gm) in x[..whole]
            .chunks_exact(16)
            .zip(g[..whole].chunks_exact(16))
            .zip(gamma[..whole].chunks_exact(16))
        {
            for l in 0..16 {
                let xh = (x[l] - mean) * rstd;
                let v = g[l] * gm[l];
                sa[l] += v;
                sb[l] += v * xh;
            }
        }
        let (mut ta, mut tb) = (sa.iter().sum::<f32>(), sb.iter().sum::<f32>());
        for i in whole..h {
            let xh = (x[i] - mean) * rstd;
            let v = g[i] * gamma[i];
            ta += v;
            tb += v * xh;
        }
        let a = ta / h as f32;
        let b = tb / h as f32;
        for (((dx, &x), &g), &gm) in dx.iter_mut().zip(x).zip(g).zip(gamma) {
            let xh = (x - mean) * rstd;
            *dx = rstd * (g * gm - a - xh * b);
        }
    }
);

/// Mean and 1/σ of one row: two passes (the variance around the mean, for accuracy), each in
/// 16 interleaved partial sums so that it vectorises.
#[inline(always)]
pub(crate) fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &v)| {
            let d = v - mean;
            *a += d * d;
        });
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Sum of a slice in 16 interleaved partial sums (vectorisable; the order differs from a
/// sequential sum by float rounding only).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &v)| *a += v);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        ((a as f64 - b) / b.abs().max(f32::MIN_POSITIVE as f64)).abs() / f32::EPSILON as f64
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_f64() {
        let mut worst = 0f64;
        let xs: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + 175.0 * i as f32 / 200_000.0)
            .collect();
        let mut y = xs.clone();
        exp_in_place(&mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            worst = worst.max(ulps(y, (x as f64).exp()));
        }
        assert!(worst < 4.0, "exp: worst error {worst} ulp");
        // Masked scores and the clamp's edges.
        let mut e = [-1e9f32, -88.0, -87.5, 0.0, 88.0];
        exp_in_place(&mut e);
        assert_eq!(e[0], 0.0);
        assert_eq!(e[1], 0.0);
        assert_eq!(e[3], 1.0);
        assert!(ulps(e[4], 88f64.exp()) < 4.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_f64() {
        let us: Vec<f32> = (0..20_001).map(|i| -10.0 + i as f32 / 1000.0).collect();
        let mut g = vec![0f32; us.len()];
        gelu_into(&us, &mut g);
        let mut in_place = us.clone();
        gelu_in_place(&mut in_place);
        let ones = vec![1f32; us.len()];
        let mut d = vec![0f32; us.len()];
        gelu_grad_mul_into(&us, &ones, &mut d);
        let mut d2 = us.clone();
        gelu_grad_mul_in_place(&mut d2, &ones);
        for i in 0..us.len() {
            let u = us[i] as f64;
            let erf = libm::erf(u / std::f64::consts::SQRT_2);
            let gelu = 0.5 * u * (1.0 + erf);
            let grad =
                0.5 * (1.0 + erf) + u * (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (g[i] as f64 - gelu).abs() < 2e-6 * u.abs().max(1.0),
                "gelu({u})"
            );
            assert!((d[i] as f64 - grad).abs() < 2e-6, "gelu'({u})");
            assert_eq!(g[i], in_place[i]);
            assert_eq!(d[i], d2[i]);
        }
    }

    /// f64 layer norm of one row and its input gradient (constant γ) for output gradient `g`.
    fn layer_norm_f64(x: &[f32], g: &[f32], gamma: &[f32], beta: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        let xh: Vec<f64> = x.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let y = (0..x.len())
            .map(|i| xh[i] * gamma[i] as f64 + beta[i] as f64)
            .collect();
        let gy: Vec<f64> = (0..x.len())
            .map(|i| g[i] as f64 * gamma[i] as f64)
            .collect();
        let a = gy.iter().sum::<f64>() / n;
        let b = gy.iter().zip(&xh).map(|(g, x)| g * x).sum::<f64>() / n;
        let dx = (0..x.len())
            .map(|i| rstd * (gy[i] - a - xh[i] * b))
            .collect();
        (y, dx)
    }

    #[test]
    fn layer_norm_rows_match_f64() {
        // 37: two full 16-lane blocks and a tail; 64: no tail.
        for h in [37usize, 64] {
            let x: Vec<f32> = (0..h)
                .map(|i| (i as f32 * 0.71).sin() * 3.0 + 0.5)
                .collect();
            let r: Vec<f32> = (0..h).map(|i| (i as f32 * 0.13).cos()).collect();
            let g: Vec<f32> = (0..h).map(|i| (i as f32 * 0.29).sin()).collect();
            let gamma: Vec<f32> = (0..h).map(|i| 1.0 + 0.01 * i as f32).collect();
            let beta: Vec<f32> = (0..h).map(|i| 0.1 - 0.003 * i as f32).collect();
            let (y64, dx64) = layer_norm_f64(&x, &g, &gamma, &beta);
            let mut y = vec![0f32; h];
            layer_norm_row(&x, &gamma, &beta, 1e-5, &mut y);
            let mut dx = vec![0f32; h];
            layer_norm_grad_row(&x, &g, &gamma, 1e-5, &mut dx);
            // The residual form: s = (x − r) + r gives back x's row.
            let mut s: Vec<f32> = x.iter().zip(&r).map(|(x, r)| x - r).collect();
            let mut y2 = vec![0f32; h];
            add_layer_norm_row(&mut s, &r, &gamma, &beta, 1e-5, &mut y2);
            for i in 0..h {
                assert!((y[i] as f64 - y64[i]).abs() < 1e-5, "h {h} y[{i}]");
                assert!(
                    (y2[i] as f64 - y64[i]).abs() < 1e-5,
                    "h {h} residual y[{i}]"
                );
                assert!((dx[i] as f64 - dx64[i]).abs() < 1e-5, "h {h} dx[{i}]");
            }
        }
    }

    #[test]
    fn sum_matches_f64() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum(&x) as f64 - exact).abs() < 1e-4);
    }
}
