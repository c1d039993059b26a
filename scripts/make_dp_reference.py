#!/usr/bin/env python3
"""Make the privacy-accounting reference for the Rust crate `fedprompt-fl`.

Writes crates/fedprompt-fl/tests/fixtures/dp_reference.json: for each (q, z, T, delta) of a
grid, the epsilon that Google's `dp-accounting` RDP accountant (default orders, add-or-remove
neighbours) gives for T self-composed rounds of the Poisson-subsampled Gaussian mechanism
(`PoissonSampledDpEvent(q, GaussianDpEvent(z))`; q = 1 is the plain Gaussian mechanism),
with the optimal RDP order. The Rust test `tests/privacy.rs` asserts our accountant within
1% relative of every epsilon.

Rerun (CPU, a few seconds):

    python3 -m venv /tmp/dpvenv && /tmp/dpvenv/bin/pip install dp-accounting==0.6.0
    /tmp/dpvenv/bin/python scripts/make_dp_reference.py
"""

import itertools
import json
import pathlib
from importlib import metadata

import dp_accounting
from absl import logging
from dp_accounting.rdp import rdp_privacy_accountant as rdp

OUT = (
    pathlib.Path(__file__).resolve().parent.parent
    / "crates/fedprompt-fl/tests/fixtures/dp_reference.json"
)

# q = 1 (every client every round), a fraction, and small rates; z from 0.5 to 5;
# T from 1 to 1000; two deltas.
QS = [1.0, 0.5, 0.1, 0.01, 0.001]
ZS = [0.5, 0.8, 1.0, 1.5, 2.0, 5.0]
TS = [1, 10, 20, 100, 1000]
DELTAS = [1e-5, 1e-3]


def epsilon(q: float, z: float, t: int, delta: float) -> tuple[float, float]:
    acc = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    if q == 1.0:
        event = dp_accounting.GaussianDpEvent(z)
    acc.compose(dp_accounting.SelfComposedDpEvent(event, t))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def main() -> None:
    # dp-accounting warns (and excludes the order) when a fractional-order series does not
    # settle, as it does for orders near 1 with large q; the Rust side does the same.
    logging.set_verbosity(logging.ERROR)
    cases = []
    for q, z, t, delta in itertools.product(QS, ZS, TS, DELTAS):
        eps, order = epsilon(q, z, t, delta)
        cases.append(
            {"q": q, "z": z, "rounds": t, "delta": delta, "epsilon": eps, "order": order}
        )
    doc = {
        "source": "dp-accounting RdpAccountant, default orders, add-or-remove-one",
        "versions": {
            "dp-accounting": metadata.version("dp-accounting"),
            "numpy": metadata.version("numpy"),
            "scipy": metadata.version("scipy"),
        },
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")
    ex = epsilon(1.0, 1.0, 20, 1e-5)
    print(f"example: q=1, z=1.0, T=20, delta=1e-5 -> epsilon {ex[0]:.6f} (order {ex[1]})")


if __name__ == "__main__":
    main()
