"""pRPC wire formats: data frames, the data-connection hello, master control frames.

All integers little-endian. A data connection (client FrontEnd -> server RpcService)
starts like every pyxccl connection: the listener sends a challenge
(:func:`pyxccl.bootstrap.net.auth_accept`), the connector answers
HMAC-SHA256(secret, ``pyxccl-rpc`` + nonce) and then the hello::

    magic "PXRH" | version u8 | lane u8 | 0 u16 | client node rank i32 | node token 16 bytes
    | link id u64

Lane 0 carries small messages, lane 1 large ones (the two TCP streams of one link), so a
large message never queues a small one behind it. Then both directions carry frames::

    magic u32 "PXRP" | kind u8 (1 request, 2 response) | status u8 | sid_len u16
    | request id u64 | meta_len u32 | nbufs u32                      (24 bytes)
    nbufs x u64 buffer lengths | service id (sid_len bytes, requests) | meta (meta_len bytes)
    buffer 0 | buffer 1 | ...

``meta`` is a :mod:`~pyxccl.rpc.codec` payload (status OK) or a UTF-8 error message
(status != OK); the buffers are the payload's out-of-band arrays, written from the
caller's memory with ``sendmsg`` and read with ``recv_into`` into fresh numpy arrays.

Master control frames (node <-> master, after the same challenge with label
``pyxccl-rpc-master``): ``magic u32 "PXRM" | type u8 | 0 u8 x3 | length u32`` + an inline
codec payload (a dict), at most :data:`MAX_CONTROL` bytes.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bootstrap import net
from ..errors import PeerLostError
from . import codec
from .errors import ProtocolError

VERSION = 1
DATA_LABEL = b"pyxccl-rpc"
MASTER_LABEL = b"pyxccl-rpc-master"

FRAME_MAGIC = 0x50525850  # b"PXRP" little-endian
HEADER = struct.Struct("<IBBHQII")
KIND_REQUEST, KIND_RESPONSE = 1, 2
MAX_META = 1 << 30
MAX_BUFS = 1 << 16
MAX_BUFFER = 1 << 40

HELLO = struct.Struct("<4sBBxxi16sQ")
HELLO_MAGIC = b"PXRH"
TOKEN_BYTES = 16

CONTROL = struct.Struct("<IBxxxI")
CONTROL_MAGIC = 0x4D525850  # b"PXRM"
MAX_CONTROL = 16 << 20
(C_REGISTER, C_WELCOME, C_JOIN, C_LEAVE, C_UPDATE, C_BYE, C_REJECT) = range(1, 8)

_U64 = struct.Struct("<Q")
_RECV_BUF = 256 * 1024


# ---------------------------------------------------------------- data frames

def frame_parts(kind: int, status: int, rid: int, sid: bytes, meta: bytes | bytearray,
                bufs: list[memoryview]) -> tuple[list[Any], int]:
    """The pieces of one frame to write in order, and its total length in bytes."""
    head = bytearray(HEADER.pack(FRAME_MAGIC, kind, status, len(sid), rid, len(meta), len(bufs)))
    for b in bufs:
        head += _U64.pack(b.nbytes)
    head += sid
    head += meta
    return [head, *bufs], len(head) + sum(b.nbytes for b in bufs)


def response_parts(rid: int, status: int, payload: Any = None,
                   message: str = "") -> tuple[list[Any], int]:
    """A response frame: ``payload`` encoded (status OK) or the error ``message``."""
    if status == 0:
        meta, bufs = codec.encode(payload)
        return frame_parts(KIND_RESPONSE, 0, rid, b"", meta, bufs)
    return frame_parts(KIND_RESPONSE, status, rid, b"", message.encode("utf-8", "replace"), [])


@dataclass
class Frame:
    """One received frame; ``bufs`` are fresh uint8 arrays holding the out-of-band buffers."""

    kind: int
    status: int
    rid: int
    sid: str
    meta: bytes
    bufs: list[np.ndarray]

    def payload(self) -> Any:
        """The decoded payload (status OK); ProtocolError when malformed."""
        return codec.decode(self.meta, self.bufs)

    def message(self) -> str:
        """The error message of a non-OK response."""
        return self.meta.decode("utf-8", "replace")


class FrameReader:
    """Reads frames from a blocking socket through one reusable receive buffer.

    Small frames are parsed many to a ``recv``; each out-of-band buffer is received with
    ``recv_into`` directly into its own array. :meth:`read` returns None at a clean EOF
    between frames and raises PeerLostError on a reset or an EOF inside a frame.
    """

    def __init__(self, sock: socket.socket, what: str) -> None:
        self.sock = sock
        self.what = what
        self.buf = bytearray(_RECV_BUF)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def _recv(self, view: memoryview) -> int:
        try:
            n = self.sock.recv_into(view)
        except OSError as exc:
            raise PeerLostError(f"connection to {self.what} failed: {exc}") from None
        return n

    def _fill(self, n: int) -> bool:
        """Make ``n`` bytes available from ``start``; False at EOF with no byte pending."""
        while self.end - self.start < n:
            if self.end == len(self.buf):  # no room left: compact, else grow (as bytes arrive)
                have = self.end - self.start
                if self.start > 0:
                    self.view[:have] = self.view[self.start:self.end]
                else:
                    grown = bytearray(min(n, 2 * len(self.buf)))
                    grown[:have] = self.view[:have]
                    self.buf, self.view = grown, memoryview(grown)
                self.start, self.end = 0, have
            k = self._recv(self.view[self.end:])
            if k == 0:
                if self.end == self.start:
                    return False
                raise PeerLostError(f"{self.what} closed the connection inside a frame")
            self.end += k
        return True

    def _into(self, arr: np.ndarray) -> None:
        n = arr.nbytes
        if n == 0:
            return
        out = arr.data.cast("B")
        have = min(n, self.end - self.start)
        out[:have] = self.view[self.start:self.start + have]
        self.start += have
        got = have
        while got < n:
            k = self._recv(out[got:])
            if k == 0:
                raise PeerLostError(f"{self.what} closed the connection inside a frame")
            got += k

    def read(self) -> Frame | None:
        """The next frame, or None at a clean EOF."""
        if self.start == self.end and len(self.buf) > 4 * _RECV_BUF:  # shrink after a big meta
            self.buf = bytearray(_RECV_BUF)
            self.view = memoryview(self.buf)
            self.start = self.end = 0
        if not self._fill(HEADER.size):
            return None
        magic, kind, status, sidlen, rid, metalen, nbufs = HEADER.unpack_from(self.buf, self.start)
        if magic != FRAME_MAGIC or kind not in (KIND_REQUEST, KIND_RESPONSE) \
                or metalen > MAX_META or nbufs > MAX_BUFS:
            raise ProtocolError(f"{self.what} sent a bad frame header (magic {magic:#x}, kind "
                                f"{kind}, meta {metalen} bytes, {nbufs} buffers)")
        self.start += HEADER.size
        body = 8 * nbufs + sidlen + metalen
        if body and not self._fill(body):
            raise PeerLostError(f"{self.what} closed the connection inside a frame")
        p = self.start
        lens = [_U64.unpack_from(self.buf, p + 8 * i)[0] for i in range(nbufs)]
        p += 8 * nbufs
        sid = bytes(self.view[p:p + sidlen]).decode("utf-8", "replace")
        p += sidlen
        meta = bytes(self.view[p:p + metalen])
        self.start = p + metalen
        bufs = []
        for n in lens:
            if n > MAX_BUFFER:
                raise ProtocolError(f"{self.what} announced a {n}-byte buffer")
            try:
                arr = np.empty(n, np.uint8)
            except MemoryError:
                raise ProtocolError(f"cannot allocate a {n}-byte buffer from {self.what}") from None
            self._into(arr)
            bufs.append(arr)
        return Frame(kind, status, rid, sid, meta, bufs)


def send_parts(sock: socket.socket, parts: list[Any]) -> None:
    """Write every part in order with ``sendmsg`` (no copy), resuming after partial writes."""
    views = [memoryview(p).cast("B") if not isinstance(p, (bytes, bytearray)) else memoryview(p)
             for p in parts]
    views = [v for v in views if v.nbytes]
    while views:
        sent = sock.sendmsg(views[:512])
        while sent:
            if sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound every blocking send (kernel SO_SNDTIMEO; receives stay blocking and untimed)."""
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, usec))


