"""Tensors on the widget wire: round trips, precision, bytes, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbinterp.widgets._buffers import decode, encode, pack


def test_float16_round_trip_is_within_half_precision():
    x = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    meta = encode(x, "float16")
    assert meta["dtype"] == "float16" and meta["shape"] == [64, 64] and meta["scale"] == pytest.approx(1.0, abs=0)  # a power of two the encoder picks, not a computed value
    assert len(meta["data"]) == 64 * 64 * 2
    np.testing.assert_array_equal(decode(meta), x.numpy().astype(np.float16).astype(np.float32))


def test_float16_rescales_instead_of_overflowing():
    x = torch.tensor([1e6, -3e7, 0.5])
    meta = encode(x, "float16")
    assert meta["scale"] > 1
    np.testing.assert_allclose(decode(meta)[:2], x.numpy()[:2], rtol=1e-3)
    assert np.isfinite(decode(meta)).all()


def test_uint8_maps_min_and_max_exactly_and_rounds_within_half_a_step():
    x = torch.linspace(-2.0, 3.0, 1000)
    meta = encode(x, "uint8")
    assert len(meta["data"]) == 1000
    assert meta["offset"] == pytest.approx(-2.0) and meta["scale"] == pytest.approx(5.0 / 255)
    back = decode(meta)
    assert back[0] == pytest.approx(-2.0) and back[-1] == pytest.approx(3.0, rel=1e-6)
    assert np.abs(back - x.numpy()).max() <= meta["scale"] / 2 + 1e-6


def test_uint8_of_a_constant_tensor():
    meta = encode(torch.full((3, 3), 0.25), "uint8")
    np.testing.assert_allclose(decode(meta), 0.25)


def test_float32_is_exact_and_little_endian():
    x = torch.tensor([0.1234567, -1e-30])
    meta = encode(x, "float32")
    assert meta["data"] == np.array([0.1234567, -1e-30], "<f4").tobytes()
    np.testing.assert_array_equal(decode(meta), x.numpy())


def test_refuses_nan_and_unknown_dtypes():
    with pytest.raises(ValueError, match="NaN"):
        encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="use float16"):
        encode(torch.ones(2), "int64")


def test_pack_moves_bytes_into_buffers_by_index():
    metas, buffers = pack({"a": encode(torch.ones(2), "float32"), "b": encode(torch.zeros(3), "uint8")})
    assert metas["a"]["buffer"] == 0 and metas["b"]["buffer"] == 1
    assert "data" not in metas["a"] and [len(b) for b in buffers] == [8, 3]
