"""``--loop``: the event loop a long-running command (serve, connect) runs on.

tether itself runs on any asyncio event loop; the library leaves the choice to the
application. The commands own their process, so they offer it as an option:

* ``asyncio`` (default): the standard library's loop.
* ``uvloop``: libuv's loop (the optional ``uvloop`` package, ``pip install
  'tether[uvloop]'``; not on Windows). Its transports and accept path are C: a
  tether.v1 reconnection costs 27 % fewer instructions on the server and 29 % fewer
  on the client. A 10,000-client restart storm on two overloaded cores did not end
  sooner for it (docs/benchmarks-history.md, seventeenth session).
* ``auto``: uvloop when it is installed, else asyncio.

A handover's replacement is started with the same arguments, so it runs on the
same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..exceptions import ConfigurationError

__all__ = ["LOOPS", "add_loop_option", "resolve_loop", "run_on"]

LOOPS = ("asyncio", "uvloop", "auto")

_T = TypeVar("_T")


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--loop`` to a command's parser."""
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="event loop: asyncio (the standard library's, default), uvloop (needs the uvloop"
        " package: pip install 'tether[uvloop]'; fewer instructions per connection), or auto"
        " (uvloop when installed)",
    )


def resolve_loop(name: str) -> str:
    """The loop ``--loop NAME`` means here: ``asyncio`` or ``uvloop``.

    Raises ConfigurationError when uvloop is asked for by name and cannot be
    imported, so the command refuses at once (exit status 2) instead of serving on
    another loop than the one asked for.
    """
    if name == "asyncio":
        return "asyncio"
    if name not in LOOPS:
        raise ConfigurationError(f"--loop must be one of {', '.join(LOOPS)}, not {name!r}")
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        if name == "auto":
            return "asyncio"
        raise ConfigurationError(
            f"--loop uvloop needs the uvloop package, which cannot be imported here ({exc});"
            " install it with: pip install 'tether[uvloop]' (not available on Windows)"
        ) from None
    return "uvloop"


def run_on(loop: str, main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to completion on a new loop of kind ``loop`` (from :func:`resolve_loop`).

    Like :func:`asyncio.run` (uvloop's ``run`` is its counterpart): the loop is
    closed afterwards, and Ctrl-C cancels ``main`` and raises KeyboardInterrupt.
    """
    if loop == "uvloop":
        uvloop: Any = importlib.import_module("uvloop")
        result: _T = uvloop.run(main)
        return result
    return asyncio.run(main)
