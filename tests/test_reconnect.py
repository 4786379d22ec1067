"""The sans-I/O reconnect loop (tether.reconnect), driven by a fake clock: no sleeps."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from tether import (
    BackoffConfig,
    Connected,
    Disconnected,
    GaveUp,
    Reconnecting,
    ReconnectPolicy,
    Rule,
    State,
)
from tether.knowledge import summary
from tether.policy import DelayRule
from tether.reconnect import (
    ConnectFailure,
    FailureKind,
    Outcome,
    Reconnector,
    ReconnectStateError,
)

REFUSED = ConnectFailure(FailureKind.NETWORK, detail="[Errno 111] Connection refused")


class HighRng(random.Random):
    """Always picks the top of the range, so backoff ceilings are observable exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class LowRng(random.Random):
    """Always picks the bottom of the range."""

    def uniform(self, a: float, b: float) -> float:
        return a


def make(
    rng: random.Random | None = None,
    *,
    policy: ReconnectPolicy | None = None,
    http_rules: dict[object, Rule] | None = None,
    **backoff: object,
) -> Reconnector:
    config = BackoffConfig(**backoff)  # type: ignore[arg-type]
    return Reconnector(
        policy=policy, backoff=config, rng=rng or random.Random(7), http_rules=http_rules
    )


def opened_at(core: Reconnector, now: float) -> Connected:
    """Start (if idle) and open a connection at ``now``."""
    if core.attempt == 0:
        core.start(now)
    return core.opened(now)


def reconnecting(outcome: Outcome) -> Reconnecting:
    event = outcome.events[-1]
    assert isinstance(event, Reconnecting), outcome
    return event


# -- life cycle -----------------------------------------------------------------------


def test_start_asks_for_attempt_one_in_connecting_state() -> None:
    """The first attempt is number 1 and the public state is CONNECTING."""
    core = make()
    assert core.start(0.0) == 1
    assert core.state is State.CONNECTING


def test_opened_reports_connected_with_attempt_number() -> None:
    """Opening reports Connected(attempt=1) and the state becomes OPEN."""
    core = make()
    core.start(0.0)
    assert core.opened(0.1) == Connected(attempt=1, resumed=False)
    assert core.state is State.OPEN


def test_opened_without_attempt_is_a_state_error() -> None:
    """An adapter reporting an open connection nobody asked for is a bug, raised loudly."""
    with pytest.raises(ReconnectStateError, match="opened"):
        make().opened(0.0)


def test_closed_while_not_open_is_a_state_error() -> None:
    """closed() is only legal while a connection is open."""
    core = make()
    core.start(0.0)
    with pytest.raises(ReconnectStateError, match="closed"):
        core.closed(1.0, code=1006, clean=False)


def test_timer_before_deadline_starts_nothing() -> None:
    """handle_timer before the deadline returns None; at the deadline it starts the attempt."""
    core = make(HighRng())
    core.start(0.0)
    outcome = core.connect_failed(0.0, REFUSED)
    assert outcome.deadline == pytest.approx(0.5)
    assert core.handle_timer(0.49) is None
    assert core.handle_timer(0.5) == 2
    assert core.state is State.RECONNECTING
    assert core.next_deadline() is None


def test_disconnected_carries_knowledge_base_explanation() -> None:
    """Disconnected.explanation is tether.knowledge.summary(code)."""
    core = make()
    opened_at(core, 0.0)
    event = core.closed(1.0, code=1011, reason="boom", clean=True).events[0]
    assert event == Disconnected(1011, "boom", True, summary(1011))


# -- each class of close ---------------------------------------------------------------


def test_1006_backs_off_with_full_jitter_within_base() -> None:
    """1006 after a short connection: Disconnected(clean=False) then a delay in [0, base]."""
    core = make(random.Random(1))
    opened_at(core, 0.0)
    outcome = core.closed(1.0, code=1006, clean=False)
    disconnected, event = outcome.events
    assert disconnected == Disconnected(1006, "", False, summary(1006))
    assert isinstance(event, Reconnecting)
    assert event.cause_code == 1006
    assert event.attempt == 2
    assert 0.0 <= event.delay <= 0.5
    assert core.state is State.RECONNECTING


