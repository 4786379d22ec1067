"""Session credentials: token minting, hashing, and the resume verdict."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest

from tether.protocol import Hello, LostReason
from tether.tokens import (
    TOKEN_BYTES,
    hash_token,
    judge_resume,
    new_session_id,
    new_token,
    token_matches,
)

EPOCH = "ZXA"


def source(seed: int = 1) -> random.Random:
    """A seeded random generator standing in for secrets.token_bytes."""
    return random.Random(seed)


@dataclass(frozen=True)
class Stored:
    """A stored session as the judge sees it."""

    token_hash: str
    previous_token_hash: str | None = None
    principal: str | None = None
    expires_at: float | None = None
    lost: str | None = None
    tx: int = 10
    acked: int = 4
    attempt: int = 0


TOKEN, TOKEN_HASH = new_token(source().randbytes)
HELLO = Hello("c2lk", TOKEN, EPOCH, 6)
STORED = Stored(TOKEN_HASH)


def judge(hello: Hello = HELLO, stored: Stored | None = STORED, **kwargs: object) -> object:
    """judge_resume with the defaults of this module."""
    options: dict[str, object] = {"epoch": EPOCH, "principal": None, "now": 0.0} | kwargs
    return judge_resume(hello, stored, **options)  # type: ignore[arg-type]


def test_token_has_at_least_128_bits() -> None:
    """A token carries 256 random bits, URL-safe, without padding."""
    token, _ = new_token(source().randbytes)
    assert TOKEN_BYTES * 8 >= 128
    assert len(token) == 43
    assert "=" not in token


def test_token_is_stored_hashed() -> None:
    """The stored form is the SHA-256 hex digest, not the token."""
    token, token_hash = new_token(source().randbytes)
    assert token_hash == hash_token(token)
    assert token not in token_hash
    assert len(token_hash) == 64


def test_tokens_differ() -> None:
    """Two draws from the source give two different tokens and session ids."""
    rng = source()
    assert new_token(rng.randbytes) != new_token(rng.randbytes)
    assert new_session_id(rng.randbytes) != new_session_id(rng.randbytes)


def test_short_token_source_refused() -> None:
    """A token source that returns too few bytes is an error, not a weak token."""
    with pytest.raises(ValueError, match="expected 32"):
        new_token(lambda n: b"\x00" * (n - 1))


def test_token_matches() -> None:
    """token_matches accepts the right token and refuses any other."""
    assert token_matches(TOKEN, TOKEN_HASH)
    assert not token_matches(TOKEN + "x", TOKEN_HASH)


def test_valid_resume() -> None:
    """A hello with the right token, epoch, principal and rx may resume."""
    assert judge() is None


def test_previous_token_accepted() -> None:
    """The token presented at the last resume still works (its welcome may be lost)."""
    stored = Stored("f" * 64, previous_token_hash=TOKEN_HASH)
    assert judge(stored=stored) is None


@pytest.mark.parametrize(
    ("hello", "stored", "kwargs", "reason"),
    [
        (replace(HELLO, epoch="b3RoZXI"), STORED, {}, LostReason.EPOCH_MISMATCH),
        (HELLO, None, {}, LostReason.UNKNOWN),
        (replace(HELLO, token="Zm9yZ2Vk"), STORED, {}, LostReason.TOKEN_INVALID),
        (HELLO, replace(STORED, principal="alice"), {}, LostReason.TOKEN_INVALID),
        (HELLO, STORED, {"principal": "mallory"}, LostReason.TOKEN_INVALID),
        (HELLO, replace(STORED, lost="overflow"), {}, LostReason.OVERFLOW),
        (HELLO, replace(STORED, lost="something_new"), {}, LostReason.NOT_RESUMABLE),
        (HELLO, replace(STORED, expires_at=5.0), {"now": 5.0}, LostReason.EXPIRED),
        (replace(HELLO, rx=11), STORED, {}, LostReason.NOT_RESUMABLE),
        (replace(HELLO, rx=3), STORED, {}, LostReason.OVERFLOW),
    ],
    ids=[
        "epoch",
        "unknown",
        "forged",
        "principal-stored",
        "principal-new",
        "lost",
        "lost-unknown",
        "expired",
        "rx-ahead",
        "rx-trimmed",
    ],
)
def test_refusals(
    hello: Hello, stored: Stored | None, kwargs: dict[str, object], reason: LostReason
) -> None:
    """Each way a resume can fail gives its documented reason."""
    assert judge(hello, stored, **kwargs) == reason


@pytest.mark.parametrize(
    ("attempt", "stored", "verdict"),
    [
        (None, 5, None),
        (6, 5, None),
        (5, 5, LostReason.SUPERSEDED),
        (4, 5, LostReason.SUPERSEDED),
        (1, 0, None),
    ],
    ids=["unnumbered", "above", "equal", "below", "first"],
)
def test_a_hello_numbered_at_or_below_the_stored_attempt_is_late(
    attempt: int | None, stored: int, verdict: LostReason | None
) -> None:
    """Only a number above the highest served resumes; an unnumbered hello is not judged."""
    hello = replace(HELLO, attempt=attempt)
    assert judge(hello, replace(STORED, attempt=stored)) == verdict


def test_a_late_hello_is_late_whatever_its_token() -> None:
    """A hello late by several resumes carries a token no longer accepted: still late.

    (Judged as token_invalid, it got a session of its own and counted as a refused
    guess towards its address's limit.) A forged token hears the same, so the answer
    says nothing about the token; above the stored number a forged token is refused.
    """
    stored = replace(STORED, token_hash="f" * 64, previous_token_hash="e" * 64, attempt=5)
    assert judge(replace(HELLO, attempt=3), stored) == LostReason.SUPERSEDED
    assert judge(replace(HELLO, token="Zm9yZ2Vk", attempt=5), stored) == LostReason.SUPERSEDED
    assert judge(replace(HELLO, token="Zm9yZ2Vk", attempt=6), stored) == LostReason.TOKEN_INVALID


def test_a_late_hello_of_an_expired_session_is_still_late() -> None:
    """Late before expired or lost: a late hello never gets a session of its own."""
    stored = replace(STORED, attempt=5, expires_at=1.0, lost="overflow")
    assert judge(replace(HELLO, attempt=5), stored, now=2.0) == LostReason.SUPERSEDED


def test_a_candidate_without_an_attempt_judges_numbered_hellos_as_first() -> None:
    """A ResumeCandidate written before ``attempt`` existed: its number counts as 0."""
    fields = {name: getattr(STORED, name) for name in vars(STORED) if name != "attempt"}
    older = SimpleNamespace(**fields)
    assert not hasattr(older, "attempt")
    assert judge(replace(HELLO, attempt=1), older) is None  # type: ignore[arg-type]


def test_forged_token_reveals_nothing_about_expiry() -> None:
    """A wrong token on an expired session says token_invalid, not expired."""
    stored = replace(STORED, expires_at=1.0)
    assert judge(replace(HELLO, token="Zm9yZ2Vk"), stored, now=2.0) == LostReason.TOKEN_INVALID


def test_not_yet_expired() -> None:
    """Just before expires_at the session still resumes."""
    assert judge(stored=replace(STORED, expires_at=5.0), now=4.999) is None
