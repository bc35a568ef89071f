"""Device kernels on a real GPU: :mod:`.cuda_source` compiled by NVRTC, launched through the device.

:func:`compile` turns one data type's module into a CUBIN for ``sm_<arch>`` with NVRTC
(``cuda.bindings.nvrtc``, the optional extra ``pyxccl[cuda]``; it needs libnvrtc, not the CUDA
toolkit's headers). A compile takes 0.1-1 s, so images are kept twice: in this process, and on
disk under ``<cache>/kernels/`` where ``<cache>`` is ``PYXCCL_CACHE_DIR``, else
``$XDG_CACHE_HOME/pyxccl`` or ``~/.cache/pyxccl``. A file's name is the sha256 of everything the
image depends on (source, options, arch, NVRTC's version), so a changed kernel or a new NVRTC
never meets a stale image; files are written whole (a temporary file, then ``os.replace``) and
carry their own sha256, so a torn or corrupt file is compiled again, never loaded. A cache
directory that can't be written costs a compile per process, with one warning.

:class:`CudaKernels` holds one (op, dtype, device)'s three kernels, launched through the device
contract (:mod:`pyxccl.cuda.device`): ``load_module``, ``function``, ``launch``. Blocks of
:data:`BLOCK` threads, as many as the data needs (one 16-byte step a thread), at most
:data:`MAX_GRID`: 8 blocks on each of an H100's 132 SMs keeps ~8 MB of loads in flight, more
than the memory system needs to run at full speed, and the grid-stride loop takes the rest.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from ... import config, log
from ...dtypes import DType, ReduceOp, dtype_of
from ...errors import PyxcclError
from . import cuda_source

#: NVRTC's options: C++17; IEEE float32 (subnormals kept, no fused multiply-add contracting
#: a*b+c, correctly rounded division), which the conversions and numpy's results rely on
OPTIONS = ("--std=c++17", "--ftz=false", "--fmad=false", "--prec-div=true", "--prec-sqrt=true")

#: threads a block
BLOCK = 256
#: blocks at most: 8 per SM of an H100 (132 SMs)
MAX_GRID = 8 * 132

_ENTRY = {"sum": "pyx_add", "avg": "pyx_add", "premul_sum": "pyx_add", "prod": "pyx_mul",
          "min": "pyx_min", "max": "pyx_max"}
_BINARY = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong)
_SCALE = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_ulonglong)
_DIVIDE = (ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_uint)

_lock = threading.Lock()
_images: dict[str, bytes] = {}  # sha256 key -> CUBIN, this process's cache
_modules: dict[tuple[str, str], tuple[Any, Any]] = {}  # (device name, dtype) -> (device, module)
_state: dict[str, Any] = {}  # "version": NVRTC's (major, minor); "warned": the cache warning was given


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor); raises where cuda-python or libnvrtc is missing."""
    if "version" not in _state:
        from cuda.bindings import nvrtc

        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise PyxcclError(f"NVRTC is not usable: nvrtcVersion returned {err!r}")
        _state["version"] = (int(major), int(minor))
    return _state["version"]


def nvrtc_missing() -> str | None:
    """Why NVRTC can't compile here (cuda-python or libnvrtc missing), or None when it can."""
    try:
        nvrtc_version()
    except Exception as exc:  # ImportError, a libnvrtc that fails to load, ...
        return f"NVRTC is not available: {exc}"
    return None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``<PYXCCL_CACHE_DIR or $XDG_CACHE_HOME/pyxccl or ~/.cache/pyxccl>/kernels``."""
    base = config.get().cache_dir
    if base:
        root = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "pyxccl"
    return root / "kernels"


def cache_key(source: str, arch: int) -> str:
    """The sha256 (hex) naming the image of ``source`` for ``sm_<arch>`` with this NVRTC and :data:`OPTIONS`."""
    h = hashlib.sha256()
    for part in (source, "\0".join(OPTIONS), f"sm_{arch}", "%d.%d" % nvrtc_version()):
        h.update(part.encode())
        h.update(b"\0\1")
    return h.hexdigest()


def compile(dtype: DType | str, arch: int) -> bytes:  # noqa: A001 (the brief's name: it compiles)
    """The CUBIN of ``dtype``'s kernels (:data:`.cuda_source.KERNELS`) for ``sm_<arch>``: from
    this process's cache, else the disk cache, else NVRTC (then stored in both)."""
    dt = dtype_of(dtype)
    source = cuda_source.source(dt)
    key = cache_key(source, arch)
    with _lock:
        image = _images.get(key)
        if image is None:
            path = cache_dir() / f"{key}.cubin"
            image = _read(path)
            if image is None:
                image = nvrtc_compile(source, arch, f"pyxccl_{dt.name}.cu")
                _write(path, image)
            _images[key] = image
    return image


