"""``ResumeLimiter``: refused resumes per address in a sliding window, on a fake clock."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.exceptions import ConfigurationError
from tether.ratelimit import ResumeLimit, ResumeLimiter, address_key


def limiter(max_refused: int = 3, window: float = 60.0, max_addresses: int = 100) -> ResumeLimiter:
    return ResumeLimiter(
        ResumeLimit(max_refused=max_refused, window=window, max_addresses=max_addresses)
    )


def test_an_unknown_address_is_allowed() -> None:
    """An address that was never refused may resume."""
    assert limiter().allowed("192.0.2.1", 0.0)


def test_the_limit_blocks_after_max_refused() -> None:
    """Three refusals within the window: the fourth attempt is not allowed, the third was."""
    rl = limiter()
    for t in (0.0, 1.0):
        rl.refused("192.0.2.1", t)
    assert rl.allowed("192.0.2.1", 2.0)
    rl.refused("192.0.2.1", 2.0)
    assert not rl.allowed("192.0.2.1", 3.0)


def test_refused_says_when_the_allowance_is_used_up() -> None:
    """refused() returns True exactly from the max_refused-th refusal on."""
    rl = limiter()
    assert [rl.refused("192.0.2.1", float(t)) for t in range(4)] == [False, False, True, True]


def test_the_window_slides() -> None:
    """A refusal older than the window stops counting: one slot frees at t0 + window."""
    rl = limiter()
    for t in (0.0, 10.0, 20.0):
        rl.refused("192.0.2.1", t)
    assert not rl.allowed("192.0.2.1", 59.9)
    assert rl.allowed("192.0.2.1", 60.0)


def test_other_addresses_are_not_affected() -> None:
    """A blocked IPv4 address does not block its neighbour."""
    rl = limiter(max_refused=1)
    rl.refused("192.0.2.1", 0.0)
    assert not rl.allowed("192.0.2.1", 0.0)
    assert rl.allowed("192.0.2.2", 0.0)


def test_ipv6_counts_per_slash_64() -> None:
    """Two addresses in one /64 share a count; another /64 does not."""
    rl = limiter(max_refused=2)
    rl.refused("2001:db8:1:2::1", 0.0)
    rl.refused("2001:db8:1:2:ffff::9", 0.0)
    assert not rl.allowed("2001:db8:1:2::77", 0.0)
    assert rl.allowed("2001:db8:1:3::1", 0.0)


def test_address_keys() -> None:
    """IPv4 as is; IPv6 as its /64; IPv4-mapped IPv6 as the IPv4; zone ids dropped."""
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8::1") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key(None) == "None"


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.text(alphabet="0123456789.:%abcdefx/ ", max_size=24),
        st.text(max_size=12),
    )
)
def test_the_ipv4_shortcut_keys_as_parsing_would(host: str) -> None:
    """A string with neither ':' nor '%' is keyed as itself, which parsing it gives too."""
    if ":" not in host and "%" not in host:
        try:
            parsed = str(ipaddress.ip_address(host))
        except ValueError:
            parsed = host
        assert address_key(host) == parsed == host


def test_memory_is_bounded_by_max_addresses() -> None:
    """10,000 addresses refused once each: at most max_addresses are remembered."""
    rl = limiter(max_refused=1, max_addresses=100)
    for n in range(10_000):
        rl.refused(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", float(n))
    assert rl.tracked() == 100
    assert not rl.allowed("10.0.39.15", 10_000.0)  # the newest is still remembered


def test_expired_addresses_are_forgotten() -> None:
    """Once its refusals are older than the window, an address is no longer tracked."""
    rl = limiter()
    rl.refused("192.0.2.1", 0.0)
    assert rl.allowed("192.0.2.1", 61.0)
    assert rl.tracked() == 0


@pytest.mark.parametrize(
    "kwargs", [{"max_refused": 0}, {"window": 0.0}, {"max_addresses": 0}, {"max_refused": True}]
)
def test_bad_limits_are_configuration_errors(kwargs: dict[str, object]) -> None:
    """Non-positive limits are refused with ConfigurationError."""
    with pytest.raises(ConfigurationError):
        ResumeLimit(**kwargs)  # type: ignore[arg-type]


def test_forget_stale_drops_only_addresses_whose_last_refusal_left_the_window() -> None:
    """An address refused at 0 and one refused at 0 and 50: at 61 the first is stale
    (its last refusal left the 60 s window), the second is not; nothing else changes."""
    rl = limiter(max_refused=3)
    rl.refused("192.0.2.1", 0.0)
    rl.refused("192.0.2.2", 0.0)
    rl.refused("192.0.2.2", 50.0)
    assert rl.forget_stale(59.0) == 0
    assert rl.forget_stale(61.0) == 1
    assert rl.tracked() == 1
    # The one kept still counts both its refusals' worth, within the window.
    assert rl.allowed("192.0.2.2", 61.0)
    assert rl.forget_stale(111.0) == 1
    assert rl.tracked() == 0


def test_forget_stale_after_a_burst_of_addresses() -> None:
    """10,000 addresses refused once within one second: all forgotten a window later."""
    rl = limiter(max_refused=1, max_addresses=65_536)
    for n in range(10_000):
        rl.refused(f"10.0.{n // 256}.{n % 256}", n / 10_000)
    assert rl.tracked() == 10_000
    # Those refused at or before 0.5 s (a refusal exactly a window old is out, as in
    # allowed()), then the rest.
    assert rl.forget_stale(60.5) == 5_001
    assert rl.forget_stale(61.0) == 4_999
    assert rl.tracked() == 0