@pytest.mark.parametrize("code", [1001, 1005, 1011, 1014, 3000, 3499, 4000, 4499])
def test_backoff_codes_reconnect(code: int) -> None:
    """Codes whose policy row is 'reconnect, backoff' schedule an attempt within base."""
    core = make(HighRng())
    opened_at(core, 0.0)
    event = reconnecting(core.closed(1.0, code=code, clean=True))
    assert event.cause_code == code
    assert event.delay == pytest.approx(0.5)


@pytest.mark.parametrize("code", [1000, 1002, 1003, 1007, 1008, 1009, 1010, 3500, 3999, 4500, 4999])
def test_final_codes_give_up(code: int) -> None:
    """Final codes: Disconnected then GaveUp naming the code, state CLOSED, nothing scheduled."""
    core = make()
    opened_at(core, 0.0)
    outcome = core.closed(1.0, code=code, clean=True)
    disconnected, gave_up = outcome.events
    assert isinstance(disconnected, Disconnected)
    assert isinstance(gave_up, GaveUp)
    assert str(code) in gave_up.reason
    assert not outcome.reconnecting
    assert core.state is State.CLOSED
    assert core.next_deadline() is None


def test_1012_waits_inside_the_restart_window() -> None:
    """1012: the delay is drawn from restart_window, whatever the failure count."""
    for seed in range(50):
        core = make(random.Random(seed), restart_window=(0.2, 0.5))
        opened_at(core, 0.0)
        event = reconnecting(core.closed(1.0, code=1012, clean=True))
        assert 0.2 <= event.delay <= 0.5
        assert event.cause_code == 1012


def test_1012_is_not_counted_as_a_failure() -> None:
    """A planned restart leaves the failure count untouched."""
    core = make()
    opened_at(core, 0.0)
    core.closed(100.0, code=1012, clean=True)
    assert core.backoff.failures == 0


def test_1012_then_server_not_back_falls_back_to_backoff() -> None:
    """If the attempt after 1012 fails, the next delay is ordinary backoff (first failure)."""
    core = make(HighRng(), restart_window=(1.0, 5.0))
    opened_at(core, 0.0)
    first = core.closed(100.0, code=1012, clean=True)
    assert first.delay == 5.0
    assert core.handle_timer(105.0) == 2
    event = reconnecting(core.connect_failed(105.1, REFUSED))
    assert event.delay == pytest.approx(0.5)
    assert event.cause_code == 1006


def test_1012_with_a_server_hint_waits_exactly_the_hint() -> None:
    """A goaway's retry hint replaces the random 1012 window."""
    core = make(HighRng(), restart_window=(1.0, 5.0))
    opened_at(core, 0.0)
    assert reconnecting(core.closed(1.0, code=1012, clean=True, hint=0.25)).delay == 0.25


@pytest.mark.parametrize("code", [1006, 1001, 1011])
def test_a_close_after_a_goaway_is_a_planned_restart(code: int) -> None:
    """DESIGN.md §4: "1012, or after a goaway": a server killed mid-drain gives 1006.

    The delay is the goaway's hint and no failure is counted (before: backoff, one
    failure, as for an unannounced drop).
    """
    core = make(HighRng(), restart_window=(1.0, 5.0))
    opened_at(core, 0.0)
    outcome = core.closed(100.0, code=code, clean=code != 1006, hint=0.25)
    assert outcome.decision is not None
    assert outcome.decision.rule.delay is DelayRule.RESTART
    event = reconnecting(outcome)
    assert (event.delay, event.cause_code) == (0.25, code)
    assert core.backoff.failures == 0


def test_a_final_code_after_a_goaway_stays_final() -> None:
    """A goaway does not turn a final code (1008 Policy Violation) into a restart."""
    core = make(HighRng())
    opened_at(core, 0.0)
    assert not core.closed(1.0, code=1008, clean=True, hint=0.25).reconnecting


def test_1013_respects_the_floor() -> None:
    """1013 Try Again Later never waits less than try_again_floor."""
    core = make(LowRng(), try_again_floor=5.0)
    opened_at(core, 0.0)
    assert reconnecting(core.closed(1.0, code=1013, clean=True)).delay == 5.0


