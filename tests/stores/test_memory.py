"""The memory store passes the store conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tether.stores.base import SessionStore
from tether.stores.memory import MemoryStore

from .conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    """Conformance of :class:`MemoryStore`."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[SessionStore]:
        """A fresh memory store."""
        store = MemoryStore()
        yield store
        await store.close()


async def test_two_stores_have_different_epochs() -> None:
    """Two memory stores (two processes) never share an epoch."""
    assert await MemoryStore().epoch() != await MemoryStore().epoch()


async def test_explicit_epoch() -> None:
    """An epoch given at construction is the one reported."""
    assert await MemoryStore(epoch="e1").epoch() == "e1"
