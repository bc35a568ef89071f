"""``pyxccl-run``: start N ranks per host with torchrun-compatible variables.

    pyxccl-run -n 4 [--] program.py args...      # a Python script
    pyxccl-run -n 4 -m package.module args...    # a module, like python -m
    pyxccl-run -n 4 pyxccl-perf -c all           # any command on PATH
    # several hosts (torchrun's meaning): on host 0, then on each other host what it prints
    pyxccl-run --nnodes 2 --node-rank 0 [--master-addr ADDR] [--master-port 29500] -n 4 prog.py
    pyxccl-run --nnodes 2 --node-rank 1 --master-addr ADDR --master-port 29500 -n 4 prog.py

Each rank gets RANK (node rank * N + local rank), WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and MASTER_PORT, so ``pyxccl.init()`` just
works. Output lines are prefixed with ``[rank]`` (``--no-prefix`` turns that off). When a
rank fails, the others are stopped and the exit status names the rank and how it ended.
SIGTERM, SIGINT (Ctrl-C) and SIGHUP are forwarded to every rank, which is SIGKILLed with
its children if still running a few seconds later; the exit status is then 128 + the
signal. See docs/multihost.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

from .errors import check_config
from .launcher import GRACE, launch

__all__ = ["launch", "main"]

DEFAULT_PORT = 29500  # torchrun's MASTER_PORT when several hosts share a command


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


def _this_host_address() -> str:
    """The address other hosts reach this one at: PYXCCL_SOCKET_IFNAME's interface, else the
    first non-loopback interface that is up."""
    from ..bootstrap.net import select_address
    from .. import config

    return select_address(config.get().socket_ifname)


def _launcher_argv0() -> list[str]:
    if os.path.basename(sys.argv[0]) == "pyxccl-run":
        return ["pyxccl-run"]
    return [sys.executable, "-m", "pyxccl.cli.run"]


def node_command(args: argparse.Namespace, node_rank: int, addr: str, port: int) -> str:
    """The command line that starts node ``node_rank`` of the job ``args`` describes."""
    argv = [*_launcher_argv0(), "--nnodes", str(args.nnodes), "--node-rank", str(node_rank),
            "--master-addr", addr, "--master-port", str(port), "-n", str(args.n)]
    if args.no_prefix:
        argv.append("--no-prefix")
    if args.grace != GRACE:
        argv += ["--grace", f"{args.grace:g}"]
    argv += ["-m", args.module, *args.args] if args.module else ["--", *args.args]
    return shlex.join(argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyxccl-run", description=__doc__.splitlines()[0],
                                usage="pyxccl-run -n N [--nnodes M --node-rank R --master-addr HOST "
                                      "[--master-port P]] [--no-prefix] [--] program args... | -m module args...")
    p.add_argument("-n", "--nproc", "--nproc-per-node", "--nproc_per_node", dest="n", type=int, required=True,
                   help="ranks to start on this host")
    p.add_argument("--nnodes", type=int, default=1, help="hosts of the job, each running N ranks (default 1)")
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0,
                   help="this host's index, 0..nnodes-1 (default 0)")
    p.add_argument("--master-addr", "--master_addr", dest="master_addr", default=None,
                   help="MASTER_ADDR: node 0's address (default: 127.0.0.1 on one host; with --nnodes > 1 "
                        "node 0 takes its own address on PYXCCL_SOCKET_IFNAME's or the first non-loopback "
                        "interface, the others must be given it)")
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int, default=None,
                   help=f"MASTER_PORT on node 0 (default: a free port on one host, {DEFAULT_PORT} with "
                        "--nnodes > 1)")
    p.add_argument("--grace", type=float, default=GRACE,
                   help=f"seconds between forwarding a signal and SIGKILL (default {GRACE:g})")
    p.add_argument("-m", dest="module", help="run a module (python -m)")
    p.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with [rank]")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.n < 1:
        p.error("-n must be >= 1")
    if args.nnodes < 1:
        p.error("--nnodes must be >= 1")
    if not 0 <= args.node_rank < args.nnodes:
        p.error(f"--node-rank must be in 0..{args.nnodes - 1} for --nnodes {args.nnodes}")
    if args.master_port is not None and not 0 < args.master_port <= 0xFFFF:
        p.error("--master-port must be in 1..65535")
    if args.grace < 0:
        p.error("--grace must be >= 0")
    if args.nnodes > 1 and args.node_rank > 0 and args.master_addr is None:
        p.error("--master-addr is required on node ranks > 0: give node 0's address "
                "(node 0 prints the command to run on each host)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``pyxccl-run``."""
    p = _parser()
    args = p.parse_args(argv)
    if args.args and args.args[0] == "--":
        args.args = args.args[1:]
    _check(p, args)
    check_config("pyxccl-run")  # a bad PYXCCL_* value: one line and exit 2, before any rank starts
    cmd = _command(args)
    addr, port = args.master_addr, args.master_port
    if args.nnodes > 1:
        if addr is None:
            addr = _this_host_address()
        port = DEFAULT_PORT if port is None else port
        if args.node_rank == 0:
            _announce(args, addr, port)
    elif addr is None:
        addr = "127.0.0.1"
    sys.exit(launch(args.n, cmd, prefix=not args.no_prefix, master_addr=addr, master_port=port,
                    nnodes=args.nnodes, node_rank=args.node_rank, grace=args.grace))


def _announce(args: argparse.Namespace, addr: str, port: int) -> None:
    world = args.nnodes * args.n
    lines = [f"pyxccl-run: node 0 of {args.nnodes} (ranks 0..{args.n - 1} of {world}), rank 0 "
             f"listens on {addr}:{port}; on each other host, in the same directory, run:"]
    lines += [f"  {node_command(args, r, addr, port)}" for r in range(1, args.nnodes)]
    if addr.startswith("127.") or addr == "::1":
        lines.append(f"pyxccl-run: warning: {addr} is a loopback address, which other hosts cannot "
                     "reach; pass --master-addr or set PYXCCL_SOCKET_IFNAME")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
