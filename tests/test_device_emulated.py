"""The GPU path on the emulated device (host memory posing as device memory, streams as
threads): the cuda_ipc transport (file descriptors over a Unix socket, stream-ordered flags) and
the device executor's lowering of every plan onto streams, checked against the numpy
references for every collective, dtype and op, on 2, 3 and 4 ranks, with slots small enough
that calls take many slices. No GPU needed: this is what CI runs of the GPU path."""

from __future__ import annotations

import os

import pytest

from _device_jobs import (job_async_work, job_cases, job_catalogue_on_device, job_msccl_file, job_oneshot,
                          job_register_errors, job_send_recv)
from harness import DTYPE_NAMES

ENV = {"PYXCCL_DEVICE_BACKEND": "emulated", "PYXCCL_CUDA_SLOT_BYTES": "16K", "PYXCCL_NSLOTS": "2"}
#: single copy on every call (receivers read the senders' buffers through the device's IPC)
DIRECT = dict(ENV, PYXCCL_CUDA_DIRECT_MIN_BYTES="1")
MODES = {"slots": ENV, "direct": DIRECT}
#: registered buffers read by single copy at every size
REGISTERED = dict(ENV, PYXCCL_CUDA_REGISTERED_MIN_BYTES="0")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("nranks", [2, 3, 4])
def test_every_collective_dtype_and_op_small(env_pools, nranks, mode):
    p = env_pools(nranks, **MODES[mode])
    p.check(job_cases, nranks=nranks, sizes=(0, 1, 7), deadline=300)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("nranks", [2, 3])
def test_many_slices_and_odd_sizes(env_pools, nranks, mode):
    p = env_pools(nranks, **MODES[mode])
    p.check(job_cases, nranks=nranks, sizes=(5003,), dtypes=("float32", "bfloat16", "int64", "float8_e4m3"),
            deadline=300)


LAYOUTS = {2: [((0,), (1,))], 3: [((0, 1), (2,))], 4: [((0, 1), (2, 3)), ((0, 2), (1, 3))]}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coll", ["allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall"])
@pytest.mark.parametrize("nranks", [2, 3, 4])
def test_every_algorithm_of_the_catalogue(env_pools, nranks, coll, mode):
    """Each algorithm forced (one and three channels, host-aware ones for given host layouts)."""
    env_pools(nranks, **MODES[mode]).check(job_catalogue_on_device, coll=coll, host_layouts=LAYOUTS[nranks], deadline=300)


@pytest.mark.parametrize("nranks", [2, 3])
def test_send_recv_of_device_buffers(env_pools, nranks):
    env_pools(nranks, **ENV).check(job_send_recv)


@pytest.mark.parametrize("layout", ["AB", "AAB"])
def test_device_buffers_across_hosts_go_through_host_memory(layout):
    """Ranks on two (emulated) hosts: device calls run over the socket transport through host copies."""
    import harness
    p = harness.Pool(len(layout), f"hosts:{layout}", env=ENV).start()
    try:
        p.check(job_cases, nranks=len(layout), sizes=(0, 7, 5003), dtypes=("float32", "bfloat16", "int32"),
                deadline=300)
        p.check(job_send_recv, sizes=(1, 5003))
    finally:
        p.close()


def test_async_device_calls_wait_and_synchronize(env_pools):
    env_pools(3, **ENV).check(job_async_work)


@pytest.mark.parametrize("nranks", [2, 3, 4])
def test_registered_buffers_go_by_single_copy(env_pools, nranks):
    """Every call's buffers carved from one pyxccl.cuda.empty buffer registered on every rank: the
    peers map it once and read each other's bytes where they are (checked: some call did)."""
    p = env_pools(nranks, **REGISTERED)
    p.check(job_cases, nranks=nranks, sizes=(0, 7, 5003), dtypes=("float32", "bfloat16", "int32"),
            registered=8 << 20, deadline=300)


def test_registering_what_cannot_be_registered(env_pools):
    env_pools(3, **REGISTERED).check(job_register_errors)


@pytest.mark.parametrize("nranks", [2, 3])
def test_small_all_reduces_take_the_one_shot_path(env_pools, nranks):
    env_pools(nranks, **ENV).check(job_oneshot, expect=True)


def test_the_one_shot_path_stays_out_when_an_algorithm_is_named_or_the_call_is_large(env_pools):
    env_pools(2, **ENV, PYXCCL_ALGO="allreduce:ring").check(job_oneshot, expect=False)
    env_pools(2, **ENV, PYXCCL_CUDA_ONESHOT_MAX_BYTES="0").check(job_oneshot, expect=False)


MSCCL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "msccl-xml")
MSCCL_4 = ["ag_hier_4_LL.xml", "ar_hier_12_Simple.xml", "ar_tree_12_LL.xml"]  # the 4-rank files


@pytest.mark.skipif(not os.path.isdir(MSCCL), reason=f"no MSCCL XML files at {MSCCL} (shared data absent)")
def test_msccl_programs_run_on_device_buffers(env_pools):
    """Real MSCCL XML programs lowered onto the (emulated) device's streams, 4 ranks as processes."""
    p = env_pools(4, **ENV)
    for name in MSCCL_4:
        path = os.path.join(MSCCL, name)
        if os.path.exists(path):
            p.check(job_msccl_file, path=path, deadline=120)
