"""A raw ``websockets`` server printing JSON lines, for rigs that run in another namespace.

Usage: python py_ws_server.py [--host 127.0.0.1] [--port 0] [--echo] [--ping-interval S]
Prints (all with ``t`` = time.monotonic()): listening{port} connection{id} message{id, data}
close{id, code, rcvd, sent}. Commands on stdin: {"cmd": "close", "code": 1012, "reason": ""},
{"cmd": "send", "data": "..."}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line and flush, so the parent sees it at once."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def close_fields(ws: ServerConnection) -> dict[str, Any]:
    """What websockets knows about the closing handshake (rcvd None = no Close frame came)."""
    return {
        "code": ws.close_code,
        "reason": ws.close_reason,
        "rcvd": ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None,
        "sent": ws.protocol.close_sent.code if ws.protocol.close_sent else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--ping-interval", type=float, default=None)
    options = parser.parse_args()
    connections: dict[int, ServerConnection] = {}
    counter = iter(range(1_000_000))

    async def handler(ws: ServerConnection) -> None:
        conn_id = next(counter)
        connections[conn_id] = ws
        emit("connection", id=conn_id, path=ws.request.path if ws.request else None)
        try:
            async for message in ws:
                emit("message", id=conn_id, data=message if isinstance(message, str) else None)
                if options.echo:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            connections.pop(conn_id, None)
            emit("close", id=conn_id, **close_fields(ws))

    async with serve(
        handler, options.host, options.port, ping_interval=options.ping_interval
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        emit("listening", port=port, host=options.host)
        # Runs until SIGTERM kills it (default action: no closing handshake, which a blackholed
        # link could not complete anyway); send {"cmd": "close"} first for a clean close.
        await read_commands(connections)
        await asyncio.Event().wait()


async def read_commands(connections: dict[int, ServerConnection]) -> None:
    """Apply JSON-line commands from stdin to the live connections."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        targets = list(connections.values())
        if command["cmd"] == "close":
            for ws in targets:
                await ws.close(command.get("code", 1000), command.get("reason", ""))
        elif command["cmd"] == "send":
            for ws in targets:
                await ws.send(command["data"])
        emit("ack", cmd=command["cmd"])


if __name__ == "__main__":
    asyncio.run(main())
