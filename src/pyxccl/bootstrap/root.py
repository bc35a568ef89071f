"""The root rendezvous (NCCL's ``bootstrapRoot``), run in a daemon thread of the uid's creator.

Protocol, per rank connection (all integers big-endian):

1. root → rank: challenge (``PXCH`` + 16-byte nonce); rank → root: HMAC-SHA256(secret,
   ``pyxccl-root`` + nonce) (see :mod:`.net`). A wrong answer or garbage is logged at WARN
   and dropped; it does not disturb the other ranks.
2. rank → root: hello ``!iiB`` (rank, nranks, address length) + packed ring listen address.
   The first valid hello fixes ``nranks``; a hello that disagrees, repeats a rank or is out
   of range gets an error frame and is dropped.
3. once all ``nranks`` ranks arrived: root → each rank: ``0`` + length byte + packed address
   of rank+1 (its ring successor); then the root closes everything and its thread ends.
   Error frames are ``status`` (1 mismatch, 2 timeout) + ``!H`` length + UTF-8 message.

While it waits the root WARNs (:mod:`.patience`: after 10 s, every 10 s for a minute, then every
minute) naming the ranks that have not joined and where they must connect; at its deadline the
connected ranks get a timeout frame naming the missing ranks (only those: the root knows who
registered).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from .. import log
from ..errors import CollectiveTimeout, MismatchError, PeerLostError, TransportError
from . import net
from .patience import Patience

ROOT_LABEL = b"pyxccl-root"
HELLO = struct.Struct("!iiB")
STATUS_OK, STATUS_MISMATCH, STATUS_TIMEOUT = 0, 1, 2
MAX_NRANKS = 1 << 20
_HANDSHAKE_SECONDS = 10.0
_LOCAL_GRACE = 2.0  # seconds a rank waits past its deadline for the answer of a root of its process
#: the roots this process serves, by secret: a rank waiting on one leaves the naming to it
_LOCAL_ROOTS: "dict[bytes, _Root]" = {}


def error_frame(status: int, message: str) -> bytes:
    """An error reply: status byte, ``!H`` length, UTF-8 message (truncated to 1 KiB)."""
    body = message.encode("utf-8", "replace")[:1024]
    return bytes([status]) + struct.pack("!H", len(body)) + body


class _Root:
    """State of one root rendezvous."""

    def __init__(self, secret: bytes, lsock: socket.socket, timeout: float, joining: str = "") -> None:
        self.secret = secret
        self.joining = joining
        self.timeout = timeout
        self.deadline = net.Deadline(timeout)
        self.lock = threading.Condition()
        self.nranks: int | None = None
        self.peers: dict[int, tuple[socket.socket, bytes]] = {}
        self.over = False
        host, port = lsock.getsockname()[:2]
        self.where = net.fmt_addr(host, port)
        self.listener = net.Listener(lsock, self.handshake, "pyxccl-root")

    # ------------------------------------------------------------ per connection
    def handshake(self, conn: socket.socket, peer: str) -> None:
        """Authenticate and read one hello; register the rank or reply with an error."""
        keep = False
        try:
            dl = net.Deadline(min(_HANDSHAKE_SECONDS, max(0.05, self.deadline.remaining())))
            if not net.auth_accept(conn, self.secret, ROOT_LABEL, dl, f"connection from {peer}"):
                log.warn("bootstrap root %s: connection from %s failed authentication "
                         "(wrong unique id secret); dropped", self.where, peer)
                return
            rank, nranks, alen = HELLO.unpack(net.recv_exact(conn, HELLO.size, dl, peer))
            raw = bytes(net.recv_exact(conn, alen, dl, peer))
            try:
                host, port, end = net.unpack_addr(raw)
                if end != alen:
                    raise ValueError("trailing bytes")
            except ValueError as exc:
                log.warn("bootstrap root %s: bad address in hello from %s: %s", self.where, peer,
                         exc)
                return
            keep = self.register(conn, rank, nranks, raw, f"{peer} ({net.fmt_addr(host, port)})")
        except (PeerLostError, CollectiveTimeout, OSError) as exc:
            log.warn("bootstrap root %s: dropped connection from %s: %s", self.where, peer, exc)
        finally:
            if not keep:
                net.close_quietly(conn)

    def register(self, conn: socket.socket, rank: int, nranks: int, addr: bytes, who: str) -> bool:
        """Check one hello; True when the rank was registered (the connection is kept)."""
        with self.lock:
            problem = None
            if self.over:
                problem = "the rendezvous of this unique id is already over"
            elif not 0 < nranks <= MAX_NRANKS:
                problem = f"nranks={nranks} is out of range 1..{MAX_NRANKS}"
            elif self.nranks is not None and nranks != self.nranks:
                problem = f"rank {rank} says nranks={nranks} but other ranks said {self.nranks}"
            elif not 0 <= rank < nranks:
                problem = f"rank {rank} is out of range 0..{nranks - 1}"
            elif rank in self.peers:
                problem = f"rank {rank} joined twice (second time from {who})"
            if problem is None:
                self.listener.keep()  # before anyone can see the rendezvous complete
                self.nranks = nranks
                self.peers[rank] = (conn, addr)
                log.trace("bootstrap root %s: rank %d/%d arrived from %s", self.where, rank,
                          nranks, who)
                if len(self.peers) == nranks:
                    self.lock.notify_all()
                return True
        log.warn("bootstrap root %s: rejected hello from %s: %s", self.where, who, problem)
        with contextlib.suppress(OSError):
            conn.sendall(error_frame(STATUS_MISMATCH, problem))
        return False

    # ------------------------------------------------------------ main loop
    def complete(self) -> bool:
        """Whether every rank arrived (call with the lock held)."""
        return self.nranks is not None and len(self.peers) == self.nranks

    def missing(self) -> str:
        """The ranks not registered yet, for messages: ``[2, 5] of 8``."""
        with self.lock:
            nranks, joined = self.nranks, sorted(self.peers)
        if nranks is None:
            return "every rank (none has connected yet)"
        missing = sorted(set(range(nranks)) - set(joined))
        shown = ", ".join(map(str, missing[:16])) + (" ..." if len(missing) > 16 else "")
        return f"ranks [{shown}] of {nranks}"

    def waiting(self, elapsed: float) -> str:
        """The WARN line of a wait that lasts (see :mod:`.patience`)."""
        with self.lock:
            joined = sorted(self.peers)
        some = ", ".join(map(str, joined[:16])) + (" ..." if len(joined) > 16 else "")
        also = f" ({self.joining})" if self.joining else ""
        return (f"bootstrap root {self.where}: after {elapsed:.0f} s still waiting for {self.missing()} "
                f"to join (joined: {some or 'none'}); each missing rank must be started and connect to "
                f"{self.where} with this unique id{also}; giving up in {self.deadline.remaining():.0f} s")

    def run(self) -> None:
        """Wait until every rank arrived or the deadline passed, then answer everyone."""
        try:
            with Patience(self.waiting, name="pyxccl-root-patience"), self.lock:
                self.lock.wait_for(self.complete, self.deadline.remaining())
        finally:
            self.listener.close()
            with self.lock:
                self.over = True
                peers = dict(self.peers)
                nranks = self.nranks
            try:
                self.finish(peers, nranks)
            finally:
                _LOCAL_ROOTS.pop(self.secret, None)

    def finish(self, peers: dict[int, tuple[socket.socket, bytes]], nranks: int | None) -> None:
        """Send every rank its successor's address, or a timeout frame; close."""
        complete = nranks is not None and len(peers) == nranks
        if complete:
            assert nranks is not None
            log.info("bootstrap root %s: all %d ranks arrived", self.where, nranks)
        else:
            also = f" ({self.joining})" if self.joining else ""
            msg = (f"bootstrap root {self.where} timed out after {self.timeout:g}s waiting for "
                   f"{self.missing()}: they never connected to {self.where}{also}; start every rank "
                   f"with the same unique id")
            log.warn("%s", msg)
        # rank 0 last: it usually runs in this process, which may exit as soon as rank 0 has its
        # answer (a timeout raised), before this daemon thread answered the others
        for rank, (conn, _) in sorted(peers.items(), key=lambda item: (item[0] == 0, item[0])):
            try:
                conn.settimeout(5.0)
                if complete:
                    assert nranks is not None
                    nxt = peers[(rank + 1) % nranks][1]
                    conn.sendall(bytes([STATUS_OK, len(nxt)]) + nxt)
                else:
                    conn.sendall(error_frame(STATUS_TIMEOUT, msg))
            except OSError as exc:
                log.warn("bootstrap root %s: could not answer rank %d: %s", self.where, rank, exc)
            net.close_quietly(conn, socket.SHUT_WR)


