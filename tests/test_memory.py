"""pyxccl.memory: every adapter makes a Buffer of the caller's own memory (no copy), device memory has no
host view, and a call's buffers must be on one device (comm.checks)."""

from __future__ import annotations

import array
import ctypes
import threading

import ml_dtypes
import numpy as np
import pytest

import pyxccl
from pyxccl.comm import checks
from pyxccl.errors import InvalidArgument
from pyxccl.memory import HOST, Buffer, DeviceArray, Region, as_buffer, is_host


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


# ---------------------------------------------------------------------- fakes of foreign arrays

class FakeCudaArray:
    """A CUDA array as CuPy or Numba show it: ``__cuda_array_interface__`` (no memory behind it)."""

    def __init__(self, ptr=0x7F0000000000, shape=(8,), typestr="<f4", readonly=False, strides=None, version=3,
                 device=None, **extra):
        self.__cuda_array_interface__ = dict(shape=shape, typestr=typestr, data=(ptr, readonly), strides=strides,
                                             version=version, **extra)
        if device is not None:
            self.__dlpack_device__ = lambda: (2, device)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLManagedVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype, _capsule_new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class FakeDLPackCuda:
    """A DLPack producer of CUDA memory without the CUDA array interface: its capsule is real, the
    pointer is not (nothing reads it). ``versioned`` gives a DLPack 1.x capsule with ``flags``."""

    def __init__(self, ptr=0x7F0000001000, shape=(2, 3), code=4, bits=16, device=1, byte_offset=0, strides=None,
                 versioned=False, flags=0):
        self.device = device
        self._shape = (ctypes.c_int64 * len(shape))(*shape)
        self._strides = None if strides is None else (ctypes.c_int64 * len(strides))(*strides)
        t = _DLTensor(ptr, _DLDevice(2, device), len(shape), _DLDataType(code, bits, 1),
                      ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64)),
                      None if strides is None else ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64)),
                      byte_offset)
        self._versioned = versioned
        self._managed = _DLManagedVersioned(1, 0, None, None, flags, t) if versioned else _DLManaged(t, None, None)

    def __dlpack__(self, **kw):
        name = b"dltensor_versioned" if self._versioned else b"dltensor"
        return _capsule_new(ctypes.addressof(self._managed), name, None)

    def __dlpack_device__(self):
        return (2, self.device)


