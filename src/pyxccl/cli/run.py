"""``pyxccl-run``: start N local ranks with torchrun-compatible variables.

    pyxccl-run -n 4 [--] program.py args...      # a Python script
    pyxccl-run -n 4 -m package.module args...    # a module, like python -m
    pyxccl-run -n 4 pyxccl-perf -c all           # any command on PATH

Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT (a free port), so ``pyxccl.init()`` just works. Output lines are
prefixed with ``[rank]`` (``--no-prefix`` turns that off). When a rank fails, the
others are stopped and the exit status names the rank and how it ended; Ctrl-C
stops every rank. Every rank runs in its own process group, which is killed as a
whole, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

from .errors import check_config

GRACE = 3.0  # seconds between SIGTERM and SIGKILL


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _command(args: argparse.Namespace) -> list[str]:
    if args.module:
        return [sys.executable, "-u", "-m", args.module, *args.args]
    if not args.args:
        raise SystemExit("pyxccl-run: nothing to run; give a program (pyxccl-run -n 2 prog.py) or -m module")
    prog, rest = args.args[0], args.args[1:]
    if prog.endswith(".py") or (os.path.isfile(prog) and not os.access(prog, os.X_OK)):
        return [sys.executable, "-u", prog, *rest]
    exe = shutil.which(prog)
    if exe is None and not os.path.isfile(prog):
        raise SystemExit(f"pyxccl-run: {prog!r} is neither a file nor a command on PATH")
    return [exe or prog, *rest]


def _pump(stream: IO[bytes], out: IO[bytes], prefix: bytes, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line)
            out.flush()
    stream.close()


def _describe(rank: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} exited with status {code}"


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    """Signal every live rank's process group, then SIGKILL what is left after GRACE seconds."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    end = time.monotonic() + GRACE
    for p in procs:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group too: children of a rank go with it
        except ProcessLookupError:
            pass
        p.wait()


def launch(nranks: int, cmd: list[str], *, prefix: bool = True, master_addr: str = "127.0.0.1",
           env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` as ``nranks`` ranks; return 0, or the failing rank's status (128+signal when killed)."""
    base = dict(os.environ if env is None else env)
    base.update(WORLD_SIZE=str(nranks), LOCAL_WORLD_SIZE=str(nranks), MASTER_ADDR=master_addr,
                MASTER_PORT=str(_free_port(master_addr)), PYTHONUNBUFFERED="1")
    lock = threading.Lock()
    out = sys.stdout.buffer
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    for r in range(nranks):
        renv = dict(base, RANK=str(r), LOCAL_RANK=str(r), GROUP_RANK="0", ROLE_RANK=str(r))
        p = subprocess.Popen(cmd, env=renv, stdout=subprocess.PIPE if prefix else None,
                             stderr=subprocess.STDOUT if prefix else None, start_new_session=True)
        procs.append(p)
        if prefix:
            t = threading.Thread(target=_pump, args=(p.stdout, out, f"[{r}] ".encode(), lock), daemon=True)
            t.start()
            pumps.append(t)
    status = 0
    try:
        remaining = set(range(nranks))
        while remaining:
            for r in sorted(remaining):
                code = procs[r].poll()
                if code is None:
                    continue
                remaining.discard(r)
                if code != 0:
                    others = [p for i, p in enumerate(procs) if i in remaining]
                    _stop(others)
                    sys.stderr.write(f"pyxccl-run: {_describe(r, code)}; stopped the other ranks\n")
                    status = code if code > 0 else 128 - code
                    remaining.clear()
                    break
            time.sleep(0.02)
    except KeyboardInterrupt:
        sys.stderr.write("pyxccl-run: interrupted; stopping every rank\n")
        _stop(procs, signal.SIGINT)
        status = 130
    finally:
        _stop(procs)
        for t in pumps:
            t.join(1.0)
    return status


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``pyxccl-run``."""
    p = argparse.ArgumentParser(prog="pyxccl-run", description=__doc__.splitlines()[0],
                                usage="pyxccl-run -n N [--no-prefix] [--] program args... | -m module args...")
    p.add_argument("-n", "--nproc", "--nproc-per-node", dest="n", type=int, required=True, help="ranks to start")
    p.add_argument("-m", dest="module", help="run a module (python -m)")
    p.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with [rank]")
    p.add_argument("--master-addr", default="127.0.0.1", help="MASTER_ADDR (default 127.0.0.1)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    check_config("pyxccl-run")  # a bad PYXCCL_* value: one line and exit 2, before any rank starts
    if args.args and args.args[0] == "--":
        args.args = args.args[1:]
    if args.n < 1:
        p.error("-n must be >= 1")
    sys.exit(launch(args.n, _command(args), prefix=not args.no_prefix, master_addr=args.master_addr))


if __name__ == "__main__":
    main()
