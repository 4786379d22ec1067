"""Benchmark peers: a server and a client per implementation, each run in its own process.

    python -m benchmarks.peers server IMPL [--port P] [--reuse-port] [--store URL]
    python -m benchmarks.peers client IMPL URL --plan '[["echo", 64, 5000, 2.0], ...]'
    python -m benchmarks.peers hold URL --connections N [--tether-v1]

A server prints ``READY <port>`` on stdout once it listens, then serves until
SIGTERM or SIGINT (``--store``: the tether servers' session store, a
``tether.serve`` store URL such as ``sqlite:////tmp/x/s.db``; default
``memory``). A client prints ``{"results": [{"test", "size", "count",
"seconds"}, ...]}``, one entry per planned test, each on a fresh connection.
``hold`` opens N idle connections (``--tether-v1``: each with a tether.v1 session,
hello and welcome), prints ``HELD <held> <failed>`` and keeps them until SIGTERM
(used by the memory scenario).

Every implementation speaks the same tiny application protocol, so that the
figures compare the transports and not the apps:

* a binary message is echoed, unless the connection is in sink mode;
* text ``sink`` starts sink mode: binary messages are counted, not answered;
* text ``count`` answers ``<count>`` as text and leaves sink mode;
* text ``cpu`` answers ``cpu <seconds>``: the server process's CPU time so far, so
  that a client can report CPU per message for both sides;
* text ``stream N SIZE SECONDS`` makes the server send N binary messages of SIZE
  bytes (stopping early after SECONDS), then text ``end <sent>``.

Raw TCP frames each message with a 4-byte big-endian header: bit 31 is the text
flag, the low 31 bits the payload length.

WebSocket settings are tether's: permessage-deflate off, the engine's own
keepalive off (tether drives pings itself; none fire during a run), a listen
backlog of 4096 (DESIGN.md section 10).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from .common import run_loop

IMPLS = ("websockets", "picows", "aiohttp", "tcp", "tether", "tether-v1")
TESTS = ("echo", "stream_up", "stream_down")
BACKLOG = 4096
_TEXT_FLAG = 0x8000_0000
_HEADER = struct.Struct("!I")


# --------------------------------------------------------------------------- server logic


class _StreamCommand:
    """A parsed ``stream N SIZE SECONDS`` command."""

    def __init__(self, text: str) -> None:
        _, count, size, seconds = text.split()
        self.count = int(count)
        self.payload = b"s" * int(size)
        self.seconds = float(seconds)


async def _generic_server_loop(
    recv: Callable[[], Awaitable[str | bytes | None]],
    send: Callable[[str | bytes], Awaitable[None]],
) -> None:
    """The application protocol for await-style engines (websockets, aiohttp, tether)."""
    sink = False
    count = 0
    while True:
        message = await recv()
        if message is None:
            return
        if isinstance(message, bytes):
            if sink:
                count += 1
            else:
                await send(message)
        elif message == "sink":
            sink, count = True, 0
        elif message == "count":
            sink = False
            await send(str(count))
        elif message == "cpu":
            await send(f"cpu {time.process_time()}")
        elif message.startswith("stream "):
            command = _StreamCommand(message)
            deadline = time.perf_counter() + command.seconds
            sent = 0
            while sent < command.count:
                await send(command.payload)
                sent += 1
                if not sent & 255 and time.perf_counter() > deadline:
                    break
            await send(f"end {sent}")


async def _serve_iterable(connection: Any, send: Callable[[str | bytes], Awaitable[None]]) -> None:
    """Run the application protocol on a connection read with ``async for``."""
    iterator = aiter(connection)

    async def recv() -> str | bytes | None:
        try:
            return await anext(iterator)  # type: ignore[no-any-return]
        except StopAsyncIteration:
            return None

    with contextlib.suppress(Exception):
        await _generic_server_loop(recv, send)


class _FlowControl:
    """Write flow control for callback-style engines: senders wait while paused."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()


