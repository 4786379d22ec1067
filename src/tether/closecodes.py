"""WebSocket close codes: the registry tether reasons from.

Sources: RFC 6455 §7.4 (status codes) and the IANA "WebSocket Close Code Number
Registry". The registry is data, not branches: one :class:`CodeInfo` per registered
code and one per range, looked up by :func:`lookup`.

Two functions guard the wire:

* :func:`validate_send` refuses, before any I/O, a code that may not be put in a
  Close frame (RFC 6455 §7.4.1/§7.4.2: 1005, 1006 and 1015 are "designated for use
  in applications expecting a status code to indicate that the connection was
  closed" without one; 1004 is reserved; 0-999 and 1016-2999 are unassigned).
* :func:`classify_received` says what to do with a code that arrived in a Close
  frame: a reserved or out-of-range code is a protocol error (fail with 1002).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .exceptions import ConfigurationError, InvalidCloseCode

__all__ = [
    "MAX_CLOSE_CODE",
    "MAX_REASON_BYTES",
    "REGISTRY",
    "Category",
    "CloseCode",
    "CodeInfo",
    "ReceivedClose",
    "Sender",
    "check_reason",
    "classify_received",
    "lookup",
    "may_send",
    "validate_send",
]

#: Close codes travel as an unsigned 16-bit integer (RFC 6455 §5.5.1).
MAX_CLOSE_CODE = 0xFFFF
#: A Close frame's reason: a control frame carries at most 125 bytes, two of them the
#: code (RFC 6455 §5.5).
MAX_REASON_BYTES = 123


class CloseCode(enum.IntEnum):
    """The close codes registered with IANA in the 1000-1015 range."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    RESERVED = 1004
    NO_STATUS_RECEIVED = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


class Category(str, enum.Enum):
    """Where a code comes from; decides who may use it."""

    #: Defined by RFC 6455 itself (1000-1011 except the reserved ones).
    STANDARD = "standard"
    #: Registered with IANA after RFC 6455 (1012-1014).
    IANA = "iana"
    #: Registered but never sent on the wire (1004, 1005, 1006, 1015).
    RESERVED = "reserved"
    #: 1016-2999: reserved for future revisions of the protocol; unassigned.
    PROTOCOL_RESERVED = "protocol-reserved"
    #: 3000-3999: registered with IANA by libraries, frameworks and applications.
    REGISTERED = "registered"
    #: 4000-4999: private use, agreed between the two applications.
    PRIVATE = "private"
    #: 0-999 and 5000-65535: not valid close codes at all.
    INVALID = "invalid"


class Sender(str, enum.Enum):
    """Which side may put the code in a Close frame."""

    ANY = "any"
    CLIENT = "client"
    SERVER = "server"
    NONE = "none"


@dataclass(frozen=True)
class CodeInfo:
    """What tether knows about one code or one range of codes.

    Attributes:
        low: first code covered (equal to ``high`` for a single code).
        high: last code covered.
        name: the registered name, or the range's name.
        category: where the code comes from.
        sender: which side may send it (``NONE``: never on the wire).
        registered: True for a code registered individually with IANA.
    """

    low: int
    high: int
    name: str
    category: Category
    sender: Sender
    registered: bool = True

    @property
    def is_range(self) -> bool:
        """True when this entry describes a range rather than a single code."""
        return self.low != self.high

    @property
    def key(self) -> str:
        """Stable key used by the knowledge base: ``"1006"`` or ``"3000-3999"``."""
        return str(self.low) if not self.is_range else f"{self.low}-{self.high}"

    @property
    def may_send(self) -> bool:
        """Whether some endpoint may put this code in a Close frame."""
        return self.sender is not Sender.NONE


def _code(code: CloseCode, name: str, category: Category, sender: Sender) -> CodeInfo:
    return CodeInfo(int(code), int(code), name, category, sender)


