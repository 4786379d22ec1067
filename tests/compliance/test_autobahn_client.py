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
from autobahn_support import (
    ENGINE_DIVERGENCES,
    LIMIT_CASES,
    RAISED_MAX_FRAGMENTS,
    RAISED_MAX_SIZE,
    default_run_exclusions,
    failures,
    matches,
)
from kosoku import FailureError, run_fuzzingserver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# (The suite has no group 8.)
GROUPS_1_TO_10 = [f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 9, 10)]
CASES_1_TO_10 = 301


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


def test_suite_ran_every_case_of_groups_1_to_10(results: dict[str, Any]) -> None:
    """The run covers all 301 cases outside the compression groups."""
    assert len(results) == CASES_1_TO_10


def test_every_case_within_the_default_limits_passes(results: dict[str, Any]) -> None:
    """Every case but the over-limit ones and 7.1.5 is OK, NON-STRICT or INFORMATIONAL."""
    within = [r for case, r in results.items() if not matches(case, default_run_exclusions())]
    assert len(within) == CASES_1_TO_10 - 25
    assert failures(within) == []


def test_messages_over_the_default_limits_are_refused_with_1009(results: dict[str, Any]) -> None:
    """The client refuses 4-16 MiB messages with 1009, like the server."""
    over = {case: r.remote_close_code for case, r in results.items() if matches(case, LIMIT_CASES)}
    assert len(over) == 24
    assert set(over.values()) == {1009}


def test_close_inside_a_fragmented_message_is_answered_with_1002(results: dict[str, Any]) -> None:
    """7.1.5: the engine answers a Close between fragments with 1002 (docs/compliance.md)."""
    code, reason = ENGINE_DIVERGENCES["7.1.5"]
    assert (results["7.1.5"].remote_close_code, results["7.1.5"].remote_close_reason) == (
        code,
        reason,
    )


async def test_every_9x_case_passes_with_the_limits_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With max_size=16 MiB and 65536 fragments per message, all 54 cases of 9.x pass."""
    # What WEBSOCKETS_MAX_FRAGMENTS does at import time, for this process only.
    monkeypatch.setattr(websockets.asyncio.messages, "MAX_FRAGMENTS", RAISED_MAX_FRAGMENTS)
    results = await fuzz(["9.*"], max_size=RAISED_MAX_SIZE)
    assert len(results) == 54
    assert failures(list(results.values())) == []
