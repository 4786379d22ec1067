"""An event loop on a virtual clock, for adapter tests whose timers must not cost real time.

When nothing is ready to run, the loop's clock jumps to its earliest timer instead of
waiting for it, so ``asyncio.sleep(0.15)`` or an ``ack_delay`` of 200 ms take no real
time and fire in the order their deadlines give. Only for tests without real I/O (a
fake transport): a socket's data would arrive "late" on a clock that jumps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        # asyncio's private scheduling state: nothing ready means the loop would block in
        # select() until the first timer; jump there instead (select then does not wait).
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not self._ready and scheduled:  # type: ignore[attr-defined]
            self._virtual_now = max(self._virtual_now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh :class:`VirtualTimeLoop`, as ``asyncio.run`` would.

    Tasks still pending at the end (a session's pump, say) are cancelled and awaited
    before the loop closes, as ``asyncio.run`` does.
    """
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)
