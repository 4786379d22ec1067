"""The staged drain plan and its schedule (``tether/drain.py``), on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from tether.drain import DrainBatch, DrainSchedule, plan_drain
from tether.exceptions import ConfigurationError


def test_no_connections_no_batches() -> None:
    """An empty server drains with no batches at all."""
    assert plan_drain(0, 5.0) == ()


def test_zero_window_closes_everything_at_once() -> None:
    """A window of 0 puts every connection in one batch at offset 0."""
    assert plan_drain(7, 0.0) == (DrainBatch(0.0, 7),)


def test_single_connection_goes_first() -> None:
    """One connection is closed at the start of the drain, not at its end."""
    assert plan_drain(1, 5.0) == (DrainBatch(0.0, 1),)


def test_every_connection_is_closed_exactly_once() -> None:
    """The batch sizes add up to the connection count."""
    for count in (1, 2, 3, 50, 101, 5000):
        assert sum(batch.size for batch in plan_drain(count, 5.0)) == count


def test_first_and_last_batch_span_the_window() -> None:
    """With several batches the first goes at 0 and the last at the window's end."""
    batches = plan_drain(50, 1.0)
    assert batches[0].offset == 0.0
    assert batches[-1].offset == pytest.approx(1.0)


def test_batches_are_evenly_spaced() -> None:
    """Consecutive batches are the same time apart."""
    batches = plan_drain(10, 0.9)
    gaps = [b.offset - a.offset for a, b in itertools.pairwise(batches)]
    assert gaps == pytest.approx([0.1] * 9)


def test_batch_sizes_differ_by_at_most_one_larger_first() -> None:
    """Sizes are as even as possible and the larger batches go first."""
    sizes = [batch.size for batch in plan_drain(5000, 5.0)]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_batch_interval_caps_the_number_of_batches() -> None:
    """Batches are never closer together than the batch interval."""
    batches = plan_drain(5000, 5.0, batch_interval=0.05)
    assert len(batches) == 101


def test_fewer_connections_than_slots_one_per_batch() -> None:
    """With fewer connections than batch slots each batch closes one connection."""
    batches = plan_drain(3, 5.0)
    assert [b.size for b in batches] == [1, 1, 1]
    assert [b.offset for b in batches] == pytest.approx([0.0, 2.5, 5.0])


@pytest.mark.parametrize(
    ("count", "window", "interval"),
    [(-1, 1.0, 0.05), (1, -1.0, 0.05), (1, float("nan"), 0.05), (1, float("inf"), 0.05),
     (1, 1.0, 0.0)],
)  # fmt: skip
def test_bad_arguments_raise_configuration_error(
    count: int, window: float, interval: float
) -> None:
    """A negative count or window, or a non-positive interval, is refused clearly."""
    with pytest.raises(ConfigurationError):
        plan_drain(count, window, batch_interval=interval)


def test_schedule_first_deadline_is_the_start() -> None:
    """The first batch is due at the moment the drain starts."""
    schedule = DrainSchedule(4, 3.0, now=100.0)
    assert schedule.next_deadline() == 100.0


def test_schedule_hands_out_batches_at_their_deadlines() -> None:
    """Driving the schedule with a fake clock closes each batch at its offset."""
    schedule = DrainSchedule(4, 3.0, now=100.0)
    handed: list[tuple[float, int]] = []
    while (deadline := schedule.next_deadline()) is not None:
        handed.append((deadline, schedule.due(deadline)))
    assert handed == [(100.0, 1), (101.0, 1), (102.0, 1), (103.0, 1)]
    assert schedule.finished


def test_schedule_nothing_due_before_deadline() -> None:
    """Asking early returns 0 and keeps the batch for later."""
    schedule = DrainSchedule(4, 3.0, now=100.0)
    schedule.due(100.0)
    assert schedule.due(100.5) == 0
    assert schedule.next_deadline() == 101.0


def test_schedule_late_wakeup_catches_up() -> None:
    """A late wake-up returns every batch that became due meanwhile."""
    schedule = DrainSchedule(4, 3.0, now=100.0)
    assert schedule.due(102.5) == 3
    assert schedule.next_deadline() == 103.0


def test_empty_schedule_is_finished() -> None:
    """A drain of zero connections has no deadline."""
    schedule = DrainSchedule(0, 3.0, now=0.0)
    assert schedule.finished
    assert schedule.next_deadline() is None
