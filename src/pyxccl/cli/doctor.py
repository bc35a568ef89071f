"""``pyxccl-doctor DIR``: read the flight-recorder dumps of a hung or failed job and say what went wrong.

    PYXCCL_TRACE_DIR=/tmp/trace python train.py     # every rank dumps on a CollectiveTimeout
    kill -USR1 <pid of each rank>                     # ... or on demand, while it hangs
    pyxccl-doctor /tmp/trace                          # then read them together
    pyxccl-doctor /tmp/trace --comm 3fa2c1d0          # only the communicator(s) whose tag starts so

Each rank writes ``pyxccl-trace-<comm tag>-rank<r>.json`` (see :mod:`pyxccl.reliability.flight`): its
last operations with their state (queued, running, done, failed). Collectives are
numbered per communicator, and every rank must issue the same collectives in the same
order, so the records of one number on all ranks must describe the same call. Per
communicator (dumps are grouped by tag; a job may have several, e.g. after ``split``)
the doctor prints:

- a table of the ranks: host, pid, why the dump was written, the last collective each
  started and completed;
- **missing** ranks: no dump although the communicator has them (crashed, never got
  the signal, or on a host whose trace folder you did not copy);
- the rank(s) **behind**: the lowest last started collective (else the lowest last
  completed), with what the others are waiting in; the usual culprit of a hang;
- the first collective where the ranks **disagree** (different op, dtype, count, root or
  reduce op for the same number), with each rank's record of it and the field that differs;
- **stuck** operations (queued or running when dumped) and **failed** ones, per rank.

Exit status: 0 when the dumps are consistent (all ranks there, none behind, no
disagreement, nothing stuck or failed), 1 when a problem was found, 2 on bad input
(no such folder, no dumps, a file that is not a pyxccl dump).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
from typing import Any

from .errors import one_line_errors

_NAME = re.compile(r"pyxccl-trace-(?P<tag>[0-9A-Za-z_.-]+)-rank(?P<rank>\d+)\.json$")
_COMPARED = ("op", "dtype", "count", "root", "reduce_op")
_SHOW_MAX = 10  # stuck / failed records shown per rank


class BadInput(Exception):
    """The folder or a file in it is not what pyxccl-doctor reads."""


def load(folder: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Every dump in ``folder``: {comm tag: {rank: dump}}."""
    if not os.path.isdir(folder):
        raise BadInput(f"{folder}: not a folder")
    paths = sorted(p for p in glob.glob(os.path.join(folder, "pyxccl-trace-*-rank*.json")) if _NAME.search(p))
    if not paths:
        raise BadInput(f"{folder}: no pyxccl-trace-<comm>-rank<r>.json dumps (was PYXCCL_TRACE_DIR set to it?)")
    comms: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: not readable as JSON: {exc}") from None
        missing = [k for k in ("rank", "size", "comm", "records") if k not in data] if isinstance(data, dict) \
            else ["(not an object)"]
        if missing or not isinstance(data["records"], list):
            raise BadInput(f"{path}: not a pyxccl flight-recorder dump (missing {missing or ['records list']})")
        try:
            rank, size = int(data["rank"]), int(data["size"])
        except (TypeError, ValueError):
            raise BadInput(f"{path}: rank/size are not ints") from None
        if not 0 <= rank < size:
            raise BadInput(f"{path}: rank {rank} is out of range for size {size}")
        for rec in data["records"]:
            if not isinstance(rec, dict) or not {"seq", "kind", "op", "state"} <= set(rec):
                raise BadInput(f"{path}: a record lacks seq/kind/op/state: {rec!r}")
        data["rank"], data["size"], data["_path"] = rank, size, path
        comms.setdefault(str(data["comm"]), {})[rank] = data
    return comms


# ---------------------------------------------------------------------------- analysis

def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _op(rec: dict[str, Any]) -> str:
    """``allreduce(float32, count=1000, op=sum)``-like text for a record."""
    parts = [str(rec.get("dtype")), f"count={rec.get('count')}"]
    if rec.get("root") is not None:
        parts.append(f"root={rec['root']}")
    if rec.get("reduce_op"):
        parts.append(f"op={rec['reduce_op']}")
    if rec.get("kind") == "p2p":
        parts.append(f"peer={','.join(map(str, rec.get('peers') or []))}")
    return f"{rec['op']}({', '.join(parts)})"


