"""Run PyTorch's own generic distributed test class against a backend (pyxccl or gloo).

The class is ``torch.testing._internal.distributed.distributed_test.DistributedTest._DistTestBase``,
the one PyTorch's ``test/distributed/test_distributed_spawn.py`` runs for Gloo, NCCL and UCC
(that file is not shipped in the wheel, so this runner plays its part): every test starts
WORLD_SIZE rank processes, each of which calls ``init_process_group(BACKEND)`` with a file
store, runs the test body and ``destroy_process_group()``.

How the suite is pointed at a third-party backend, with nothing else changed:

* ``BACKEND=pyxccl``; ``pyxccl.torch`` is imported first, so ``dist.Backend("pyxccl")``
  resolves when the suite's decorators are evaluated at import.
* ``DistTestCases.backend_feature["plugin"]`` gets "pyxccl": the suite's own hook for
  third-party backends (``require_backend_is_available`` accepts what is in it).
* ``backend_feature["ddp"]`` and ``["subgroup"]`` get "pyxccl", so the DDP and subgroup
  tests that Gloo runs run too. "gpu"/"cuda" stay as they are: this is a CPU backend, and
  on a machine without GPUs those tests skip for Gloo as well.

Tests that the suite itself restricts by name to other backends (``BACKEND == "gloo"``,
``"nccl"``) skip with the suite's own message; compare the per-test outcomes of two runs
with ``--compare``.

    python tests/torch_distributed_suite.py --backend gloo   --out /tmp/gloo.json
    python tests/torch_distributed_suite.py --backend pyxccl --out /tmp/pyxccl.json
    python tests/torch_distributed_suite.py --compare /tmp/gloo.json /tmp/pyxccl.json
    python tests/torch_distributed_suite.py --backend pyxccl -k test_all_reduce_sum -k test_ddp_comm_hook

Ranks are started with fork by default (``--start-method spawn`` for PyTorch's way; fork
saves re-importing torch and the 11,000-line test module in every rank of every test).
The full run takes a long time; ``tests/test_torch_backend.py`` runs a short subset in the
default pytest run, and the whole suite with ``PYXCCL_TORCH_SUITE=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")


def _configure_env() -> None:
    """Module-level set-up; runs in the parent and again in spawned ranks (same environment)."""
    os.environ.setdefault("BACKEND", "pyxccl")
    os.environ.setdefault("WORLD_SIZE", "3")
    os.environ.setdefault("TEMP_DIR", tempfile.mkdtemp(prefix="pyxccl-suite-"))
    os.environ.setdefault("DISTRIBUTED_TESTS_DEFAULT_TIMEOUT", "180")
    if os.path.isdir(os.path.join(SRC, "pyxccl")) and os.path.abspath(SRC) not in sys.path:
        sys.path.insert(0, os.path.abspath(SRC))


def _load_suite():
    """Import PyTorch's suite pointed at $BACKEND; returns the runnable test class."""
    _configure_env()
    backend = os.environ["BACKEND"]
    if backend == "pyxccl":
        import pyxccl.torch
    from torch.testing._internal.common_distributed import DistTestCases

    if backend not in ("gloo", "nccl", "ucc", "mpi"):
        DistTestCases.backend_feature["plugin"].add(backend)
        DistTestCases.backend_feature["ddp"].add(backend)
        DistTestCases.backend_feature["subgroup"].add(backend)
    import torch
    from torch.testing._internal.distributed.distributed_test import (
        DistributedTest,
        TestDistBackend,
    )

    real = os.environ.get("PYXCCL_SUITE_AS")
    if real:  # the suite believes it runs $BACKEND (gloo); every group it makes is a `real` group
        import torch.distributed.distributed_c10d as c10d

        if real == "pyxccl":
            import pyxccl.torch  # noqa: F401
        make = c10d._new_process_group_helper

        def _masquerade(group_size, group_rank, global_ranks_in_group, backend, *args, **kwargs):
            if str(backend).lower() == backend_name:
                backend = real
            return make(group_size, group_rank, global_ranks_in_group, backend, *args, **kwargs)

        backend_name = backend
        c10d._new_process_group_helper = _masquerade

    start = os.environ.get("PYXCCL_SUITE_START", "fork")

    class TestDistBackendSuite(TestDistBackend, DistributedTest._DistTestBase):
        def setUp(self):
            super().setUp()
            self._start_processes(torch.multiprocessing.get_context(start).Process)
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()

    TestDistBackendSuite.__module__ = __name__  # picklable by reference (spawned ranks)
    TestDistBackendSuite.__qualname__ = "TestDistBackendSuite"
    globals()["TestDistBackendSuite"] = TestDistBackendSuite
    return TestDistBackendSuite