class _CallbackServerLogic(_FlowControl):
    """The application protocol for callback-style engines (picows, raw TCP)."""

    def __init__(self, send: Callable[[bool, Any], None]) -> None:
        super().__init__()
        self._send = send
        self._sink = False
        self._count = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, is_text: bool, data: Any) -> None:
        if not is_text:
            if self._sink:
                self._count += 1
            else:
                self._send(False, data)
            return
        text = bytes(data).decode()
        if text == "sink":
            self._sink, self._count = True, 0
        elif text == "count":
            self._sink = False
            self._send(True, str(self._count).encode())
        elif text == "cpu":
            self._send(True, f"cpu {time.process_time()}".encode())
        elif text.startswith("stream "):
            task = asyncio.ensure_future(self._stream(_StreamCommand(text)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _stream(self, command: _StreamCommand) -> None:
        deadline = time.perf_counter() + command.seconds
        sent = 0
        while sent < command.count:
            if not self._writable.is_set():  # inline: this is the hot path of the ceilings
                await self._writable.wait()
            self._send(False, command.payload)
            sent += 1
            if not sent & 255 and time.perf_counter() > deadline:
                break
        self._send(True, f"end {sent}".encode())

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


class _FrameParser:
    """Splits the raw TCP byte stream into length-prefixed messages."""

    def __init__(self, on_message: Callable[[bool, Any], None]) -> None:
        self._buffer = bytearray()
        self._on_message = on_message

    def feed(self, data: bytes) -> None:
        if not self._buffer and len(data) >= 4:
            # Fast path (echo, one message per read): no copy into the buffer.
            (header,) = _HEADER.unpack_from(data)
            if (header & ~_TEXT_FLAG) == len(data) - 4:
                self._on_message(bool(header & _TEXT_FLAG), data[4:])
                return
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        view = memoryview(buffer)
        try:
            while end - offset >= 4:
                (header,) = _HEADER.unpack_from(buffer, offset)
                length = header & ~_TEXT_FLAG
                if end - offset - 4 < length:
                    break
                start = offset + 4
                offset = start + length
                self._on_message(bool(header & _TEXT_FLAG), bytes(view[start:offset]))
        finally:
            view.release()
        if offset:
            del buffer[:offset]


def _frame(is_text: bool, data: Any) -> bytes:
    header = len(data) | (_TEXT_FLAG if is_text else 0)
    return _HEADER.pack(header) + bytes(data)


class _FramedTcpProtocol(asyncio.Protocol):
    """Raw TCP with length-prefixed messages, handed to a callback logic (either side)."""

    logic: _CallbackServerLogic | _CallbackClientLogic

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = _FrameParser(self.logic.on_message)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def _send(self, is_text: bool, data: Any) -> None:
        assert self._transport is not None
        self._transport.write(_frame(is_text, data))

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)

    def pause_writing(self) -> None:
        self.logic.pause_writing()

    def resume_writing(self) -> None:
        self.logic.resume_writing()


class _TcpServerProtocol(_FramedTcpProtocol):
    def __init__(self) -> None:
        self.logic = _CallbackServerLogic(self._send)
        super().__init__()

    def connection_lost(self, exc: Exception | None) -> None:
        assert isinstance(self.logic, _CallbackServerLogic)
        self.logic.close()


async def _serve_tcp(port: int, reuse_port: bool) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        _TcpServerProtocol, "127.0.0.1", port, backlog=BACKLOG, reuse_port=reuse_port or None
    )
    return server, server.sockets[0].getsockname()[1]


async def _serve_websockets(port: int, reuse_port: bool) -> tuple[Any, int]:
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        await _serve_iterable(ws, ws.send)

    server = await serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=None,
        ping_timeout=None,
        backlog=BACKLOG,
        reuse_port=reuse_port or None,
    )
    return server, server.sockets[0].getsockname()[1]


async def _serve_aiohttp(port: int, reuse_port: bool) -> tuple[Any, int]:
    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True, heartbeat=None)
        await ws.prepare(request)

        async def recv() -> str | bytes | None:
            msg = await ws.receive()
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                return msg.data  # type: ignore[no-any-return]
            return None

        async def send(message: str | bytes) -> None:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

        with contextlib.suppress(Exception):
            await _generic_server_loop(recv, send)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=BACKLOG, reuse_port=reuse_port or None)
    await site.start()
    server: Any = site._server  # aiohttp does not expose the bound port otherwise
    return runner, server.sockets[0].getsockname()[1]


