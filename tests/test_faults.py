"""Fault decisions of the chaos proxy (tether.faults), on a fake clock with a seeded rng."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tether.exceptions import ConfigurationError
from tether.faults import (
    ConnectionFaults,
    Fault,
    FaultKind,
    FaultPlan,
    Shaper,
    random_kill_delay,
)


def faults(now: float = 100.0, seed: int = 1, **plan: float) -> ConnectionFaults:
    return ConnectionFaults(FaultPlan(**plan), now, random.Random(seed))


def test_no_faults_means_no_deadline() -> None:
    """A plan without timed faults never asks to be woken."""
    assert faults().next_deadline() is None


def test_kill_after_fires_at_its_deadline() -> None:
    """kill_after S kills the connection S seconds after it opened, not before."""
    conn = faults(kill_after=2.0)
    assert conn.next_deadline() == 102.0
    assert conn.handle_timer(101.999) is None
    assert conn.handle_timer(102.0) == Fault(FaultKind.KILL, "kill_after")


def test_killed_connection_has_no_more_deadlines() -> None:
    """After a kill nothing else is scheduled."""
    conn = faults(kill_after=1.0, idle_timeout=5.0)
    conn.handle_timer(101.0)
    assert conn.next_deadline() is None
    assert conn.handle_timer(200.0) is None


def test_idle_timeout_moves_with_activity() -> None:
    """Bytes moving push the idle kill back by the full timeout."""
    conn = faults(idle_timeout=3.0)
    assert conn.next_deadline() == 103.0
    conn.activity(102.5)
    assert conn.handle_timer(103.0) is None
    assert conn.next_deadline() == 105.5
    assert conn.handle_timer(105.5) == Fault(FaultKind.KILL, "idle_timeout")


def test_activity_never_moves_the_clock_back() -> None:
    """A late activity report with an older timestamp does not shorten the idle deadline."""
    conn = faults(idle_timeout=3.0)
    conn.activity(102.0)
    conn.activity(101.0)
    assert conn.next_deadline() == 105.0


def test_blackhole_after_fires_once() -> None:
    """blackhole_after S blackholes once, then only other deadlines remain."""
    conn = faults(blackhole_after=1.5, kill_after=10.0)
    assert conn.next_deadline() == 101.5
    assert conn.handle_timer(101.5) == Fault(FaultKind.BLACKHOLE, "blackhole_after")
    assert conn.blackholed
    assert conn.next_deadline() == 110.0


def test_kill_wins_over_blackhole_due_at_the_same_time() -> None:
    """When a kill and a blackhole fall due together, the kill is returned."""
    conn = faults(blackhole_after=1.0, kill_after=1.0)
    assert conn.handle_timer(101.0) == Fault(FaultKind.KILL, "kill_after")


def test_earliest_of_kill_after_and_kill_random_is_used() -> None:
    """With both kill settings, the connection dies at the earlier of the two."""
    conn = faults(kill_after=1000.0, kill_random=0.999, seed=3)
    assert conn.kill_at is not None
    assert conn.kill_at < 101.0
    assert conn.handle_timer(conn.kill_at) == Fault(FaultKind.KILL, "kill_random")


def test_random_kill_zero_probability_never_kills() -> None:
    """Probability 0 means no random kill."""
    assert random_kill_delay(0.0, random.Random(1)) is None


def test_random_kill_certain_kills_at_once() -> None:
    """Probability 1 per second kills immediately."""
    assert random_kill_delay(1.0, random.Random(1)) == 0.0


def test_random_kill_survives_a_second_with_one_minus_p() -> None:
    """The share of connections surviving one second is about 1 - p."""
    rng = random.Random(7)
    delays = [random_kill_delay(0.3, rng) for _ in range(20000)]
    survived = sum(1 for d in delays if d is not None and d > 1.0) / len(delays)
    assert survived == pytest.approx(0.7, abs=0.02)


def test_random_kill_is_repeatable_with_a_seed() -> None:
    """The same seed gives the same kill schedule."""
    first = [random_kill_delay(0.5, random.Random(42)) for _ in range(3)]
    second = [random_kill_delay(0.5, random.Random(42)) for _ in range(3)]
    assert first == second


def test_shaper_without_settings_delivers_at_once() -> None:
    """No latency and no bandwidth limit: chunks go out when they arrive."""
    shaper = Shaper(FaultPlan(), random.Random(1))
    assert shaper.schedule(5.0, 1000) == 5.0


def test_shaper_adds_latency() -> None:
    """Latency delays every chunk by exactly latency_ms without jitter."""
    shaper = Shaper(FaultPlan(latency_ms=250), random.Random(1))
    assert shaper.schedule(5.0, 10) == pytest.approx(5.25)


def test_shaper_jitter_stays_within_bounds() -> None:
    """With jitter, each delay lies in latency ± jitter (spaced chunks, no reordering pressure)."""
    shaper = Shaper(FaultPlan(latency_ms=100, jitter_ms=40), random.Random(3))
    delays = [shaper.schedule(t * 1.0, 10) - t * 1.0 for t in range(500)]
    assert min(delays) >= 0.060 - 1e-9
    assert max(delays) <= 0.140 + 1e-9
    assert statistics.pstdev(delays) > 0.01


def test_shaper_never_reorders() -> None:
    """Delivery times never decrease, even when jitter would reorder close chunks."""
    shaper = Shaper(FaultPlan(latency_ms=50, jitter_ms=50), random.Random(5))
    times = [shaper.schedule(t * 0.001, 10) for t in range(1000)]
    assert times == sorted(times)


def test_shaper_bandwidth_serializes_chunks() -> None:
    """At 80 kbps (10 kB/s), two 5 kB chunks arriving together finish after 0.5 s and 1 s."""
    shaper = Shaper(FaultPlan(bandwidth_kbps=80), random.Random(1))
    assert shaper.schedule(0.0, 5000) == pytest.approx(0.5)
    assert shaper.schedule(0.0, 5000) == pytest.approx(1.0)


def test_shaper_bandwidth_idle_link_does_not_bank_credit() -> None:
    """A link idle for a while sends the next chunk at the rate, not instantly."""
    shaper = Shaper(FaultPlan(bandwidth_kbps=80), random.Random(1))
    shaper.schedule(0.0, 100)
    assert shaper.schedule(10.0, 5000) == pytest.approx(10.5)


def test_shaper_bandwidth_and_latency_add_up() -> None:
    """Latency is added after the chunk crossed the limited link."""
    shaper = Shaper(FaultPlan(bandwidth_kbps=80, latency_ms=100), random.Random(1))
    assert shaper.schedule(0.0, 1000) == pytest.approx(0.2)


def test_shaper_reads_small_chunks_when_limited() -> None:
    """A bandwidth limit reads about 100 ms worth of bytes at a time."""
    assert Shaper(FaultPlan(bandwidth_kbps=80), random.Random(1)).max_chunk == 1000
    assert Shaper(FaultPlan(), random.Random(1)).max_chunk == 65536


@pytest.mark.parametrize(
    "plan",
    [
        {"kill_random": 1.5},
        {"kill_random": -0.1},
        {"idle_timeout": 0.0},
        {"kill_after": -1.0},
        {"latency_ms": 10.0, "jitter_ms": 20.0},
        {"bandwidth_kbps": 0.0},
        {"blackhole_after": math.nan},
    ],
)
def test_plan_rejects_bad_settings(plan: dict[str, float]) -> None:
    """Out-of-range settings raise ConfigurationError naming the setting."""
    with pytest.raises(ConfigurationError, match=next(iter(plan)).split("_")[0]):
        FaultPlan(**plan)
