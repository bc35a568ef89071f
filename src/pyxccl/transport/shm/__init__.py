"""shm: ranks on one host; slot rings in shared-memory files, single copy by CMA.

- :mod:`.transport`: :class:`ShmTransport` (ring files made, attached, removed);
- :mod:`.connectors`: the ring's connectors plus the single-copy protocol (descriptors,
  the probe, destination offers) in the ring header's transport lines;
- :mod:`.cma`: process_vm_readv / writev;
- :mod:`.files`: every file pyxccl puts in shared memory, named after the process that made
  it, and their removal once that process is gone (:func:`pyxccl.transport.sweep_stale`).
"""

from .transport import ShmTransport

__all__ = ["ShmTransport"]