def _picows_listener(
    make_logic: Callable[
        [Callable[[bool, Any], None]], _CallbackServerLogic | _CallbackClientLogic
    ],
    *,
    server: bool,
) -> Any:
    """A picows listener class handing messages to a callback logic (either side).

    Auto-pong is off on both sides, as in tether; the server side answers Close and
    Ping itself.
    """
    from picows import WSFrame, WSListener, WSMsgType, WSTransport

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            self._transport = transport
            self.logic = make_logic(self._send)

        def _send(self, is_text: bool, data: Any) -> None:
            self._transport.send(WSMsgType.TEXT if is_text else WSMsgType.BINARY, data)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            kind = frame.msg_type
            if kind == WSMsgType.BINARY:
                self.logic.on_message(False, frame.get_payload_as_memoryview())
            elif kind == WSMsgType.TEXT:
                self.logic.on_message(True, frame.get_payload_as_bytes())
            elif server and kind == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif server and kind == WSMsgType.PING:
                transport.send_pong(frame.get_payload_as_bytes())

        def pause_writing(self) -> None:
            self.logic.pause_writing()

        def resume_writing(self) -> None:
            self.logic.resume_writing()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if isinstance(self.logic, _CallbackServerLogic):
                self.logic.close()

    return Listener


async def _serve_picows(port: int, reuse_port: bool) -> tuple[Any, int]:
    from picows import ws_create_server

    Listener = _picows_listener(_CallbackServerLogic, server=True)
    server = await ws_create_server(
        lambda _request: Listener(),
        "127.0.0.1",
        port,
        backlog=BACKLOG,
        reuse_port=reuse_port or None,
        enable_auto_pong=False,
    )
    return server, server.sockets[0].getsockname()[1]


async def _serve_tether(port: int, reuse_port: bool, store: str = "memory") -> tuple[Any, int]:
    import tether

    async def handler(session: Any) -> None:
        await _serve_iterable(session, session.send)

    kwargs: dict[str, Any] = {"store": store}
    if reuse_port:
        kwargs["reuse_port"] = True
    # tether.serve's defaults otherwise (heartbeat 15/10 s, compression off, 1 MiB
    # max_size, backlog 4096): what a user gets.
    server = tether.serve(handler, "127.0.0.1", port, **kwargs)  # type: ignore[attr-defined]
    await server.start()
    return server, int(server.port)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SERVERS = {
    "tcp": _serve_tcp,
    "websockets": _serve_websockets,
    "aiohttp": _serve_aiohttp,
    "picows": _serve_picows,
    "tether": _serve_tether,
    "tether-v1": _serve_tether,
}


