"""Reconnect delays: exponential backoff with full jitter, the 1012 window, the 1013 floor.

Pure code: the caller passes ``now`` (seconds on any monotonic clock) and an ``rng``
(a :class:`random.Random`), so every delay is reproducible in tests.

Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): the n-th
failure waits ``uniform(0, min(cap, base * factor**n))``. It spreads a crowd of
clients over the whole window instead of synchronising them on its edge.

The failure count resets only after a connection *stayed open* for
``stability_period`` seconds. Resetting on every successful handshake (what
``websockets`` does) turns a server that accepts then closes at once into a
tight reconnect loop.

Two counters, both reset by a stable connection:

* *failures* grow the backoff exponent. A planned restart (1012, goaway) is not a
  failure: it is expected to succeed, so it neither grows nor uses the exponent.
* *attempts* count every reconnect since the last stable connection, whatever
  the cause; ``max_attempts`` and ``max_elapsed`` bound them, so even a server
  that answers every connection with 1012 is given up on eventually.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._numbers import is_finite_number
from .exceptions import ConfigurationError
from .policy import DelayRule

__all__ = ["Backoff", "BackoffConfig"]


@dataclass(frozen=True, kw_only=True)
class BackoffConfig:
    """Settings for :class:`Backoff`. Every duration is in seconds; keyword-only.

    Attributes:
        base: cap of the first failure's delay.
        factor: growth of the cap per consecutive failure.
        cap: largest delay ever chosen by backoff (a server hint may exceed it).
        stability_period: a connection open at least this long resets the counters.
        max_attempts: give up after this many reconnect attempts since the last
            stable connection (None: never).
        max_elapsed: give up once this long has passed since the first close after
            the last stable connection (None: never).
        restart_window: (low, high) of the uniform delay after 1012 or a goaway.
        try_again_floor: smallest delay after 1013 Try Again Later.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    stability_period: float = 10.0
    max_attempts: int | None = None
    max_elapsed: float | None = None
    restart_window: tuple[float, float] = (1.0, 5.0)
    try_again_floor: float = 5.0

    def __post_init__(self) -> None:
        for name in ("base", "factor", "cap", "stability_period", "try_again_floor"):
            _check_finite(name, getattr(self, name))
        if self.base <= 0 or self.cap <= 0:
            raise ConfigurationError(
                f"backoff base and cap must be > 0 seconds, not {self.base!r} and {self.cap!r}"
            )
        if self.factor < 1:
            raise ConfigurationError(f"backoff factor must be >= 1, not {self.factor!r}")
        if self.stability_period < 0:
            raise ConfigurationError(
                f"stability_period must be >= 0 seconds, not {self.stability_period!r}"
            )
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigurationError(
                f"max_attempts must be an integer >= 1 or None, not {self.max_attempts!r}"
            )
        if self.max_elapsed is not None:
            _check_finite("max_elapsed", self.max_elapsed)
            if self.max_elapsed <= 0:
                raise ConfigurationError(
                    f"max_elapsed must be > 0 seconds or None, not {self.max_elapsed!r}"
                )
        window = self.restart_window
        if not (isinstance(window, tuple) and len(window) == 2):
            raise ConfigurationError(
                f"restart_window must be a (low, high) pair of seconds, not {window!r}"
            )
        low, high = window
        _check_finite("restart_window", low)
        _check_finite("restart_window", high)
        if not 0 <= low <= high:
            raise ConfigurationError(
                f"restart_window must be (low, high) with 0 <= low <= high, not {window!r}"
            )
        if self.try_again_floor < 0:
            raise ConfigurationError(
                f"try_again_floor must be >= 0 seconds, not {self.try_again_floor!r}"
            )