class _Result(unittest.TestResult):
    def __init__(self, verbose: bool):
        super().__init__()
        self.outcomes: dict[str, dict] = {}
        self.verbose = verbose
        self._t0 = 0.0

    def startTest(self, test):
        super().startTest(test)
        self._t0 = time.time()

    def _record(self, test, outcome: str, detail: str = "") -> None:
        name = test.id().split(".")[-1]
        secs = round(time.time() - self._t0, 2)
        self.outcomes[name] = {"outcome": outcome, "seconds": secs, "detail": detail[-3000:]}
        if self.verbose:
            line = detail.strip().splitlines()[-1][:160] if detail.strip() else ""
            print(f"{outcome:8s} {secs:7.2f}s {name} {line}", flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failed", "".join(traceback.format_exception(*err)))

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "failed", "".join(traceback.format_exception(*err)))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "passed", "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "failed", "unexpected success")


def test_names(cls) -> list[str]:
    return sorted(n for n in dir(cls) if n.startswith("test_") and callable(getattr(cls, n)))


def run(names: list[str], verbose: bool = True) -> dict:
    """Run the named tests of the suite (already configured via the environment); the outcome table."""
    cls = _load_suite()
    result = _Result(verbose)
    for name in names:
        cls(name).run(result)
    counts = {k: sum(1 for o in result.outcomes.values() if o["outcome"] == k) for k in ("passed", "failed", "skipped")}
    import torch

    label = os.environ["BACKEND"]
    if os.environ.get("PYXCCL_SUITE_AS"):
        label = f"{os.environ['PYXCCL_SUITE_AS']}-as-{label}"
    return {"backend": label, "world_size": int(os.environ["WORLD_SIZE"]),
            "start_method": os.environ.get("PYXCCL_SUITE_START", "fork"), "torch": torch.__version__,
            "counts": counts, "tests": result.outcomes}


def compare(a_path: str, b_path: str) -> int:
    with open(a_path) as fa, open(b_path) as fb:
        a, b = json.load(fa), json.load(fb)
    print(f"{'':40s} {a['backend']:>12s} {b['backend']:>12s}")
    for k in ("passed", "failed", "skipped"):
        print(f"{k:40s} {a['counts'][k]:12d} {b['counts'][k]:12d}")
    diff = [(n, a["tests"].get(n, {}).get("outcome", "-"), b["tests"].get(n, {}).get("outcome", "-"))
            for n in sorted(set(a["tests"]) | set(b["tests"]))]
    diff = [d for d in diff if d[1] != d[2]]
    print(f"\n{len(diff)} tests differ ({a['backend']} -> {b['backend']}):")
    for n, x, y in diff:
        detail = b["tests"].get(n, {}).get("detail", "").strip().splitlines()
        print(f"  {n:60s} {x:8s} -> {y:8s} {detail[-1][:100] if detail else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="pyxccl")
    p.add_argument("--as", dest="as_backend", metavar="SUITE_BACKEND",
                   help="let the suite believe it runs SUITE_BACKEND (e.g. gloo), so that tests it keeps for "
                        "that backend run too, while every group is made with --backend")
    p.add_argument("--world-size", type=int, default=3)
    p.add_argument("-k", action="append", default=[], help="run tests whose name contains this (repeatable)")
    p.add_argument("--exact", action="append", default=[], help="run exactly this test (repeatable)")
    p.add_argument("--shard", default="", help="i/n: run every n-th test starting at i (0-based)")
    p.add_argument("--out", help="write the outcome table as JSON here")
    p.add_argument("--start-method", choices=["fork", "spawn"], default="fork")
    p.add_argument("--timeout", type=int, default=180, help="seconds per test before its ranks are killed")
    p.add_argument("--list", action="store_true", help="list the tests and exit")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    os.environ["BACKEND"] = args.as_backend or args.backend
    if args.as_backend:
        os.environ["PYXCCL_SUITE_AS"] = args.backend
    os.environ["WORLD_SIZE"] = str(args.world_size)
    os.environ["PYXCCL_SUITE_START"] = args.start_method
    os.environ["DISTRIBUTED_TESTS_DEFAULT_TIMEOUT"] = str(args.timeout)
    cls = _load_suite()
    names = test_names(cls)
    if args.exact:
        names = [n for n in names if n in args.exact]
    elif args.k:
        names = [n for n in names if any(k in n for k in args.k)]
    if args.shard:
        i, n = (int(x) for x in args.shard.split("/"))
        names = names[i::n]
    if args.list:
        print("\n".join(names))
        return 0
    t0 = time.time()
    table = run(names, verbose=not args.quiet)
    table["seconds"] = round(time.time() - t0, 1)
    c = table["counts"]
    print(f"{table['backend']}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
          f"of {len(names)} in {table['seconds']} s (world size {args.world_size}, {args.start_method})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
    return 1 if c["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
elif os.environ.get("PYXCCL_SUITE_START") == "spawn":  # a spawned rank re-imports this file
    _load_suite()
