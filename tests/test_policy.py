"""Tests for ``tether.policy``: every row of DESIGN.md §4 and the override rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.closecodes import MAX_CLOSE_CODE
from tether.exceptions import ConfigurationError
from tether.policy import (
    CONNECT_FAILED,
    DEFAULT_RULES,
    Action,
    Decision,
    DelayRule,
    ReconnectPolicy,
    Rule,
)

BACKOFF = Rule.reconnect(DelayRule.BACKOFF)
RESTART = Rule.reconnect(DelayRule.RESTART)
TRY_AGAIN = Rule.reconnect(DelayRule.TRY_AGAIN_LATER)
FINAL = Rule.final()


@pytest.fixture
def policy() -> ReconnectPolicy:
    """The default policy."""
    return ReconnectPolicy()


def test_1000_is_final(policy: ReconnectPolicy) -> None:
    """1000 from the server: the server ended the session, no reconnect."""
    assert policy.decide(1000) == Decision(1000, FINAL, "1000")


@pytest.mark.parametrize("code", [1001, 1011, 1014, 1005])
def test_backoff_codes(policy: ReconnectPolicy, code: int) -> None:
    """1001, 1011, 1014 and 1005 reconnect with backoff."""
    assert policy.decide(code) == Decision(code, BACKOFF, str(code))


def test_1006_backs_off(policy: ReconnectPolicy) -> None:
    """1006 (no Close frame) reconnects with exponential backoff."""
    assert policy.decide(1006) == Decision(1006, BACKOFF, "1006")


def test_no_close_frame_and_connect_failure_follow_1006(policy: ReconnectPolicy) -> None:
    """``None`` (no Close frame, or a failed connect) is decided as 1006."""
    assert CONNECT_FAILED == 1006
    assert policy.decide(None) == Decision(1006, BACKOFF, "1006")
    assert policy.decide(CONNECT_FAILED) == policy.decide(None)


def test_1012_uses_the_restart_rule(policy: ReconnectPolicy) -> None:
    """1012 Service Restart reconnects after the short restart window, not backoff."""
    assert policy.decide(1012) == Decision(1012, RESTART, "1012")


def test_1013_uses_the_try_again_rule(policy: ReconnectPolicy) -> None:
    """1013 Try Again Later reconnects with backoff above a floor."""
    assert policy.decide(1013) == Decision(1013, TRY_AGAIN, "1013")


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1009, 1010, 1015])
def test_final_codes(policy: ReconnectPolicy, code: int) -> None:
    """Codes where reconnecting would repeat the error are final."""
    assert policy.decide(code) == Decision(code, FINAL, str(code))


@pytest.mark.parametrize(
    ("code", "source"),
    [(3500, "3500-3999"), (3999, "3500-3999"), (4500, "4500-4999"), (4999, "4500-4999")],
)
def test_upper_halves_of_3xxx_4xxx_are_final(
    policy: ReconnectPolicy, code: int, source: str
) -> None:
    """3500-3999 and 4500-4999 are final."""
    assert policy.decide(code) == Decision(code, FINAL, source)


@pytest.mark.parametrize(
    ("code", "source"),
    [
        (3000, "3000-3499"),
        (3003, "3000-3499"),
        (3499, "3000-3499"),
        (4000, "4000-4499"),
        (4499, "4000-4499"),
    ],
)
def test_lower_halves_of_3xxx_4xxx_back_off(
    policy: ReconnectPolicy, code: int, source: str
) -> None:
    """Other 3000-3499 and 4000-4499 codes reconnect with backoff."""
    assert policy.decide(code) == Decision(code, BACKOFF, source)


@pytest.mark.parametrize("code", [0, 999, 1004, 1016, 2999, 5000, MAX_CLOSE_CODE])
def test_codes_nobody_may_send_are_final(policy: ReconnectPolicy, code: int) -> None:
    """A peer sending an unsendable code is broken (the link failed with 1002): final."""
    assert policy.decide(code).rule == FINAL


@given(st.integers(min_value=0, max_value=MAX_CLOSE_CODE))
def test_decide_never_raises_for_16_bit_codes(code: int) -> None:
    """Every 16-bit code gets a decision from a row of the default table."""
    decision = ReconnectPolicy().decide(code)
    assert decision.code == code
    assert decision.source != "fallback"


@pytest.mark.parametrize("value", [-1, MAX_CLOSE_CODE + 1, "1006", 1006.0, True])
def test_decide_refuses_non_codes(policy: ReconnectPolicy, value: object) -> None:
    """``decide`` raises ``ConfigurationError`` for anything but None or an int in 0-65535."""
    with pytest.raises(ConfigurationError):
        policy.decide(value)  # type: ignore[arg-type]


def test_decision_reconnect_flag(policy: ReconnectPolicy) -> None:
    """``Decision.reconnect`` is True exactly for reconnecting rules."""
    assert policy.decide(1006).reconnect
    assert not policy.decide(1000).reconnect


def test_override_by_code(policy: ReconnectPolicy) -> None:
    """An override keyed by one code replaces its default row."""
    custom = policy.with_rules({4001: FINAL})
    assert custom.decide(4001) == Decision(4001, FINAL, "4001")
    assert custom.decide(4002).rule == BACKOFF


def test_override_by_tuple_range() -> None:
    """An override keyed by an inclusive (low, high) tuple covers both ends."""
    custom = ReconnectPolicy({(4100, 4199): RESTART})
    assert custom.decide(4100) == Decision(4100, RESTART, "4100-4199")
    assert custom.decide(4199).rule == RESTART
    assert custom.decide(4200).rule == BACKOFF


def test_override_by_python_range() -> None:
    """An override keyed by ``range(a, b)`` covers a..b-1 like Python ranges do."""
    custom = ReconnectPolicy({range(4100, 4200): FINAL})
    assert custom.decide(4199) == Decision(4199, FINAL, "4100-4199")
    assert custom.decide(4200).rule == BACKOFF


def test_override_wins_over_default_single_code() -> None:
    """An override range wins even over a default row keyed by a single code."""
    custom = ReconnectPolicy({(1000, 1015): FINAL})
    assert custom.decide(1012) == Decision(1012, FINAL, "1000-1015")


def test_narrower_range_wins() -> None:
    """Among overlapping override ranges, the narrowest one decides."""
    custom = ReconnectPolicy({(4000, 4999): FINAL, (4100, 4199): RESTART, (4150, 4159): TRY_AGAIN})
    assert custom.decide(4155).rule == TRY_AGAIN
    assert custom.decide(4120).rule == RESTART
    assert custom.decide(4900).rule == FINAL


def test_single_code_wins_over_range() -> None:
    """Within overrides, a single code wins over a range containing it."""
    custom = ReconnectPolicy({4001: TRY_AGAIN, (4000, 4009): FINAL})
    assert custom.decide(4001).rule == TRY_AGAIN


def test_with_rules_newer_wins_and_keeps_older() -> None:
    """``with_rules`` layers new overrides on top of existing ones."""
    first = ReconnectPolicy({4001: FINAL, 4002: FINAL})
    second = first.with_rules({4001: RESTART})
    assert second.decide(4001).rule == RESTART
    assert second.decide(4002).rule == FINAL
    assert first.decide(4001).rule == FINAL


def test_with_rules_accepts_another_spelling_of_an_existing_key() -> None:
    """A newer override may restate an older one as ``range()``; it replaces it."""
    first = ReconnectPolicy({(4100, 4199): FINAL})
    assert first.with_rules({range(4100, 4200): RESTART}).decide(4150).rule == RESTART


def test_defaults_can_be_replaced_wholesale() -> None:
    """A custom base table replaces DEFAULT_RULES; codes it misses fall back to backoff."""
    custom = ReconnectPolicy(defaults={1000: FINAL})
    assert custom.decide(1000).rule == FINAL
    assert custom.decide(1002) == Decision(1002, BACKOFF, "fallback")


@pytest.mark.parametrize(
    "key",
    [
        -1,
        MAX_CLOSE_CODE + 1,
        True,
        "4000",
        4000.0,
        (4100,),
        (4199, 4100),
        (4100, 70000),
        (4100.0, 4199),
        range(4200, 4100),
        range(4100, 4200, 2),
        range(-5, 10),
        None,
    ],
)
def test_bad_keys_raise(key: object) -> None:
    """A key that is not a 16-bit code or a contiguous range raises ``ConfigurationError``."""
    with pytest.raises(ConfigurationError, match="policy"):
        ReconnectPolicy({key: FINAL})


def test_bad_value_raises() -> None:
    """A value that is not a ``Rule`` raises ``ConfigurationError``."""
    with pytest.raises(ConfigurationError, match="must be a Rule"):
        ReconnectPolicy({4001: "final"})  # type: ignore[dict-item]


def test_two_spellings_of_one_key_raise() -> None:
    """The same range given as a tuple and as ``range()`` is refused (one would be lost)."""
    with pytest.raises(ConfigurationError, match="repeats 4100-4199"):
        ReconnectPolicy({(4100, 4199): FINAL, range(4100, 4200): RESTART})


def test_bad_default_value_raises() -> None:
    """A replaced base table is validated like the overrides."""
    with pytest.raises(ConfigurationError):
        ReconnectPolicy(defaults={1000: None})  # type: ignore[dict-item]


def test_default_table_covers_every_code_exactly_once() -> None:
    """DEFAULT_RULES' single codes and ranges cover 0-65535, ranges without overlap."""
    ranges = sorted(k for k in DEFAULT_RULES if isinstance(k, tuple))
    singles = {k for k in DEFAULT_RULES if isinstance(k, int)}
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high < low
    covered = set(singles)
    for low, high in ranges:
        covered.update(range(low, high + 1))
    assert covered == set(range(MAX_CLOSE_CODE + 1))