# ---------------------------------------------------------------- hello

def make_hello(lane: int, client_rank: int, token: bytes, link_id: int) -> bytes:
    """The hello a FrontEnd writes after answering the challenge on lane ``lane``."""
    return HELLO.pack(HELLO_MAGIC, VERSION, lane, client_rank, token, link_id)


def parse_hello(data: bytes) -> tuple[int, int, bytes, int]:
    """``(lane, client rank, token, link id)``; ProtocolError when it is not a hello."""
    if len(data) != HELLO.size:
        raise ProtocolError(f"pRPC hello of {len(data)} bytes, expected {HELLO.size}")
    magic, version, lane, rank, token, link_id = HELLO.unpack(data)
    if magic != HELLO_MAGIC or version != VERSION or lane not in (0, 1):
        raise ProtocolError(f"not a pRPC hello (magic {magic!r}, version {version}, lane {lane})")
    return lane, rank, token, link_id


# ---------------------------------------------------------------- control frames

def control_bytes(ctype: int, body: dict[str, Any]) -> bytes:
    """One control frame."""
    data = codec.encode_inline(body)
    return CONTROL.pack(CONTROL_MAGIC, ctype, len(data)) + data


def read_control(sock: socket.socket, deadline: net.Deadline | None,
                 what: str) -> tuple[int, dict[str, Any]]:
    """The next control frame ``(type, body)``; PeerLostError at EOF, ProtocolError if bad."""
    magic, ctype, n = CONTROL.unpack(net.recv_exact(sock, CONTROL.size, deadline, what))
    if magic != CONTROL_MAGIC or n > MAX_CONTROL:
        raise ProtocolError(f"{what} sent a bad control frame (magic {magic:#x}, {n} bytes)")
    body = codec.decode(net.recv_exact(sock, n, deadline, what)) if n else {}
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} sent a control frame that is not a dict")
    return ctype, body
