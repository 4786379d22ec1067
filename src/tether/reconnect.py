"""The reconnect loop's decisions, without I/O: what to do after each open, close and failure.

:class:`Reconnector` owns the client's life cycle (:class:`~tether.events.State`),
counts attempts, asks the close-code :class:`~tether.policy.ReconnectPolicy` (and
an HTTP-status table for failed handshakes) whether to try again, asks
:class:`~tether.backoff.Backoff` how long to wait, and says which events to report.
The asyncio adapter only does what it is told: open a connection when
:meth:`Reconnector.handle_timer` says so, and report back with :meth:`opened`,
:meth:`closed` or :meth:`connect_failed`. Time is an argument everywhere, so the
whole loop runs under a fake clock in tests.

Legal transitions (anything else raises :class:`ReconnectStateError`)::

    IDLE ──start──> CONNECTING ──opened──> OPEN ──closed──> RECONNECTING (waiting)
                    │  ▲                                     │   ▲
                    │  └────────────── handle_timer ─────────┘   │ connect_failed
                    └─connect_failed─> RECONNECTING (waiting)    │
                    any ──final close / give up / close_requested──> CLOSED

While reconnecting, the public state stays ``RECONNECTING`` both while waiting and
while an attempt is in flight; only the first connection is ``CONNECTING``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass

from .backoff import Backoff, BackoffConfig
from .closecodes import CloseCode, lookup
from .events import Connected, Disconnected, Event, GaveUp, Reconnecting, State
from .knowledge import summary
from .policy import CONNECT_FAILED, Decision, DelayRule, ReconnectPolicy, Rule

__all__ = [
    "DEFAULT_HTTP_RULES",
    "ConnectFailure",
    "FailureKind",
    "Outcome",
    "ReconnectStateError",
    "Reconnector",
    "close_label",
]

_FINAL = Rule.final()
_BACKOFF = Rule.reconnect(DelayRule.BACKOFF)

#: What a failed handshake's HTTP status means, as a policy table keyed by status.
#: 401/403: the credentials were refused; retrying sends the same ones, so stop.
#: 5xx: the server (or a proxy in front of it) is failing, possibly mid-deploy: back off.
#: 408 and 429 are about timing, not about the request: retry (429 honours Retry-After).
#: Everything else (2xx/3xx that are not an upgrade, other 4xx: wrong path, not a
#: WebSocket endpoint, bad subprotocol) would be answered the same way again: stop.
DEFAULT_HTTP_RULES: Mapping[int | tuple[int, int], Rule] = {
    (100, 399): _FINAL,
    (400, 499): _FINAL,
    401: _FINAL,
    403: _FINAL,
    408: _BACKOFF,
    429: Rule.reconnect(DelayRule.TRY_AGAIN_LATER),
    (500, 599): _BACKOFF,
}


class ReconnectStateError(RuntimeError):
    """The adapter reported something that cannot happen in the current state (a bug)."""


class FailureKind(str, enum.Enum):
    """Why an attempt to open a connection failed."""

    #: The TCP (or TLS) connection could not be made or broke during the handshake.
    NETWORK = "network"
    #: The TLS handshake failed (the server's certificate was refused, no common
    #: protocol version or cipher): RFC 6455's 1015, whose policy row decides.
    TLS = "tls"
    #: The opening handshake did not finish within ``open_timeout``.
    TIMEOUT = "timeout"
    #: The server answered the upgrade request with an HTTP status other than 101.
    HTTP = "http"
    #: The server's answer was not a valid WebSocket handshake, or negotiation failed.
    HANDSHAKE = "handshake"


@dataclass(frozen=True)
class ConnectFailure:
    """A failed connection attempt, as the adapter saw it.

    Attributes:
        kind: the class of failure.
        detail: one line for humans (the engine's message).
        status: the HTTP status, for ``HTTP`` failures.
        retry_after: the server's ``Retry-After``, in seconds, if it sent one.
        close_code: for ``HANDSHAKE`` failures, the code of the server's Close frame
            when it opened the WebSocket and closed it before the session layer's
            handshake (tether.v1's hello/welcome) finished; its policy row decides.
        close_reason: the reason that came with ``close_code``.
    """

    kind: FailureKind
    detail: str = ""
    status: int | None = None
    retry_after: float | None = None
    close_code: int | None = None
    close_reason: str = ""

    def describe(self) -> str:
        """One line: ``HTTP 503``, ``timed out``, or the engine's message."""
        if self.close_code is not None:
            reason = f" ({self.close_reason})" if self.close_reason else ""
            return f"closed with {close_label(self.close_code)}{reason} during the handshake"
        if self.kind is FailureKind.HTTP:
            return f"HTTP {self.status}" + (f" ({self.detail})" if self.detail else "")
        if self.kind is FailureKind.TIMEOUT:
            return "opening handshake timed out" + (f" ({self.detail})" if self.detail else "")
        return self.detail or self.kind.value


@dataclass(frozen=True)
class Outcome:
    """What the adapter must do after a close or a failed attempt.

    Attributes:
        events: events to report, in order.
        decision: the policy row that decided (None after a local close).
        delay: seconds until the next attempt, or None when it is over.
        deadline: the time of the next attempt (``now + delay``), or None.
        message: one log line describing the state change.
    """

    events: tuple[Event, ...]
    decision: Decision | None
    delay: float | None
    deadline: float | None
    message: str

    @property
    def reconnecting(self) -> bool:
        """True when another attempt is scheduled."""
        return self.deadline is not None


def close_label(code: int) -> str:
    """``"1012 Service Restart"``: the code and its registered name."""
    try:
        return f"{code} {lookup(code).name}"
    except ValueError:
        return str(code)


class _Phase(enum.Enum):
    IDLE = "idle"
    ATTEMPTING = "attempting"
    OPEN = "open"
    WAITING = "waiting"
    CLOSED = "closed"


class Reconnector:
    """Decides, for one client, when to (re)connect and what to report.

    Args:
        policy: per-close-code reactions; the DESIGN.md §4 defaults if None.
        backoff: delays and give-up bounds; :class:`BackoffConfig` defaults if None.
        rng: randomness for jitter; pass ``random.Random(seed)`` in tests.
        http_rules: overrides of :data:`DEFAULT_HTTP_RULES`, keyed by HTTP status
            or an inclusive ``(low, high)`` range.
        lang: language of ``Disconnected.explanation``.
    """

    def __init__(
        self,
        *,
        policy: ReconnectPolicy | None = None,
        backoff: BackoffConfig | None = None,
        rng: random.Random,
        http_rules: Mapping[object, Rule] | None = None,
        lang: str = "en",
    ) -> None:
        self.policy = policy or ReconnectPolicy()
        self.backoff = Backoff(backoff or BackoffConfig(), rng=rng)
        self.http_policy = ReconnectPolicy(http_rules, defaults=DEFAULT_HTTP_RULES)
        self._lang = lang
        self._phase = _Phase.IDLE
        self._attempt = 0
        self._deadline: float | None = None
        self._close_requested = False

    # -- observation -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The public life-cycle state."""
        if self._phase is _Phase.OPEN:
            return State.OPEN
        if self._phase is _Phase.CLOSED:
            return State.CLOSED
        if self._phase is _Phase.WAITING or self._attempt > 1:
            return State.RECONNECTING
        return State.CONNECTING

    @property
    def attempt(self) -> int:
        """Number of connection attempts started so far (the current one included)."""
        return self._attempt

    @property
    def attempting(self) -> bool:
        """True while an attempt is in flight (between its start and its result)."""
        return self._phase is _Phase.ATTEMPTING

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called to start the next attempt, or None."""
        return self._deadline if self._phase is _Phase.WAITING else None

    # -- inputs ------------------------------------------------------------------------

    def start(self, now: float) -> int:
        """Begin: the adapter must open the first connection now. Returns its attempt number."""
        self._require(_Phase.IDLE, "start")
        return self._begin_attempt()

    def handle_timer(self, now: float) -> int | None:
        """Start the next attempt if its deadline has passed.

        Returns:
            The attempt number to start now, or None if nothing is due.
        """
        if self._phase is not _Phase.WAITING or self._deadline is None or now < self._deadline:
            return None
        return self._begin_attempt()

    def opened(self, now: float, *, resumed: bool = False) -> Connected:
        """The attempt in flight produced an open connection."""
        self._require(_Phase.ATTEMPTING, "opened")
        self._phase = _Phase.OPEN
        self.backoff.opened(now)
        return Connected(attempt=self._attempt, resumed=resumed)

    def closed(
        self,
        now: float,
        *,
        code: int,
        reason: str = "",
        clean: bool,
        cause: str = "",
        hint: float | None = None,
    ) -> Outcome:
        """The open connection ended.

        Args:
            now: the current time.
            code: the close code received (1005 for a Close frame without one; 1006
                when no Close frame was exchanged, including a heartbeat timeout).
            reason: the reason received with the code.
            clean: True exactly when a Close frame was exchanged.
            cause: a local explanation for the log line (e.g. ``no pong within 2 s``).
            hint: seconds the server asked to wait (a tether.v1 goaway's ``retry_ms``);
                the delay after a planned restart, a floor after 1013.
        """
        self._require(_Phase.OPEN, "closed")
        disconnected = Disconnected(
            code=code, reason=reason, clean=clean, explanation=self._explain(code)
        )
        label = close_label(code)
        if reason:
            label += f" ({reason})"
        if cause:
            label += f": {cause}"
        if self._close_requested:
            self.backoff.closed(now)
            self._finish()
            return Outcome((disconnected,), None, None, None, f"closed {label}")
        decision = self.policy.decide(code)
        if hint is not None and decision.reconnect and decision.rule.delay is DelayRule.BACKOFF:
            # A goaway came first (hence the hint): the server announced its restart,
            # and DESIGN.md §4's "1012, or after a goaway" row applies whatever ended
            # the connection then (a server killed mid-drain gives 1006): the short
            # delay, not counted as a failure.
            decision = Decision(code, Rule.reconnect(DelayRule.RESTART), "goaway")
        return self._after(now, decision, code, (disconnected,), f"closed {label}", hint=hint)

    def connect_failed(self, now: float, failure: ConnectFailure) -> Outcome:
        """The attempt in flight failed before the connection opened."""
        self._require(_Phase.ATTEMPTING, "connect_failed")
        text = f"connect failed: {failure.describe()}"
        if failure.kind is FailureKind.HTTP and failure.status is not None:
            http = self.http_policy.decide(failure.status)
            # Report the HTTP row, but the cause code seen by the user is 1006:
            # no WebSocket connection existed, so there is no close code.
            decision = Decision(failure.status, http.rule, f"HTTP {http.source}")
            return self._after(now, decision, CONNECT_FAILED, (), text, hint=failure.retry_after)
        if failure.kind is FailureKind.TLS:
            # RFC 6455 §7.4.1: 1015 is the code reported for a failed TLS handshake.
            # It fails the same way again until someone fixes a certificate or a
            # setting (final by default, DESIGN §4), unlike a TCP failure (1006).
            decision = self.policy.decide(CloseCode.TLS_HANDSHAKE)
            why = f"TLS handshake refused ({failure.describe()})"
            return self._after(now, decision, CloseCode.TLS_HANDSHAKE, (), text, hint=None, why=why)
        code = failure.close_code
        if code is not None:
            # The WebSocket opened and the server closed it with a code: that code
            # decides, as after any close (a final 1008 stops, a 1012 waits 1-5 s).
            # Disconnected reports it; there was no Connected (no session yet).
            disconnected = Disconnected(
                code=code, reason=failure.close_reason, clean=True, explanation=self._explain(code)
            )
            return self._after(
                now, self.policy.decide(code), code, (disconnected,), text, hint=None
            )
        decision = self.policy.decide(CONNECT_FAILED)
        return self._after(now, decision, CONNECT_FAILED, (), text, hint=None)

    def close_requested(self, now: float) -> bool:
        """The user asked to close.

        Returns:
            True when a connection is open: the adapter must run the closing handshake
            and then report :meth:`closed`. False otherwise: the state is CLOSED at once,
            and the adapter must cancel an attempt in flight (and close, unreported, a
            connection it may have opened meanwhile).
        """
        if self._phase is _Phase.CLOSED:
            return False
        self._close_requested = True
        if self._phase is _Phase.OPEN:
            return True
        self._finish()
        return False

    # -- internals ---------------------------------------------------------------------

    def _begin_attempt(self) -> int:
        self._attempt += 1
        self._phase = _Phase.ATTEMPTING
        self._deadline = None
        return self._attempt

    def _after(
        self,
        now: float,
        decision: Decision,
        cause_code: int,
        events: tuple[Event, ...],
        text: str,
        *,
        hint: float | None,
        why: str = "",
    ) -> Outcome:
        if not decision.reconnect:
            self._finish()
            if why:
                gave_up = GaveUp(reason=f"{why}: close code {close_label(decision.code)} is final")
            elif decision.source.startswith("HTTP"):
                gave_up = GaveUp(reason=f"HTTP {decision.code} at handshake is final")
            else:
                gave_up = GaveUp(reason=f"close code {close_label(decision.code)} is final")
            return Outcome(
                (*events, gave_up), decision, None, None, f"{text} — final, not reconnecting"
            )
        delay = self.backoff.delay(decision.rule.delay, now, hint=hint)
        if delay is not None and hint is not None and decision.rule.delay is DelayRule.BACKOFF:
            # A Retry-After on a 5xx is the server telling us when it expects to be back.
            delay = max(delay, min(hint, self.backoff.config.cap))
        if delay is None:
            self._finish()
            gave_up = GaveUp(reason=self._bound_reason())
            return Outcome(
                (*events, gave_up), decision, None, None, f"{text} — gave up: {gave_up.reason}"
            )
        self._phase = _Phase.WAITING
        self._deadline = now + delay
        reconnecting = Reconnecting(attempt=self._attempt + 1, delay=delay, cause_code=cause_code)
        return Outcome(
            (*events, reconnecting),
            decision,
            delay,
            self._deadline,
            f"{text} — reconnecting in {delay:.1f} s",
        )

    def _bound_reason(self) -> str:
        cfg = self.backoff.config
        if cfg.max_attempts is not None and self.backoff.attempts >= cfg.max_attempts:
            attempts = "attempt" if cfg.max_attempts == 1 else "attempts"
            return (
                f"{cfg.max_attempts} reconnect {attempts} without a stable connection"
                " (max_attempts)"
            )
        return f"no stable connection for {cfg.max_elapsed} s (max_elapsed)"

    def _finish(self) -> None:
        self._phase = _Phase.CLOSED
        self._deadline = None

    def _explain(self, code: int) -> str:
        try:
            return summary(code, self._lang)
        except ValueError:
            return str(code)

    def _require(self, phase: _Phase, what: str) -> None:
        if self._phase is not phase:
            raise ReconnectStateError(
                f"{what}() is not valid while {self._phase.value} (expected {phase.value})"
            )
