"""Smoke tests for ``tether bench``'s command line (never a performance test)."""

from __future__ import annotations

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
