"""Terminal text helpers: display width, wrapping, styling, code parsing."""

from __future__ import annotations

import argparse
import io

import pytest

from tether._cli._text import Styler, close_code, display_width, pad, wrap
from tether.knowledge import explain


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wide_characters_take_two_columns() -> None:
    """Japanese characters count two columns, ASCII one."""
    assert display_width("abc") == 3
    assert display_width("異常切断") == 8
    assert display_width("1〜5 秒") == 7


def test_pad_uses_display_width() -> None:
    """pad() aligns Japanese text by columns, not by characters."""
    assert display_width(pad("送信可否", 12)) == 12


def test_wrap_respects_width_for_japanese() -> None:
    """No wrapped line of a Japanese paragraph exceeds the width."""
    text = explain(1006, "ja").client_action
    lines = wrap(text, 40, indent="  ")
    assert len(lines) > 3
    assert all(display_width(line) <= 40 for line in lines)
    assert "".join(line.strip() for line in lines).replace(" ", "") == text.replace(" ", "")


def test_wrap_never_starts_a_line_with_closing_punctuation() -> None:
    """Kinsoku: 、。） never begin a wrapped line."""
    for code in (1006, 1012, 1002):
        for width in range(20, 60):
            for line in wrap(explain(code, "ja").meaning, width):
                assert line[0] not in "、。）」", (code, width, line)


def test_wrap_keeps_a_range_together() -> None:
    """ "1〜5" is never split across lines."""
    text = "あ" * 9 + "1〜5 秒"
    for width in range(10, 24):
        assert any("1〜5" in line for line in wrap(text, width)), width


def test_wrap_breaks_english_between_words() -> None:
    """English wraps at spaces and keeps every word whole."""
    text = explain(1012).client_action
    lines = wrap(text, 50, indent="  ")
    assert all(len(line) <= 50 for line in lines)
    assert " ".join(line.strip() for line in lines) == text


def test_styler_is_plain_when_not_a_terminal() -> None:
    """Piped output gets no escape codes."""
    assert Styler(io.StringIO()).bold("x") == "x"


def test_styler_is_bold_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal gets bold headings."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert Styler(_Terminal()).bold("x") == "\033[1mx\033[0m"


def test_styler_honours_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_COLOR turns styling off even on a terminal."""
    monkeypatch.setenv("NO_COLOR", "1")
    assert Styler(_Terminal()).bold("x") == "x"


@pytest.mark.parametrize(("text", "code"), [("1006", 1006), ("0", 0), ("65535", 65535)])
def test_close_code_accepts_16_bit_integers(text: str, code: int) -> None:
    """Decimal integers 0-65535 are close codes."""
    assert close_code(text) == code


@pytest.mark.parametrize("text", ["abc", "10.6", "0x3ee", "", "65536", "-1"])
def test_close_code_refuses_the_rest(text: str) -> None:
    """Anything else is an argparse type error (one line, exit 2)."""
    with pytest.raises(argparse.ArgumentTypeError):
        close_code(text)