def _rec_line(rec: dict[str, Any]) -> str:
    kind = "collective" if rec.get("kind") == "collective" else rec.get("kind", "?")
    site = f" at {rec['call_site']}" if rec.get("call_site") else ""
    return f"{kind} #{rec['seq']} {_op(rec)} [{rec['state']}]{site}"


def _started(rec: dict[str, Any]) -> bool:
    return rec["state"] != "queued"


def analyze(tag: str, dumps: dict[int, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(report lines, problems) for one communicator."""
    lines: list[str] = []
    problems: list[str] = []
    sizes = sorted({d["size"] for d in dumps.values()})
    size = max(sizes)
    lines.append(f"== communicator {tag}: {size} rank(s), {len(dumps)} dump(s) ==")
    if len(sizes) > 1:
        problems.append(f"the dumps disagree on the communicator's size: {sizes}")
        lines.append(f"SIZE: the dumps disagree on the communicator's size: {sizes}")

    colls: dict[int, dict[int, dict[str, Any]]] = {}
    last_started: dict[int, int] = {}
    last_done: dict[int, int] = {}
    recording: dict[int, bool] = {}
    table = [["rank", "host", "pid", "dump", "at", "last started", "last done", "records"]]
    for r in sorted(dumps):
        d = dumps[r]
        mine = {int(x["seq"]): x for x in d["records"] if x.get("kind") == "collective"}
        colls[r] = mine
        recording[r] = int(d.get("recorder_size", 1) or 0) > 0
        last_started[r] = max((s for s, x in mine.items() if _started(x)), default=0)
        last_done[r] = max((s for s, x in mine.items() if x["state"] == "done"), default=0)
        when = time.strftime("%H:%M:%S", time.localtime(d["time"])) if isinstance(d.get("time"), (int, float)) else "?"
        dropped = int(d.get("dropped", 0) or 0)
        table.append([str(r), str(d.get("host", "?")), str(d.get("pid", "?")), str(d.get("reason") or "?"), when,
                      f"#{last_started[r]}" if recording[r] else "(off)",
                      f"#{last_done[r]}" if recording[r] else "(off)",
                      f"{len(d['records'])}" + (f" (+{dropped} dropped)" if dropped else "")])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    for r in sorted(dumps):
        if dumps[r].get("error"):
            lines.append(f"  rank {r} dumped on: {dumps[r]['error']}")
        lost = dumps[r].get("lost") or {}
        if lost:
            lines.append(f"  rank {r} saw lost rank(s): " + "; ".join(f"{k}: {v}" for k, v in lost.items()))
            problems.append(f"rank {r} saw lost ranks {sorted(lost)}")

    # missing
    missing = [r for r in range(size) if r not in dumps]
    if missing:
        problems.append(f"no dump from {_ranks(missing)}")
        lines.append(f"MISSING: no dump from {_ranks(missing)} (crashed? not signalled? trace folder of another "
                     f"host?)")
    else:
        lines.append("missing: none")

    # behind
    live = [r for r in sorted(dumps) if recording[r]]
    behind: list[int] = []
    if len(live) > 1:
        top_s = max(last_started[r] for r in live)
        top_d = max(last_done[r] for r in live)
        low_s = min(last_started[r] for r in live)
        if low_s < top_s:
            behind = [r for r in live if last_started[r] == low_s]
            ahead = [r for r in live if last_started[r] == top_s]
            waiting = colls[ahead[0]].get(low_s + 1) or colls[ahead[0]].get(top_s)
            what = f"; {_ranks(ahead)} reached #{top_s}"
            if waiting is not None:
                what += f"; the next collective, #{waiting['seq']} {_op(waiting)}, was called on {_ranks(ahead)}" \
                        + (f" at {waiting['call_site']}" if waiting.get("call_site") else "")
            problems.append(f"{_ranks(behind)} behind (last started collective #{low_s})")
            lines.append(f"BEHIND: {_ranks(behind)}: last started collective #{low_s}{what}. "
                         f"{'It has' if len(behind) == 1 else 'They have'} not called the next collective: "
                         f"look at what {'it' if len(behind) == 1 else 'they'} did instead (stuck, p2p, "
                         f"another communicator, a different code path)")
        elif min(last_done[r] for r in live) < top_d:
            low_d = min(last_done[r] for r in live)
            behind = [r for r in live if last_done[r] == low_d]
            problems.append(f"{_ranks(behind)} behind in completion (last completed collective #{low_d})")
            lines.append(f"BEHIND: {_ranks(behind)}: every rank started #{top_s} but {_ranks(behind)} completed only "
                         f"#{low_d} (the others completed #{top_d})")
        else:
            lines.append(f"behind: none (every rank started #{top_s} and completed #{top_d})")
    else:
        lines.append("behind: (needs the records of two ranks or more)")

    # disagreement: the first collective number whose records differ
    shared = sorted(s for s in set().union(*(set(c) for c in colls.values()))
                    if sum(1 for c in colls.values() if s in c) > 1)
    first = None
    ndiff = 0
    for s in shared:
        recs = {r: c[s] for r, c in colls.items() if s in c}
        fields = [f for f in _COMPARED
                  if not (f == "count" and any(x.get("count_may_differ") for x in recs.values()))]
        diff = [f for f in fields if len({json.dumps(x.get(f)) for x in recs.values()}) > 1]
        if diff:
            ndiff += 1
            if first is None:
                first = (s, diff, recs)
    if first is None:
        lines.append(f"disagreement: none ({len(shared)} collective number(s) recorded on more than one rank agree)")
    else:
        s, diff, recs = first
        problems.append(f"ranks disagree on collective #{s} ({', '.join(diff)})")
        lines.append(f"DISAGREE: the ranks first disagree on collective #{s}: "
                     + "; ".join(_field_groups(f, recs) for f in diff)
                     + (f" ({ndiff - 1} later number(s) differ too)" if ndiff > 1 else ""))
        for r in sorted(recs):
            lines.append(f"  rank {r}: {_rec_line(recs[r])}")

    # stuck and failed
    for label, pick in (("stuck", lambda x: x["state"] in ("queued", "running")),
                        ("failed", lambda x: str(x["state"]).startswith("failed"))):
        found = False
        for r in sorted(dumps):
            hits = [x for x in dumps[r]["records"] if pick(x)]
            if not hits:
                continue
            if not found:
                lines.append(f"{label.upper()}:")
                found = True
            problems.append(f"rank {r} has {len(hits)} {label} op(s)")
            for x in hits[:_SHOW_MAX]:
                lines.append(f"  rank {r}: {_rec_line(x)}")
            if len(hits) > _SHOW_MAX:
                lines.append(f"  rank {r}: ... and {len(hits) - _SHOW_MAX} more")
        if not found:
            lines.append(f"{label}: none")
    return lines, problems


def _field_groups(field: str, recs: dict[int, dict[str, Any]]) -> str:
    by_value: dict[str, list[int]] = {}
    for r in sorted(recs):
        by_value.setdefault(json.dumps(recs[r].get(field)), []).append(r)
    shown = ", ".join(f"{_ranks(rs)} {'has' if len(rs) == 1 else 'have'} {field}={json.loads(v)}"
                      for v, rs in by_value.items())
    return f"{field} differs: {shown}"


# ---------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyxccl-doctor", description=__doc__.split("\n\n")[0],
                                 epilog="Exit status: 0 consistent, 1 a problem found, 2 bad input.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", metavar="DIR", help="the PYXCCL_TRACE_DIR folder holding every rank's dump")
    ap.add_argument("--comm", metavar="TAG", help="only the communicator(s) whose tag starts with TAG")
    return ap


@one_line_errors("pyxccl-doctor")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pyxccl-doctor``; returns the exit status (0 consistent, 1 problem, 2 bad input)."""
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code or 0)
    try:
        comms = load(args.dir)
        if args.comm:
            comms = {t: d for t, d in comms.items() if t.startswith(args.comm)}
            if not comms:
                raise BadInput(f"{args.dir}: no dumps of a communicator whose tag starts with {args.comm!r}")
    except BadInput as exc:
        print(f"pyxccl-doctor: error: {exc}", file=sys.stderr)
        return 2
    ndumps = sum(len(d) for d in comms.values())
    print(f"pyxccl-doctor: {ndumps} dump(s) of {len(comms)} communicator(s) in {args.dir}")
    all_problems: list[str] = []
    for tag in sorted(comms, key=lambda t: (-max(d["size"] for d in comms[t].values()), t)):
        lines, problems = analyze(tag, comms[tag])
        print()
        print("\n".join(lines))
        all_problems += [f"communicator {tag}: {p}" for p in problems]
    print()
    if all_problems:
        print(f"verdict: {len(all_problems)} problem(s):")
        for p in all_problems:
            print(f"  - {p}")
        return 1
    print("verdict: consistent (every rank dumped, none behind, no disagreement, nothing stuck or failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
