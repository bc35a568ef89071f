"""Start-up waits that explain themselves: a WARN line while one goes on.

A wait of the start-up (ranks joining the root, the unique id in the launcher's store, the
bootstrap ring, init's closing barrier) that lasts logs a WARN after 10 s, then every 10 s
until it has lasted a minute, then every minute (:func:`warning_times`), with the text its
``describe(elapsed)`` gives at that moment: what it waits for, who is missing, where they
should connect. ``describe`` may return None to skip a line (nothing to add).

    with Patience(lambda s: f"still waiting for rank 2 after {s:.0f} s", rank=0):
        ...  # the blocking wait

One daemon thread per wait, parked on an event: nothing runs while the wait is short.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from .. import log

FIRST = 10.0
"""seconds before the first WARN line"""
EARLY_EVERY, EARLY_UNTIL, LATE_EVERY = 10.0, 60.0, 60.0
"""every 10 s up to a minute, then every minute"""


def warning_times() -> Iterator[float]:
    """Seconds since the wait began at which a line is due: 10, 20, ..., 60, 120, 180, ..."""
    t = FIRST
    while True:
        yield t
        t += EARLY_EVERY if t < EARLY_UNTIL else LATE_EVERY


class Patience:
    """A context manager that WARNs with ``describe(elapsed seconds)`` on :func:`warning_times`."""

    def __init__(self, describe: Callable[[float], "str | None"], *, rank: int | None = None,
                 name: str = "pyxccl-patience") -> None:
        self.describe, self.rank, self.name = describe, rank, name
        self._done = threading.Event()
        self._start = 0.0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Patience":
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _run(self) -> None:
        for due in warning_times():
            if self._done.wait(max(0.0, self._start + due - time.monotonic())):
                return
            try:
                line = self.describe(time.monotonic() - self._start)
            except Exception as exc:  # noqa: BLE001 - a message must never break the wait
                line = f"(could not describe the wait: {exc!r})"
            if line and not self._done.is_set():
                log.warn("%s", line, rank=self.rank)
