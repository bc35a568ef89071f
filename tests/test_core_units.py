"""Unit tests of the core pieces below the communicator: config, dtypes, buffers, doorbell, slot rings, executor geometry."""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import tempfile
import threading
import time

import ml_dtypes
import numpy as np
import pytest

from pyxccl import config
from pyxccl.memory import as_buffer
from pyxccl.dtypes import DTYPES, dtype_of, op_of, premul_sum
from pyxccl.runtime.kernels import postdivide, prescale
from pyxccl.errors import ConfigError, InvalidArgument
from pyxccl.runtime.host.executor import Geometry
from pyxccl import transport
from pyxccl.memory.region import Region
from pyxccl.transport import Capability, PeerInfo, TransportContext
from pyxccl.transport.doorbell import Doorbell
from pyxccl.transport.ring import RingRecvConnector, RingSendConnector, SlotRing, map_ring, ring_bytes


def test_config_parses_and_rejects():
    cfg = config.load({"PYXCCL_SLOT_BYTES": "1M", "PYXCCL_DEBUG": "info", "PYXCCL_TIMEOUT": "2.5",
                       "PYXCCL_TRANSPORT": "socket"})
    assert (cfg.slot_bytes, cfg.debug, cfg.timeout, cfg.transport) == (1 << 20, "INFO", 2.5, "socket")
    with pytest.raises(ConfigError, match="PYXCCL_TIMEOUT"):
        config.load({"PYXCCL_TIMEOUT": "-1"})
    with pytest.raises(ConfigError, match="PYXCCL_TRANSPORT"):
        config.load({"PYXCCL_TRANSPORT": "carrier-pigeon"})
    names = [v[0] for v in config.variables()]
    assert "PYXCCL_DEBUG" in names and all(n.startswith("PYXCCL_") for n in names)


def test_dtypes_cover_the_issue_list():
    assert set(DTYPES) == {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "bfloat16",
                           "float32", "float64", "float8_e4m3", "float8_e5m2"}
    assert dtype_of(np.dtype(ml_dtypes.bfloat16)).name == "bfloat16"
    assert dtype_of("f8e4m3").np == np.dtype(ml_dtypes.float8_e4m3fn)
    with pytest.raises(InvalidArgument, match="complex"):
        dtype_of(np.complex64)
    with pytest.raises(InvalidArgument, match="op"):
        op_of("xor")


def test_avg_truncates_integers_toward_zero_and_scales_floats():
    a = np.array([-7, -6, 7, 5, -1, 0], dtype=np.int32)
    postdivide(a, 2)
    assert a.tolist() == [-3, -3, 3, 2, 0, 0]
    f = np.array([3.0, -1.0], dtype=ml_dtypes.bfloat16)
    postdivide(f, 4)
    assert f.astype(np.float32).tolist() == [0.75, -0.25]
    assert prescale(np.array([2, 4], np.float16), premul_sum(0.5)).tolist() == [1.0, 2.0]


def test_as_buffer_accepts_buffers_and_rejects_bad_ones():
    b = as_buffer(bytearray(16), "x")
    assert (b.count, b.dtype.name) == (16, "uint8")
    assert as_buffer(np.zeros((3, 4), np.float32), "x").count == 12
    with pytest.raises(InvalidArgument, match="output: .*not C-contiguous"):
        as_buffer(np.zeros((4, 4))[:, ::2], "output")
    with pytest.raises(InvalidArgument, match="output: .*read-only"):
        as_buffer(bytes(8), "output", writable=True)
    with pytest.raises(InvalidArgument, match="input: expected"):
        as_buffer(object(), "input")


def test_as_buffer_torch_tensors():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    b = as_buffer(t, "x")
    b.host_view()[0] = 5  # a view, no copy
    assert (b.dtype.name, b.device, b.count, b.nbytes, float(t[0, 0])) == ("bfloat16", "cpu", 6, 12, 5.0)
    assert b.address == t.data_ptr() and b.owner is t
    with pytest.raises(InvalidArgument, match="not contiguous"):
        as_buffer(t.t(), "x")


def test_doorbell_wakes_a_sleeper_and_times_out():
    bell = Doorbell.anonymous(spin_us=0)
    ringer = bell.handle(writer=7)
    seen = bell.value()
    t0 = time.monotonic()
    assert bell.wait(seen, t0 + 0.05) is False
    assert time.monotonic() - t0 >= 0.05
    threading.Timer(0.05, ringer.ring).start()
    assert bell.wait(seen, time.monotonic() + 5)
    assert bell.value() != seen


