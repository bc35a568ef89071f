"""``PYXCCL_CHECK=1``: the ranks compare what collective they are about to run, first.

Before each collective (inside the communicator's call queue, so in call order) every rank
sends its :func:`fingerprint` (collective number, operation, dtype, count, root, reduce
op) around the bootstrap ring. If any field differs, every rank raises the same
:class:`~pyxccl.errors.MismatchError` naming the field(s) and which ranks hold which
value, e.g. ``count differs: rank 0 has count=100, rank 1 has count=99``, and nothing is
sent. The communicator stays usable.

Without the check, such a bug (one rank calls ``all_reduce`` on 100 elements, another on
99, or one rank skipped a call) hangs, corrupts data or fails somewhere deep in the
executor. The check costs one bootstrap allgather per collective (a few hundred µs), so
it is off by default; when off, the communicator tests one attribute per call.

v-collectives whose ranks know only their own counts (alltoallv, gatherv, scatterv)
legitimately differ in count, so count is not compared for them.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import MismatchError

#: bootstrap tag of the fingerprint exchange (distinct from the communicator's other tags)
TAG = (1 << 40) + 0xC4EC
#: the collectives whose reduce op matters (the others carry a default one)
REDUCING = frozenset(("allreduce", "reduce", "reducescatter"))
FIELDS = ("seq", "op", "dtype", "count", "root", "reduce_op")


def fingerprint(seq: int, call: Any) -> dict[str, Any]:
    """The fields every rank must agree on for collective number ``seq``."""
    op = call.collective + "v" if call.layout is not None else call.collective
    return {"seq": seq, "op": op, "dtype": call.dtype.name, "count": call.count, "root": call.root,
            "reduce_op": call.op.name if call.collective in REDUCING else None, "count_may_differ": bool(call.agree_count)}


def pack(fp: dict[str, Any]) -> bytes:
    return json.dumps(fp, separators=(",", ":")).encode()


def unpack(data: bytes) -> dict[str, Any] | None:
    """A fingerprint, or None when ``data`` is not one."""
    try:
        fp = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return fp if isinstance(fp, dict) and all(k in fp for k in FIELDS) else None


def _show(value: Any) -> str:
    return "None" if value is None else str(value)


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def describe(fp: dict[str, Any]) -> str:
    root = f", root={fp['root']}" if fp.get("root") is not None else ""
    return (f"#{fp['seq']} {fp['op']}(count={fp['count']}, dtype={fp['dtype']}, op={fp['reduce_op']}{root})")


def compare(fps: list[dict[str, Any] | None]) -> str | None:
    """None when every rank's fingerprint agrees, else the message naming what differs."""
    bad = [r for r, fp in enumerate(fps) if fp is None]
    if bad:
        return (f"{_ranks(bad)} sent no collective fingerprint (not in a collective, or not running "
                f"with PYXCCL_CHECK=1)")
    return _differences([fp for fp in fps if fp is not None])


def _differences(fps: list[dict[str, Any]]) -> str | None:
    fields = [f for f in FIELDS if not (f == "count" and any(fp.get("count_may_differ") for fp in fps))]
    parts = []
    for name in fields:
        by_value: dict[str, list[int]] = {}
        for r, fp in enumerate(fps):
            by_value.setdefault(_show(fp[name]), []).append(r)
        if len(by_value) > 1:
            groups = sorted(by_value.items(), key=lambda kv: kv[1][0])  # by lowest rank
            has = ", ".join(f"{_ranks(rs)} {'has' if len(rs) == 1 else 'have'} {name}={v}" for v, rs in groups)
            parts.append(f"{name} differs: {has}")
    if not parts:
        return None
    calls = "; ".join(f"rank {r}: {describe(fp)}" for r, fp in enumerate(fps) if r < 8)
    if len(fps) > 8:
        calls += f"; ... ({len(fps) - 8} more ranks)"
    return "ranks disagree on the collective: " + "; ".join(parts) + f" ({calls})"


def allgather(bootstrap: Any, data: bytes, timeout: float) -> list[bytes]:
    """Every rank's ``data`` by rank, over the bootstrap ring under :data:`TAG`."""
    n, me = bootstrap.nranks, bootstrap.rank
    out = [b""] * n
    out[me] = cur = bytes(data)
    nxt, prev = (me + 1) % n, (me - 1) % n
    for i in range(n - 1):
        bootstrap.send(nxt, TAG, cur)
        cur = bootstrap.recv(prev, TAG, timeout=timeout)
        out[(me - i - 1) % n] = cur
    return out


def verify(ctx: Any, seq: int, call: Any) -> None:
    """Exchange the fingerprint of ``call`` (collective ``seq`` of the communicator whose
    :class:`~pyxccl.comm.context.CommContext` is ``ctx``); MismatchError on every rank when the
    ranks disagree."""
    if ctx.size == 1:
        return
    mine = fingerprint(seq, call)
    fps = [unpack(b) for b in allgather(ctx.bootstrap, pack(mine), ctx.timeout)]
    msg = compare(fps)
    if msg is not None:
        raise MismatchError(f"rank {ctx.rank}: collective #{seq}: {msg}")
