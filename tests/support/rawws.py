"""WebSocket written by hand over raw asyncio streams, for frames no real peer sends on demand.

``websockets`` refuses to put malformed frames on the wire (as it should), so the
tests that send them build frames here: reserved close codes, invalid UTF-8,
unmasked frames, reserved opcodes, oversized payloads, a handshake that stalls. And
frame orderings a real peer does not produce when asked: a burst, then a pong.
A minimal client (:class:`RawClient`) and the server side of a handshake
(:func:`accept_handshake`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from dataclasses import dataclass

#: RFC 6455 §5.2 opcodes used by the tests.
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
) -> bytes:
    """Serialize one frame; ``rsv`` is the 3 RSV bits (RFC 6455 §5.2), ``mask`` per §5.3."""
    head = bytearray([(0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0xF])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head.append(mask_bit | length)
    elif length < 2**16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", length)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    # XOR with a repeated 4-byte key, done on integers so a 1 MiB payload stays fast.
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return bytes(head) + key + masked


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a Close frame: 2-byte code then UTF-8 reason (RFC 6455 §5.5.1)."""
    return struct.pack("!H", code) + reason.encode()


@dataclass(frozen=True)
class Frame:
    """One frame read from the server (servers never mask, RFC 6455 §5.1)."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The code of a Close frame (None for an empty one or another opcode)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


class RawClient:
    """One TCP connection speaking just enough WebSocket to misbehave on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        """Open a TCP connection without any handshake (for slow-handshake tests)."""
        reader, writer = await asyncio.open_connection(host, port, limit=2**24)
        return cls(reader, writer)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        path: str = "/",
        origin: str | None = None,
        subprotocol: str | None = None,
    ) -> RawClient:
        """Open a TCP connection and complete the opening handshake (RFC 6455 §4.1)."""
        client = await cls.connect(host, port)
        status = await client.handshake(
            host, port, path=path, origin=origin, subprotocol=subprotocol
        )
        if status != 101:
            client.abort()
            raise ConnectionError(f"handshake answered HTTP {status}, not 101")
        return client

    async def handshake(
        self,
        host: str,
        port: int,
        *,
        path: str = "/",
        origin: str | None = None,
        subprotocol: str | None = None,
    ) -> int:
        """Send the upgrade request; return the HTTP status of the response."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        if subprotocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        response = await self.reader.readuntil(b"\r\n\r\n")
        return int(response.split(b" ", 2)[1])

    async def send_frame(
        self,
        opcode: int,
        payload: bytes,
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
    ) -> None:
        """Write one frame, however wrong the caller wants it."""
        self.writer.write(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are."""
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> Frame:
        """Read one frame; raise ``asyncio.IncompleteReadError`` at EOF."""
        frame, masked = await _read_frame(self.reader)
        if masked:
            raise AssertionError("a server must not mask its frames (RFC 6455 §5.1)")
        return frame

    async def read_until_close(self) -> Frame | None:
        """Read frames until a Close frame (returned) or EOF (None); others are dropped."""
        while True:
            try:
                frame = await self.read_frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if frame.opcode == OP_CLOSE:
                return frame

    async def wait_eof(self) -> None:
        """Discard whatever arrives until the server closes the TCP connection."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            # A reset is the server dropping us too (an abort rather than a FIN).
            return

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        self.writer.transport.abort()


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def accept_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server side: read a client's upgrade request and answer 101 (RFC 6455 §4.2.2)."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def read_client_frame(reader: asyncio.StreamReader) -> Frame:
    """The server side: read one frame from a client, unmasked (clients mask, §5.3)."""
    frame, _ = await _read_frame(reader)
    return frame


async def _read_frame(reader: asyncio.StreamReader) -> tuple[Frame, bool]:
    """One frame, its payload unmasked, and whether it came masked."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    masked = bool(second & 0x80)
    key = await reader.readexactly(4) if masked else b"\0\0\0\0"
    data = await reader.readexactly(length)
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(data)) if masked else data
    return Frame(bool(first & 0x80), first & 0x0F, payload), masked
