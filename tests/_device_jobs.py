"""Jobs that run the collective cases on device memory (emulated or a real GPU): every rank runs
the same list of :class:`harness.Case` through a :class:`device_mirror.MirrorComm` and reports
the mismatches it saw (the numpy references of the harness)."""

from __future__ import annotations

import os

from harness import (COLLECTIVES, DTYPE_NAMES, OP_NAMES, REDUCING, ROOTED, Case, op_valid, start_case)

PRIME = 100003


def cases(nranks: int, sizes: tuple[int, ...], dtypes=DTYPE_NAMES, colls=COLLECTIVES, ops=OP_NAMES,
          seed: int = 3) -> list[Case]:
    """Every collective x dtype x valid op x size, in place and out of place (sync), roots 0 and N-1."""
    out = []
    k = 0
    for coll in colls:
        roots = sorted({0, nranks - 1}) if coll in ROOTED else [0]
        for dtype in dtypes:
            for op in ([o for o in ops if op_valid(o, dtype)] if coll in REDUCING else ["sum"]):
                for count in sizes:
                    for inplace in (False, True):
                        out.append(Case(coll, dtype, count, op, roots[k % len(roots)], inplace, False, seed,
                                        form=(k >> 1) & 1))
                        k += 1
    return out


def run_on_device(comm, case_list: list, registered: int = 0, arrays: str = "raw") -> list[str]:
    """Run ``case_list`` on this rank's device through the mirror; the mismatches. ``registered``:
    bytes of a buffer of ``pyxccl.cuda.empty`` registered with ``comm``, which every call's
    buffers are carved from (and then at least one call must have gone by single copy); ``arrays``:
    "raw", "torch" or "cupy" (:class:`device_mirror.MirrorComm`)."""
    import pyxccl.cuda
    from device_mirror import MirrorComm
    dev_name = os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0")
    dev = pyxccl.cuda.get_device(dev_name)
    arena = reg = None
    if registered:
        arena = pyxccl.cuda.empty(registered, "uint8", dev_name)
        reg = comm.register(arena)
    mirror = MirrorComm(comm, dev, None if arena is None else (arena.address, arena.nbytes), arrays)
    failures: list[str] = []
    for c in case_list:
        try:
            _, ret, verify = start_case(mirror, c)
        except Exception as exc:  # noqa: BLE001 - reported, and the ranks stop together
            return failures + [f"{c.label(comm.size, comm.rank)}: raised {type(exc).__name__}: {exc}"]
        failures += verify(ret)
        if len(failures) > 20:
            break
    if reg is not None:
        direct = comm._engine.device_side[0].direct_calls
        reg.deregister()
        arena.free()
        if not direct and comm.size > 1:
            failures.append("no call went by single copy on the registered buffers")
    return failures


def job_cases(comm, nranks: int, sizes: tuple, dtypes=DTYPE_NAMES, colls=COLLECTIVES, ops=OP_NAMES,
              registered: int = 0, arrays: str = "raw") -> list[str]:
    return run_on_device(comm, cases(nranks, tuple(sizes), tuple(dtypes), tuple(colls), tuple(ops)), registered,
                         arrays)