_CODES: tuple[CodeInfo, ...] = (
    _code(CloseCode.NORMAL_CLOSURE, "Normal Closure", Category.STANDARD, Sender.ANY),
    _code(CloseCode.GOING_AWAY, "Going Away", Category.STANDARD, Sender.ANY),
    _code(CloseCode.PROTOCOL_ERROR, "Protocol Error", Category.STANDARD, Sender.ANY),
    _code(CloseCode.UNSUPPORTED_DATA, "Unsupported Data", Category.STANDARD, Sender.ANY),
    # RFC 6455 §7.4.1: 1004 "Reserved. The specific meaning might be defined in the future."
    _code(CloseCode.RESERVED, "Reserved", Category.RESERVED, Sender.NONE),
    # RFC 6455 §7.4.1: 1005 and 1006 "MUST NOT be set as a status code in a Close control frame".
    _code(CloseCode.NO_STATUS_RECEIVED, "No Status Received", Category.RESERVED, Sender.NONE),
    _code(CloseCode.ABNORMAL_CLOSURE, "Abnormal Closure", Category.RESERVED, Sender.NONE),
    _code(
        CloseCode.INVALID_PAYLOAD_DATA, "Invalid Frame Payload Data", Category.STANDARD, Sender.ANY
    ),
    _code(CloseCode.POLICY_VIOLATION, "Policy Violation", Category.STANDARD, Sender.ANY),
    _code(CloseCode.MESSAGE_TOO_BIG, "Message Too Big", Category.STANDARD, Sender.ANY),
    # RFC 6455 §7.4.1: 1010 is sent by "an endpoint (client)"; a server fails the handshake instead.
    _code(CloseCode.MANDATORY_EXTENSION, "Mandatory Extension", Category.STANDARD, Sender.CLIENT),
    # RFC 6455 says "a server"; its Errata ID 3227 widened it to "a remote endpoint".
    _code(CloseCode.INTERNAL_ERROR, "Internal Error", Category.STANDARD, Sender.ANY),
    _code(CloseCode.SERVICE_RESTART, "Service Restart", Category.IANA, Sender.SERVER),
    _code(CloseCode.TRY_AGAIN_LATER, "Try Again Later", Category.IANA, Sender.SERVER),
    _code(CloseCode.BAD_GATEWAY, "Bad Gateway", Category.IANA, Sender.SERVER),
    # RFC 6455 §7.4.1: 1015 "MUST NOT be set as a status code in a Close control frame".
    _code(CloseCode.TLS_HANDSHAKE, "TLS Handshake", Category.RESERVED, Sender.NONE),
    # Registered in the 3000-3999 range by the IANA registry.
    CodeInfo(3000, 3000, "Unauthorized", Category.REGISTERED, Sender.ANY),
    CodeInfo(3003, 3003, "Forbidden", Category.REGISTERED, Sender.ANY),
    CodeInfo(3008, 3008, "Timeout", Category.REGISTERED, Sender.ANY),
)

_RANGES: tuple[CodeInfo, ...] = (
    CodeInfo(0, 999, "Not Used", Category.INVALID, Sender.NONE, registered=False),
    CodeInfo(1016, 2999, "Reserved for the Protocol", Category.PROTOCOL_RESERVED, Sender.NONE,
             registered=False),
    CodeInfo(3000, 3999, "Registered (libraries and frameworks)", Category.REGISTERED, Sender.ANY,
             registered=False),
    CodeInfo(4000, 4999, "Private Use", Category.PRIVATE, Sender.ANY, registered=False),
    CodeInfo(5000, MAX_CLOSE_CODE, "Out of Range", Category.INVALID, Sender.NONE,
             registered=False),
)  # fmt: skip

#: Every entry: the individually registered codes first, then the ranges.
REGISTRY: tuple[CodeInfo, ...] = _CODES + _RANGES

_BY_CODE: dict[int, CodeInfo] = {info.low: info for info in _CODES}


