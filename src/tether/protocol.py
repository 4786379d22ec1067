"""tether.v1 wire format: encode and decode every frame (spec: ``docs/protocol.md``).

One tether.v1 frame is one whole WebSocket message:

* **data**, in the same message type as the application message, so text stays
  text (the engine still validates UTF-8, a browser still gets a string) and
  binary stays binary:

  - text: ``"d" SEQ ":" ACK ":" PAYLOAD`` with SEQ and ACK canonical decimal;
  - binary: ``0x64`` (``"d"``), SEQ as unsigned 64-bit big-endian, ACK likewise,
    then PAYLOAD (17 bytes of header).

* **control**, a JSON object in a text message: ``hello``, ``welcome``, ``ack``,
  ``goaway``. A text message starting with ``{`` is control, with ``d`` is data.

:func:`decode` never raises on peer input except :class:`~tether.exceptions.ProtocolError`,
whose ``close_code`` is the code to fail the connection with (1002 here), and
never allocates more than the message it was given (control frames are capped
at :data:`MAX_CONTROL_CHARS` before JSON parsing).
"""

from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ProtocolError

__all__ = [
    "BINARY_DATA_HEADER",
    "DATA_TAG",
    "MAX_CONTROL_CHARS",
    "MAX_SEQ",
    "SUBPROTOCOL",
    "Ack",
    "Data",
    "Frame",
    "GoAway",
    "Hello",
    "LostReason",
    "Payload",
    "TetherCloseCode",
    "Welcome",
    "binary_data_header",
    "decode",
    "encode",
    "encode_ack",
    "encode_data",
    "parse_data",
    "text_data_header",
    "unpack_binary_header",
]

#: The ``Sec-WebSocket-Protocol`` value that turns tether.v1 on (RFC 6455 §4.1, §11.3.4).
SUBPROTOCOL = "tether.v1"

#: Largest sequence number or ack: 2**53 - 1, so JSON and JavaScript numbers hold it
#: exactly. The binary header has 64 bits of room; a larger value is a protocol error.
MAX_SEQ = 2**53 - 1

#: Control frames longer than this are refused before parsing (bounded allocation).
MAX_CONTROL_CHARS = 4096

#: Size of the binary data header: type byte, seq (u64), ack (u64).
BINARY_DATA_HEADER = 17

#: The type byte of a binary data frame (``"d"``).
DATA_TAG = 0x64
_HEADER = struct.Struct("!BQQ")
#: ``(type, seq, ack)`` of a binary frame's header, unchecked; ``struct.error`` if the
#: message is shorter than :data:`BINARY_DATA_HEADER` (an endpoint's per-message path
#: reads it without a call of its own; :func:`parse_data` checks it).
unpack_binary_header = _HEADER.unpack_from
_MAX_DIGITS = len(str(MAX_SEQ))
# Canonical decimal: "0" or no leading zero; bounded length so matching is cheap.
_DECIMAL = re.compile(rf"(?:0|[1-9][0-9]{{0,{_MAX_DIGITS - 1}}})")
_TEXT_HEADER = re.compile(rf"d({_DECIMAL.pattern}):({_DECIMAL.pattern}):")
# Identifiers (sid, token, epoch) and reasons: short, printable, URL-safe.
_IDENT = re.compile(r"[A-Za-z0-9_\-]{1,128}")
#: ``json.dumps(body, separators=(",", ":"))`` with one encoder made once: json.dumps
#: builds a new JSONEncoder per call whenever an argument is not the default (the
#: welcome of every resume, the hello of every reconnection). Same settings, same text.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
#: How that encoder quotes a str (it has ensure_ascii set): the C function, if built.
_QUOTE = json.encoder.encode_basestring_ascii
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: A standalone ack exactly as encode_ack() writes it (rx canonical, at most 16 digits).
_ACK_TEXT = re.compile(rf'\{{"type":"ack","rx":({_DECIMAL.pattern})\}}')

Payload = str | bytes


