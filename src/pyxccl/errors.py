"""Typed exceptions of pyxccl.

Every error pyxccl raises is a :class:`PyxcclError`; the subclass says what kind of
thing went wrong and the message says what to fix.
"""


class PyxcclError(Exception):
    """Base class of every pyxccl error."""


class ConfigError(PyxcclError):
    """A ``PYXCCL_*`` variable or a launcher environment is missing or malformed."""


class CudaError(PyxcclError):
    """CUDA is not usable here (no cuda-python, no driver, no such device) or its driver refused an
    operation; the message names the driver's error and what pyxccl was doing."""


class InvalidArgument(PyxcclError, ValueError):
    """A call's argument is wrong on this rank; raised before anything is sent."""


class MismatchError(PyxcclError):
    """Ranks disagree on what collective they are running."""


class TransportError(PyxcclError):
    """A transport could not be set up or failed while moving data."""


class PeerLostError(TransportError):
    """A peer rank went away (connection closed, process gone).

    ``rank`` and ``host`` name the lost peer when it is known (None otherwise).
    """

    def __init__(self, message: str = "", *, rank: "int | None" = None, host: "str | None" = None):
        super().__init__(message)
        self.rank, self.host = rank, host

    def __reduce__(self):  # keep rank/host through pickling (worker processes, futures)
        return (_peer_lost, (str(self), self.rank, self.host))


class CollectiveTimeout(PyxcclError, TimeoutError):
    """A blocking wait passed its deadline; the message says what it waited for."""


class Aborted(PyxcclError):
    """The communicator was aborted; pending and later work fail with this."""


class VerificationError(PyxcclError):
    """An IR program does not implement its collective (see ``pyxccl.ir.verify``)."""


def _peer_lost(message: str, rank: "int | None", host: "str | None") -> PeerLostError:
    return PeerLostError(message, rank=rank, host=host)
