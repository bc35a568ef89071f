"""The communicator and what surrounds it: argument checks, the call queue and ``Work``,
``group()``, split/shrink, repeated calls."""

from .communicator import Communicator

__all__ = ["Communicator"]
