"""torch CPU tensors go through every collective without copies (ranks as threads: the local transport)."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install torch==2.13.0)")

import pyxccl  # noqa: E402


def _run(nranks, fn):
    uid = pyxccl.get_unique_id()
    errors, results = [], [None] * nranks

    def rank(r):
        try:
            comm = pyxccl.Communicator(nranks, uid, r, timeout=30)
            try:
                results[r] = fn(comm)
            finally:
                comm.destroy()
        except BaseException as exc:  # noqa: BLE001
            errors.append((r, exc))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(nranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64", "float8_e4m3fn", "float16"])
def test_torch_collectives(dtype):
    dt = getattr(torch, dtype)

    def body(comm):
        r, n = comm.rank, comm.size
        t = torch.full((3, 5), r + 1).to(dt)
        assert comm.all_reduce(t) is t and (t.float() == n * (n + 1) / 2).all()
        src = torch.full((2, 2), r).to(dt)
        out = torch.empty(2 * n, 2, dtype=dt)
        assert comm.all_gather(src, out) is out
        assert out.float().reshape(n, 4).tolist() == [[float(q)] * 4 for q in range(n)]
        part = comm.reduce_scatter(torch.ones(4 * n, dtype=dt))
        assert isinstance(part, torch.Tensor) and part.numel() == 4 and (part.float() == n).all()
        b = torch.full((7,), r).to(dt)
        comm.broadcast(b, root=n - 1)
        assert (b.float() == n - 1).all()
        return comm.transport_of((r + 1) % n)

    assert _run(3, body) == ["local"] * 3


def test_non_contiguous_tensor_is_rejected_before_sending():
    def body(comm):
        with pytest.raises(pyxccl.InvalidArgument, match="input: the tensor is not contiguous"):
            comm.all_reduce(torch.zeros(4, 4).t())
        x = torch.ones(4)
        comm.all_reduce(x)
        return x.tolist()

    assert _run(2, body) == [[2.0] * 4] * 2
