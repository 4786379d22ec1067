"""Tests for ``tether.heartbeat``: ping/pong deadlines driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from tether.exceptions import ConfigurationError
from tether.heartbeat import (
    Heartbeat,
    HeartbeatMachine,
    Reading,
    TimerAction,
    TimerResult,
    Transfer,
)

INTERVAL, TIMEOUT = 15.0, 10.0
START = 1000.0


@pytest.fixture
def machine() -> HeartbeatMachine:
    """A machine with the default settings, opened at ``START``."""
    return HeartbeatMachine(Heartbeat(), START)


def ping(machine: HeartbeatMachine, now: float) -> bytes:
    """Fire the timer at ``now``, expecting a ping; return its payload."""
    result = machine.handle_timer(now)
    assert result is not None
    assert result.action is TimerAction.SEND_PING
    return result.payload


def run_until_dead(machine: HeartbeatMachine, limit: int = 100) -> float:
    """Drive the machine from deadline to deadline, never answering; return when it died."""
    for _ in range(limit):
        deadline = machine.next_deadline()
        assert deadline is not None
        result = machine.handle_timer(deadline)
        if result is not None and result.action is TimerAction.DEAD:
            return deadline
    raise AssertionError("the machine never declared the link dead")


def test_defaults() -> None:
    """The defaults are interval 15 s and timeout 10 s (DESIGN.md §5)."""
    assert Heartbeat() == Heartbeat(interval=15.0, timeout=10.0)


def test_first_ping_at_interval(machine: HeartbeatMachine) -> None:
    """The first deadline is one interval after opening, and it sends a ping."""
    assert machine.next_deadline() == START + INTERVAL
    assert machine.handle_timer(START + INTERVAL - 0.001) is None
    ping(machine, START + INTERVAL)


def test_dead_at_ping_plus_timeout(machine: HeartbeatMachine) -> None:
    """Without a pong, the link is declared dead exactly ``timeout`` after the ping."""
    ping(machine, START + INTERVAL)
    assert machine.next_deadline() == START + INTERVAL + TIMEOUT
    assert machine.handle_timer(START + INTERVAL + TIMEOUT - 0.001) is None
    assert machine.handle_timer(START + INTERVAL + TIMEOUT) == TimerResult(TimerAction.DEAD)
    assert machine.dead


def test_dead_machine_stops(machine: HeartbeatMachine) -> None:
    """After DEAD there is no deadline and the timer does nothing."""
    run_until_dead(machine)
    assert machine.next_deadline() is None
    assert machine.handle_timer(START + 10_000) is None


def test_pong_cancels_the_deadline(machine: HeartbeatMachine) -> None:
    """A pong clears the pong deadline; the next deadline is the next ping."""
    payload = ping(machine, START + INTERVAL)
    machine.pong_received(START + INTERVAL + 0.2, payload)
    assert machine.next_deadline() == START + 2 * INTERVAL
    assert machine.handle_timer(START + INTERVAL + TIMEOUT) is None
    assert not machine.dead


def test_pong_gives_rtt(machine: HeartbeatMachine) -> None:
    """``pong_received`` returns the round-trip time and stores it as ``last_rtt``."""
    payload = ping(machine, START + INTERVAL)
    assert machine.pong_received(START + INTERVAL + 0.25, payload) == pytest.approx(0.25)
    assert machine.last_rtt == pytest.approx(0.25)


def test_a_pong_read_before_the_pings_stamp_gives_zero_rtt(machine: HeartbeatMachine) -> None:
    """A ping stamped with its timer's deadline, answered at a clock reading just below
    it (uvloop's millisecond clock, a pong in the same millisecond): 0, never negative.
    (Before: -9e-13 s, seen as ``conn.latency`` in the suite's uvloop run.)"""
    payload = ping(machine, START + INTERVAL)
    assert machine.pong_received(START + INTERVAL - 1e-12, payload) == 0.0
    assert machine.last_rtt == 0.0


def test_regular_pongs_keep_the_link_alive(machine: HeartbeatMachine) -> None:
    """100 ping/pong rounds never declare death and keep a fixed cadence."""
    now = START
    for _ in range(100):
        deadline = machine.next_deadline()
        assert deadline == now + INTERVAL
        now = deadline
        machine.pong_received(now + 0.05, ping(machine, now))
    assert not machine.dead


def test_unknown_pong_changes_nothing(machine: HeartbeatMachine) -> None:
    """RFC 6455 §5.5.3: an unsolicited pong is allowed and does not settle our ping."""
    ping(machine, START + INTERVAL)
    assert machine.pong_received(START + INTERVAL + 1, b"not ours") is None
    assert machine.pong_received(START + INTERVAL + 1) is None
    assert machine.next_deadline() == START + INTERVAL + TIMEOUT
    assert machine.last_rtt is None


def test_late_pong_settles_older_pings() -> None:
    """A pong for ping n settles the pings before it (peers may answer only the latest)."""
    machine = HeartbeatMachine(Heartbeat(interval=5.0, timeout=20.0), START)
    first = ping(machine, START + 5)
    second = ping(machine, START + 10)
    assert machine.next_deadline() == START + 15  # third ping; pong deadline is START + 25
    assert machine.pong_received(START + 11, second) == pytest.approx(1.0)
    # The first ping is settled too: its pong, arriving late, is now unknown.
    assert machine.pong_received(START + 12, first) is None
    third = ping(machine, START + 15)
    assert machine.next_deadline() == START + 20  # next ping; the pong is due at START + 35
    assert third != first


def test_late_pong_keeps_the_newer_deadline() -> None:
    """A pong for an older ping moves the deadline to the oldest ping still unanswered."""
    machine = HeartbeatMachine(Heartbeat(interval=5.0, timeout=20.0), START)
    first = ping(machine, START + 5)
    ping(machine, START + 10)
    machine.pong_received(START + 12, first)
    for t in (15, 20, 25):
        ping(machine, START + t)
    # The second ping (sent at +10) is still unanswered: dead at +30.
    assert machine.handle_timer(START + 29.999) is None
    assert machine.handle_timer(START + 30) == TimerResult(TimerAction.DEAD)


def test_pong_after_dead_is_ignored(machine: HeartbeatMachine) -> None:
    """A pong arriving after DEAD neither revives the link nor reports an RTT."""
    payload = ping(machine, START + INTERVAL)
    run_until_dead(machine)
    assert machine.pong_received(START + 100, payload) is None
    assert machine.dead


def test_payloads_are_unique(machine: HeartbeatMachine) -> None:
    """1,000 consecutive pings carry 1,000 distinct payloads within the 125-byte limit."""
    payloads = []
    now = START
    for _ in range(1000):
        now += INTERVAL
        payload = ping(machine, now)
        machine.pong_received(now, payload)
        payloads.append(payload)
    assert len(set(payloads)) == 1000
    # RFC 6455 §5.5: control frame payloads are at most 125 bytes.
    assert max(map(len, payloads)) <= 125


def test_interval_none_disables(machine: HeartbeatMachine) -> None:
    """``interval=None`` sends no ping and has no deadline."""
    off = HeartbeatMachine(Heartbeat(interval=None), START)
    assert not off.config.enabled
    assert off.next_deadline() is None
    assert off.handle_timer(START + 1e6) is None


def test_timeout_none_never_declares_death() -> None:
    """``timeout=None`` keeps pinging (traffic for idle limits) but never says DEAD."""
    machine = HeartbeatMachine(Heartbeat(interval=INTERVAL, timeout=None), START)
    for n in range(1, 50):
        assert machine.next_deadline() == START + n * INTERVAL
        ping(machine, START + n * INTERVAL)
    assert not machine.dead


def test_detection_bound_property() -> None:
    """``detection_bound`` is interval + timeout, or None when either is disabled."""
    assert Heartbeat().detection_bound == INTERVAL + TIMEOUT
    assert Heartbeat(timeout=None).detection_bound is None
    assert Heartbeat(interval=None).detection_bound is None


@pytest.mark.parametrize(
    ("interval", "timeout"), [(15.0, 10.0), (1.0, 2.0), (5.0, 20.0), (30.0, 1.0)]
)
def test_worst_case_detection_is_interval_plus_timeout(interval: float, timeout: float) -> None:
    """A link dying right after a pong is declared dead exactly interval + timeout later."""
    machine = HeartbeatMachine(Heartbeat(interval=interval, timeout=timeout), START)
    payload = ping(machine, START + interval)
    died_at = START + interval
    machine.pong_received(died_at, payload)  # the last pong, then the link goes silent
    detected_at = run_until_dead(machine)
    assert detected_at - died_at == interval + timeout


def test_early_death_is_detected_sooner(machine: HeartbeatMachine) -> None:
    """A link dying just before a ping is detected after only about the timeout."""
    died_at = START + INTERVAL - 0.001
    assert run_until_dead(machine) - died_at == pytest.approx(TIMEOUT + 0.001)


def test_late_timer_reports_dead_first(machine: HeartbeatMachine) -> None:
    """When the loop wakes late with both deadlines passed, DEAD wins over a new ping."""
    ping(machine, START + INTERVAL)
    assert machine.handle_timer(START + 100) == TimerResult(TimerAction.DEAD)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0},
        {"interval": -1.0},
        {"interval": math.nan},
        {"interval": math.inf},
        {"interval": True},
        {"timeout": 0},
        {"timeout": "10"},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    """Each bad setting raises ``ConfigurationError`` naming it."""
    with pytest.raises(ConfigurationError) as caught:
        Heartbeat(**kwargs)  # type: ignore[arg-type]
    (name,) = kwargs
    assert name in str(caught.value)


def test_an_overdue_pong_behind_a_backlog_is_not_a_dead_link(machine: HeartbeatMachine) -> None:
    """Reading held back while messages are taken: the deadline moves on; caught up: DEAD."""
    ping(machine, START + INTERVAL)  # (no Reading at the ping: the window's mark is zero)
    due = START + INTERVAL + TIMEOUT
    assert machine.handle_timer(due, Reading(taken=3, held=1, full=True)) is None
    assert not machine.dead
    late = machine.handle_timer(due + TIMEOUT - 0.001, Reading(taken=3, held=1, full=True))
    assert late is None or late.action is TimerAction.SEND_PING  # (a ping may be due)
    # Nothing taken since the extension: no more grace, full or not.
    assert machine.handle_timer(due + TIMEOUT, Reading(taken=3, held=1, full=True)) == TimerResult(
        TimerAction.DEAD
    )


def test_no_grace_for_an_application_that_takes_nothing(machine: HeartbeatMachine) -> None:
    """A full buffer nobody drains hides nothing: DEAD at ping + timeout."""
    payload = machine.handle_timer(START + INTERVAL, Reading(taken=5, held=2, full=True))
    assert payload is not None
    due = START + INTERVAL + TIMEOUT
    assert machine.handle_timer(due, Reading(taken=5, held=2, full=True)) == TimerResult(
        TimerAction.DEAD
    )


def test_progress_counts_from_the_window_not_from_the_last_ping() -> None:
    """Pings while a pong is outstanding do not restart the count of messages taken.

    (interval 0.3, timeout 0.5: the second ping comes 0.2 s before the first pong is
    due; one message taken every 0.4 s is progress within each 0.5 s window.)
    """
    machine = HeartbeatMachine(Heartbeat(interval=0.3, timeout=0.5), 0.0)
    taken = 0
    next_take = 0.4
    for _ in range(40):  # 8 s of deadlines, bounded
        deadline = machine.next_deadline()
        assert deadline is not None
        while next_take <= deadline:  # the application takes one message every 0.4 s
            taken += 1
            next_take += 0.4
        result = machine.handle_timer(deadline, Reading(taken=taken, held=taken, full=True))
        assert result is None or result.action is TimerAction.SEND_PING, deadline
    assert not machine.dead


DEAD = TimerResult(TimerAction.DEAD)


def _alive(result: TimerResult | None) -> bool:
    """Not declared dead (a ping may be due at the same moment)."""
    return result is None or result.action is TimerAction.SEND_PING


def test_a_ping_behind_our_own_data_still_moving_is_not_a_dead_link(
    machine: HeartbeatMachine,
) -> None:
    """A large message over a slow uplink: the ping waits behind it, the peer acks as it
    goes. Before, the pong overdue failed the link, and the resume resent the message
    from the start: it never arrived (a fault run: 8 connections, 8 x 1006, in 60 s)."""
    machine.handle_timer(START + INTERVAL, None, Transfer(acked=1_000))
    due = START + INTERVAL + TIMEOUT
    assert _alive(machine.handle_timer(due, None, Transfer(acked=300_000)))
    assert not machine.dead
    again = due + TIMEOUT
    assert _alive(machine.handle_timer(again, None, Transfer(acked=600_000)))
    # The data stops moving (the link died under it): dead one timeout later.
    assert machine.handle_timer(again + TIMEOUT, None, Transfer(acked=600_000)) == DEAD


def test_a_pong_behind_the_peers_data_still_arriving_is_not_a_dead_link(
    machine: HeartbeatMachine,
) -> None:
    """The peer's large message keeps arriving: the pong is behind it. Our own newest
    ping may be unacknowledged at that moment (its ACK comes back behind the peer's
    data): that is no sign of a dead link either. Before, it was taken for one, and a
    healthy 1 MB download at 100 kB/s was failed as 1006 in 7 runs of 8 (fault hunt,
    veth + tbf, heartbeat 3/1)."""
    machine.handle_timer(START + INTERVAL, None, Transfer(acked=500, received=0))
    due = START + INTERVAL + TIMEOUT
    moving = Transfer(acked=500, received=400_000)  # (a ping just sent: not acked)
    assert _alive(machine.handle_timer(due, None, moving))
    # The bytes stop (the link died): dead at the extended deadline, one timeout on.
    for _ in range(10):
        deadline = machine.next_deadline()
        assert deadline is not None
        if machine.handle_timer(deadline, None, moving) == DEAD:
            assert deadline == due + TIMEOUT
            return
    raise AssertionError("never declared dead")


def test_the_peers_pings_alone_do_not_hide_a_dead_direction(machine: HeartbeatMachine) -> None:
    """Our direction dead (our bytes unacknowledged), the peer's pings still arriving
    (its TCP sends small new segments until a retransmission timeout): control frames
    are not bulk, no grace. Before the BULK threshold, a 1/1 s heartbeat found such a
    link in 3.17 s instead of 2 (veth + tbf, client->server dropped mid-upload)."""
    machine.handle_timer(START + INTERVAL, None, Transfer(acked=500, received=900))
    due = START + INTERVAL + TIMEOUT
    pings_arrived = Transfer(acked=500, received=900 + 10 * 16)
    assert machine.handle_timer(due, None, pings_arrived) == DEAD


def test_an_upload_that_drained_just_before_the_deadline_is_not_a_dead_link(
    machine: HeartbeatMachine,
) -> None:
    """The upload's last bytes were acknowledged just before the deadline: the ping has
    just reached the peer and its pong is a round trip away (the 512-byte rule's first
    form asked for bytes still queued, and failed tests/integration/test_slow_link.py)."""
    machine.handle_timer(START + INTERVAL, None, Transfer(acked=216_894))
    due = START + INTERVAL + TIMEOUT
    drained = Transfer(acked=250_322, received=10)
    assert _alive(machine.handle_timer(due, None, drained))


def test_a_fresh_ping_does_not_kill_a_download(machine: HeartbeatMachine) -> None:
    """The fault hunt's sequence on a fake clock (heartbeat 3/1): extensions at 4 and 5,
    a ping at 6.000, the check at 6.002 with that ping unacknowledged and 100 kB more
    received since 5: alive."""
    machine = HeartbeatMachine(Heartbeat(interval=3, timeout=1), 0.0)
    received = 0
    for now in (3.0, 4.001, 5.002, 6.0, 6.002, 7.003):
        received += 100_000
        # (the pings at 3 and 6 are not acknowledged: acked stays at 100)
        result = machine.handle_timer(now, None, Transfer(acked=100, received=received))
        assert _alive(result), now


@pytest.mark.parametrize("at_ping", [Transfer(acked=500, received=700), None])
def test_a_link_that_moves_nothing_dies_at_the_usual_bound(at_ping: Transfer | None) -> None:
    """A dead link moves no bytes: interval + timeout, with or without counts."""
    machine = HeartbeatMachine(Heartbeat(), START)
    machine.handle_timer(START + INTERVAL, None, at_ping)
    still = Transfer(acked=500, received=700)  # (our ping, unacknowledged)
    assert machine.handle_timer(START + INTERVAL + TIMEOUT, None, still) == DEAD


def test_no_counts_at_the_ping_give_no_grace(machine: HeartbeatMachine) -> None:
    """Progress counts from the window's opening: unknown then (None), none is shown."""
    machine.handle_timer(START + INTERVAL, None, None)
    due = START + INTERVAL + TIMEOUT
    assert machine.handle_timer(due, None, Transfer(acked=900_000, received=900_000)) == DEAD


@pytest.mark.parametrize("upload", [True, False], ids=["upload", "download"])
@pytest.mark.parametrize(("interval", "timeout"), [(15.0, 10.0), (5.0, 20.0), (1.0, 30.0)])
@pytest.mark.parametrize("dies_at", [7.3, 21.0, 29.9, 44.2, 60.05])
def test_a_link_that_dies_while_its_bytes_moved_is_failed_within_the_bound(
    interval: float, timeout: float, dies_at: float, upload: bool
) -> None:
    """An upload acknowledged (or a download arriving) at 10 kB/s until the link dies,
    then nothing: failed within interval + timeout of the death, whatever the extensions
    before (with extensions of ``timeout`` and timeout > interval, bytes moved just
    before the death bought one more: 40 s for 5/20, 60 s for 1/30)."""
    machine = HeartbeatMachine(Heartbeat(interval=interval, timeout=timeout), 0.0)

    def transfer(now: float) -> Transfer:
        moved = int(min(now, dies_at) * 10_000)
        if upload:
            return Transfer(acked=moved, received=0)
        return Transfer(acked=100, received=moved)  # (a ping unacknowledged)

    for _ in range(1000):  # bounded: from deadline to deadline
        deadline = machine.next_deadline()
        assert deadline is not None
        result = machine.handle_timer(deadline, None, transfer(deadline))
        if result is not None and result.action is TimerAction.DEAD:
            assert deadline > dies_at  # never while the bytes still moved
            assert deadline - dies_at <= interval + timeout
            return
    raise AssertionError("never declared dead")
