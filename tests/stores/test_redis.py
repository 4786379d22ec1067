"""The Redis store: conformance, layout, TTLs, fencing between nodes, failures, epoch."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tether.stores.base import SessionStore
from tether.stores.redis import RedisStore

from .conformance import StoreConformance

SHARED_URL = "redis://127.0.0.1:6379/0"


async def _remove_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A random key prefix on the machine's Redis, removed afterwards."""
    client = aioredis.Redis.from_url(SHARED_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (aioredis.ConnectionError, OSError) as exc:
        pytest.skip(f"no Redis on 127.0.0.1:6379 ({exc}); .ci/run starts one")
    finally:
        await client.aclose()
    prefix = f"tether-test-{secrets.token_hex(6)}:"
    yield prefix
    await _remove_prefix(SHARED_URL, prefix)


class TestRedisStore(StoreConformance):
    """Conformance of :class:`RedisStore` on the machine's Redis."""

    @pytest.fixture
    async def store(self, prefix: str) -> AsyncIterator[SessionStore]:
        """A Redis store isolated by a random prefix; its clock is the suite's (0)."""
        store = RedisStore(SHARED_URL, prefix=prefix, timeout=2.0, clock=lambda: 0.0)
        yield store
        await store.close()