def test_policy_override_changes_the_reaction() -> None:
    """A user rule (4001 final) wins over the default 4000-4499 backoff row."""
    core = make(policy=ReconnectPolicy({4001: Rule.final()}))
    opened_at(core, 0.0)
    outcome = core.closed(1.0, code=4001, clean=True)
    assert isinstance(outcome.events[-1], GaveUp)


# -- stability rule: accept-then-close ----------------------------------------------------


def drive_accept_then_close(core: Reconnector, cycles: int, code: int = 1011) -> list[float]:
    """A server that accepts every connection and closes it 10 ms later; returns the delays."""
    now = 0.0
    delays: list[float] = []
    core.start(now)
    for _ in range(cycles):
        core.opened(now)
        now += 0.01
        outcome = core.closed(now, code=code, clean=True)
        assert outcome.deadline is not None
        assert outcome.delay is not None
        delays.append(outcome.delay)
        now = outcome.deadline
        assert core.handle_timer(now) is not None
    return delays


def test_accept_then_close_grows_the_delay() -> None:
    """Each short-lived connection counts as a failure: ceilings double up to the cap."""
    delays = drive_accept_then_close(make(HighRng()), 9)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_accept_then_close_is_not_a_tight_loop() -> None:
    """With real jitter, 20 accept-then-close cycles take well over a minute, not milliseconds."""
    delays = drive_accept_then_close(make(random.Random(3)), 20)
    assert sum(delays) > 60.0


def test_stable_connection_resets_the_backoff() -> None:
    """A connection open for the stability period resets the count: next delay within base."""
    core = make(HighRng(), stability_period=10.0)
    core.start(0.0)
    for _ in range(4):
        core.connect_failed(core.next_deadline() or 0.0, REFUSED)
        core.handle_timer(core.next_deadline() or 0.0)
    core.opened(100.0)
    event = reconnecting(core.closed(110.0, code=1006, clean=False))
    assert event.delay == pytest.approx(0.5)


def test_short_connection_does_not_reset_the_backoff() -> None:
    """A connection shorter than the stability period keeps the failure count growing."""
    core = make(HighRng(), stability_period=10.0)
    core.start(0.0)
    core.connect_failed(0.0, REFUSED)
    core.handle_timer(0.5)
    core.opened(0.5)
    event = reconnecting(core.closed(9.0, code=1006, clean=False))
    assert event.delay == pytest.approx(1.0)


# -- give-up bounds ----------------------------------------------------------------------


def test_gives_up_after_max_attempts() -> None:
    """With max_attempts=3, three failures are retried and the fourth gives up."""
    core = make(max_attempts=3)
    now = 0.0
    core.start(now)
    for expected_attempt in (2, 3, 4):
        event = reconnecting(core.connect_failed(now, REFUSED))
        assert event.attempt == expected_attempt
        now = core.next_deadline() or now
        core.handle_timer(now)
    outcome = core.connect_failed(now, REFUSED)
    assert isinstance(outcome.events[-1], GaveUp)
    assert "max_attempts" in outcome.events[-1].reason
    assert core.state is State.CLOSED
    assert core.attempt == 4


def test_gives_up_after_max_elapsed() -> None:
    """Failures spanning max_elapsed end the loop; no delay ever overshoots the bound."""
    core = make(random.Random(5), max_elapsed=20.0)
    now = 0.0
    core.start(now)
    for _ in range(1000):
        outcome = core.connect_failed(now, REFUSED)
        if not outcome.reconnecting:
            break
        assert outcome.deadline is not None
        assert outcome.deadline <= 20.0
        now = outcome.deadline
        core.handle_timer(now)
    assert isinstance(outcome.events[-1], GaveUp)
    assert "max_elapsed" in outcome.events[-1].reason
    assert now == pytest.approx(20.0)


