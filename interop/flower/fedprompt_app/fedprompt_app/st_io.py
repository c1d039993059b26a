"""Safetensors read/write that keeps the file's tensor order.

Reading uses the `safetensors` package (safetensors.numpy) when it is installed, else a
small numpy-only reader of the same format (8-byte little-endian header size, JSON
header, raw little-endian data), so the ServerApp also runs in a SuperLink environment
that has numpy (a flwr dependency) but not safetensors. Writing is numpy-only so that
the tensors keep their order.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v).str.lstrip("<>|="): k for k, v in _DTYPES.items()}


def header_order(path: str | Path) -> list[str]:
    """Tensor names in the order the file's JSON header lists them."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n), object_pairs_hook=OrderedDict)
    return [k for k in header if k != "__metadata__"]


def load(path: str | Path) -> "OrderedDict[str, np.ndarray]":
    """All tensors of a safetensors file, in the header's order."""
    order = header_order(path)
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    except ImportError:
        tensors = _load_plain(path)
    return OrderedDict((k, np.ascontiguousarray(tensors[k])) for k in order)


def _load_plain(path: str | Path) -> dict[str, np.ndarray]:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if v["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: {k}: dtype {v['dtype']} not supported")
        start, end = v["data_offsets"]
        dt = np.dtype(_DTYPES[v["dtype"]]).newbyteorder("<")
        out[k] = np.frombuffer(data[start:end], dtype=dt).reshape(v["shape"]).astype(dt.newbyteorder("="))
    return out


def save(tensors: "dict[str, np.ndarray]", path: str | Path) -> None:
    """Write tensors to a safetensors file, header and data in the dict's order.

    (safetensors.numpy.save_file would sort the names; the format does not require it.)
    """
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    header: "OrderedDict[str, dict]" = OrderedDict()
    chunks, offset = [], 0
    for k, v in tensors.items():
        name = _NAMES.get(v.dtype.str.lstrip("<>|="))
        if name is None:
            raise ValueError(f"{k}: dtype {v.dtype} not supported")
        b = v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes()
        header[k] = {"dtype": name, "shape": list(v.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in chunks:
            f.write(b)
