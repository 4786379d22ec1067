"""A slow path between two loopback peers: a TCP forwarder that reads at a set rate.

``async with SlowLink(upstream_port, rate=100_000) as link:`` forwards
``127.0.0.1:link.port`` to ``127.0.0.1:upstream_port``, reading each direction at
``rate`` bytes per second. Its sockets' kernel receive buffers are small and it
reads in small chunks, so what the peers send beyond that waits, unacknowledged, in
the *sender's* kernel: what a slow end-to-end path (a mobile uplink) looks like to
the sender, unlike a proxy that takes everything at once and dribbles it out.
Every wait is bounded; ``close()`` stops every connection.
"""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType

__all__ = ["SlowLink"]

#: Bytes the forwarder reads at a time, and its kernel receive buffers (Linux doubles it).
CHUNK = 4096
RECEIVE_BUFFER = 8192


def _small_receive_buffer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connect()/listen(): a fixed SO_RCVBUF turns off the kernel's autotuning.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    return sock


class SlowLink:
    """Forward one loopback port to another at ``rate`` bytes/s in each direction."""

    def __init__(self, upstream_port: int, *, rate: float) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> SlowLink:
        listener = _small_receive_buffer()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._accept, sock=listener, limit=CHUNK)
        self.port = listener.getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def __aenter__(self) -> SlowLink:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        upstream = _small_receive_buffer()
        upstream.setblocking(False)
        try:
            await asyncio.wait_for(
                loop.sock_connect(upstream, ("127.0.0.1", self.upstream_port)), 5
            )
        except (OSError, asyncio.TimeoutError):
            upstream.close()
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=upstream, limit=CHUNK)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
                await asyncio.sleep(len(data) / self.rate)  # the path's rate
            if sink.can_write_eof() and not sink.is_closing():
                sink.write_eof()  # a FIN for a FIN: the other direction goes on
        except (ConnectionError, OSError):
            sink.transport.abort()  # a reset for a reset
