"""Wait for a condition instead of a fixed time.

``await eventually(lambda: server.paused, what="the server's writes wait")`` checks the
predicate every 10 ms and returns its first true value; after ``timeout`` seconds it fails
the test with an ``AssertionError`` naming the condition. Use it where a test would
otherwise sleep "long enough" for another task, a peer or the kernel to get somewhere.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


async def eventually(predicate: Callable[[], T], timeout: float = 5.0, what: str = "") -> T:
    """Poll ``predicate`` every 10 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or _describe(predicate)}")
        await asyncio.sleep(0.01)
    return value


def _describe(predicate: Callable[[], object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
