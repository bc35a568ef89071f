"""This process's default node: :func:`init` creates it, :func:`get_service` returns it.

The package (``pyxccl.rpc.init``, ``create_server``, ...) and the accumulators (when
given no service) use it.
"""

from __future__ import annotations

import threading
from typing import Any

from .dealer import ClientDealer, ServerDealer
from .service import RpcService

_default: RpcService | None = None
_default_lock = threading.Lock()


def init(master: str | tuple[str, int] | None = None, *, secret: bytes = b"",
         timeout: float | None = None) -> RpcService:
    """This process's node (created on the first call; later calls return it)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = RpcService(master, secret=secret, timeout=timeout)
        return _default


def get_service() -> RpcService:
    """This process's node (:func:`init` with the defaults if there is none yet)."""
    return _default if _default is not None else init()


def create_server(service_id: str | int) -> ServerDealer:
    """A server of ``service_id`` on this process's node."""
    return get_service().create_server(service_id)


def create_client(service_id: str | int, **kwargs: Any) -> ClientDealer:
    """A client of ``service_id`` (keywords: timeout, idempotent, policy)."""
    return get_service().create_client(service_id, **kwargs)


def shutdown() -> None:
    """Close this process's node, if any."""
    global _default
    with _default_lock:
        svc, _default = _default, None
    if svc is not None:
        svc.close()


__all__ = ["create_client", "create_server", "get_service", "init", "shutdown"]
