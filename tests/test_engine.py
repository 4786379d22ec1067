"""The engine interface's default behaviour (``tether.asyncio.engine.Transport``)."""

from __future__ import annotations

import asyncio

import pytest

from tether.asyncio.engine import ClosedInfo, Message, PongHandler, Transport

pytestmark = pytest.mark.timeout(10)


class ClosingTransport(Transport):
    """Only wait_closed() works: it returns once the test calls ``finish``."""

    def __init__(self) -> None:
        self.subprotocol = None
        self.remote_address = None
        self.headers = {}
        self._done: asyncio.Future[ClosedInfo] = asyncio.get_running_loop().create_future()

    def finish(self, info: ClosedInfo) -> None:
        self._done.set_result(info)

    async def send(self, message: Message) -> None:
        raise AssertionError("not used")

    async def recv(self) -> Message:
        raise AssertionError("not used")

    async def ping(self, payload: bytes) -> None:
        raise AssertionError("not used")

    def on_pong(self, handler: PongHandler) -> None:
        raise AssertionError("not used")

    async def close(self, code: int, reason: str = "") -> ClosedInfo:
        raise AssertionError("not used")

    def abort(self) -> None:
        raise AssertionError("not used")

    async def wait_closed(self) -> ClosedInfo:
        return await asyncio.shield(self._done)

    @property
    def closed(self) -> ClosedInfo | None:
        return self._done.result() if self._done.done() else None


async def test_default_close_callback_is_called_once_with_how_it_ended() -> None:
    """An engine without its own add_close_callback still tells of the close, once."""
    transport = ClosingTransport()
    seen: list[ClosedInfo] = []
    transport.add_close_callback(seen.append)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == []
    info = ClosedInfo(1001, "away", clean=True)
    transport.finish(info)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [info]
