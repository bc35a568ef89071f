"""The launcher and the benchmark tool, as their users run them: pyxccl-run and pyxccl-perf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

RUN = [sys.executable, "-m", "pyxccl.cli.run"]
PERF = [sys.executable, "-m", "pyxccl.cli.perf"]
COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "alltoall", "gather", "scatter")


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _rows(stdout: str) -> dict[str, list[list[str]]]:
    """pyxccl-perf's table: per collective, its data rows (columns as strings, rank prefix removed)."""
    rows: dict[str, list[list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("[") and "] " in line:
            line = line.split("] ", 1)[1]
        if line.startswith("# Collective test: "):
            current = line.split(": ", 1)[1].strip()
            rows[current] = []
        elif line.strip() and not line.startswith("#") and current is not None and line.split()[0].isdigit():
            rows[current].append(line.split())
    return rows


def test_perf_all_collectives_under_the_launcher_checks_every_result(tmp_path):
    out = tmp_path / "rows.json"
    r = _run(RUN + ["-n", "3", "--", sys.executable, "-m", "pyxccl.cli.perf", "-c", "all", "-b", "8", "-e", "256K",
                    "-f", "32", "--iters", "5", "-w", "1", "--check", "-J", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(r.stdout)
    assert set(rows) == set(COLLECTIVES)
    for name, table in rows.items():
        # sizes are whole elements per rank, as nccl-tests rounds them (3 ranks x 4 B)
        assert [int(t[0]) for t in table] in ([8, 256, 8192, 262144], [0, 252, 8184, 262140]), (name, table)
        for t in table:  # nccl-tests columns: ... time algbw busbw #wrong (out of place), the same in place
            assert len(t) == 13, t
            assert t[8] == "0" and t[12] == "0", (name, t)  # #wrong
            assert float(t[5]) > 0 and float(t[9]) > 0
    assert "Avg bus bandwidth" in r.stdout
    data = json.loads(out.read_text())
    assert len(data) == 4 * len(COLLECTIVES)
    assert all(row["oop_wrong"] == 0 and row["ip_wrong"] == 0 and row["oop_time"] > 0 for row in data)


def test_perf_starts_its_own_ranks_and_checks_other_types_and_ops():
    r = _run(PERF + ["-n", "2", "-c", "allreduce,reducescatter", "-b", "4", "-e", "4K", "-f", "32", "-d", "bfloat16",
                     "-o", "max", "--iters", "3", "-w", "1", "--check"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(r.stdout)
    assert set(rows) == {"all_reduce", "reduce_scatter"}
    assert all(t[2] == "bfloat16" and t[3] == "max" and t[8] == "0" and t[12] == "0" for v in rows.values() for t in v)


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "rank.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def _alive(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


def test_run_names_the_rank_that_failed_and_stops_the_others(tmp_path):
    script = _script(tmp_path, """
        import os, sys, time
        r = int(os.environ["RANK"])
        assert os.environ["WORLD_SIZE"] == "3" and os.environ["LOCAL_RANK"] == str(r)
        assert os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"]) > 0
        print("ready", r, flush=True)
        if r == 1:
            sys.exit(3)
        time.sleep(60)
    """)
    t0 = time.monotonic()
    r = _run(RUN + ["-n", "3", sys.executable, script])
    assert r.returncode == 3
    assert "rank 1" in r.stderr and "status 3" in r.stderr
    assert time.monotonic() - t0 < 30  # the sleeping ranks were stopped, not waited for
    assert "[1] ready 1" in r.stdout.splitlines()  # output carries the rank prefix
    assert not _alive(script)


def test_run_names_a_killed_rank_and_leaves_no_process(tmp_path):
    script = _script(tmp_path, """
        import os, signal, time
        if os.environ["RANK"] == "2":
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """)
    r = _run(RUN + ["-n", "3", "--no-prefix", sys.executable, script])
    assert r.returncode != 0
    assert "rank 2" in r.stderr and "SIGKILL" in r.stderr
    assert not _alive(script)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
def test_run_passes_a_clean_exit_through(tmp_path):
    script = _script(tmp_path, """
        import pyxccl, numpy as np
        comm = pyxccl.init()
        x = np.full(4, comm.rank + 1.0)
        comm.all_reduce(x)
        print("sum", x[0])
        comm.destroy()
    """)
    r = _run(RUN + ["-n", "2", sys.executable, script])
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(r.stdout.splitlines()) == ["[0] sum 3.0", "[1] sum 3.0"]
