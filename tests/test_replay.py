"""The replay buffer: sequence numbers, bounds, trimming, restore."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.exceptions import QueueFull
from tether.replay import Entry, ReplayBuffer, payload_size


def test_sequence_numbers_start_after_last_seq() -> None:
    """push() assigns last_seq + 1, + 2, ..."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None, last_seq=7)
    assert [buffer.push(p, 0.0).seq for p in "ab"] == [8, 9]
    assert (buffer.first_seq, buffer.last_seq) == (8, 9)


def test_payload_size_counts_utf8_bytes() -> None:
    """Text is counted in UTF-8 bytes, binary in bytes."""
    assert (payload_size("abc"), payload_size("日本"), payload_size(b"\x00\x01")) == (3, 6, 2)


def test_count_bound() -> None:
    """A full buffer (by count) refuses the next message with QueueFull."""
    buffer = ReplayBuffer(max_messages=2, max_bytes=None)
    buffer.push("a", 0.0)
    buffer.push("b", 0.0)
    with pytest.raises(QueueFull):
        buffer.push("c", 0.0)


def test_byte_bound() -> None:
    """A message that would exceed max_bytes is refused."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=10)
    buffer.push(b"x" * 6, 0.0)
    assert not buffer.has_room(5)
    assert buffer.has_room(4)


def test_oversized_message_fits_empty_buffer() -> None:
    """A message larger than max_bytes is admitted into an empty buffer, so it can be sent."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=10)
    buffer.push(b"x" * 100, 0.0)
    assert buffer.bytes == 100
    assert not buffer.has_room(1)


def test_has_room_for_measures_text_in_utf8_bytes_once_not_empty() -> None:
    """has_room_for(payload) is has_room(payload_size(payload)); an empty buffer takes any."""
    buffer = ReplayBuffer(max_messages=2, max_bytes=10)
    assert buffer.has_room_for(b"x" * 100)
    buffer.push(b"x" * 6, 0.0)
    assert buffer.has_room_for("abcd")
    assert not buffer.has_room_for("日本")  # 6 bytes
    buffer.push("ab", 0.0)
    assert not buffer.has_room_for("")  # the count bound


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.integers(1, 4)),
    st.one_of(st.none(), st.integers(0, 12)),
    st.lists(st.one_of(st.binary(max_size=8), st.text(max_size=4)), max_size=5),
    st.one_of(st.binary(max_size=12), st.text(max_size=6)),
)
def test_has_room_for_agrees_with_has_room_of_the_payload_size(
    max_messages: int | None, max_bytes: int | None, held: list[str | bytes], payload: str | bytes
) -> None:
    """has_room_for(p) is: empty, or has_room(payload_size(p)), for any bounds and contents."""
    buffer = ReplayBuffer(max_messages=max_messages, max_bytes=max_bytes)
    for message in held:
        if buffer.has_room_for(message):
            buffer.push(message, 0.0)
    expected = len(buffer) == 0 or buffer.has_room(payload_size(payload))
    assert buffer.has_room_for(payload) == expected


def test_push_keeps_an_entry_with_the_size_in_bytes() -> None:
    """push() returns the Entry it holds: seq, payload, UTF-8 size, time queued."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None)
    entries = [buffer.push(b"ab", 1.0), buffer.push("日本", 2.0)]
    assert entries == [Entry(1, b"ab", 2, 1.0), Entry(2, "日本", 6, 2.0)]
    assert all(type(entry) is Entry for entry in entries)
    assert list(buffer) == entries
    assert buffer.bytes == 8


def test_reaches_a_count_or_a_size() -> None:
    """reaches(messages, size): at least that many messages, or at least that many bytes."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None)
    assert not buffer.reaches(1, 1)
    buffer.push(b"abc", 0.0)
    assert buffer.reaches(1, 100)
    assert buffer.reaches(2, 3)
    assert not buffer.reaches(2, 4)


def test_trim_drops_acked_and_frees_room() -> None:
    """trim(n) drops seq <= n and gives the bytes back."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None)
    for payload in ["aa", "bb", "cc"]:
        buffer.push(payload, 0.0)
    assert buffer.trim(2) == 2
    assert [e.seq for e in buffer] == [3]
    assert buffer.bytes == 2


def test_oldest_queued_at() -> None:
    """oldest_queued_at follows the oldest held message."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None)
    assert buffer.oldest_queued_at is None
    buffer.push("a", 1.0)
    assert buffer.oldest_queued_at == 1.0
    buffer.push("b", 2.0)
    assert buffer.oldest_queued_at == 1.0
    buffer.trim(1)
    assert buffer.oldest_queued_at == 2.0
    buffer.trim(2)
    assert buffer.oldest_queued_at is None
    buffer.push("c", 3.0)
    assert buffer.oldest_queued_at == 3.0
    buffer.clear()
    assert buffer.oldest_queued_at is None
    restored = ReplayBuffer(max_messages=None, max_bytes=None, last_seq=4)
    restored.restore([(5, "e"), (6, "f")], 7.0)
    assert restored.oldest_queued_at == 7.0


def test_clear_returns_payloads() -> None:
    """clear() empties the buffer and returns the payloads in order."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None)
    buffer.push("a", 0.0)
    buffer.push(b"b", 0.0)
    assert buffer.clear() == ("a", b"b")
    assert len(buffer) == 0
    assert buffer.bytes == 0


def test_restore_must_continue_last_seq() -> None:
    """Restored messages must start at last_seq + 1 and be contiguous."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None, last_seq=3)
    with pytest.raises(ValueError, match="skip"):
        buffer.restore([(5, "x")], 0.0)
    buffer.restore([(4, "d"), (5, "e")], 0.0)
    assert buffer.last_seq == 5


def _bytes_each(make: Callable[[], object], count: int = 500) -> float:
    """Python heap bytes held per object made by ``make`` (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(count)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return (after - before) / count


def test_an_empty_buffer_holds_no_storage() -> None:
    """A new buffer, and one whose messages were all acked, cost well under a deque's ~600 B.

    Most of a server's sessions are idle: each holds one buffer.
    """

    def new() -> ReplayBuffer:
        return ReplayBuffer(max_messages=None, max_bytes=None)

    def emptied() -> ReplayBuffer:
        buffer = new()
        buffer.push("a", 0.0)
        buffer.trim(1)
        return buffer

    def cleared() -> ReplayBuffer:
        buffer = new()
        buffer.push("a", 0.0)
        buffer.clear()
        return buffer

    for make in (new, emptied, cleared):
        assert _bytes_each(make) < 300, make.__name__
    buffer = emptied()
    assert (len(buffer), buffer.bytes, buffer.first_seq, buffer.oldest_queued_at) == (0, 0, 2, None)
    buffer.push("b", 1.0)
    assert [entry.seq for entry in buffer] == [2]


def test_a_failed_restore_keeps_what_came_before_the_gap() -> None:
    """restore() stops at the first gap; the contiguous messages before it stay held."""
    buffer = ReplayBuffer(max_messages=None, max_bytes=None)
    with pytest.raises(ValueError, match="skip"):
        buffer.restore([(1, "a"), (2, "b"), (4, "d")], 0.0)
    assert [entry.seq for entry in buffer] == [1, 2]
    assert buffer.bytes == 2