class TetherCloseCode(enum.IntEnum):
    """Close codes tether.v1 sends, from the private range (RFC 6455 §7.4.2: 4000-4999).

    The numbers are chosen against tether's reconnect policy: 4000-4499 reconnect
    with backoff (then resume), 4500-4999 are final.
    """

    #: A data frame skipped a sequence number; resuming repairs it (never skip).
    SEQUENCE_GAP = 4201
    #: The replay buffer stayed full (or unacknowledged for ``resume_window``) for
    #: ``send_timeout``; reconnecting and resuming re-synchronises the acks.
    REPLAY_OVERFLOW = 4202
    #: No ``hello`` (or no ``welcome``) arrived within the handshake timeout.
    HANDSHAKE_TIMEOUT = 4203
    #: The ``hello`` is older than one the server already served for its session
    #: (``hello.attempt``): a connection the client gave up on, whose hello came
    #: late. It resumes nothing and starts no session. A client never gets it on its
    #: live connection (its numbers only go up) unless somebody else resumed with its
    #: token and a higher number: it reports ``SessionLost("superseded")`` and
    #: reconnects with a new session.
    SUPERSEDED = 4204
    #: Another connection resumed this session; this one is fenced off for good.
    TAKEN_OVER = 4901


class LostReason(str, enum.Enum):
    """Why a resume was refused (``welcome.reason``, ``SessionLost.reason``)."""

    EXPIRED = "expired"
    UNKNOWN = "unknown"
    OVERFLOW = "overflow"
    EPOCH_MISMATCH = "epoch_mismatch"
    TOKEN_INVALID = "token_invalid"
    STORE_UNAVAILABLE = "store_unavailable"
    NOT_RESUMABLE = "not_resumable"
    TAKEN_OVER = "taken_over"
    #: Too many refused resumes from the client's address (IPv6: its /64) recently;
    #: the session named in ``hello`` was not looked at (docs/security.md).
    RATE_LIMITED = "rate_limited"
    #: ``hello.attempt`` is not above the highest the server served for the
    #: session. Never in a welcome: the server closes with 4204 and starts no
    #: session (the hello came late on a connection its client gave up on). A
    #: client that gets 4204 all the same reports it as ``SessionLost.reason``.
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Data:
    """An application message with its sequence number and a piggybacked ack.

    Attributes:
        seq: this message's sequence number in its direction (1, 2, ...).
        ack: the highest sequence number the sender received from the peer, in order.
        payload: the application message; ``str`` travels as text, ``bytes`` as binary.
    """

    seq: int
    ack: int
    payload: Payload


@dataclass(frozen=True)
class Hello:
    """Client -> server, first message on a connection.

    ``sid``, ``token`` and ``epoch`` are all None for a new session, all set to resume.

    Attributes:
        sid: the session id to resume.
        token: the resume token from the last ``welcome``.
        epoch: the store epoch from the last ``welcome``.
        rx: the highest server sequence number the client received in order.
        attempt: this resume's number among the client's resumes of the session
            (1, 2, ... on each new connection), or None (not numbered: a client
            written before the field). The server keeps the highest it served and
            refuses a lower or equal one as late (4204), so that a hello which
            arrives after its client's next one cannot take the session over.
    """

    sid: str | None = None
    # repr=False: a hello written to a log must not leak the token that resumes the session.
    token: str | None = field(default=None, repr=False)
    epoch: str | None = None
    rx: int = 0
    attempt: int | None = None


@dataclass(frozen=True)
class Welcome:
    """Server -> client, answer to ``hello``.

    Attributes:
        resumed: True when the session in ``hello`` was resumed.
        reason: why a requested resume was refused (a :class:`LostReason` value), else None.
        sid: the session id in force from now on.
        token: the new resume token (rotated on every welcome).
        epoch: the store epoch.
        rx: the highest client sequence number the server holds (durably, if its store is).
        tx: the highest sequence number the server has assigned so far.
        window_ms: how long the server keeps a disconnected session, in milliseconds.
    """

    resumed: bool
    reason: str | None
    sid: str
    token: str = field(repr=False)  # never in a log line (docs/security.md)
    epoch: str
    rx: int
    tx: int
    window_ms: int


