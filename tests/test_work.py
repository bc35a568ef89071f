"""Work's completion callbacks and the CallQueue that runs a communicator's calls (no communicator needed)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from pyxccl.errors import Aborted, CollectiveTimeout
from pyxccl.comm.call_queue import BatchWork, CallQueue, Work


@pytest.fixture
def queue():
    s = CallQueue("test-queue")
    yield s
    s.close()


@pytest.fixture
def warnings_seen():
    """Records of the 'pyxccl' logger (it does not propagate to the root logger that caplog watches)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("pyxccl")
    h = Keep(logging.WARNING)
    logger.addHandler(h)
    yield records
    logger.removeHandler(h)


def test_callback_runs_once_when_the_work_finishes():
    w = Work("call")
    seen: list[tuple[Work, object]] = []
    w.add_done_callback(lambda x: seen.append((x, x.result())))
    w.add_done_callback(lambda x: seen.append((x, "second")))
    assert seen == []
    w._finish("out")
    assert seen == [(w, "out"), (w, "second")]
    w._finish("again")  # a second finish (close racing a run) runs nothing twice
    assert len(seen) == 2


def test_callback_on_a_finished_work_runs_at_once_on_this_thread():
    w = Work("call")
    w._finish(exc=ValueError("boom"))
    seen = []
    w.add_done_callback(lambda x: seen.append((threading.get_ident(), type(x.exception()))))
    assert seen == [(threading.get_ident(), ValueError)]


def test_failing_callback_is_logged_and_the_queue_goes_on(queue, warnings_seen):
    def bad(_w):
        raise RuntimeError("callback broke")

    seen = []
    w1 = Work("first")
    w1.add_done_callback(bad)
    w1.add_done_callback(lambda x: seen.append("after the bad one"))
    queue.submit(lambda: 1, w1)
    w2 = queue.submit(lambda: 2, Work("second"))
    assert w2.result(10) == 2
    assert w1.result(10) == 1
    assert seen == ["after the bad one"]
    assert any("callback broke" in r.getMessage() and r.levelno == logging.WARNING for r in warnings_seen)
    assert queue.run(lambda: 3, "third") == 3


def test_batch_work_runs_each_sub_works_callbacks(queue):
    subs = [Work(f"op{i}") for i in range(3)]
    seen: list[tuple[str, object]] = []
    for s in subs:
        s.add_done_callback(lambda x: seen.append((x.what, x.result())))
    batch = BatchWork("batch", subs, ["r0", None, "r2"])
    batch.add_done_callback(lambda x: seen.append((x.what, "batch")))
    queue.submit(lambda: None, batch)
    subs[1].wait(10)
    deadline = time.monotonic() + 10
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [("op0", "r0"), ("op1", None), ("op2", "r2"), ("batch", "batch")]
    # a batch finished inline (comm.py's blocking p2p path), failing
    subs = [Work("a"), Work("b")]
    errs = []
    for s in subs:
        s.add_done_callback(lambda x: errs.append(type(x.exception())))
    BatchWork("batch", subs, [None, None])._finish(exc=OSError("link down"))
    assert errs == [OSError, OSError]


def test_callbacks_race_with_completion_each_runs_once(queue):
    works = [Work(f"w{i}") for i in range(300)]
    counts = [0] * len(works)
    lock = threading.Lock()

    def count(i):
        def cb(_w):
            with lock:
                counts[i] += 1
        return cb

    def adder():
        for i, w in enumerate(works):
            w.add_done_callback(count(i))

    t = threading.Thread(target=adder)
    t.start()
    for w in works:
        queue.submit(lambda: None, w)
    t.join(30)
    for w in works:
        w.wait(10)
    deadline = time.monotonic() + 10
    while sum(counts) < len(works) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counts == [1] * len(works)


def test_callback_runs_after_the_queue_moved_on(queue):
    """A callback may make a blocking call of the same queue, and wait for a queued one."""
    started = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def slow():
        started.set()
        release.wait(10)
        order.append("first")

    w1 = queue.submit(slow, Work("first"))
    inner: list[Work] = []

    def cb(_w):
        order.append(queue.run(lambda: "blocking from the callback", "nested"))
        inner.append(queue.submit(lambda: order.append("queued by the callback"), Work("queued")))
        inner[0].wait()  # runs on this thread: the queue is free again

    w1.add_done_callback(cb)
    w2 = queue.submit(lambda: order.append("second"), Work("second"))
    started.wait(10)
    release.set()
    w2.wait(10)
    deadline = time.monotonic() + 10
    while not inner and time.monotonic() < deadline:
        time.sleep(0.01)
    inner[0].wait(10)
    assert order[0] == "first"
    assert "blocking from the callback" in order and "queued by the callback" in order and "second" in order


