"""Tests for ``tether.backoff``: full jitter, the stability reset, bounds, 1012 and 1013."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.backoff import Backoff, BackoffConfig
from tether.exceptions import ConfigurationError
from tether.policy import DelayRule

SEED = 20261125
DRAWS = 10_000
BASE, CAP = 0.5, 30.0


def draws_at_each_failure_count(
    counts: int, config: BackoffConfig | None = None
) -> list[list[float]]:
    """``DRAWS`` backoff delays for each failure count 0..counts-1, via the public API.

    Uses ``DRAWS`` independent clients in lockstep: the n-th call on each is its n-th failure.
    """
    rng = random.Random(SEED)
    clients = [Backoff(config, rng=rng) for _ in range(DRAWS)]
    rounds: list[list[float]] = []
    for _ in range(counts):
        delays = [client.delay(DelayRule.BACKOFF, 0.0) for client in clients]
        rounds.append([d for d in delays if d is not None])
    return rounds


@pytest.fixture(scope="module")
def rounds() -> list[list[float]]:
    """10,000 seeded draws for each failure count 0-11 (computed once per module)."""
    return draws_at_each_failure_count(12)


@pytest.mark.parametrize("n", range(12))
def test_full_jitter_bounds(rounds: list[list[float]], n: int) -> None:
    """Every draw after n failures lies in [0, min(cap, base * 2**n)]."""
    ceiling = min(CAP, BASE * 2**n)
    assert len(rounds[n]) == DRAWS
    assert all(0.0 <= d <= ceiling for d in rounds[n])


@pytest.mark.parametrize("n", range(12))
def test_full_jitter_spreads(rounds: list[list[float]], n: int) -> None:
    """Draws spread over the whole window: mean near half, quartiles near a quarter each."""
    ceiling = min(CAP, BASE * 2**n)
    draws = rounds[n]
    assert statistics.fmean(draws) == pytest.approx(ceiling / 2, rel=0.03)
    below_quarter = sum(d < ceiling / 4 for d in draws) / DRAWS
    above_three_quarters = sum(d > 3 * ceiling / 4 for d in draws) / DRAWS
    assert below_quarter == pytest.approx(0.25, abs=0.02)
    assert above_three_quarters == pytest.approx(0.25, abs=0.02)


def test_cap_is_reached_and_never_passed(rounds: list[list[float]]) -> None:
    """From n = 6 (0.5 * 64 > 30) the window is the cap, and draws come close to it."""
    backoff = Backoff(rng=random.Random(SEED))
    assert backoff.ceiling(5) == 16.0
    assert backoff.ceiling(6) == CAP
    assert max(rounds[11]) > 0.99 * CAP
    assert max(max(r) for r in rounds) <= CAP


def test_ceiling_of_huge_failure_counts_is_the_cap() -> None:
    """A failure count far past any float power still gives the cap, not OverflowError."""
    assert Backoff(rng=random.Random(SEED)).ceiling(100_000) == CAP


def test_ceiling_refuses_negative_counts() -> None:
    """A negative failure count raises ``ConfigurationError``."""
    with pytest.raises(ConfigurationError):
        Backoff(rng=random.Random(SEED)).ceiling(-1)


def test_seeded_rng_is_reproducible() -> None:
    """Two clients with equally seeded rngs choose identical delays."""
    first = Backoff(rng=random.Random(7))
    second = Backoff(rng=random.Random(7))
    a = [first.delay(DelayRule.BACKOFF, float(t)) for t in range(10)]
    b = [second.delay(DelayRule.BACKOFF, float(t)) for t in range(10)]
    assert a == b


def test_stable_connection_resets() -> None:
    """A connection open for the stability period (10 s) resets the failure count."""
    backoff = Backoff(rng=random.Random(SEED))
    for t in range(5):
        backoff.delay(DelayRule.BACKOFF, float(t))
    backoff.opened(100.0)
    backoff.closed(110.0)
    assert (backoff.failures, backoff.attempts) == (0, 0)


def test_short_connection_does_not_reset() -> None:
    """A connection closed just before the stability period keeps the failure count."""
    backoff = Backoff(rng=random.Random(SEED))
    for t in range(5):
        backoff.delay(DelayRule.BACKOFF, float(t))
    backoff.opened(100.0)
    backoff.closed(109.999)
    assert backoff.failures == 5


def test_delay_closes_an_open_connection() -> None:
    """``delay`` without ``closed`` applies the stability rule itself."""
    backoff = Backoff(rng=random.Random(SEED))
    for t in range(5):
        backoff.delay(DelayRule.BACKOFF, float(t))
    backoff.opened(100.0)
    delay = backoff.delay(DelayRule.BACKOFF, 130.0)
    assert backoff.failures == 1
    assert delay is not None
    assert delay <= BASE


def test_accept_then_close_keeps_growing() -> None:
    """20 accept-then-close cycles sleep the full-jitter schedule, never a tight loop."""
    backoff = Backoff(rng=random.Random(SEED))
    now = 0.0
    slept: list[float] = []
    for _ in range(20):
        backoff.opened(now)  # the server accepts ...
        now += 0.05  # ... and closes 50 ms later
        delay = backoff.delay(DelayRule.BACKOFF, now)
        assert delay is not None
        slept.append(delay)
        now += delay
    # The same rng replayed over the expected windows gives exactly these sleeps.
    replay = random.Random(SEED)
    expected = [replay.uniform(0.0, min(CAP, BASE * 2**n)) for n in range(20)]
    assert slept == expected
    assert backoff.failures == 20
    # Resetting on each handshake would have slept about 20 * 0.25 s = 5 s in total;
    # the expected total here is sum(min(30, 0.5 * 2**n) / 2) = 225.75 s.
    assert sum(slept) > 150.0


def test_max_attempts_gives_up() -> None:
    """With ``max_attempts=3`` three delays are handed out, then ``None``."""
    backoff = Backoff(BackoffConfig(max_attempts=3), rng=random.Random(SEED))
    delays = [backoff.delay(DelayRule.BACKOFF, float(t)) for t in range(5)]
    assert [d is None for d in delays] == [False, False, False, True, True]


def test_max_attempts_counts_restarts() -> None:
    """A server answering every connection with 1012 is given up on too."""
    backoff = Backoff(BackoffConfig(max_attempts=2), rng=random.Random(SEED))
    delays = [backoff.delay(DelayRule.RESTART, float(t)) for t in range(3)]
    assert [d is None for d in delays] == [False, False, True]
    assert backoff.failures == 0


def test_max_elapsed_gives_up() -> None:
    """Once ``max_elapsed`` has passed since the first close, ``delay`` returns None."""
    backoff = Backoff(BackoffConfig(max_elapsed=60.0), rng=random.Random(SEED))
    assert backoff.delay(DelayRule.BACKOFF, 1000.0) is not None
    assert backoff.delay(DelayRule.BACKOFF, 1059.9) is not None
    assert backoff.delay(DelayRule.BACKOFF, 1060.0) is None


def test_max_elapsed_does_not_sleep_past_the_bound() -> None:
    """The last delay is cut so the final attempt happens at the time bound at the latest."""
    config = BackoffConfig(base=100.0, cap=100.0, max_elapsed=10.0)
    backoff = Backoff(config, rng=random.Random(SEED))
    backoff.delay(DelayRule.BACKOFF, 0.0)
    delays = [backoff.delay(DelayRule.BACKOFF, 8.0) for _ in range(20)]
    assert all(d is not None and d <= 2.0 for d in delays)


def test_max_elapsed_loop_terminates() -> None:
    """A client failing forever stops within ``max_elapsed`` of fake time."""
    backoff = Backoff(BackoffConfig(max_elapsed=120.0), rng=random.Random(SEED))
    now, attempts = 0.0, 0
    while (delay := backoff.delay(DelayRule.BACKOFF, now)) is not None:
        now += delay
        attempts += 1
        assert attempts < 1000
    assert now == pytest.approx(120.0)


def test_stable_connection_restarts_the_bounds() -> None:
    """A stable connection gives the bounds back in full."""
    backoff = Backoff(BackoffConfig(max_attempts=1), rng=random.Random(SEED))
    assert backoff.delay(DelayRule.BACKOFF, 0.0) is not None
    backoff.opened(1.0)
    assert backoff.delay(DelayRule.BACKOFF, 20.0) is not None


def test_max_elapsed_counts_from_the_first_failure_after_a_stable_connection() -> None:
    """After a stable connection, ``max_elapsed`` runs from the next failure, not an older one."""
    backoff = Backoff(BackoffConfig(max_elapsed=60.0), rng=random.Random(SEED))
    assert backoff.delay(DelayRule.BACKOFF, 0.0) is not None  # first failure at t=0
    backoff.opened(1.0)
    backoff.closed(100.0)  # stable for 99 s: the counters reset
    # 100 s after the first failure (past 60 s), 0 s after the second one.
    assert backoff.delay(DelayRule.BACKOFF, 100.0) is not None
    assert backoff.delay(DelayRule.BACKOFF, 159.9) is not None
    assert backoff.delay(DelayRule.BACKOFF, 160.0) is None


def test_restart_window_is_uniform_1_to_5() -> None:
    """1012: 10,000 draws lie in [1, 5] and spread over it (mean near 3)."""
    rng = random.Random(SEED)
    draws = []
    for _ in range(DRAWS):
        delay = Backoff(rng=rng).delay(DelayRule.RESTART, 0.0)
        assert delay is not None
        draws.append(delay)
    assert min(draws) >= 1.0
    assert max(draws) <= 5.0
    assert statistics.fmean(draws) == pytest.approx(3.0, rel=0.02)
    assert min(draws) < 1.01
    assert max(draws) > 4.99


def test_restart_is_not_a_failure() -> None:
    """1012 leaves the failure count alone; a failed attempt after it continues the backoff."""
    backoff = Backoff(rng=random.Random(SEED))
    backoff.delay(DelayRule.BACKOFF, 0.0)
    backoff.delay(DelayRule.BACKOFF, 1.0)
    backoff.delay(DelayRule.RESTART, 2.0)
    assert backoff.failures == 2
    assert backoff.ceiling() == BASE * 2**2
    delay = backoff.delay(DelayRule.BACKOFF, 5.0)
    assert delay is not None
    assert delay <= BASE * 2**2
    assert backoff.failures == 3


def test_restart_hint_is_honoured() -> None:
    """A server's ``retry_ms`` hint replaces the 1-5 s window."""
    backoff = Backoff(rng=random.Random(SEED))
    assert backoff.delay(DelayRule.RESTART, 0.0, hint=0.25) == 0.25
    assert backoff.delay(DelayRule.RESTART, 0.0, hint=12.0) == 12.0


