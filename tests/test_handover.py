"""Handover helpers (``tether/asyncio/handover.py``): health probe and replacement start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.eventually import eventually

import tether
from tether.asyncio import handover
from tether.asyncio.apps import echo
from tether.asyncio.handover import HandoverFailed, health_check, probe_host, start_replacement


@pytest.mark.parametrize(
    ("bound", "probed"),
    [(None, "127.0.0.1"), ("", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "::1"),
     ("127.0.0.5", "127.0.0.5")],
)  # fmt: skip
def test_probe_host_reaches_the_bound_address(bound: str | None, probed: str) -> None:
    """A wildcard bind is probed on loopback; a specific address on itself."""
    assert probe_host(bound) == probed


@pytest.mark.integration
@pytest.mark.timeout(15)
async def test_health_check_reports_status_and_pid() -> None:
    """health_check returns the HTTP status and the JSON body of /healthz."""
    async with tether.serve(echo, "127.0.0.1", 0, heartbeat=None, drain_window=0.0) as server:
        status, body = await health_check("127.0.0.1", server.port)
    assert status == 200
    assert body["pid"] == os.getpid()


@pytest.mark.integration
@pytest.mark.timeout(15)
async def test_health_check_on_a_closed_port_raises_oserror() -> None:
    """Nothing listening: the probe raises OSError (refused), it does not hang."""
    async with tether.serve(echo, "127.0.0.1", 0, heartbeat=None, drain_window=0.0) as server:
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        await health_check("127.0.0.1", port)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_replacement_that_exits_fails_the_handover() -> None:
    """A replacement that exits (bad arguments) raises HandoverFailed instead of draining."""
    with pytest.raises(HandoverFailed, match="exited with 2"):
        await start_replacement(["serve", "--shutdown-code", "1006"], "127.0.0.1", 1, timeout=20)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_replacement_never_healthy_is_killed() -> None:
    """A replacement never seen healthy on the shared port is killed; the handover fails."""
    async with (
        tether.serve(echo, "127.0.0.1", 0, heartbeat=None, drain_window=0.0) as ours,
        tether.serve(echo, "127.0.0.1", 0, heartbeat=None, drain_window=0.0) as elsewhere,
    ):
        # The replacement serves on another port, so /healthz on ours never shows its pid.
        other = str(elsewhere.port)
        await elsewhere.shutdown(drain_window=0.0)
        with pytest.raises(HandoverFailed, match="not healthy within 3 s"):
            await start_replacement(["serve", "--port", other], "127.0.0.1", ours.port, timeout=3)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The replacement processes start_replacement() starts; any left running is killed."""
    processes: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = real_popen(*args, **kwargs)
        processes.append(process)
        return process

    monkeypatch.setattr(handover.subprocess, "Popen", recording_popen)
    yield processes
    for process in processes:  # (a failing run must not leave one behind)
        if process.poll() is None:
            process.kill()
            process.wait(5)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_cancelled_handover_kills_its_replacement(
    started: list[subprocess.Popen[bytes]],
) -> None:
    """Cancelled before the replacement is healthy (a SIGTERM came first): it is killed."""
    async with tether.serve(echo, "127.0.0.1", 0, heartbeat=None, drain_window=0.0) as ours:
        # A replacement that will never show its pid on our port: it stays "starting".
        waiting = asyncio.ensure_future(
            start_replacement(["serve", "--port", "0"], "127.0.0.1", ours.port, timeout=20)
        )
        await eventually(lambda: bool(started), 5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    (process,) = started
    assert process.poll() is not None  # killed and reaped, not left running


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_replacement_answering_with_its_pid_but_not_200_is_not_healthy(
    monkeypatch: pytest.MonkeyPatch, started: list[subprocess.Popen[bytes]]
) -> None:
    """A /healthz that shows the replacement's pid with a 503 is not healthy: it is killed."""
    asked: list[tuple[str, int]] = []

    async def unhealthy(
        host: str, port: int, *, timeout: float = 1.0, source: str | None = None
    ) -> tuple[int, dict[str, object]]:
        asked.append((host, port))
        return 503, {"pid": started[-1].pid}

    monkeypatch.setattr(handover, "health_check", unhealthy)
    with pytest.raises(HandoverFailed, match="not healthy within 2 s"):
        await start_replacement(
            ["serve", "--host", "127.0.0.1", "--port", "0"], "127.0.0.1", 1, timeout=2
        )
    assert asked  # the probe saw its pid, only with the wrong status
    (process,) = started
    assert process.poll() is not None  # killed and reaped, not left running


def test_a_replacement_killed_by_a_signal_is_reported_as_such() -> None:
    """(Before: "exited with -1" for a replacement that SIGHUP killed.)"""
    assert handover._ended(-1) == "was killed by SIGHUP"
    assert handover._ended(-9) == "was killed by SIGKILL"
    assert handover._ended(3) == "exited with 3"


def test_the_replacement_starts_with_sighup_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP sent to the replacement as soon as it is named in the log is held until
    its handlers are in, not its death: it is started with SIGHUP blocked (the mask
    survives exec), and the parent's own mask is left as it was."""
    real_popen = subprocess.Popen
    masks: list[int] = []

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = real_popen(*args, **kwargs)
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        blocked = next(line for line in status if line.startswith("SigBlk"))
        masks.append(int(blocked.split()[1], 16))
        return process

    monkeypatch.setattr(handover.subprocess, "Popen", recording_popen)
    with pytest.raises(HandoverFailed, match="exited with 2"):
        asyncio.run(
            start_replacement(["serve", "--shutdown-code", "1006"], "127.0.0.1", 1, timeout=20)
        )
    assert masks
    assert masks[0] & (1 << (signal.SIGHUP - 1))
    assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
