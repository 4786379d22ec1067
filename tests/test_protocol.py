"""tether.v1 wire codec: round trips, malformed input, fuzz."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.exceptions import ProtocolError
from tether.policy import ReconnectPolicy
from tether.protocol import (
    BINARY_DATA_HEADER,
    MAX_CONTROL_CHARS,
    MAX_SEQ,
    SUBPROTOCOL,
    Ack,
    Data,
    Frame,
    GoAway,
    Hello,
    LostReason,
    TetherCloseCode,
    Welcome,
    binary_data_header,
    decode,
    encode,
    encode_ack,
    encode_data,
    parse_data,
    text_data_header,
)

WELCOME = Welcome(
    resumed=True,
    reason=None,
    sid="c2lk",
    token="dG9rZW4",
    epoch="ZXBvY2g",
    rx=5,
    tx=9,
    window_ms=120_000,
)

FRAMES: list[Frame] = [
    Data(1, 0, "hello"),
    Data(MAX_SEQ, MAX_SEQ, "x:y:z"),
    Data(7, 3, ""),
    Data(2, 1, "日本語"),
    Data(1, 0, b""),
    Data(MAX_SEQ, 12, b"\x00\xff binary"),
    Hello(),
    Hello("c2lk", "dG9rZW4", "ZXBvY2g", 42),
    Hello("c2lk", "dG9rZW4", "ZXBvY2g", 42, attempt=3),
    Hello("c2lk", "dG9rZW4", "ZXBvY2g", 0, attempt=MAX_SEQ),
    WELCOME,
    Welcome(False, "epoch_mismatch", "bmV3", "dG9r", "ZXA", 0, 0, 1000),
    Ack(0),
    Ack(MAX_SEQ),
    GoAway(retry_ms=3000, resume=False),
]


def test_subprotocol_name() -> None:
    """The subprotocol token is tether.v1."""
    assert SUBPROTOCOL == "tether.v1"


@pytest.mark.parametrize("frame", FRAMES, ids=repr)
def test_round_trip(frame: Frame) -> None:
    """Every frame decodes back to itself."""
    assert decode(encode(frame)) == frame


def test_text_data_stays_text() -> None:
    """A text application message travels as a text message."""
    assert encode(Data(3, 2, "hi")) == "d3:2:hi"


def test_binary_data_stays_binary() -> None:
    """A binary application message travels as binary with a 17-byte header."""
    message = encode(Data(3, 2, b"hi"))
    assert isinstance(message, bytes)
    assert message == b"d" + struct.pack("!QQ", 3, 2) + b"hi"
    assert len(message) == BINARY_DATA_HEADER + 2


def test_control_frames_are_compact_json() -> None:
    """Control frames are JSON objects in text messages, without spaces."""
    assert encode(Ack(7)) == '{"type":"ack","rx":7}'


MALFORMED: list[str | bytes] = [
    "",
    "x",
    "d",
    "d1",
    "d1:",
    "d1:0",  # no second colon
    "d0:0:x",  # seq starts at 1
    "d01:0:x",  # leading zero
    "d1:00:x",
    "d-1:0:x",
    "d+1:0:x",
    "d 1:0:x",
    f"d{MAX_SEQ + 1}:0:x",
    f"d1:{MAX_SEQ + 1}:x",
    "d" + "9" * 40 + ":0:x",
    b"",
    b"d" + b"\x00" * 15,
    b"x" + struct.pack("!QQ", 1, 0),
    b"d" + struct.pack("!QQ", 0, 0),
    b"d" + struct.pack("!QQ", MAX_SEQ + 1, 0),
    b"d" + struct.pack("!QQ", 1, 2**64 - 1),
    "{",
    "{}",
    "[]",
    '{"type":"nope"}',
    '{"type":"ack"}',
    '{"type":"ack","rx":-1}',
    '{"type":"ack","rx":1.5}',
    '{"type":"ack","rx":true}',
    '{"type":"ack","rx":"1"}',
    '{"type":"ack","rx":NaN}',
    f'{{"type":"ack","rx":{MAX_SEQ + 1}}}',
    '{"type":"hello","sid":"a","token":null,"epoch":"e","rx":0}',
    '{"type":"hello","sid":"a b","token":"t","epoch":"e","rx":0}',
    '{"type":"hello","sid":"' + "a" * 129 + '","token":"t","epoch":"e","rx":0}',
    '{"type":"hello"}',
    '{"type":"welcome","resumed":1,"reason":null,"sid":"s","token":"t","epoch":"e",'
    '"rx":0,"tx":0,"window_ms":1}',
    '{"type":"welcome","resumed":false,"reason":"Bad Reason","sid":"s","token":"t",'
    '"epoch":"e","rx":0,"tx":0,"window_ms":1}',
    '{"type":"welcome","resumed":false,"reason":null,"sid":"s","token":"t","epoch":"e"}',
    '{"type":"goaway","retry_ms":100}',
    '{"type":"goaway","retry_ms":100,"resume":"yes"}',
    "{" + " " * MAX_CONTROL_CHARS + "}",
    "[" * 3000 + "]" * 3000,
    "{" + '"a":' * 1000 + "1" + "}" * 1000,
]


@pytest.mark.parametrize("message", MALFORMED, ids=lambda m: repr(m)[:40])
def test_malformed_raises_protocol_error(message: str | bytes) -> None:
    """Every malformed frame raises ProtocolError with close code 1002."""
    with pytest.raises(ProtocolError) as caught:
        decode(message)
    assert caught.value.close_code == 1002


@pytest.mark.parametrize(
    "message",
    [m for m in MALFORMED if isinstance(m, bytes) or m.startswith("d")],
    ids=lambda m: repr(m)[:40],
)
def test_parse_data_refuses_every_malformed_data_frame(message: str | bytes) -> None:
    """The endpoints' per-message decoder refuses what decode() refuses, with 1002."""
    with pytest.raises(ProtocolError) as caught:
        parse_data(message)
    assert caught.value.close_code == 1002


