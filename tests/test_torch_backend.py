"""The torch.distributed backend (``pyxccl.torch``): every ProcessGroup operation against expected values.

One launch of 3 rank processes (``init_process_group("pyxccl")``) runs every ``check_*``
below in order on every rank; a check that raises on any rank fails (the ranks agree on
the outcome with an all-reduce, so a failure on one rank does not hang the others). Each
check is one pytest test. A short subset of PyTorch's own distributed suite
(``tests/torch_distributed_suite.py``) runs too; ``PYXCCL_TORCH_SUITE=1`` runs all of it
for pyxccl and Gloo and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NRANKS = 3

# ---------------------------------------------------------------------------------------------- checks
# Each runs on every rank of a 3-rank pyxccl world; r = rank, n = world size.

R = None  # filled in the worker


def _eq(a, b, msg=""):
    if isinstance(a, torch.Tensor):
        b = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=a.dtype).expand_as(a)
        if a.dtype.is_floating_point or a.dtype.is_complex:
            ok = torch.allclose(a.to(torch.complex128 if a.dtype.is_complex else torch.float64),
                                b.to(a.dtype).to(torch.complex128 if a.dtype.is_complex else torch.float64),
                                rtol=1e-2, atol=1e-2)
        else:
            ok = bool(torch.equal(a, b.to(a.dtype)))
    else:
        ok = a == b
    assert ok, f"{msg}: {a} != {b}"


def check_backend_name(r, n):
    assert dist.get_backend() == "pyxccl"
    assert dist.group.WORLD.name() == "pyxccl"
    assert type(dist.group.WORLD).__name__ == "ProcessGroupPyxccl"


def check_allreduce_ops_dtypes(r, n):
    v = [float(q + 1) for q in range(n)]
    expect = {"SUM": sum(v), "PRODUCT": 6.0, "MIN": 1.0, "MAX": float(n), "AVG": sum(v) / n}
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64,
               torch.int8, torch.uint8, torch.int16):
        for name, want in expect.items():
            if name == "AVG" and not dt.is_floating_point:
                continue
            t = torch.full((7,), r + 1, dtype=dt)
            dist.all_reduce(t, op=getattr(dist.ReduceOp, name))
            _eq(t, want, f"{name} {dt}")
    t = torch.full((5,), float(r + 1))
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.5))
    _eq(t, sum(v) * 0.5, "premul_sum")


def check_allreduce_bool_bitwise_complex(r, n):
    t = torch.tensor([r == 0, False, True])
    dist.all_reduce(t)  # sum of bools: logical or
    _eq(t, torch.tensor([True, False, True]), "bool sum")
    t = torch.tensor([r == 0, True])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    _eq(t, torch.tensor([False, True]), "bool min")
    t = torch.tensor([1 << r, 7], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.BOR)
    _eq(t, torch.tensor([(1 << n) - 1, 7]), "BOR")
    t = torch.tensor([1 << r, 7], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.BAND)
    _eq(t, torch.tensor([1 if n == 1 else 0, 7], dtype=torch.int32), "BAND")
    t = torch.tensor([1 << r], dtype=torch.uint8)
    dist.all_reduce(t, op=dist.ReduceOp.BXOR)
    _eq(t, torch.tensor([(1 << n) - 1], dtype=torch.uint8), "BXOR")
    t = torch.full((3,), complex(r, 1), dtype=torch.complex64)
    dist.all_reduce(t)
    _eq(t, torch.full((3,), complex(sum(range(n)), n), dtype=torch.complex64), "complex sum")


def check_noncontiguous(r, n):
    base = torch.full((4, 6), float(r + 1))
    view = base[:, ::2]  # not contiguous
    dist.all_reduce(view)
    _eq(view, float(sum(range(1, n + 1))), "non-contiguous allreduce")
    _eq(base[:, 1::2], float(r + 1), "untouched columns")
    b = torch.arange(24.).view(4, 6).t() * (r + 1)  # transposed
    dist.broadcast(b, src=n - 1)
    _eq(b, torch.arange(24.).view(4, 6).t() * n, "non-contiguous broadcast")


def check_broadcast_reduce_roots(r, n):
    for root in range(n):
        t = torch.arange(10, dtype=torch.float32) + 100 * r
        dist.broadcast(t, src=root)
        _eq(t, torch.arange(10.) + 100 * root, f"broadcast root {root}")
        t = torch.full((6,), float(r + 1))
        dist.reduce(t, dst=root, op=dist.ReduceOp.MAX)
        if r == root:
            _eq(t, float(n), f"reduce root {root}")
    t = torch.full((3,), 1 << r, dtype=torch.int64)
    dist.reduce(t, dst=1, op=dist.ReduceOp.BOR)
    if r == 1:
        _eq(t, (1 << n) - 1, "reduce BOR")


def check_allgather_forms(r, n):
    outs = [torch.empty(3, 2) for _ in range(n)]
    dist.all_gather(outs, torch.full((3, 2), float(r)))
    for q, o in enumerate(outs):
        _eq(o, float(q), "all_gather")
    outs = [torch.empty(q + 1, dtype=torch.int64) for q in range(n)]  # uneven sizes
    dist.all_gather(outs, torch.full((r + 1,), r, dtype=torch.int64))
    for q, o in enumerate(outs):
        _eq(o, q, "uneven all_gather")
    out = torch.empty(n * 4, dtype=torch.bfloat16)
    dist.all_gather_into_tensor(out, torch.full((4,), float(r), dtype=torch.bfloat16))
    _eq(out.view(n, 4).float(), torch.arange(n).float().view(n, 1).expand(n, 4), "all_gather_into_tensor")
    out = torch.empty(n, 2, 2)
    dist.all_gather_into_tensor(out, torch.full((2, 2), float(r)))  # stacked form
    _eq(out[:, 0, 0], torch.arange(n).float(), "stacked all_gather_into_tensor")
    outs = [[torch.empty(2), torch.empty(3)] for _ in range(n)]
    dist.all_gather_coalesced(outs, [torch.full((2,), float(r)), torch.full((3,), float(-r))])
    for q in range(n):
        _eq(outs[q][0], float(q), "all_gather_coalesced 0")
        _eq(outs[q][1], float(-q), "all_gather_coalesced 1")
    objs = [None] * n
    dist.all_gather_object(objs, {"rank": r, "s": "x" * r})
    assert objs == [{"rank": q, "s": "x" * q} for q in range(n)], objs


def check_reduce_scatter_forms(r, n):
    out = torch.empty(2)
    dist.reduce_scatter(out, [torch.full((2,), float(q * 10 + r)) for q in range(n)])
    _eq(out, float(sum(r * 10 + q for q in range(n))), "reduce_scatter list")
    out = torch.empty(3)
    dist.reduce_scatter_tensor(out, torch.arange(3. * n) * (r + 1), op=dist.ReduceOp.SUM)
    _eq(out, (torch.arange(3.) + 3 * r) * sum(range(1, n + 1)), "reduce_scatter_tensor")
    out = torch.empty(r + 1, dtype=torch.int32)  # uneven blocks
    dist.reduce_scatter(out, [torch.full((q + 1,), 1, dtype=torch.int32) for q in range(n)])
    _eq(out, n, "uneven reduce_scatter")
    out = torch.empty(2, dtype=torch.int64)
    dist.reduce_scatter_tensor(out, torch.full((2 * n,), 1 << r, dtype=torch.int64), op=dist.ReduceOp.BOR)
    _eq(out, (1 << n) - 1, "reduce_scatter BOR")


def check_alltoall_forms(r, n):
    inp = torch.arange(2. * n) + 100 * r
    out = torch.empty(2 * n)
    dist.all_to_all_single(out, inp)
    _eq(out, torch.tensor([100. * q + 2 * r + k for q in range(n) for k in range(2)]), "all_to_all_single")
    # rank r sends q+1 rows of width 2 to rank q
    inp = torch.cat([torch.full((q + 1, 2), float(10 * r + q)) for q in range(n)])
    out = torch.empty((r + 1) * n, 2)
    dist.all_to_all_single(out, inp, output_split_sizes=[r + 1] * n, input_split_sizes=[q + 1 for q in range(n)])
    _eq(out, torch.cat([torch.full((r + 1, 2), float(10 * q + r)) for q in range(n)]), "all_to_all_single splits")
    ins = [torch.full((q + 1,), r, dtype=torch.int16) for q in range(n)]
    outs = [torch.empty(r + 1, dtype=torch.int16) for _ in range(n)]
    dist.all_to_all(outs, ins)
    for q, o in enumerate(outs):
        _eq(o, q, "all_to_all lists")


def check_gather_scatter(r, n):
    for root in range(n):
        g = [torch.empty(3) for _ in range(n)] if r == root else None
        dist.gather(torch.full((3,), float(r)), g, dst=root)
        if r == root:
            for q, x in enumerate(g):
                _eq(x, float(q), "gather")
        out = torch.empty(2, dtype=torch.float64)
        dist.scatter(out, [torch.full((2,), float(q), dtype=torch.float64) for q in range(n)] if r == root else None,
                     src=root)
        _eq(out, float(r), "scatter")
    objs = [None] * n if r == 0 else None
    dist.gather_object(("r", r), objs, dst=0)
    if r == 0:
        assert objs == [("r", q) for q in range(n)]
    lst = [f"o{q}" for q in range(n)] if r == 1 else [None] * n
    dist.broadcast_object_list(lst, src=1)
    assert lst == [f"o{q}" for q in range(n)]
    got = [None]
    dist.scatter_object_list(got, [q * q for q in range(n)] if r == 0 else None, src=0)
    assert got == [r * r]


def check_barrier_and_async_work(r, n):
    dist.barrier()
    t = torch.full((1000,), float(r))
    w = dist.all_reduce(t, async_op=True)
    assert w.wait() is True and w.is_completed() and w.is_success()
    _eq(t, float(sum(range(n))), "async allreduce")
    t = torch.ones(8)
    fut = dist.all_reduce(t, async_op=True).get_future()
    val = fut.then(lambda f: f.value()[0] * 2).wait()
    _eq(val, 2.0 * n, "future chained")
    works = [dist.broadcast(torch.full((4,), float(r)), src=q, async_op=True) for q in range(n)]
    for w in works:
        w.wait(timeout=timedelta(seconds=60))

    def nested(f):  # a completion callback that makes (and waits for) another call of the group
        x = torch.ones(3)
        dist.all_reduce(x)
        return f.value()[0] + x

    val = dist.all_reduce(torch.ones(3), async_op=True).get_future().then(nested).wait()
    _eq(val, 2.0 * n, "call from a completion callback")


def check_coalescing_manager(r, n):
    ts = [torch.full((q + 2,), float(r + 1)) for q in range(3)]
    with dist._coalescing_manager(async_ops=True) as cm:
        for t in ts:
            dist.all_reduce(t)
    cm.wait()
    for t in ts:
        _eq(t, float(sum(range(1, n + 1))), "coalesced all_reduce")
    outs, ins = [torch.empty(2 * n) for _ in range(2)], [torch.full((2,), float(r)) for _ in range(2)]
    with dist._coalescing_manager():
        for o, i in zip(outs, ins):
            dist.all_gather_into_tensor(o, i)
    for o in outs:
        _eq(o.view(n, 2)[:, 0], torch.arange(n).float(), "coalesced all_gather_into_tensor")


def check_send_recv(r, n):
    nxt, prv = (r + 1) % n, (r - 1) % n
    got = torch.empty(5)
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.irecv, got, prv), dist.P2POp(dist.isend, torch.full((5,), float(r)),
                                                                                nxt)])
    for q in reqs:
        q.wait()
    _eq(got, float(prv), "ring")
    if r == 0:  # tags: received in the opposite order of sending
        a, b = torch.empty(2), torch.empty(3)
        wb = dist.irecv(b, src=1, tag=7)
        wa = dist.irecv(a, src=1, tag=3)
        wa.wait()
        wb.wait()
        _eq(a, 3.0, "tag 3")
        _eq(b, 7.0, "tag 7")
    elif r == 1:
        dist.send(torch.full((2,), 3.0), dst=0, tag=3)
        dist.send(torch.full((3,), 7.0), dst=0, tag=7)
    # recv from any source
    if r == 0:
        senders = []
        for _ in range(2 * (n - 1)):
            x = torch.empty(4, dtype=torch.int64)
            senders.append(dist.recv(x))
            _eq(x, senders[-1], "anysource payload")
        assert sorted(senders) == sorted(list(range(1, n)) * 2), senders
    else:
        dist.send(torch.full((4,), r, dtype=torch.int64), dst=0)
        w = dist.isend(torch.full((4,), r, dtype=torch.int64), dst=0)
        w.wait()
    # to self, and a big message
    x = torch.empty(3)
    w = dist.irecv(x, src=r)
    dist.isend(torch.full((3,), 42.0), dst=r).wait()
    w.wait()
    _eq(x, 42.0, "self")
    big = torch.arange(300_000, dtype=torch.float32)
    if r == 0:
        dist.send(big, dst=n - 1)
    elif r == n - 1:
        y = torch.empty_like(big)
        dist.recv(y, src=0)
        _eq(y, big, "big message")
    dist.barrier()


def check_subgroups(r, n):
    g = dist.new_group([0, 2])
    if r in (0, 2):
        t = torch.full((3,), float(r))
        dist.all_reduce(t, group=g)
        _eq(t, 2.0, "subgroup allreduce")
        assert dist.get_rank(g) == (0 if r == 0 else 1)
        out = torch.empty(2)
        if r == 0:
            dist.send(torch.full((2,), 5.0), dst=2, group=g)
        else:
            dist.recv(out, src=0, group=g)
            _eq(out, 5.0, "subgroup p2p")
    sub, _ = dist.new_subgroups(group_size=1)
    t = torch.full((2,), float(r))
    dist.all_reduce(t, group=sub)
    _eq(t, float(r), "size-1 subgroup")
    dist.destroy_process_group(g) if r in (0, 2) else None


def check_ddp_with_comm_hook(r, n):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    for hook in (None, default_hooks.allreduce_hook, default_hooks.fp16_compress_hook):
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 3))
        if hook is not None:
            model.register_comm_hook(dist.group.WORLD, hook)
        torch.manual_seed(1 + r)
        model(torch.randn(4, 8)).sum().backward()
        g = model.module.weight.grad.clone()
        gs = [torch.empty_like(g) for _ in range(n)]
        dist.all_gather(gs, g)
        for x in gs:
            _eq(x, g, f"DDP gradients agree ({hook})")


def check_sparse_allreduce_and_ddp(r, n):
    i = torch.tensor([[r, 4], [0, r]])
    t = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0]), (5, 5))
    dist.all_reduce(t)
    dense = sum(torch.sparse_coo_tensor(torch.tensor([[q, 4], [0, q]]), torch.tensor([1.0, 2.0]), (5, 5)).to_dense()
                for q in range(n))
    _eq(t.to_dense(), dense, "sparse allreduce")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Embedding(10, 3, sparse=True))
    model(torch.tensor([r, 9])).sum().backward()
    g = model.module.weight.grad.to_dense()
    want = torch.zeros(10, 3)
    for q in range(n):
        want[q] += 1.0 / n
        want[9] += 1.0 / n
    _eq(g, want, "DDP sparse gradient")


def check_fsdp_and_functional_collectives(r, n):
    import torch.distributed._functional_collectives as funcol
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import fully_shard

    out = funcol.all_reduce(torch.full((4,), float(r)), "sum", dist.group.WORLD)
    _eq(out.wait() if hasattr(out, "wait") else out, float(sum(range(n))), "functional all_reduce")
    for wrap in ("fsdp1", "fsdp2"):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        if wrap == "fsdp1":
            m = FSDP(m, device_id=torch.device("cpu"))
        else:
            fully_shard(m, mesh=init_device_mesh("cpu", (n,)))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        torch.manual_seed(1 + r)
        for _ in range(3):
            m(torch.randn(4, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
        if wrap == "fsdp2":
            w = m[0].weight.full_tensor()
            ws = [torch.empty_like(w) for _ in range(n)]
            dist.all_gather(ws, w)
            for x in ws:
                _eq(x, w, "FSDP2 parameters agree")


def check_errors_name_op_and_backend(r, n):
    pg = dist.group.WORLD
    for call in (lambda: pg.split_group([0]), lambda: pg.merge_remote_group(None, 1, timedelta(seconds=1))):
        try:
            call()
        except NotImplementedError as exc:
            assert "pyxccl" in str(exc) and "not supported" in str(exc), exc
        else:
            raise AssertionError("expected NotImplementedError")
    try:
        dist.all_reduce(torch.empty(3, device="meta"))
    except RuntimeError as exc:
        assert "allreduce" in str(exc) and "pyxccl" in str(exc), exc
    else:
        raise AssertionError("expected an error for a non-CPU tensor")
    try:  # a bad size is refused on the calling rank, before anything moves
        dist.all_gather_into_tensor(torch.empty(5), torch.empty(3))
    except ValueError as exc:
        assert "pyxccl" in str(exc), exc
    else:
        raise AssertionError("expected ValueError")


def check_monitored_barrier(r, n):
    pg = dist.group.WORLD  # dist.monitored_barrier admits Gloo only; the group's method is the backend's
    pg.monitored_barrier(timedelta(seconds=30))
    if r != 1:  # rank 1 stays away: rank 0 names it, the others hear nothing from rank 0
        try:
            pg.monitored_barrier(timedelta(seconds=1))
        except RuntimeError as exc:
            want = "Rank 1 failed to pass monitoredBarrier" if r == 0 else "successfully reached monitoredBarrier"
            assert want in str(exc), exc
        else:
            raise AssertionError("expected monitored_barrier to fail")
    dist.barrier()


def check_timeout(r, n):
    g = dist.new_group(list(range(n)), timeout=timedelta(seconds=1))
    if r == 0:  # nobody sends: the receive fails after the group's timeout
        w = dist.irecv(torch.empty(2), src=1, group=g)
        try:
            w.wait()
        except RuntimeError as exc:
            assert "Timed out" in str(exc) or "within" in str(exc), exc
        else:
            raise AssertionError("expected a timeout")
    dist.barrier()


CHECKS = [name for name in list(globals()) if name.startswith("check_")]


def worker() -> int:
    """One rank: run every check, agree on the outcomes, rank 0 prints them as JSON."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import warnings

    import pyxccl.torch  # noqa: F401

    warnings.filterwarnings("ignore")
    dist.init_process_group("pyxccl", timeout=timedelta(seconds=60))
    r, n = dist.get_rank(), dist.get_world_size()
    results = {}
    for name in CHECKS:
        try:
            globals()[name](r, n)
            err = ""
        except Exception:  # noqa: BLE001 - reported
            err = traceback.format_exc()
        flag = torch.tensor([1 if err else 0])
        dist.all_reduce(flag)
        errs = [None] * n
        dist.all_gather_object(errs, err)
        results[name] = "" if not flag.item() else "\n".join(f"rank {q}: {e}" for q, e in enumerate(errs) if e)
    if r == 0:
        print("RESULTS " + json.dumps(results), flush=True)
    dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------- pytest side

