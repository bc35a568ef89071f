"""local: ranks as threads of one process (tests, simulator); slot rings in process memory.

- :mod:`.transport`: :class:`LocalTransport` (rings handed over through a process-wide table);
- :mod:`.connectors`: the slot ring's connectors (slots only).
"""

from .transport import LocalTransport

__all__ = ["LocalTransport"]