def test_non_message_type_raises_protocol_error() -> None:
    """Something that is neither str nor bytes is refused as a ProtocolError."""
    with pytest.raises(ProtocolError):
        decode(42)  # type: ignore[arg-type]


def test_hello_without_session_needs_all_three_absent() -> None:
    """A hello with only some of sid/token/epoch is refused."""
    body = {"type": "hello", "sid": "s", "token": "t", "epoch": None, "rx": 0}
    with pytest.raises(ProtocolError, match="together"):
        decode(json.dumps(body))


def test_hello_without_attempt_is_written_as_before() -> None:
    """An unnumbered hello has no ``attempt`` field (a server before the field reads it)."""
    assert "attempt" not in json.loads(encode(Hello("c2lk", "dG9rZW4", "ZXBvY2g", 1)))
    assert json.loads(encode(Hello("c2lk", "dG9rZW4", "ZXBvY2g", 1, attempt=2)))["attempt"] == 2


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"attempt": 0}, "outside 1-"),
        ({"attempt": MAX_SEQ + 1}, "outside 1-"),
        ({"attempt": True}, "integer"),
        ({"attempt": "2"}, "integer"),
        ({"sid": None, "token": None, "epoch": None, "attempt": 1}, "needs sid"),
    ],
    ids=["zero", "too-big", "bool", "string", "new-session"],
)
def test_hello_attempt_must_be_a_positive_integer_of_a_resume(
    extra: dict[str, object], match: str
) -> None:
    """``attempt`` numbers a resume from 1; anything else is a protocol error (1002)."""
    body = {"type": "hello", "sid": "c2lk", "token": "dG9r", "epoch": "ZXA", "rx": 0} | extra
    with pytest.raises(ProtocolError, match=match):
        decode(json.dumps(body))


def test_unknown_fields_are_ignored() -> None:
    """Extra JSON fields are ignored, so a later minor revision can add some."""
    assert decode('{"type":"ack","rx":3,"extra":[1,2]}') == Ack(3)


def test_text_payload_may_contain_colons_and_digits() -> None:
    """Only the header is parsed; the payload is taken verbatim."""
    assert decode("d12:11:34:56:") == Data(12, 11, "34:56:")


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (TetherCloseCode.SEQUENCE_GAP, True),
        (TetherCloseCode.REPLAY_OVERFLOW, True),
        (TetherCloseCode.HANDSHAKE_TIMEOUT, True),
        (TetherCloseCode.TAKEN_OVER, False),
    ],
)
def test_close_codes_match_default_policy(code: TetherCloseCode, reconnect: bool) -> None:
    """tether's close codes get the documented default reaction: resume, or final."""
    assert ReconnectPolicy().decide(int(code)).reconnect is reconnect


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_bytes_decode_or_protocol_error(message: bytes) -> None:
    """Arbitrary binary messages decode to a frame or raise ProtocolError, nothing else."""
    try:
        frame = decode(message)
    except ProtocolError as exc:
        code = exc.close_code
    else:
        assert isinstance(frame, Data)
        return
    assert code == 1002


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.binary(min_size=1).map(lambda b: b"d" + b)))
def test_fuzz_parse_data_agrees_with_decode(message: bytes) -> None:
    """For binary messages parse_data() gives decode()'s data frame, or raises as it does."""
    try:
        frame = decode(message)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            parse_data(message)
        return
    assert isinstance(frame, Data)
    assert parse_data(message) == (frame.seq, frame.ack, frame.payload)