def start_root(secret: bytes, host: str, port: int, timeout: float, joining: str = "") -> int:
    """Listen on ``host:port`` and serve one rendezvous in a daemon thread; return the port.

    ``joining`` tells, in its WARN lines, how the ranks get the unique id (e.g. the launcher's store).
    """
    lsock = net.listen(host, port)
    root = _Root(secret, lsock, timeout, joining)
    _LOCAL_ROOTS[secret] = root
    threading.Thread(target=root.run, name="pyxccl-root-wait", daemon=True).start()
    return int(lsock.getsockname()[1])


def rendezvous(secret: bytes, root_host: str, root_port: int, rank: int, nranks: int,
               my_addr: bytes, deadline: net.Deadline) -> tuple[str, int]:
    """Rank side: tell the root who we are; return the ring successor's ``(host, port)``."""
    what = f"bootstrap root {net.fmt_addr(root_host, root_port)}"
    stage = ["connect to"]

    def waiting(elapsed: float) -> str | None:
        if secret in _LOCAL_ROOTS:
            return None  # the root of this process names the missing ranks
        if stage[0] == "connect to":
            return (f"rank {rank}: after {elapsed:.0f} s still trying to connect to {what} (is the process that "
                    f"created the unique id running, and is that address reachable from here?); giving up in "
                    f"{deadline.remaining():.0f} s")
        return (f"rank {rank}: after {elapsed:.0f} s still waiting for {what} to hear from all {nranks} ranks "
                f"(this rank joined; the root's process, rank 0 under a launcher, names the missing ones); "
                f"giving up in {deadline.remaining():.0f} s")

    with Patience(waiting, rank=rank, name="pyxccl-join-patience"):
        try:
            sock = net.connect(root_host, root_port, deadline, what)
        except CollectiveTimeout as exc:
            raise CollectiveTimeout(f"rank {rank}: {exc}; is the process that created the unique id "
                                    f"(rank 0 under a launcher) running?") from None
        stage[0] = "hear from"
        return _hello(sock, secret, rank, nranks, my_addr, deadline, what)


