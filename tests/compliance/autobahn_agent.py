"""The client side of the Autobahn runs: drive every case a fuzzingserver serves.

The protocol (Autobahn|Testsuite's fuzzingserver, served here by ``kosoku``):
fetch ``/getCaseCount``, then for each case open ``/runCase?case=N&agent=NAME``
and echo every message until the server closes, then open ``/updateReports``.
The case connections are made by the client under test; the two control
connections are plumbing and use plain websockets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

#: Runs one case: connect to the URL, echo every message until the connection closes.
CaseRunner = Callable[[str], Awaitable[None]]


async def drive(base_url: str, agent: str, run_case: CaseRunner) -> int:
    """Run every case the fuzzingserver at ``base_url`` offers; return how many."""
    async with ws_connect(f"{base_url}/getCaseCount", compression=None) as control:
        count = int(await control.recv())
    for case in range(1, count + 1):
        await run_case(f"{base_url}/runCase?case={case}&agent={agent}")
    async with ws_connect(f"{base_url}/updateReports?agent={agent}", compression=None):
        pass
    return count


def websockets_runner(*, max_size: int | None) -> CaseRunner:
    """Echo with plain websockets, configured as tether configures it."""

    async def run_case(url: str) -> None:
        # The case may fail the connection on purpose; how it ended is kosoku's verdict.
        with contextlib.suppress(WsConnectionClosed):
            async with ws_connect(
                url, compression=None, ping_interval=None, max_size=max_size
            ) as connection:
                async for message in connection:
                    await connection.send(message)

    return run_case


def tether_runner(*, max_size: int | None) -> CaseRunner:
    """Echo with ``tether.connect`` in plain mode, one connection per case.

    Reconnecting is disabled: every close code is final, and a failed connect
    falls under the 1006 row, final too. A case is one connection; a reconnect
    would be counted against the next case.
    tether's heartbeat is off because some cases check that no unexpected frame
    (a ping) arrives.
    """
    import tether

    never_reconnect = tether.ReconnectPolicy({(0, 65535): tether.Rule.final()})

    async def run_case(url: str) -> None:
        with contextlib.suppress(tether.ConnectionClosed):
            async with tether.connect(  # type: ignore[attr-defined]
                url,
                policy=never_reconnect,
                heartbeat=None,
                max_size=max_size,
            ) as connection:
                async for message in connection:
                    await connection.send(message)

    return run_case