# -- HTTP statuses at the handshake ----------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_http_auth_refusal_is_final(status: int) -> None:
    """401/403 at the handshake: GaveUp at once, no Disconnected (never connected)."""
    core = make()
    core.start(0.0)
    outcome = core.connect_failed(0.0, ConnectFailure(FailureKind.HTTP, status=status))
    assert len(outcome.events) == 1
    assert isinstance(outcome.events[0], GaveUp)
    assert f"HTTP {status}" in outcome.events[0].reason
    assert core.state is State.CLOSED


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_5xx_backs_off(status: int) -> None:
    """5xx at the handshake: backoff, reported with cause code 1006 (no WebSocket existed)."""
    core = make(HighRng())
    core.start(0.0)
    event = reconnecting(core.connect_failed(0.0, ConnectFailure(FailureKind.HTTP, status=status)))
    assert event.delay == pytest.approx(0.5)
    assert event.cause_code == 1006


def test_http_503_retry_after_is_a_floor() -> None:
    """A Retry-After on a 5xx is honoured as the smallest delay (bounded by the cap)."""
    core = make(LowRng())
    core.start(0.0)
    failure = ConnectFailure(FailureKind.HTTP, status=503, retry_after=7.0)
    assert reconnecting(core.connect_failed(0.0, failure)).delay == 7.0


def test_http_429_uses_retry_after() -> None:
    """429 Too Many Requests waits for Retry-After (and at least the 1013 floor)."""
    core = make(LowRng(), try_again_floor=5.0)
    core.start(0.0)
    failure = ConnectFailure(FailureKind.HTTP, status=429, retry_after=12.0)
    assert reconnecting(core.connect_failed(0.0, failure)).delay == 12.0


@pytest.mark.parametrize("status", [200, 301, 400, 404, 426])
def test_other_http_statuses_are_final(status: int) -> None:
    """Statuses that would be answered the same way again stop the loop."""
    core = make()
    core.start(0.0)
    outcome = core.connect_failed(0.0, ConnectFailure(FailureKind.HTTP, status=status))
    assert isinstance(outcome.events[-1], GaveUp)


def test_http_rules_can_be_overridden() -> None:
    """http_rules lets a deployment retry a 404 (e.g. a route registered late)."""
    core = make(http_rules={404: Rule.reconnect()})
    core.start(0.0)
    outcome = core.connect_failed(0.0, ConnectFailure(FailureKind.HTTP, status=404))
    assert outcome.reconnecting


@pytest.mark.parametrize("kind", [FailureKind.NETWORK, FailureKind.TIMEOUT])
def test_network_and_timeout_failures_follow_the_1006_row(kind: FailureKind) -> None:
    """Refused/unreachable/timeouts back off like 1006."""
    core = make(HighRng())
    core.start(0.0)
    event = reconnecting(core.connect_failed(0.0, ConnectFailure(kind)))
    assert event.delay == pytest.approx(0.5)


def test_a_refused_tls_handshake_is_a_final_1015() -> None:
    """RFC 6455 §7.4.1: 1015 reports a failed TLS handshake; its row (final) decides."""
    core = make()
    core.start(0.0)
    failure = ConnectFailure(FailureKind.TLS, detail="certificate verify failed: self-signed")
    outcome = core.connect_failed(0.0, failure)
    assert not outcome.reconnecting
    assert outcome.decision is not None
    assert outcome.decision.code == 1015
    (gave_up,) = outcome.events
    assert isinstance(gave_up, GaveUp)
    assert gave_up.reason == (
        "TLS handshake refused (certificate verify failed: self-signed):"
        " close code 1015 TLS Handshake is final"
    )
    assert core.state is State.CLOSED


def test_handshake_failure_backs_off_by_default() -> None:
    """A non-HTTP handshake failure (e.g. truncated response) follows the 1006 row."""
    core = make()
    core.start(0.0)
    assert core.connect_failed(0.0, ConnectFailure(FailureKind.HANDSHAKE)).reconnecting


# -- local close -------------------------------------------------------------------------------


def test_close_while_waiting_closes_at_once() -> None:
    """close_requested during the backoff wait: CLOSED now, nothing left to cancel."""
    core = make()
    core.start(0.0)
    core.connect_failed(0.0, REFUSED)
    assert core.close_requested(0.1) is False
    assert core.state is State.CLOSED
    assert core.next_deadline() is None
    assert core.handle_timer(1000.0) is None


