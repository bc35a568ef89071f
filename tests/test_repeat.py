"""Repeated blocking calls (src/pyxccl/repeat.py): reused plans must give the same results.

The second identical call (same numpy arrays, op, root) skips the checks and planning; these
tests change the arrays' contents, views and dtypes between calls and compare every
result with numpy, so a stale plan shows up as a wrong value or a missed error. all_reduce
first, then broadcast, reduce, all_gather, reduce_scatter and all_to_all in every in-place and
out-of-place form, counting which calls were served from memory.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import pyxccl
from pyxccl.comm import repeat


def _expected(n: int, base: np.ndarray, op: str) -> np.ndarray:
    vals = [base * (r + 1) for r in range(n)]
    if op == "sum":
        return sum(vals)
    if op == "max":
        return np.maximum.reduce(vals)
    if op == "avg":
        return sum(vals) / n
    raise AssertionError(op)


def job_repeats(comm) -> list[str]:
    n, me = comm.size, comm.rank
    failures = []
    comm._repeats.clear()
    for dtype in (np.float32, np.int64):
        for op in ("sum", "max") + (("avg",) if dtype == np.float32 else ()):
            x = np.empty(1000, dtype)
            out = np.empty(1000, dtype)
            for it in range(5):  # in place, then out of place, on the same arrays each time
                base = (np.arange(1000) % 7 + it).astype(dtype)
                x[:] = base * (me + 1)
                comm.all_reduce(x, op=op)
                if not np.allclose(x, _expected(n, base, op)):
                    failures.append(f"in place {dtype.__name__} {op} iteration {it}: wrong result")
                x[:] = base * (me + 1)
                comm.all_reduce(x, out, op=op)
                if not np.allclose(out, _expected(n, base, op)) or not np.array_equal(x, base * (me + 1)):
                    failures.append(f"out of place {dtype.__name__} {op} iteration {it}: wrong result")
    if not comm._repeats._entries:
        failures.append("no call was remembered")
    # the same object with another shape or dtype must not reuse the old plan
    y = np.ones(64, np.float32)
    comm.all_reduce(y)
    comm.all_reduce(y)
    y.shape = (8, 8)
    y[:] = 1
    comm.all_reduce(y)
    if not np.all(y == n):
        failures.append(f"after a reshape: {y.ravel()[0]} != {n}")
    z = np.ones(64, np.float32)
    comm.all_reduce(z)
    z.dtype = np.int32  # same memory, another type: 64 int32 values
    z[:] = 3
    comm.all_reduce(z)
    if not np.all(z == 3 * n):
        failures.append(f"after a dtype change: {z[0]} != {3 * n}")
    # more arrays than entries: the oldest are evicted, results stay right
    arrays = [np.full(4, i, np.float64) for i in range(repeat.MAX_ENTRIES + 4)]
    for _ in range(2):
        for i, a in enumerate(arrays):
            a[:] = i
            comm.all_reduce(a)
            if not np.all(a == i * n):
                failures.append(f"array {i}: {a[0]} != {i * n}")
    if len(comm._repeats._entries) > repeat.MAX_ENTRIES:
        failures.append(f"{len(comm._repeats._entries)} entries kept (max {repeat.MAX_ENTRIES})")
    # large calls are remembered apart, at most MAX_LARGE of them: they never evict the small ones
    bigs = [np.empty(repeat.SMALL_BYTES // 4 + 1, np.float32) for _ in range(repeat.MAX_LARGE + 1)]
    small = len(comm._repeats._entries)
    for it in range(2):
        for i, big in enumerate(bigs):
            big[:] = i + it
            comm.all_reduce(big)
            if not np.all(big == (i + it) * n):
                failures.append(f"large array {i} call {it}: {big[0]} != {(i + it) * n}")
    kept = [e.input for e in comm._repeats._large.values()]
    if len(kept) != repeat.MAX_LARGE or not all(any(k is b for b in bigs[1:]) for k in kept):
        failures.append(f"{len(kept)} large calls kept, not the last {repeat.MAX_LARGE}")
    if len(comm._repeats._entries) != small:
        failures.append("large calls changed the small entries")
    # a bad op on a remembered array still raises
    try:
        comm.all_reduce(arrays[0], op="bogus")
        failures.append("op='bogus' was accepted on a remembered array")
    except pyxccl.InvalidArgument:
        pass
    return failures


@pytest.mark.parametrize("nranks", (1, 2, 3, 5))
def test_repeated_calls_reuse_plans_correctly(pool, nranks):
    pool(nranks).check(job_repeats)


def test_repeated_calls_over_sockets(pool):
    pool(2, "socket").check(job_repeats)


# ---------------------------------------------------------------- the other covered collectives

def _val(rank: int, it: int, count: int, dtype) -> np.ndarray:
    """Rank- and iteration-dependent small integers: exact in float32 and int32 alike."""
    return ((np.arange(count) * (rank + 1) + 3 * it + rank) % 11).astype(dtype)


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)  # a view: the cases survive a reshape of their arrays


def _cases(comm, c: int) -> list:
    """(label, make, run) per call form: ``make(dtype)`` -> the arrays (plus dtype, root and op);
    ``run(a, it, **kw)`` fills them for iteration ``it``, calls, and returns (result, [(got, want)])."""
    n, me = comm.size, comm.rank

    def v(a, q, it, k=c):
        return _val(q, it, k, a["dt"])

    def red(a, it, k=c):
        vals = [v(a, q, it, k) for q in range(n)]
        if a["op"] == "max":
            return np.maximum.reduce(vals)
        if a["op"] == "avg":  # float32 only here: postdivide's own float32 division
            return sum(vals).astype(a["dt"]) / a["dt"](n)
        return sum(vals).astype(a["dt"])

    def via(a):  # the communicator, or a stand-in the read-only check puts in a["via"]
        return a.get("via", comm)

    def arrays(**shapes):
        def make(dt):
            a = {"dt": dt, "root": 1 % n, "op": "sum"}
            for name, size in shapes.items():
                a[name] = np.empty(size, dt)
            return a
        return make

    def bcast(form):
        def run(a, it, **kw):
            x, root = a["x"], a["root"]
            _flat(x)[:] = v(a, root, it) if me == root else -1
            if form == "none":
                return via(a).broadcast(x, root=root, **kw), [(x, v(a, root, it))]
            if form == "same":
                return via(a).broadcast(x, x, root=root, **kw), [(x, v(a, root, it))]
            y = a["y"]
            _flat(x)[:] = v(a, me, it)
            _flat(y)[:] = -1
            return via(a).broadcast(x, y, root=root, **kw), [(y, v(a, root, it)), (x, v(a, me, it))]
        return run

    def reduce(form):
        def run(a, it, **kw):
            x, root, op = a["x"], a["root"], a["op"]
            _flat(x)[:] = v(a, me, it)
            if form == "out":
                _flat(a["y"])[:] = -1
                res = via(a).reduce(x, a["y"], op=op, root=root, **kw)
                return (res, [(a["y"], red(a, it)), (x, v(a, me, it))]) if me == root else (None, [])
            res = via(a).reduce(x, None if form == "none" else x, op=op, root=root, **kw)
            return (res, [(x, red(a, it))]) if me == root else (None, [])
        return run

    def gather(form):
        def run(a, it, **kw):
            y = a["y"]
            want = np.concatenate([v(a, q, it) for q in range(n)])
            _flat(y)[:] = -1
            if form == "out":
                _flat(a["x"])[:] = v(a, me, it)
                return via(a).all_gather(a["x"], y, **kw), [(y, want), (a["x"], v(a, me, it))]
            _flat(y)[me * c:(me + 1) * c] = v(a, me, it)
            if form == "none":
                return via(a).all_gather(None, y, **kw), [(y, want)]
            if "blk" not in a or a["blk"].base is not y:  # output's block: one view object kept
                a["blk"] = y.reshape(-1)[me * c:(me + 1) * c]
            return via(a).all_gather(a["blk"], y, **kw), [(y, want)]
        return run

    def scatter(form):
        def run(a, it, **kw):
            x, op = a["x"], a["op"]
            _flat(x)[:] = v(a, me, it, n * c)
            want = red(a, it, n * c)[me * c:(me + 1) * c]
            if form == "out":
                _flat(a["y"])[:] = -1
                res = via(a).reduce_scatter(x, a["y"], op=op, **kw)
                return res, [(a["y"], want), (x, v(a, me, it, n * c))]
            if form == "none":
                return via(a).reduce_scatter(x, op=op, **kw), [(_flat(x)[me * c:(me + 1) * c], want)]
            if "blk" not in a or a["blk"].base is not x:
                a["blk"] = x.reshape(-1)[me * c:(me + 1) * c]
            return via(a).reduce_scatter(x, a["blk"], op=op, **kw), [(a["blk"], want)]
        return run

    def alltoall(form):
        def run(a, it, **kw):
            x = a["x"]
            _flat(x)[:] = v(a, me, it, n * c)
            want = np.concatenate([v(a, q, it, n * c)[me * c:(me + 1) * c] for q in range(n)])
            if form == "out":
                _flat(a["y"])[:] = -1
                return via(a).all_to_all(x, a["y"], **kw), [(a["y"], want), (x, v(a, me, it, n * c))]
            return via(a).all_to_all(x, None if form == "none" else x, **kw), [(x, want)]
        return run

    one, two = arrays(x=c), arrays(x=c, y=c)
    return [
        ("broadcast in place", one, bcast("none")), ("broadcast output=input", one, bcast("same")),
        ("broadcast out of place", two, bcast("out")),
        ("reduce in place", one, reduce("none")), ("reduce output=input", one, reduce("same")),
        ("reduce out of place", two, reduce("out")),
        ("all_gather input=None", arrays(y=n * c), gather("none")),
        ("all_gather input=block", arrays(y=n * c), gather("block")),
        ("all_gather out of place", arrays(x=c, y=n * c), gather("out")),
        ("reduce_scatter in place", arrays(x=n * c), scatter("none")),
        ("reduce_scatter output=block", arrays(x=n * c), scatter("block")),
        ("reduce_scatter out of place", arrays(x=n * c, y=c), scatter("out")),
        ("all_to_all in place", arrays(x=n * c), alltoall("none")),
        ("all_to_all output=input", arrays(x=n * c), alltoall("same")),
        ("all_to_all out of place", arrays(x=n * c, y=n * c), alltoall("out")),
    ]


class _ReadOnlyFirst:
    """The communicator's collectives, called after ``arrays`` are made read-only."""

    def __init__(self, comm, arrays: list) -> None:
        self.comm, self.arrays = comm, arrays

    def __getattr__(self, name: str):
        method = getattr(self.comm, name)

        def call(*args, **kw):
            for arr in self.arrays:
                arr.flags.writeable = False
            return method(*args, **kw)
        return call


