"""``tether demo --json`` end to end: real server processes, real tether clients, real faults."""

from __future__ import annotations

import json
import subprocess
import sys
import time

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
