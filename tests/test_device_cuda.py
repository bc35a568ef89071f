"""The GPU path on a real GPU: 2, 3 and 4 ranks as processes sharing ``cuda:0`` (the cuda_ipc
transport through VMM file descriptors, copy-engine copies, stream memory-operation flags and
NVRTC reduction kernels), every collective x dtype x op against the numpy references; torch
CUDA tensors and CuPy arrays ordered on the caller's current stream. Skipped without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _device_jobs import (job_cases, job_catalogue_on_device, job_msccl_file, job_oneshot, job_register_errors,
                          job_repeated_calls, job_send_recv)

pyxccl_cuda = pytest.importorskip("pyxccl.cuda")
if not pyxccl_cuda.available():
    pytest.skip("no CUDA device (or no cuda-python): the GPU path is tested on the emulated device instead",
                allow_module_level=True)

ENV = {"PYXCCL_DEVICE_BACKEND": "cuda"}
MiB = 1 << 20


@pytest.mark.parametrize("arrays", ["torch", "cupy"])
@pytest.mark.parametrize("nranks", [2, 3, 4])
def test_every_collective_dtype_and_op(env_pools, nranks, arrays):
    """Torch CUDA tensors or CuPy arrays (pyxccl Buffers for the dtypes the library lacks)."""
    pytest.importorskip(arrays)
    p = env_pools(nranks, **ENV)
    p.check(job_cases, nranks=nranks, sizes=(0, 1, 7, 100003), arrays=arrays, deadline=120)


@pytest.mark.parametrize("env", [{}, {"PYXCCL_CUDA_GRAPHS": "1"}, {"PYXCCL_CUDA_DIRECT_MIN_BYTES": "1"}],
                         ids=["eager", "graphs", "single-copy"])
def test_repeated_calls_and_send_recv(env_pools, env):
    p = env_pools(2, **ENV, **env)
    p.check(job_repeated_calls, deadline=90)
    p.check(job_send_recv, deadline=90)


@pytest.mark.parametrize("nranks", [3])
def test_single_copy_every_collective(env_pools, nranks):
    p = env_pools(nranks, **ENV, PYXCCL_CUDA_DIRECT_MIN_BYTES="1")
    p.check(job_cases, nranks=nranks, sizes=(7, 100003), dtypes=("float32", "bfloat16", "int8"), deadline=90)


@pytest.mark.parametrize("nranks", [2, 4])
def test_small_all_reduces_take_the_one_shot_path(env_pools, nranks):
    env_pools(nranks, **ENV).check(job_oneshot, expect=True, deadline=60)


@pytest.mark.parametrize("nranks", [2, 3])
def test_registered_buffers_go_by_single_copy(env_pools, nranks):
    """Buffers carved from one pyxccl.cuda.empty allocation registered on every rank (VMM fds mapped
    once): the calls read the peers' bytes where they are; a bad registration fails on every rank."""
    p = env_pools(nranks, **ENV, PYXCCL_CUDA_REGISTERED_MIN_BYTES="0")
    p.check(job_cases, nranks=nranks, sizes=(7, 100003), dtypes=("float32", "bfloat16", "int8"),
            registered=64 * MiB, deadline=120)
    p.check(job_register_errors, deadline=60)


@pytest.mark.parametrize("nranks", [2, 4])
def test_large_calls_take_many_slices(env_pools, nranks):
    p = env_pools(nranks, **ENV)
    p.check(job_cases, nranks=nranks, sizes=(4 * MiB + 3,), dtypes=("float32", "bfloat16"), ops=("sum",),
            deadline=120)


@pytest.mark.parametrize("coll", ["allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall"])
def test_every_algorithm_of_the_catalogue(env_pools, coll):
    """Each algorithm of the catalogue forced, on 4 ranks sharing the GPU (host-aware ones on 2 x 2)."""
    env_pools(4, **ENV).check(job_catalogue_on_device, coll=coll, host_layouts=[((0, 1), (2, 3))], deadline=120)


MSCCL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "msccl-xml")


