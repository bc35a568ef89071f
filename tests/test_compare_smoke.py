"""Smoke test of benchmarks/compare.py: a tiny --quick run of pyxccl (and Gloo when torch is
importable) writes a JSON table with every row, into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE = os.path.join(ROOT, "benchmarks", "compare.py")
OPS = ["allreduce", "allgather", "reducescatter", "broadcast", "alltoall"]


def _has_gloo() -> bool:
    return importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="shared-memory ranks on Linux")
def test_compare_quick_writes_rows(tmp_path):
    libs = ["pyxccl"] + (["gloo"] if _has_gloo() else [])
    cmd = [sys.executable, COMPARE, "--quick", "--libs", ",".join(libs), "--sizes", "8,1K",
           "--budget", "0.01", "--sample-ms", "1", "--warmup-s", "0.005", "--min-samples", "2",
           "--max-samples", "3", "--timeout", "60", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.endswith("-n2-quick.md") for f in files), files
    [js] = [p for p in tmp_path.iterdir() if p.name.endswith(".json")]
    doc = json.loads(js.read_text())
    assert doc["settings"]["nranks_list"] == [2] and doc["settings"]["repeats"] == 1
    assert [r["lib"] for r in doc["runs"]] == libs  # one run per library, in order
    for lib in libs:
        run = next(x for x in doc["runs"] if x["lib"] == lib)
        assert run["status"] == "ok", run
        assert {(row["op"], row["size"]) for row in run["rows"]} == {(op, s) for op in OPS for s in (8, 1024)}
        assert all(row["wrong"] == 0 and row["time_us"] > 0 for row in run["rows"])
        cells = doc["summary"]["2"][lib]
        assert set(cells) == set(OPS) and all(set(cells[op]) == {"8", "1024"} for op in OPS)
    if "gloo" in libs:
        assert doc["ratios"]["2"]["allreduce"]["8"]["gloo"] > 0
    assert any(t["id"] == "ar-8B" and t["evaluated"] for t in doc["targets"])
    assert "pyxccl's busbw ratio" in (tmp_path / js.name.replace(".json", ".md")).read_text()


def test_missing_mpi_env_is_skipped_not_fatal(tmp_path):
    cmd = [sys.executable, COMPARE, "--quick", "--libs", "pyxccl,mpich", "--ops", "allreduce", "--sizes", "8",
           "--mpich-python", str(tmp_path / "nope" / "bin" / "python"), "--budget", "0.01", "--sample-ms", "1",
           "--warmup-s", "0.005", "--min-samples", "2", "--max-samples", "3", "--timeout", "60",
           "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mpich: SKIPPED" in r.stderr and "pip install numpy mpich mpi4py" in r.stderr
    [js] = [p for p in tmp_path.iterdir() if p.name.endswith(".json")]
    doc = json.loads(js.read_text())
    assert doc["environments"]["mpich"]["ok"] is False
    assert [x["lib"] for x in doc["runs"]] == ["pyxccl"]


def test_run_past_its_timeout_is_recorded_and_killed(tmp_path):
    cmd = [sys.executable, COMPARE, "--libs", "pyxccl", "--nranks", "2", "--repeats", "1", "--ops", "allreduce",
           "--sizes", "8", "--budget", "60", "--sample-ms", "1", "--min-samples", "100000",
           "--max-samples", "100000", "--timeout", "3", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr[-3000:]  # a failed run is reported, the table is still saved
    [js] = [p for p in tmp_path.iterdir() if p.name.endswith(".json")]
    [run] = json.loads(js.read_text())["runs"]
    assert run["status"] == "timeout" and run["wall_s"] < 20
    assert "TIMEOUT" in (tmp_path / js.name.replace(".json", ".md")).read_text()
    # nothing of the killed run is left: its worker processes carried the script's name
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "--min-samples 100000" not in ps
