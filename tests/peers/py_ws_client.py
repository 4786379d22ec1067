"""A raw ``websockets`` client printing JSON lines, for rigs that run in another namespace.

Usage: python py_ws_client.py --url ws://... [--ping-interval S] [--ping-timeout S]
       [--close-timeout S]
Prints (all with ``t`` = time.monotonic()): open{} message{data} close{code, reason, rcvd, sent,
error} where ``rcvd`` is None when no Close frame arrived (a 1006 or a heartbeat timeout).
Commands on stdin: {"cmd": "send", "data": "..."}, {"cmd": "close", "code": 1000}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line and flush, so the parent sees it at once."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def optional_float(text: str) -> float | None:
    """Parse a float; "none" disables (websockets takes None to turn keepalive off)."""
    return None if text.lower() == "none" else float(text)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ping-interval", type=optional_float, default=None)
    parser.add_argument("--ping-timeout", type=optional_float, default=None)
    # After a heartbeat timeout websockets still waits close_timeout for the TCP close; keep it
    # short so the reported close time is close to when the dead link was noticed.
    parser.add_argument("--close-timeout", type=float, default=1.0)
    options = parser.parse_args()
    async with connect(
        options.url,
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        open_timeout=5,
        close_timeout=options.close_timeout,
    ) as ws:
        emit("open")
        commands = asyncio.create_task(read_commands(ws))
        error = None
        try:
            async for message in ws:
                emit("message", data=message if isinstance(message, str) else None)
        except ConnectionClosed as exc:
            error = type(exc).__name__
        commands.cancel()
        emit(
            "close",
            code=ws.close_code,
            reason=ws.close_reason,
            rcvd=ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None,
            sent=ws.protocol.close_sent.code if ws.protocol.close_sent else None,
            error=error,
        )


async def read_commands(ws: ClientConnection) -> None:
    """Apply JSON-line commands from stdin to the connection."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if command["cmd"] == "send":
            await ws.send(command["data"])
        elif command["cmd"] == "close":
            await ws.close(command.get("code", 1000), command.get("reason", ""))
        emit("ack", cmd=command["cmd"])


if __name__ == "__main__":
    asyncio.run(main())
