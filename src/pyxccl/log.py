"""pyxccl's logger: ``PYXCCL_DEBUG=WARN|INFO|TRACE``, lines prefixed like NCCL's.

``host:pid:tid [rank] PYXCCL INFO message``; the level comes from :mod:`pyxccl.config`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from . import config

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {"WARN": logging.WARNING, "INFO": logging.INFO, "TRACE": TRACE}

logger = logging.getLogger("pyxccl")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rank = getattr(record, "rank", None)
        where = f"{socket.gethostname()}:{os.getpid()}:{record.thread % 100000}"
        tag = f" [{rank}]" if rank is not None else ""
        return f"{where}{tag} PYXCCL {record.levelname} {record.getMessage()}"


def setup() -> None:
    """Attach the stderr handler and set the level from PYXCCL_DEBUG (idempotent)."""
    if not any(getattr(h, "_pyxccl", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        handler._pyxccl = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(_LEVELS[config.debug_level()])


def warn(msg: str, *args: object, rank: int | None = None) -> None:
    """Log at WARN."""
    logger.warning(msg, *args, extra={"rank": rank})


def info(msg: str, *args: object, rank: int | None = None) -> None:
    """Log at INFO (what init decided)."""
    logger.info(msg, *args, extra={"rank": rank})


def trace(msg: str, *args: object, rank: int | None = None) -> None:
    """Log at TRACE (every call)."""
    if logger.isEnabledFor(TRACE):
        logger.log(TRACE, msg, *args, extra={"rank": rank})


setup()
