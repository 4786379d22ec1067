"""A WebSocket opening handshake written by hand, to see the server's HTTP answer."""

from __future__ import annotations

import asyncio

__all__ = ["handshake_status"]


async def handshake_status(port: int, origin: str | None) -> int:
    """Send an opening handshake to 127.0.0.1:``port`` with ``origin`` (None: no header).

    Returns the HTTP status of the answer (101, 403, ...), within 5 s.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        header = f"Origin: {origin}\r\n" if origin is not None else ""
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + header.encode()
            + b"\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()
