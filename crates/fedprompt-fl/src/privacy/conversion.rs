//! RDP to `(ε, δ)`-DP.
//!
//! For each order `α` with RDP `r`, the improved conversion of Canonne, Kamath, Steinke
//! (2020, Prop. 12; also Asoodeh et al. 2020, Eq. 20) gives
//! `ε = r + log(1 − 1/α) − log(δ·α) / (α − 1)`; where `δ² + expm1(−r) > 0` the KL bound
//! `δ ≤ sqrt(1 − exp(−r))` already gives `ε = 0`. Orders at or below 1.01 are numerically
//! unstable and skipped. The best order wins; `ε` is never negative.

/// The `ε` of a run and the RDP order that gave it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpsilonAt {
    /// `ε` at the target `δ` (`+∞` when no order gives a finite bound).
    pub epsilon: f64,
    /// The optimal order (`0` when `δ = 0` or every order is infinite).
    pub order: f64,
}

/// Converts RDP values `rdp` at `orders` into the smallest `ε` at `delta`.
///
/// `orders` and `rdp` have the same length; orders are `≥ 1`, `delta ∈ [0, 1)`.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> EpsilonAt {
    debug_assert_eq!(orders.len(), rdp.len());
    if delta == 0.0 {
        let eps = if rdp.iter().all(|&r| r == 0.0) {
            0.0
        } else {
            f64::INFINITY
        };
        return EpsilonAt {
            epsilon: eps,
            order: 0.0,
        };
    }
    let mut best = EpsilonAt {
        epsilon: f64::INFINITY,
        order: 0.0,
    };
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        // Strictly smaller: the first optimal order wins, as with numpy's argmin.
        if eps < best.epsilon || (best.order == 0.0 && eps == best.epsilon) {
            best = EpsilonAt {
                epsilon: eps,
                order: a,
            };
        }
    }
    best.epsilon = best.epsilon.max(0.0);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_order_matches_the_formula() {
        let (a, r, d) = (8.0f64, 0.5f64, 1e-5f64);
        let want = r + (1.0 - 1.0 / a).ln() - (d * a).ln() / (a - 1.0);
        let got = rdp_to_epsilon(&[a], &[r], d);
        assert!((got.epsilon - want).abs() < 1e-12);
        assert_eq!(got.order, 8.0);
    }

    #[test]
    fn zero_delta_and_tiny_rdp() {
        assert_eq!(rdp_to_epsilon(&[2.0], &[0.1], 0.0).epsilon, f64::INFINITY);
        assert_eq!(rdp_to_epsilon(&[2.0], &[0.0], 0.0).epsilon, 0.0);
        // KL bound: delta^2 > 1 - exp(-r) gives epsilon 0.
        assert_eq!(rdp_to_epsilon(&[2.0], &[1e-12], 1e-3).epsilon, 0.0);
    }
}
