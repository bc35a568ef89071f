"""pRPC's accumulator: values written on many nodes, aggregated by one server.

Client side, on any node::

    acc = rpc.Accumulator("loss", rpc.AVG, flush_every=0.05)
    for i in range(1000):
        acc.write((i + 1) * (rank + 1))    # merged into the local cache, returns at once
    acc.wait_empty()                        # every write has reached the server
    acc.read()                              # the aggregate over every node's writes

Server side, on one node: ``rpc.serve_accumulators()``.

Flow. :meth:`Accumulator.write` merges the value into the *filling* one of two local
buffers (numbers and numpy arrays; Avg keeps a sum and a count). A flusher thread, every
``flush_every`` seconds or at once when :meth:`Accumulator.wait_empty` asks, swaps the
buffers, so writes go on into the other one while it sends the full one to the server
(``merge``: name, aggregator, value, count) and clears it: the two buffers alternate
between filling and sending. The server keeps one (aggregator, value, count) per name;
an accumulator written with another aggregator than the one it holds is refused.
``read`` asks the server (Avg returns sum / count), ``erase`` drops the name there. The
client uses the ``first`` policy: every node sends to the same (lowest-ranked) server.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ..errors import InvalidArgument
from .dealer import ServerDealer
from .default import get_service
from .errors import NoSuchServer, RpcError, RpcTimeout
from .service import RpcService

SERVICE_ID = "pyxccl.accumulator"


class Aggregator:
    """How values combine: ``merge(acc, value)`` and ``final(acc, count)``."""

    name = ""

    def merge(self, acc: Any, value: Any) -> Any:
        """``acc`` combined with ``value`` (``acc`` may be updated in place; None: empty)."""
        if acc is None:
            return value.copy() if isinstance(value, np.ndarray) else value
        if isinstance(acc, np.ndarray):
            try:
                return self._op(acc, value, out=acc)
            except (TypeError, ValueError):  # shape or dtype does not fit in place
                return self._op(acc, value)
        if isinstance(value, np.ndarray):
            return self._op(acc, value)
        return self._scalar(acc, value)

    def final(self, acc: Any, count: int) -> Any:
        """The value a read returns."""
        return acc

    def _op(self, a: Any, b: Any, out: Any = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scalar(self, a: Any, b: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name.capitalize()


class Sum(Aggregator):
    """The sum of every value written (exact for Python ints)."""

    name = "sum"

    def _op(self, a: Any, b: Any, out: Any = None) -> Any:
        return np.add(a, b, out=out)

    def _scalar(self, a: Any, b: Any) -> Any:
        return a + b


class Avg(Sum):
    """The mean of every value written: the sum divided by the number of writes."""

    name = "avg"

    def final(self, acc: Any, count: int) -> Any:
        return None if acc is None or count == 0 else acc / count


class Max(Aggregator):
    """The (elementwise) maximum."""

    name = "max"

    def _op(self, a: Any, b: Any, out: Any = None) -> Any:
        return np.maximum(a, b, out=out)

    def _scalar(self, a: Any, b: Any) -> Any:
        return max(a, b)


class Min(Aggregator):
    """The (elementwise) minimum."""

    name = "min"

    def _op(self, a: Any, b: Any, out: Any = None) -> Any:
        return np.minimum(a, b, out=out)

    def _scalar(self, a: Any, b: Any) -> Any:
        return min(a, b)


SUM, AVG, MAX, MIN = Sum(), Avg(), Max(), Min()
_AGGREGATORS: dict[str, Aggregator] = {a.name: a for a in (SUM, AVG, MAX, MIN)}


def resolve_aggregator(spec: Any) -> Aggregator:
    """An Aggregator from an instance, a class (Sum) or a name (``"sum"``)."""
    if isinstance(spec, Aggregator):
        return spec
    if isinstance(spec, type) and issubclass(spec, Aggregator) and spec.name in _AGGREGATORS:
        return _AGGREGATORS[spec.name]
    if isinstance(spec, str) and spec.lower() in _AGGREGATORS:
        return _AGGREGATORS[spec.lower()]
    raise InvalidArgument(f"aggregator must be one of Sum, Avg, Max, Min, got {spec!r}")


def _check_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating, np.ndarray)):
        raise InvalidArgument(f"an accumulator takes numbers and numpy arrays, got "
                              f"{type(value).__name__}")
    return value


class Accumulator:
    """One named accumulator on this node (see the module docstring).

    ``flush_every``: seconds between flushes; ``timeout``: bound of every request and of
    :meth:`wait_empty` (default: the node's request timeout).
    """

    def __init__(self, name: str, aggregator: Any = SUM, flush_every: float = 0.1, *,
                 service: RpcService | None = None, timeout: float | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"accumulator name must be a non-empty str, got {name!r}")
        if not flush_every > 0:
            raise InvalidArgument(f"flush_every must be positive, got {flush_every!r}")
        if service is None:
            service = get_service()
        self.name = name
        self.aggregator = resolve_aggregator(aggregator)
        self.flush_every = float(flush_every)
        self._client = service.create_client(SERVICE_ID, timeout=timeout, policy="first")
        self.timeout = self._client.timeout
        self._cond = threading.Condition()
        self._slots: list[list[Any]] = [[None, 0], [None, 0]]  # [value, count] x 2
        self._filling = 0
        self._sending = False
        self._force = False
        self._closed = False
        self._error: RpcError | None = None
        self._thread = threading.Thread(target=self._flush_loop, daemon=True,
                                        name=f"pyxccl-acc-{name}")
        self._thread.start()

    def write(self, value: Any) -> None:
        """Merge ``value`` into the local buffer (never waits for the network)."""
        _check_value(value)
        with self._cond:
            if self._closed:
                raise InvalidArgument(f"accumulator {self.name!r} is closed")
            slot = self._slots[self._filling]
            slot[0] = self.aggregator.merge(slot[0], value)
            slot[1] += 1

    def _flush_loop(self) -> None:
        next_at = time.monotonic() + self.flush_every
        while True:
            with self._cond:
                while not self._closed and not self._force and time.monotonic() < next_at:
                    self._cond.wait(max(0.0, next_at - time.monotonic()))
                if self._closed and not self._force:
                    return
                self._force = False
            next_at = time.monotonic() + self.flush_every
            self._flush_once()

    def _flush_once(self) -> None:
        with self._cond:
            slot = self._slots[self._filling]
            if slot[1] == 0:
                self._cond.notify_all()
                return
            self._filling ^= 1  # writes go on into the other buffer while this one is sent
            self._sending = True
        try:
            self._client.call({"op": "merge", "name": self.name, "agg": self.aggregator.name,
                               "value": slot[0], "count": slot[1]})
            error: RpcError | None = None
        except NoSuchServer as exc:  # never delivered: keep the values for the next flush
            error = exc
            with self._cond:
                other = self._slots[self._filling]
                other[0] = self.aggregator.merge(slot[0], other[0]) if other[1] else slot[0]
                other[1] += slot[1]
        except RpcError as exc:  # may or may not have been applied: reported, not resent
            error = exc
        with self._cond:
            slot[0], slot[1] = None, 0
            self._sending = False
            if error is not None:
                self._error = error
            self._cond.notify_all()

    def _empty(self) -> bool:
        return not self._sending and self._slots[0][1] == 0 and self._slots[1][1] == 0

    def wait_empty(self, timeout: float | None = None) -> None:
        """Flush now and wait until every write so far has reached the server.

        Raises the error of a failed flush (NoSuchServer, ServerLost, RpcTimeout, ...)
        once, or RpcTimeout when ``timeout`` seconds pass first.
        """
        wait = self.timeout if timeout is None else float(timeout)
        end = time.monotonic() + wait
        with self._cond:
            while True:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._empty():
                    return
                left = end - time.monotonic()
                if left <= 0:
                    raise RpcTimeout(f"accumulator {self.name!r} not flushed within {wait:g}s")
                self._force = True
                self._cond.notify_all()
                self._cond.wait(min(left, 0.05))

    def read(self, timeout: float | None = None) -> Any:
        """The server's aggregate of every node's flushed writes (None if nothing yet)."""
        return self._client.call({"op": "read", "name": self.name, "agg": self.aggregator.name},
                                 timeout)

    def erase(self, timeout: float | None = None) -> None:
        """Drop this node's unflushed writes and the server's value."""
        with self._cond:
            for slot in self._slots:
                if not self._sending or slot is self._slots[self._filling]:
                    slot[0], slot[1] = None, 0
        self._client.call({"op": "erase", "name": self.name}, timeout)

    def close(self) -> None:
        """Flush what is left (bounded by the timeout) and stop the flusher."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._force = True
            self._cond.notify_all()
        self._thread.join(self.timeout + 1.0)
        self._client.close()


class AccumulatorServer:
    """The server that aggregates every accumulator of the namespace (one per namespace)."""

    def __init__(self, service: RpcService | None = None, nthreads: int = 1) -> None:
        if service is None:
            service = get_service()
        self._lock = threading.Lock()
        self._state: dict[str, list[Any]] = {}  # name -> [aggregator name, value, count]
        self._server: ServerDealer = service.create_server(SERVICE_ID)
        self._server.serve(self._handle, nthreads)

    def _handle(self, msg: Any) -> Any:
        if not isinstance(msg, dict) or not isinstance(msg.get("name"), str):
            raise InvalidArgument("accumulator request must be a dict with a name")
        op, name = msg.get("op"), msg["name"]
        with self._lock:
            if op == "erase":
                return self._state.pop(name, None) is not None
            agg = resolve_aggregator(msg.get("agg"))
            entry = self._state.get(name)
            if entry is not None and entry[0] != agg.name:
                raise InvalidArgument(f"accumulator {name!r} aggregates with {entry[0]}, "
                                      f"not {agg.name}")
            if op == "read":
                return None if entry is None else agg.final(entry[1], entry[2])
            if op != "merge":
                raise InvalidArgument(f"unknown accumulator operation {op!r}")
            value, count = _check_value(msg.get("value")), msg.get("count")
            if not isinstance(count, int) or count < 1:
                raise InvalidArgument("merge needs a positive count")
            if entry is None:
                self._state[name] = [agg.name, agg.merge(None, value), count]
            else:
                entry[1] = agg.merge(entry[1], value)
                entry[2] += count
            return True

    def names(self) -> list[str]:
        """The accumulators the server holds."""
        with self._lock:
            return sorted(self._state)

    def close(self) -> None:
        """Stop serving (the values are dropped)."""
        self._server.close()


def serve_accumulators(service: RpcService | None = None, nthreads: int = 1) -> AccumulatorServer:
    """Run this namespace's accumulator server on ``service`` (default: this process's node)."""
    return AccumulatorServer(service, nthreads)
