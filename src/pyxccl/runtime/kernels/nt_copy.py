"""Streaming copies: large local copies whose stores bypass the cache (non-temporal stores).

A plain copy (numpy's, which is glibc's ``memcpy``) first reads every destination cache line
it is about to overwrite, and leaves both buffers in the cache. For a block far larger than
the cache, whose destination nobody reads soon (the own block of an all-to-all or all-gather
copied into the output at once), that read is wasted memory traffic, and on a memory-bound
machine it is the copy's time. glibc switches to non-temporal stores only above a threshold
it derives from the cache size the CPU reports: 240 MiB on this project's VM, whose host
reports a 320 MiB shared cache, so no copy of a collective ever gets them there.

This module JIT-compiles one loop of 64-byte loads and non-temporal stores with llvmlite
(the optional extra ``pyxccl[fast]``; LLVM picks the target's non-temporal store, ``movntps``
on x86-64) and calls it through ctypes. Measured on the 2-core VM: 128 MiB in
6.9-7.3 ms against 10.3-12.3 ms for ``np.copyto``; the bare 2-rank all-to-all of 256 MiB
(copy the own half, read the peer's with ``process_vm_readv``) in 21-23 ms against 27-35 ms
(``docs/history/performance-log.md``).

:func:`bulk_copy` is the executor's kernel for local copies that move every slice of a call at
once: a streaming copy where the block is at least ``PYXCCL_STREAM_MIN_BYTES``, both sides are
contiguous and llvmlite is installed; ``np.copyto`` otherwise.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from ... import config as _config
from ... import log

#: destination alignment of the non-temporal loop (one cache line; also what AVX-512 stores need)
ALIGN = 64

_IR = r"""
define void @stream_copy(ptr %dst, ptr %src, i64 %n) nounwind {
entry:
  %lines = lshr i64 %n, 6
  %any = icmp ne i64 %lines, 0
  br i1 %any, label %loop, label %done
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %off = shl i64 %i, 6
  %s = getelementptr i8, ptr %src, i64 %off
  %d = getelementptr i8, ptr %dst, i64 %off
  %v = load <16 x i32>, ptr %s, align 1
  store <16 x i32> %v, ptr %d, align 64, !nontemporal !0
  %next = add i64 %i, 1
  %more = icmp ult i64 %next, %lines
  br i1 %more, label %loop, label %done
done:
  fence seq_cst
  ret void
}
!0 = !{i32 1}
"""

_Loop = Callable[[int, int, int], None]
_state: dict = {}  # "loop": the compiled loop or None once tried; "engine": keeps its code alive


def _compile() -> _Loop | None:
    """The compiled loop ``(dst, src, n)`` (``dst`` 64-byte aligned, ``n`` a multiple of 64), or
    None where llvmlite is missing or cannot compile for this machine (logged once)."""
    if "loop" in _state:
        return _state["loop"]
    _state["loop"] = None
    try:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        # the triple's baseline target (SSE2 on x86-64), which every CPU of the triple runs: the
        # loop is bound by memory, not by the width of its vectors
        machine = llvm.Target.from_default_triple().create_target_machine(opt=2)
        module = llvm.parse_assembly(_IR)
        module.verify()
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        addr = engine.get_function_address("stream_copy")
        loop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(addr)
    except ImportError:
        log.info("stream copies off: llvmlite is not installed (pip install 'pyxccl[fast]')")
        return None
    except Exception as exc:  # noqa: BLE001 -- any JIT failure only costs the speed-up
        log.info("stream copies off: llvmlite could not compile the loop here: %s", exc)
        return None
    _state.update(loop=loop, engine=engine, module=module, machine=machine)
    return loop


def available() -> bool:
    """Whether streaming copies work in this process (llvmlite installed and the loop compiled)."""
    return _compile() is not None


def copy_bytes(dst: int, src: int, n: int) -> None:
    """Copy ``n`` bytes from address ``src`` to ``dst`` (not overlapping) with non-temporal stores;
    the unaligned head and the tail shorter than a cache line go through ``memmove``. Raises
    RuntimeError where :func:`available` is False."""
    loop = _compile()
    if loop is None:
        raise RuntimeError("stream copies are not available here (see pyxccl.runtime.kernels.nt_copy.available())")
    head = min(n, -dst % ALIGN)
    if head:
        ctypes.memmove(dst, src, head)
    body = (n - head) & ~(ALIGN - 1)
    if body:
        loop(dst + head, src + head, body)
    tail = n - head - body
    if tail:
        ctypes.memmove(dst + head + body, src + head + body, tail)


def min_bytes() -> int:
    """Smallest block :func:`bulk_copy` streams (``PYXCCL_STREAM_MIN_BYTES``; 0: never)."""
    return _config.get().stream_min_bytes


def bulk_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``np.copyto(dst, src)`` for a copy whose destination is not read again soon: streamed
    past the cache when it is large enough (:func:`min_bytes`), contiguous, of one dtype and
    not overlapping its source."""
    n = dst.nbytes
    limit = min_bytes()
    if (limit and n >= limit and dst.dtype == src.dtype and dst.shape == src.shape
            and dst.flags.c_contiguous and src.flags.c_contiguous
            and abs(dst.ctypes.data - src.ctypes.data) >= n and _compile() is not None):
        copy_bytes(dst.ctypes.data, src.ctypes.data, n)
    else:
        np.copyto(dst, src)