def job_repeats_all(comm, count: int = 6) -> list[str]:
    """Every covered collective and call form: repeats reuse the plan (counted) and give the
    full path's results; a change of shape, dtype, root, op or array object plans afresh."""
    failures: list[str] = []
    with _counting_repeats(comm) as hits:
        for label, make, run in _cases(comm, count):
            failures += _one_case(comm, label, make, run, hits)
    return failures


@contextlib.contextmanager
def _counting_repeats(comm):
    """A fresh repeat cache whose uses are listed (the remembered calls' descriptions) in the
    yielded list; forgotten again afterwards."""
    hits: list[str] = []
    plain = comm._repeat

    def counting(rep):
        hits.append(rep.what)
        return plain(rep)

    comm._repeats.clear()
    comm._repeat = counting  # the instance attribute shadows the method
    try:
        yield hits
    finally:
        del comm._repeat
        comm._repeats.clear()


def _one_case(comm, label: str, make, run, hits: list) -> list[str]:
    failures: list[str] = []
    me = comm.rank

    def call(a, it, what: str, reuse: bool) -> None:
        before = len(hits)
        res, pairs = run(a, it)
        if (len(hits) > before) != reuse:
            failures.append(f"{label}, {what}: {'no' if reuse else 'a'} remembered plan was used")
        for i, (got, want) in enumerate(pairs):
            if got.dtype != want.dtype or not np.array_equal(_flat(got), want):
                failures.append(f"{label}, {what}: array {i} is {_flat(got)}, expected {want}")
        if pairs and not (res is pairs[0][0] or (isinstance(res, np.ndarray) and np.shares_memory(res, pairs[0][0])
                                                 and np.array_equal(_flat(res), pairs[0][1]))):
            failures.append(f"{label}, {what}: returned {res!r}, not the output")
        ref = make(a["dt"])  # the full path (a timeout: never remembered) on fresh arrays: the same bytes
        ref["root"], ref["op"] = a["root"], a["op"]
        for name in ("x", "y"):
            if name in a:
                ref[name].shape = a[name].shape
        _, rpairs = run(ref, it, timeout=60.0)
        if [g.tobytes() for g, _ in pairs] != [g.tobytes() for g, _ in rpairs]:
            failures.append(f"{label}, {what}: differs from the full path's result")

    a = make(np.float32)
    for it in range(3):  # the arrays' contents change between the calls
        call(a, it, f"iteration {it}", reuse=it > 0)
    arrays = [k for k in ("x", "y", "blk") if k in a]
    for k in arrays:  # same objects, another shape
        a[k].shape = (1, a[k].size)
    call(a, 3, "after a reshape", reuse=False)
    call(a, 4, "reshaped, again", reuse=True)
    if label.startswith("reduce"):  # avg: the repeat divides the sum again (call.reduced)
        a["op"] = "avg"
        call(a, 16, "op avg", reuse=False)
        call(a, 17, "op avg, again", reuse=True)
        a["op"] = "sum"
        call(a, 18, "op sum again", reuse=True)
    for k in arrays:  # same objects and memory, another dtype
        a[k].dtype = np.int32
    a["dt"] = np.int32
    call(a, 5, "after a dtype change", reuse=False)
    call(a, 6, "new dtype, again", reuse=True)
    if label.startswith(("broadcast", "reduce ", "reduce output", "reduce out")):
        old = a["root"]
        a["root"] = (old + 1) % comm.size
        call(a, 7, "another root", reuse=comm.size == 1)
        call(a, 8, "another root, again", reuse=True)
        a["root"] = old
        call(a, 9, "the first root again", reuse=True)  # both are remembered
        if label.startswith("broadcast") and comm.size > 1:  # True == 1 as a dict key, but no valid root
            try:
                comm.broadcast(a["x"], root=True)
                failures.append(f"{label}: root=True was accepted")
            except pyxccl.InvalidArgument:
                pass
    if label.startswith("reduce"):  # reduce and reduce_scatter
        a["op"] = "max"
        call(a, 10, "another op", reuse=False)
        call(a, 11, "another op, again", reuse=True)
    b = make(np.float32)  # other objects, same shapes
    call(b, 12, "new arrays", reuse=False)
    call(b, 13, "new arrays, again", reuse=True)
    # remembered arrays made read-only (after the fill): the full path's check raises (on every rank)
    owners = [b[k] for k in ("x", "y", "blk") if k in b]  # bases first: they are made writeable first
    b["via"] = _ReadOnlyFirst(comm, owners)
    try:
        run(b, 14)
        failures.append(f"{label}: a read-only output was written")
    except pyxccl.InvalidArgument:
        pass
    finally:
        del b["via"]
        for arr in owners:
            arr.flags.writeable = True
    call(b, 15, "writeable again", reuse=True)  # the same signature as the remembered call's
    if label == "broadcast in place":  # inside group(): recorded, not served from memory
        before = len(hits)
        b["x"][:] = me
        with pyxccl.group():
            comm.broadcast(b["x"], root=b["root"])
        if len(hits) != before or not np.all(b["x"] == b["root"]):
            failures.append(f"{label}: inside group(): {len(hits) - before} repeats, result {b['x']}")
    return failures