def test_close_while_open_reports_disconnected_without_reconnect() -> None:
    """A local close of an open connection reports Disconnected only, and no GaveUp."""
    core = make()
    opened_at(core, 0.0)
    assert core.close_requested(1.0) is True
    outcome = core.closed(1.1, code=1000, clean=True)
    assert [type(e) for e in outcome.events] == [Disconnected]
    assert core.state is State.CLOSED


def test_close_while_attempting_closes_at_once() -> None:
    """close_requested during an attempt: CLOSED now; the adapter cancels the attempt."""
    core = make()
    core.start(0.0)
    assert core.close_requested(0.1) is False
    assert core.state is State.CLOSED


def test_log_line_names_code_and_delay() -> None:
    """The log line reads like 'closed 1012 Service Restart — reconnecting in 2.7 s'."""
    core = make(HighRng(), restart_window=(1.0, 2.7))
    opened_at(core, 0.0)
    outcome = core.closed(1.0, code=1012, clean=True)
    assert outcome.message == "closed 1012 Service Restart — reconnecting in 2.7 s"


# -- a whole run under a fake clock ---------------------------------------------------------------


@dataclass
class Step:
    """One scripted attempt: a connection open for ``lifetime`` s, or a failure."""

    lifetime: float | None = None
    code: int = 1006
    failure: ConnectFailure | None = None


def run(core: Reconnector, script: Iterable[Step]) -> list[tuple[float, object]]:
    """Drive the core like the asyncio adapter does, with a fake clock; returns (time, event)."""
    now = 0.0
    log: list[tuple[float, object]] = []
    attempt: int | None = core.start(now)
    steps = iter(script)
    while attempt is not None:
        step = next(steps)
        if step.failure is not None:
            outcome = core.connect_failed(now, step.failure)
        else:
            log.append((now, core.opened(now)))
            now += step.lifetime or 0.0
            outcome = core.closed(now, code=step.code, clean=step.code != 1006)
        log.extend((now, event) for event in outcome.events)
        deadline = core.next_deadline()
        if deadline is None:
            break
        now = deadline
        attempt = core.handle_timer(now)
    return log


def test_full_run_restart_then_crash_then_final() -> None:
    """1012 → back in the window; 1006 after a stable hour → short backoff; 1008 → end."""
    core = make(random.Random(11), restart_window=(0.2, 0.5))
    log = run(
        core,
        [
            Step(lifetime=60.0, code=1012),
            Step(lifetime=3600.0, code=1006),
            Step(failure=REFUSED),
            Step(lifetime=1.0, code=1008),
        ],
    )
    kinds = [type(event).__name__ for _, event in log]
    assert kinds == [
        "Connected",
        "Disconnected",
        "Reconnecting",
        "Connected",
        "Disconnected",
        "Reconnecting",
        "Reconnecting",
        "Connected",
        "Disconnected",
        "GaveUp",
    ]
    restart_gap = log[3][0] - log[1][0]
    assert 0.2 <= restart_gap <= 0.5
    attempts = [event.attempt for _, event in log if isinstance(event, Connected)]
    assert attempts == [1, 2, 4]


# -- a close code received during the session layer's handshake -----------------------


def test_a_final_close_during_the_handshake_is_final() -> None:
    """Opened, then closed with 1008 before the session began: GaveUp, not the 1006 row."""
    core = make()
    core.start(0.0)
    failure = ConnectFailure(FailureKind.HANDSHAKE, close_code=1008, close_reason="no")
    outcome = core.connect_failed(0.1, failure)
    assert outcome.events[0] == Disconnected(1008, "no", True, summary(1008))
    assert isinstance(outcome.events[-1], GaveUp)
    assert not outcome.reconnecting
    assert core.state is State.CLOSED


def test_a_restart_close_during_the_handshake_waits_one_to_five_seconds() -> None:
    """A server that began draining during the hello (1012): the restart row, not backoff."""
    core = make(HighRng())
    core.start(0.0)
    outcome = core.connect_failed(0.1, ConnectFailure(FailureKind.HANDSHAKE, close_code=1012))
    event = reconnecting(outcome)
    assert event.cause_code == 1012
    assert 1.0 <= event.delay <= 5.0
