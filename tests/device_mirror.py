"""Run the numpy-based collective cases on device memory: a communicator seen through a mirror.

:class:`MirrorComm` wraps a communicator: each collective's numpy arguments are copied to
device memory (one device allocation per base array, so views keep their offsets and in-place
spellings stay in place), the call runs on the device buffers, and after it the device memory
is copied back into the numpy arrays (the host waits for the device first). Results that are
device buffers come back as the numpy arrays they mirror. Works for any device keeping the
contract of :mod:`pyxccl.cuda.device` (a real GPU or the emulated one), with no array library.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np

from pyxccl.dtypes import dtype_of
from pyxccl.memory import Buffer

COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "all_to_all", "gather",
               "scatter", "all_gatherv", "reduce_scatterv", "all_to_allv", "gatherv", "scatterv")


def _base(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class MirrorComm:
    """``comm`` with its collectives run on ``device`` memory mirroring the numpy arguments."""

    def __init__(self, comm: Any, device: Any, arena: "tuple[int, int] | None" = None, arrays: str = "raw"):
        """``arena``: (address, bytes) of device memory the mirrors are carved from (e.g. a registered
        buffer), instead of one allocation each; ``arrays``: what the communicator is given, "raw"
        (pyxccl Buffers), "torch" (CUDA tensors) or "cupy" (CuPy arrays) where that library has
        the dtype (raw otherwise)."""
        self.comm, self.device = comm, device
        self.rank, self.size = comm.rank, comm.size
        self.arena = arena
        self.arrays = arrays

    def __getattr__(self, name: str) -> Any:
        if name in COLLECTIVES:
            return lambda *a, **kw: self._call(name, a, kw)
        return getattr(self.comm, name)

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if kwargs.get("async_op"):
            raise NotImplementedError("the mirror runs blocking calls only")
        dev = self.device
        bases: dict[int, tuple[np.ndarray, int]] = {}  # id(base) -> (base, device address)
        used = [0]  # bytes of the arena handed out

        def alloc(nbytes: int) -> int:
            if self.arena is None:
                return dev.alloc(nbytes)
            at = used[0]
            used[0] += -(-max(nbytes, 1) // 256) * 256
            assert used[0] <= self.arena[1], "the arena is too small for this call"
            return self.arena[0] + at

        def to_device(a: Any) -> Any:
            if not isinstance(a, np.ndarray):
                return a
            base = _base(a)
            if id(base) not in bases:
                addr = alloc(base.nbytes)
                dev.write(addr, base.tobytes())
                bases[id(base)] = (base, addr)
            addr = bases[id(base)][1] + (a.__array_interface__["data"][0] - base.__array_interface__["data"][0])
            wrapped = wrap(self.arrays, dev.name, addr, a)
            return wrapped if wrapped is not None else Buffer.on_device(a, dev.name, addr, a.nbytes, dtype_of(a.dtype))

        dargs = tuple(to_device(a) for a in args)
        dkw = {k: to_device(v) for k, v in kwargs.items()}
        try:
            ret = getattr(self.comm, name)(*dargs, **dkw)
            self._synchronize(name)
            for base, addr in bases.values():
                flat = base.reshape(-1).view(np.uint8)
                flat[:] = np.frombuffer(dev.read(addr, base.nbytes), np.uint8)
        finally:
            if self.arena is None:
                for _, addr in bases.values():
                    dev.free_plain(addr)
        return self._back(ret, bases)

    def _synchronize(self, what: str, patience: float = 20.0) -> None:
        """Wait for the device; when that takes over ``patience`` s, print every device connector's
        flag words and counters to stderr first (the rank's log: where a stuck call waits)."""
        import sys
        dev = self.device
        ev = dev.event()
        dev.record(ev, dev.external_stream(0))  # the legacy stream waits for every call's end
        if not dev.event_synchronize(ev, patience):
            side = getattr(getattr(self.comm, "_engine", None), "device_side", None)
            conns = side[1].conns if side is not None else {}
            for key, c in sorted(conns.items()):
                words = [int.from_bytes(dev.read(a, 4), "little") for a in (c.ready_word, c.released_word)]
                print(f"[mirror] {what} stuck > {patience} s: {key} ready={words[0]} released={words[1]} "
                      f"head={getattr(c, 'head', '-')} tail={getattr(c, 'tail', '-')}", file=sys.stderr, flush=True)
        dev.synchronize()

    @staticmethod
    def _back(ret: Any, bases: dict) -> Any:
        if isinstance(ret, Buffer):  # a part of a mirrored array (e.g. reduce_scatter in place)
            where = (ret.address, ret.count)
        elif hasattr(ret, "__cuda_array_interface__"):  # the same as a torch tensor or CuPy array
            cai = ret.__cuda_array_interface__
            where = (cai["data"][0], prod(cai["shape"]))
        else:
            return ret
        for base, addr in bases.values():
            if addr <= where[0] < addr + max(base.nbytes, 1):
                start = (where[0] - addr) // base.itemsize
                return base.reshape(-1)[start:start + where[1]]
        return ret


class _Cai:
    """``nbytes`` bytes at ``address`` as a CUDA array of uint8 (for torch and CuPy to view)."""

    def __init__(self, address: int, nbytes: int):
        self.__cuda_array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1",
                                         "data": (address, False), "strides": None, "stream": None}


_TORCH = {"int8": "int8", "uint8": "uint8", "int32": "int32", "int64": "int64", "float16": "float16",
          "bfloat16": "bfloat16", "float32": "float32", "float64": "float64", "float8_e5m2": "float8_e5m2"}
_CUPY = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64"}


def wrap(kind: str, device: str, address: int, a: np.ndarray) -> Any:
    """The device memory mirroring ``a`` at ``address`` as a ``kind`` array of ``a``'s dtype and shape
    (None: "raw", or the library lacks the dtype)."""
    name = a.dtype.name
    if kind == "torch" and name in _TORCH:
        import torch
        raw = torch.as_tensor(_Cai(address, a.nbytes), device=device)
        return raw.view(getattr(torch, _TORCH[name])).view(a.shape)
    if kind == "cupy" and name in _CUPY:
        import cupy
        with cupy.cuda.Device(int(device.split(":")[1])):
            return cupy.asarray(_Cai(address, a.nbytes)).view(a.dtype).reshape(a.shape)
    return None