@pytest.mark.parametrize("hint", [-1.0, math.nan, math.inf])
def test_unusable_hint_is_ignored(hint: float) -> None:
    """A negative or non-finite hint (peer input) falls back to the window."""
    delay = Backoff(rng=random.Random(SEED)).delay(DelayRule.RESTART, 0.0, hint=hint)
    assert delay is not None
    assert 1.0 <= delay <= 5.0


def test_try_again_floor() -> None:
    """1013: every delay is at least 5 s and at most min(cap, 5 s + the backoff window)."""
    rng = random.Random(SEED)
    for n in range(12):
        backoff = Backoff(rng=rng)
        for _ in range(n):
            backoff.delay(DelayRule.BACKOFF, 0.0)
        ceiling = backoff.ceiling()
        delay = backoff.delay(DelayRule.TRY_AGAIN_LATER, 0.0)
        assert delay is not None
        assert 5.0 <= delay <= max(5.0, min(CAP, 5.0 + ceiling))


def test_try_again_is_jittered_above_the_floor() -> None:
    """1013 delays are spread above the floor, so told-to-wait clients do not return together."""
    rng = random.Random(SEED)
    draws = [Backoff(rng=rng).delay(DelayRule.TRY_AGAIN_LATER, 0.0) for _ in range(1000)]
    assert len(set(draws)) == 1000
    assert min(draws) >= 5.0  # type: ignore[type-var]


