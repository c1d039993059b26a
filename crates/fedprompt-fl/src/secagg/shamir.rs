//! Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2⁶¹ − 1).
//!
//! Written by hand: the Rust Shamir crates are either unmaintained (`sharks`, last release
//! 2021; `shamirsecretsharing`) or built on elliptic-curve group traits far heavier than
//! the 32-byte secrets needed here (`vsss-rs`). The whole scheme is the textbook one,
//! about a hundred lines: each secret is cut into five 7-byte chunks (each below the
//! Mersenne prime `p = 2⁶¹ − 1`), every chunk is the constant term of its own random
//! polynomial of degree `t − 1`, a share is the polynomials' values at the holder's
//! non-zero `x`, and [`combine`] interpolates at 0 (Lagrange). Fewer than `t` shares
//! reveal nothing about a chunk (the coefficients are uniform in the field).

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::SecAggError;

/// The field modulus, the Mersenne prime 2⁶¹ − 1.
const P: u64 = (1 << 61) - 1;
/// Bytes of the secret per field element (56 bits < 61).
const CHUNK: usize = 7;
/// Field elements per 32-byte secret.
const CHUNKS: usize = 32_usize.div_ceil(CHUNK);

/// One holder's share of a 32-byte secret: the `CHUNKS` polynomials evaluated at `x`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The holder's evaluation point (non-zero).
    pub x: u64,
    /// One value per chunk of the secret.
    pub y: Vec<u64>,
}

fn reduce(v: u128) -> u64 {
    // v < 2^122: fold the high bits twice (2^61 ≡ 1 mod P).
    let folded = (v & u128::from(P)) + (v >> 61);
    let folded = (folded & u128::from(P)) + (folded >> 61);
    let r = folded as u64;
    if r >= P {
        r - P
    } else {
        r
    }
}

fn add(a: u64, b: u64) -> u64 {
    let s = a + b; // both < 2^61: no overflow
    if s >= P {
        s - P
    } else {
        s
    }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b {
        a - b
    } else {
        a + P - b
    }
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

fn pow(mut base: u64, mut exp: u64) -> u64 {
    let mut acc = 1;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}

/// Inverse of a non-zero element (Fermat: `a^(p−2)`).
fn inv(a: u64) -> u64 {
    pow(a, P - 2)
}

fn random_element<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v = rng.next_u64() & P; // 61 uniform bits; reject the single value P
        if v < P {
            return v;
        }
    }
}

fn chunks(secret: &[u8; 32]) -> [u64; CHUNKS] {
    let mut out = [0u64; CHUNKS];
    for (i, c) in secret.chunks(CHUNK).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        out[i] = u64::from_le_bytes(b);
    }
    out
}

/// Splits `secret` into one share per evaluation point in `xs` (distinct, non-zero, below
/// 2⁶¹ − 1); any `threshold` of them recover it, fewer reveal nothing.
pub fn split<R: RngCore + CryptoRng + ?Sized>(
    secret: &[u8; 32],
    threshold: usize,
    xs: &[u64],
    rng: &mut R,
) -> Result<Vec<Share>, SecAggError> {
    if threshold == 0 || threshold > xs.len() {
        return Err(SecAggError::Config(format!(
            "Shamir threshold {threshold} must be between 1 and the {} holders",
            xs.len()
        )));
    }
    check_points(xs.iter().copied())?;
    // coeffs[c][j]: coefficient of x^j of chunk c's polynomial.
    let coeffs: Vec<Vec<u64>> = chunks(secret)
        .iter()
        .map(|&s| {
            std::iter::once(s)
                .chain((1..threshold).map(|_| random_element(rng)))
                .collect()
        })
        .collect();
    Ok(xs
        .iter()
        .map(|&x| Share {
            x,
            y: coeffs
                .iter()
                .map(|poly| poly.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c)))
                .collect(),
        })
        .collect())
}

fn check_points(xs: impl Iterator<Item = u64>) -> Result<(), SecAggError> {
    let mut seen = std::collections::BTreeSet::new();
    for x in xs {
        if x == 0 || x >= P {
            return Err(SecAggError::Malformed(format!(
                "share point {x} is outside 1..2^61-1"
            )));
        }
        if !seen.insert(x) {
            return Err(SecAggError::Malformed(format!("two shares at point {x}")));
        }
    }
    Ok(())
}

/// Lagrange basis at `at` for the points `xs`: `l_i = Π_{j≠i} (at − x_j) / (x_i − x_j)`.
fn lagrange_basis(xs: &[u64], at: u64) -> Vec<u64> {
    xs.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let (num, den) = xs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold((1, 1), |(n, d), (_, &xj)| {
                    (mul(n, sub(at, xj)), mul(d, sub(xi, xj)))
                });
            mul(num, inv(den))
        })
        .collect()
}

