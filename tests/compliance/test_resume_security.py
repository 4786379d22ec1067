"""Resume-token security of the tether.v1 core (``tokens.judge_resume`` over a real store).

What an attacker can present in a ``hello`` — a guessed, forged, stale or
borrowed token — never resumes a session, and a wrong token learns nothing about
the session's state but the documented ``token_invalid``. ``tests/test_tokens.py``
covers each refusal reason once; these tests take the attacker's side. The
asyncio adapter (rate limits per address, logging) is not on main yet: see
docs/security.md.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol import Hello, LostReason
from tether.stores.base import SessionRecord
from tether.stores.memory import MemoryStore
from tether.tokens import hash_token, judge_resume, new_session_id, new_token

EPOCH = "ZXBvY2g"
NOW = 100.0


def token_source(seed: int) -> random.Random:
    """A seeded generator standing in for ``secrets.token_bytes``."""
    return random.Random(seed)


def draw(rng: random.Random, n: int) -> bytes:
    """``n`` bytes from the seeded generator."""
    return rng.randbytes(n)


async def new_session(
    store: MemoryStore, rng: random.Random, principal: str | None
) -> tuple[SessionRecord, str]:
    """Create a session as the server does; return its record and the client's token."""
    sid = new_session_id(lambda n: draw(rng, n))
    token, token_hash = new_token(lambda n: draw(rng, n))
    record = await store.create(sid, token_hash=token_hash, principal=principal, now=NOW)
    return record, token


async def resume(
    store: MemoryStore, record: SessionRecord, presented: str, rng: random.Random
) -> tuple[SessionRecord, str]:
    """A successful resume: rotate the token as the server does; return the new token."""
    token, token_hash = new_token(lambda n: draw(rng, n))
    claimed = await store.claim(
        record.sid,
        record.generation,
        token_hash=token_hash,
        previous_token_hash=hash_token(presented),
    )
    return claimed, token


def verdict(
    record: SessionRecord | None, sid: str, token: str, *, principal: str | None = "alice"
) -> LostReason | None:
    """What the server answers to ``hello{sid, token}`` for ``record``."""
    hello = Hello(sid=sid, token=token, epoch=EPOCH, rx=0)
    return judge_resume(hello, record, epoch=EPOCH, principal=principal, now=NOW)


async def test_the_issued_token_resumes() -> None:
    """Control case: the token from the last welcome resumes its own session."""
    record, token = await new_session(MemoryStore(epoch=EPOCH), token_source(1), "alice")
    assert verdict(record, record.sid, token) is None


async def test_a_guessed_token_is_refused() -> None:
    """1,000 fresh 256-bit tokens never resume a session they were not issued for."""
    rng = token_source(2)
    record, _ = await new_session(MemoryStore(epoch=EPOCH), rng, "alice")
    guesses = {new_token(lambda n: draw(rng, n))[0] for _ in range(1000)}
    verdicts = {verdict(record, record.sid, guess) for guess in guesses}
    assert verdicts == {LostReason.TOKEN_INVALID}


async def test_the_stored_hash_is_not_a_token() -> None:
    """Someone who read the store (hashes only) cannot resume with what they read."""
    record, _ = await new_session(MemoryStore(epoch=EPOCH), token_source(3), "alice")
    assert verdict(record, record.sid, record.token_hash) == LostReason.TOKEN_INVALID


async def test_another_sessions_token_is_refused() -> None:
    """A token is bound to its session id: Mallory's token does not open Alice's session."""
    store, rng = MemoryStore(epoch=EPOCH), token_source(4)
    alice, _ = await new_session(store, rng, "alice")
    _, mallory_token = await new_session(store, rng, "alice")
    assert verdict(alice, alice.sid, mallory_token) == LostReason.TOKEN_INVALID


async def test_a_stolen_token_from_another_principal_is_refused() -> None:
    """The right token presented by another authenticated principal says token_invalid."""
    record, token = await new_session(MemoryStore(epoch=EPOCH), token_source(5), "alice")
    assert verdict(record, record.sid, token, principal="mallory") == LostReason.TOKEN_INVALID


