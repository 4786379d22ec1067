"""Why plain websockets fails Autobahn 7.1.5 and 9.x at its defaults, measured.

These pin the engine behaviour tether's limits are chosen against
(docs/compliance.md): a websockets upgrade that changes a limit fails here first.
Server side: kosoku's fuzzingclient against websockets; client side: kosoku's
fuzzingserver driving a websockets client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autobahn_agent import drive, websockets_runner
from autobahn_support import RAISED_MAX_FRAGMENTS, RAISED_MAX_SIZE
from kosoku import FailureError, run_fuzzingclient, run_fuzzingserver

from conftest import Launcher, peer_server_argv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Cases that show each limit: a 4 MiB single frame (message size), 4 MiB in
#: 65,536 fragments of 64 B (fragment count), 4 MiB in 4,096 fragments of 1 KiB
#: (exactly the fragment limit, so only the size fails), and 7.1.5.
PROBES = ["9.1.4", "9.3.1", "9.3.3", "7.1.5"]


def fuzz_server(url: str, cases: list[str]) -> dict[str, Any]:
    """Run kosoku's fuzzingclient on ``cases``; return the results by case id."""

    async def run() -> list[Any]:
        try:
            return await run_fuzzingclient(url, cases)
        except FailureError as failure:
            return failure.results

    return {r.case_id: r for r in asyncio.run(run())}


async def fuzz_client(cases: list[str], *, max_size: int | None) -> dict[str, Any]:
    """Drive a websockets client through kosoku's fuzzingserver; results by case id."""
    async with run_fuzzingserver(cases, port=0) as server:
        base = f"ws://{server.address}:{server.port}"
        await drive(base, "websockets", websockets_runner(max_size=max_size))
        try:
            results = await server.get_result()
        except FailureError as failure:
            results = failure.results
    return {r.case_id: r for r in results}


@pytest.fixture(scope="module")
def default_server_results(launch_module: Launcher) -> dict[str, Any]:
    """The probe cases against websockets with its default limits."""
    server = launch_module(peer_server_argv("websockets"))
    return fuzz_server(server.url, PROBES)


def test_single_frame_over_max_size_fails_with_1009(default_server_results: dict[str, Any]) -> None:
    """A 4 MiB frame exceeds the default max_size of 1 MiB: websockets closes with 1009."""
    result = default_server_results["9.1.4"]
    assert (result.passed, result.remote_close_code) == (False, 1009)
    assert "exceeds limit of 1048576 bytes" in result.remote_close_reason


def test_65536_fragments_fail_on_the_fragment_count(default_server_results: dict[str, Any]) -> None:
    """4 MiB in 64-byte fragments trips the 4096-frames-per-message limit before max_size."""
    result = default_server_results["9.3.1"]
    assert (result.remote_close_code, result.remote_close_reason) == (1009, "too many fragments")


def test_4096_fragments_fail_only_on_size(default_server_results: dict[str, Any]) -> None:
    """4 MiB in 4096 fragments of 1 KiB is within the fragment limit; max_size stops it."""
    result = default_server_results["9.3.3"]
    assert result.remote_close_code == 1009
    assert "after reading 1048576 bytes" in result.remote_close_reason


def test_close_inside_fragmented_message_gets_1002(default_server_results: dict[str, Any]) -> None:
    """7.1.5: a Close frame between fragments is answered with 1002, Autobahn expects 1000."""
    result = default_server_results["7.1.5"]
    assert (result.passed, result.remote_close_code) == (False, 1002)
    assert result.remote_close_reason == "incomplete fragmented message"


def test_raised_size_alone_still_fails_on_fragments(launch: Launcher) -> None:
    """max_size=None does not help 9.3.1: the fragment limit is separate (process-wide)."""
    server = launch(peer_server_argv("websockets", "--max-size", "none"))
    result = fuzz_server(server.url, ["9.3.1"])["9.3.1"]
    assert (result.remote_close_code, result.remote_close_reason) == (1009, "too many fragments")


def test_raised_size_and_fragment_limit_pass_every_9x_case(launch: Launcher) -> None:
    """16 MiB and WEBSOCKETS_MAX_FRAGMENTS=65536: every 9.x case passes."""
    server = launch(
        peer_server_argv("websockets", "--max-size", str(RAISED_MAX_SIZE)),
        env={"WEBSOCKETS_MAX_FRAGMENTS": str(RAISED_MAX_FRAGMENTS)},
    )
    results = fuzz_server(server.url, ["9.*"])
    assert len(results) == 54
    assert [case for case, r in results.items() if not r.passed] == []


async def test_client_side_hits_the_same_limits() -> None:
    """A websockets client fails 9.1.4 on size and 9.3.1 on fragments, like the server."""
    results = await fuzz_client(["9.1.4", "9.3.1"], max_size=2**20)
    assert results["9.1.4"].remote_close_code == 1009
    assert results["9.3.1"].remote_close_reason == "too many fragments"
