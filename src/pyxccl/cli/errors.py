"""How the tools fail on bad input: one line ``pyxccl-<tool>: error: ...`` and exit status 2, as
argparse does for a bad option, never a traceback.

Bad input is a ``PYXCCL_*`` value the engine cannot use (:class:`~pyxccl.errors.ConfigError`) or a
bad argument (:class:`~pyxccl.errors.InvalidArgument`); every other error keeps its traceback.

    @one_line_errors("pyxccl-perf")
    def main(argv=None): ...

    check_config("pyxccl-run")      # before starting anything: the configuration, read once
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn, TypeVar

from ..errors import ConfigError, InvalidArgument

F = TypeVar("F", bound=Callable[..., Any])

#: the errors a tool reports in one line with exit status 2
BAD_INPUT = (ConfigError, InvalidArgument)


def fail(tool: str, message: object) -> NoReturn:
    """Print ``<tool>: error: <message>`` (one line) on stderr and exit with status 2."""
    text = " ".join(str(message).split())
    print(f"{tool}: error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def one_line_errors(tool: str) -> Callable[[F], F]:
    """Decorate a tool's ``main``: bad input (:data:`BAD_INPUT`) ends it with :func:`fail`."""
    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except BAD_INPUT as exc:
                fail(tool, exc)
        return run  # type: ignore[return-value]
    return wrap


def check_config(tool: str, *, algo: bool = False) -> None:
    """Read the configuration now (a bad ``PYXCCL_*`` value ends the tool with :func:`fail`, before it
    starts ranks or a benchmark); ``algo``: parse ``PYXCCL_ALGO`` too (it names algorithms, which only
    the tuner knows)."""
    from .. import config

    try:
        cfg = config.get()
        if algo and cfg.algo:
            from .. import tuner

            tuner.parse(cfg.algo)
    except BAD_INPUT as exc:
        fail(tool, exc)