def _check_finite(name: str, value: object) -> None:
    if not is_finite_number(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, not {value!r}")


def _usable_hint(hint: float | None) -> float | None:
    """A server hint is peer input: a negative or non-finite one is ignored, not trusted."""
    if hint is None or isinstance(hint, bool) or not isinstance(hint, (int, float)):
        return None
    if not math.isfinite(hint) or hint < 0:
        return None
    return float(hint)


class Backoff:
    """Chooses the delay before each reconnect attempt and decides when to give up.

    Call :meth:`opened` when a connection opens, :meth:`closed` when it closes
    (optional: :meth:`delay` does it), and :meth:`delay` before each reconnect
    attempt, after a close or after a failed connect. :meth:`delay` returns
    ``None`` once the attempt or time bound is exhausted.

    Args:
        config: the settings (defaults: base 0.5 s, factor 2, cap 30 s, stability 10 s).
        rng: source of randomness; pass ``random.Random(seed)`` in tests.
    """

    def __init__(self, config: BackoffConfig | None = None, *, rng: random.Random) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng
        self._failures = 0
        self._attempts = 0
        self._failing_since: float | None = None
        self._opened_at: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last stable connection."""
        return self._failures

    @property
    def attempts(self) -> int:
        """Reconnect attempts (delays handed out) since the last stable connection."""
        return self._attempts

    def opened(self, now: float) -> None:
        """Record that a connection opened at ``now``."""
        self._opened_at = now

    def closed(self, now: float) -> None:
        """Record that the open connection closed at ``now``; reset if it was stable."""
        if self._opened_at is not None and now - self._opened_at >= self.config.stability_period:
            self.reset()
        self._opened_at = None

    def reset(self) -> None:
        """Forget every failure and attempt (the link is healthy)."""
        self._failures = 0
        self._attempts = 0
        self._failing_since = None

    def ceiling(self, failures: int | None = None) -> float:
        """Upper bound of the backoff delay: ``min(cap, base * factor**n)``.

        Args:
            failures: ``n``, the number of failures before the delay in question
                (default: the current count, i.e. the bound of the next backoff delay).

        Raises:
            ConfigurationError: ``failures`` is negative.
        """
        n = self._failures if failures is None else failures
        if n < 0:
            raise ConfigurationError(f"failures must be >= 0, not {n}")
        cfg = self.config
        try:
            grown = cfg.base * cfg.factor**n
        except OverflowError:  # factor**n beyond a float: far past any cap
            return cfg.cap
        return min(cfg.cap, grown)

    def delay(self, rule: DelayRule, now: float, *, hint: float | None = None) -> float | None:
        """Choose the delay before the next attempt.

        Args:
            rule: the policy's delay rule for the close that just happened.
            now: the current time.
            hint: a delay suggested by the server (``retry_ms`` of a goaway, or a
                1013 hint), in seconds; ignored if negative or not finite.

        Returns:
            Seconds to wait, or ``None`` when the bounds say to give up.
        """
        cfg = self.config
        # A connection closing before the stability period is a failure even if it
        # opened: that is what stops an accept-then-close server from looping.
        if self._opened_at is not None:
            self.closed(now)
        if self._failing_since is None:
            self._failing_since = now
        if cfg.max_attempts is not None and self._attempts >= cfg.max_attempts:
            return None
        remaining: float | None = None
        if cfg.max_elapsed is not None:
            remaining = self._failing_since + cfg.max_elapsed - now
            if remaining <= 0:
                return None
        hint = _usable_hint(hint)

        if rule is DelayRule.RESTART:
            # Planned restart: expected to succeed, so it is not counted as a failure
            # and does not grow the backoff; a failed attempt after it continues the
            # backoff where it was.
            low, high = cfg.restart_window
            if hint is not None:
                chosen = lowest = hint
            else:
                chosen, lowest = self._rng.uniform(low, high), low
        else:
            ceiling = self.ceiling(self._failures)
            self._failures += 1
            if rule is DelayRule.TRY_AGAIN_LATER:
                # 1013: the server is overloaded. Draw above the floor (or the hint)
                # instead of clamping small draws up to it: a clamp would bring every
                # client back at the same instant, the herd 1013 asks us to avoid.
                lowest = max(cfg.try_again_floor, hint or 0.0)
                highest = max(lowest, min(cfg.cap, lowest + ceiling))
                chosen = self._rng.uniform(lowest, highest)
            else:
                # Full jitter: uniform over [0, ceiling].
                lowest = 0.0
                chosen = self._rng.uniform(0.0, ceiling)
        if remaining is not None:
            if lowest > remaining:
                # The server asked for more time than the bound leaves: retrying
                # sooner would only repeat the refusal.
                return None
            # Do not sleep past the time bound only to give up afterwards.
            chosen = min(chosen, remaining)
        self._attempts += 1
        return chosen
