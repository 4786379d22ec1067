"""benchmarks.capacity's own pieces: the frames it writes and reads, and what a step means.

No server runs here: the load generator's framing is checked against websockets'
own parser, and a step's verdict against made-up latencies.
"""

from __future__ import annotations

import json

import pytest
from benchmarks.capacity import P99_BOUND_S, Step, _resume_hello, masked_text_frame, server_frame
from benchmarks.peers import V1_HELLO
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader


def _parse_client_frame(data: bytes) -> Frame:
    """Parse ``data`` as a server would: websockets' parser, a mask required."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the frame was incomplete")


@pytest.mark.parametrize("text", [V1_HELLO, "x" * 125, "é" * 100, "y" * 5000])
def test_client_frames_are_masked_text_frames_a_server_reads_back(text: str) -> None:
    data = masked_text_frame(text)
    assert data[1] & 0x80, "a client frame must be masked (RFC 6455 section 5.3)"
    frame = _parse_client_frame(data)
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data.decode() == text


def test_a_resume_hello_names_the_session_of_the_welcome() -> None:
    welcome = {"type": "welcome", "sid": "s1", "token": "t1", "epoch": "e1", "tx": 0}
    hello = json.loads(_parse_client_frame(_resume_hello(welcome)).data)
    assert hello == {"type": "hello", "sid": "s1", "token": "t1", "epoch": "e1", "rx": 0,
                     "attempt": 1}  # fmt: skip


@pytest.mark.parametrize("size", [0, 10, 125, 126, 300, 70_000])
def test_server_frames_are_read_whole_or_not_at_all(size: int) -> None:
    payload = b"w" * size
    frame = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    for cut in range(len(frame)):
        assert server_frame(frame[:cut]) is None, cut
    assert server_frame(frame + b"next") == (0x1, payload, len(frame))


def test_a_step_is_sustained_only_with_every_answer_and_a_p99_under_the_bound() -> None:
    fast = [0.010] * 99
    assert Step("x", 100, 100, [*fast, 0.5], {}, 1.0, 0.0, 0.0).sustained  # the max is not the p99
    assert not Step("x", 100, 100, [*fast[:-1], 0.5, 0.5], {}, 1.0, 0.0, 0.0).sustained
    # One connection never answered: it counts as infinitely late, and the step fails.
    lost = Step("x", 100, 100, fast, {"closed": 1}, 1.0, 0.0, 0.0)
    assert not lost.sustained
    assert lost.percentile(1.0) == float("inf")
    assert lost.percentile(0.99) == pytest.approx(0.010)
    assert not Step("x", 100, 100, [*fast, 0.01], {"slow": 1}, 1.0, 0.0, 0.0).sustained
    assert Step("x", 1, 1, [P99_BOUND_S], {}, None, 0.0, 0.0).sustained
