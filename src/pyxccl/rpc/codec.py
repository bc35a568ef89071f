"""pRPC payloads: a small tagged binary format with out-of-band numpy buffers; no pickle.

A payload is ``None``, ``bool``, ``int`` (any size), ``float``, ``str``, ``bytes`` /
``bytearray`` / ``memoryview`` (decoded as ``bytes``), ``list``, ``tuple``, ``dict`` (keys
of the hashable kinds), numpy scalars and numpy arrays of the dtypes in :data:`DTYPE_NAMES`
(bool, int8..uint64, float16/32/64, complex64/128, bfloat16, float8 e4m3fn / e5m2).

:func:`encode` returns ``(meta, buffers)``: ``meta`` is the tagged description and every
array of at least :data:`OOB_MIN` bytes (bytes objects from :data:`OOB_BYTES_MIN`) is
*not* copied into it; it is one of ``buffers``, a zero-copy ``memoryview`` over the
caller's memory that the wire layer hands to ``sendmsg``. The receiver reads each
buffer with ``recv_into`` straight into a fresh numpy array and :func:`decode` returns
views of those arrays: a large array crosses the wire with no user-space copy. Smaller
arrays travel inside ``meta`` (one copy, cheaper than a buffer of their own).

Tags (one byte, then little-endian fields)::

    N none | T true | F false | i int64 | I bigint (u32 n, n bytes two's complement)
    d float64 | s str (u32 n, UTF-8) | b bytes (u32 n, data) | B bytes (u32 buffer index)
    l list / t tuple (u32 n, items) | m dict (u32 n, key, value ...)
    g numpy scalar (dtype, itemsize bytes)
    a array inline (dtype, u8 ndim, u64 shape..., data) | A array (dtype, ndim, shape, u32 index)
    dtype := u8 length, ASCII name from DTYPE_NAMES

Decoding trusts nothing: unknown tags and dtypes, counts larger than the bytes left,
nesting deeper than :data:`MAX_DEPTH`, shapes that disagree with a buffer's length and
unhashable dict keys all raise :class:`~pyxccl.rpc.errors.ProtocolError`.
"""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np

from ..errors import InvalidArgument
from .errors import ProtocolError

OOB_MIN = 1024
"""arrays of at least this many bytes travel out of band (zero-copy)"""
OOB_BYTES_MIN = 64 * 1024
"""bytes-like objects of at least this many bytes travel out of band"""
MAX_DEPTH = 64

_Q = struct.Struct("<q")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_D = struct.Struct("<d")

