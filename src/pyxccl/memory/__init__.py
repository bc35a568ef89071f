"""Memory: :class:`Buffer` and the adapters of array libraries (the only place that knows them)."""

from .buffer import Buffer, as_buffer

__all__ = ["Buffer", "as_buffer"]
