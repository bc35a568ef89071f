"""Diagnosis of the GPU path: the device case matrix on N ranks, one case at a time, logged per rank.

``pyxccl-run -n 4 python tests/device_case_log.py`` (``DIAG_SIZES=0,1,7,100003``): every rank writes
``$OUT/diag<N>_rank<r>.log`` (one line per case: its label, seconds, the streams the communicator
holds, ok or the first mismatch); a case stuck over 60 s dumps every thread's stack there and ends
the process, and the mirror prints the connectors' flag words after 20 s (where a call waits).
"""
import faulthandler, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyxccl
from _device_jobs import cases
from device_mirror import MirrorComm
from harness import start_case
from pyxccl.cuda import get_device

comm = pyxccl.init()
N, r = comm.size, comm.rank
sizes = tuple(int(s) for s in os.environ.get("DIAG_SIZES", "0,1,7,100003").split(","))
dev = get_device("cuda:0")
mirror = MirrorComm(comm, dev)
log = open(os.path.join(os.environ.get("OUT", "/tmp"), f"diag{N}_rank{r}.log"), "w", buffering=1)
faulthandler.enable(log)
bad = 0
t_all = time.perf_counter()
for i, c in enumerate(cases(N, sizes)):
    faulthandler.dump_traceback_later(60, exit=True, file=log)
    t0 = time.perf_counter()
    log.write(f"{i} {c.label(N, r)} inplace={c.inplace} ...")
    _, ret, verify = start_case(mirror, c)
    f = verify(ret)
    bad += len(f)
    side = getattr(comm._engine, "device_side", None)
    nstreams = len(side[0].streams) if side is not None and hasattr(side[0], "streams") else "?"
    log.write(f" {time.perf_counter() - t0:.3f}s streams={nstreams} {'BAD ' + f[0] if f else 'ok'}\n")
faulthandler.cancel_dump_traceback_later()
print(f"DIAG rank {r}: {len(cases(N, sizes))} cases, {bad} wrong, {time.perf_counter() - t_all:.1f}s", flush=True)
comm.destroy()
