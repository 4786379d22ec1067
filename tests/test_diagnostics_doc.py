"""``docs/diagnostics.md`` states the same defaults, options and JSON fields as the code."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from tether.asyncio.chaos import FaultRecord
from tether.asyncio.probe import DEFAULT_PONG_TIMEOUT, CloseReport, PingStats, ProbeReport
from tether.cli import build_parser
from tether.idlesearch import IdleSearchConfig, IdleSearchResult

DOC = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


@pytest.fixture(scope="module")
def doc() -> str:
    """The text of the page."""
    return DOC.read_text(encoding="utf-8")


def subparser(command: str) -> argparse.ArgumentParser:
    """The argparse parser of one ``tether`` subcommand."""
    parser = build_parser(command)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]  # type: ignore[no-any-return]
    raise AssertionError(f"no subcommand {command}")


def section(doc: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same or a higher level."""
    start = doc.index(heading)
    level = heading.split(" ")[0]
    following = re.search(rf"^#{{1,{len(level)}}} ", doc[start + len(heading) :], re.MULTILINE)
    end = start + len(heading) + following.start() if following else len(doc)
    return doc[start:end]


def test_probe_defaults_match_the_code(doc: str) -> None:
    """Each default in the probe defaults table equals the parser's or the config's default."""
    rows = dict(re.findall(r"^\| `([\w-]+)` \| ([\d.]+) \| \w+ \|$", doc, flags=re.MULTILINE))
    parser = subparser("probe")
    config_defaults = {f.name: f.default for f in dataclasses.fields(IdleSearchConfig)}
    in_code: dict[str, float] = {}
    for name in rows:
        if name == "--pong-timeout":
            in_code[name] = DEFAULT_PONG_TIMEOUT  # the parser default None means "this"
        elif name.startswith("--"):
            in_code[name] = parser.get_default(name[2:].replace("-", "_"))
        else:
            in_code[name] = config_defaults[name]  # type: ignore[assignment]
    assert {k: float(v) for k, v in rows.items()} == {k: float(v) for k, v in in_code.items()}
    assert {"--pings", "--resolution", "--parallel", "max_batches"} <= set(rows)


def test_probe_json_top_level_fields_are_documented(doc: str) -> None:
    """The JSON table lists exactly the fields of ProbeReport."""
    table = section(doc, "### JSON (`--json`)")
    documented = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))
    assert documented == {f.name for f in dataclasses.fields(ProbeReport)}


def test_probe_json_nested_fields_are_documented(doc: str) -> None:
    """Every field of pings, close and idle_search is named in the JSON section."""
    table = section(doc, "### JSON (`--json`)")
    for cls in (PingStats, CloseReport, IdleSearchResult):
        for field in dataclasses.fields(cls):
            assert f"`{field.name}`" in table, f"{cls.__name__}.{field.name} undocumented"


def test_chaos_options_are_documented(doc: str) -> None:
    """Every `tether chaos` option appears on the page, and every documented one exists."""
    parser = subparser("chaos")
    options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    options -= {"--help"}
    chaos = section(doc, "## `tether chaos")
    documented = set(re.findall(r"`(--[a-z-]+)", chaos))
    assert options == documented


def test_chaos_fault_fields_are_documented(doc: str) -> None:
    """The JSON fault line names every FaultRecord field."""
    chaos = section(doc, "## `tether chaos")
    for field in dataclasses.fields(FaultRecord):
        assert f'"{field.name}"' in chaos, field.name