async def _run_server(impl: str, port: int, reuse_port: bool, store: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if store is None:
        _server, bound = await _SERVERS[impl](port, reuse_port)
    elif impl in ("tether", "tether-v1"):
        _server, bound = await _serve_tether(port, reuse_port, store)
    else:
        raise SystemExit(f"--store is for the tether servers, not {impl}")
    print(f"READY {bound}", flush=True)
    await stop.wait()
    # The benchmark is over: the parent only needs the process gone, and a graceful
    # close of thousands of connections (memory scenario) would only slow it down.
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------- client side


class _Result(dict[str, float]):
    """``{"count": n, "seconds": s}``, plus CPU per message once measured."""


async def _generic_echo(
    send: Callable[[Any], Awaitable[None]],
    recv: Callable[[], Awaitable[Any]],
    size: int,
    count: int,
    seconds: float,
) -> _Result:
    """Sequential round trips, one message in flight, after 200 untimed ones."""
    payload = b"e" * size
    for _ in range(min(200, count)):  # warm-up: same path, not measured
        await send(payload)
        await recv()
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while done < count:
        await send(payload)
        await recv()
        done += 1
        if not done & 63 and time.perf_counter() > deadline:
            break
    return _Result(count=done, seconds=time.perf_counter() - start)


async def _generic_stream_up(
    send: Callable[[Any], Awaitable[None]],
    recv: Callable[[], Awaitable[Any]],
    size: int,
    count: int,
    seconds: float,
) -> _Result:
    """Send as fast as the engine accepts; done when the server's count comes back."""
    payload = b"u" * size
    await send("sink")
    start = time.perf_counter()
    deadline = start + seconds
    sent = 0
    while sent < count:
        await send(payload)
        sent += 1
        if not sent & 255 and time.perf_counter() > deadline:
            break
    await send("count")
    received = int(await recv())
    elapsed = time.perf_counter() - start
    if received != sent:
        raise RuntimeError(f"server counted {received} of {sent} messages")
    return _Result(count=received, seconds=elapsed)


async def _generic_stream_down(
    send: Callable[[Any], Awaitable[None]],
    recv: Callable[[], Awaitable[Any]],
    size: int,
    count: int,
    seconds: float,
) -> _Result:
    """Ask the server to stream; done at its ``end`` marker, every message counted."""
    start = time.perf_counter()
    await send(f"stream {count} {size} {seconds}")
    received = 0
    while True:
        message = await recv()
        if isinstance(message, str):
            break
        received += 1
    elapsed = time.perf_counter() - start
    announced = int(message.split()[1])
    if received != announced:
        raise RuntimeError(f"received {received} of {announced} messages")
    return _Result(count=received, seconds=elapsed)


_GENERIC_TESTS = {
    "echo": _generic_echo,
    "stream_up": _generic_stream_up,
    "stream_down": _generic_stream_down,
}


async def _generic_run(
    test: str,
    send: Callable[[Any], Awaitable[None]],
    recv: Callable[[], Awaitable[Any]],
    size: int,
    count: int,
    seconds: float,
) -> _Result:
    """Run one test, with both processes' CPU time read before and after."""
    await send("cpu")
    server_before = float((await recv()).split()[1])
    client_before = time.process_time()
    result = await _GENERIC_TESTS[test](send, recv, size, count, seconds)
    client_cpu = time.process_time() - client_before
    await send("cpu")
    server_cpu = float((await recv()).split()[1]) - server_before
    return _with_cpu(result, test, count, client_cpu, server_cpu)


def _with_cpu(
    result: _Result, test: str, count: int, client_cpu: float, server_cpu: float
) -> _Result:
    # The echo warm-up (same path, not timed) ran inside the CPU window: count it.
    messages = result["count"] + (min(200, count) if test == "echo" else 0)
    result["client_cpu_us_per_msg"] = client_cpu / messages * 1e6
    result["server_cpu_us_per_msg"] = server_cpu / messages * 1e6
    return result


async def _client_websockets(url: str, test: str, size: int, count: int, seconds: float) -> _Result:
    from websockets.asyncio.client import connect

    async with connect(
        url,
        compression=None,
        ping_interval=None,
        ping_timeout=None,
        proxy=None,
        max_size=2**20,
    ) as ws:
        return await _generic_run(test, ws.send, ws.recv, size, count, seconds)


async def _client_aiohttp(url: str, test: str, size: int, count: int, seconds: float) -> _Result:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, compress=0, autoping=True, heartbeat=None) as ws,
    ):

        async def send(message: str | bytes) -> None:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

        async def recv() -> Any:
            return (await ws.receive()).data

        return await _generic_run(test, send, recv, size, count, seconds)


async def _client_tether(url: str, test: str, size: int, count: int, seconds: float) -> _Result:
    """tether plain mode: ``resume=False``, so no tether.v1 even against a tether server."""
    import tether

    async with tether.connect(url, resume=False) as conn:  # type: ignore[attr-defined]
        return await _generic_run(test, conn.send, conn.recv, size, count, seconds)


async def _client_tether_v1(url: str, test: str, size: int, count: int, seconds: float) -> _Result:
    """tether.v1 (the default ``resume=True``) against ``tether.serve``'s memory store."""
    import tether

    async with tether.connect(url) as conn:  # type: ignore[attr-defined]
        if conn.subprotocol != "tether.v1":
            raise RuntimeError(f"expected tether.v1, negotiated {conn.subprotocol!r}")
        return await _generic_run(test, conn.send, conn.recv, size, count, seconds)


