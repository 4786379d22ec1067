"""loop_clock: the loop's own clock, without a Python-level call where that is exact."""

from __future__ import annotations

import asyncio
import time

from tests.support.virtualtime import VirtualTimeLoop, run_virtual

from tether.asyncio.clock import loop_clock


def test_asyncio_loop_reads_time_monotonic_directly() -> None:
    async def clock() -> object:
        return loop_clock(asyncio.get_running_loop())

    assert asyncio.run(clock()) is time.monotonic


def test_a_loop_with_its_own_time_keeps_it() -> None:
    async def readings() -> tuple[float, float]:
        clock = loop_clock(asyncio.get_running_loop())
        await asyncio.sleep(12.5)  # virtual: the clock jumps, no real wait
        return clock(), asyncio.get_running_loop().time()

    now, loop_now = run_virtual(readings())
    assert now == loop_now == 12.5


def test_the_monotonic_shortcut_agrees_with_the_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        before = loop.time()
        reading = loop_clock(loop)()
        assert before <= reading <= loop.time()
    finally:
        loop.close()
    assert not isinstance(loop, VirtualTimeLoop)
