"""Smoke tests for ``tether bench``'s command line (never a performance test)."""

from __future__ import annotations

import sys

import pytest

from tether.cli import main


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """`tether bench --help` prints the scenarios and exits 0."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for scenario in ("throughput", "storm", "detect", "memory", "resume", "all"):
        assert scenario in out


def test_unknown_scenario_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown scenario is a usage error: exit status 2."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nonsense"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--runs", "--connections"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_count_exits_two(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--runs and --connections accept only positive integers (exit status 2 otherwise)."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "throughput", option, value])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "memory", "--only", "tether-v2"], "no row 'tether-v2' in memory"),
        (["bench", "--only", "tether"], "--only applies to"),
        (["bench", "detect", "--only", "tether"], "--only applies to"),
        (["bench", "throughput", "--only", ","], "--only"),
        (["bench", "memory", "--store", "memory"], "--store applies to storm"),
    ],
)
def test_bad_only_exits_two(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--only names rows of one scenario that has rows, --store is storm's; else exit 2."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_row_only_accepts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --only help names the rows the harness knows (it cannot import them)."""
    from benchmarks.runner import ROWS

    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap lines at hyphens
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for scenario, rows in ROWS.items():
        assert f"{scenario}: {', '.join(rows)}" in out


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_sigterm_stops_the_run_and_its_peer_processes() -> None:
    """SIGTERM (what `timeout` sends) cleans up as Ctrl-C does: exit 143, no peer left.

    (Before, the process died at once and its server and client processes, re-parented
    to init, kept running; the detect scenario left its network namespace.)
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.support.procs import children_of

    bench = subprocess.Popen(
        [sys.executable, "-m", "tether", "bench", "throughput", "--only", "tether", "--runs", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 30
        while not (peers := children_of(bench.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)  # (polling another process: no event to wait on)
        assert peers, "the benchmark started no peer process"
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=30)
        assert bench.returncode == 143
        assert b"stopped (SIGTERM)" in err
        assert [pid for pid in peers if os.path.exists(f"/proc/{pid}")] == []
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(5)


@pytest.mark.parametrize("scenario", ["all", "storm"])
def test_a_bad_store_url_exits_two_before_anything_runs(
    scenario: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `all`, a bad --store was found only when the storm began, minutes in."""
    import benchmarks.runner

    def must_not_run(*args: object, **kwargs: object) -> int:
        raise AssertionError("a scenario ran with a bad --store")

    monkeypatch.setattr(benchmarks.runner, "run", must_not_run)
    assert main(["bench", scenario, "--store", "redis://127.0.0.1:0/1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "tether bench: error: --store: bad Redis URL 'redis://127.0.0.1:0/1':"
        " port 0 (redis-py would use 6379)\n"
    )


def test_loop_uvloop_without_the_package_exits_two_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--loop uvloop` where uvloop cannot be imported: one line, exit 2, nothing measured."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert main(["bench", "storm", "--loop", "uvloop"]) == 2
    err = capsys.readouterr().err
    assert "tether bench: error: --loop uvloop needs the uvloop package" in err
    assert "storm:" not in err
