"""Host memory the runtime allocates and addresses: scratch arrays and element addresses.

The host executor never calls numpy's allocator or reads a raw address itself: it asks here,
so that where host memory comes from (plain pages today; pinned or registered memory when a
device joins) is decided in one place.
"""

from __future__ import annotations

import numpy as np


def empty(count: int, dtype: np.dtype) -> np.ndarray:
    """A new flat host array of ``count`` elements of ``dtype`` (contents undefined)."""
    return np.empty(count, dtype=dtype)


def address(array: np.ndarray) -> int:
    """The address of ``array``'s first element."""
    return array.__array_interface__["data"][0]


def same_memory(a: np.ndarray, b: np.ndarray, a_start: int, b_start: int) -> bool:
    """Whether element ``a_start`` of ``a`` and element ``b_start`` of ``b`` are the same memory
    (same dtype; ``a`` and ``b`` views of one buffer, or one array)."""
    if a is b:
        return a_start == b_start
    return a.base is b.base and a.dtype == b.dtype and \
        address(a) + a_start * a.itemsize == address(b) + b_start * b.itemsize


def may_overlap(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two arrays may share memory (by their bounds only: cheap)."""
    return a is not None and b is not None and bool(np.may_share_memory(a, b))


def contiguous(array: np.ndarray) -> bool:
    """Whether ``array`` is empty or one C-contiguous run of memory."""
    return not array.size or array.flags.c_contiguous
