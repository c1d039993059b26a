//! The RDP accountant against Google's `dp-accounting` (fixture made by
//! `scripts/make_dp_reference.py`): every epsilon within 1% relative.

use fedprompt_fl::privacy::RdpAccountant;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    q: f64,
    z: f64,
    rounds: u64,
    delta: f64,
    epsilon: f64,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

fn reference() -> Reference {
    let text = include_str!("fixtures/dp_reference.json");
    serde_json::from_str(text).expect("fixture parses")
}

#[test]
fn epsilon_matches_dp_accounting_within_one_percent() {
    let r = reference();
    assert!(r.cases.len() >= 100, "the grid is too small");
    let mut worst = (0.0f64, String::new());
    for c in &r.cases {
        let got = RdpAccountant::new(c.q, c.z)
            .expect("valid")
            .epsilon(c.rounds, c.delta);
        let rel = if c.epsilon == 0.0 {
            got.abs()
        } else {
            ((got - c.epsilon) / c.epsilon).abs()
        };
        let what = format!(
            "q={} z={} T={} delta={}: ours {got}, dp-accounting {}",
            c.q, c.z, c.rounds, c.delta, c.epsilon
        );
        assert!(rel <= 0.01, "{what} (relative error {rel})");
        if rel > worst.0 {
            worst = (rel, what);
        }
    }
    eprintln!("max relative error {:.3e} at {}", worst.0, worst.1);
}

#[test]
fn the_grid_covers_full_participation_small_rates_and_long_runs() {
    let r = reference();
    assert!(r.cases.iter().any(|c| c.q == 1.0));
    assert!(r.cases.iter().any(|c| c.q <= 0.01));
    assert!(r.cases.iter().any(|c| c.rounds >= 1000));
    assert!(r.cases.iter().any(|c| c.z <= 0.5) && r.cases.iter().any(|c| c.z >= 5.0));
}
