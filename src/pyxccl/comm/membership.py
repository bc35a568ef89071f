"""Communicators made from a communicator: ``split`` by color, ``shrink`` to the survivors.

A mixin of :class:`~pyxccl.comm.communicator.Communicator`. The new communicator needs no unique id
from the user: its first rank starts a root on its own bootstrap address and sends that
address to the other members over this communicator's bootstrap; the new secret is
derived from this one with HMAC, so no secret ever travels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

from . import checks as calls
from ..bootstrap import UniqueId
from ..bootstrap.root import start_root
from ..errors import Aborted, InvalidArgument, MismatchError, PyxcclError

if TYPE_CHECKING:
    from .communicator import Communicator

_TAG_SPLIT = 1 << 21  # bootstrap tags: + the split / shrink counter
_TAG_SHRINK = 1 << 22


class Membership:
    """Mixin of :class:`~pyxccl.comm.communicator.Communicator`: ``split``, ``shrink``."""

    def split(self, color: int | None, key: int = 0) -> "Communicator | None":
        """A new communicator of the ranks with the same ``color``, ordered by (key, rank).

        Collective over this communicator. ``color=None`` (or negative) takes no part and gets None.
        """
        self._check_open()
        mine = json.dumps([-1 if color is None else int(color), int(key)]).encode()
        entries = [json.loads(b) for b in self._stream.run(lambda: self._bootstrap.allgather(mine), "split")]
        self._splits += 1
        if color is None or int(color) < 0:
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(entries) if c == int(color))
        ranks = [r for _, r in members]
        return self._child(ranks, _TAG_SPLIT + self._splits, b"split")

    def shrink(self, exclude: Any) -> "Communicator":
        """A new communicator of every rank not in ``exclude``, in the same order; no new unique id needed.

        Collective over the survivors: each rank not excluded calls it with the same ranks.
        This is how to go on after a :class:`PeerLostError`: ``comm.shrink(exclude=[err.rank])``
        (lost peers need not be listed twice; list every rank that is gone). The old
        communicator is left as it is: abort or destroy it afterwards.
        """
        if self._aborted:
            raise Aborted(f"rank {self._rank}: shrink on an aborted communicator; shrink before abort()")
        if self._closed:
            raise InvalidArgument("shrink: the communicator was destroyed")
        try:
            excluded = sorted({calls.check_rank(r, self._size, "exclude") for r in exclude})
        except TypeError:
            raise InvalidArgument(f"exclude must be an iterable of ranks, got {exclude!r}") from None
        if self._rank in excluded:
            raise InvalidArgument(f"shrink: rank {self._rank} is in exclude={excluded}; excluded ranks do not call it")
        lost = sorted(set(self._health.lost) - set(excluded))  # type: ignore[union-attr]
        if lost:
            raise InvalidArgument(f"shrink: rank(s) {lost} are lost but not in exclude={excluded}")
        survivors = [r for r in range(self._size) if r not in excluded]
        self._shrinks += 1
        return self._child(survivors, _TAG_SHRINK + self._shrinks, json.dumps(excluded).encode())

    def _child(self, ranks: list[int], tag: int, agreement: bytes) -> "Communicator":
        """The communicator of ``ranks`` (ascending new rank order; this rank among them).

        Its first rank starts the new root on its own bootstrap address and sends the address
        to the others; the secret is derived from this communicator's, so it never travels.
        ``agreement`` (what every member computed, e.g. the excluded ranks) must match.
        """
        new_rank = ranks.index(self._rank)
        digest = hashlib.sha256(agreement).digest()
        secret = hmac.new(self._secret, b"pyxccl-child" + tag.to_bytes(8, "big") + digest, "sha256").digest()[:16]
        if new_rank == 0:
            host = self._bootstrap.address[0]
            port = start_root(secret, host, 0, self._timeout)
            for r in ranks[1:]:
                self._bootstrap.send(r, tag, digest + json.dumps([host, port]).encode())
        else:
            msg = self._bootstrap.recv(ranks[0], tag, timeout=self._timeout)
            if msg[:32] != digest:
                raise MismatchError(f"rank {self._rank}: rank {ranks[0]} builds a different communicator "
                                    f"(its {agreement.decode(errors='replace')!r} differs from this rank's)")
            try:
                host, port = json.loads(msg[32:])
            except ValueError:
                raise PyxcclError(f"rank {self._rank}: malformed root address from rank {ranks[0]}") from None
        return type(self)(len(ranks), UniqueId(secret, str(host), int(port)), new_rank, timeout=self._timeout)
