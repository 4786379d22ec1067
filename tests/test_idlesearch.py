"""The idle-limit search schedule (tether.idlesearch), driven against simulated paths.

A simulated path kills idle connections after ``limit`` seconds, either actively
(the close is seen at ``limit``) or silently (only a ping after the hold reveals
it). The fake clock advances by each batch's duration, as the real runner would:
a batch lasts until its longest still-relevant trial ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from tether.exceptions import ConfigurationError
from tether.idlesearch import (
    IdleSearch,
    IdleSearchConfig,
    IdleSearchResult,
    Observation,
    Outcome,
    recommend_heartbeat,
)

PONG_TIMEOUT = 2.0


@dataclass
class Run:
    result: IdleSearchResult
    elapsed: float
    connections: int
    max_parallel: int


def simulate(config: IdleSearchConfig, limit: float | None, *, silent: bool = False) -> Run:
    """Run the search against a path with idle ``limit`` (None: no limit), on a fake clock."""
    search = IdleSearch(config)
    clock = 0.0
    connections = 0
    max_parallel = 0
    while holds := search.next_batch():
        connections += len(holds)
        max_parallel = max(max_parallel, len(holds))
        observations = []
        for hold in holds:
            if limit is None or hold < limit:
                ends = hold + 0.001  # the pong comes back at once
                observations.append((ends, Observation(hold, Outcome.SURVIVED)))
            elif silent:
                ends = hold + PONG_TIMEOUT
                observations.append((ends, Observation(hold, Outcome.DEAD, code=1006)))
            else:
                ends = limit
                obs = Observation(hold, Outcome.KILLED, at=limit, slack=0.002, code=1006)
                observations.append((ends, obs))
        # The runner records outcomes as they arrive and cancels trials that became moot.
        batch_end = 0.0
        for ends, obs in sorted(observations, key=lambda item: item[0]):
            if search.moot(obs.hold) and obs.outcome is not Outcome.KILLED:
                continue
            search.record(obs)
            batch_end = max(batch_end, ends)
        clock += batch_end
    return Run(search.result(), clock, connections, max_parallel)


def test_active_kill_found_in_one_batch() -> None:
    """A path that closes idle connections at 3 s is measured from the close itself."""
    run = simulate(IdleSearchConfig(max_idle=30, resolution=0.5), 3.0)
    assert run.result.found
    assert run.result.limit == pytest.approx(3.0, abs=0.5)
    assert run.result.batches == 1
    assert run.elapsed == pytest.approx(3.0)


@pytest.mark.parametrize("limit", [0.4, 1.5, 3.0, 7.7, 29.0, 59.0, 299.0])
def test_silent_kill_bracketed_within_resolution(limit: float) -> None:
    """A silent limit is bracketed: low < limit <= high and high - low <= resolution."""
    config = IdleSearchConfig(max_idle=300, resolution=1.0)
    result = simulate(config, limit, silent=True).result
    assert result.found
    assert result.converged
    assert result.high is not None
    assert result.low < limit <= result.high
    assert result.high - result.low <= 1.0
    assert result.kill == "silent"
    assert result.close_code == 1006


@pytest.mark.parametrize("limit", [0.4, 3.0, 59.0, 299.0])
def test_search_is_bounded_in_connections_and_batches(limit: float) -> None:
    """Every batch holds at most `parallel` connections, and batches stay under max_batches."""
    config = IdleSearchConfig(max_idle=300, resolution=0.5, parallel=3)
    run = simulate(config, limit, silent=True)
    assert run.max_parallel <= 3
    assert run.result.batches <= config.max_batches
    assert run.connections <= 3 * config.max_batches


def test_silent_search_time_is_bounded() -> None:
    """A silent 60 s limit found to 1 s costs less than 4 full holds of the limit."""
    run = simulate(IdleSearchConfig(max_idle=600, resolution=1.0), 60.0, silent=True)
    assert run.result.converged
    assert run.elapsed < 4 * (60.0 + PONG_TIMEOUT)


def test_no_limit_settled_in_one_batch() -> None:
    """When an idle connection survives max_idle, one batch says "no limit up to max_idle"."""
    run = simulate(IdleSearchConfig(max_idle=5, resolution=0.5), None)
    assert not run.result.found
    assert run.result.high is None
    assert run.result.limit is None
    assert run.result.low == 5
    assert run.result.batches == 1
    assert run.elapsed == pytest.approx(5.0, abs=0.01)


def test_limit_above_max_idle_is_no_limit() -> None:
    """A limit longer than max_idle is reported as no limit up to max_idle."""
    result = simulate(IdleSearchConfig(max_idle=5, resolution=0.5), 8.0).result
    assert not result.found


def test_first_batch_doubles_then_tries_max() -> None:
    """The first batch doubles from first_hold up to max_idle."""
    search = IdleSearch(IdleSearchConfig(max_idle=8, parallel=4, first_hold=1))
    assert search.next_batch() == [1, 2, 4, 8]


def test_doubling_continues_from_the_longest_survivor() -> None:
    """If everything survived but max_idle was not reached, doubling resumes above low."""
    search = IdleSearch(IdleSearchConfig(max_idle=64, parallel=4, first_hold=1))
    search.next_batch()
    search.record(Observation(4, Outcome.SURVIVED))
    assert search.next_batch() == [8, 16, 32, 64]


def test_doubling_grows_faster_to_span_the_range() -> None:
    """When doubling cannot reach max_idle in one batch, holds grow by a larger constant ratio."""
    search = IdleSearch(IdleSearchConfig(max_idle=1000, parallel=4, first_hold=1))
    assert search.next_batch() == pytest.approx([1, 10, 100, 1000])


def test_single_connection_search_doubles_one_at_a_time() -> None:
    """With parallel=1 the doubling tries one hold per batch, ending at max_idle."""
    search = IdleSearch(IdleSearchConfig(max_idle=5, parallel=1, first_hold=1))
    batches = []
    while holds := search.next_batch():
        batches.append(holds)
        search.record(Observation(holds[0], Outcome.SURVIVED))
    assert batches == [[1], [2], [4], [5]]
    assert not search.result().found


def test_bisection_splits_evenly_when_bracket_is_narrow() -> None:
    """Between 4 and 8 s, three parallel probes split the interval in four."""
    search = IdleSearch(IdleSearchConfig(max_idle=100, parallel=3, resolution=0.1))
    search.record(Observation(4, Outcome.SURVIVED))
    search.record(Observation(8, Outcome.DEAD))
    assert search.next_batch() == [5, 6, 7]


def test_bisection_splits_geometrically_when_bracket_is_wide() -> None:
    """Between 1 and 1000 s the split points are spaced by a constant ratio."""
    search = IdleSearch(IdleSearchConfig(max_idle=1000, parallel=2))
    search.record(Observation(1, Outcome.SURVIVED))
    search.record(Observation(1000, Outcome.DEAD))
    assert search.next_batch() == pytest.approx([10, 100])


def test_moot_trials() -> None:
    """Holds at or below low, or at or above high, cannot narrow the bounds."""
    search = IdleSearch(IdleSearchConfig(max_idle=100))
    search.record(Observation(2, Outcome.SURVIVED))
    search.record(Observation(8, Outcome.DEAD))
    assert search.moot(2)
    assert search.moot(8)
    assert search.moot(50)
    assert not search.moot(5)


def test_killed_observation_pins_the_limit() -> None:
    """A close seen at 3.0 s with 0.01 s slack puts the limit in [2.99, 3.0]."""
    search = IdleSearch(IdleSearchConfig(max_idle=100, resolution=0.5))
    search.record(Observation(100, Outcome.KILLED, at=3.0, slack=0.01, code=1006))
    assert (search.low, search.high) == pytest.approx((2.99, 3.0))
    assert search.done
    assert search.result().kill == "closed"


def test_one_active_close_makes_the_kill_closed() -> None:
    """One close among 'silent' trials (their pings met the reset) makes the kill 'closed'.

    (Before, the majority decided, and a tie went by set order.)
    """
    for order in (
        (Outcome.DEAD, Outcome.DEAD, Outcome.KILLED),
        (Outcome.KILLED, Outcome.DEAD, Outcome.DEAD),
    ):
        search = IdleSearch(IdleSearchConfig(max_idle=100))
        for outcome in order:
            at = 3.0 if outcome is Outcome.KILLED else None
            search.record(Observation(4, outcome, at=at, code=1006))
        assert search.result().kill == "closed"


def test_close_code_reported_is_the_most_common() -> None:
    """The result names the close code most trials saw (e.g. 1001 from a proxy that says so)."""
    search = IdleSearch(IdleSearchConfig(max_idle=100))
    search.record(Observation(50, Outcome.KILLED, at=10.0, code=1001))
    search.record(Observation(100, Outcome.KILLED, at=10.0, code=1001))
    search.record(Observation(20, Outcome.DEAD, code=1006))
    assert search.result().close_code == 1001


def test_inconsistent_observations_keep_a_valid_interval() -> None:
    """A survival longer than a seen death (timer jitter) never makes low exceed high."""
    search = IdleSearch(IdleSearchConfig(max_idle=100))
    search.record(Observation(5, Outcome.DEAD))
    search.record(Observation(6, Outcome.SURVIVED))
    assert search.low <= (search.high or math.inf)


def test_budget_exhaustion_is_reported_as_not_converged() -> None:
    """When max_batches runs out before the resolution is met, converged is False."""
    config = IdleSearchConfig(max_idle=300, resolution=0.01, parallel=1, max_batches=3)
    result = simulate(config, 77.0, silent=True).result
    assert result.batches == 3
    assert not result.converged


def test_server_traffic_is_counted() -> None:
    """Trials during which the server sent something are counted in the result."""
    search = IdleSearch(IdleSearchConfig(max_idle=10))
    search.record(Observation(1, Outcome.SURVIVED, peer_traffic=True))
    search.record(Observation(2, Outcome.SURVIVED))
    assert search.result().server_traffic == 1


def test_killed_without_time_is_rejected() -> None:
    """A KILLED observation must say when the close arrived."""
    with pytest.raises(ConfigurationError):
        Observation(3, Outcome.KILLED)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_idle": 0},
        {"max_idle": 10, "resolution": -1},
        {"max_idle": 10, "parallel": 0},
        {"max_idle": math.inf},
        {"max_idle": 10, "max_batches": 0},
    ],
)
def test_config_rejects_bad_bounds(bad: dict[str, float]) -> None:
    """Non-positive or infinite bounds raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        IdleSearchConfig(**bad)  # type: ignore[arg-type]


def test_a_bad_bound_error_names_the_rule_and_the_value() -> None:
    """An infinite max_idle says it must be finite and shows the value."""
    with pytest.raises(
        ConfigurationError, match=r"max_idle must be a finite number of seconds > 0, got inf"
    ):
        IdleSearchConfig(max_idle=float("inf"))


@pytest.mark.parametrize(
    ("survives", "interval"),
    [(3.0, 1.5), (2.95, 1.4), (60.0, 15.0), (0.1, 0.1), (25.0, 12.5)],
)
def test_recommend_heartbeat(survives: float, interval: float) -> None:
    """Half the surviving idle time, rounded down to 0.1 s, capped at 15 s, at least 0.1 s."""
    assert recommend_heartbeat(survives) == pytest.approx(interval)


def test_result_recommends_half_the_low_bound() -> None:
    """A 3 s limit leads to a heartbeat recommendation of at most 1.5 s."""
    result = simulate(IdleSearchConfig(max_idle=30, resolution=0.5), 3.0).result
    assert result.recommended_heartbeat <= 1.5
    assert result.recommended_heartbeat >= 1.4
