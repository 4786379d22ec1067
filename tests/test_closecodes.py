"""Tests for ``tether.closecodes``: the registry, may-send, sender rules, received codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.closecodes import (
    MAX_CLOSE_CODE,
    REGISTRY,
    Category,
    CloseCode,
    ReceivedClose,
    Sender,
    classify_received,
    lookup,
    may_send,
    validate_send,
)
from tether.exceptions import ConfigurationError, InvalidCloseCode, TetherError

#: RFC 6455 §7.4.1: reserved for local reporting or reserved outright, never on the wire.
NEVER_SENT = {1004, 1005, 1006, 1015}


def expected_may_send(code: int) -> bool:
    """The may-send rule written independently of the registry (RFC 6455 §7.4)."""
    if code in NEVER_SENT:
        return False
    return 1000 <= code <= 1015 or 3000 <= code <= 4999


def test_close_code_values() -> None:
    """``CloseCode`` carries the 16 IANA values 1000-1015 under their registered names."""
    expected = {
        "NORMAL_CLOSURE": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "RESERVED": 1004,
        "NO_STATUS_RECEIVED": 1005,
        "ABNORMAL_CLOSURE": 1006,
        "INVALID_PAYLOAD_DATA": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "MANDATORY_EXTENSION": 1010,
        "INTERNAL_ERROR": 1011,
        "SERVICE_RESTART": 1012,
        "TRY_AGAIN_LATER": 1013,
        "BAD_GATEWAY": 1014,
        "TLS_HANDSHAKE": 1015,
    }
    assert {member.name: member.value for member in CloseCode} == expected


def test_close_code_is_an_int() -> None:
    """``CloseCode`` members compare equal to plain integers."""
    assert CloseCode.ABNORMAL_CLOSURE == 1006
    assert int(CloseCode.SERVICE_RESTART) == 1012


def test_may_send_every_code() -> None:
    """may-send matches RFC 6455 §7.4 for every code 0-5000 and 65535."""
    codes = [*range(5001), MAX_CLOSE_CODE]
    wrong = [code for code in codes if may_send(code) is not expected_may_send(code)]
    assert wrong == []
    # The rule is not vacuous: both answers occur.
    assert sum(map(may_send, codes)) == 12 + 2000


@pytest.mark.parametrize("value", [-1, MAX_CLOSE_CODE + 1, 10**9, 1000.0, "1000", None, True])
def test_may_send_refuses_non_codes(value: object) -> None:
    """Values that are not 16-bit integers may never be sent."""
    assert may_send(value) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, MAX_CLOSE_CODE + 1, 1000.0, "1000", None, True])
def test_validate_send_refuses_non_codes(value: object) -> None:
    """``validate_send`` raises ``InvalidCloseCode`` for values that are not 16-bit integers."""
    with pytest.raises(InvalidCloseCode):
        validate_send(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1005, "reserved for local reporting"),
        (1006, "without a Close frame and must never be sent"),
        (1015, "reserved for local reporting"),
        (1004, "reserved"),
        (999, "1000-4999"),
        (2000, "1016-2999"),
        (5000, "1000-4999"),
    ],
)
def test_validate_send_message(code: int, words: str) -> None:
    """Refused codes raise ``InvalidCloseCode`` naming the code and saying why."""
    with pytest.raises(InvalidCloseCode) as caught:
        validate_send(code)
    assert caught.value.code == code
    assert str(caught.value).startswith(f"close code {code} may not be sent: ")
    assert words in caught.value.why


def test_invalid_close_code_is_a_value_error() -> None:
    """``InvalidCloseCode`` is both a ``ValueError`` and a ``TetherError``."""
    assert issubclass(InvalidCloseCode, ValueError)
    assert issubclass(InvalidCloseCode, TetherError)


def test_validate_send_returns_the_code() -> None:
    """A sendable code is returned unchanged, so the call can be used inline."""
    assert validate_send(4001) == 4001


def test_1010_is_client_only() -> None:
    """RFC 6455 §7.4.1: 1010 is sent by a client; a server may not send it."""
    assert validate_send(1010, role="client") == 1010
    with pytest.raises(InvalidCloseCode, match="clients only"):
        validate_send(1010, role="server")


@pytest.mark.parametrize("code", [1012, 1013, 1014])
def test_server_only_codes(code: int) -> None:
    """1012, 1013 and 1014 describe the server's state: only a server sends them."""
    assert validate_send(code, role="server") == code
    with pytest.raises(InvalidCloseCode, match="servers only"):
        validate_send(code, role="client")


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4999])
def test_codes_either_side_may_send(code: int) -> None:
    """The other sendable codes are allowed from both sides."""
    assert may_send(code, role="client")
    assert may_send(code, role="server")


def test_no_role_skips_the_side_check() -> None:
    """Without a role, a side-restricted code is judged only on may-send."""
    assert may_send(1010)
    assert may_send(1012)


@pytest.mark.parametrize("role", ["Client", "peer", ""])
def test_bad_role_is_a_configuration_error(role: str) -> None:
    """A misspelt role raises ``ConfigurationError`` instead of answering "no"."""
    with pytest.raises(ConfigurationError, match="role"):
        may_send(1000, role=role)
    with pytest.raises(ConfigurationError, match="role"):
        validate_send(1000, role=role)


