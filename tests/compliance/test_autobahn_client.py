"""Autobahn|Testsuite cases (kosoku's fuzzingserver) against ``tether.connect`` in plain mode.

The agent (:mod:`autobahn_agent`) opens one ``tether.connect`` per case with
reconnection disabled and echoes every message; one run of cases 1-10 at
tether's default limits is shared by the tests below.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets.asyncio.messages
from autobahn_agent import drive, tether_runner
from autobahn_conformance import CASES_9, DefaultLimitsRun, assert_all_passed
from autobahn_support import RAISED_MAX_FRAGMENTS, RAISED_MAX_SIZE
from kosoku import FailureError, run_fuzzingserver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# (The suite has no group 8.)
GROUPS_1_TO_10 = [f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 9, 10)]


async def fuzz(cases: list[str], *, max_size: int | None) -> dict[str, Any]:
    """Serve ``cases`` to the tether agent; return every result by case id."""
    async with run_fuzzingserver(cases, port=0) as server:
        base = f"ws://{server.address}:{server.port}"
        await drive(base, "tether", tether_runner(max_size=max_size))
        try:
            results = await asyncio.wait_for(server.get_result(), 30)
        except FailureError as failure:
            results = failure.results
    return {r.case_id: r for r in results}


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """Cases 1-10 against the tether client with its default limits."""
    return asyncio.run(fuzz(GROUPS_1_TO_10, max_size=2**20))


class TestDefaultLimits(DefaultLimitsRun):
    """The shared checks (autobahn_conformance.py) on the client's run; 4-16 MiB get 1009."""


async def test_every_9x_case_passes_with_the_limits_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With max_size=16 MiB and 65536 fragments per message, all 54 cases of 9.x pass."""
    # What WEBSOCKETS_MAX_FRAGMENTS does at import time, for this process only.
    monkeypatch.setattr(websockets.asyncio.messages, "MAX_FRAGMENTS", RAISED_MAX_FRAGMENTS)
    assert_all_passed(await fuzz(["9.*"], max_size=RAISED_MAX_SIZE), CASES_9)
