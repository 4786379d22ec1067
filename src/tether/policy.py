"""Per-close-code reconnect policy: a table keyed by code and range (DESIGN.md §4).

The policy says *what kind* of reaction a close code gets; :mod:`tether.backoff`
turns that into a concrete delay. Keeping the two apart lets the knowledge base
print "what tether does by default" straight from this table, so the docs and
the behaviour cannot disagree.

Example, overriding one code and one range::

    policy = ReconnectPolicy().with_rules({
        4001: Rule.final(),                        # our app's "banned" code
        (4100, 4199): Rule.reconnect(DelayRule.RESTART),
    })
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .closecodes import MAX_CLOSE_CODE, CloseCode
from .exceptions import ConfigurationError

__all__ = [
    "CONNECT_FAILED",
    "DEFAULT_RULES",
    "Action",
    "Decision",
    "DelayRule",
    "ReconnectPolicy",
    "Rule",
]

#: Pseudo-code used for "could not connect at all" (refused, DNS, timeout, HTTP 5xx).
#: It follows the 1006 row: the link is not there, so back off exponentially.
CONNECT_FAILED = int(CloseCode.ABNORMAL_CLOSURE)


class Action(str, enum.Enum):
    """What to do after a close."""

    #: Reconnecting would repeat the error, or the peer ended the session on purpose.
    FINAL = "final"
    RECONNECT = "reconnect"


class DelayRule(str, enum.Enum):
    """How the delay before the next attempt is chosen (see :mod:`tether.backoff`)."""

    #: Exponential backoff with full jitter; counts as a failure.
    BACKOFF = "backoff"
    #: Planned restart (1012, goaway): uniform 1-5 s or the server's hint; not a failure.
    RESTART = "restart"
    #: 1013 Try Again Later: backoff with a floor (5 s) and the server's hint honoured.
    TRY_AGAIN_LATER = "try_again_later"


@dataclass(frozen=True)
class Rule:
    """One row of the policy table.

    Attributes:
        action: reconnect or stop.
        delay: how the delay is chosen when reconnecting (ignored when final).
    """

    action: Action
    delay: DelayRule = DelayRule.BACKOFF

    @classmethod
    def final(cls) -> Rule:
        """A rule that stops reconnecting."""
        return cls(Action.FINAL)

    @classmethod
    def reconnect(cls, delay: DelayRule = DelayRule.BACKOFF) -> Rule:
        """A rule that reconnects with the given delay rule."""
        return cls(Action.RECONNECT, delay)

    def describe(self) -> str:
        """Short English description, used by the knowledge base and the CLI.

        The numbers come from :class:`tether.backoff.BackoffConfig`'s defaults, so
        each default is defined once (STYLE.md rule 6).
        """
        if self.action is Action.FINAL:
            return "final: no reconnect"
        # Imported here: backoff imports DelayRule from this module.
        from .backoff import BackoffConfig

        cfg = BackoffConfig()
        low, high = cfg.restart_window
        return {
            DelayRule.BACKOFF: (
                f"reconnect with exponential backoff (full jitter, base {_num(cfg.base)} s, "
                f"cap {_num(cfg.cap)} s)"
            ),
            DelayRule.RESTART: (
                f"reconnect after a short random delay ({_num(low)}-{_num(high)} s, or the "
                "server's hint), not counted as a failure"
            ),
            DelayRule.TRY_AGAIN_LATER: (
                f"reconnect with backoff, at least {_num(cfg.try_again_floor)} s "
                "(server hint honoured)"
            ),
        }[self.delay]


def _num(seconds: float) -> str:
    """``5.0`` -> ``"5"``, ``0.5`` -> ``"0.5"``."""
    return f"{seconds:g}"


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one close.

    Attributes:
        code: the close code decided on (1006 also for connect failures).
        rule: the row that matched.
        source: the key of the row that matched (``"1006"``, ``"3000-3499"``, ...).
    """

    code: int
    rule: Rule
    source: str

    @property
    def reconnect(self) -> bool:
        """True when the client should reconnect."""
        return self.rule.action is Action.RECONNECT


_BACKOFF = Rule.reconnect(DelayRule.BACKOFF)
_FINAL = Rule.final()

Key = int | tuple[int, int]

#: DESIGN.md §4, as data. Single codes win over ranges; narrower ranges over wider.
DEFAULT_RULES: Mapping[Key, Rule] = {
    # 1000 from the server: it ended the session on purpose.
    1000: _FINAL,
    1001: _BACKOFF,
    1002: _FINAL,
    1003: _FINAL,
    # 1005: a Close frame without a code; the peer closed on purpose but said nothing.
    1005: _BACKOFF,
    # 1006: no Close frame (crash, cable, idle kill) and connect failures.
    1006: _BACKOFF,
    1007: _FINAL,
    1008: _FINAL,
    1009: _FINAL,
    1010: _FINAL,
    1011: _BACKOFF,
    1012: Rule.reconnect(DelayRule.RESTART),
    1013: Rule.reconnect(DelayRule.TRY_AGAIN_LATER),
    1014: _BACKOFF,
    # 1015: the TLS handshake failed; retrying would fail the same way.
    1015: _FINAL,
    (3000, 3499): _BACKOFF,
    (3500, 3999): _FINAL,
    (4000, 4499): _BACKOFF,
    (4500, 4999): _FINAL,
    # Codes that may never be received validly: the connection failed with 1002 anyway.
    (0, 999): _FINAL,
    (1016, 2999): _FINAL,
    (5000, MAX_CLOSE_CODE): _FINAL,
    # 1004 is reserved; a peer sending it is broken.
    1004: _FINAL,
}


