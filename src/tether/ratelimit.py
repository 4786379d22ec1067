"""Refused resume attempts counted per remote address (sans-I/O: time is an argument).

A tether.v1 resume token is 256 random bits, so guessing one is hopeless; the limit
exists so that nobody can make a server read its store for other people's session
ids thousands of times a second, and so that an address that keeps presenting wrong
tokens is noticed (docs/security.md). The server asks :meth:`ResumeLimiter.allowed`
*before* it reads the store and reports each refused resume with
:meth:`ResumeLimiter.refused`; above the limit it refuses resumes from that address
with the reason ``rate_limited`` without reading the store.

Addresses are grouped the way an attacker holds them: one IPv4 address is one key,
an IPv6 address counts for its /64 (one customer's network usually gets a whole /64),
and an IPv4-mapped IPv6 address counts as the IPv4 address.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass

from .exceptions import ConfigurationError

__all__ = ["ResumeLimit", "ResumeLimiter", "address_key"]


@dataclass(frozen=True, kw_only=True)
class ResumeLimit:
    """How many refused resumes one address may cause.

    Attributes:
        max_refused: refused resumes allowed per address within ``window``; the next
            resume attempt from that address is refused with ``rate_limited``.
        window: length of the sliding window, in seconds.
        max_addresses: most addresses remembered at once (memory bound); the address
            whose last refusal is oldest is forgotten first.
    """

    max_refused: int = 20
    window: float = 60.0
    max_addresses: int = 65_536

    def __post_init__(self) -> None:
        if isinstance(self.max_refused, bool) or self.max_refused < 1:
            raise ConfigurationError(f"max_refused must be >= 1, not {self.max_refused!r}")
        if not self.window > 0:
            raise ConfigurationError(f"window must be > 0 seconds, not {self.window!r}")
        if isinstance(self.max_addresses, bool) or self.max_addresses < 1:
            raise ConfigurationError(f"max_addresses must be >= 1, not {self.max_addresses!r}")


def address_key(host: object) -> str:
    """The key ``host`` is counted under: the IPv4 address, or the IPv6 /64 network.

    Anything that is not an IP address (a Unix socket path, None) is its own key.
    """
    if isinstance(host, str) and ":" not in host and "%" not in host:
        # An IPv4 address (what a socket reports is canonical, and a parsed one prints
        # as written) or no address at all: its own key either way. Every resume
        # asks, and parsing it costs ~4 µs.
        return host
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ResumeLimiter:
    """Sliding-window count of refused resumes per address key.

    Args:
        limit: the limits; ``ResumeLimit()`` (20 per 60 s) by default.
    """

    def __init__(self, limit: ResumeLimit | None = None) -> None:
        self.limit = limit or ResumeLimit()
        # key -> times of its refusals within the window, oldest first; the dict is kept
        # in order of last refusal so the stalest address is evicted first.
        self._refusals: dict[str, collections.deque[float]] = {}

    def allowed(self, host: object, now: float) -> bool:
        """True when a resume attempt from ``host`` may be judged (and the store read)."""
        key = address_key(host)
        times = self._refusals.get(key)
        if times is None:
            return True
        self._expire(key, times, now)
        return len(times) < self.limit.max_refused

    def refused(self, host: object, now: float) -> bool:
        """Count one refused resume from ``host`` at ``now`` (seconds).

        Returns:
            True when this refusal used up the address's allowance (log it once, here).
        """
        key = address_key(host)
        times = self._refusals.pop(key, None)
        if times is None:
            times = collections.deque()
        else:
            self._expire(key, times, now)
        times.append(now)
        # Only the newest max_refused times matter for the decision: memory stays bounded.
        while len(times) > self.limit.max_refused:
            times.popleft()
        self._refusals[key] = times  # re-inserted: now the most recently refused key
        while len(self._refusals) > self.limit.max_addresses:
            del self._refusals[next(iter(self._refusals))]
        return len(times) >= self.limit.max_refused

    def forget_stale(self, now: float) -> int:
        """Forget every address whose last refusal left the window; return how many.

        Without it an address refused once stays remembered until it comes back or
        ``max_addresses`` newer ones push it out: up to 65,536 entries (~55 MB) kept
        for ever after a burst. The dict is in order of last refusal, so the stale
        entries are at its front and the walk stops at the first fresh one.
        """
        horizon = now - self.limit.window
        stale = []
        for key, times in self._refusals.items():
            if times and times[-1] > horizon:
                break
            stale.append(key)
        for key in stale:
            del self._refusals[key]
        return len(stale)

    def tracked(self) -> int:
        """How many address keys are remembered (for tests and metrics)."""
        return len(self._refusals)

    def _expire(self, key: str, times: collections.deque[float], now: float) -> None:
        while times and times[0] <= now - self.limit.window:
            times.popleft()
        if not times:
            self._refusals.pop(key, None)
