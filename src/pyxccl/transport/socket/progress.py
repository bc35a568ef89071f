"""The socket transport's progress thread: every socket read and write of one transport.

One thread per :class:`~pyxccl.transport.socket.SocketTransport` multiplexes the
listening socket, connections waiting for their hello, and every connector's TCP
lanes with :mod:`selectors`. Other threads hand it work through :meth:`Progress.submit`
(a deque plus a wake-up byte on a socketpair, sent only when the thread may be asleep).
Whatever may make a connector ready (a slot received, a staging slot written, credits
returned, a connection lost) rings the owning executor's doorbell.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import deque
from typing import Any

from ... import log
from ...bootstrap import net
from ...errors import PeerLostError, TransportError
from ..doorbell import Doorbell
from .connectors import Conn, Lane, SocketRecvConnector, SocketSendConnector, drain, mismatch
from .wire import FRAME, HELLO_BYTES, MAGIC, parse_hello, tune

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_WAKE = object()
_HDR = FRAME.size
MAX_PENDING = 256
"""accepted connections that may wait for their hello at once; beyond, the oldest is dropped"""


class _Pending:
    """An accepted connection whose hello has not fully arrived; ``nonce`` is its challenge's."""

    def __init__(self, sock: socket.socket, addr: Any, deadline: float, nonce: bytes):
        self.sock, self.addr, self.deadline, self.nonce = sock, addr, deadline, nonce
        self.buf = bytearray()


