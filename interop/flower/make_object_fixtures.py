"""Object ids that flwr 1.42.0 computes for a fixed record tree, for the byte-exact
interop test of `fedprompt-flower` (crates/fedprompt-flower/tests/flwr_objects.rs).

    FLWR_VENV/bin/python interop/flower/make_object_fixtures.py \
        crates/fedprompt-flower/tests/fixtures/flwr-objects.json

The same values are rebuilt in Rust: a = arange(6).reshape(2, 3) / 4, b = [[-1.5, 2.25]],
zeros = 4,000,000 float32 zeros (16 MB: four chunks, the middle two identical),
all float32.
"""

import json
import sys

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

SPEC = '{"labels":["money","sport"],"max_len":28,"method":{"type":"prompt","num_virtual_tokens":4}}'


def main() -> None:
    arrays = ArrayRecord(
        {
            "a": Array(np.arange(6, dtype=np.float32).reshape(2, 3) / np.float32(4)),
            "b": Array(np.array([[-1.5, 2.25]], dtype=np.float32)),
            "a_again": Array(np.arange(6, dtype=np.float32).reshape(2, 3) / np.float32(4)),
            "zeros": Array(np.zeros(4_000_000, dtype=np.float32)),
        }
    )
    metrics = MetricRecord({"num-examples": 12, "train_loss": 0.25})
    config = ConfigRecord({"server-round": 3, "learning-rate": 0.01, "fedprompt-spec": SPEC, "flag": True})
    rd = RecordDict({"arrays": arrays, "metrics": metrics, "config": config})
    out = {
        "flwr": flwr.__version__,
        "arrays": {k: v.object_id for k, v in arrays.items()},
        "zeros_chunks": [cid for cid, _ in arrays["zeros"].slice_array()],
        "array_record": arrays.object_id,
        "metric_record": metrics.object_id,
        "config_record": config.object_id,
        "record_dict": rd.object_id,
        "spec": SPEC,
    }
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
