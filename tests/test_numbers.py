"""tether._numbers: what every "finite number of seconds" check takes for a number.

And the checks built on it: a string, a bool or None given where seconds (or a count)
are expected is refused with the setting's own ConfigurationError, never a TypeError
from a comparison, and never taken as 1 (True) or 0 (False).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

from tether._numbers import is_finite_number
from tether.asyncio.server import _check_close_timeout
from tether.backoff import BackoffConfig
from tether.drain import check_window, plan_drain
from tether.exceptions import ConfigurationError
from tether.faults import FaultPlan
from tether.heartbeat import Heartbeat
from tether.idlesearch import IdleSearchConfig
from tether.resume import ResumeConfig
from tether.stores._checks import check_seconds


@pytest.mark.parametrize("value", [0, 1, -1, 0.0, 2.5, -3.25, 10**30, 1e308])
def test_finite_ints_and_floats_are_numbers(value: float) -> None:
    assert is_finite_number(value)


@pytest.mark.parametrize(
    "value",
    [
        True, False, math.inf, -math.inf, math.nan, "1", b"1", None, [1], Fraction(1, 2), 1j,
        10**400,  # too large for a float: not finite, and no OverflowError out of the check
    ],
)  # fmt: skip
def test_everything_else_is_not(value: object) -> None:
    assert not is_finite_number(value)


BadSetting = Callable[[Any], object]

#: (setting, how to build it with a value, what its error says)
CHECKS: list[tuple[str, BadSetting, str]] = [
    ("drain window", check_window, "drain window must be a finite number of seconds >= 0"),
    ("plan_drain", lambda v: plan_drain(3, v), "drain window must be a finite number"),
    ("max_idle", lambda v: IdleSearchConfig(max_idle=v), "max_idle must be a finite number"),
    (
        "first_hold",
        lambda v: IdleSearchConfig(max_idle=10, first_hold=v),
        "first_hold must be a finite number",
    ),
    ("idle_timeout", lambda v: FaultPlan(idle_timeout=v), "idle_timeout must be a finite number"),
    ("kill_after", lambda v: FaultPlan(kill_after=v), "kill_after must be a finite number"),
    ("latency_ms", lambda v: FaultPlan(latency_ms=v), "latency_ms must be a finite number"),
    ("kill_random", lambda v: FaultPlan(kill_random=v), "kill_random is a probability"),
    ("heartbeat", lambda v: Heartbeat(interval=v), "heartbeat interval must be a finite"),
    ("backoff", lambda v: BackoffConfig(base=v), "base must be a finite number of seconds"),
    ("resume", lambda v: ResumeConfig(welcome_timeout=v), "welcome_timeout must be a finite"),
    (
        "store timeout",
        lambda v: check_seconds(v, "timeout", positive=True),
        "timeout must be a (finite )?number of seconds",
    ),
    ("close_timeout", _check_close_timeout, "close_timeout must be a finite number of seconds"),
]


@pytest.mark.parametrize(
    "value", ["1", True, b"1", [1], 10**400], ids=["str", "bool", "bytes", "list", "huge"]
)
@pytest.mark.parametrize(("setting", "build", "says"), CHECKS, ids=[c[0] for c in CHECKS])
def test_a_setting_that_is_not_a_number_is_refused_in_its_own_words(
    setting: str, build: BadSetting, says: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=says):
        build(value)


@pytest.mark.parametrize(("setting", "build", "says"), CHECKS, ids=[c[0] for c in CHECKS])
def test_the_same_settings_take_a_plain_number(setting: str, build: BadSetting, says: str) -> None:
    build(0.5)  # 0.5 is valid for every one of them (and a probability)
    build(1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("parallel", True), ("parallel", "4"), ("parallel", 2.5), ("max_batches", "12")],
)
def test_idle_search_counts_are_integers(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"{field} must be an integer >= 1"):
        IdleSearchConfig(max_idle=10, **{field: value})  # type: ignore[arg-type]
