"""Registered buffers (NCCL's ``ncclCommWindowRegister``): :meth:`Communicator.register` and
:meth:`Registration.deregister`.

Registering is collective: every rank registers one buffer, in the same order, through the call
queue (ordered with the collectives). Each rank exports the allocation holding its buffer, the
ranks of the host swap the descriptors and map each other's
(:mod:`pyxccl.transport.cuda_ipc.windows`). A rank whose buffer cannot be registered (host
memory, another device, memory that cannot be shared) tells the others so instead of its
descriptor: it raises ``InvalidArgument`` saying what to fix, the others raise it naming that
rank, nobody waits for the timeout, and no rank keeps a window.

Deregistering is collective too: every rank drains its device work (no stream still reads a
peer's buffer), unmaps the peers' buffers and waits for the ranks of its host to have done the
same, so the buffer may be freed once it returns. Both swap with every other rank (the ranks of
other hosts only learn that the swap happened: they never map the buffer).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidArgument
from ..memory import Buffer
from .connections import TAG_DEVICE_WINDOWS


class Registration:
    """One registered buffer of a communicator (:meth:`pyxccl.Communicator.register`)."""

    def __init__(self, engine: Any, window: Any, buffer: Buffer):
        self._engine, self._window = engine, window
        self.buffer = buffer
        """the registered buffer (its owner is kept alive while registered)"""

    @property
    def registered(self) -> bool:
        return self._window is not None

    def deregister(self) -> None:
        """Collective: forget this buffer on every rank (they all call it, in one order)."""
        if self._window is None:
            raise InvalidArgument("this buffer was deregistered already")
        deregister(self._engine, self._window, f"deregister({self.buffer!r})")
        self._window = None

    def __repr__(self) -> str:
        state = f"window {self._window.index}" if self._window is not None else "deregistered"
        return f"<pyxccl.Registration {self.buffer!r}: {state}>"


def _others(engine: Any) -> list[int]:
    """Every other rank: registering is rare, and every rank then swaps with the same ranks, whatever
    went wrong where."""
    return [p for p in range(engine.size) if p != engine.rank]


def register(engine: Any, buf: Buffer, what: str) -> Registration:
    """Register ``buf`` on every rank (run on the call queue; see the module docstring)."""

    def run() -> Any:
        from ..transport.cuda_ipc.windows import Windows
        problem = desc = None
        if buf.on_host:
            problem = f"{what}: registering takes CUDA buffers; {buf!r} is in host memory"
        else:
            try:
                engine.open_device(buf.device, lambda: what)
                if engine.windows is None:
                    engine.windows = Windows(engine.device_side[0].device, f"{engine.ctx.tag}-w{engine.rank}")
                desc = engine.windows.export(buf.address, buf.nbytes, what)
            except InvalidArgument as exc:
                problem = str(exc)
        peers = _others(engine)
        mine = json.dumps({"error": problem}).encode() if problem is not None else desc
        got = engine.swap(TAG_DEVICE_WINDOWS, mine, peers, peers)
        if problem is not None:
            raise InvalidArgument(problem)
        bad = {p: json.loads(d)["error"] for p, d in got.items() if "error" in json.loads(d)}
        if bad:
            peer = min(bad)
            raise InvalidArgument(f"{what}: rank {peer} could not register its buffer, so no rank did "
                                  f"(rank {peer}: {bad[peer]})")
        kinds = engine.device_side[1].kinds  # the ranks of this host map the buffer; the others never read it
        window = engine.windows.add(buf.address, buf.nbytes, buf.owner,
                                    {p: d for p, d in got.items() if kinds[p] == "cuda_ipc"}, engine.timeout)
        return Registration(engine, window, buf)

    return engine.submit(run, what, False)


def deregister(engine: Any, window: Any, what: str) -> None:
    """Forget ``window`` on every rank (run on the call queue; see the module docstring)."""

    def run() -> None:
        res = engine.device_side[0] if engine.device_side is not None else None
        if res is not None and not res.drain(engine.timeout):
            raise InvalidArgument(f"{what}: this rank's device work did not finish in {engine.timeout:.0f} s")
        if engine.windows is not None:
            engine.windows.remove(window)
        peers = _others(engine)
        engine.swap(TAG_DEVICE_WINDOWS, b"done", peers, peers)

    engine.submit(run, what, False)