async def test_a_token_two_rotations_old_is_refused() -> None:
    """After two resumes the first token is dead (the one before is kept for a lost welcome)."""
    store, rng = MemoryStore(epoch=EPOCH), token_source(6)
    record, first = await new_session(store, rng, "alice")
    record, second = await resume(store, record, first, rng)
    assert verdict(record, record.sid, first) is None  # grace: the welcome may have been lost
    record, _third = await resume(store, record, second, rng)
    assert verdict(record, record.sid, first) == LostReason.TOKEN_INVALID
    assert verdict(record, record.sid, second) is None


STATES = {
    "expired": {"expires_at": NOW - 1},
    "overflowed": {"lost": "overflow"},
    "history ahead": {"tx": 0, "acked": 0},
    "trimmed": {"tx": 50, "acked": 40},
    "other principal": {"principal": "bob"},
}


@pytest.mark.parametrize("changes", STATES.values(), ids=STATES.keys())
async def test_a_wrong_token_learns_nothing_about_the_sessions_state(
    changes: dict[str, object],
) -> None:
    """Whatever state the session is in, a wrong token only ever hears token_invalid."""
    rng = token_source(7)
    record, _ = await new_session(MemoryStore(epoch=EPOCH), rng, "alice")
    record = dataclasses.replace(record, **changes)
    wrong = new_token(lambda n: draw(rng, n))[0]
    hello = Hello(sid=record.sid, token=wrong, epoch=EPOCH, rx=5)
    assert (
        judge_resume(hello, record, epoch=EPOCH, principal="alice", now=NOW)
        == LostReason.TOKEN_INVALID
    )


async def test_whether_a_session_id_exists_is_the_one_documented_leak() -> None:
    """A wrong token on an unknown sid says unknown, on a live one token_invalid (protocol.md §8).

    Session ids are 128 random bits but documented as not secret: whoever holds
    one can learn whether the session is still in the store, nothing more.
    """
    record, _ = await new_session(MemoryStore(epoch=EPOCH), token_source(8), "alice")
    assert verdict(None, "bm8tc3VjaC1zaWQ", "d3Jvbmc") == LostReason.UNKNOWN
    assert verdict(record, record.sid, "d3Jvbmc") == LostReason.TOKEN_INVALID


_SESSION = SessionRecord(
    sid="c2lk",
    token_hash=hash_token("VGhlLXJlYWwtdG9rZW4tMzItYnl0ZXMtb2YtcmFuZG9tbmVzcw"),
    principal="alice",
    generation=1,
    created_at=NOW,
)


def _near_misses(token: str) -> st.SearchStrategy[str]:
    """Strings close to the real token: one character changed, cut, extended, re-cased."""
    index = st.integers(0, len(token) - 1)
    return st.one_of(
        st.builds(lambda i, c: token[:i] + c + token[i + 1 :], index, st.characters()),
        st.builds(lambda i: token[:i], index),
        st.builds(lambda s: token + s, st.text(min_size=1)),
        st.just(token.swapcase()),
        st.just(token + "="),
    )


# No deadline: this runs next to busy server processes in make test.
@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.one_of(st.text(), _near_misses("VGhlLXJlYWwtdG9rZW4tMzItYnl0ZXMtb2YtcmFuZG9tbmVzcw")))
def test_no_other_string_resumes(presented: str) -> None:
    """Arbitrary text, non-ASCII included, and near misses of the token never resume."""
    if presented == "VGhlLXJlYWwtdG9rZW4tMzItYnl0ZXMtb2YtcmFuZG9tbmVzcw":
        return  # an unchanged character: the real token, which must resume (first test)
    assert verdict(_SESSION, _SESSION.sid, presented) == LostReason.TOKEN_INVALID


@pytest.mark.xfail(
    strict=True,
    reason="Hello/Welcome reprs include the token; a log line of either leaks it "
    "(fix: field(repr=False) on token in tether/protocol.py, owner: resume)",
)
def test_message_reprs_do_not_show_the_token() -> None:
    """A hello or welcome written to a log must not carry the resume token."""
    hello = Hello(sid="c2lk", token="c2VjcmV0LXRva2Vu", epoch=EPOCH, rx=0)
    assert "c2VjcmV0LXRva2Vu" not in repr(hello)