def test_try_again_hint_above_floor_is_honoured() -> None:
    """A 1013 hint longer than the floor raises the lower bound to the hint."""
    backoff = Backoff(rng=random.Random(SEED))
    delay = backoff.delay(DelayRule.TRY_AGAIN_LATER, 0.0, hint=8.0)
    assert delay is not None
    assert 8.0 <= delay <= 8.5


def test_try_again_hint_beyond_cap_is_exact() -> None:
    """A hint longer than the cap is waited exactly (the server knows its load)."""
    delay = Backoff(rng=random.Random(SEED)).delay(DelayRule.TRY_AGAIN_LATER, 0.0, hint=45.0)
    assert delay == 45.0


def test_try_again_counts_as_a_failure() -> None:
    """1013 grows the backoff like any failure."""
    backoff = Backoff(rng=random.Random(SEED))
    backoff.delay(DelayRule.TRY_AGAIN_LATER, 0.0)
    assert backoff.failures == 1


def test_hint_past_the_time_bound_gives_up() -> None:
    """When the server asks for longer than ``max_elapsed`` leaves, give up now."""
    backoff = Backoff(BackoffConfig(max_elapsed=10.0), rng=random.Random(SEED))
    assert backoff.delay(DelayRule.TRY_AGAIN_LATER, 0.0, hint=20.0) is None


