"""``tether demo``'s argument checks (the demo itself runs in tests/integration)."""

from __future__ import annotations

import pytest

from tether.cli import main


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--drain-window", "-1"], "--drain-window must be a finite number >= 0"),
        (["--drain-window", "inf"], "--drain-window must be a finite number >= 0"),
        (["--ticker-interval", "0"], "--ticker-interval must be a finite number > 0"),
        (["--downtime", "nan"], "--downtime must be a finite number >= 0"),
        (["--clients", "0"], "--clients must be 1-500"),
    ],
)
def test_a_bad_value_names_its_flag(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "intervals must be finite and positive" for all three, though 0 is a
    valid drain window and downtime."""
    assert main(["demo", *argv]) == 2
    assert capsys.readouterr().err == f"tether demo: error: {line}\n"


def test_help_has_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """The help is the module's docstring: no reStructuredText left in it."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "planned restart:" in out
    assert "``" not in out
    assert "**" not in out
