"""Echo server under test, started as its own process by the compliance tests.

``--engine tether`` runs ``tether.serve`` with tether's echo app (the same code as
``tether serve --app echo``) and exposes the options the CLI does not have yet
(``--max-size``, ``--open-timeout``). ``--engine websockets`` runs plain
``websockets`` with the settings tether gives it (compression off, its own
keepalive off unless ``--ping-interval`` is given): the baseline that explains
which limit fails which Autobahn case.

The message-fragment limit of websockets is process-wide (the
``WEBSOCKETS_MAX_FRAGMENTS`` environment variable, read when websockets is
imported), so tests set it in this process's environment.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def _size(text: str) -> int | None:
    return None if text == "none" else int(text)


def _seconds(text: str) -> float | None:
    return None if text == "none" else float(text)


async def _serve_websockets(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            return

    options: dict[str, Any] = {}
    if args.open_timeout is not None:
        options["open_timeout"] = args.open_timeout
    async with serve(
        echo,
        args.host,
        args.port,
        compression=args.compression,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        max_size=args.max_size,
        **options,
    ) as server:
        await server.serve_forever()


async def _serve_tether(args: argparse.Namespace) -> None:
    import tether
    from tether.asyncio.apps import echo

    heartbeat = None
    if args.ping_interval is not None:
        heartbeat = tether.Heartbeat(args.ping_interval, args.ping_timeout)
    server = tether.serve(
        echo,
        args.host,
        args.port,
        heartbeat=heartbeat,
        max_size=args.max_size,
        open_timeout=args.open_timeout,
        compression=args.compression,
        handle_signals=True,
    )
    await server.serve_forever()


def main() -> None:
    """Parse the options and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("tether", "websockets"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-size", type=_size, default=2**20, help="bytes, or 'none'")
    parser.add_argument("--open-timeout", type=_seconds, default=10.0, help="s, or 'none'")
    parser.add_argument("--ping-interval", type=_seconds, default=None, help="s, or 'none'")
    parser.add_argument("--ping-timeout", type=_seconds, default=None, help="s, or 'none'")
    parser.add_argument("--compression", choices=("deflate",), default=None)
    args = parser.parse_args()
    run = _serve_tether if args.engine == "tether" else _serve_websockets
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
