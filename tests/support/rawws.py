"""A WebSocket server written by hand, for frame orderings no real server produces on demand.

Only what the tests need: the opening handshake (no subprotocol unless asked), and
unfragmented frames without extensions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

__all__ = ["accept_handshake", "client_handshake", "frame", "read_frame"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, *, mask: bytes | None = None) -> bytes:
    """One final frame with ``opcode`` and ``payload``: a server's, or masked with ``mask``
    (4 bytes) as a client's must be."""
    size = len(payload)
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, bit | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subprotocol: str | None = None
) -> None:
    """Send an upgrade request and read the 101 (any other answer raises)."""
    extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n".encode() if subprotocol else b""
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head[:40]!r}")


async def accept_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subprotocol: str | None = None
) -> None:
    """Read the client's upgrade request and answer 101."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n".encode() if subprotocol else b""
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
    )


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the client: (opcode, unmasked payload)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))