class _CallbackClientLogic(_FlowControl):
    """The three tests for callback-style engines (picows, raw TCP), without a queue per message."""

    def __init__(self, send: Callable[[bool, Any], None]) -> None:
        super().__init__()
        self._send = send
        self._on_message: Callable[[bool, Any], None] = self._ignore
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, is_text: bool, data: Any) -> None:
        self._on_message(is_text, data)

    def _ignore(self, is_text: bool, data: Any) -> None:
        raise RuntimeError("message outside a test")

    async def _ask_cpu(self) -> float:
        reply: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def on_reply(is_text: bool, data: Any) -> None:
            reply.set_result(float(bytes(data).split()[1]))

        self._on_message = on_reply
        self._send(True, b"cpu")
        return await reply

    async def run(self, test: str, size: int, count: int, seconds: float) -> _Result:
        """Run one test, with both processes' CPU time read before and after."""
        server_before = await self._ask_cpu()
        client_before = time.process_time()
        result = await self._run(test, size, count, seconds)
        client_cpu = time.process_time() - client_before
        server_cpu = await self._ask_cpu() - server_before
        return _with_cpu(result, test, count, client_cpu, server_cpu)

    async def _run(self, test: str, size: int, count: int, seconds: float) -> _Result:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Result] = loop.create_future()
        if test == "echo":
            payload = b"e" * size
            warm = min(200, count)
            state = {"n": 0, "start": 0.0, "deadline": 0.0}

            def on_echo(is_text: bool, data: Any) -> None:
                state["n"] += 1
                n = state["n"]
                if n == warm:
                    state["start"] = time.perf_counter()
                    state["deadline"] = state["start"] + seconds
                measured = n - warm
                if measured >= count or (
                    measured > 0 and not measured & 63 and time.perf_counter() > state["deadline"]
                ):
                    done.set_result(
                        _Result(count=measured, seconds=time.perf_counter() - state["start"])
                    )
                    return
                self._send(False, payload)

            self._on_message = on_echo
            self._send(False, payload)
            return await done
        if test == "stream_down":
            received = [0]

            def on_stream(is_text: bool, data: Any) -> None:
                if not is_text:
                    received[0] += 1
                    return
                announced = int(bytes(data).split()[1])
                if received[0] != announced:
                    done.set_exception(
                        RuntimeError(f"received {received[0]} of {announced} messages")
                    )
                else:
                    done.set_result(_Result(count=received[0], seconds=time.perf_counter() - start))

            self._on_message = on_stream
            start = time.perf_counter()
            self._send(True, f"stream {count} {size} {seconds}".encode())
            return await done
        # stream_up
        payload = b"u" * size

        def on_count(is_text: bool, data: Any) -> None:
            done.set_result(_Result(count=int(bytes(data)), seconds=time.perf_counter() - start))

        self._on_message = on_count
        self._send(True, b"sink")
        start = time.perf_counter()
        deadline = start + seconds
        sent = 0
        while sent < count:
            if not self._writable.is_set():  # inline: this is the hot path of the ceilings
                await self._writable.wait()
            self._send(False, payload)
            sent += 1
            if not sent & 255 and time.perf_counter() > deadline:
                break
        self._send(True, b"count")
        result = await done
        if result["count"] != sent:
            raise RuntimeError(f"server counted {result['count']} of {sent} messages")
        return result


async def _client_picows(url: str, test: str, size: int, count: int, seconds: float) -> _Result:
    from picows import ws_connect

    Listener = _picows_listener(_CallbackClientLogic, server=False)
    transport, listener = await ws_connect(Listener, url, enable_auto_pong=False)
    try:
        return await listener.logic.run(test, size, count, seconds)
    finally:
        transport.send_close()
        transport.disconnect()


class _TcpClientProtocol(_FramedTcpProtocol):
    def __init__(self) -> None:
        self.logic = _CallbackClientLogic(self._send)
        super().__init__()


async def _client_tcp(url: str, test: str, size: int, count: int, seconds: float) -> _Result:
    host, _, port = url.removeprefix("tcp://").rstrip("/").rpartition(":")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_TcpClientProtocol, host, int(port))
    try:
        return await protocol.logic.run(test, size, count, seconds)
    finally:
        transport.close()


_CLIENTS = {
    "tcp": _client_tcp,
    "websockets": _client_websockets,
    "aiohttp": _client_aiohttp,
    "picows": _client_picows,
    "tether": _client_tether,
    "tether-v1": _client_tether_v1,
}