@settings(max_examples=800, deadline=None)
@given(st.text(max_size=64))
def test_fuzz_text_decode_or_protocol_error(message: str) -> None:
    """Arbitrary text messages decode to a frame or raise ProtocolError, nothing else."""
    try:
        decode(message)
    except ProtocolError as exc:
        code = exc.close_code
    else:
        return
    assert code == 1002


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["hello", "welcome", "ack", "goaway", "x"]),
    st.dictionaries(
        st.sampled_from(["sid", "token", "epoch", "rx", "tx", "resumed", "reason", "window_ms"]),
        JSON_VALUES,
    ),
)
def test_fuzz_control_fields(kind: str, fields: dict[str, object]) -> None:
    """Control frames with arbitrary field values decode or raise ProtocolError only."""
    message = json.dumps({"type": kind, **fields})
    try:
        frame = decode(message)
    except ProtocolError:
        return
    assert decode(encode(frame)) == frame


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, MAX_SEQ),
    st.integers(0, MAX_SEQ),
    st.one_of(st.text(max_size=32), st.binary(max_size=32)),
)
def test_fuzz_data_round_trip(seq: int, ack: int, payload: str | bytes) -> None:
    """Any valid data frame survives encode/decode with its type."""
    assert decode(encode(Data(seq, ack, payload))) == Data(seq, ack, payload)


SPEC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("code", list(TetherCloseCode), ids=lambda c: c.name)
def test_spec_documents_every_close_code(code: TetherCloseCode) -> None:
    """docs/protocol.md has a row for every close code tether.v1 sends."""
    assert f"| {int(code)} | `{code.name}` |" in SPEC


@pytest.mark.parametrize("reason", list(LostReason), ids=lambda r: r.value)
def test_spec_documents_every_reason(reason: LostReason) -> None:
    """docs/protocol.md has a row for every failure reason."""
    assert f"| `{reason.value}` |" in SPEC


def test_spec_documents_limits() -> None:
    """The limits in docs/protocol.md are the ones in the code."""
    assert f"at most **{MAX_CONTROL_CHARS}** characters" in SPEC
    assert f"| control frame size | {MAX_CONTROL_CHARS} characters |" in SPEC
    assert f"in `0 .. 2^53-1`\n({MAX_SEQ})" in SPEC


@pytest.mark.parametrize("rx", [0, 1, 12345, MAX_SEQ])
def test_ack_fast_path_is_the_json_encoding(rx: int) -> None:
    """``encode_ack`` builds exactly what json.dumps gives for the ack, and it decodes."""
    wire = encode_ack(rx)
    assert wire == json.dumps({"type": "ack", "rx": rx}, separators=(",", ":"))
    assert wire == encode(Ack(rx))
    assert decode(wire) == Ack(rx)


def _hello_json(hello: Hello) -> str:
    """The general encoding of a hello: its body through json.dumps."""
    body: dict[str, object] = {"type": "hello", "sid": hello.sid, "token": hello.token}
    body |= {"epoch": hello.epoch, "rx": hello.rx}
    if hello.attempt is not None:
        body["attempt"] = hello.attempt
    return json.dumps(body, separators=(",", ":"))


class _Text(str):
    """A str subclass: encode() must not format it directly."""


_TEXT = st.one_of(
    st.none(), st.text(max_size=20), st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True)
)
_NUMBER = st.one_of(st.integers(min_value=0, max_value=2**64), st.booleans())


@settings(max_examples=400)
@given(_TEXT, _TEXT, _TEXT, _NUMBER, st.one_of(st.none(), _NUMBER))
def test_hello_is_formatted_exactly_as_json_dumps_gives_it(
    sid: str | None, token: str | None, epoch: str | None, rx: int, attempt: int | None
) -> None:
    """encode()'s direct formatting of a hello is the JSON encoding, byte for byte.

    Any text (quotes, control characters, non-ASCII: escaped as json does), missing
    identifiers, bools where ints belong, ints beyond MAX_SEQ: whatever the fast path
    does not format itself goes through the encoder and gives the same text.
    """
    hello = Hello(sid, token, epoch, rx, attempt)
    assert encode(hello) == _hello_json(hello)


@pytest.mark.parametrize(
    "hello",
    [
        Hello(),
        Hello(rx=7),
        Hello("c2lk", "dG9rZW4", "ZXBvY2g", 42, attempt=3),
        Hello("c2lk", "dG9rZW4", "ZXBvY2g", 0),
        Hello(_Text("c2lk"), "dG9rZW4", "ZXBvY2g", 1, attempt=1),
        Hello('s\u00e9"d', "t\\o\nk", "\U0001f600", 2**60, attempt=True),  # type: ignore[arg-type]
        Hello(None, None, None, 0, attempt=2),
        Hello("c2lk", None, "ZXBvY2g", 0),
    ],
)
def test_hello_encoding_examples(hello: Hello) -> None:
    assert encode(hello) == _hello_json(hello)


