"""One rank of the two-emulated-hosts test (tests/test_two_hosts.py), run inside a network namespace.

    python tests/_netns_rank.py --rank R --nranks N --uid-file PATH --out PATH

Rank 0 creates the unique id (its root listens on its namespace's veth address) and
writes its string form to --uid-file; the other ranks wait for the file. Every rank then
runs every collective over a small matrix (harness.run_cases), a ring of sends/recvs,
and a barrier, and writes JSON to --out: rank, the transport towards each peer, and the
failures it saw.
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

import numpy as np  # noqa: E402

import pyxccl  # noqa: E402
from harness import (COLLECTIVES, DTYPE_NAMES, OP_NAMES, REDUCING, ROOTED, Case, compare, make_block,  # noqa: E402
                     mode_of, op_valid, run_cases, sentinel)


def build_cases(coll: str, nranks: int, seed: int) -> list[Case]:
    cases = []
    k = 0
    roots = sorted({0, nranks - 1}) if coll in ROOTED else [0]
    ops = list(OP_NAMES)
    for i, count in enumerate((0, 7, 100003)):
        for j in range(4):
            dtype = DTYPE_NAMES[(3 * i + j + len(coll)) % len(DTYPE_NAMES)]
            op = "sum"
            if coll in REDUCING:
                op = ops[k % len(ops)]
                while not op_valid(op, dtype):
                    k += 1
                    op = ops[k % len(ops)]
            inplace, async_op = mode_of(k)
            cases.append(Case(coll, dtype, count, op, roots[k % len(roots)], inplace, async_op, seed,
                              form=(k >> 2) & 1))
            k += 1
    nblocks = 1 if coll in ("all_reduce", "broadcast", "reduce") else nranks
    cases.append(Case(coll, "float32", (4 << 20) // 4 // nblocks, "sum", nranks - 1, False, False, seed))
    return cases


def ring(comm, seed: int) -> list[str]:
    me, n = comm.rank, comm.size
    failures = []
    for i, (count, dtype) in enumerate(((0, "uint8"), (13, "bfloat16"), ((1 << 20) + 3, "uint8"))):
        x = make_block(seed, me, 1000 + i, dtype, count)
        y = sentinel(dtype, count)
        with pyxccl.group():
            comm.send(x, (me + 1) % n)
            comm.recv(y, (me - 1) % n)
        failures += compare(y, make_block(seed, (me - 1) % n, 1000 + i, dtype, count), "bits",
                            f"ring send/recv {count} x {dtype}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--nranks", type=int, required=True)
    ap.add_argument("--uid-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    result: dict = {"rank": args.rank, "failures": [], "transports": None}
    try:
        if args.rank == 0:
            uid = pyxccl.get_unique_id()
            tmp = args.uid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(uid))
            os.rename(tmp, args.uid_file)
        else:
            deadline = time.monotonic() + 60
            while not os.path.exists(args.uid_file):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no unique id in {args.uid_file} after 60 s")
                time.sleep(0.05)
            with open(args.uid_file) as f:
                uid = pyxccl.UniqueId.from_string(f.read())
        comm = pyxccl.Communicator(args.nranks, uid, args.rank)
        result["transports"] = [comm.transport_of(p) for p in range(args.nranks)]
        result["hosts"] = comm.hosts
        for coll in COLLECTIVES:
            result["failures"] += run_cases(comm, build_cases(coll, args.nranks, args.seed))
        result["failures"] += ring(comm, args.seed)
        comm.barrier()
        x = np.full(3, args.rank + 1, np.int64)
        comm.all_reduce(x)
        if not (x == args.nranks * (args.nranks + 1) // 2).all():
            result["failures"].append(f"final all_reduce gave {x}")
        comm.destroy()
    except BaseException:  # noqa: BLE001 - reported to the test
        result["failures"].append("raised:\n" + traceback.format_exc())
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