@dataclass(frozen=True)
class Ack:
    """Standalone cumulative ack, either direction.

    Attributes:
        rx: the highest sequence number received in order.
    """

    rx: int


@dataclass(frozen=True)
class GoAway:
    """Server -> client: the server is about to close with 1012.

    Attributes:
        retry_ms: reconnect after a uniformly random delay in [0, retry_ms] milliseconds.
        resume: False when the session will not survive (memory store, process restart).
    """

    retry_ms: int
    resume: bool


Frame = Data | Hello | Welcome | Ack | GoAway


def encode_data(seq: int, ack: int, payload: Payload) -> Payload:
    """Encode a data frame, in the message type of ``payload``."""
    if type(payload) is not bytes and isinstance(payload, str):  # no call for bytes
        return f"d{seq}:{ack}:{payload}"
    return _HEADER.pack(DATA_TAG, seq, ack) + payload


def text_data_header(seq: int, ack: int) -> bytes:
    """The ASCII bytes before a text data frame's payload, for a sender that joins them to
    the payload's UTF-8 only where it frames the message:
    ``text_data_header(seq, ack) + payload.encode() == encode_data(seq, ack, payload).encode()``.
    """
    return b"d%d:%d:" % (seq, ack)


def binary_data_header(seq: int, ack: int) -> bytes:
    """The first :data:`BINARY_DATA_HEADER` bytes of a binary data frame; its payload follows.

    ``binary_data_header(seq, ack) + payload == encode_data(seq, ack, payload)`` for
    ``bytes``: for a sender that joins the two only where it frames the message.
    """
    return _HEADER.pack(DATA_TAG, seq, ack)


def encode_ack(rx: int) -> str:
    """Encode a standalone ack: what :func:`encode` gives for ``Ack(rx)``, built directly.

    The one control frame sent per message received (after ``ack_delay``) on a
    sparse stream: formatting it costs a tenth of ``json.dumps``.
    """
    return '{"type":"ack","rx":%d}' % rx  # noqa: UP031 - an int, formatted as JSON would


def encode(frame: Frame) -> Payload:
    """Encode any frame to the WebSocket message to send (``str``: text, ``bytes``: binary)."""
    if isinstance(frame, Data):
        return encode_data(frame.seq, frame.ack, frame.payload)
    if type(frame) is Ack:
        return encode_ack(frame.rx)
    body: dict[str, Any]
    if type(frame) is Hello:
        text = _encode_hello(frame)
        if text is not None:
            return text
    if isinstance(frame, Hello):
        body = {"type": "hello", "sid": frame.sid, "token": frame.token}
        body |= {"epoch": frame.epoch, "rx": frame.rx}
        if frame.attempt is not None:
            body["attempt"] = frame.attempt
    elif isinstance(frame, Welcome):
        body = {"type": "welcome", "resumed": frame.resumed, "reason": frame.reason}
        body |= {"sid": frame.sid, "token": frame.token, "epoch": frame.epoch}
        body |= {"rx": frame.rx, "tx": frame.tx, "window_ms": frame.window_ms}
    elif isinstance(frame, Ack):
        body = {"type": "ack", "rx": frame.rx}
    else:
        body = {"type": "goaway", "retry_ms": frame.retry_ms, "resume": frame.resume}
    return _COMPACT_JSON.encode(body)


def _encode_hello(hello: Hello) -> str | None:
    """What :func:`encode` gives for ``hello``, formatted directly; None if it is unusual.

    Sent on every connection (a restart storm's reconnections): formatting it costs a
    third of building the dict and running the JSON encoder over it. Strings are
    quoted by the very function that encoder uses for them (``ensure_ascii``), and
    exact ints print as JSON prints them; any other type (a bool for an int, a str
    subclass, some of the three identifiers missing) goes through the encoder.
    """
    sid, token, epoch, rx, attempt = hello.sid, hello.token, hello.epoch, hello.rx, hello.attempt
    if type(rx) is not int or (attempt is not None and type(attempt) is not int):
        return None
    if sid is None and token is None and epoch is None:
        if attempt is not None:
            return None
        return '{"type":"hello","sid":null,"token":null,"epoch":null,"rx":%d}' % rx  # noqa: UP031
    if type(sid) is not str or type(token) is not str or type(epoch) is not str:
        return None
    quote = _QUOTE
    text = '{"type":"hello","sid":%s,"token":%s,"epoch":%s,"rx":%d' % (  # noqa: UP031
        quote(sid),
        quote(token),
        quote(epoch),
        rx,
    )
    if attempt is None:
        return text + "}"
    return text + ',"attempt":%d}' % attempt  # noqa: UP031


