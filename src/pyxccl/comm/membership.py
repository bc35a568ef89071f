"""Communicators made from a communicator: ``split`` by color, ``shrink`` to the survivors.

These functions decide who the new communicator's members are and give each member the
new communicator's :class:`~pyxccl.bootstrap.UniqueId`; the Communicator builds it. No
unique id comes from the user: the new communicator's first rank starts a root on its
own bootstrap address and sends that address to the other members over this
communicator's bootstrap; the new secret is derived from this one with HMAC, so no
secret ever travels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from ..bootstrap import UniqueId
from ..bootstrap.root import start_root
from ..errors import Aborted, InvalidArgument, MismatchError, PyxcclError
from . import checks
from .context import CommContext

TAG_SPLIT = 1 << 21  # bootstrap tags: + the split / shrink counter
TAG_SHRINK = 1 << 22


def split_members(ctx: CommContext, color: int | None, key: int) -> list[int] | None:
    """The ranks of this rank's ``color`` ordered by (key, rank), or None for ``color=None`` (or
    negative). Collective over the communicator (an allgather on its call queue)."""
    mine = json.dumps([-1 if color is None else int(color), int(key)]).encode()
    bootstrap = ctx.bootstrap
    entries = [json.loads(b) for b in ctx.call_queue.run(lambda: bootstrap.allgather(mine), "split")]
    if color is None or int(color) < 0:
        return None
    return [r for _, r in sorted((k, r) for r, (c, k) in enumerate(entries) if c == int(color))]


def shrink_members(ctx: CommContext, exclude: Any) -> tuple[list[int], list[int]]:
    """(survivors, excluded ranks) of ``shrink(exclude)``, checked: this rank is not excluded and every
    lost rank is."""
    rank, size = ctx.rank, ctx.size
    if ctx.aborted:
        raise Aborted(f"rank {rank}: shrink on an aborted communicator; shrink before abort()")
    if ctx.closed:
        raise InvalidArgument("shrink: the communicator was destroyed")
    try:
        excluded = sorted({checks.check_rank(r, size, "exclude") for r in exclude})
    except TypeError:
        raise InvalidArgument(f"exclude must be an iterable of ranks, got {exclude!r}") from None
    if rank in excluded:
        raise InvalidArgument(f"shrink: rank {rank} is in exclude={excluded}; excluded ranks do not call it")
    lost = sorted(set(ctx.lost) - set(excluded))
    if lost:
        raise InvalidArgument(f"shrink: rank(s) {lost} are lost but not in exclude={excluded}")
    return [r for r in range(size) if r not in excluded], excluded


def child_uid(ctx: CommContext, secret: bytes, ranks: list[int], tag: int, agreement: bytes) -> UniqueId:
    """The unique id of the communicator of ``ranks`` (ascending new rank order; this rank among them).

    Its first rank starts the new root on its own bootstrap address and sends the address
    to the others under bootstrap ``tag``; the secret is derived from ``secret`` (this
    communicator's), so it never travels. ``agreement`` (what every member computed, e.g.
    the excluded ranks) must match: MismatchError otherwise.
    """
    rank, bootstrap = ctx.rank, ctx.bootstrap
    digest = hashlib.sha256(agreement).digest()
    new_secret = hmac.new(secret, b"pyxccl-child" + tag.to_bytes(8, "big") + digest, "sha256").digest()[:16]
    if ranks.index(rank) == 0:
        host = bootstrap.address[0]
        port = start_root(new_secret, host, 0, ctx.timeout)
        for r in ranks[1:]:
            bootstrap.send(r, tag, digest + json.dumps([host, port]).encode())
    else:
        msg = bootstrap.recv(ranks[0], tag, timeout=ctx.timeout)
        if msg[:32] != digest:
            raise MismatchError(f"rank {rank}: rank {ranks[0]} builds a different communicator "
                                f"(its {agreement.decode(errors='replace')!r} differs from this rank's)")
        try:
            host, port = json.loads(msg[32:])
        except ValueError:
            raise PyxcclError(f"rank {rank}: malformed root address from rank {ranks[0]}") from None
    return UniqueId(new_secret, str(host), int(port))
