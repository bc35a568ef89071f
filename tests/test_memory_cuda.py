"""pyxccl.memory's adapters on real CUDA memory: torch CUDA tensors, CuPy arrays, the CUDA array
interface and DLPack capsules of both. Skipped where no CUDA device (and library) is present."""

from __future__ import annotations

import numpy as np
import pytest

from pyxccl.errors import InvalidArgument
from pyxccl.memory import as_buffer
from pyxccl.comm import checks

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)


def _dev(t) -> str:
    return f"cuda:{t.device.index}"


def test_torch_cuda_tensors_are_device_buffers_of_the_same_memory():
    t = torch.arange(10, dtype=torch.float32, device="cuda")
    b = as_buffer(t, "x")
    assert (b.device, b.address, b.nbytes, b.count, b.dtype.name) == (_dev(t), t.data_ptr(), 40, 10, "float32")
    assert b.owner is t and not b.on_host
    with pytest.raises(InvalidArgument, match="has no host view"):
        b.host_view()
    part = b.part(2, 3)
    assert (part.address, part.count, part.device) == (t.data_ptr() + 8, 3, _dev(t))
    bf = as_buffer(torch.zeros(4, dtype=torch.bfloat16, device="cuda"), "x")
    assert (bf.dtype.name, bf.nbytes) == ("bfloat16", 8)


def test_torch_cuda_views_and_non_contiguous_tensors():
    t = torch.zeros(4, 6, dtype=torch.float16, device="cuda")
    row = as_buffer(t[1], "x")
    assert (row.address, row.count) == (t.data_ptr() + 12, 6)
    with pytest.raises(InvalidArgument, match="x"):
        as_buffer(t[:, 1], "x")  # strided: not one run of memory


def test_dlpack_of_torch_cuda_tensors():
    t = torch.arange(6, dtype=torch.int32, device="cuda")

    class OnlyDLPack:
        def __dlpack__(self, **kw):
            return t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return t.__dlpack_device__()

    b = as_buffer(OnlyDLPack(), "x")
    assert (b.device, b.address, b.count, b.dtype.name) == (_dev(t), t.data_ptr(), 6, "int32")


def test_cupy_arrays_and_the_cuda_array_interface():
    cp = pytest.importorskip("cupy")
    a = cp.arange(12, dtype=cp.float64)
    b = as_buffer(a, "x")
    assert (b.device, b.address, b.count, b.dtype.name) == (f"cuda:{a.device.id}", a.data.ptr, 12, "float64")

    class OnlyCAI:  # what Numba or any other library shows: the interface alone
        __cuda_array_interface__ = a.__cuda_array_interface__

    c = as_buffer(OnlyCAI(), "x")
    assert (c.device, c.address, c.count) == (b.device, b.address, 12)


def test_a_call_with_host_and_device_buffers_is_refused_naming_both():
    t = torch.zeros(8, device="cuda")
    with pytest.raises(InvalidArgument, match="input is on cpu but output is on cuda:0"):
        checks.plan_elementwise("allreduce", 0, 2, np.zeros(8, np.float32), t, "sum")
    call = checks.plan_elementwise("allreduce", 0, 2, t, None, "sum")
    assert (call.device, call.count, call.inplace) == (_dev(t), 8, True)