def job_catalogue_on_device(comm, coll: str, host_layouts: list) -> list[str]:
    """Every algorithm of the catalogue (:func:`_algo_jobs.job_catalogue`) on this rank's device."""
    from _algo_jobs import job_catalogue
    from device_mirror import MirrorComm
    from pyxccl.cuda import get_device
    dev = get_device(os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0"))
    return job_catalogue(MirrorComm(comm, dev), coll, host_layouts)


def job_send_recv(comm, sizes=(0, 1, 7, 100003)) -> list[str]:
    """Ring send/recv of device buffers (staged through host memory), blocking and async_op."""
    import numpy as np
    from pyxccl.cuda import get_device
    from pyxccl.dtypes import dtype_of
    from pyxccl.memory import Buffer
    dev = get_device(os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0"))
    N, r = comm.size, comm.rank
    failures = []
    for n in sizes:
        for async_op in (False, True):
            src = np.arange(n, dtype=np.float32) + 1000 * r
            a, b = dev.alloc(src.nbytes), dev.alloc(src.nbytes)
            dev.write(a, src.tobytes())
            sb = Buffer.on_device(None, dev.name, a, src.nbytes, dtype_of("float32"))
            rb = Buffer.on_device(None, dev.name, b, src.nbytes, dtype_of("float32"))
            if r % 2 == 0:
                w1 = comm.send(sb, (r + 1) % N, tag=n, async_op=async_op)
                w2 = comm.recv(rb, (r - 1) % N, tag=n, async_op=async_op)
            else:
                w2 = comm.recv(rb, (r - 1) % N, tag=n, async_op=async_op)
                w1 = comm.send(sb, (r + 1) % N, tag=n, async_op=async_op)
            if async_op:
                w1.wait()
                w2.wait()
            dev.synchronize()
            got = np.frombuffer(dev.read(b, src.nbytes), np.float32)
            want = np.arange(n, dtype=np.float32) + 1000 * ((r - 1) % N)
            if not np.array_equal(got, want):
                failures.append(f"send/recv n={n} async={async_op}: got {got[:4]} want {want[:4]}")
            dev.free_plain(a)
            dev.free_plain(b)
    return failures


def job_async_work(comm) -> list[str]:
    """async_op on device buffers: Work.wait() then Work.synchronize() see the result; calls in order."""
    import numpy as np
    from pyxccl.cuda import get_device
    from pyxccl.dtypes import dtype_of
    from pyxccl.memory import Buffer
    dev = get_device(os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0"))
    N, r = comm.size, comm.rank
    n = 5003
    x = np.full(n, r + 1, np.float32)
    a = dev.alloc(x.nbytes)
    dev.write(a, x.tobytes())
    b = Buffer.on_device(None, dev.name, a, x.nbytes, dtype_of("float32"))
    works = [comm.all_reduce(b, async_op=True) for _ in range(3)]
    for w in works:
        w.wait()
    works[-1].synchronize(timeout=30)
    got = np.frombuffer(dev.read(a, x.nbytes), np.float32)
    want = (N * (N + 1) / 2) * N * N
    dev.free_plain(a)
    return [] if np.all(got == want) else [f"async: got {got[:4]} want {want}"]


def job_repeated_calls(comm, reps: int = 20) -> list[str]:
    """The same calls on the same device buffers, new data each time (the graph cache replays them)."""
    import numpy as np
    from pyxccl.cuda import get_device
    from pyxccl.dtypes import dtype_of
    from pyxccl.memory import Buffer
    dev = get_device(os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0"))
    N, r = comm.size, comm.rank
    f32 = dtype_of("float32")
    failures = []
    for n in (2, 1000, 300007):
        a, g = dev.alloc(n * 4), dev.alloc(n * 4 * N)
        xa = Buffer.on_device(None, dev.name, a, n * 4, f32)
        xg = Buffer.on_device(None, dev.name, g, n * 4 * N, f32)
        for i in range(reps):
            dev.write(a, np.full(n, r + i, np.float32).tobytes())
            comm.all_reduce(xa)
            comm.all_gather(xa, xg)
            dev.synchronize()
            want = sum(q + i for q in range(N))
            got = np.frombuffer(dev.read(g, n * 4 * N), np.float32)
            if not np.all(got == want):
                failures.append(f"n={n} rep {i}: got {got[:3]} want {want}")
                break
        dev.free_plain(a)
        dev.free_plain(g)
    return failures


def job_register_errors(comm) -> list[str]:
    """A rank that registers what cannot be registered: it raises InvalidArgument saying what, the others
    raise it naming that rank, nobody hangs, and the communicator goes on (a good registration after)."""
    import numpy as np

    import pyxccl
    import pyxccl.cuda
    failures = []
    dev_name = os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0")
    good = pyxccl.cuda.empty(1000, "float32", dev_name)
    bad_rank = comm.size - 1
    try:
        comm.register(np.zeros(4, np.float32) if comm.rank == bad_rank else good)
        failures.append("a host buffer was registered")
    except pyxccl.InvalidArgument as exc:
        want = "host memory" if comm.rank == bad_rank else f"rank {bad_rank} could not register"
        if want not in str(exc):
            failures.append(f"rank {comm.rank}: the error does not say {want!r}: {exc}")
    reg = comm.register(good)
    x = np.full(5, comm.rank + 1.0, np.float32)
    comm.all_reduce(x)
    if not np.all(x == comm.size * (comm.size + 1) / 2):
        failures.append(f"all_reduce after a failed registration: {x}")
    if comm._engine.windows is None or len(comm._engine.windows) != 1:
        failures.append("the failed registration left a window")
    reg.deregister()
    try:
        reg.deregister()
        failures.append("a second deregister was taken")
    except pyxccl.InvalidArgument:
        pass
    good.free()
    return failures


def job_oneshot(comm, expect: bool) -> list[str]:
    """Small device all-reduces (in place, out of place, premul_sum, avg, bfloat16): correct, and they took
    the one-shot path (``expect``) or not (PYXCCL_ALGO names an all-reduce algorithm, a large call)."""
    import numpy as np
    from device_mirror import MirrorComm

    import pyxccl
    from pyxccl.cuda import get_device
    mirror = MirrorComm(comm, get_device(os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0")))
    N, r = comm.size, comm.rank
    failures = []
    start = comm._engine.oneshot.epoch  # a pool's communicator ran other jobs before
    for n in (1, 7, 1000):
        x = np.arange(n, dtype=np.float32) + r
        mirror.all_reduce(x)
        want = N * np.arange(n, dtype=np.float32) + N * (N - 1) / 2
        if not np.array_equal(x, want):
            failures.append(f"in place n={n}: {x[:4]} != {want[:4]}")
        y = np.empty(n, np.float32)
        mirror.all_reduce(np.full(n, r + 1.0, np.float32), y, op=pyxccl.premul_sum(0.5))
        if not np.all(y == 0.5 * N * (N + 1) / 2):
            failures.append(f"premul_sum n={n}: {y[:4]}")
        z = np.full(n, 2.0 * r, np.float32)
        mirror.all_reduce(z, op="avg")
        if not np.allclose(z, N - 1.0):
            failures.append(f"avg n={n}: {z[:4]}")
    epoch = comm._engine.oneshot.epoch - start
    if expect != (epoch == 9):
        failures.append(f"one-shot calls: {epoch} (expected {'9' if expect else 'none'})")
    return failures


def job_msccl_file(comm, path: str) -> list[str]:
    """An MSCCL XML program (:func:`_msccl_check.runs_right`) on this rank's device buffers."""
    from _msccl_check import runs_right
    from device_mirror import MirrorComm
    from pyxccl.cuda import get_device
    from pyxccl.ir import msccl_xml
    prog = msccl_xml.load(path)
    ok = runs_right(MirrorComm(comm, get_device(os.environ.get("PYXCCL_TEST_DEVICE", "cuda:0"))), prog)
    return [] if ok else [f"{os.path.basename(path)} gave a wrong result on the device"]
