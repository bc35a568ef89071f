"""Streaming copies (``pyxccl.runtime.kernels.nt_copy``): the non-temporal loop moves exactly the bytes asked
for at every alignment, ``bulk_copy`` streams only what it should, and the collectives that copy
whole blocks at once stay exact with every such copy streamed (``test_copy_at_once``)."""

from __future__ import annotations

import numpy as np
import pytest

from pyxccl import config
from pyxccl.runtime.kernels import nt_copy

needs_loop = pytest.mark.skipif(not nt_copy.available(), reason="llvmlite is not installed (pyxccl[fast])")


@needs_loop
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 127, 4096 + 17, (1 << 20) + 5])
@pytest.mark.parametrize("dst_off", [0, 1, 15, 16, 48, 63])
def test_exact_bytes_at_every_alignment(n, dst_off):
    rng = np.random.default_rng(n + dst_off)
    src = rng.integers(0, 256, n + 64, dtype=np.uint8)
    dst = np.zeros(n + dst_off + 128, np.uint8)
    nt_copy.copy_bytes(dst.ctypes.data + dst_off, src.ctypes.data + 3, n)
    assert np.array_equal(dst[dst_off:dst_off + n], src[3:3 + n])
    assert not dst[:dst_off].any() and not dst[dst_off + n:].any()  # nothing outside the range


@pytest.fixture
def streamed(monkeypatch):
    """The byte counts that went through the streaming loop (counted, then copied for real)."""
    calls: list[int] = []
    real = nt_copy.copy_bytes

    def counting(dst: int, src: int, n: int) -> None:
        calls.append(n)
        real(dst, src, n)

    monkeypatch.setattr(nt_copy, "copy_bytes", counting)
    return calls


def _with_limit(monkeypatch, text: str) -> None:
    monkeypatch.setenv("PYXCCL_STREAM_MIN_BYTES", text)
    monkeypatch.setattr(config, "_cached", None)  # re-read now; the cached one comes back after the test


@needs_loop
def test_bulk_copy_streams_large_contiguous_blocks_only(monkeypatch, streamed):
    _with_limit(monkeypatch, "4K")
    src = np.arange(3000, dtype=np.float32)
    dst = np.zeros_like(src)
    nt_copy.bulk_copy(dst, src)  # 12000 bytes
    assert streamed == [12000] and np.array_equal(dst, src)
    small = np.zeros(1000, np.float32)
    nt_copy.bulk_copy(small, src[:1000])  # under the limit
    strided = np.zeros(6000, np.float32)[::2]
    nt_copy.bulk_copy(strided, src)  # not contiguous
    cast = np.zeros(3000, np.float64)
    nt_copy.bulk_copy(cast, src)  # another dtype: numpy casts
    both = np.arange(6000, dtype=np.float32)
    nt_copy.bulk_copy(both[1000:5000], both[:4000])  # overlapping: numpy moves it
    assert streamed == [12000]
    assert np.array_equal(both[1000:5000], np.arange(4000, dtype=np.float32))
    assert np.array_equal(small, src[:1000]) and np.array_equal(strided, src) and np.array_equal(cast, src)


def test_bulk_copy_never_streams_when_switched_off(monkeypatch, streamed):
    _with_limit(monkeypatch, "0")
    src = np.arange(1 << 20, dtype=np.float32)
    dst = np.zeros_like(src)
    nt_copy.bulk_copy(dst, src)
    assert streamed == [] and np.array_equal(dst, src)


def test_the_limit_is_read_from_the_environment(monkeypatch):
    _with_limit(monkeypatch, "2M")
    assert nt_copy.min_bytes() == 2 << 20
    _with_limit(monkeypatch, "off")
    assert nt_copy.min_bytes() == 0
    with pytest.raises(config.ConfigError, match="PYXCCL_STREAM_MIN_BYTES"):
        config.load({"PYXCCL_STREAM_MIN_BYTES": "-1"})


def test_without_llvmlite_bulk_copy_is_numpy(monkeypatch, streamed):
    monkeypatch.setattr(nt_copy, "_state", {"loop": None})  # as after a failed import
    _with_limit(monkeypatch, "1K")
    assert not nt_copy.available()
    src = np.arange(5000, dtype=np.int32)
    dst = np.zeros_like(src)
    nt_copy.bulk_copy(dst, src)
    assert streamed == [] and np.array_equal(dst, src)
    with pytest.raises(RuntimeError, match="not available"):
        nt_copy.copy_bytes(dst.ctypes.data, src.ctypes.data, 64)
