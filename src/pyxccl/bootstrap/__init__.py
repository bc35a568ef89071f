"""Bootstrap: unique id, root rendezvous, the bootstrap ring, key-value stores, launcher env.

NCCL's order: one rank calls :func:`get_unique_id` (or every rank calls
:func:`exchange_unique_id` with :func:`from_environment`), every rank builds a
:class:`Bootstrap` with that id, and the communicator exchanges its setup information
over the bootstrap's tagged ``send``/``recv``, ``allgather``, ``broadcast`` and ``barrier``.
"""

from .env import LaunchInfo, exchange_unique_id, from_environment
from .ring import Bootstrap
from .store import FileStore, PrefixStore, Store, TCPStore
from .uid import UniqueId, get_unique_id

__all__ = [
    "UniqueId", "get_unique_id", "Bootstrap", "Store", "TCPStore", "FileStore", "PrefixStore",
    "LaunchInfo", "from_environment", "exchange_unique_id",
]
