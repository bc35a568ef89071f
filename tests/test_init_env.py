"""pyxccl.init() builds the world communicator from launcher variables (torchrun style and Open MPI style)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
PROG = """
import numpy as np, pyxccl
comm = pyxccl.init(timeout=60)
x = np.full(5, comm.rank + 1, np.int64)
comm.all_reduce(x)
print("RESULT", comm.rank, comm.size, int(x[0]), flush=True)
comm.destroy()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("style", ["torchrun", "openmpi", "pmi", "slurm"])
def test_init_from_launcher_environment(style):
    n, port = 3, _free_port()
    procs = []
    for r in range(n):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OMPI_", "PMI_", "SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
        env.update(PYTHONPATH=SRC, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.update({"torchrun": {"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r)},
                    "openmpi": {"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": str(n),
                                "OMPI_COMM_WORLD_LOCAL_RANK": str(r)},
                    "pmi": {"PMI_RANK": str(r), "PMI_SIZE": str(n)},
                    "slurm": {"SLURM_PROCID": str(r), "SLURM_NTASKS": str(n)}}[style])
        procs.append(subprocess.Popen([sys.executable, "-c", PROG], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out)
    lines = sorted(line.split()[1:] for o in outs for line in o.splitlines() if line.startswith("RESULT"))
    assert lines == [[str(r), str(n), str(n * (n + 1) // 2)] for r in range(n)]


def test_init_single_process_without_launcher():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = SRC
    out = subprocess.run([sys.executable, "-c", PROG], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RESULT 0 1 1" in out.stdout