def url_for(impl: str, port: int, host: str = "127.0.0.1") -> str:
    """The URL a client of ``impl`` connects to."""
    scheme = "tcp" if impl == "tcp" else "ws"
    return f"{scheme}://{host}:{port}/"


# --------------------------------------------------------------------------- idle holders


#: tether.v1's first message on a connection: a new session (docs/protocol.md §2.4).
V1_HELLO = '{"type":"hello","sid":null,"token":null,"epoch":null,"rx":0}'


async def _hold(url: str, connections: int, concurrency: int, tether_v1: bool) -> None:
    """Open ``connections`` idle raw websockets connections and keep them until SIGTERM.

    With ``tether_v1`` each one offers the ``tether.v1`` subprotocol, sends a
    ``hello`` for a new session and counts as held only once the server selected
    tether.v1 and answered with a ``welcome`` (so the server holds a real session):
    far lighter on the holder than a full ``tether.connect`` client per connection.
    """
    from websockets.asyncio.client import ClientConnection, connect

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    held: list[ClientConnection] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def open_one() -> None:
        async with gate:
            try:
                ws = await connect(
                    url,
                    compression=None,
                    ping_interval=None,
                    ping_timeout=None,
                    proxy=None,
                    open_timeout=30,
                    subprotocols=["tether.v1"] if tether_v1 else None,  # type: ignore[list-item]
                )
                if tether_v1:
                    await _v1_hello(ws)
            except Exception as exc:
                failures[f"{type(exc).__name__}: {exc}"[:200]] += 1
            else:
                held.append(ws)

    await asyncio.gather(*(open_one() for _ in range(connections)))
    for reason, count in failures.most_common(3):
        print(f"hold: {count} failed: {reason}", file=sys.stderr, flush=True)
    print(f"HELD {len(held)} {failures.total()}", flush=True)
    await stop.wait()
    for ws in held:
        ws.transport.abort()


async def _v1_hello(ws: Any) -> None:
    """Start a tether.v1 session on ``ws``; raise unless the server welcomed it."""
    if ws.subprotocol != "tether.v1":
        raise RuntimeError(f"the server selected {ws.subprotocol!r}, not tether.v1")
    await ws.send(V1_HELLO)
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if reply.get("type") != "welcome" or not reply.get("sid"):
        raise RuntimeError(f"expected a welcome with a session id, got {reply!r}")


# --------------------------------------------------------------------------- entry point


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("impl", choices=IMPLS)
    server.add_argument("--port", type=int, default=0)
    server.add_argument("--reuse-port", action="store_true")
    server.add_argument("--store", help="tether's session store URL (default: memory)")
    client = sub.add_parser("client")
    client.add_argument("impl", choices=IMPLS)
    client.add_argument("url")
    client.add_argument(
        "--plan",
        required=True,
        help='JSON list of [test, size_bytes, count, seconds], e.g. [["echo", 64, 1000, 2]]',
    )
    hold = sub.add_parser("hold")
    hold.add_argument("url")
    hold.add_argument("--connections", type=int, required=True)
    hold.add_argument("--concurrency", type=int, default=200)
    hold.add_argument(
        "--tether-v1", action="store_true", help="start a tether.v1 session on each connection"
    )
    args = parser.parse_args(argv)
    raise_nofile_limit()
    if args.role == "server":
        run_loop(_run_server(args.impl, args.port, args.reuse_port, args.store))
        return 0
    if args.role == "hold":
        run_loop(_hold(args.url, args.connections, args.concurrency, args.tether_v1))
        return 0

    plan = [(str(t), int(s), int(n), float(sec)) for t, s, n, sec in json.loads(args.plan)]
    for test, *_ in plan:
        if test not in TESTS:
            parser.error(f"unknown test {test!r}")

    async def run_client() -> list[dict[str, Any]]:
        results = []
        for test, size, count, seconds in plan:
            # A fresh connection per test, as a fresh process per round: no test
            # inherits another's buffers.
            coro = _CLIENTS[args.impl](args.url, test, size, count, seconds)
            result = await asyncio.wait_for(coro, seconds * 3 + 30)
            results.append({"test": test, "size": size, **result})
        return results

    json.dump({"pid": os.getpid(), "results": run_loop(run_client())}, sys.stdout)
    print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