class NumpyViaDLPack:
    """An array that only speaks DLPack (CPU memory: numpy's own)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


# ---------------------------------------------------------------------- host adapters

def test_numpy_arrays_are_host_buffers_of_the_same_memory():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = as_buffer(a, "x")
    assert (b.device, b.count, b.nbytes, b.dtype.name, b.on_host) == (HOST, 12, 48, "float32", True)
    assert b.owner is a and b.address == _addr(a) and b.region == Region("cpu", _addr(a), 48)
    b.host_view()[5] = -1
    assert a[1, 1] == -1 and b.array is b.host_view()
    assert as_buffer(np.zeros(3, ml_dtypes.bfloat16), "x").dtype.name == "bfloat16"
    assert as_buffer(b, "x") is b  # a Buffer is taken as it is
    with pytest.raises(InvalidArgument, match=r"output: the array is not C-contiguous; pass np.ascontiguousarray"):
        as_buffer(a[:, ::2], "output")
    with pytest.raises(InvalidArgument, match=r"input: dtype complex64 is not supported; use one of int8, .*float8"):
        as_buffer(np.zeros(2, np.complex64), "input")
    with pytest.raises(InvalidArgument, match="input: dtype >f4 is big-endian"):
        as_buffer(np.zeros(2, ">f4"), "input")


def test_buffer_protocol_objects_view_the_same_memory():
    ba = bytearray(8)
    b = as_buffer(ba, "x")
    b.host_view()[3] = 7
    assert (b.count, b.dtype.name, ba[3], b.owner is ba) == (8, "uint8", 7, True)
    arr = array.array("d", [1.0, 2.0, 3.0])
    b = as_buffer(memoryview(arr), "x")
    b.host_view()[2] = 9.5
    assert (b.count, b.dtype.name, arr[2]) == (3, "float64", 9.5)
    assert b.slice(1, 2).tolist() == [2.0, 9.5]  # no reshape on a memoryview: a slice of the host view
    assert as_buffer(array.array("i", [4, 5]), "x").host_view().tolist() == [4, 5]
    with pytest.raises(InvalidArgument, match="x: the buffer is not C-contiguous"):
        as_buffer(memoryview(bytearray(8))[::2], "x")
    with pytest.raises(InvalidArgument, match="input: expected a numpy array, .*got object"):
        as_buffer(object(), "input")


def test_writable_arguments_refuse_read_only_memory():
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    assert as_buffer(ro, "input").count == 4  # reading is fine
    for obj in (ro, bytes(8), NumpyViaDLPack(ro), FakeCudaArray(readonly=True, device=0),
                FakeDLPackCuda(versioned=True, flags=1)):
        with pytest.raises(InvalidArgument, match="output: the buffer is read-only but the call writes into it"):
            as_buffer(obj, "output", writable=True)
    assert as_buffer(FakeDLPackCuda(versioned=True, flags=0), "output", writable=True).count == 6


def test_zero_size_buffers():
    for obj in (np.empty(0, np.float32), bytearray(0), FakeCudaArray(ptr=0, shape=(0,), device=0)):
        b = as_buffer(obj, "x", writable=True)
        assert (b.count, b.nbytes) == (0, 0)
    assert as_buffer(np.empty((3, 0), np.int64), "x").count == 0
    d = as_buffer(FakeCudaArray(ptr=0, shape=(0, 5), device=0), "x")
    assert not d.overlaps(d)


def test_numpy_through_dlpack():
    a = np.arange(6, dtype=np.int32)
    b = as_buffer(NumpyViaDLPack(a), "x", writable=True)
    assert (b.device, b.count, b.dtype.name, b.address) == ("cpu", 6, "int32", _addr(a))
    b.host_view()[0] = 42
    assert a[0] == 42


def test_torch_cpu_tensors():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    from pyxccl.memory import tensor_array, tensor_bytes

    for dtype, name in [(torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float8_e4m3fn, "float8_e4m3"),
                        (torch.uint64, "uint64")]:
        t = torch.zeros(2, 3, dtype=dtype)
        b = as_buffer(t, "x")
        assert (b.device, b.count, b.dtype.name, b.address, b.owner is t) == ("cpu", 6, name, t.data_ptr(), True)
        b.host_view()[4] = 1
        assert float(t[1, 1]) == 1.0
        assert tensor_array(t).__array_interface__["data"][0] == t.data_ptr()
    t = torch.arange(6.0, requires_grad=True)
    assert as_buffer(t, "x").host_view().tolist() == list(range(6))
    part = as_buffer(t.detach().reshape(2, 3), "x").slice(2, 3)
    assert isinstance(part, torch.Tensor) and part.tolist() == [2.0, 3.0, 4.0]
    c = torch.zeros(3, dtype=torch.complex64)
    assert tensor_bytes(c).nbytes == 24 and tensor_bytes(torch.tensor(True)).tolist() == [1]
    assert tensor_bytes(torch.zeros(2, dtype=torch.bfloat16)).nbytes == 4
    with pytest.raises(InvalidArgument, match="input: torch dtype torch.int16 is not supported; use one of"):
        as_buffer(torch.zeros(2, dtype=torch.int16), "input")
    with pytest.raises(InvalidArgument, match="x: the tensor is not contiguous; pass tensor.contiguous()"):
        as_buffer(torch.zeros(3, 3).t(), "x")
    with pytest.raises(InvalidArgument, match="x: the tensor is not contiguous"):
        tensor_bytes(torch.zeros(3, 3).t(), "x")
    with pytest.raises(InvalidArgument, match="x: tensors on meta are not supported"):
        as_buffer(torch.zeros(2, device="meta"), "x")


# ---------------------------------------------------------------------- device adapters

def test_cuda_array_interface_gives_a_device_buffer():
    f = FakeCudaArray(ptr=0x7F0000000100, shape=(4, 2), typestr="<f2", device=3)
    b = as_buffer(f, "x", writable=True)
    assert (b.device, b.address, b.nbytes, b.count, b.dtype.name) == ("cuda:3", 0x7F0000000100, 16, 8, "float16")
    assert b.owner is f and b.array is None and not b.on_host and not is_host(b.device)
    assert b.region == Region("cuda:3", 0x7F0000000100, 16)
    contiguous = FakeCudaArray(shape=(2, 3), typestr="<i8", strides=(24, 8), device=0)
    assert as_buffer(contiguous, "x").count == 6
    with pytest.raises(InvalidArgument, match="x: the array is not C-contiguous"):
        as_buffer(FakeCudaArray(shape=(2, 3), strides=(4, 8), device=0), "x")
    with pytest.raises(InvalidArgument, match=r"x: __cuda_array_interface__ version 1 is not supported"):
        as_buffer(FakeCudaArray(version=1, device=0), "x")
    with pytest.raises(InvalidArgument, match="x: dtype complex64 is not supported"):
        as_buffer(FakeCudaArray(typestr="<c8", device=0), "x")
    with pytest.raises(InvalidArgument, match="x: masked CUDA arrays are not supported"):
        as_buffer(FakeCudaArray(mask=object(), device=0), "x")


def test_cuda_array_interface_without_a_device_asks_the_driver():
    # a made-up pointer: no CUDA driver here, or one that does not know it
    with pytest.raises(InvalidArgument, match="x: cannot tell which GPU holds its memory"):
        as_buffer(FakeCudaArray(ptr=0x10), "x")


def test_dlpack_cuda_capsules_are_read_through_ctypes():
    f = FakeDLPackCuda(ptr=0x7F0000001000, shape=(2, 3), code=4, bits=16, device=1, byte_offset=256)
    b = as_buffer(f, "x", writable=True)
    assert (b.device, b.address, b.count, b.nbytes, b.dtype.name) == ("cuda:1", 0x7F0000001100, 6, 12, "bfloat16")
    assert b.owner is f
    fp8 = as_buffer(FakeDLPackCuda(code=10, bits=8, versioned=True), "x")
    assert (fp8.dtype.name, fp8.count) == ("float8_e4m3", 6)
    assert as_buffer(FakeDLPackCuda(shape=(2, 3), strides=(3, 1), code=2, bits=32), "x").count == 6
    with pytest.raises(InvalidArgument, match="x: the array is not C-contiguous"):
        as_buffer(FakeDLPackCuda(shape=(2, 3), strides=(1, 2)), "x")
    with pytest.raises(InvalidArgument, match=r"x: DLPack dtype \(code 5, 64 bits, 1 lanes\) is not supported"):
        as_buffer(FakeDLPackCuda(code=5, bits=64), "x")


def test_dlpack_capsules_of_real_producers_are_read_right():
    from pyxccl.memory import dlpack

    a = np.arange(12.0).reshape(3, 4)
    a.flags.writeable = False
    capsule = a.__dlpack__(max_version=(1, 0))  # numpy's versioned capsule carries the read-only flag

    class Versioned:
        def __dlpack__(self):
            return capsule

    t = dlpack.read(Versioned(), "x")
    assert (t.address, t.device, t.shape, t.dtype, t.readonly) == (_addr(a), (1, 0), (3, 4), (2, 64, 1), True)
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    x = torch.zeros(3, 5, dtype=torch.bfloat16)[:, 1:]  # torch's legacy capsule, strided
    t = dlpack.read(x, "x")
    assert (t.address, t.shape, t.strides, dlpack.DTYPE_NAMES[t.dtype]) == (x.data_ptr(), (3, 4), (5, 1), "bfloat16")


def test_dlpack_on_other_devices_is_refused():
    class OnMetal(NumpyViaDLPack):
        def __dlpack_device__(self):
            return (8, 0)

    with pytest.raises(InvalidArgument, match=r"x: its memory is on DLPack device type 8 \(kDLMetal\)"):
        as_buffer(OnMetal(np.zeros(2)), "x")


def test_device_memory_has_no_host_view():
    b = as_buffer(FakeCudaArray(shape=(10,), device=2), "x")
    with pytest.raises(InvalidArgument, match="the memory is on cuda:2 and has no host view"):
        b.host_view()
    part = b.slice(4, 3)  # no reshape on the owner: a Buffer of that memory
    assert isinstance(part, Buffer) and (part.device, part.address, part.count) == ("cuda:2", b.address + 16, 3)
    assert part.overlaps(b) and not b.part(0, 4).overlaps(part)
    other = as_buffer(FakeCudaArray(ptr=b.address, shape=(10,), device=3), "y")
    assert not other.overlaps(b)  # the same address on another GPU is other memory


# ---------------------------------------------------------------------- the checks of a call

def _cuda(n, device=0, ptr=0x7F0000000000):
    return FakeCudaArray(ptr=ptr, shape=(n,), device=device)


def test_a_call_on_one_cuda_device_is_laid_out_for_it():
    src, dst = _cuda(8, ptr=0x7F0000000000), _cuda(8, ptr=0x7F0000010000)
    call = checks.plan_elementwise("allreduce", 0, 2, src, dst, "sum")
    assert (call.device, call.count, call.inplace, call.result is dst) == ("cuda:0", 8, False, True)
    assert isinstance(call.input, DeviceArray) and (call.input.address, call.input.size) == (0x7F0000000000, 8)
    assert (call.output.address, call.output.device, call.input[2:5].address) == (0x7F0000010000, "cuda:0",
                                                                                  0x7F0000000000 + 8)
    call = checks.plan_elementwise("allreduce", 0, 2, src, src, "sum")
    assert call.inplace
    whole = _cuda(8)
    block = FakeCudaArray(ptr=whole.__cuda_array_interface__["data"][0] + 16, shape=(4,), device=0)
    call = checks.plan_gatherlike("allgather", 1, 2, block, whole)  # rank 1's block of the output: in place
    assert (call.device, call.count, call.inplace) == ("cuda:0", 4, True)
    assert (call.input.address, call.input.size) == (whole.__cuda_array_interface__["data"][0] + 16, 4)
    call = checks.plan_scatterlike("reducescatter", 0, 2, whole, None, "sum")
    assert isinstance(call.result, Buffer) and (call.result.count, call.device) == (4, "cuda:0")
    call = checks.plan_elementwise("allreduce", 0, 2, _cuda(0, ptr=0), None, "sum")
    assert (call.count, call.device) == (0, "cuda:0")
    b = checks.plan_p2p(_cuda(4), 1, 2, "buf", writable=False)  # sent through host memory
    assert (b.device, b.count) == ("cuda:0", 4)


@pytest.mark.parametrize("plan,n_in,n_out", [
    (lambda i, o: checks.plan_elementwise("allreduce", 0, 2, i, o, "sum"), 8, 8),
    (lambda i, o: checks.plan_elementwise("broadcast", 0, 2, i, o, None, 0), 8, 8),
    (lambda i, o: checks.plan_gatherlike("allgather", 0, 2, i, o), 4, 8),
    (lambda i, o: checks.plan_scatterlike("reducescatter", 0, 2, i, o, "sum"), 8, 4),
    (lambda i, o: checks.plan_alltoall(0, 2, i, o), 8, 8),
    (lambda i, o: checks.plan_allgatherv(0, 2, i, o, [4, 4]), 4, 8),
    (lambda i, o: checks.plan_reducescatterv(0, 2, i, o, [4, 4], "sum"), 8, 4),
    (lambda i, o: checks.plan_alltoallv(0, 2, i, o, [2, 2], [2, 2]), 4, 4),
    (lambda i, o: checks.plan_gatherv(0, 2, i, o, [4, 4], None, 0), 4, 8),
    (lambda i, o: checks.plan_scatterv(0, 2, i, o, [4, 4], None, 0), 8, 4),
], ids=["allreduce", "broadcast", "allgather", "reducescatter", "alltoall", "allgatherv", "reducescatterv",
        "alltoallv", "gatherv", "scatterv"])
def test_buffers_on_two_devices_are_refused(plan, n_in, n_out):
    with pytest.raises(InvalidArgument, match="input is on cpu but output is on cuda:1; a call's buffers must be on "
                                              "one device"):
        plan(np.zeros(n_in, np.float32), _cuda(n_out, 1))
    with pytest.raises(InvalidArgument, match="input is on cuda:0 but output is on cpu"):
        plan(_cuda(n_in, 0), np.zeros(n_out, np.float32))
    with pytest.raises(InvalidArgument, match="input is on cuda:0 but output is on cuda:1"):
        plan(_cuda(n_in, 0), _cuda(n_out, 1, ptr=0x7F0000100000))
    call = plan(_cuda(n_in, 1), _cuda(n_out, 1, ptr=0x7F0000100000))  # one device: laid out for it
    assert call.device == "cuda:1"


def test_communicator_refuses_device_memory_before_anything_moves():
    uid = pyxccl.get_unique_id()
    errors, results = [], [None, None]

    def rank(r):
        try:
            comm = pyxccl.Communicator(2, uid, r, timeout=30)
            try:
                if r == 0:
                    with pytest.raises(pyxccl.CudaError, match="(?i)cuda"):  # no GPU (or no cuda-python) here
                        comm.all_reduce(_cuda(8))
                    with pytest.raises(InvalidArgument, match="input is on cpu but output is on cuda:0"):
                        comm.all_reduce(np.zeros(8, np.float32), _cuda(8))
                    with pytest.raises(pyxccl.CudaError, match="(?i)cuda"):  # staged through the host: no GPU here
                        comm.send(_cuda(8), 1)
                x = np.full(4, r + 1, np.float32)
                comm.all_reduce(x)
                results[r] = x.tolist()
            finally:
                comm.destroy()
        except BaseException as exc:  # noqa: BLE001
            errors.append((r, exc))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == [[3.0] * 4] * 2
