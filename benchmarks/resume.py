"""Scenario ``resume``: time from reconnect to replay complete, 1,000 buffered messages per store.

Needs tether.v1 end to end: ``tether.serve(..., store=...)`` and ``tether.connect``
negotiating the ``tether.v1`` subprotocol and resuming a session. The sans-I/O
core (``tether.resume``, ``tether.stores``) is not enough: the scenario checks that
a real connection negotiates ``tether.v1`` and refuses to run (exit status 1, no
figures) until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .common import Progress, Unavailable, tether_has

SUBPROTOCOL = "tether.v1"


async def _negotiated_subprotocol() -> str | None:
    """Serve with the memory store on a free loopback port, connect, return the subprotocol."""
    import tether

    async def handler(session: Any) -> None:
        async for _ in session:
            pass

    serve: Any = tether.serve  # type: ignore[attr-defined]
    connect: Any = tether.connect  # type: ignore[attr-defined]
    try:
        server = serve(handler, "127.0.0.1", 0, store="memory")
    except TypeError as exc:
        # No store= parameter: resumption is not in the asyncio adapter yet.
        raise Unavailable(
            f"tether.serve(store='memory') is refused ({exc}): session resumption is not "
            "wired into the asyncio adapter yet, so there is nothing to measure"
        ) from None
    await server.start()
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/") as conn:
            return conn.subprotocol  # type: ignore[no-any-return]
    finally:
        with contextlib.suppress(Exception):
            await server.shutdown(1001, drain_window=0.0)


def run(*, quick: bool, progress: Progress) -> tuple[dict[str, Any], str, bool]:
    if not (tether_has("connect") and tether_has("serve")):
        raise Unavailable(
            "tether.connect / tether.serve (the asyncio adapter) are not on this branch; "
            "without them tether.v1 cannot be resumed over a socket"
        )
    progress.update("resume: checking that tether.connect and tether.serve negotiate tether.v1")
    subprotocol = asyncio.run(asyncio.wait_for(_negotiated_subprotocol(), 30))
    progress.done()
    if subprotocol != SUBPROTOCOL:
        raise Unavailable(
            f"tether.serve(store='memory') and tether.connect negotiated {subprotocol!r}, "
            f"not {SUBPROTOCOL!r}: session resumption is not wired into the asyncio adapter "
            "yet, so there is nothing to measure"
        )
    raise Unavailable(
        "tether.v1 is negotiated, but this benchmark's replay measurement has not been "
        "written against it yet: no figures"
    )
