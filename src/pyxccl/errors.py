"""Typed exceptions of pyxccl.

Every error pyxccl raises is a :class:`PyxcclError`; the subclass says what kind of
thing went wrong and the message says what to fix.
"""


class PyxcclError(Exception):
    """Base class of every pyxccl error."""


class ConfigError(PyxcclError):
    """A ``PYXCCL_*`` variable or a launcher environment is missing or malformed."""


class InvalidArgument(PyxcclError, ValueError):
    """A call's argument is wrong on this rank; raised before anything is sent."""


class MismatchError(PyxcclError):
    """Ranks disagree on what collective they are running."""


class TransportError(PyxcclError):
    """A transport could not be set up or failed while moving data."""


class PeerLostError(TransportError):
    """A peer rank went away (connection closed, process gone)."""


class CollectiveTimeout(PyxcclError, TimeoutError):
    """A blocking wait passed its deadline; the message says what it waited for."""


class Aborted(PyxcclError):
    """The communicator was aborted; pending and later work fail with this."""


class VerificationError(PyxcclError):
    """An IR program does not implement its collective (see ``pyxccl.ir.verify``)."""
