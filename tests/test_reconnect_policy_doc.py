"""``docs/reconnect-policy.md`` states the same table and defaults as the code."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest

from tether.backoff import Backoff, BackoffConfig
from tether.heartbeat import Heartbeat
from tether.policy import DEFAULT_RULES, Action, Rule

DOC = Path(__file__).resolve().parents[1] / "docs" / "reconnect-policy.md"
CONFIGS: dict[str, type] = {"BackoffConfig": BackoffConfig, "Heartbeat": Heartbeat}


@pytest.fixture(scope="module")
def doc() -> str:
    """The text of the page."""
    return DOC.read_text(encoding="utf-8")


def rule_word(rule: Rule) -> str:
    """The word the page uses for ``rule``."""
    if rule.action is Action.FINAL:
        return "final"
    return rule.delay.value.replace("_", "-")


def numbers(cell: str) -> list[float]:
    """The numbers in a table cell, in order."""
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", cell)]


def test_policy_table_matches_default_rules(doc: str) -> None:
    """Every row of the page's policy table equals DEFAULT_RULES, and no row is missing."""
    rows = dict(re.findall(r"^\| (\d+(?:-\d+)?) \| ([a-z-]+) \|", doc, flags=re.MULTILINE))
    expected = {
        str(key) if isinstance(key, int) else f"{key[0]}-{key[1]}": rule_word(rule)
        for key, rule in DEFAULT_RULES.items()
    }
    assert rows == expected


def test_defaults_table_matches_the_code(doc: str) -> None:
    """Each ``Class.field`` default in the table equals the dataclass default, and all appear."""
    documented: dict[str, object] = {}
    pattern = r"^\| `(\w+)\.(\w+)` \| ([^|]+?) \|"
    for owner, field, cell in re.findall(pattern, doc, flags=re.MULTILINE):
        values = numbers(cell)
        value: object = None if cell == "None" else values[0] if len(values) == 1 else tuple(values)
        documented[f"{owner}.{field}"] = value
    in_code = {
        f"{name}.{field.name}": field.default
        for name, cls in CONFIGS.items()
        for field in dataclasses.fields(cls)
    }
    assert documented == in_code


def test_backoff_window_table_matches_ceiling(doc: str) -> None:
    """The page's table of window bounds per failure count equals ``Backoff.ceiling``."""
    rows = re.findall(r"^\| (\d+) \| (\d+(?:\.\d+)?) s \|$", doc, flags=re.MULTILINE)
    assert len(rows) >= 7
    backoff = Backoff(rng=random.Random(0))
    for n, bound in rows:
        assert backoff.ceiling(int(n)) == float(bound), n


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (
            r"defaults \(base ([\d.]+) s, factor ([\d.]+), cap ([\d.]+) s\)",
            (BackoffConfig().base, BackoffConfig().factor, BackoffConfig().cap),
        ),
        (r"\(([\d.]+) s by default\)", (BackoffConfig().stability_period,)),
        (r"uniform in ([\d.]+)-([\d.]+) s \(common", BackoffConfig().restart_window),
        (r"with a floor of ([\d.]+) s", (BackoffConfig().try_again_floor,)),
        (
            r"every `interval` seconds \(([\d.]+) s:.*?within `timeout` seconds \(([\d.]+) s\)",
            (Heartbeat().interval, Heartbeat().timeout),
        ),
        (r"With the defaults: ([\d.]+) s\.", (Heartbeat().detection_bound,)),
    ],
)
def test_prose_numbers_match_the_code(doc: str, pattern: str, expected: tuple[float, ...]) -> None:
    """Numbers quoted in the prose equal the defaults in the code."""
    found = re.search(pattern, doc, flags=re.DOTALL)
    assert found is not None, pattern
    assert tuple(float(g) for g in found.groups()) == expected
