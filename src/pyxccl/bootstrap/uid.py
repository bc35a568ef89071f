"""The unique id (NCCL's ``ncclUniqueId``): a random secret plus the root's listen address.

Binary form (``to_bytes``): ``b"PXU"``, version byte (1), 16 secret bytes, then the packed
address (family byte 4 / 6 / 0 for a host name, address bytes, big-endian port).
String form (``str``): ``"pyxccl1-"`` + URL-safe base64 of the binary form, unpadded.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from .. import config
from ..errors import ConfigError, InvalidArgument
from . import net

_MAGIC = b"PXU"
_VERSION = 1
_PREFIX = "pyxccl1-"
SECRET_BYTES = 16
_MAX_BYTES = 4 + SECRET_BYTES + 2 + 255 + 2


@dataclass(frozen=True)
class UniqueId:
    """A communicator's identity: ``secret`` (16 random bytes) and the root's ``host``/``port``.

    Every rank of one communicator must use the same id; the secret authenticates every
    bootstrap connection (it is never sent over the network by the bootstrap itself).
    """

    secret: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise InvalidArgument(f"UniqueId.secret must be {SECRET_BYTES} bytes")
        if not isinstance(self.port, int) or not 0 < self.port <= 0xFFFF:
            raise InvalidArgument(f"UniqueId.port must be in 1..65535, got {self.port!r}")
        if not isinstance(self.host, str) or not self.host:
            raise InvalidArgument("UniqueId.host must be a non-empty string")

    def __repr__(self) -> str:
        return f"UniqueId(host={self.host!r}, port={self.port}, secret=<{SECRET_BYTES} bytes>)"

    def to_bytes(self) -> bytes:
        """The compact, versioned binary form (at most ~280 bytes)."""
        try:
            addr = net.pack_addr(self.host, self.port)
        except ValueError as exc:
            raise InvalidArgument(f"UniqueId address cannot be encoded: {exc}") from None
        return _MAGIC + bytes([_VERSION]) + self.secret + addr

    @classmethod
    def from_bytes(cls, data: bytes) -> "UniqueId":
        """Parse :meth:`to_bytes` output; anything else raises InvalidArgument saying why."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"UniqueId.from_bytes needs bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > _MAX_BYTES:
            raise InvalidArgument(f"unique id is {len(data)} bytes, longer than {_MAX_BYTES}")
        if not data.startswith(_MAGIC):
            raise InvalidArgument("not a pyxccl unique id (bad magic; expected bytes from "
                                  "UniqueId.to_bytes())")
        if len(data) < 4 or data[3] != _VERSION:
            ver = data[3] if len(data) > 3 else None
            raise InvalidArgument(f"unique id version {ver} is not supported (expected {_VERSION})")
        body = 4 + SECRET_BYTES
        if len(data) < body:
            raise InvalidArgument("unique id truncated: secret incomplete")
        try:
            host, port, end = net.unpack_addr(data, body)
        except ValueError as exc:
            raise InvalidArgument(f"unique id has a bad root address: {exc}") from None
        if end != len(data):
            raise InvalidArgument(f"unique id has {len(data) - end} trailing bytes")
        return cls(data[4:body], host, port)

    def __str__(self) -> str:
        return _PREFIX + base64.urlsafe_b64encode(self.to_bytes()).decode().rstrip("=")

    @classmethod
    def from_string(cls, text: str) -> "UniqueId":
        """Parse ``str(uid)``; anything else raises InvalidArgument."""
        if not isinstance(text, str):
            raise InvalidArgument(f"UniqueId.from_string needs str, got {type(text).__name__}")
        text = text.strip()
        if not text.startswith(_PREFIX):
            raise InvalidArgument(f"unique id string must start with {_PREFIX!r}")
        body = text[len(_PREFIX):]
        if len(body) > 2 * _MAX_BYTES:
            raise InvalidArgument("unique id string is too long")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"unique id string is not valid base64: {exc}") from None
        return cls.from_bytes(raw)


def get_unique_id(timeout: float | None = None, *, host: str | None = None, joining: str = "") -> UniqueId:
    """Create a unique id and start its root rendezvous in a daemon thread of this process.

    The root listens on, in order: the ``host:port`` of PYXCCL_COMM_ID; else an ephemeral
    port (or one of PYXCCL_PORT_RANGE) of the address of the interface PYXCCL_SOCKET_IFNAME
    selects, of ``host``, of this host's address on the route to MASTER_ADDR when that is
    set (torchrun, pyxccl-run; ``pyxccl.init()`` and the torch backend rely on it), else of
    loopback (ranks on one host only). It serves exactly one communicator and gives up
    ``timeout`` seconds (default PYXCCL_TIMEOUT) after this call.
    """
    from .root import start_root

    cfg = config.get()
    if cfg.comm_id:
        try:
            host, port = net.split_host_port(cfg.comm_id)
        except ValueError as exc:
            raise ConfigError(f"PYXCCL_COMM_ID={cfg.comm_id!r} is invalid: {exc}; "
                              "set it to host:port") from None
        bind_host = host
    else:
        if cfg.socket_ifname:
            host = net.select_address(cfg.socket_ifname)
        elif not host and os.environ.get("MASTER_ADDR", "").strip():
            host = net.route_address(os.environ["MASTER_ADDR"].strip())
        host = bind_host = host or "127.0.0.1"
        port = 0
    secret = os.urandom(SECRET_BYTES)
    port = start_root(secret, bind_host, port, cfg.timeout if timeout is None else timeout, joining)
    return UniqueId(secret, host, port)