def decode(message: Payload) -> Frame:
    """Decode one WebSocket message received on a tether.v1 connection.

    Raises:
        ProtocolError: the message is not a valid tether.v1 frame (``close_code`` 1002).
    """
    if isinstance(message, bytes | bytearray | memoryview):
        return _decode_binary(bytes(message))
    if not isinstance(message, str):
        raise ProtocolError(f"a message is str or bytes, not {type(message).__name__}")
    if message.startswith("d"):
        return _decode_text_data(message)
    if message.startswith("{"):
        return _decode_control(message)
    raise ProtocolError("tether.v1 text message must start with 'd' (data) or '{' (control)")


def parse_data(message: Payload) -> tuple[int, int, Payload] | None:
    """Decode ``message`` if it is a data frame: ``(seq, ack, payload)``; None if it is not one.

    The per-message path of an endpoint: no :class:`Data` object is built. A
    message that is not a data frame (control, or not tether.v1 at all) is left
    to :func:`decode`.

    Raises:
        ProtocolError: a data frame with a malformed header (``close_code`` 1002).
    """
    if type(message) is bytes:
        # _parse_binary() of a valid frame, inlined: this runs for every message. (The
        # length is checked by unpack_from itself: one call less than len().)
        try:
            tag, seq, ack = _HEADER.unpack_from(message)
        except struct.error:
            return _parse_binary(message)  # raises: shorter than its header
        if tag == DATA_TAG and 1 <= seq <= MAX_SEQ and ack <= MAX_SEQ:
            return seq, ack, message[BINARY_DATA_HEADER:]
        return _parse_binary(message)  # raises the precise error
    if type(message) is str and message.startswith("d"):
        return _parse_text_data(message)
    return None


def _parse_binary(message: bytes) -> tuple[int, int, bytes]:
    if len(message) < BINARY_DATA_HEADER:
        raise ProtocolError(f"binary frame of {len(message)} bytes is shorter than its header")
    tag, seq, ack = _HEADER.unpack_from(message)
    if tag != DATA_TAG:
        raise ProtocolError(f"binary frame type 0x{tag:02x} is not data (0x64)")
    if not 1 <= seq <= MAX_SEQ or ack > MAX_SEQ:
        _check_seq(seq, "seq", low=1)
        _check_seq(ack, "ack")
    return seq, ack, message[BINARY_DATA_HEADER:]


def _parse_text_data(message: str) -> tuple[int, int, str]:
    # Match only the bounded header prefix; the payload is never scanned.
    match = _TEXT_HEADER.match(message, 0, 3 + 2 * _MAX_DIGITS)
    if match is None:
        raise ProtocolError("text data frame header must be 'd<seq>:<ack>:' in canonical decimal")
    seq_text, ack_text = match.groups()
    seq = _check_seq(int(seq_text), "seq", low=1)
    ack = _check_seq(int(ack_text), "ack")
    return seq, ack, message[match.end() :]


def _decode_binary(message: bytes) -> Data:
    return Data(*_parse_binary(message))


def _decode_text_data(message: str) -> Data:
    return Data(*_parse_text_data(message))


def _check_seq(value: int, name: str, *, low: int = 0) -> int:
    if not low <= value <= MAX_SEQ:
        raise ProtocolError(f"{name} {value} is outside {low}-{MAX_SEQ}")
    return value


