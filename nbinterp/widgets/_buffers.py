"""Tensors across the widget wire: `{dtype, shape, data, scale, offset}` with
`data` raw little-endian bytes, decoded by `js/lib/codec.ts`. The logical
value is `offset + raw * scale`. Never `.tolist()` JSON, never base64."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

WireDType = Literal["float16", "float32", "uint8"]
FLOAT16_MAX = 65504.0


def _as_numpy(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(tensor, dtype=np.float32)


def encode(tensor: torch.Tensor | np.ndarray, dtype: WireDType = "float16") -> dict[str, Any]:
    """One tensor as wire metadata plus its bytes (under "data").

    float16 keeps ~3.3 significant digits; values beyond float16's range are
    sent divided by a power-of-two `scale`, so nothing overflows to inf.
    uint8 maps [min, max] onto 0..255 (`offset` = min, `scale` = step).
    """
    values = _as_numpy(tensor)
    if not np.isfinite(values).all():
        raise ValueError("cannot send a tensor with NaN or infinite values to the view")
    meta: dict[str, Any] = {"dtype": dtype, "shape": list(values.shape), "scale": 1.0, "offset": 0.0}
    if dtype == "float32":
        raw = values.astype("<f4")
    elif dtype == "float16":
        peak = float(np.abs(values).max()) if values.size else 0.0
        scale = 1.0
        while peak / scale > FLOAT16_MAX / 2:
            scale *= 2.0 ** 8
        meta["scale"] = scale
        raw = (values / scale).astype("<f2")
    elif dtype == "uint8":
        low = float(values.min()) if values.size else 0.0
        high = float(values.max()) if values.size else 0.0
        step = (high - low) / 255.0
        meta["offset"], meta["scale"] = low, step
        raw = np.zeros(values.shape, np.uint8) if step == 0 else np.rint((values - low) / step).astype(np.uint8)
    else:
        raise ValueError(f"unsupported wire dtype {dtype!r}: use float16, float32 or uint8")
    meta["data"] = raw.tobytes()
    return meta


def decode(meta: dict[str, Any], data: bytes | memoryview | None = None) -> np.ndarray:
    """The inverse of `encode` (float32), as the JS codec computes it."""
    raw_dtype = {"float16": "<f2", "float32": "<f4", "uint8": "u1"}[meta["dtype"]]
    raw = np.frombuffer(meta["data"] if data is None else data, dtype=raw_dtype)
    values = meta.get("offset", 0.0) + raw.astype(np.float32) * meta.get("scale", 1.0)
    return values.astype(np.float32).reshape(meta["shape"])


def pack(tensors: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[bytes]]:
    """For a custom message: moves each tensor's bytes into the message's
    buffer list and leaves `buffer: index` in its metadata."""
    metas: dict[str, Any] = {}
    buffers: list[bytes] = []
    for name, meta in tensors.items():
        meta = dict(meta)
        buffers.append(meta.pop("data"))
        meta["buffer"] = len(buffers) - 1
        metas[name] = meta
    return metas, buffers


def wire_size(meta: dict[str, Any]) -> int:
    return len(meta["data"])
