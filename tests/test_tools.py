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


# ---------------------------------------------------------------- pyxccl-perf --device cuda

EMULATED = {"PYXCCL_DEVICE_BACKEND": "emulated", "PYXCCL_CUDA_SLOT_BYTES": "16K"}


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def test_perf_on_device_memory_prints_nccl_tests_columns_and_checks_every_collective():
    """The brief's command on the emulated device: every collective's rows, 0 wrong, and the
    same table (sizes, counts, types, ops, roots; 13 columns) as the same sweep on host memory."""
    t0 = time.monotonic()
    r = subprocess.run(RUN + ["-n", "2", "--", *PERF, "-c", "all", "-b", "8", "-e", "64K", "--device", "cuda",
                              "--check"], capture_output=True, text=True, timeout=120, env=_env(**EMULATED))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(r.stdout)
    assert set(rows) == set(COLLECTIVES)
    sizes = [8 << k for k in range(14)]  # 8 B .. 64 KiB, factor 2
    for name, table in rows.items():
        assert [int(t[0]) for t in table] == sizes, (name, table)
        for t in table:
            assert len(t) == 13, t
            assert t[8] == "0" and t[12] == "0", (name, t)  # #wrong, out of place and in place
            assert float(t[5]) > 0 and float(t[9]) > 0, t
    assert "device cuda" in r.stdout and "# Using devices" in r.stdout
    assert sum("device  0 emulated" in line for line in r.stdout.splitlines()) == 2  # both ranks, cuda:0
    assert "# Out of bounds values : 0 OK" in r.stdout
    host = _run(RUN + ["-n", "2", "--", *PERF, "-c", "all", "-b", "8", "-e", "64K", "--iters", "1", "-w", "0"])
    assert host.returncode == 0, host.stderr[-2000:]
    assert {k: [t[:5] for t in v] for k, v in _rows(host.stdout).items()} == \
        {k: [t[:5] for t in v] for k, v in rows.items()}
    heading = [line for line in r.stdout.splitlines() if "(elements)" in line or "out-of-place" in line]
    assert heading == [line for line in host.stdout.splitlines() if "(elements)" in line or "out-of-place" in line]
    assert took < 60, took


def test_perf_check_reads_the_results_back_from_device_memory(tmp_path):
    """The check looks at what the device holds: the buffers are device memory, a correct result
    counts 0 wrong, and a result corrupted on the device is counted."""
    script = _script(tmp_path, """
        import numpy as np, pyxccl
        from pyxccl.cli import perf
        from pyxccl.cuda import get_device
        comm = pyxccl.init()
        dev = get_device("cuda:0")
        for coll in perf.COLLECTIVES:
            case = perf.Case(comm, coll, 64, "float32", pyxccl.dtypes.op_of("sum"), 0, None, dev)
            assert case.input.array is None and case.input.device == "cuda:0"
            for inplace in (False, True):
                case.prepare(inplace)
                got = case.run(inplace)
                ok = case.wrong(got)
                dev.write(got.address, np.full(2, 99, np.float32).tobytes())
                print(coll, inplace, ok, case.wrong(got))
            case.close()
        comm.destroy()
    """)
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60, env=_env(**EMULATED))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 2 * 8, lines
    assert all(line.split()[2:] == ["0", "2"] for line in lines), lines


def test_perf_device_cuda_without_a_usable_cuda_fails_clearly():
    """No driver or GPU (and not the emulated backend): exit status 2 and one clear message, before
    any rank starts a table."""
    import pyxccl.cuda

    if pyxccl.cuda.available():
        pytest.skip("this machine has a usable GPU")
    r = subprocess.run([*PERF, "-n", "2", "-c", "allreduce", "-b", "8", "-e", "64", "--device", "cuda", "--check"],
                       capture_output=True, text=True, timeout=60, env=_env(PYXCCL_DEVICE_BACKEND=None))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "pyxccl-perf: --device cuda: CUDA is not usable here" in r.stderr
    assert "PYXCCL_DEVICE_BACKEND=emulated" in r.stderr
    assert "Traceback" not in r.stderr and "size" not in r.stdout


