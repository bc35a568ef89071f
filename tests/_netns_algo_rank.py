"""One rank of tests/test_algorithms_hier.py, run inside a network namespace (an emulated host).

    python tests/_netns_algo_rank.py --rank R --nranks N --uid-file PATH --out PATH

Rank 0 writes the unique id to --uid-file. Every rank runs every host-aware algorithm
(as the Program built for the communicator's real host layout) and every flat
algorithm of the same collectives by name, checks them against numpy
(tests/_algo_jobs.py), then tries the host-aware ones by name (``algorithm="hierarchical"``),
which works once the communicator passes its hosts to the algorithm registry, and
writes JSON: rank, hosts, transports, failures, and whether the by-name calls worked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

harness.ensure_src_on_path()

import pyxccl  # noqa: E402
from _algo_jobs import catalogue_cases, run_algorithm_cases  # noqa: E402
from pyxccl import algorithms  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--nranks", type=int, required=True)
    ap.add_argument("--uid-file", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result: dict = {"rank": args.rank, "failures": [], "transports": None, "hosts": None, "by_name": None}
    try:
        if args.rank == 0:
            uid = pyxccl.get_unique_id()
            with open(args.uid_file + ".tmp", "w") as f:
                f.write(str(uid))
            os.rename(args.uid_file + ".tmp", args.uid_file)
        else:
            end = time.monotonic() + 60
            while not os.path.exists(args.uid_file):
                if time.monotonic() > end:
                    raise TimeoutError(f"no unique id in {args.uid_file} after 60 s")
                time.sleep(0.05)
            with open(args.uid_file) as f:
                uid = pyxccl.UniqueId.from_string(f.read())
        comm = pyxccl.Communicator(args.nranks, uid, args.rank)
        n = comm.size
        result["transports"] = [comm.transport_of(p) for p in range(n)]
        result["hosts"] = comm.hosts
        host_aware = [a for a in algorithms.REGISTRY.values() if a.host_aware]
        for algo in host_aware:
            result["failures"] += run_algorithm_cases(comm, algo.collective, algo.name,
                                                      catalogue_cases(algo.collective, n), "comm")
        for coll in sorted({a.collective for a in host_aware}):
            for name in algorithms.names(coll):
                if not algorithms.get(coll, name).host_aware:
                    result["failures"] += run_algorithm_cases(comm, coll, name, catalogue_cases(coll, n)[:3])
        # by name: needs the communicator to hand its hosts to algorithms.program()
        try:
            failures = []
            for algo in host_aware:
                failures += run_algorithm_cases(comm, algo.collective, algo.name,
                                                catalogue_cases(algo.collective, n)[:2])
            by_name = not any("raised InvalidArgument" in f for f in failures)
            if by_name:
                result["failures"] += failures
            result["by_name"] = by_name
        except Exception:  # noqa: BLE001
            result["by_name"] = False
        comm.barrier()
        comm.destroy()
    except BaseException:  # noqa: BLE001 - reported to the test
        result["failures"].append("raised:\n" + traceback.format_exc())
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