def _decode_control(message: str) -> Frame:
    if len(message) > MAX_CONTROL_CHARS:
        raise ProtocolError(f"control frame longer than {MAX_CONTROL_CHARS} characters")
    ack = _ACK_TEXT.fullmatch(message)
    if ack is not None:
        # What encode_ack() sends (the control frame of every message received on a
        # sparse stream): what the JSON path below gives for it, without JSON.
        return Ack(_check_seq(int(ack.group(1)), "rx"))
    try:
        body = json.loads(message)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"control frame is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("control frame must be a JSON object")
    kind = body.get("type")
    if kind == "ack":
        return Ack(_int(body, "rx"))
    if kind == "hello":
        return _decode_hello(body)
    if kind == "welcome":
        # The checks of _bool, _reason, _ident and _int, inlined (json.loads gives exact
        # types): every resume decodes one. Any failure goes through those helpers,
        # in the same order, for the precise error.
        get = body.get
        resumed, reason, sid, token, epoch = (
            get("resumed"),
            get("reason"),
            get("sid"),
            get("token"),
            get("epoch"),
        )
        rx, tx, window_ms = get("rx"), get("tx"), get("window_ms")
        ident = _IDENT.fullmatch
        if (
            type(resumed) is bool
            and (reason is None or (type(reason) is str and _REASON.fullmatch(reason) is not None))
            and type(sid) is str
            and ident(sid) is not None
            and type(token) is str
            and ident(token) is not None
            and type(epoch) is str
            and ident(epoch) is not None
            and type(rx) is int
            and 0 <= rx <= MAX_SEQ
            and type(tx) is int
            and 0 <= tx <= MAX_SEQ
            and type(window_ms) is int
            and 0 <= window_ms <= MAX_SEQ
        ):
            return Welcome(resumed, reason, sid, token, epoch, rx, tx, window_ms)
        return Welcome(
            resumed=_bool(body, "resumed"),
            reason=_reason(body),
            sid=_ident(body, "sid"),
            token=_ident(body, "token"),
            epoch=_ident(body, "epoch"),
            rx=_int(body, "rx"),
            tx=_int(body, "tx"),
            window_ms=_int(body, "window_ms"),
        )
    if kind == "goaway":
        return GoAway(retry_ms=_int(body, "retry_ms"), resume=_bool(body, "resume"))
    raise ProtocolError(f"unknown control frame type {str(kind)[:32]!r}")


def _decode_hello(body: dict[str, Any]) -> Hello:
    # (No list of the three presences and any()/all() over it: this runs for every
    # hello, so every resume of a restart storm.)
    get = body.get
    sid, token, epoch = get("sid"), get("token"), get("epoch")
    if sid is None and token is None and epoch is None:
        if get("attempt") is not None:
            raise ProtocolError("hello attempt numbers a resume: it needs sid, token and epoch")
        return Hello(rx=_int(body, "rx"))
    if sid is None or token is None or epoch is None:
        raise ProtocolError("hello must carry sid, token and epoch together, or none of them")
    attempt = None
    if get("attempt") is not None:
        attempt = _int(body, "attempt", low=1)
    ident = _IDENT.fullmatch
    if not (
        isinstance(sid, str)
        and ident(sid) is not None
        and isinstance(token, str)
        and ident(token) is not None
        and isinstance(epoch, str)
        and ident(epoch) is not None
    ):
        # (_ident()'s checks, inlined above; it raises the error for the first bad one.)
        sid, token, epoch = _ident(body, "sid"), _ident(body, "token"), _ident(body, "epoch")
    return Hello(sid=sid, token=token, epoch=epoch, rx=_int(body, "rx"), attempt=attempt)


def _int(body: dict[str, Any], key: str, *, low: int = 0) -> int:
    value = body.get(key)
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field {key!r} must be an integer")
    return _check_seq(value, key, low=low)


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be true or false")
    return value


def _ident(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or _IDENT.fullmatch(value) is None:
        raise ProtocolError(f"field {key!r} must be 1-128 characters of [A-Za-z0-9_-]")
    return value


def _reason(body: dict[str, Any]) -> str | None:
    value = body.get("reason")
    if value is None:
        return None
    if not isinstance(value, str) or _REASON.fullmatch(value) is None:
        raise ProtocolError("field 'reason' must be null or a lower-case identifier")
    return value
