"""The communicator and what surrounds it.

:mod:`.communicator` (the one ``Communicator`` class: thin entry points), :mod:`.context`
(its read-only view for the modules around it), :mod:`.checks` (argument checks and
layouts), :mod:`.engine` (running collectives: the calls into the runtime),
:mod:`.programs` (the program of each call), :mod:`.connections` (peers, transports,
connectors), :mod:`.p2p` (tagged send/recv beside the call queue, on the runtime's lanes),
:mod:`.call_queue` (``Work`` and the ordered queue of calls), :mod:`.group` (``group()``),
:mod:`.membership` (split/shrink), :mod:`.repeat` (repeated calls), :mod:`.liveness`
(aborted, destroyed, lost peers).
"""

from .communicator import Communicator

__all__ = ["Communicator"]
