"""``pyxccl``: the umbrella command; one subcommand per task.

    pyxccl plans                         the algorithm registry and the selection rules
    pyxccl plans -n 8 --hosts 2          + what the tuner picks per collective and size
    pyxccl plans -n 8 --hosts 0,1,2:3,4,5,6,7 -c allreduce --algo "allreduce:tree" -b 8 -e 64M -f 4

Add a subcommand by writing ``_cmd_<name>(args)`` and registering its parser in
:func:`_parser` (``sub.add_parser``).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PyxcclError

SIZES = "8 B .. 64 MiB"


def _size(text: str) -> int:
    from ..tuner.rules import parse_size
    v = parse_size(text)
    if v is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size")
    return v


def _hosts(text: str, nranks: int) -> tuple[tuple[int, ...], ...] | None:
    """``2`` (2 hosts of consecutive ranks) or ``0,1:2,3`` (ranks per host, hosts separated by ':')."""
    from ..algorithms import normalize_hosts
    from ..algorithms._common import uniform_hosts
    t = text.strip()
    if t.isdigit():
        return normalize_hosts(nranks, uniform_hosts(nranks, int(t)))
    return normalize_hosts(nranks, [[int(r) for r in h.split(",") if r.strip()] for h in t.split(":")])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyxccl", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("plans", help="print the algorithm registry, the selection rules and what they pick",
                       description="Print the algorithm registry (collective, name, priority, slots, host-aware, "
                                   "what it claims) and the tuner's rule table; with -n, the algorithm chosen per "
                                   "collective and message size (nccl-tests' size convention).")
    p.add_argument("-n", "--nranks", type=int, help="ranks: show the choice per size for this many")
    p.add_argument("--hosts", default="1", help="number of hosts (consecutive ranks) or ranks per host "
                                               "'0,1:2,3' (default 1)")
    p.add_argument("-c", "--collective", action="append", help="only this collective (repeatable)")
    p.add_argument("-b", "--minbytes", type=_size, default=8, help="smallest size (default 8)")
    p.add_argument("-e", "--maxbytes", type=_size, default=64 << 20, help="largest size (default 64M)")
    p.add_argument("-f", "--stepfactor", type=int, default=4, help="size multiplier (default 4)")
    p.add_argument("--algo", default=None, help="a PYXCCL_ALGO string to apply (default: the environment's)")
    p.add_argument("--no-registry", action="store_true", help="skip the registry and rule tables")
    p.set_defaults(func=_cmd_plans)
    return ap


def _table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _claim(text: str) -> str:
    """The "Supports ..." sentence, short: what shapes, without the slots (a column of its own)."""
    t = text.removeprefix("Supports").strip(" :")
    for cut in ("; needs", " Not "):
        t = t.split(cut)[0]
    return t.rstrip(" .;") or "?"


def _cmd_plans(args: argparse.Namespace) -> int:
    from .. import algorithms, config, tuner
    from ..ir.program import COLLECTIVES
    from ..tuner.rules import RULES, fmt_size

    spec = args.algo if args.algo is not None else config.get().algo
    tuner.parse(spec)  # ConfigError now rather than in every cell
    colls = args.collective or [c for c in COLLECTIVES]
    for c in colls:
        if c not in COLLECTIVES:
            raise PyxcclError(f"unknown collective {c!r} (known: {', '.join(COLLECTIVES)})")
    out = []
    if not args.no_registry:
        rows = [[a.collective, a.name, a.priority, a.min_slots, "yes" if a.host_aware else "", _claim(a.claims)]
                for a in sorted(algorithms.REGISTRY.values(), key=lambda a: (a.collective, a.priority, a.name))
                if a.collective in colls]
        out += ["Algorithms (algorithms/<collective>_<name>.py):", "",
                _table(rows, ["collective", "algorithm", "priority", "slots", "hosts", "supports"]), ""]
        rrows = [[r.collective, r.algorithm, r.ranks, r.size_text(), r.priority] for r in RULES if r.collective in colls]
        out += ["Selection rules (tuner/rules.py; lowest priority wins among rules whose size range and ranks hold "
                "and whose algorithm can serve the shape):", "",
                _table(rrows, ["collective", "algorithm", "ranks", "bytes", "priority"]), ""]
        out.append(f"PYXCCL_ALGO: {spec!r}" if spec else "PYXCCL_ALGO: (not set)")
    if args.nranks:
        n = args.nranks
        hosts = _hosts(args.hosts, n)
        sizes = []
        s = args.minbytes
        while s <= args.maxbytes:
            sizes.append(s)
            s *= max(2, args.stepfactor)
        if sizes and sizes[-1] < args.maxbytes:
            sizes.append(args.maxbytes)
        shape = f"{len(hosts)} hosts {[len(h) for h in hosts]}" if hosts else "1 host"
        out += ["", f"Chosen algorithm per size for {n} ranks on {shape} (nccl-tests sizes; "
                    "* = PYXCCL_ALGO, no mark = rule, ' = registry default):", ""]
        rows = []
        for c in colls:
            row = [c]
            for size in sizes:
                try:
                    ch = tuner.explain(c, n, size, hosts, spec)
                    row.append(ch.algorithm + {"PYXCCL_ALGO": "*", "rule": "", "default": "'"}[ch.source])
                except PyxcclError as e:
                    row.append(f"error: {e}")
            rows.append(row)
        out.append(_table(rows, ["collective"] + [fmt_size(x) for x in sizes]))
    print("\n".join(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pyxccl``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PyxcclError as e:
        print(f"pyxccl {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