@pytest.mark.skipif(not os.path.isdir(MSCCL), reason="no MSCCL XML files (shared data absent)")
def test_msccl_programs_run_on_the_gpu(env_pools):
    p = env_pools(4, **ENV)
    for name in ("ag_hier_4_LL.xml", "ar_hier_12_Simple.xml", "ar_tree_12_LL.xml"):
        if os.path.exists(os.path.join(MSCCL, name)):
            p.check(job_msccl_file, path=os.path.join(MSCCL, name), deadline=60)


@pytest.mark.parametrize("scenario", ["absent", "midway", "abort"])
def test_a_lost_peer_releases_the_gpu_streams(tmp_path, scenario):
    """tests/_device_fault_runner.py on the real GPU: survivors' streams run through within 5 s of the
    death, the next call raises PeerLostError, shrink gives a correct all-reduce on the same GPU."""
    import json
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "summary.json"
    env = dict(os.environ, PYXCCL_DEVICE_BACKEND="cuda", PYXCCL_TIMEOUT="10")
    proc = subprocess.run([sys.executable, os.path.join(here, "_device_fault_runner.py"), "--scenario", scenario,
                           "--count", str(1 << 20 if scenario == "midway" else 1 << 18), "--out", str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert not summary["problems"], json.dumps(summary["problems"], indent=1) + proc.stderr[-3000:]


_TENSORS = r"""
import numpy as np, torch, pyxccl
comm = pyxccl.init()
r, N = comm.rank, comm.size
dev = torch.device("cuda:0")
s = torch.cuda.Stream(dev)
with torch.cuda.stream(s):  # ordered on the caller's current stream, not the default one
    for n in (1, 1000, 3 * 1024 * 1024 + 1):
        x = torch.full((n,), float(r + 1), device=dev)
        torch.cuda._sleep(20_000_000)  # work queued before the call: the call must wait for it
        x.mul_(2)
        comm.all_reduce(x)
        y = x * 1  # work queued after the call: it must see the result
        want = 2.0 * N * (N + 1) / 2
        assert torch.all(y == want).item(), (n, y[:4])
        g = torch.empty(N * n, device=dev, dtype=torch.bfloat16)
        comm.all_gather(torch.full((n,), r, device=dev, dtype=torch.bfloat16), g)
        assert torch.equal(g.view(N, n)[:, 0].float().cpu(), torch.arange(N).float())
    w = comm.all_reduce(torch.ones(5, device=dev), async_op=True)
    w.wait()
# a collective captured in a CUDA graph, replayed 100 times (run once first: connections, scratch)
xg = torch.empty(100003, device=dev)
xg.fill_(r + 1)
comm.all_reduce(xg)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    comm.all_reduce(xg)
    xg.mul_(2)
for i in range(100):
    xg.fill_(r + 1 + i)
    graph.replay()
    want = 2 * sum(q + 1 + i for q in range(N))
    assert torch.all(xg == want).item(), (i, xg[:4], want)
# registered memory of pyxccl.cuda.empty seen as a torch tensor: single copy through the mapping
buf = pyxccl.cuda.empty(1 << 20, "float32")
t = torch.as_tensor(buf, device=dev)
reg = comm.register(buf)
t.fill_(r + 1)
comm.all_reduce(t[: 1 << 19])
assert torch.all(t[: 1 << 19] == N * (N + 1) / 2).item() and torch.all(t[1 << 19:] == r + 1).item()
torch.cuda.synchronize()
reg.deregister()
del t
buf.free()
try:
    import cupy as cp
    with cp.cuda.Device(0):
        a = cp.arange(100003, dtype=cp.float64) * (r + 1)
        comm.all_reduce(a, op="max")
        assert bool((a == cp.arange(100003, dtype=cp.float64) * N).all())
except ImportError:
    pass
try:
    comm.all_reduce(torch.ones(4, device=dev), np.ones(4, np.float32))
except pyxccl.InvalidArgument as e:
    assert "cpu" in str(e) and "cuda:0" in str(e), e
else:
    raise SystemExit("a CPU and a CUDA buffer in one call were taken")
torch.cuda.synchronize()
print("OK", r, flush=True)
comm.destroy()
"""


@pytest.mark.parametrize("nranks", [2, 4])
def test_torch_and_cupy_on_the_callers_stream(tmp_path, nranks):
    script = tmp_path / "ranks.py"
    script.write_text(_TENSORS)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "pyxccl.cli.run", "-n", str(nranks), sys.executable, str(script)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(line.split()[-1] for line in out.stdout.splitlines() if "OK" in line) == \
        [str(r) for r in range(nranks)]


def test_ddp_on_cuda_pyxccl_matches_gloo(tmp_path):
    """DDP on CUDA tensors, 2 ranks on one GPU: the "pyxccl" backend trains to gloo's parameters."""
    torch = pytest.importorskip("torch")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    example = os.path.join(root, "examples", "ddp_train.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"), OMP_NUM_THREADS="1")
    outs = {}
    for backend in ("pyxccl", "gloo"):
        out = str(tmp_path / f"{backend}.pt")
        proc = subprocess.run([sys.executable, "-m", "pyxccl.cli.run", "-n", "2", "--", example, "--backend", backend,
                               "--device", "cuda", "--steps", "100", "--save", out, "--log-every", "50"],
                              capture_output=True, text=True, timeout=300, env=env, cwd=root, check=False)
        assert proc.returncode == 0 and os.path.exists(out), \
            f"{backend} on cuda failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outs[backend] = torch.load(out)
    p, g = outs["pyxccl"], outs["gloo"]
    assert p.keys() == g.keys()
    for k in p:
        torch.testing.assert_close(p[k], g[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


_DIST = r"""
import os, torch, torch.distributed as dist
import pyxccl.torch
dist.init_process_group("pyxccl")
r, N = dist.get_rank(), dist.get_world_size()
dev = torch.device("cuda:0")
x = torch.full((1000,), float(r + 1), device=dev)
dist.all_reduce(x)
assert torch.all(x == N * (N + 1) / 2).item()
b = torch.arange(7, device=dev, dtype=torch.int16) * (r + 1)  # int16: widened to int32 and back
dist.all_reduce(b, op=dist.ReduceOp.MAX)
assert torch.equal(b.cpu(), (torch.arange(7, dtype=torch.int16) * N))
m = torch.tensor([0b1111 ^ (1 << r)], device=dev, dtype=torch.int32)  # bitwise: an allgather and a fold
dist.all_reduce(m, op=dist.ReduceOp.BAND)
assert m.item() == 0b1111 & ~sum(1 << q for q in range(N)), m
flag = torch.tensor([r == 0], device=dev)
dist.all_reduce(flag, op=dist.ReduceOp.MAX)
assert flag.item()
y = torch.arange(5, device=dev, dtype=torch.float64) if r == 0 else torch.zeros(5, device=dev, dtype=torch.float64)
dist.broadcast(y, src=0)
assert torch.equal(y.cpu(), torch.arange(5, dtype=torch.float64))
g = torch.empty(N * 3, device=dev)
dist.all_gather_into_tensor(g, torch.full((3,), float(r), device=dev))
assert torch.equal(g.cpu(), torch.arange(N).float().repeat_interleave(3))
outs = [torch.empty(2, device=dev) for _ in range(N)]
dist.all_gather(outs, torch.full((2,), float(r), device=dev))
assert all(torch.all(o == q).item() for q, o in enumerate(outs))
rs = torch.empty(4, device=dev)
dist.reduce_scatter_tensor(rs, torch.ones(4 * N, device=dev))
assert torch.all(rs == N).item()
a2a = torch.empty(N, device=dev)
dist.all_to_all_single(a2a, torch.arange(N, device=dev).float() + 10 * r)
assert torch.equal(a2a.cpu(), torch.tensor([10.0 * q + r for q in range(N)]))
if r == 0:
    dist.send(torch.full((6,), 42.0, device=dev), 1)
elif r == 1:
    z = torch.zeros(6, device=dev)
    dist.recv(z, 0)
    assert torch.all(z == 42).item(), z
w = dist.all_reduce(torch.ones(3, device=dev), async_op=True)
w.wait()
dist.barrier()
torch.cuda.synchronize()
print("OK", r, flush=True)
dist.destroy_process_group()
"""


def test_torch_backend_on_cuda_tensors(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(_DIST)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "pyxccl.cli.run", "-n", "3", sys.executable, str(script)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(line.split()[-1] for line in out.stdout.splitlines() if "OK" in line) == ["0", "1", "2"]