@pytest.fixture(scope="module")
def outcomes():
    proc = subprocess.run([sys.executable, "-m", "pyxccl.cli.run", "-n", str(NRANKS), "--no-prefix", "--",
                           os.path.abspath(__file__), "--worker"], capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")), cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert line, f"the ranks did not report (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("check", CHECKS)
def test_backend(outcomes, check):
    assert check in outcomes, f"{check} did not run"
    assert not outcomes[check], outcomes[check]


def test_register_is_idempotent():
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import pyxccl.torch

    pyxccl.torch.register()
    pyxccl.torch.register()
    assert dist.Backend("pyxccl") == "pyxccl"
    assert "pyxccl" in dist.Backend.backend_list
    assert dist.Backend.backend_capability["pyxccl"] == ["cpu", "cuda"]


# the short subset of PyTorch's own suite that runs by default (a few seconds); all of it: PYXCCL_TORCH_SUITE=1
SUITE_SUBSET = ["test_all_reduce_sum", "test_all_reduce_sum_complex", "test_broadcast", "test_all_gather",
                "test_reduce_product", "test_gather_checks", "test_scatter_checks", "test_send_recv_with_tag",
                "test_send_recv_any_source", "test_DistributedDataParallelCPU", "test_ddp_logging_data_cpu",
                "test_static_graph_api_cpu"]


def _suite(args: list[str], timeout: int) -> dict:
    # torch.testing._internal imports expecttest, which the torch wheel does not pull in
    pytest.importorskip("expecttest", reason="PyTorch's test suite needs the expecttest package")
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pyxccl-suite-{os.getpid()}-{abs(hash(tuple(args)))}.json")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "torch_distributed_suite.py"), "-q", "--out", out,
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    assert os.path.exists(out), f"the suite did not finish (exit {proc.returncode}):\n{proc.stdout[-3000:]}" \
                                f"\n{proc.stderr[-3000:]}"
    with open(out) as f:
        table = json.load(f)
    os.unlink(out)
    return table


def test_pytorch_suite_subset():
    table = _suite(["--backend", "pyxccl", *[a for name in SUITE_SUBSET for a in ("--exact", name)]], timeout=300)
    failed = {k: v["detail"][-1500:] for k, v in table["tests"].items() if v["outcome"] == "failed"}
    assert not failed, failed
    assert table["counts"]["passed"] >= len(SUITE_SUBSET) - 2, table["counts"]


# the only failures of the "--as gloo" run (the suite believes it runs Gloo): tests of Gloo's own identity
AS_GLOO_EXPECTED = {
    "test_get_backend": "asserts that dist.get_backend() is 'gloo'; it is 'pyxccl'",
    "test_monitored_barrier_gloo": "dist.monitored_barrier() raises ValueError for any backend but Gloo (torch's check)",
    "test_monitored_barrier_gloo_subgroup": "the same torch check",
    "test_monitored_barrier_failure_order": "the same torch check (world size 8 only)",
    "test_monitored_barrier_wait_all_ranks": "the same torch check (world size 8 only)",
}


@pytest.mark.skipif(os.environ.get("PYXCCL_TORCH_SUITE") != "1", reason="the full suite: set PYXCCL_TORCH_SUITE=1")
def test_pytorch_suite_full_vs_gloo():
    gloo = _suite(["--backend", "gloo"], timeout=3600)
    mine = _suite(["--backend", "pyxccl"], timeout=3600)
    print(f"gloo {gloo['counts']}  pyxccl {mine['counts']}")
    regressions = {k: v["detail"][-800:] for k, v in mine["tests"].items()
                   if v["outcome"] == "failed" and gloo["tests"].get(k, {}).get("outcome") != "failed"}
    assert not regressions, regressions
    masked = _suite(["--backend", "pyxccl", "--as", "gloo"], timeout=3600)
    print(f"pyxccl as gloo {masked['counts']}")
    unexpected = {k: v["detail"][-800:] for k, v in masked["tests"].items()
                  if v["outcome"] == "failed" and k not in AS_GLOO_EXPECTED
                  and gloo["tests"].get(k, {}).get("outcome") != "failed"}
    assert not unexpected, unexpected


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.exit(worker())