def nvrtc_compile(source: str, arch: int, name: str) -> bytes:
    """Compile ``source`` with NVRTC for ``sm_<arch>`` (:data:`OPTIONS`) to a CUBIN; a failed
    compile raises :class:`~pyxccl.errors.PyxcclError` holding NVRTC's log."""
    from cuda.bindings import nvrtc

    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    if err != ok:
        raise PyxcclError(f"nvrtcCreateProgram({name}) failed: {err!r}")
    try:
        opts = [o.encode() for o in OPTIONS] + [f"--gpu-architecture=sm_{arch}".encode()]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != ok:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            text = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, text)
            detail = text.rstrip(b" \0").decode(errors="replace")
            raise PyxcclError(f"NVRTC could not compile {name} for sm_{arch} ({err!r}):\n{detail}")
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        if err != ok:
            raise PyxcclError(f"nvrtcGetCUBINSize({name}) failed: {err!r}")
        image = b" " * size
        (err,) = nvrtc.nvrtcGetCUBIN(prog, image)
        if err != ok:
            raise PyxcclError(f"nvrtcGetCUBIN({name}) failed: {err!r}")
        return image
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _read(path: Path) -> bytes | None:
    """The image stored at ``path``, or None when it is missing, unreadable or fails its checksum."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    image, tag = blob[:-32], blob[-32:]
    if not image or hashlib.sha256(image).digest() != tag:
        return None
    return image


def _write(path: Path, image: bytes) -> None:
    """Store ``image`` at ``path`` whole (temporary file, then ``os.replace``), followed by its
    sha256; a directory that can't be written is warned of once and left alone."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(image + hashlib.sha256(image).digest())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if not _state.get("warned"):
            _state["warned"] = True
            log.warn("kernel cache %s can't be written (%s): kernels are compiled again in every process",
                     path.parent, exc)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def grid(count: int, itemsize: int) -> int:
    """Blocks for ``count`` elements: one 16-byte step a thread, at most :data:`MAX_GRID`."""
    steps = -(-count * itemsize // 16)
    return max(1, min(MAX_GRID, -(-steps // BLOCK)))


def _module(device: Any, dtype: DType) -> Any:
    """``dtype``'s module loaded on ``device`` (once per device object)."""
    key = (device.name, dtype.name)
    with _lock:
        found = _modules.get(key)
        if found is not None and found[0] is device:
            return found[1]
    module = device.load_module(compile(dtype, device.arch))
    with _lock:
        _modules[key] = (device, module)
    return module


class CudaKernels:
    """One (op, dtype, device)'s kernels. Addresses are device pointers (ints), ``stream`` the
    device's stream handle; each call enqueues one launch (none for an empty range)."""

    def __init__(self, op: ReduceOp, dtype: DType, device: Any) -> None:
        self.op, self.dtype, self.device = op, dtype, device
        module = _module(device, dtype)
        self._reduce = device.function(module, _ENTRY[op.name])
        self._scale = device.function(module, "pyx_scale")
        self._divide = device.function(module, "pyx_divide")

    def reduce(self, dst: int, a: int, b: int, count: int, stream: Any) -> None:
        """``dst[i] = a[i] op b[i]`` for ``count`` elements (``dst`` may be ``a`` or ``b``)."""
        if count > 0:
            self.device.launch(self._reduce, grid(count, self.dtype.itemsize), BLOCK,
                               (dst, a, b, count), _BINARY, stream)

    def scale(self, dst: int, src: int, count: int, factor: float, stream: Any) -> None:
        """premul_sum's prescale: ``dst[i] = factor * src[i]`` as :func:`.host.prescale` computes it."""
        if count > 0:
            self.device.launch(self._scale, grid(count, self.dtype.itemsize), BLOCK,
                               (dst, src, float(factor), count), _SCALE, stream)

    def divide(self, address: int, count: int, nranks: int, stream: Any) -> None:
        """avg's postdivide in place, as :func:`.host.postdivide` (nothing to do for one rank)."""
        if count > 0 and nranks != 1:
            self.device.launch(self._divide, grid(count, self.dtype.itemsize), BLOCK,
                               (address, count, nranks), _DIVIDE, stream)
