"""A tiny ASGI app for uvicorn: WebSocket echo on any path, ``GET /healthz`` answers 200.

Run with ``python -m uvicorn tests.peers.uvicorn_app:app`` (or ``--app-dir tests/peers
uvicorn_app:app``). On SIGTERM uvicorn closes open WebSockets with 1012 (Service Restart), which
is what makes it a real 1012 peer for tether's tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo every WebSocket message back; answer HTTP with 200 on /healthz, 404 elsewhere."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        ok = scope["path"] == "/healthz"
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ok else 404,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok\n" if ok else b"not found\n"})
    elif scope["type"] == "websocket":
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                if message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": message.get("bytes")})
            elif message["type"] == "websocket.disconnect":
                return