class Progress:
    """The thread doing one transport's socket work."""

    def __init__(self, rank: int, bell: Doorbell, secret: bytes, bufbytes: int, hello_timeout: float):
        self.rank, self.bell, self.secret = rank, bell, secret
        self.bufbytes, self.hello_timeout = bufbytes, hello_timeout
        self.tokens: dict[bytes, SocketRecvConnector] = {}
        """receive connectors waiting for their lanes, by token (filled by setup_recv)"""
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _READ, _WAKE)
        self._cmds: deque[tuple[Any, ...]] = deque()
        self._woken = False
        self._stop = False
        self._pending: dict[socket.socket, _Pending] = {}
        self._conns: set[Conn] = set()
        self._listeners: list[socket.socket] = []
        self._thread = threading.Thread(target=self._main, name=f"pyxccl-socket-{rank}", daemon=True)
        self._thread.start()

    # other threads

    def submit(self, cmd: tuple[Any, ...]) -> None:
        """Queue ``cmd`` for the thread and wake it if it may be asleep (never blocks)."""
        self._cmds.append(cmd)
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except OSError:  # full (a wake-up is pending anyway) or closed (stopping)
                pass

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (bounded wait), close every socket, fail every connector."""
        self._stop = True
        self.submit(("stop",))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for conn in list(self._conns):
            self._fail(conn, TransportError(f"socket: {conn.who}: the transport was closed"))
        while self._cmds:  # work the thread never took: sockets nobody else will close
            cmd = self._cmds.popleft()
            if cmd[0] == "attach":
                for sock in cmd[2]:
                    sock.close()
            elif cmd[0] == "listen":
                cmd[1].close()
        for pending in list(self._pending.values()):
            pending.sock.close()
        for sock in self._listeners:
            sock.close()
        self._pending.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # the thread

    def _main(self) -> None:
        try:
            while not self._stop:
                timeout = 0.25 if self._pending else None
                for key, mask in self._sel.select(timeout):
                    self._dispatch(key.data, mask)
                self._run_commands()
                if self._pending:
                    self._sweep()
        except Exception as exc:  # noqa: BLE001 - the thread must not die silently
            if self._stop:
                return
            log.warn("socket: progress thread failed: %r", exc, rank=self.rank)
            for conn in list(self._conns):
                self._fail(conn, TransportError(f"socket: progress thread failed: {exc!r}"))

    def _dispatch(self, data: Any, mask: int) -> None:
        if data is _WAKE:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
            self._woken = False  # after draining: commands queued from here on send a new byte
        elif isinstance(data, Lane):
            if data.closed:
                return
            conn = data.conn
            try:
                if isinstance(conn, SocketRecvConnector):
                    if mask & _READ:
                        self._read_frames(data, conn)
                    if mask & _WRITE and not data.closed:
                        self._write_credits(conn)
                else:
                    if mask & _WRITE:
                        self._write_frames(data, conn)
                    if mask & _READ and not data.closed:
                        self._read_credits(data, conn)
            except ValueError as exc:
                log.warn("socket: %s: protocol error: %s", conn.who, exc, rank=self.rank)
                self._fail(conn, TransportError(f"socket: {conn.who}: protocol error: {exc}"))
            except Exception as exc:  # noqa: BLE001 - a bug fails this connector, not the thread
                log.warn("socket: %s: internal error: %r", conn.who, exc, rank=self.rank)
                self._fail(conn, TransportError(f"socket: {conn.who}: internal error: {exc!r}"))
        elif isinstance(data, _Pending):
            self._read_hello(data)
        else:  # a listening socket
            self._accept(data)

    def _run_commands(self) -> None:
        cmds = self._cmds
        while cmds:
            cmd = cmds.popleft()
            op = cmd[0]
            if op == "stop":
                return
            if op == "listen":
                self._listeners.append(cmd[1])
                self._sel.register(cmd[1], _READ, cmd[1])
                continue
            conn = cmd[1]
            try:
                if op == "send":
                    if conn.failure is None:
                        self._queue_slot(conn, cmd[2], cmd[3])
                elif op == "credit":
                    if conn.failure is None:
                        self._write_credits(conn)
                elif op == "attach":
                    self._attach_sender(conn, cmd[2])
                elif op == "close":
                    self._fail(conn, TransportError(f"socket: {conn.who}: the connector was closed"))
            except Exception as exc:  # noqa: BLE001 - a bug fails this connector, not the thread
                log.warn("socket: %s: internal error: %r", conn.who, exc, rank=self.rank)
                self._fail(conn, TransportError(f"socket: {conn.who}: internal error: {exc!r}"))

    # connection setup

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warn("socket: accept failed: %s", exc, rank=self.rank)
                return
            sock.setblocking(False)
            try:
                tune(sock, self.bufbytes)
            except OSError:
                pass
            challenge, nonce = net.new_challenge()
            try:  # 20 bytes into a fresh socket's empty buffer: never blocks
                if sock.send(challenge) != len(challenge):
                    raise OSError("short write")
            except OSError as exc:
                log.warn("socket: dropped a connection from %s: cannot send the challenge: %s",
                         addr, exc, rank=self.rank)
                sock.close()
                continue
            if len(self._pending) >= MAX_PENDING:  # a flood: the oldest waiter goes first
                self._drop(next(iter(self._pending.values())),
                           f"more than {MAX_PENDING} connections waiting for their hello")
            pending = _Pending(sock, addr, time.monotonic() + self.hello_timeout, nonce)
            self._pending[sock] = pending
            self._sel.register(sock, _READ, pending)

    def _drop(self, pending: _Pending, why: str) -> None:
        log.warn("socket: dropped a connection from %s: %s", pending.addr, why, rank=self.rank)
        self._pending.pop(pending.sock, None)
        self._sel.unregister(pending.sock)
        pending.sock.close()

    def _sweep(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline < now]:
            self._drop(pending, f"no hello within {self.hello_timeout:g} s")

    def _read_hello(self, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(HELLO_BYTES - len(pending.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self._drop(pending, f"error before the hello: {exc}")
        if not data:
            return self._drop(pending, "closed before a complete hello")
        pending.buf += data
        if pending.buf[:len(MAGIC)] != MAGIC[:len(pending.buf)]:
            return self._drop(pending, f"not a pyxccl connection (starts with {bytes(pending.buf[:8])!r})")
        if len(pending.buf) < HELLO_BYTES:
            return
        try:
            hello = parse_hello(bytes(pending.buf), self.secret, pending.nonce)
        except ValueError as exc:
            return self._drop(pending, str(exc))
        conn = self.tokens.get(hello.token)
        if conn is None:
            return self._drop(pending, "unknown token")
        why = mismatch(conn, hello.slot_bytes, hello.nslots, hello.nlanes)
        if why is not None:
            self._drop(pending, why)
            return self._fail(conn, TransportError(f"socket: {why}"))
        if not conn.nlanes:
            conn.nlanes = hello.nlanes
            conn.lanes = [None] * hello.nlanes
        if conn.lanes[hello.lane] is not None:
            return self._drop(pending, f"lane {hello.lane} of {conn.who} is already connected")
        self._pending.pop(pending.sock)
        self._sel.unregister(pending.sock)
        lane = Lane(pending.sock, conn, hello.lane)
        conn.lanes[hello.lane] = lane
        conn.bound += 1
        if conn.bound == conn.nlanes:
            self.tokens.pop(hello.token, None)
        self._conns.add(conn)
        self._sel.register(lane.sock, _READ, lane)

    def _attach_sender(self, conn: SocketSendConnector, socks: list[socket.socket]) -> None:
        conn.lanes = [Lane(sock, conn, j) for j, sock in enumerate(socks)]
        self._conns.add(conn)
        for lane in conn.lanes:
            assert lane is not None
            self._sel.register(lane.sock, _READ, lane)

    # data

    def _set_write(self, lane: Lane, want: bool) -> None:
        events = _READ | _WRITE if want else _READ
        if lane.events != events and not lane.closed:
            lane.events = events
            self._sel.modify(lane.sock, events, lane)

    def _queue_slot(self, conn: SocketSendConnector, seq: int, done: int) -> None:
        """Queue slot ``seq``'s frames (``done`` bytes of it already written by the executor)."""
        header = FRAME.pack(seq, conn.sizes[seq % conn.nslots])
        touched = []
        for j, body in conn.frames(seq, done > 0):
            lane = conn.lanes[j]
            assert lane is not None
            lane.queue.append([seq, header, body, done])
            touched.append(lane)
        for lane in touched:
            if not lane.closed and lane.events == _READ:  # else already waiting to write
                self._write_frames(lane, conn)

    def _write_frames(self, lane: Lane, conn: SocketSendConnector) -> None:
        queue, sock = lane.queue, lane.sock
        freed = False
        while queue:
            job = queue[0]
            seq, header, body, off = job
            try:
                if off < _HDR:
                    n = sock.sendmsg([memoryview(header)[off:], body]) if len(body) else sock.send(header[off:])
                else:
                    n = sock.send(body[off - _HDR:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                return self._lost(conn, exc)
            off += n
            if off < _HDR + len(body):
                job[3] = off
                continue
            queue.popleft()
            freed = conn.frame_sent(seq) or freed
        self._set_write(lane, bool(queue))
        if freed:
            self.bell.ring()

    def _read_credits(self, lane: Lane, conn: SocketSendConnector) -> None:
        try:
            data = lane.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self._lost(conn, exc)
        if not data:
            return self._lost(conn, None)
        if lane.index:
            raise ValueError(f"unexpected bytes from the receiver on lane {lane.index}")
        conn.add_credits(sum(data))
        self.bell.ring()

    def _write_credits(self, conn: SocketRecvConnector) -> None:
        lane = conn.lanes[0]
        if lane is None or lane.closed:
            return
        while conn.paid < conn.owed:
            k = min(255, conn.owed - conn.paid)
            try:
                if lane.sock.send(bytes((k,))) == 1:
                    conn.paid += k
            except (BlockingIOError, InterruptedError):
                return self._set_write(lane, True)
            except OSError as exc:
                return self._lost(conn, exc)
        self._set_write(lane, False)

    def _read_frames(self, lane: Lane, conn: SocketRecvConnector) -> None:
        sock = lane.sock
        ready = False
        try:
            while True:
                view = lane.view
                try:
                    if view is None:
                        n = sock.recv_into(lane.hdr_view[lane.hdr_got:])
                    else:
                        n = sock.recv_into(view[lane.got:])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    return self._lost(conn, exc)
                if n == 0:
                    return self._lost(conn, None)
                if view is None:
                    lane.hdr_got += n
                    if lane.hdr_got < _HDR:
                        continue
                    lane.hdr_got = 0
                    seq, nbytes = FRAME.unpack(lane.hdr)
                    chunk = conn.begin_frame(lane.index, seq, nbytes)
                    if len(chunk):
                        lane.view, lane.got, lane.seq = chunk, 0, seq
                    elif conn.frame_done(seq):
                        ready = True
                else:
                    lane.got += n
                    if lane.got == len(view):
                        lane.view = None
                        if conn.frame_done(lane.seq):
                            ready = True
        finally:
            if ready:
                self.bell.ring()

    # failures

    def _lost(self, conn: Conn, exc: BaseException | None) -> None:
        what = "closed the connection" if exc is None else f"connection failed ({exc})"
        err = PeerLostError(f"socket: {conn.who}: the peer {what}", rank=conn.peer)
        log.info("%s", err, rank=self.rank)
        self._fail(conn, err)

    def _fail(self, conn: Conn, err: Exception) -> None:
        """Mark ``conn`` failed (first reason wins), close its sockets, ring the doorbell."""
        if conn.failure is None:
            conn.failure = err
        for lane in conn.lanes:
            if lane is None or lane.closed:
                continue
            try:
                self._sel.unregister(lane.sock)
            except (KeyError, ValueError, RuntimeError):
                pass
            lane.queue.clear()
            drain(lane.sock)  # so that our close is a FIN, not a reset that may discard data
            with conn.lock:  # the executor's credit send never meets a closed (or reused) descriptor
                lane.closed = True
                lane.sock.close()
        self._conns.discard(conn)
        for token, waiting in list(self.tokens.items()):
            if waiting is conn:
                del self.tokens[token]
        self.bell.ring()