def test_wait_runs_a_queued_call_on_the_waiting_thread(queue):
    queue.run(lambda: None, "warm")
    ran_on = []
    # the worker thread exists only after a submit; queue behind a running call to be sure it is busy
    w = queue.submit(lambda: ran_on.append(threading.get_ident()), Work("async"))
    w.wait()
    assert ran_on, "the call did not run"
    # keep the worker busy, queue two calls, let the worker go: wait() on the second helps when idle
    gate = threading.Event()
    queue.submit(lambda: gate.wait(10), Work("gate"))
    a = queue.submit(lambda: threading.get_ident(), Work("a"))
    b = queue.submit(lambda: threading.get_ident(), Work("b"))
    gate.set()
    b.wait()
    assert a.is_completed() and b.is_completed()
    assert a.result() is not None and b.result() is not None


def test_wait_with_a_timeout_does_not_run_the_call_itself(queue):
    gate = threading.Event()
    queue.submit(lambda: gate.wait(10), Work("gate"))
    w = queue.submit(lambda: None, Work("behind the gate"))
    with pytest.raises(CollectiveTimeout):
        w.wait(timeout=0.05)
    gate.set()
    assert w.wait(10)


def test_wait_runs_the_queue_itself_when_no_worker_takes_it():
    """wait() (no timeout) on a queued call runs the queue up to it on the waiting thread."""
    s = CallQueue("help")
    s._thread = threading.current_thread()  # pretend a worker exists: none will ever run anything
    try:
        me = threading.get_ident()
        a = s.submit(lambda: threading.get_ident(), Work("a"))
        b = s.submit(lambda: threading.get_ident(), Work("b"))
        c = s.submit(lambda: threading.get_ident(), Work("c"))
        with pytest.raises(CollectiveTimeout):
            b.wait(timeout=0.05)  # with a timeout it only waits
        assert b.wait() is True
        assert a.result(0) == me and b.result(0) == me and not c.is_completed()
        assert s.run(lambda: "blocking", "behind c") == "blocking"  # runs c first, then itself, here
        assert c.result(0) == me
        # a sub-Work of a queued batch helps its batch along
        subs = [Work("s0"), Work("s1")]
        s.submit(lambda: None, BatchWork("batch", subs, ["x", None]))
        assert subs[0].result() == "x"
    finally:
        s.close()


def test_nested_call_inside_a_queued_call_runs_inline(queue):
    def outer():
        return queue.run(lambda: "inner", "nested") + " in outer"

    assert queue.submit(outer, Work("outer")).result(10) == "inner in outer"
    assert queue.run(outer, "outer blocking") == "inner in outer"


def test_closed_queue_fails_new_and_queued_calls_with_callbacks():
    s = CallQueue("closing")
    gate = threading.Event()
    s.submit(lambda: gate.wait(10), Work("gate"))
    queued = Work("queued")
    errs = []
    queued.add_done_callback(lambda x: errs.append(x.exception()))
    s.submit(lambda: None, queued)
    threading.Timer(0.1, gate.set).start()
    s.close(Aborted("closed for the test"))
    assert len(errs) == 1 and isinstance(errs[0], Aborted)
    late = Work("late")
    late.add_done_callback(lambda x: errs.append(x.exception()))
    s.submit(lambda: None, late)
    assert len(errs) == 2 and isinstance(errs[1], Aborted)
    with pytest.raises(Aborted):
        s.run(lambda: None, "after close")


def test_no_callback_no_lock():
    """The common path (no callback) never touches the callbacks' lock."""
    import pyxccl.comm.call_queue as W

    taken = []

    class Forbidden:
        def __enter__(self):
            taken.append(threading.current_thread().name)
            raise AssertionError("the callbacks' lock was taken")

        def __exit__(self, *a):
            return False

    saved = W._CALLBACKS
    W._CALLBACKS = Forbidden()
    try:
        s = CallQueue("nolock")
        assert s.submit(lambda: 5, Work("x")).result(10) == 5
        assert s.run(lambda: 6, "y") == 6
        s.submit(lambda: None, BatchWork("batch", [Work("a"), Work("b")], [None, None])).wait(10)
        s.close()
    finally:
        W._CALLBACKS = saved
    assert not taken, taken