@pytest.mark.parametrize("nranks", (2, 3))
def test_repeats_of_every_covered_collective(pool, nranks):
    pool(nranks).check(job_repeats_all)


def test_repeats_of_every_covered_collective_over_sockets(pool):
    pool(2, "socket").check(job_repeats_all)


#: every path of a large call between ranks of one host (:mod:`pyxccl.runtime.host.path_choice`), with 16 KiB slots so
#: that 20000 float32 per block run as several slices, each by single copy where the path allows
PATHS = ("0", "1", "mixed", "put", "auto")
SMALL_SLOTS = {"PYXCCL_SLOT_BYTES": "16K", "PYXCCL_CMA_MIN_BYTES": "1K"}


@pytest.mark.parametrize(("nranks", "path"), [(2, p) for p in PATHS] + [(3, "put"), (3, "auto")])
def test_repeats_of_large_calls_on_every_path(env_pools, nranks, path):
    """Above SMALL_BYTES per block, a repeat resets runners whose steps went by descriptor, by
    put or through the slots: every result must still be exact."""
    env_pools(nranks, PYXCCL_CMA=path, **SMALL_SLOTS).check(job_repeats_all, count=20_000)


def job_gather_scatter_repeats(comm, count: int = 5) -> list[str]:
    """gather and scatter, in and out of place, from two roots: repeats are used (counted) and every
    result is exact while the arrays' contents change between calls."""
    n, me = comm.size, comm.rank
    failures: list[str] = []
    with _counting_repeats(comm) as hits:
        for root in sorted({0, n - 1}):
            for inplace in (False, True):
                x = np.empty(count, np.float32)
                big = np.empty(n * count, np.float32)
                for it in range(4):
                    before = len(hits)
                    blocks = [_val(q, it + 10 * root, count, np.float32) for q in range(n)]
                    # gather: the root's output gets every rank's block
                    big[:] = -1
                    if inplace and me == root:
                        big[me * count:(me + 1) * count] = blocks[me]
                        comm.gather(None, big, root=root)
                    else:
                        x[:] = blocks[me]
                        comm.gather(x, big if me == root else None, root=root)
                    if me == root and not np.array_equal(big, np.concatenate(blocks)):
                        failures.append(f"gather root {root} in place {inplace} call {it}: {big}")
                    # scatter: block r of the root's input lands on rank r
                    if me == root:
                        big[:] = np.concatenate(blocks)
                    x[:] = -1
                    if inplace and me == root:
                        comm.scatter(big, None, root=root)
                        got = big[me * count:(me + 1) * count]
                    else:
                        comm.scatter(big if me == root else None, x, root=root)
                        got = x
                    if not np.array_equal(got, blocks[me]):
                        failures.append(f"scatter root {root} in place {inplace} call {it}: {got}")
                    used = len(hits) - before
                    if used != (2 if it else 0):
                        failures.append(f"root {root} in place {inplace} call {it}: {used} remembered plans used")
    return failures


@pytest.mark.parametrize("nranks", (1, 2, 3))
def test_repeats_of_gather_and_scatter(pool, nranks):
    pool(nranks).check(job_gather_scatter_repeats)
