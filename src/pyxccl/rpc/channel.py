"""The channel of one service on one node (pRPC's RpcChannel): the queue of its requests.

The server side opens a channel when the first server dealer of a service id is created
on this node and closes it when the last one closes; the reader threads of the server
links (and this node's client side, for same-node requests) put requests in; the server
dealers of the id take them out (competing consumers). :data:`WAKE` in the queue wakes
a dealer blocked on it (to see that it or the channel closed).
"""

from __future__ import annotations

import queue
import threading

from .messages import Request

WAKE = None
"""the queue item that wakes a waiting dealer instead of handing it a request"""


class Channel:
    """The requests of service ``sid`` on this node, and how many dealers serve them.

    ``queue`` holds :class:`Request` items and :data:`WAKE`; ``open`` turns False (under
    ``lock``) when the last dealer closes, after which :meth:`put` refuses requests.
    """

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.queue: "queue.SimpleQueue[Request | None]" = queue.SimpleQueue()
        self.dealers = 0
        """server dealers of the id on this node"""
        self.open = True
        self.lock = threading.Lock()

    def put(self, req: Request) -> bool:
        """Queue ``req``; False when the channel has closed (the caller answers or reroutes)."""
        with self.lock:
            if not self.open:
                return False
            self.queue.put(req)
            return True

    def shut(self) -> None:
        """Refuse further requests (what is queued stays for the caller to drain)."""
        with self.lock:
            self.open = False

    def wake(self) -> None:
        """Wake one dealer blocked on the queue (it passes the wake on while the channel
        is shut, so every waiter wakes)."""
        self.queue.put(WAKE)

    def drain(self) -> list[Request]:
        """Take every request still queued (dropping wake-ups)."""
        left = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return left
            if item is not WAKE:
                left.append(item)


__all__ = ["Channel", "WAKE"]