def test_the_hellos_a_client_sends_are_formatted_directly() -> None:
    """The fast path is the one taken for what ClientEndpoint sends (else it saves nothing)."""
    from tether.protocol import _encode_hello

    assert _encode_hello(Hello(rx=0)) is not None
    assert _encode_hello(Hello("c2lk", "dG9rZW4", "ZXBvY2g", 42, attempt=3)) is not None


def _welcome_checked_field_by_field(body: dict[str, object]) -> Welcome:
    """The general decoding of a welcome body: each field through its checking helper."""
    from tether.protocol import _bool, _ident, _int, _reason

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


_WELCOME_FIELD = st.one_of(
    JSON_VALUES,
    st.integers(-2, 2),
    st.integers(MAX_SEQ - 1, MAX_SEQ + 1),
    st.from_regex(r"[A-Za-z0-9_\-]{1,130}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9_]{0,64}", fullmatch=True),
)


@settings(max_examples=600, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name: _WELCOME_FIELD
            for name in ("resumed", "reason", "sid", "token", "epoch", "rx", "tx", "window_ms")
        },
    ),
    st.booleans(),
)
def test_welcome_decoding_matches_the_field_by_field_checks(
    fields: dict[str, object], valid_base: bool
) -> None:
    """decode() of a welcome gives what the field-by-field checks give: the same
    Welcome, or the same ProtocolError (the first bad field's, in field order)."""
    body: dict[str, object] = {}
    if valid_base:
        body |= {"resumed": True, "reason": None, "sid": "s", "token": "t", "epoch": "e"}
        body |= {"rx": 0, "tx": 3, "window_ms": 1000}
    body |= fields
    message = json.dumps({"type": "welcome", **body})
    parsed = json.loads(message)
    try:
        expected: Welcome | str = _welcome_checked_field_by_field(parsed)
    except ProtocolError as exc:
        expected = str(exc)
    try:
        got: Frame | str = decode(message)
    except ProtocolError as exc:
        got = str(exc)
    assert got == expected


def _outcome(call: Callable[..., object], *args: object) -> tuple[str, object]:
    """A call's value (its repr: a NaN read twice is two unequal floats), or its error."""
    try:
        return "value", repr(call(*args))
    except Exception as exc:  # the type and text of the error are the outcome
        return type(exc).__name__, str(exc)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=0, max_value=10**18).map(encode_ack),
        st.tuples(
            st.sampled_from(['{"type":"ack","rx":', '{"type":"ack", "rx":', '{"rx":']),
            st.from_regex(r"-?[0-9]{1,18}(\.[0-9])?", fullmatch=True),
            st.sampled_from(["}", " }", "} ", "}}", ',"type":"ack"}']),
        ).map("".join),
    )
)
def test_acks_decode_as_the_json_path_decodes_them(message: str) -> None:
    """An ack read directly (encode_ack's exact text) gives what JSON decoding gives."""
    from tether.protocol import _int

    def through_json(text: str) -> Ack:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"control frame is not valid JSON: {exc}") from exc
        if body.get("type") != "ack":
            raise ProtocolError(f"unknown control frame type {str(body.get('type'))[:32]!r}")
        return Ack(_int(body, "rx"))

    assert _outcome(decode, message) == _outcome(through_json, message)


@given(
    seq=st.integers(min_value=1, max_value=MAX_SEQ),
    ack=st.integers(min_value=0, max_value=MAX_SEQ),
    payload=st.binary(max_size=64),
)
def test_a_binary_data_header_then_its_payload_is_the_encoded_frame(
    seq: int, ack: int, payload: bytes
) -> None:
    """binary_data_header() is encode_data()'s frame without the payload; it decodes back."""
    frame = binary_data_header(seq, ack) + payload
    assert frame == encode_data(seq, ack, payload)
    assert len(binary_data_header(seq, ack)) == BINARY_DATA_HEADER
    assert decode(frame) == Data(seq, ack, payload)


@given(
    seq=st.integers(min_value=1, max_value=MAX_SEQ),
    ack=st.integers(min_value=0, max_value=MAX_SEQ),
    # (No lone surrogates: text UTF-8 cannot encode is refused before it is numbered.)
    payload=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=32),
)
def test_a_text_data_header_then_its_payloads_utf8_is_the_encoded_frame(
    seq: int, ack: int, payload: str
) -> None:
    """text_data_header() is ASCII, and with the payload's UTF-8 after it the frame's UTF-8."""
    encoded = payload.encode()
    frame = encode_data(seq, ack, payload)
    assert isinstance(frame, str)
    assert text_data_header(seq, ack).isascii()
    assert text_data_header(seq, ack) + encoded == frame.encode()
    assert decode(frame) == Data(seq, ack, payload)