def test_rows_lists_overrides_first(policy: ReconnectPolicy) -> None:
    """``rows()`` yields the overrides before the defaults, keyed by display name."""
    rows = list(policy.with_rules({4001: FINAL}).rows())
    assert rows[0] == ("4001", FINAL)
    assert ("1012", RESTART) in rows
    assert len(rows) == len(DEFAULT_RULES) + 1


def test_rule_constructors() -> None:
    """``Rule.final`` and ``Rule.reconnect`` build the matching actions."""
    assert Rule.final().action is Action.FINAL
    assert Rule.reconnect().delay is DelayRule.BACKOFF
    assert Rule.reconnect(DelayRule.RESTART).action is Action.RECONNECT


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (FINAL, "final"),
        (BACKOFF, "base 0.5 s, cap 30 s"),
        (RESTART, "1-5 s"),
        (TRY_AGAIN, "at least 5 s"),
    ],
)
def test_describe_uses_the_defaults(rule: Rule, words: str) -> None:
    """``Rule.describe`` states the numbers of the backoff defaults."""
    assert words in rule.describe()


def test_a_reversed_range_is_named_as_such() -> None:
    """(4199, 4100) is refused as reversed, not as "not within 0-65535"."""
    with pytest.raises(ConfigurationError, match=r"4199-4100 is reversed: \(4100, 4199\)"):
        ReconnectPolicy({(4199, 4100): FINAL})