def lookup(code: int) -> CodeInfo:
    """Return the registry entry for ``code``: its own entry, or its range's.

    Args:
        code: any integer a Close frame can carry (0-65535).

    Raises:
        ConfigurationError: ``code`` is not an integer in 0-65535.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise ConfigurationError(f"a close code is an integer, not {code!r}")
    if not 0 <= code <= MAX_CLOSE_CODE:
        raise ConfigurationError(f"close code {code} is outside 0-{MAX_CLOSE_CODE}")
    info = _BY_CODE.get(code)
    if info is not None:
        return info
    for entry in _RANGES:
        if entry.low <= code <= entry.high:
            return entry
    raise AssertionError(f"the ranges must cover 0-{MAX_CLOSE_CODE}; {code} fell through")


def may_send(code: int, *, role: str | None = None) -> bool:
    """Whether ``code`` may be put in a Close frame (by ``role``, if given).

    Any value that is not a sendable close code (out of range, not an integer)
    answers False.

    Raises:
        ConfigurationError: ``role`` is not ``"client"``, ``"server"`` or None; a
            misspelt role is a bug in the caller, not a "no".
    """
    _check_role(role)
    try:
        validate_send(code, role=role)
    except InvalidCloseCode:
        return False
    return True


def _check_role(role: str | None) -> None:
    if role not in (None, "client", "server"):
        raise ConfigurationError(f"role must be 'client' or 'server', not {role!r}")


def validate_send(code: int, *, role: str | None = None) -> int:
    """Check ``code`` before it goes in a Close frame, and return it.

    Args:
        code: the close code the application wants to send.
        role: ``"client"`` or ``"server"`` to also check the side; ``None`` to skip.

    Raises:
        InvalidCloseCode: the code may never be sent, or not by ``role``.
        ConfigurationError: ``role`` is not one of the two sides.
    """
    _check_role(role)
    if isinstance(code, bool) or not isinstance(code, int):
        raise InvalidCloseCode(code, "a close code is an integer")
    if not 0 <= code <= MAX_CLOSE_CODE:
        raise InvalidCloseCode(code, f"close codes are 16-bit (0-{MAX_CLOSE_CODE})")
    info = lookup(code)
    if info.sender is Sender.NONE:
        raise InvalidCloseCode(code, _never_sent_reason(info))
    if role == "server" and info.sender is Sender.CLIENT:
        raise InvalidCloseCode(code, f"{code} {info.name} is sent by clients only")
    if role == "client" and info.sender is Sender.SERVER:
        raise InvalidCloseCode(code, f"{code} {info.name} is sent by servers only")
    return code


def check_reason(reason: str) -> str:
    """Check a close reason before it goes in a Close frame, and return it.

    Raises:
        ConfigurationError: ``reason`` is not text, or longer than 123 bytes of UTF-8.
    """
    if not isinstance(reason, str):
        raise ConfigurationError(f"a close reason is text, not {type(reason).__name__}")
    size = len(reason.encode("utf-8"))
    if size > MAX_REASON_BYTES:
        raise ConfigurationError(
            f"close reason is {size} bytes of UTF-8; at most {MAX_REASON_BYTES} fit in a"
            " Close frame (RFC 6455 §5.5)"
        )
    return reason


def _never_sent_reason(info: CodeInfo) -> str:
    if info.low == CloseCode.ABNORMAL_CLOSURE:
        return (
            "1006 Abnormal Closure is reserved: it is reported locally when the connection "
            "dropped without a Close frame and must never be sent (RFC 6455 §7.4.1)"
        )
    if info.low == CloseCode.NO_STATUS_RECEIVED:
        return "1005 No Status Received is reserved for local reporting (RFC 6455 §7.4.1)"
    if info.low == CloseCode.TLS_HANDSHAKE:
        return "1015 TLS Handshake is reserved for local reporting (RFC 6455 §7.4.1)"
    if info.low == CloseCode.RESERVED:
        return "1004 is reserved by RFC 6455 §7.4.1"
    if info.category is Category.PROTOCOL_RESERVED:
        return "1016-2999 are reserved for future versions of the protocol"
    return "valid close codes are 1000-4999 (RFC 6455 §7.4.2)"


@dataclass(frozen=True)
class ReceivedClose:
    """How to treat a code that arrived in a Close frame.

    Attributes:
        code: the code to report locally (1005 when the frame carried none).
        valid: False when the peer sent a code that may not be sent.
        fail_with: the code to fail the connection with when not valid (1002), else None.
    """

    code: int
    valid: bool
    fail_with: int | None


def classify_received(code: int | None) -> ReceivedClose:
    """Classify the status code of a received Close frame.

    ``None`` means the Close frame had no body: RFC 6455 §7.1.5 says to report 1005.
    A code that may not be sent (1005, 1006, 1015, 1004, 0-999, 1016-2999,
    >= 5000) is a protocol error: RFC 6455 §7.4.1 forbids putting it on the wire,
    so the peer is broken; fail the connection with 1002.

    Args:
        code: the status code parsed from the Close frame, or None if it had none.

    Raises:
        ConfigurationError: ``code`` is neither None nor an integer (a caller bug:
            a frame parser always yields one or the other).
    """
    if code is None:
        return ReceivedClose(CloseCode.NO_STATUS_RECEIVED, valid=True, fail_with=None)
    if isinstance(code, bool) or not isinstance(code, int):
        raise ConfigurationError(f"a received close code is an integer or None, not {code!r}")
    if not 0 <= code <= MAX_CLOSE_CODE or lookup(code).sender is Sender.NONE:
        return ReceivedClose(code, valid=False, fail_with=CloseCode.PROTOCOL_ERROR)
    return ReceivedClose(code, valid=True, fail_with=None)
