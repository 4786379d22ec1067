"""Search for the idle limit of a network path (``tether probe --idle-search``), sans-I/O.

A load balancer, proxy, NAT or firewall often kills a connection on which nothing
moved for some time. The search holds *idle* connections (no data, no pings) and
learns, for each one, whether it survived a given idle time:

* ``SURVIVED``: after ``hold`` idle seconds a ping still got its pong.
* ``KILLED``: the connection was closed while idle, ``at`` seconds in (an active
  kill: FIN/RST or a Close frame). The limit is then ``at``, to within ``slack``
  (how late the close could have reached us).
* ``DEAD``: nothing was seen during the hold, but the ping sent after it got no
  pong (or made the path reset the connection): a silent kill, limit < ``hold``.

Survival is monotonic (surviving ``h`` idle seconds implies surviving less), so
the limit lies in ``(low, high]``. The schedule: while no death has been seen,
*double* the hold from ``first_hold`` (faster if needed so that one batch spans the
range, its last slot always ``max_idle`` when ``parallel`` > 1: a path without a
limit is settled in one batch, and a shorter hold dying silently makes the longer
ones moot so the batch ends early); once bracketed, split ``(low, high)`` into
``parallel + 1`` parts (geometrically when the ratio is large, otherwise evenly),
until ``high - low`` is at most ``resolution``. Each batch runs its trials in
parallel; a trial whose answer can no longer change the bounds is *moot* and can
be cancelled.

Bounds: at most ``max_batches`` batches of at most ``parallel`` connections, each
lasting at most ``max_idle`` plus the pong timeout.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ._numbers import is_finite_number
from .exceptions import ConfigurationError

__all__ = [
    "IdleSearch",
    "IdleSearchConfig",
    "IdleSearchResult",
    "Observation",
    "Outcome",
    "recommend_heartbeat",
]

#: tether's default heartbeat interval (DESIGN.md §5); never recommend more.
DEFAULT_HEARTBEAT_INTERVAL = 15.0


class Outcome(str, enum.Enum):
    """What one idle trial saw."""

    SURVIVED = "survived"
    KILLED = "killed"
    DEAD = "dead"


@dataclass(frozen=True)
class Observation:
    """The result of holding one connection idle.

    Attributes:
        hold: the idle time the trial was scheduled for, in seconds.
        outcome: what happened.
        at: for ``KILLED``, idle seconds when the close arrived.
        slack: for ``KILLED``, how much earlier than ``at`` the kill may have
            happened (the time a close takes to reach us), in seconds.
        code: the close code seen (1006 when no Close frame arrived), if any.
        peer_traffic: True if the server sent pings or messages during the hold:
            the connection was not really idle (its timer was reset by the server).
    """

    hold: float
    outcome: Outcome
    at: float | None = None
    slack: float = 0.0
    code: int | None = None
    peer_traffic: bool = False

    def __post_init__(self) -> None:
        if self.outcome is Outcome.KILLED and self.at is None:
            raise ConfigurationError("a KILLED observation needs the time `at`")


@dataclass(frozen=True)
class IdleSearchConfig:
    """Bounds of an idle-limit search, in seconds.

    Attributes:
        max_idle: the longest idle time tried (``MAX_S``); a path that keeps an
            idle connection this long is reported as "no limit up to max_idle".
        resolution: stop once the limit is known to within this many seconds.
        parallel: connections held at once in one batch.
        first_hold: the first idle time tried; the doubling starts here.
        max_batches: hard bound on the number of batches.
    """

    max_idle: float
    resolution: float = 1.0
    parallel: int = 4
    first_hold: float = 1.0
    max_batches: int = 12

    def __post_init__(self) -> None:
        for name in ("max_idle", "resolution", "first_hold"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value > 0):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds > 0, got {value!r}"
                )
        for name in ("parallel", "max_batches"):
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {count!r}")


@dataclass(frozen=True)
class IdleSearchResult:
    """What the search found.

    Attributes:
        found: True when an idle limit was seen below ``max_idle``.
        low: the longest idle time known to survive, in seconds.
        high: the shortest idle time known to kill, or None ("no limit up to max_idle").
        limit: best estimate of the limit (middle of ``[low, high]``), or None.
        uncertainty: half-width of ``[low, high]``: the limit is ``limit ± uncertainty``.
        close_code: the close code seen when idle connections died (1006: no Close frame).
        kill: ``"closed"`` when the path closed the connection (FIN/RST/Close frame),
            ``"silent"`` when it only stopped answering, None if nothing died.
        recommended_heartbeat: a ping interval that keeps this path busy: at most
            half the surviving idle time, and never more than tether's default.
        trials: connections used.
        batches: batches run.
        converged: False if ``max_batches`` ran out before ``resolution`` was met.
        max_idle: the configured ``max_idle``.
        resolution: the configured resolution.
        server_traffic: trials during which the server sent pings or messages to the
            idle connection; when not 0, idle limits longer than the server's own
            ping or message interval cannot be seen from this client.
    """

    found: bool
    low: float
    high: float | None
    limit: float | None
    uncertainty: float | None
    close_code: int | None
    kill: str | None
    recommended_heartbeat: float
    trials: int
    batches: int
    converged: bool
    max_idle: float
    resolution: float
    server_traffic: int = 0


def recommend_heartbeat(survives: float) -> float:
    """A heartbeat interval for a path that keeps idle connections ``survives`` seconds.

    Half the surviving time (so a ping always lands well inside the window, even
    if one is delayed), rounded down to 0.1 s, at least 0.1 s, and never above
    tether's default of 15 s (which also bounds how long a dead link goes unseen).
    """
    half = math.floor(survives / 2 * 10) / 10
    return min(DEFAULT_HEARTBEAT_INTERVAL, max(0.1, half))


@dataclass
class IdleSearch:
    """The idle-limit search: ask :meth:`next_batch`, run it, :meth:`record` each outcome.

    Args:
        config: the bounds of the search.
    """

    config: IdleSearchConfig
    low: float = 0.0
    high: float | None = None
    trials: int = 0
    batches: int = 0
    server_traffic: int = 0
    _codes: list[int] = field(default_factory=list)
    _kills: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """True when the limit is known to within the resolution, or the budget is spent."""
        if self.low >= self.config.max_idle:
            return True
        if self.high is not None and self.high - self.low <= self.config.resolution:
            return True
        return self.batches >= self.config.max_batches

    def next_batch(self) -> list[float]:
        """The idle times (seconds) to hold in the next batch, in increasing order.

        Returns an empty list when the search is done.
        """
        if self.done:
            return []
        holds = self._doubling() if self.high is None else self._split(self.low, self.high)
        self.batches += 1
        self.trials += len(holds)
        return holds

    def _doubling(self) -> list[float]:
        cfg = self.config
        hold = min(cfg.first_hold, cfg.max_idle)
        while hold <= self.low:
            hold *= 2
        if cfg.parallel == 1:
            return [min(hold, cfg.max_idle)]
        # Grow by 2, or faster when that would not reach max_idle within this batch:
        # the last slot always tries max_idle, so a path without a limit is settled in
        # one batch, and a shorter hold dying makes the longer ones moot (cancelled).
        factor = max(2.0, (cfg.max_idle / hold) ** (1 / (cfg.parallel - 1)))
        holds: list[float] = []
        while len(holds) < cfg.parallel - 1 and hold < cfg.max_idle:
            holds.append(hold)
            hold *= factor
        holds.append(cfg.max_idle)
        return holds

    def _split(self, low: float, high: float) -> list[float]:
        parts = self.config.parallel + 1
        if low > 0 and high / low >= 4:
            ratio = (high / low) ** (1 / parts)
            return [low * ratio**i for i in range(1, parts)]
        step = (high - low) / parts
        return [low + step * i for i in range(1, parts)]

    def moot(self, hold: float) -> bool:
        """True when the outcome of a trial holding ``hold`` s can no longer narrow the bounds."""
        return hold <= self.low or (self.high is not None and hold >= self.high)

    def record(self, observation: Observation) -> None:
        """Narrow the bounds with one trial's outcome."""
        if observation.peer_traffic:
            self.server_traffic += 1
        if observation.outcome is Outcome.SURVIVED:
            self.low = max(self.low, observation.hold)
        elif observation.outcome is Outcome.DEAD:
            self._lower_high(observation.hold)
            self._kills.append("silent")
        else:
            assert observation.at is not None
            self._lower_high(observation.at)
            # It was open until the close reached us: it survived at - slack idle seconds.
            self.low = max(self.low, observation.at - observation.slack)
            self._kills.append("closed")
        if observation.code is not None and observation.outcome is not Outcome.SURVIVED:
            self._codes.append(observation.code)
        if self.high is not None and self.low > self.high:
            # Paths are not perfectly monotonic (timer granularity): keep a valid interval.
            self.low = self.high

    def _lower_high(self, value: float) -> None:
        self.high = value if self.high is None else min(self.high, value)

    def result(self) -> IdleSearchResult:
        """Summarize what is known now (call once :attr:`done`)."""
        cfg = self.config
        found = self.high is not None and self.low < cfg.max_idle
        limit = uncertainty = None
        if found:
            assert self.high is not None
            limit = (self.low + self.high) / 2
            uncertainty = (self.high - self.low) / 2
        code = max(set(self._codes), key=self._codes.count) if self._codes else None
        # One active close proves the path closes: a trial that died "silently" was
        # one whose hold ended as the close came (its ping met the reset), not a path
        # that drops connections without a word.
        kill = ("closed" if "closed" in self._kills else "silent") if self._kills else None
        converged = self.low >= cfg.max_idle or (
            self.high is not None and self.high - self.low <= cfg.resolution
        )
        return IdleSearchResult(
            found=found,
            low=self.low,
            high=self.high if found else None,
            limit=limit,
            uncertainty=uncertainty,
            close_code=code,
            kill=kill,
            recommended_heartbeat=recommend_heartbeat(self.low),
            trials=self.trials,
            batches=self.batches,
            converged=converged,
            max_idle=cfg.max_idle,
            resolution=cfg.resolution,
            server_traffic=self.server_traffic,
        )