def _validate_key(key: object) -> Key:
    if isinstance(key, bool):
        raise ConfigurationError(f"policy key must be a code or a (low, high) range, not {key!r}")
    if isinstance(key, int):
        if not 0 <= key <= MAX_CLOSE_CODE:
            raise ConfigurationError(f"policy code {key} is outside 0-{MAX_CLOSE_CODE}")
        return key
    if isinstance(key, range):
        if key.step != 1 or len(key) == 0:
            raise ConfigurationError(f"policy range {key!r} must be contiguous and non-empty")
        key = (key.start, key.stop - 1)
    if (
        isinstance(key, tuple)
        and len(key) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) for k in key)
    ):
        low, high = key
        if low > high:
            raise ConfigurationError(f"policy range {low}-{high} is reversed: ({high}, {low})")
        if not 0 <= low <= high <= MAX_CLOSE_CODE:
            raise ConfigurationError(f"policy range {low}-{high} is not within 0-{MAX_CLOSE_CODE}")
        return (low, high)
    raise ConfigurationError(f"policy key must be a code or a (low, high) range, not {key!r}")


def _normalise(rules: Mapping[Any, Rule], what: str) -> dict[Key, Rule]:
    """Validate keys and values; refuse two spellings of the same key (one would be lost)."""
    table: dict[Key, Rule] = {}
    for key, rule in rules.items():
        if not isinstance(rule, Rule):
            raise ConfigurationError(f"{what} value for {key!r} must be a Rule, not {rule!r}")
        normal = _validate_key(key)
        if normal in table:
            raise ConfigurationError(
                f"{what} key {key!r} repeats {_key_name(normal)}: give each code or range once"
            )
        table[normal] = rule
    return table


def _key_name(key: Key) -> str:
    return str(key) if isinstance(key, int) else f"{key[0]}-{key[1]}"


class ReconnectPolicy:
    """The reconnect policy table: defaults of DESIGN.md §4 plus the user's overrides.

    Args:
        rules: overrides keyed by code (``4001``), by inclusive range (``(4100, 4199)``)
            or by ``range(4100, 4200)``. They win over the defaults.
        defaults: the base table; :data:`DEFAULT_RULES` unless replaced wholesale.

    Raises:
        ConfigurationError: a key is not a code or range within 0-65535, or a value
            is not a :class:`Rule`.
    """

    def __init__(
        self,
        rules: Mapping[Any, Rule] | None = None,
        *,
        defaults: Mapping[Key, Rule] = DEFAULT_RULES,
    ) -> None:
        self._defaults = _normalise(defaults, "policy default")
        self._overrides = _normalise(rules or {}, "policy")

    def with_rules(self, rules: Mapping[Any, Rule]) -> ReconnectPolicy:
        """Return a copy with more overrides (the new ones win over the existing ones).

        Raises:
            ConfigurationError: as for the constructor.
        """
        merged: dict[Key, Rule] = dict(self._overrides)
        merged.update(_normalise(rules, "policy"))
        return ReconnectPolicy(merged, defaults=self._defaults)

    def decide(self, code: int | None) -> Decision:
        """Decide what to do after a close with ``code``.

        Overrides win over the defaults; within one table a single code wins over
        a range, and a narrower range over a wider one.

        Args:
            code: the close code (0-65535); ``None`` (no Close frame, or connect
                failure) is treated as 1006.

        Raises:
            ConfigurationError: ``code`` is neither None nor an integer in 0-65535.
        """
        if code is None:
            code = CONNECT_FAILED
        if isinstance(code, bool) or not isinstance(code, int):
            raise ConfigurationError(f"a close code is an integer or None, not {code!r}")
        if not 0 <= code <= MAX_CLOSE_CODE:
            raise ConfigurationError(f"close code {code} is outside 0-{MAX_CLOSE_CODE}")
        for table in (self._overrides, self._defaults):
            found = _match(table, code)
            if found is not None:
                key, rule = found
                return Decision(code, rule, _key_name(key))
        # A table that does not cover the code: the safe default is to back off.
        return Decision(code, _BACKOFF, "fallback")

    def rows(self) -> Iterable[tuple[str, Rule]]:
        """The effective table, overrides first, as (key, rule) pairs."""
        for table in (self._overrides, self._defaults):
            for key, rule in table.items():
                yield _key_name(key), rule


def _match(table: Mapping[Key, Rule], code: int) -> tuple[Key, Rule] | None:
    """The most specific row for ``code``: the code itself, else the narrowest range."""
    if code in table:
        return code, table[code]
    best: tuple[tuple[int, int], Rule] | None = None
    for key, rule in table.items():
        if isinstance(key, tuple) and key[0] <= code <= key[1]:
            width = key[1] - key[0]
            # Strictly narrower wins; between equal widths the first given wins.
            if best is None or width < best[0][1] - best[0][0]:
                best = (key, rule)
    return best
