"""One host's ranks under ``pyxccl-run``: started, watched, stopped; signals forwarded.

Every rank runs in its own process group (its own session), so a signal meant for the
launcher (a terminal's Ctrl-C, ``timeout``, ``kill``, a batch scheduler's SIGTERM) reaches
the ranks only through the launcher, which forwards SIGTERM, SIGINT and SIGHUP to every
rank's process group, waits up to :data:`GRACE` seconds (a second signal cuts it short) and
then SIGKILLs every group: a rank's children go with it, nothing is left behind. A signal
the launcher was started ignoring (``nohup``: SIGHUP; ``cmd &`` in a script: SIGINT) stays
ignored. Exit status: 0 when every rank exited 0; else the first failing rank's status
(128 + the signal when it was killed); 128 + the signal when the launcher was signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

GRACE = 3.0
"""seconds between forwarding a signal (or SIGTERM after a rank failed) and SIGKILL"""

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_POLL = 0.02  # seconds between looks at the ranks' status


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_env(base: dict[str, str], *, nproc: int, nnodes: int, node_rank: int, local_rank: int,
             master_addr: str, master_port: int) -> dict[str, str]:
    """The variables torchrun gives a worker: global rank = node_rank * nproc + local_rank."""
    env = dict(base)
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)  # no agent store here: rank 0 serves the store
    world = nnodes * nproc
    rank = node_rank * nproc + local_rank
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
               LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK=str(node_rank), GROUP_WORLD_SIZE=str(nnodes),
               ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(world), ROLE_NAME="default",
               MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
               TORCHELASTIC_RESTART_COUNT="0", TORCHELASTIC_MAX_RESTARTS="0", PYTHONUNBUFFERED="1")
    return env


def _pump(stream: IO[bytes], out: IO[bytes], prefix: bytes, lock: threading.Lock) -> None:
    """Copy a rank's output line by line, prefixed; keeps draining when ``out`` is gone."""
    for line in iter(stream.readline, b""):
        with lock, contextlib.suppress(OSError, ValueError):
            out.write(prefix + line)
            out.flush()
    stream.close()


def describe(rank: int, code: int) -> str:
    """``rank R exited with status S`` / ``rank R was killed by SIGNAME``."""
    if code < 0:
        return f"rank {rank} was killed by {_signame(-code)}"
    return f"rank {rank} exited with status {code}"


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Signals:
    """Catches :data:`FORWARDED` while active (main thread only); ``got`` lists them in order."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self._old: dict[int, object] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED:
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN:
                    continue  # started ignoring it (nohup, a background job): keep ignoring it
                self._old[sig] = old
                signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, sig: int, _frame: object) -> None:
        self.got.append(sig)

    def __exit__(self, *_exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def _signal_groups(procs: list[subprocess.Popen], sig: int, only_live: bool) -> None:
    for p in procs:
        if only_live and p.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)


def stop(procs: list[subprocess.Popen], sig: int, signals: Signals, grace: float = GRACE) -> list[int]:
    """Send ``sig`` to every live rank's process group; after ``grace`` seconds (or at the next
    signal the launcher gets) SIGKILL every group. Returns the indices of ``procs`` killed so."""
    _signal_groups(procs, sig, only_live=True)
    seen = len(signals.got)
    end = time.monotonic() + grace
    while time.monotonic() < end and len(signals.got) == seen:
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(_POLL)
    stubborn = [i for i, p in enumerate(procs) if p.poll() is None]
    _signal_groups(procs, signal.SIGKILL, only_live=False)  # the groups too: a rank's children go with it
    for p in procs:
        p.wait()
    return stubborn


def launch(nranks: int, cmd: list[str], *, prefix: bool = True, master_addr: str = "127.0.0.1",
           master_port: int | None = None, nnodes: int = 1, node_rank: int = 0,
           env: dict[str, str] | None = None, grace: float = GRACE) -> int:
    """Run ``cmd`` as this host's ``nranks`` ranks (node ``node_rank`` of ``nnodes``).

    Returns 0, the first failing rank's status (128 + signal when it was killed) or, when the
    launcher was signalled, 128 + that signal; no rank process is left when it returns.
    """
    base = dict(os.environ if env is None else env)
    port = free_port(master_addr) if master_port is None else master_port
    first = node_rank * nranks
    lock = threading.Lock()
    out = sys.stdout.buffer
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    with Signals() as signals:
        try:
            for r in range(nranks):
                if signals.got:
                    break
                renv = rank_env(base, nproc=nranks, nnodes=nnodes, node_rank=node_rank, local_rank=r,
                                master_addr=master_addr, master_port=port)
                p = subprocess.Popen(cmd, env=renv, stdout=subprocess.PIPE if prefix else None,
                                     stderr=subprocess.STDOUT if prefix else None, start_new_session=True)
                procs.append(p)
                if prefix:
                    t = threading.Thread(target=_pump, args=(p.stdout, out, f"[{first + r}] ".encode(), lock),
                                         daemon=True)
                    t.start()
                    pumps.append(t)
            return _watch(procs, first, signals, grace)
        finally:
            stop(procs, signal.SIGTERM, signals, grace)  # a no-op when every rank has ended
            for t in pumps:
                t.join(1.0)


def _watch(procs: list[subprocess.Popen], first: int, signals: Signals, grace: float) -> int:
    """Wait until every rank exited 0 (0), one failed or a signal came (both: stop the rest)."""
    remaining = set(range(len(procs)))
    while True:
        if signals.got:
            sig = signals.got[0]
            sys.stderr.write(f"pyxccl-run: got {_signame(sig)}; forwarding it to every rank\n")
            stubborn = stop(procs, sig, signals, grace)
            if stubborn:
                after = "a second signal" if len(signals.got) > 1 else f"{grace:g}s"
                ranks = ", ".join(str(first + i) for i in stubborn)
                sys.stderr.write(f"pyxccl-run: killed rank(s) {ranks}: still running after {_signame(sig)} "
                                 f"and {after}\n")
            return 128 + sig
        for r in sorted(remaining):
            code = procs[r].poll()
            if code is None:
                continue
            remaining.discard(r)
            if code != 0:
                stop(procs, signal.SIGTERM, signals, grace)
                sys.stderr.write(f"pyxccl-run: {describe(first + r, code)}; stopped the other ranks\n")
                return code if code > 0 else 128 - code
        if not remaining:
            return 0
        time.sleep(_POLL)
