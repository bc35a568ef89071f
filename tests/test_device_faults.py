"""A lost peer never leaves a GPU stream blocked (NCCL's abort semantics), on the emulated device.

Three ranks with device buffers of cuda:0 (``PYXCCL_DEVICE_BACKEND=emulated``, 16 KiB slots);
the runs are tests/_device_fault_runner.py (forked rank processes, as tests/_fault_runner.py).
Ranks 0 and 1 enqueue an all_reduce that needs rank 2, and rank 2 dies without issuing it
(``absent``), dies with its part half done (``midway``), or dies while rank 1 has not issued it
either (``straggler``: rank 0's streams also wait on a survivor). Each survivor's
``device.synchronize()`` must return within 5 s of the death (and not before it: its streams
were blocked), its next device call must raise PeerLostError naming rank 2,
``comm.shrink(exclude=[2])`` must give a 2-rank communicator whose device all_reduce on the same
device is correct, and destroying the old communicator must not hang. ``abort()`` with streams
blocked on a live peer must return within 5 s and leave no stream blocked; ``abort()`` while
the device work cannot even start (``stuck``) must return within 4 s, keep its memory mapped
for the streams and let them run through once they can. Every rank process must exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PYXCCL_DEVICE_BACKEND": "emulated", "PYXCCL_CUDA_SLOT_BYTES": "16K", "PYXCCL_TIMEOUT": "10"}
#: floats per all_reduce; midway's is larger so that rank 2 dies while its part is still running
COUNTS = {"midway": 1 << 20}


def _run(tmp_path, scenario: str) -> dict:
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_device_fault_runner.py"), "--scenario", scenario,
                           "--count", str(COUNTS.get(scenario, 1 << 18)), "--out", str(out)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, **ENV})
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    summary["stderr"] = proc.stderr
    return summary


@pytest.mark.parametrize("scenario", ["absent", "midway", "straggler"])
def test_a_lost_peer_releases_the_streams_waiting_on_it(tmp_path, scenario):
    summary = _run(tmp_path, scenario)
    assert not summary["problems"], json.dumps(summary["problems"], indent=1) + summary["stderr"][-3000:]
    latencies = [summary["reports"][r]["sync_latency_s"] for r in ("0", "1")]
    print(f"\n{scenario}: synchronize returned {latencies} s after the death; {summary['seconds']} s in all")


@pytest.mark.parametrize("scenario", ["abort", "stuck"])
def test_abort_with_a_blocked_stream_returns(tmp_path, scenario):
    summary = _run(tmp_path, scenario)
    assert not summary["problems"], json.dumps(summary["problems"], indent=1) + summary["stderr"][-3000:]
    reps = [summary["reports"][r] for r in ("0", "1")]
    if scenario == "stuck":  # the device side could not drain: kept mapped, said so
        assert "stays mapped until it has" in summary["stderr"]
    print(f"\n{scenario}: abort() took {[r['abort_s'] for r in reps]} s, synchronize after it "
          f"{[r['sync_after_abort_s'] for r in reps]} s; {summary['seconds']} s in all")