@given(
    st.lists(
        st.tuples(st.sampled_from(list(DelayRule)), st.floats(0.0, 100.0)),
        max_size=40,
    )
)
def test_delays_always_within_bounds(steps: list[tuple[DelayRule, float]]) -> None:
    """Any sequence of closes yields delays in [0, cap] (no hint), never negative."""
    backoff = Backoff(rng=random.Random(SEED))
    now = 0.0
    for rule, gap in steps:
        now += gap
        delay = backoff.delay(rule, now)
        assert delay is not None
        assert 0.0 <= delay <= CAP


def test_default_config() -> None:
    """The defaults are those of DESIGN.md §4."""
    assert BackoffConfig() == BackoffConfig(
        base=0.5,
        factor=2.0,
        cap=30.0,
        stability_period=10.0,
        max_attempts=None,
        max_elapsed=None,
        restart_window=(1.0, 5.0),
        try_again_floor=5.0,
    )


def test_config_is_keyword_only() -> None:
    """Positional configuration is refused."""
    with pytest.raises(TypeError):
        BackoffConfig(0.5)  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0},
        {"base": -1.0},
        {"cap": 0},
        {"base": math.nan},
        {"cap": math.inf},
        {"factor": 0.5},
        {"stability_period": -1},
        {"max_attempts": 0},
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"max_elapsed": 0},
        {"max_elapsed": math.nan},
        {"restart_window": (5.0, 1.0)},
        {"restart_window": (-1.0, 1.0)},
        {"restart_window": (1.0,)},
        {"restart_window": [1.0, 5.0]},
        {"try_again_floor": -1},
        {"base": "0.5"},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    """Each bad setting raises ``ConfigurationError`` naming the setting."""
    with pytest.raises(ConfigurationError) as caught:
        BackoffConfig(**kwargs)
    (name,) = kwargs
    assert name in str(caught.value)
