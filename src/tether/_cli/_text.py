"""Terminal text helpers shared by ``codes``, ``explain`` and ``compare``.

Output is plain text; headings are bold only when stdout is a terminal and
``NO_COLOR`` is unset, so piped output never carries escape codes. Wrapping
counts display columns (East Asian wide characters take two) and never starts
a line with Japanese closing punctuation, so Japanese paragraphs wrap cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import unicodedata
from typing import Any, TextIO

from ..closecodes import MAX_CLOSE_CODE
from ..knowledge import LANGUAGES

__all__ = [
    "Styler",
    "add_common_options",
    "close_code",
    "display_width",
    "output_width",
    "pad",
    "print_json",
    "wrap",
]

# Characters that may not begin a line (kinsoku shori), and ones that may not end one.
_NO_LINE_START = frozenset("、。，．・：；？！）」』】〕〉》ー〜…")
_NO_LINE_END = frozenset("（「『【〔〈《〜")  # "1〜5" stays on one line


def close_code(text: str) -> int:
    """argparse ``type=`` for a close code: an integer in 0-65535.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not such an integer (argparse turns
            it into a one-line error and exit status 2).
    """
    # ASCII digits only: int() also takes "1_000", "１０１２" and other scripts' digits,
    # which are not what anyone types for a close code (a paste gone wrong).
    digits = text.strip().removeprefix("-")
    try:
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(text)
        code = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a close code (an integer 0-{MAX_CLOSE_CODE})"
        ) from None
    if not 0 <= code <= MAX_CLOSE_CODE:
        raise argparse.ArgumentTypeError(
            f"close code {code} is outside 0-{MAX_CLOSE_CODE} (close codes are 16-bit)"
        )
    return code


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` and ``--lang`` to a subcommand."""
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--lang", choices=LANGUAGES, default=LANGUAGES[0], help="language of the texts"
    )


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Print ``data`` as indented UTF-8 JSON (Japanese stays readable, not escaped)."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide and full-width characters count two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def pad(text: str, width: int) -> str:
    """Left-align ``text`` in ``width`` display columns."""
    return text + " " * max(0, width - display_width(text))


def output_width(stream: TextIO | None = None) -> int:
    """Width to wrap at: the terminal's (at most 100 columns), 80 when not a terminal."""
    out = sys.stdout if stream is None else stream
    if out.isatty():
        return max(40, min(100, shutil.get_terminal_size((80, 24)).columns))
    return 80


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Split ``text`` into unbreakable pieces, each with "was preceded by a space"."""
    tokens: list[list[Any]] = []
    word = ""
    space = False
    glue = False  # the previous piece ends with an opening bracket: no break after it

    def push(piece: str) -> None:
        nonlocal space, glue
        if tokens and (glue or (piece[0] in _NO_LINE_START and not space)):
            tokens[-1][0] += (" " if space else "") + piece
        else:
            tokens.append([piece, space])
        space = False
        glue = piece[-1] in _NO_LINE_END

    for ch in text:
        if ch == " ":
            if word:
                push(word)
                word = ""
            space = True
        elif display_width(ch) == 2:
            if word:
                push(word)
                word = ""
            push(ch)
        else:
            word += ch
    if word:
        push(word)
    return [(str(piece), bool(spaced)) for piece, spaced in tokens]


def wrap(text: str, width: int, indent: str = "", subsequent: str | None = None) -> list[str]:
    """Wrap ``text`` to ``width`` display columns, breaking between words or wide characters.

    Args:
        text: one paragraph.
        width: total columns, indentation included.
        indent: prefix of the first line.
        subsequent: prefix of the other lines (default: ``indent``).
    """
    rest = indent if subsequent is None else subsequent
    lines: list[str] = []
    line = indent
    empty = True
    for piece, spaced in _tokens(text):
        joined = (" " if spaced and not empty else "") + piece
        if not empty and display_width(line + joined) > width:
            lines.append(line)
            line, empty = rest + piece, False
        else:
            line, empty = line + joined, False
    if not empty:
        lines.append(line)
    return lines


class Styler:
    """Bold headings on a terminal, plain text otherwise.

    Args:
        stream: where the output goes (default ``sys.stdout``).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        out = sys.stdout if stream is None else stream
        self.enabled = out.isatty() and not os.environ.get("NO_COLOR")

    def bold(self, text: str) -> str:
        """``text`` in bold when styling is enabled."""
        return f"\033[1m{text}\033[0m" if self.enabled else text
