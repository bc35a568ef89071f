"""Real MSCCL XML algorithms (../shared/data/msccl-xml) run on pyxccl's executor and give numpy's answer.

Ranks are threads of this process (local transport), so 8-rank files stay cheap.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from _msccl_check import runs_right

import pyxccl
from pyxccl.ir import msccl_xml

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "msccl-xml")
FILES = sorted(f for f in os.listdir(DATA) if f.endswith(".xml")) if os.path.isdir(DATA) else []


def _run(nranks, fn):
    uid = pyxccl.get_unique_id()
    errors, results = [], [None] * nranks

    def rank(r):
        try:
            comm = pyxccl.Communicator(nranks, uid, r, timeout=60)
            try:
                results[r] = fn(comm)
            finally:
                comm.destroy()
        except BaseException as exc:  # noqa: BLE001
            errors.append((r, repr(exc)))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(nranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


@pytest.mark.skipif(not FILES, reason=f"no MSCCL XML files at {DATA} (shared data absent)")
@pytest.mark.parametrize("name", FILES)
def test_msccl_file_runs(name):
    prog = msccl_xml.load(os.path.join(DATA, name))
    n, coll = prog.nranks, prog.collective
    if coll not in ("allreduce", "allgather", "alltoall"):
        pytest.skip(f"{coll} files are not exercised here")
    assert _run(n, lambda comm: runs_right(comm, prog)) == [True] * n


def test_a_program_for_another_collective_is_refused():
    if not FILES:
        pytest.skip("shared data absent")
    prog = msccl_xml.load(os.path.join(DATA, "a2a2ll.xml"))

    def body(comm):
        with pytest.raises(pyxccl.InvalidArgument, match="implements alltoall"):
            comm.all_reduce(np.ones(4, np.float32), algorithm=prog)
        return True

    assert _run(2, body) == [True, True]
