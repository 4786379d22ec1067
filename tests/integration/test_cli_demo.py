"""``tether demo --json`` end to end: real server processes, real tether clients, real faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_demo_json_summary_shows_1012_then_1006_with_nothing_lost() -> None:
    """Every client back and resumed in both phases (1012, then 1006): 0 missing, 0 duplicated."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--json", "--clients", "10",
         "--drain-window", "1", "--downtime", "1.5", "--seed", "7"],
        capture_output=True, text=True, timeout=80,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert elapsed < 60
    assert summary["duration_s"] < 60
    restart, crash = summary["phases"]

    assert restart["name"] == "planned_restart"
    assert restart["codes"] == {"1012": 10}
    assert restart["reconnected"] == restart["disconnected"] == 10
    # DESIGN.md §4: after goaway + 1012 the client waits a random time from the server's
    # retry_ms hint, [retry_ms/5, retry_ms] = 1-5 s with tether serve's 5000; no failure.
    assert 1.0 <= restart["first_delay_s"]["min"] <= restart["first_delay_s"]["max"] <= 5.0
    assert restart["attempts"] == 10  # the replacement was there: every first try succeeded
    assert restart["all_back_s"] is not None
    assert restart["all_back_s"] <= 1.0 + 5.0 + 2.0

    assert crash["name"] == "crash"
    assert crash["codes"] == {"1006": 10}
    assert crash["reconnected"] == crash["disconnected"] == 10
    # Full-jitter backoff, base 0.5 s: the first delay after 1006 is below 0.5 s ...
    assert crash["first_delay_s"]["max"] <= 0.5
    # ... and while the port is dead the attempts fail and the delays grow.
    assert crash["attempts"] > 10
    assert crash["delay_s"]["max"] > 0.5
    assert crash["all_back_s"] is not None
    assert crash["all_back_s"] >= 1.5  # nobody is back before the server is

    assert summary["store"].startswith("sqlite")
    for phase in (restart, crash):
        assert phase["received"] > 0
        # tether.v1 on the SQLite store: every session resumed in the new process and
        # every message the old one sent arrived once, in order.
        assert phase["resumed"] == 10
        assert phase["sessions_lost"] == {}
        assert phase["missing"] == 0
        assert phase["duplicates"] == 0
        assert phase["out_of_order"] == 0
        # Ticks during which no server sent anything (the gap) are not counted as missing.
        assert phase["skipped_ticks"] > 0


def _demo_servers() -> list[int]:
    """Pids of `tether serve` processes using a demo's temporary store."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and any(b"tether-demo-store-" in arg for arg in cmdline):
            pids.append(int(entry.name))
    return pids


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("after", "signals"),
    [(1.0, 1), (4.5, 1), (3.0, 2)],
    ids=["before-the-restart", "after-the-handover", "twice"],
)
def test_sigterm_stops_the_demo_and_its_servers(after: float, signals: int) -> None:
    """SIGTERM (a CI timeout, say) cleans up as Ctrl-C does: no server left, exit 143.

    (Before, the demo died at once and its `tether serve` processes, the replacement
    of a handover included, went on serving, re-parented to init.)
    """
    assert _demo_servers() == []  # (nothing of an earlier run in the way)
    demo = subprocess.Popen(
        [sys.executable, "-m", "tether", "demo", "--clients", "3", "--no-live"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(after)
        for _ in range(signals):  # (a second one must not cut the clean-up short)
            demo.send_signal(signal.SIGTERM)
            time.sleep(0.02)
        _, err = demo.communicate(timeout=30)
        assert demo.returncode == 143, err
        assert "stopped; server log:" in err
        Path(err.rsplit("server log:", 1)[1].strip()).unlink()  # kept for the user, not us
        # A server left behind would show at once (its store is on its command line);
        # the ones killed may take a moment to leave /proc.
        for _ in range(100):  # bounded: 5 s
            if not _demo_servers():
                break
            time.sleep(0.05)
        assert _demo_servers() == []
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in _demo_servers():  # (a failing run must not leave them behind)
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("option", [["--downtime", "nan"], ["--drain-window", "inf"]])
def test_non_finite_timings_are_usage_errors(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """nan/inf exit 2 with one line (before: a demo that hung, or ran 47 s and failed)."""
    from tether.cli import main

    assert main(["demo", *option]) == 2
    assert capsys.readouterr().err.count("\n") == 1
