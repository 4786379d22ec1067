"""The ``tether codes``, ``tether explain`` and ``tether compare`` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tether.cli import main
from tether.closecodes import REGISTRY
from tether.knowledge import catalog
from tether.policy import ReconnectPolicy

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
ESCAPE = "\x1b"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``tether argv`` in-process; return (status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_bad(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``tether argv`` that must fail during argument parsing."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int)
    return code, out, err


# --- explain ---------------------------------------------------------------------------------


def test_explain_1006_json_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """explain 1006 --json: never sent, reconnect with backoff, and the remedies are there."""
    status, out, err = run(capsys, "explain", "1006", "--json")
    data = json.loads(out)
    assert (status, err) == (0, "")
    assert data["code"] == 1006
    assert data["name"] == "Abnormal Closure"
    assert data["may_send"] is False
    assert data["sender"] == "none"
    assert data["category"] == "reserved"
    assert data["policy"] == {"action": "reconnect", "delay": "backoff", "source": "1006"}
    remedies = data["client_action"]
    for word in ("backoff", "ping", "idle"):
        assert word in remedies, word
    assert "backoff" in data["tether_default"]
    assert any("idle" in cause for cause in data["causes"])


def test_explain_human_page_has_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    """explain 1006 prints the summary line and all six sections, plain when piped."""
    status, out, _ = run(capsys, "explain", "1006")
    assert status == 0
    assert out.startswith("1006 Abnormal Closure: the connection dropped without a Close frame")
    for heading in (
        "Meaning",
        "When you see it",
        "What to do as a client",
        "What to do as a server",
        "What tether does by default",
        "When to use or expect it",
    ):
        assert f"\n{heading}\n" in out, heading
    assert "May be sent: no (never sent in a Close frame)" in out
    assert ESCAPE not in out


def test_explain_wraps_at_80_columns_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    """Piped output wraps paragraphs at 80 display columns, Japanese included."""
    from tether._cli._text import display_width

    for lang in ("en", "ja"):
        _, out, _ = run(capsys, "explain", "1006", "--lang", lang)
        assert max(display_width(line) for line in out.splitlines()) <= 80, lang


def test_explain_range_code(capsys: pytest.CaptureFixture[str]) -> None:
    """A code in an unregistered range is explained by its range, keeping its number."""
    _, out, _ = run(capsys, "explain", "4500", "--json")
    data = json.loads(out)
    assert data["code"] == 4500
    assert data["key"] == "4000-4999"
    assert data["policy"]["action"] == "final"


def test_explain_a_tether_code_adds_what_tether_means(capsys: pytest.CaptureFixture[str]) -> None:
    """explain 4204 keeps the range's text and adds tether.v1's meaning, in both languages,
    within 80 columns; 4205 (no tether meaning) has no such section."""
    from tether._cli._text import display_width

    _, out, _ = run(capsys, "explain", "4204")
    assert out.startswith("4204 Private Use (4000-4999): tether.v1 SUPERSEDED: ")
    assert "\nIf the peer speaks tether.v1 (tether's session resumption)\n" in out
    assert "\n  - SUPERSEDED: " in out
    assert "\nMeaning\n  Codes 4000–4999 are for private use" in out
    _, out, _ = run(capsys, "explain", "4901", "--lang", "ja")
    assert "相手が tether.v1" in out
    assert "TAKEN_OVER: " in out
    assert max(display_width(line) for line in out.splitlines()) <= 80
    _, out, _ = run(capsys, "explain", "4205")
    assert "tether.v1" not in out
    _, out, _ = run(capsys, "compare", "4201", "4205")
    assert "If the peer speaks tether.v1 (tether's session resumption)" in out
    assert out.count("SEQUENCE_GAP") == 2  # in the summary and the added paragraph


def test_explain_in_japanese(capsys: pytest.CaptureFixture[str]) -> None:
    """explain 1012 --lang ja prints Japanese headings and the 1〜5 秒 / 5〜30 秒 fact."""
    _, out, _ = run(capsys, "explain", "1012", "--lang", "ja")
    assert out.startswith("1012 Service Restart（サービス再起動）")
    assert "クライアント側の対処" in out
    assert "1〜5 秒" in out
    assert "5〜30 秒" in out


# --- compare ---------------------------------------------------------------------------------


def test_compare_1006_1012_in_japanese(capsys: pytest.CaptureFixture[str]) -> None:
    """compare 1006 1012 --lang ja: both codes, every section, and the 1〜5 秒 vs 5〜30 秒 fact."""
    status, out, err = run(capsys, "compare", "1006", "1012", "--lang", "ja")
    assert (status, err) == (0, "")
    assert out.startswith(
        "1006 Abnormal Closure（異常切断） と 1012 Service Restart（サービス再起動）"
    )
    for heading in (
        "それぞれの意味",
        "それぞれが発生する場面",
        "それぞれの対処",
        "tether の動作",
        "主な違い",
        "使い分け",
    ):
        assert f"\n{heading}\n" in out, heading
    assert "1〜5 秒" in out
    assert "5〜30 秒" in out
    assert "IANA" in out
    assert len(JAPANESE.findall(out)) > 500
    assert ESCAPE not in out


def test_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    """compare --json has both explanations, the differences and the guidance."""
    _, out, _ = run(capsys, "compare", "1006", "1012", "--json")
    data = json.loads(out)
    assert data["a"]["code"] == 1006
    assert data["b"]["code"] == 1012
    assert data["b"]["may_send"] is True
    assert any("1–5 s" in line for line in data["differences"])
    assert [line[:5] for line in data["guidance"]] == ["1006:", "1012:"]
    assert data["lang"] == "en"


def test_compare_json_in_japanese_keeps_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    """JSON output is UTF-8, not \\u escapes, so Japanese stays readable."""
    _, out, _ = run(capsys, "compare", "1006", "1012", "--json", "--lang", "ja")
    assert "異常切断" in out
    assert json.loads(out)["lang"] == "ja"


# --- codes -----------------------------------------------------------------------------------


def test_codes_json_lists_every_code_and_range(capsys: pytest.CaptureFixture[str]) -> None:
    """codes --json has one row per registered code and range, with may-send and defaults."""
    status, out, _ = run(capsys, "codes", "--json")
    data = json.loads(out)
    assert status == 0
    rows = {row["key"]: row for row in data["codes"]}
    assert list(rows) == [info.key for info in REGISTRY]
    for info in REGISTRY:
        row = rows[info.key]
        assert (row["low"], row["high"]) == (info.low, info.high)
        assert row["may_send"] is info.may_send
        assert row["sender"] == info.sender.value
        decision = ReconnectPolicy().decide(info.low)
        assert row["policy"][0]["action"] == decision.rule.action.value
    assert rows["1006"]["may_send"] is False
    assert rows["1012"]["tether_default"] == "reconnect after 1–5 s"
    assert [seg["source"] for seg in rows["3000-3999"]["policy"]] == ["3000-3499", "3500-3999"]


def test_codes_table_has_a_row_per_entry(capsys: pytest.CaptureFixture[str]) -> None:
    """The human table has one line starting with each key, plus the header."""
    _, out, _ = run(capsys, "codes")
    lines = out.splitlines()
    assert any(line.startswith("Code") and "May be sent" in line for line in lines)
    for row in catalog():
        assert any(line.startswith(f"{row.key} ") for line in lines), row.key
    assert ESCAPE not in out


def test_codes_table_in_japanese(capsys: pytest.CaptureFixture[str]) -> None:
    """codes --lang ja localises the headings and the default column."""
    _, out, _ = run(capsys, "codes", "--lang", "ja")
    assert "送信可否" in out
    assert "1〜5 秒後に再接続" in out


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "99999"], "close code 99999 is outside 0-65535"),
        (["explain", "abc"], "'abc' is not a close code"),
        (["compare", "1006"], "required: CODE"),
        (["compare", "1006", "abc"], "'abc' is not a close code"),
        (["explain", "-1"], "close code -1 is outside 0-65535"),
        # int() takes these; nobody types them for a close code
        (["explain", "１０１２"], "'１０１２' is not a close code"),
        (["explain", "1_000"], "'1_000' is not a close code"),
        (["compare", "٣٠٠٠", "1006"], "'٣٠٠٠' is not a close code"),
        (["explain", "1006", "--lang", "fr"], "invalid choice: 'fr'"),
        (["codes", "--lang", "de"], "invalid choice: 'de'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Bad input: exit status 2, one error line on stderr, nothing on stdout, no traceback."""
    status, out, err = run_bad(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("tether")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [["explain", "99999"], ["explain", "abc"], ["compare", "1006"]])
def test_bad_input_as_a_real_process(argv: list[str]) -> None:
    """``python -m tether`` with bad input exits 2 with a single stderr line."""
    done = subprocess.run(
        [sys.executable, "-m", "tether", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "error" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(60)
def test_piped_output_is_plain_utf8() -> None:
    """As a real piped process, output has no escape codes and Japanese survives."""
    done = subprocess.run(
        [sys.executable, "-m", "tether", "compare", "1006", "1012", "--lang", "ja"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    out = done.stdout.decode("utf-8")
    assert ESCAPE not in out
    assert "5〜30 秒" in out


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["compare", "1000", "1001", "1002"],
            "tether compare: error: unrecognized arguments: 1002",
        ),
        (["explain", "1006", "--bogus"], "tether explain: error: unrecognized arguments: --bogus"),
        (["--bogus"], "tether: error: unrecognized arguments: --bogus"),
    ],
)
def test_an_unknown_argument_is_reported_by_its_command(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse reports a subcommand's stray argument from the top parser ("tether:")."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == line + "\n"
