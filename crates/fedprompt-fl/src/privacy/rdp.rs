//! Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
//! "Rényi Differential Privacy of the Sampled Gaussian Mechanism").
//!
//! With sampling rate `q` and noise multiplier `z` (noise std over L2 sensitivity), the RDP
//! of order `α` is `ε(α) = log(A_α) / (α − 1)`, where `A_α` is the `α`-th moment of the
//! likelihood ratio between `(1 − q)·N(0, z²) + q·N(1, z²)` and `N(0, z²)`:
//!
//! - integer `α`: `A_α = Σ_{i=0..α} C(α, i) (1 − q)^{α−i} q^i exp((i² − i) / (2z²))`;
//! - fractional `α`: the integral is split at `z₀ = z² log(1/q − 1) + ½` into two series
//!   whose terms carry an `erfc` factor (Sec. 3.3 of the paper), summed until their terms
//!   are negligible, with `|C(α, i)|` as Google's `dp-accounting` does (an upper bound).
//!
//! Everything is summed in log space. Written by hand (no Rust crate implements this
//! accountant); special functions come from `libm` (`lgamma`, `erfc`).

/// Steps after which the fractional series is given up and the order excluded.
const MAX_FRAC_STEPS: usize = 1000;

/// `log(exp(a) + exp(b))` without overflow.
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// `log |C(n, k)|` for real `n` (generalised binomial coefficient), via `log |Γ|`.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log(erfc(x))`, accurate where `erfc` itself underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        libm::erfc(x).ln()
    } else {
        // Asymptotic series: erfc(x) = exp(−x²)/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶)).
        let x2 = x * x;
        let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2);
        -x2 - x.ln() - 0.5 * std::f64::consts::PI.ln() + series.ln()
    }
}

/// `log A_α` for integer `α ≥ 2` and `0 < q < 1`.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let a = alpha as f64;
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i = i as f64;
        let log_coef = log_comb(a, i) + i * log_q + (a - i) * log_1mq;
        log_add(acc, log_coef + (i * i - i) / (2.0 * sigma * sigma))
    })
}

/// `log A_α` for fractional `α > 1` and `0 < q < 1`; `+∞` when the series does not settle.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let scale = std::f64::consts::SQRT_2 * sigma;
    let (mut a0, mut a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for step in 0..MAX_FRAC_STEPS {
        let i = step as f64;
        let j = alpha - i;
        let log_coef = log_comb(alpha, i);
        let t0 = log_coef + i * log_q + j * log_1mq;
        let t1 = log_coef + j * log_q + i * log_1mq;
        let e0 = 0.5f64.ln() + log_erfc((i - z0) / scale);
        let e1 = 0.5f64.ln() + log_erfc((z0 - j) / scale);
        let s0 = t0 + (i * i - i) / (2.0 * sigma * sigma) + e0;
        let s1 = t1 + (j * j - j) / (2.0 * sigma * sigma) + e1;
        a0 = log_add(a0, s0);
        a1 = log_add(a1, s1);
        let total = log_add(a0, a1);
        // Both series decreasing and their terms negligible against the sum.
        if s0 < last0 && s1 < last1 && s0.max(s1) < total - 30.0 {
            return total;
        }
        last0 = s0;
        last1 = s1;
    }
    f64::INFINITY
}

/// RDP `ε(α)` of one Poisson-subsampled Gaussian step with rate `q ∈ [0, 1]` and noise
/// multiplier `sigma ≥ 0`, at order `alpha > 1` (may be `+∞`).
pub fn subsampled_gaussian_rdp(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// The RDP orders `dp-accounting` uses by default: 1.1, 1.2, …, 10.9, then 11, 12, …, 63,
/// then 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((11..64).map(f64::from))
        .chain([128.0, 256.0, 512.0, 1024.0])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_add_matches_direct_sum() {
        let got = log_add(2f64.ln(), 3f64.ln()).exp();
        assert!((got - 5.0).abs() < 1e-12);
        assert_eq!(log_add(f64::NEG_INFINITY, 1.0), 1.0);
    }

    #[test]
    fn log_erfc_branches_agree_at_the_switch() {
        // erfc(25) ≈ 8e-274 is still representable: the series must match it there.
        let direct = libm::erfc(25.0).ln();
        assert!((log_erfc(25.0) - direct).abs() < 1e-9 * direct.abs());
        assert!((log_erfc(1.0) - libm::erfc(1.0).ln()).abs() < 1e-15);
        assert!(log_erfc(40.0).is_finite() && log_erfc(40.0) < -1600.0);
    }

    #[test]
    fn integer_order_two_matches_closed_form() {
        // A_2 = 1 + q²(exp(1/σ²) − 1) (Mironov et al. 2019, Sec. 3.2).
        let (q, s): (f64, f64) = (0.1, 1.3);
        let want = (1.0 + q * q * (1.0 / (s * s)).exp_m1()).ln();
        assert!((subsampled_gaussian_rdp(q, s, 2.0) - want).abs() < 1e-12);
    }

    #[test]
    fn rdp_is_monotone_in_order_and_below_the_unsampled_bound() {
        let orders = default_orders();
        assert_eq!(orders.len(), 99 + 53 + 4);
        let rdp: Vec<f64> = orders
            .iter()
            .map(|&a| subsampled_gaussian_rdp(0.05, 1.1, a))
            .collect();
        for (w, a) in rdp.windows(2).zip(&orders) {
            assert!(w[1] >= w[0] * (1.0 - 1e-9), "not monotone at order {a}");
        }
        for (&r, &a) in rdp.iter().zip(&orders) {
            assert!(r <= a / (2.0 * 1.1 * 1.1) + 1e-12, "order {a}: {r}");
        }
    }
}