def _hello(sock: socket.socket, secret: bytes, rank: int, nranks: int, my_addr: bytes,
           deadline: net.Deadline, what: str) -> tuple[str, int]:
    """Authenticate, say hello, read the root's answer (see the module docstring); closes ``sock``.

    The root's timeout frame names the missing ranks; a wait of this rank that passes its own
    deadline first names them too when the root runs in this process."""
    seconds = deadline.seconds
    try:
        mac = net.auth_connect(sock, secret, ROOT_LABEL, deadline, what)
        sock.settimeout(max(0.001, deadline.remaining()))
        sock.sendall(mac + HELLO.pack(rank, nranks, len(my_addr)) + my_addr)
        if secret in _LOCAL_ROOTS:  # its answer names the missing ranks: let it come if it is a little late
            deadline = net.Deadline(deadline.remaining() + _LOCAL_GRACE)
        status = net.recv_exact(sock, 1, deadline, what)[0]
        if status == STATUS_OK:
            n = net.recv_exact(sock, 1, deadline, what)[0]
            raw = bytes(net.recv_exact(sock, n, deadline, what))
            try:
                host, port, _ = net.unpack_addr(raw)
            except ValueError as exc:
                raise TransportError(f"{what} sent a bad address: {exc}") from None
            return host, port
        (n,) = struct.unpack("!H", net.recv_exact(sock, 2, deadline, what))
        msg = bytes(net.recv_exact(sock, n, deadline, what)).decode("utf-8", "replace")
    except CollectiveTimeout:
        root = _LOCAL_ROOTS.get(secret)
        who = (f": it still waits for {root.missing()}" if root is not None else
               " (the root's process, rank 0 under a launcher, names the missing ones)")
        raise CollectiveTimeout(f"rank {rank}: timed out after {seconds:g}s waiting "
                                f"for {what} to hear from all {nranks} ranks{who}") from None
    except PeerLostError as exc:
        raise TransportError(f"rank {rank}: {exc} before answering (wrong unique id "
                             "secret, or the rendezvous is over?)") from None
    finally:
        net.close_quietly(sock)
    if status == STATUS_TIMEOUT:
        raise CollectiveTimeout(f"rank {rank}: {msg}")
    raise MismatchError(f"rank {rank}: {what} rejected this rank: {msg}")
