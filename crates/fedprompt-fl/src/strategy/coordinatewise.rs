//! Coordinate-wise aggregation: each parameter value of the new global is a function of
//! that value across the clients' updates (median, trimmed mean). Weights are not used: a
//! client's claimed example count cannot buy it influence.

use crate::error::{FlError, Result};
use crate::params::{Params, Tensor};
use crate::update::ClientUpdate;

/// Applies `f` to the sorted values of every coordinate across `results`, in f64.
///
/// Validates every update against `global` (layout and finiteness) first.
pub(crate) fn aggregate_coordinatewise(
    round: u64,
    global: &Params,
    results: &[ClientUpdate],
    f: impl Fn(&[f64]) -> f64,
) -> Result<Params> {
    if results.is_empty() {
        return Err(FlError::NoResults { round });
    }
    let layout = global.layout();
    for u in results {
        u.validate(&layout)?;
    }
    let mut out = Params::new();
    let mut column = vec![0.0f64; results.len()];
    for (name, g) in global.iter() {
        let sources: Vec<&[f32]> = results
            .iter()
            .map(|u| u.params.get(name).map(|t| t.data()).unwrap_or(&[]))
            .collect();
        let mut data = Vec::with_capacity(g.len());
        for i in 0..g.len() {
            for (c, s) in column.iter_mut().zip(&sources) {
                *c = f64::from(s[i]);
            }
            column.sort_by(f64::total_cmp);
            data.push(f(&column) as f32);
        }
        out.insert(name, Tensor::new(g.shape().to_vec(), data)?);
    }
    out.check_finite()?;
    Ok(out)
}

/// Median of sorted values (mean of the middle two for an even count).
pub(crate) fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean of sorted values after dropping `k` from each end.
pub(crate) fn trimmed_mean_sorted(v: &[f64], k: usize) -> f64 {
    let kept = &v[k..v.len() - k];
    kept.iter().sum::<f64>() / kept.len() as f64
}