def test_perf_device_cuda_without_cuda_python_names_the_missing_package(tmp_path):
    """cuda-python missing (simulated, so this runs on GPU machines too): the message says what to install."""
    script = _script(tmp_path, """
        from pyxccl.cuda import driver
        driver.cu = None
        from pyxccl.cli import perf
        perf.main(["-c", "allreduce", "-b", "8", "-e", "8", "--device", "cuda"])
    """)
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60,
                       env=_env(PYXCCL_DEVICE_BACKEND="cuda"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "--device cuda: CUDA is not usable here" in r.stderr and "cuda-python is not installed" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_perf_checks_premul_sum_against_the_scaled_sum(device):
    """premul_sum's expected result multiplies every input by the scalar first (host and device)."""
    r = subprocess.run(PERF + ["-n", "2", "-c", "allreduce,reduce,reducescatter", "-d", "float64", "-o", "premul_sum",
                               "--premul", "0.25", "-b", "8", "-e", "1K", "-f", "32", "--iters", "2", "-w", "0",
                               "--check", "--device", device],
                       capture_output=True, text=True, timeout=60, env=_env(**EMULATED))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    rows = _rows(r.stdout)
    assert set(rows) == {"all_reduce", "reduce", "reduce_scatter"}
    assert all(t[3] == "mulsum" and t[8] == "0" and t[12] == "0" for v in rows.values() for t in v)


# ---------------------------------------------------------------- bad input: one line, exit status 2

MASTER = [sys.executable, "-c", "import sys; from pyxccl.rpc.master import main; sys.exit(main())"]
TOOLS = {
    "pyxccl-run": RUN + ["-n", "2", "--", sys.executable, "-c", "print('rank ran')"],
    "pyxccl-perf": PERF + ["-c", "allreduce", "-b", "8", "-e", "64"],
    "pyxccl-perf -n": PERF + ["-n", "2", "-c", "allreduce", "-b", "8", "-e", "64"],
    "pyxccl-topo": [sys.executable, "-m", "pyxccl.cli.topo", "-q"],
    "pyxccl-master": MASTER,
}


@pytest.mark.parametrize("bad", [{"PYXCCL_SLOT_BYTES": "7"}, {"PYXCCL_DEBUG": "loud"}], ids=["slot7", "debug"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_tools_print_one_line_for_a_bad_variable(tool, bad):
    """A PYXCCL_* value the engine cannot use: ``pyxccl-<tool>: error: <var>=<value> ...`` and exit
    status 2, no traceback, before any rank starts (before: PYXCCL_SLOT_BYTES=7 was taken, and a bad
    PYXCCL_DEBUG raised at import with a traceback)."""
    (var, value), = bad.items()
    r = subprocess.run(TOOLS[tool], capture_output=True, text=True, timeout=60, env=_env(**bad))
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    name = tool.split()[0]
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: {var}={value!r} is not usable: "), r.stderr
    assert "allowed: " in lines[0] and "rank ran" not in r.stdout and "size" not in r.stdout


def test_perf_names_a_bad_type_in_one_line_before_starting_ranks():
    r = _run(PERF + ["-n", "2", "-c", "allreduce", "-b", "8", "-e", "64", "-d", "complex64"], timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "pyxccl-perf: error: dtype 'complex64'" in r.stderr


def test_perf_plot_without_matplotlib_fails_before_running(tmp_path):
    """--plot where matplotlib cannot be imported: one line, exit status 2, no benchmark run (before: the
    whole benchmark ran and it exited 0 with no picture)."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib (hidden by the test)')\n")
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "busbw.png"
    t0 = time.monotonic()
    r = subprocess.run(PERF + ["-n", "2", "-c", "allreduce", "-b", "8", "-e", "1M", "--plot", str(out)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    assert r.stderr.startswith("pyxccl-perf: error: --plot needs matplotlib") and len(r.stderr.splitlines()) == 1
    assert "size" not in r.stdout and not out.exists() and time.monotonic() - t0 < 20


def test_perf_plot_draws_out_of_place_and_in_place(tmp_path):
    pytest.importorskip("matplotlib")
    from pyxccl.cli import perf, perf_plot

    rows = [perf.Row(c, s, s // 4, "float", "sum", -1, 1.0, 1.0, b, 0, 2.0, 0.5, b / 2, 0)
            for c in ("all_reduce", "broadcast") for s, b in ((8, 0.1), (1024, 1.0), (1 << 20, 5.0))]
    lines = perf_plot.series(rows)
    assert [(c, w) for c, w, _, _ in lines] == [("all_reduce", "out of place"), ("all_reduce", "in place"),
                                                ("broadcast", "out of place"), ("broadcast", "in place")]
    assert lines[0][3] == [0.1, 1.0, 5.0] and lines[1][3] == [0.05, 0.5, 2.5] and lines[1][2] == [8, 1024, 1 << 20]
    path = tmp_path / "busbw.png"
    labels = perf_plot.plot(rows, str(path))
    assert labels == ["all_reduce, out of place", "all_reduce, in place", "broadcast, out of place",
                      "broadcast, in place"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perf_sizes_end_at_the_end_size(tmp_path):
    """-b 8 -e 16M -f 4 (the README's quick start) measures 16M last; nccl-tests would stop at 8M."""
    from pyxccl.cli.perf import sizes

    quick = sizes(8, 16 << 20, 4)
    assert quick[0] == 8 and quick[-2:] == [8 << 20, 16 << 20] and len(quick) == 12
    assert sizes(8, 256 << 10, 32) == [8, 256, 8192, 256 << 10]   # reached exactly: nothing added
    assert sizes(0, 64, 4) == [0, 1, 4, 16, 64] and sizes(8, 40, 1, 16) == [8, 24, 40]
    assert sizes(100, 50, 2) == []
    out, png = tmp_path / "rows.json", tmp_path / "busbw.png"
    r = _run(PERF + ["-n", "2", "-c", "allreduce", "-b", "8", "-e", "1K", "-f", "4", "--iters", "1", "-w", "0",
                     "--check", "-J", str(out), "--plot", str(png)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row["size"] for row in json.loads(out.read_text())] == [8, 32, 128, 512, 1024]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert png.read_bytes()[:4] == b"\x89PNG"
