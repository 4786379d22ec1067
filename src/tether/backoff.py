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
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .exceptions import ConfigurationError
from .policy import DelayRule

__all__ = ["Backoff", "BackoffConfig"]


@dataclass(frozen=True)
class BackoffConfig:
    """Settings for :class:`Backoff`. Every duration is in seconds.

    Attributes:
        base: cap of the first failure's delay.
        factor: growth of the cap per consecutive failure.
        cap: largest delay ever chosen by backoff.
        stability_period: a connection open at least this long resets the failure count.
        max_attempts: give up after this many consecutive failed attempts (None: never).
        max_elapsed: give up when failures have lasted this long in total (None: never).
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
        if self.base <= 0 or self.cap <= 0:
            raise ConfigurationError("backoff base and cap must be > 0 seconds")
        if self.factor < 1:
            raise ConfigurationError("backoff factor must be >= 1")
        if self.stability_period < 0:
            raise ConfigurationError("stability_period must be >= 0 seconds")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be >= 1 or None")
        if self.max_elapsed is not None and self.max_elapsed <= 0:
            raise ConfigurationError("max_elapsed must be > 0 seconds or None")
        low, high = self.restart_window
        if not 0 <= low <= high:
            raise ConfigurationError("restart_window must be (low, high) with 0 <= low <= high")
        if self.try_again_floor < 0:
            raise ConfigurationError("try_again_floor must be >= 0 seconds")


class Backoff:
    """Chooses the delay before each reconnect attempt and decides when to give up.

    Call :meth:`opened` when a connection opens and :meth:`delay` after it closes (or
    after a failed attempt). :meth:`delay` returns ``None`` once the attempt or time
    bound is exhausted.

    Args:
        config: the settings.
        rng: source of randomness; pass ``random.Random(seed)`` in tests.
    """

    def __init__(self, config: BackoffConfig | None = None, *, rng: random.Random) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng
        self._failures = 0
        self._failing_since: float | None = None
        self._opened_at: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last stable connection."""
        return self._failures

    def opened(self, now: float) -> None:
        """Record that a connection opened at ``now``."""
        self._opened_at = now

    def closed(self, now: float) -> None:
        """Record that the open connection closed at ``now``; reset if it was stable."""
        if self._opened_at is not None and now - self._opened_at >= self.config.stability_period:
            self.reset()
        self._opened_at = None

    def reset(self) -> None:
        """Forget every failure (the link is healthy)."""
        self._failures = 0
        self._failing_since = None

    def ceiling(self, failures: int | None = None) -> float:
        """Upper bound of the backoff delay after ``failures`` failures (default: current)."""
        n = self._failures if failures is None else failures
        cfg = self.config
        # Compare exponents rather than computing factor**n, which overflows for large n.
        if cfg.factor > 1 and n > 0:
            limit = cfg.cap / cfg.base
            power = 1.0
            for _ in range(n):
                power *= cfg.factor
                if power >= limit:
                    return cfg.cap
            return min(cfg.cap, cfg.base * power)
        return min(cfg.cap, cfg.base)

    def delay(self, rule: DelayRule, now: float, *, hint: float | None = None) -> float | None:
        """Choose the delay before the next attempt.

        Args:
            rule: the policy's delay rule for the close that just happened.
            now: the current time.
            hint: a delay suggested by the server (``retry_ms`` of a goaway, or a
                1013 hint), in seconds.

        Returns:
            Seconds to wait, or ``None`` when the bounds say to give up.
        """
        cfg = self.config
        # A connection closing before the stability period is a failure even if it
        # opened: that is what stops an accept-then-close server from looping.
        if self._opened_at is not None:
            self.closed(now)
        if rule is DelayRule.RESTART:
            # Planned restart: expected to succeed, so it is not counted as a failure.
            if hint is not None and hint >= 0:
                return float(hint)
            low, high = cfg.restart_window
            return self._rng.uniform(low, high)
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        if cfg.max_attempts is not None and self._failures > cfg.max_attempts:
            return None
        if cfg.max_elapsed is not None and now - self._failing_since >= cfg.max_elapsed:
            return None
        chosen = self._rng.uniform(0.0, self.ceiling(self._failures - 1))
        if rule is DelayRule.TRY_AGAIN_LATER:
            chosen = max(chosen, cfg.try_again_floor, hint or 0.0)
        if cfg.max_elapsed is not None:
            # Do not sleep past the time bound only to give up afterwards.
            chosen = min(chosen, max(0.0, self._failing_since + cfg.max_elapsed - now))
        return chosen
