"""An autouse fixture: a test fails if anything reached its event loop's exception handler.

Import it into a test module (``from tests.support.loop_errors import loop_errors``) to
turn it on there: a task that died with an exception nobody retrieved, a callback that
raised, "Task was destroyed but it is pending" all fail the test that caused them.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

__all__ = ["loop_errors"]


@pytest.fixture(autouse=True)
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Collect whatever reaches the loop's exception handler; the test fails if anything did."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    await asyncio.sleep(0.01)  # let callbacks already scheduled report first
    gc.collect()  # "destroyed but pending" is reported when the task is collected
    assert errors == []
