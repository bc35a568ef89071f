"""The socket transport's wire formats: connect info, hello, frame headers, chunking.

Connect info (receiver -> sender, through the bootstrap)::

    version u8 | family u8 (4 or 6) | port u16 | token 16 bytes | packed IP (4 or 16)

Challenge (the listener's first bytes on every accepted connection, nothing read before
it): ``"PXCH" | nonce 16 bytes``, a fresh random nonce per connection
(:func:`pyxccl.bootstrap.net.new_challenge`).

Hello (first bytes the sender writes on each of a connector's TCP lanes, answering it)::

    magic "PXSK" | version u8 | lane u8 | nlanes u8 | 0 u8 |
    slot_bytes u32 | nslots u32 | token 16 bytes |
    HMAC-SHA256(secret, "pyxccl-socket" NUL nonce + all before) 32 bytes

The HMAC binds the hello to this connection's challenge: a hello recorded from another
connection fails. Nothing of it but the magic is looked at before the HMAC checks out.

Data (sender -> receiver): per slot and lane, a header ``seq u64 | nbytes u32`` (the
slot's sequence number and total length) then that lane's chunk of the slot (see
:func:`chunk_range`). Lane 0 carries a header for every slot, even an empty one;
lane ``j > 0`` only when its chunk is not empty. Credits (receiver -> sender, on
lane 0 only): single bytes, each the number (1..255) of slots released; every byte
stands alone, so two threads may write credits to one socket without framing trouble.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
import struct

VERSION = 2
MAGIC = b"PXSK"
LABEL = b"pyxccl-socket"
TOKEN_BYTES = 16

_INFO = struct.Struct("!BBH16s")
_HELLO = struct.Struct("!4sBBBxII16s")
MAC_BYTES = 32
HELLO_BYTES = _HELLO.size + MAC_BYTES
FRAME = struct.Struct("!QI")
"""per-lane frame header: slot sequence number, slot length"""

MIN_CHUNK = 64 * 1024
"""a slot is split across lanes only in chunks of at least this many bytes"""
_ALIGN = 4096


def new_token() -> bytes:
    """A random token naming one receive connector."""
    return os.urandom(TOKEN_BYTES)


def encode_info(address: str, port: int, token: bytes) -> bytes:
    """Pack (address, port, token) into the connect info a sender needs."""
    ip = ipaddress.ip_address(address)
    family = 6 if ip.version == 6 else 4
    return _INFO.pack(VERSION, family, port, token) + ip.packed


def decode_info(info: bytes) -> tuple[str, int, bytes]:
    """Unpack connect info into (address, port, token); ValueError when malformed."""
    if len(info) < _INFO.size:
        raise ValueError(f"socket connect info too short ({len(info)} bytes)")
    version, family, port, token = _INFO.unpack_from(info)
    if version != VERSION or family not in (4, 6):
        raise ValueError(f"socket connect info of unknown version {version} / family {family}")
    packed = info[_INFO.size:]
    if len(packed) != (4 if family == 4 else 16):
        raise ValueError("socket connect info carries a malformed address")
    return str(ipaddress.ip_address(packed)), port, token


def _mac(secret: bytes, nonce: bytes, body: bytes) -> bytes:
    return hmac.new(secret, LABEL + b"\0" + nonce + body, hashlib.sha256).digest()


def make_hello(token: bytes, lane: int, nlanes: int, slot_bytes: int, nslots: int, secret: bytes,
               nonce: bytes) -> bytes:
    """The hello a sender writes on lane ``lane`` of ``nlanes``, answering challenge ``nonce``."""
    body = _HELLO.pack(MAGIC, VERSION, lane, nlanes, slot_bytes, nslots, token)
    return body + _mac(secret, nonce, body)


class Hello:
    """A parsed, authenticated hello."""

    __slots__ = ("lane", "nlanes", "slot_bytes", "nslots", "token")

    def __init__(self, lane: int, nlanes: int, slot_bytes: int, nslots: int, token: bytes):
        self.lane, self.nlanes, self.token = lane, nlanes, token
        self.slot_bytes, self.nslots = slot_bytes, nslots


def parse_hello(data: bytes, secret: bytes, nonce: bytes) -> Hello:
    """Check (against challenge ``nonce``) and unpack a hello of :data:`HELLO_BYTES`; ValueError
    saying what is wrong."""
    if len(data) != HELLO_BYTES:
        raise ValueError(f"hello of {len(data)} bytes, expected {HELLO_BYTES}")
    body, mac = bytes(data[:_HELLO.size]), bytes(data[_HELLO.size:])
    if body[:len(MAGIC)] != MAGIC:
        raise ValueError("not a pyxccl socket hello")
    if not hmac.compare_digest(mac, _mac(secret, nonce, body)):
        raise ValueError("hello fails authentication (wrong secret, or not an answer to this "
                         "connection's challenge)")
    _, version, lane, nlanes, slot_bytes, nslots, token = _HELLO.unpack(body)
    if version != VERSION:
        raise ValueError(f"hello of protocol version {version}, expected {VERSION}")
    if not 0 <= lane < nlanes:
        raise ValueError(f"hello names lane {lane} of {nlanes}")
    return Hello(lane, nlanes, slot_bytes, nslots, token)


def chunk_range(nbytes: int, nlanes: int, lane: int) -> tuple[int, int]:
    """The byte range [lo, hi) of a slot of ``nbytes`` that lane ``lane`` carries."""
    if nlanes <= 1 or nbytes <= MIN_CHUNK:
        return (0, nbytes) if lane == 0 else (nbytes, nbytes)
    k = min(nlanes, -(-nbytes // MIN_CHUNK))
    size = -(-nbytes // k)
    size = -(-size // _ALIGN) * _ALIGN
    lo = min(nbytes, lane * size)
    return lo, min(nbytes, lo + size)


def carries(nbytes: int, nlanes: int, lane: int) -> bool:
    """Whether lane ``lane`` sends a frame for a slot of ``nbytes`` (lane 0 always does)."""
    if lane == 0:
        return True
    lo, hi = chunk_range(nbytes, nlanes, lane)
    return hi > lo


def frames_per_slot(nbytes: int, nlanes: int) -> int:
    """How many frames (over all lanes) make up one slot of ``nbytes``."""
    return sum(1 for j in range(nlanes) if carries(nbytes, nlanes, j))


def _sysctl(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_MAX_RCVBUF = _sysctl("/proc/sys/net/core/rmem_max")
_MAX_SNDBUF = _sysctl("/proc/sys/net/core/wmem_max")


def tune(sock: socket.socket, bufbytes: int) -> None:
    """TCP_NODELAY, keepalive, and ``bufbytes`` socket buffers where the kernel allows them.

    Buffers are set only when ``net.core.[rw]mem_max`` admits the size: a capped explicit
    size would switch off Linux's autotuning and leave a smaller buffer than no setting.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, name):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except OSError:
                pass
    for opt, limit in ((socket.SO_SNDBUF, _MAX_SNDBUF), (socket.SO_RCVBUF, _MAX_RCVBUF)):
        if bufbytes <= limit:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, bufbytes)
            except OSError:
                pass
