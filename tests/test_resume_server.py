"""``TetherV1ServerLayer``: the server's tether.v1 glue, over an in-memory fake transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tests.test_session import FakeTransport

from tether.asyncio.engine import ClosedInfo
from tether.asyncio.resume_server import TetherV1ServerLayer
from tether.asyncio.session import RequestInfo, Session
from tether.exceptions import ConfigurationError, ProtocolError
from tether.protocol import Hello, Welcome, decode, encode
from tether.stores.base import SessionRecord, StoreUnavailable
from tether.stores.memory import MemoryStore

pytestmark = pytest.mark.timeout(10)

REQUEST = RequestInfo("/", remote_address=("127.0.0.1", 5555))


def v1_transport(*frames: str) -> FakeTransport:
    transport = FakeTransport()
    transport.subprotocol = "tether.v1"
    for frame in frames:
        transport.feed(frame)
    return transport


async def settle(transport: FakeTransport, count: int) -> None:
    """Wait (bounded) until ``count`` frames were sent."""
    for _ in range(200):
        if len(transport.sent) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {len(transport.sent)} frame(s) sent: {transport.sent}")


async def new_session(
    layer: TetherV1ServerLayer,
) -> tuple[Session, FakeTransport, Welcome]:
    transport = v1_transport(encode(Hello(rx=0)))
    session = await layer.open(transport, REQUEST)
    session.attach(transport)
    await settle(transport, 1)
    welcome = decode(transport.sent[0])
    assert isinstance(welcome, Welcome)
    return session, transport, welcome


async def test_plain_client_gets_a_plain_session() -> None:
    """No tether.v1 negotiated: a plain session, messages unchanged."""
    layer = TetherV1ServerLayer()
    transport = FakeTransport()
    session = await layer.open(transport, REQUEST)
    session.attach(transport)
    assert await layer.received(session, transport, "raw") == ("raw",)
    await session.send("out")
    assert transport.sent == ["out"]
    assert layer.connection_lost(session, ClosedInfo(1006, "", clean=False)) is True


async def test_hello_creates_a_stored_session_and_welcomes() -> None:
    """A new hello: a session in the store, welcome with its id and the store's epoch."""
    store = MemoryStore(epoch="e1")
    layer = TetherV1ServerLayer(store=store)
    session, _, welcome = await new_session(layer)
    assert (welcome.resumed, welcome.sid, welcome.epoch) == (False, session.id, "e1")
    assert await store.load(session.id) is not None


async def test_send_is_stored_before_it_is_sent() -> None:
    """session.send returns once the message is in the store; then the frame goes out."""
    store = MemoryStore()
    layer = TetherV1ServerLayer(store=store)
    session, transport, _ = await new_session(layer)
    await session.send("one")
    assert [m.payload for m in await store.messages(session.id, after=0)] == ["one"]
    await settle(transport, 2)
    assert transport.sent[1] == "d1:0:one"


async def test_first_message_must_be_hello() -> None:
    """A data frame before hello fails the handshake with 1002."""
    layer = TetherV1ServerLayer()
    with pytest.raises(ProtocolError) as caught:
        await layer.open(v1_transport("d1:0:x"), REQUEST)
    assert caught.value.close_code == 1002


async def test_resume_of_a_live_session_takes_it_over_with_4901() -> None:
    """A second connection with the session's credentials: the old one is closed with 4901."""
    layer = TetherV1ServerLayer()
    session, old, welcome = await new_session(layer)
    hello = Hello(welcome.sid, welcome.token, welcome.epoch, 0)
    new = v1_transport(encode(hello))
    resumed = await layer.open(new, REQUEST)
    assert resumed is session
    await settle(new, 1)
    again = decode(new.sent[0])
    assert isinstance(again, Welcome)
    assert again.resumed is True
    for _ in range(100):
        if old.close_calls:
            break
        await asyncio.sleep(0.005)
    assert old.close_calls == [(4901, "taken over")]


class DownStore(MemoryStore):
    """A memory store whose load always fails."""

    async def load(self, sid: str) -> SessionRecord | None:
        raise StoreUnavailable("down (test)")


async def test_store_outage_on_resume_starts_a_new_session() -> None:
    """The store cannot be read: a new session, welcome.reason store_unavailable."""
    layer = TetherV1ServerLayer(store=DownStore(epoch="e1"))
    transport = v1_transport(encode(Hello("s" * 22, "t" * 43, "e1", 0)))
    await layer.open(transport, REQUEST)
    await settle(transport, 1)
    welcome = json.loads(str(transport.sent[0]))
    assert (welcome["resumed"], welcome["reason"]) == (False, "store_unavailable")


async def test_principal_hook_binds_the_session() -> None:
    """A resume by another principal is refused as token_invalid."""
    who: dict[str, Any] = {"id": "alice"}
    layer = TetherV1ServerLayer(principal=lambda request: who["id"])
    _, _, welcome = await new_session(layer)
    who["id"] = "mallory"
    transport = v1_transport(encode(Hello(welcome.sid, welcome.token, welcome.epoch, 0)))
    await layer.open(transport, REQUEST)
    await settle(transport, 1)
    refused = decode(transport.sent[0])
    assert isinstance(refused, Welcome)
    assert (refused.resumed, refused.reason) == (False, "token_invalid")


def test_bad_store_is_a_configuration_error() -> None:
    """store must be 'memory', a URL or a SessionStore."""
    with pytest.raises(ConfigurationError):
        TetherV1ServerLayer(store=42)  # type: ignore[arg-type]
