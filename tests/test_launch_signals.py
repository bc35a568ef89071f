"""pyxccl-run under signals: SIGTERM, SIGINT and SIGHUP reach every rank; nothing is left behind.

Each rank writes its pid (and what signal it got) into a folder; the test signals the
launcher once every rank is up, then checks the launcher's exit status (128 + signal) and
that within 5 s no process of any rank's process group is left (a rank that ignores the
signal and a rank's child that ignores it are SIGKILLed after the grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg") or not os.path.isdir("/proc"),
                                reason="needs process groups and /proc")

RUN = [sys.executable, "-m", "pyxccl.cli.run"]
LIMIT = 5.0  # seconds from the signal until no rank process may be left

RANK = """
    import os, signal, subprocess, sys, time
    folder, sig = sys.argv[1], int(sys.argv[2])
    r = int(os.environ["RANK"])
    stubborn = os.environ.get("STUBBORN") == "1"

    def record(s, _frame):
        open(os.path.join(folder, f"got{r}"), "w").write(str(s))
        sys.exit(0)

    if stubborn and r == 0:
        signal.signal(sig, signal.SIG_IGN)       # rank 0 ignores it: SIGKILL after the grace period
    else:
        signal.signal(sig, record)
    if stubborn and r == 1:                      # rank 1's child ignores it too, in rank 1's group
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time\\n"
                                  "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\\n"
                                  "    signal.signal(s, signal.SIG_IGN)\\n"
                                  "time.sleep(120)"])
        open(os.path.join(folder, "child.tmp"), "w").write(str(child.pid))
        os.replace(os.path.join(folder, "child.tmp"), os.path.join(folder, "child"))
    open(os.path.join(folder, f"pid{r}.tmp"), "w").write(str(os.getpid()))
    os.replace(os.path.join(folder, f"pid{r}.tmp"), os.path.join(folder, f"pid{r}"))
    if os.environ.get("GO"):
        while not os.path.exists(os.path.join(folder, "go")):
            time.sleep(0.02)
        sys.exit(0)
    time.sleep(120)
"""

COLLECTIVE = """
    import os, sys, time
    import numpy as np
    import pyxccl
    folder = sys.argv[1]
    comm = pyxccl.init()
    open(os.path.join(folder, f"pid{comm.rank}.tmp"), "w").write(str(os.getpid()))
    os.replace(os.path.join(folder, f"pid{comm.rank}.tmp"), os.path.join(folder, f"pid{comm.rank}"))
    if comm.rank == 2:
        time.sleep(120)                          # never arrives: the others wait inside all_reduce
    comm.all_reduce(np.ones(1 << 16, np.float32))
"""


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "rank.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def _wait_for(paths: list[Path], launcher: subprocess.Popen, seconds: float = 30.0) -> list[int]:
    """The pids written to ``paths`` once they all exist (the launcher must still be running)."""
    end = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert launcher.poll() is None, launcher.communicate()
        assert time.monotonic() < end, f"ranks not up after {seconds:g}s: {[p.name for p in paths if not p.exists()]}"
        time.sleep(0.02)
    return [int(p.read_text()) for p in paths]


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, process group) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def _left(pids: list[int]) -> list[str]:
    """Processes (not zombies) that are one of ``pids`` or in the process group of one."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(entry)
        if st is not None and st[0] not in ("Z", "X") and (int(entry) in pids or st[1] in pids):
            left.append(f"pid {entry} (group {st[1]}, state {st[0]})")
    return left


def _assert_nothing_left_by(pids: list[int], deadline: float) -> None:
    while _left(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _left(pids), _left(pids)


@pytest.fixture(autouse=True)
def _kill_leftovers(tmp_path):
    """Whatever happens (an old launcher that leaves ranks running), kill their groups after the test."""
    yield
    for f in list(tmp_path.glob("pid?")) + list(tmp_path.glob("child")):
        pid = int(f.read_text())
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _start(tmp_path: Path, body: str, sig: int, env: dict[str, str] | None = None,
           preexec=None) -> subprocess.Popen:
    script = _script(tmp_path, body)
    return subprocess.Popen(RUN + ["-n", "3", script, str(tmp_path), str(int(sig))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=preexec)


def test_sigterm_forwards_then_kills_the_stubborn_and_leaves_no_process(tmp_path):
    launcher = _start(tmp_path, RANK, signal.SIGTERM, {"STUBBORN": "1"})
    pids = _wait_for([tmp_path / f"pid{r}" for r in range(3)] + [tmp_path / "child"], launcher)
    t0 = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=LIMIT)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    _assert_nothing_left_by(pids, t0 + LIMIT)
    assert (tmp_path / "got2").read_text() == str(int(signal.SIGTERM))  # forwarded, not just killed
    assert (tmp_path / "got1").read_text() == str(int(signal.SIGTERM))
    assert not (tmp_path / "got0").exists()
    assert "got SIGTERM" in err and "killed rank(s) 0" in err, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_reach_every_rank(tmp_path, sig):
    launcher = _start(tmp_path, RANK, sig)
    pids = _wait_for([tmp_path / f"pid{r}" for r in range(3)], launcher)
    t0 = time.monotonic()
    launcher.send_signal(sig)
    _, err = launcher.communicate(timeout=LIMIT)
    assert launcher.returncode == 128 + sig, err
    assert time.monotonic() - t0 < 2.0  # every rank ended at once: no grace period spent
    assert [(tmp_path / f"got{r}").read_text() for r in range(3)] == [str(int(sig))] * 3
    _assert_nothing_left_by(pids, t0 + LIMIT)


def test_a_second_signal_cuts_the_grace_period_short(tmp_path):
    launcher = _start(tmp_path, RANK, signal.SIGTERM, {"STUBBORN": "1"})
    pids = _wait_for([tmp_path / f"pid{r}" for r in range(3)] + [tmp_path / "child"], launcher)
    t0 = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    while not (tmp_path / "got2").exists():  # the first one was forwarded
        assert time.monotonic() - t0 < LIMIT
        time.sleep(0.02)
    launcher.send_signal(signal.SIGTERM)
    launcher.communicate(timeout=LIMIT)
    assert launcher.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 2.0  # not the 3 s grace period
    _assert_nothing_left_by(pids, t0 + LIMIT)


def test_sigterm_stops_ranks_waiting_in_a_collective(tmp_path):
    launcher = _start(tmp_path, COLLECTIVE, signal.SIGTERM, {"PYXCCL_TIMEOUT": "60"})
    pids = _wait_for([tmp_path / f"pid{r}" for r in range(3)], launcher, 60.0)
    t0 = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=LIMIT)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    _assert_nothing_left_by(pids, t0 + LIMIT)


def test_a_signal_the_launcher_was_started_ignoring_stays_ignored(tmp_path):
    """nohup: SIGHUP neither stops the launcher nor reaches the ranks; they finish normally."""
    launcher = _start(tmp_path, RANK, signal.SIGHUP, {"GO": "1"},
                      preexec=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    pids = _wait_for([tmp_path / f"pid{r}" for r in range(3)], launcher)
    launcher.send_signal(signal.SIGHUP)
    (tmp_path / "go").write_text("")
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 0, err
    assert not any((tmp_path / f"got{r}").exists() for r in range(3))
    _assert_nothing_left_by(pids, time.monotonic() + LIMIT)
