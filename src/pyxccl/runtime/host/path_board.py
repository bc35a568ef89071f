"""One path choice per host: the host's lowest rank decides, the others follow (``PYXCCL_CMA=auto``).

Each rank used to choose its path (:mod:`pyxccl.runtime.host.path_choice`) alone, timing its own calls. But a
call's time depends on the pair of paths, the rank's and its peers': in 200 2-rank
all-gathers of 16 MiB, rank 0 settled on single copy and rank 1 on the put, and each
measured the other's choice as noise. ``auto`` then ran 7-12 % slower than the best fixed
path on the 2-rank exchanges (``docs/history/performance-log.md``).

So on each host one rank measures and decides (the *leader*, the host's lowest rank) and
publishes every choice on its board: the spare bytes of its doorbell's shared page
(:meth:`pyxccl.transport.doorbell.Doorbell.spare`), which the other ranks of the host (the
*followers*) map. An entry per (program, size class), found by a hash of the program's
name and collective and the size class (the same on every rank, unlike the chooser's own
key), is one 64-bit word, written and read whole::

    hash (32 bits) | the leader's call number of that key (24) | path (4) | forecast (4)

*path* is the path of that call; *forecast* is the path the leader's next call of the key
will take unless the time of this one changes the choice (the tries are scheduled, so it
only misses where a path takes over). The leader writes the entry before each call and
again after recording its time. A follower at its n-th call of the key takes *path* where
the entry is of call n, *forecast* where it is of call n - 1 (the leader has not started
call n yet), and chooses alone, as before, where there is no entry for the key or its
counts differ otherwise. Nothing waits: results never depend on the paths agreeing
(receivers read whatever arrives), only the speed does.
"""

from __future__ import annotations

import ctypes
import zlib

#: entries on a board (a doorbell page has room for 504 words)
ENTRIES = 256
_SEQ_MASK = (1 << 24) - 1


def board_key(program: object, nbytes: int) -> int:
    """The board's 32-bit key of calls of ``program`` moving ``nbytes`` per rank (never 0: 0 is empty)."""
    name = f"{getattr(program, 'collective', '')}:{getattr(program, 'name', '')}:{nbytes.bit_length()}"
    return zlib.crc32(name.encode()) or 1


class Board:
    """Path choices over the spare bytes of a doorbell's page (``area``, shared with the host's ranks)."""

    def __init__(self, area: memoryview) -> None:
        if len(area) < ENTRIES * 8:
            raise ValueError(f"a path board needs {ENTRIES * 8} bytes, got {len(area)}")
        self._words = (ctypes.c_uint64 * ENTRIES).from_buffer(area)

    def publish(self, key: int, seq: int, path: int, forecast: int) -> None:
        """The leader's call ``seq`` of ``key`` takes ``path``; its next one, as far as known, ``forecast``."""
        self._words[key % ENTRIES] = key << 32 | (seq & _SEQ_MASK) << 8 | path << 4 | forecast

    def follow(self, key: int, seq: int) -> int | None:
        """The path of call ``seq`` of ``key`` as the leader published it, or None where it did not."""
        word = self._words[key % ENTRIES]
        if word >> 32 != key:
            return None
        published = word >> 8 & _SEQ_MASK
        if published == seq & _SEQ_MASK:
            return word >> 4 & 15
        if published == (seq - 1) & _SEQ_MASK:
            return word & 15
        return None