_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128")}
_DTYPES.update({"bfloat16": np.dtype(ml_dtypes.bfloat16),
                "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
                "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2)})
DTYPE_NAMES = tuple(_DTYPES)
"""the array element types a payload may carry"""
_NAME_OF: dict[np.dtype, bytes] = {dt: name.encode() for name, dt in _DTYPES.items()}
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _dtype_name(dt: np.dtype) -> bytes:
    name = _NAME_OF.get(dt.newbyteorder("=") if dt.byteorder in "<>" else dt)
    if name is None:
        raise InvalidArgument(f"numpy dtype {dt} cannot travel in an RPC payload; "
                              f"use one of {', '.join(DTYPE_NAMES)}")
    return name


def _le(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a C-contiguous little-endian array (a copy only when it is not one)."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


class _Encoder:
    __slots__ = ("out", "bufs")

    def __init__(self) -> None:
        self.out = bytearray()
        self.bufs: list[memoryview] = []

    def put(self, obj: Any, depth: int) -> None:
        out = self.out
        t = type(obj)
        if t is bytes or t is bytearray or t is memoryview:
            view = obj
            if t is memoryview:
                view = obj.cast("B") if obj.c_contiguous else memoryview(obj.tobytes())
            n = len(view)
            if n >= OOB_BYTES_MIN:
                out += b"B" + _U32.pack(len(self.bufs))
                self.bufs.append(memoryview(view))
            else:
                out += b"b" + _U32.pack(n)
                out += view
        elif t is str:
            data = obj.encode("utf-8", "surrogatepass")
            out += b"s" + _U32.pack(len(data))
            out += data
        elif t is int:
            if _INT64_MIN <= obj <= _INT64_MAX:
                out += b"i" + _Q.pack(obj)
            else:
                data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += b"I" + _U32.pack(len(data))
                out += data
        elif t is float:
            out += b"d" + _D.pack(obj)
        elif obj is None:
            out += b"N"
        elif t is bool:
            out += b"T" if obj else b"F"
        elif t is dict:
            self._depth(depth)
            out += b"m" + _U32.pack(len(obj))
            for k, v in obj.items():
                self.put(k, depth + 1)
                self.put(v, depth + 1)
        elif t is list or t is tuple:
            self._depth(depth)
            out += (b"l" if t is list else b"t") + _U32.pack(len(obj))
            for v in obj:
                self.put(v, depth + 1)
        elif isinstance(obj, np.ndarray):
            self._array(obj)
        elif isinstance(obj, np.generic):
            name = _dtype_name(obj.dtype)
            out += b"g" + bytes([len(name)]) + name
            out += _le(np.asarray(obj)).tobytes()
        elif isinstance(obj, (bool, int, float, str, bytes, list, tuple, dict)):
            self.put(_plain(obj), depth)  # subclasses (IntEnum, OrderedDict, ...) as their base
        else:
            raise InvalidArgument(f"an RPC payload cannot carry {type(obj).__name__} objects "
                                  f"(use None, bool, int, float, str, bytes, list, tuple, dict "
                                  f"or numpy arrays)")

    @staticmethod
    def _depth(depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise InvalidArgument(f"RPC payload nests deeper than {MAX_DEPTH} levels")

    def _array(self, arr: np.ndarray) -> None:
        name = _dtype_name(arr.dtype)
        arr = _le(arr)
        if arr.ndim > 255:
            raise InvalidArgument("arrays of more than 255 dimensions cannot travel")
        out = self.out
        oob = arr.nbytes >= OOB_MIN
        out += (b"A" if oob else b"a") + bytes([len(name)]) + name + bytes([arr.ndim])
        for d in arr.shape:
            out += _U64.pack(d)
        flat = arr.reshape(-1).view(np.uint8)
        if oob:
            out += _U32.pack(len(self.bufs))
            self.bufs.append(flat.data)
        else:
            out += flat.tobytes()


def _plain(obj: Any) -> Any:
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, dict):
        return dict(obj)
    return list(obj) if isinstance(obj, list) else tuple(obj)


def encode(obj: Any) -> tuple[bytearray, list[memoryview]]:
    """``(meta, buffers)`` for ``obj``; unsupported types raise InvalidArgument.

    The buffers are views of the caller's arrays: they must not change until sent.
    """
    enc = _Encoder()
    enc.put(obj, 0)
    return enc.out, enc.bufs


def encode_inline(obj: Any) -> bytes:
    """``obj`` as one bytes object with every buffer inline (control messages)."""
    meta, bufs = encode(obj)
    if bufs:
        raise InvalidArgument("control messages cannot carry large arrays or bytes")
    return bytes(meta)


class _Decoder:
    __slots__ = ("mv", "pos", "bufs")

    def __init__(self, meta: bytes | bytearray | memoryview, bufs: list[np.ndarray]) -> None:
        self.mv = memoryview(meta).cast("B")
        self.pos = 0
        self.bufs = bufs

    def _take(self, n: int) -> memoryview:
        p = self.pos
        if n < 0 or p + n > len(self.mv):
            raise ProtocolError("RPC payload truncated")
        self.pos = p + n
        return self.mv[p:p + n]

    def _u32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def _count(self) -> int:
        n = self._u32()
        if n > len(self.mv) - self.pos:
            raise ProtocolError(f"RPC payload announces {n} items with only "
                                f"{len(self.mv) - self.pos} bytes left")
        return n

    def _dtype(self) -> np.dtype:
        n = self._take(1)[0]
        name = bytes(self._take(n)).decode("ascii", "replace")
        dt = _DTYPES.get(name)
        if dt is None:
            raise ProtocolError(f"RPC payload names unknown dtype {name!r}")
        return dt

    def _buf(self) -> np.ndarray:
        i = self._u32()
        if i >= len(self.bufs):
            raise ProtocolError(f"RPC payload names buffer {i} of {len(self.bufs)}")
        return self.bufs[i]

    def get(self, depth: int) -> Any:
        tag = self._take(1)[0]
        if tag == 0x69:  # i
            return _Q.unpack(self._take(8))[0]
        if tag == 0x73:  # s
            return bytes(self._take(self._u32())).decode("utf-8", "surrogatepass")
        if tag == 0x62:  # b
            return bytes(self._take(self._u32()))
        if tag == 0x64:  # d
            return _D.unpack(self._take(8))[0]
        if tag == 0x4E:  # N
            return None
        if tag == 0x54:  # T
            return True
        if tag == 0x46:  # F
            return False
        if tag in (0x6C, 0x74, 0x6D):  # l t m
            if depth >= MAX_DEPTH:
                raise ProtocolError(f"RPC payload nests deeper than {MAX_DEPTH} levels")
            n = self._count()
            if tag == 0x6D:
                out: dict[Any, Any] = {}
                for _ in range(n):
                    k = self.get(depth + 1)
                    try:
                        out[k] = self.get(depth + 1)
                    except TypeError:
                        raise ProtocolError("RPC payload has an unhashable dict key") from None
                return out
            items = [self.get(depth + 1) for _ in range(n)]
            return items if tag == 0x6C else tuple(items)
        if tag == 0x49:  # I
            return int.from_bytes(self._take(self._u32()), "little", signed=True)
        if tag == 0x42:  # B
            return self._buf().tobytes()
        if tag in (0x61, 0x41):  # a A
            return self._array(tag == 0x41)
        if tag == 0x67:  # g
            dt = self._dtype()
            return np.frombuffer(self._take(dt.itemsize), dt.newbyteorder("<"))[0]
        raise ProtocolError(f"RPC payload has unknown tag byte {tag:#x}")

    def _array(self, oob: bool) -> np.ndarray:
        dt = self._dtype().newbyteorder("<")
        ndim = self._take(1)[0]
        shape = tuple(_U64.unpack(self._take(8))[0] for _ in range(ndim))
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dt.itemsize
        if oob:
            raw = self._buf()
            if raw.nbytes != nbytes:
                raise ProtocolError(f"array of shape {shape} and dtype {dt} needs {nbytes} bytes, "
                                    f"its buffer has {raw.nbytes}")
            return raw.view(dt).reshape(shape)
        data = self._take(nbytes)
        return np.frombuffer(data, dt).reshape(shape).copy()


def decode(meta: bytes | bytearray | memoryview, bufs: list[np.ndarray] | None = None) -> Any:
    """The payload encoded in ``meta`` with out-of-band ``bufs`` (uint8 arrays); ProtocolError
    when it is malformed. Arrays decoded from ``bufs`` are views of them (no copy)."""
    dec = _Decoder(meta, bufs or [])
    try:
        obj = dec.get(0)
    except (ValueError, OverflowError, struct.error) as exc:
        raise ProtocolError(f"malformed RPC payload: {exc}") from None
    if dec.pos != len(dec.mv):
        raise ProtocolError(f"RPC payload has {len(dec.mv) - dec.pos} trailing bytes")
    return obj


def check(obj: Any, depth: int = 0) -> None:
    """Raise InvalidArgument if ``obj`` could not be encoded (the same-node path skips encoding)."""
    t = type(obj)
    if t in (bytes, str, int, float, bool, bytearray, memoryview) or obj is None:
        return
    if t is dict or t is list or t is tuple:
        _Encoder._depth(depth)
        for v in (obj.items() if t is dict else obj):
            if t is dict:
                check(v[0], depth + 1)
                check(v[1], depth + 1)
            else:
                check(v, depth + 1)
    elif isinstance(obj, (np.ndarray, np.generic)):
        _dtype_name(obj.dtype)
    elif not isinstance(obj, (bool, int, float, str, bytes, list, tuple, dict)):
        raise InvalidArgument(f"an RPC payload cannot carry {type(obj).__name__} objects")
