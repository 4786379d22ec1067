"""An event loop whose timers run early, as uvloop's can (for tests of what a timer does).

uvloop's clock and timers have millisecond resolution: ``loop.time()`` is whole
milliseconds, a delay is rounded to the millisecond (under 0.5 ms it is a ``call_soon``),
and a float deadline can sit just above the millisecond its timer runs at. So a
``call_at(when, ...)`` callback may run while ``loop.time()`` is still short of ``when``.
This stdlib loop runs every timer 1 ms early, on every run, with real sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["EarlyTimerLoop"]


class EarlyTimerLoop(asyncio.SelectorEventLoop):
    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        return super().call_at(when - 0.001, callback, *args, context=context)