def test_slot_ring_moves_slots_in_order_with_bounded_flight():
    bell = Doorbell.anonymous()
    ring = SlotRing.allocate(64, 3)
    tx, rx = RingSendConnector(ring, 1, 0, bell.handle(1)), RingRecvConnector(ring, 0, 0)
    for i in range(3):
        assert tx.ready()
        tx.buffer()[:4] = i
        tx.post(4)
    assert not tx.ready()  # 3 slots in flight
    for i in range(3):
        assert rx.ready() and rx.buffer().tolist() == [i] * 4
        rx.release()
    assert not rx.ready() and tx.ready()


def test_local_connectors_have_slots_only_and_say_where_they_live():
    """local: two ranks of one process, through the transport (doorbells in shared files, as a
    communicator makes them); slots only, and both ends name the same host memory."""
    tag = f"unit{os.getpid()}"
    bells = [transport.open_doorbell(tag, r, spin_us=0) for r in range(2)]
    peers = [PeerInfo(rank=r, host="h", pid=os.getpid(), doorbell=bells[r][1]) for r in range(2)]
    trs = [transport.create("local", TransportContext(rank=r, nranks=2, comm_tag=tag, peers=peers,
                                                      doorbell=bells[r][0], slot_bytes=4096, nslots=3, timeout=5.0))
           for r in range(2)]
    try:
        rx, info = trs[1].setup_recv(0, 0)
        tx = trs[0].connect_send(1, 0, info)
        assert type(trs[0]).__mro__[1] is transport.Transport  # local no longer derives from shm
        for c in (tx, rx):
            assert c.capabilities == Capability.SLOTS
            assert not c.capabilities & (Capability.READ_PEER | Capability.WRITE_PEER | Capability.STREAM_ORDERED)
        whole = tx.slot_region()
        assert whole == rx.slot_region() and whole.on_host and whole.nbytes == 3 * 4096
        for i in range(3):
            r = tx.slot_region(i)
            assert r == Region("cpu", whole.address + i * 4096, 4096)
        seen = bells[1][0].value()
        i = tx.slot_index()
        tx.buffer()[:5] = np.frombuffer(b"hello", np.uint8)
        tx.post(5)
        assert bells[1][0].value() != seen  # the receiver's doorbell rang
        assert rx.ready() and rx.slot_index(5) == i
        assert ctypes.string_at(rx.slot_region(i).address, 5) == b"hello" == rx.buffer().tobytes()
        rx.release()
        assert tx.ready() and tx.remote_min_bytes == 0 and not rx.remote_read and tx.destination() is None
    finally:
        for t in trs:
            t.close()
        for _, name in bells:
            transport.close_doorbell(name)


@pytest.mark.skipif(not hasattr(mmap, "MAP_POPULATE") or not os.path.isdir("/dev/shm"), reason="Linux shared memory")
def test_ring_pages_are_mapped_when_the_ring_is():
    """The first use of a slot takes no page faults (it used to take one per 4 KiB, in the copy)."""
    size = ring_bytes(1 << 20, 2)
    fd, path = tempfile.mkstemp(dir="/dev/shm", prefix="pyxccl-test-ring-")
    try:
        os.posix_fallocate(fd, 0, size)
        mems = [map_ring(fd, size), mmap.mmap(fd, size)]  # populated, and plain for contrast
    finally:
        os.close(fd)
        os.unlink(path)
    faults = []
    for mem in mems:
        data = np.frombuffer(mem, np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        data[::4096] = 1  # one write per page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del data
        mem.close()
    pages = size // 4096
    assert faults[0] < pages // 16 and faults[1] > pages // 2, faults


@pytest.mark.parametrize("count,k,slot,cnt,item,expect", [
    (0, 4, 1024, 1, 4, (0, 1, 0)),
    (7, 8, 1024, 1, 4, (1, 1, 1)),
    (1000, 4, 400, 1, 4, (250, 100, 3)),
    (1000, 4, 400, 2, 4, (250, 50, 5)),
])
def test_geometry_pads_chunks_and_slices(count, k, slot, cnt, item, expect):
    g = Geometry.of(count, k, slot, cnt, item)
    assert (g.ce, g.n, g.niters) == expect
