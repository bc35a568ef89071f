"""socket: ranks on different hosts; slots carried over TCP lanes with credit flow control.

- :mod:`.transport`: :class:`SocketTransport` (listening, connecting, the hello, closing);
- :mod:`.connectors`: the connectors (staging and receive slots, credits) and their lanes;
- :mod:`.progress`: the progress thread doing every socket read and write;
- :mod:`.wire`: connect info, hello, frame headers, chunking, socket tuning.

:func:`tune` (TCP_NODELAY, keepalive, buffer sizes) serves other TCP users of pyxccl (rpc).
"""

from .transport import SocketTransport
from .wire import tune

__all__ = ["SocketTransport", "tune"]