@pytest.mark.parametrize("code", [1005, 1006, 1015, 1004, 0, 999, 1016, 2999, 5000, 65535])
def test_received_unsendable_code_fails_with_1002(code: int) -> None:
    """RFC 6455 §7.4.1: a Close frame carrying a code nobody may send is a protocol error."""
    assert classify_received(code) == ReceivedClose(code, valid=False, fail_with=1002)


def test_received_no_code_reports_1005() -> None:
    """RFC 6455 §7.1.5: a Close frame without a status code is reported as 1005."""
    assert classify_received(None) == ReceivedClose(1005, valid=True, fail_with=None)


@pytest.mark.parametrize("code", [1000, 1001, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000])
def test_received_valid_code(code: int) -> None:
    """A sendable code received is valid and needs no failing."""
    assert classify_received(code) == ReceivedClose(code, valid=True, fail_with=None)


@pytest.mark.parametrize("code", [-1, MAX_CLOSE_CODE + 1])
def test_received_out_of_range_fails_with_1002(code: int) -> None:
    """A code outside 16 bits cannot be valid either (defensive: parsers never yield one)."""
    assert classify_received(code).fail_with == 1002


def test_received_non_integer_is_a_caller_bug() -> None:
    """A received code that is neither None nor an int raises ``ConfigurationError``."""
    with pytest.raises(ConfigurationError):
        classify_received("1000")  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_CLOSE_CODE))
def test_received_valid_exactly_when_sendable(code: int) -> None:
    """For every 16-bit code, "valid when received" equals "may be sent"."""
    assert classify_received(code).valid is may_send(code)


@pytest.mark.parametrize(
    ("code", "key", "category", "sender"),
    [
        (0, "0-999", Category.INVALID, Sender.NONE),
        (999, "0-999", Category.INVALID, Sender.NONE),
        (1016, "1016-2999", Category.PROTOCOL_RESERVED, Sender.NONE),
        (2999, "1016-2999", Category.PROTOCOL_RESERVED, Sender.NONE),
        (3001, "3000-3999", Category.REGISTERED, Sender.ANY),
        (3999, "3000-3999", Category.REGISTERED, Sender.ANY),
        (4000, "4000-4999", Category.PRIVATE, Sender.ANY),
        (4999, "4000-4999", Category.PRIVATE, Sender.ANY),
        (5000, "5000-65535", Category.INVALID, Sender.NONE),
        (65535, "5000-65535", Category.INVALID, Sender.NONE),
    ],
)
def test_lookup_ranges(code: int, key: str, category: Category, sender: Sender) -> None:
    """Unregistered codes resolve to their range's entry."""
    info = lookup(code)
    assert (info.key, info.category, info.sender, info.registered) == (
        key,
        category,
        sender,
        False,
    )
    assert info.is_range


@pytest.mark.parametrize(
    ("code", "name"), [(3000, "Unauthorized"), (3003, "Forbidden"), (3008, "Timeout")]
)
def test_lookup_registered_3xxx(code: int, name: str) -> None:
    """IANA's individually registered 3000, 3003 and 3008 have their own entries."""
    info = lookup(code)
    assert (info.key, info.name, info.registered, info.is_range) == (str(code), name, True, False)
    assert info.category is Category.REGISTERED


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (1000, Category.STANDARD),
        (1011, Category.STANDARD),
        (1004, Category.RESERVED),
        (1006, Category.RESERVED),
        (1012, Category.IANA),
        (1014, Category.IANA),
        (1015, Category.RESERVED),
    ],
)
def test_lookup_categories(code: int, category: Category) -> None:
    """1000-1015 carry the category of their origin (RFC 6455 or IANA, or reserved)."""
    assert lookup(code).category is category


def test_lookup_names_every_enum_member() -> None:
    """Every ``CloseCode`` has its own registry entry with a name."""
    for member in CloseCode:
        info = lookup(member)
        assert (info.low, info.high) == (member.value, member.value)
        assert info.name


@pytest.mark.parametrize("value", [-1, MAX_CLOSE_CODE + 1, "1006", 1006.0, None, False])
def test_lookup_refuses_non_codes(value: object) -> None:
    """``lookup`` raises ``ConfigurationError`` for anything but an int in 0-65535."""
    with pytest.raises(ConfigurationError):
        lookup(value)  # type: ignore[arg-type]


def test_ranges_tile_the_whole_16_bit_space() -> None:
    """The range entries cover 0-65535 with no gap and no overlap outside 1000-1015."""
    ranges = sorted((i.low, i.high) for i in REGISTRY if not i.registered)
    covered = [(0, 999), (1016, 2999), (3000, 3999), (4000, 4999), (5000, MAX_CLOSE_CODE)]
    assert ranges == covered
    single = sorted(i.low for i in REGISTRY if i.registered)
    assert single == [*range(1000, 1016), 3000, 3003, 3008]


def test_registry_may_send_agrees_with_validate_send() -> None:
    """``CodeInfo.may_send`` of every single-code entry agrees with ``validate_send``."""
    for info in REGISTRY:
        if not info.is_range:
            assert info.may_send is may_send(info.low), info.key
