//! Privacy accounting for client-level DP: how much `(ε, δ)` a run has spent.
//!
//! - `rdp`: Rényi DP of the Poisson-subsampled Gaussian mechanism at each order;
//! - `conversion`: RDP to `(ε, δ)` with the improved conversion;
//! - `accountant`: [`RdpAccountant`] (composition over rounds) and [`PrivacyAccounting`]
//!   (a run's `δ`, budget `max_epsilon` and DP mode);
//! - `config`: [`PrivacyConfig`], the `[privacy]` table, and [`privacy_accounting`].
//!
//! Checked against Google's `dp-accounting` (`scripts/make_dp_reference.py`, fixture
//! `tests/fixtures/dp_reference.json`). The mechanism itself (clipping, noise) is
//! [`crate::dp`].

mod accountant;
mod config;
mod conversion;
mod rdp;

pub use accountant::{DpMode, PrivacyAccounting, RdpAccountant};
pub use config::{privacy_accounting, PrivacyConfig};
pub use conversion::{rdp_to_epsilon, EpsilonAt};
pub use rdp::{default_orders, subsampled_gaussian_rdp};