/// Recovers the secret from at least `threshold` shares (the first `threshold` are used).
pub fn combine(shares: &[Share], threshold: usize) -> Result<[u8; 32], SecAggError> {
    if threshold == 0 || shares.len() < threshold {
        return Err(SecAggError::Malformed(format!(
            "{} share(s) given, {threshold} needed",
            shares.len()
        )));
    }
    let used = &shares[..threshold];
    check_points(used.iter().map(|s| s.x))?;
    if let Some(s) = used
        .iter()
        .find(|s| s.y.len() != CHUNKS || s.y.iter().any(|&v| v >= P))
    {
        return Err(SecAggError::Malformed(format!(
            "share at point {} is not {CHUNKS} field elements",
            s.x
        )));
    }
    let basis = lagrange_basis(&used.iter().map(|s| s.x).collect::<Vec<_>>(), 0);
    let mut out = [0u8; 32];
    for c in 0..CHUNKS {
        let v = used
            .iter()
            .zip(&basis)
            .fold(0, |acc, (s, &l)| add(acc, mul(s.y[c], l)));
        let bytes = v.to_le_bytes();
        let start = c * CHUNK;
        let len = CHUNK.min(32 - start);
        if bytes[len..].iter().any(|&b| b != 0) {
            return Err(SecAggError::Malformed(
                "shares are inconsistent (the interpolated secret is out of range)".into(),
            ));
        }
        out[start..start + len].copy_from_slice(&bytes[..len]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn secret(seed: u8) -> [u8; 32] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
    }

    #[test]
    fn field_arithmetic_matches_u128() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let (a, b) = (random_element(&mut rng), random_element(&mut rng));
            assert_eq!(
                u128::from(mul(a, b)),
                u128::from(a) * u128::from(b) % u128::from(P)
            );
            assert_eq!(
                add(a, b) as u128,
                (u128::from(a) + u128::from(b)) % u128::from(P)
            );
            assert_eq!(add(sub(a, b), b), a);
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1);
            }
        }
        assert_eq!(mul(P - 1, P - 1), 1); // (−1)² = 1
    }

    #[test]
    fn any_threshold_subset_recovers_the_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let s = secret(9);
        let xs: Vec<u64> = (1..=7).collect();
        let shares = split(&s, 4, &xs, &mut rng).unwrap();
        // Every 4-subset of the 7 shares, in every rotation, recovers it.
        for mask in 0u32..128 {
            if mask.count_ones() != 4 {
                continue;
            }
            let subset: Vec<Share> = (0..7)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| shares[i].clone())
                .collect();
            assert_eq!(combine(&subset, 4).unwrap(), s, "subset {mask:#b}");
        }
        // Large, scattered points work too.
        let far = [P - 1, 1 << 40, 12345];
        let shares = split(&s, 3, &far, &mut rng).unwrap();
        assert_eq!(combine(&shares, 3).unwrap(), s);
    }

    #[test]
    fn fewer_than_threshold_shares_fit_every_secret() {
        // t − 1 shares of secret A plus the point (0, B) define a polynomial of degree
        // t − 1 for any other secret B: a t-th share made from it completes a set that
        // recovers B. So t − 1 shares are consistent with every secret.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (a, b) = (secret(1), secret(200));
        let t = 3;
        let shares = split(&a, t, &[1, 2, 3], &mut rng).unwrap();
        let known = &shares[..t - 1];
        let mut xs: Vec<u64> = vec![0];
        xs.extend(known.iter().map(|s| s.x));
        let basis = lagrange_basis(&xs, 99);
        let y = chunks(&b)
            .iter()
            .enumerate()
            .map(|(c, &bc)| {
                let ys = std::iter::once(bc).chain(known.iter().map(|s| s.y[c]));
                ys.zip(&basis).fold(0, |acc, (v, &l)| add(acc, mul(v, l)))
            })
            .collect();
        let mut forged = known.to_vec();
        forged.push(Share { x: 99, y });
        assert_eq!(combine(&forged, t).unwrap(), b);
        assert_eq!(combine(&shares, t).unwrap(), a);
        assert!(combine(known, t).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let s = secret(2);
        assert!(split(&s, 0, &[1, 2], &mut rng).is_err());
        assert!(split(&s, 3, &[1, 2], &mut rng).is_err());
        assert!(split(&s, 2, &[1, 1], &mut rng).is_err());
        assert!(split(&s, 1, &[0], &mut rng).is_err());
        let mut shares = split(&s, 2, &[1, 2], &mut rng).unwrap();
        shares[1].y.pop();
        assert!(combine(&shares, 2).is_err());
        shares[1].x = 1;
        assert!(combine(&shares, 2).is_err());
    }
}
