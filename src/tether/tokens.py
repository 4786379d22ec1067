"""Session credentials: minting ids and resume tokens, hashing them, judging a ``hello``.

Randomness comes from an injected ``token_source(n) -> n random bytes`` (the
adapter passes :func:`secrets.token_bytes`; tests pass a seeded generator), so
this module stays free of I/O. Tokens are 256 random bits; only their SHA-256
hash is stored, and comparisons are constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol

from .protocol import Hello, LostReason

__all__ = [
    "SESSION_ID_BYTES",
    "TOKEN_BYTES",
    "ResumeCandidate",
    "TokenSource",
    "hash_token",
    "is_late",
    "judge_resume",
    "lost_reason",
    "new_session_id",
    "new_token",
    "token_matches",
]

#: A callable returning ``n`` cryptographically random bytes, e.g. ``secrets.token_bytes``.
TokenSource = Callable[[int], bytes]

#: Resume tokens carry 256 random bits (the spec requires at least 128).
TOKEN_BYTES = 32
#: Session ids are not secret (the token is), but are unguessable anyway: 128 bits.
SESSION_ID_BYTES = 16


def _urlsafe(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_session_id(token_source: TokenSource) -> str:
    """Return a fresh session id (22 URL-safe characters)."""
    return _urlsafe(_draw(token_source, SESSION_ID_BYTES))


def new_token(token_source: TokenSource) -> tuple[str, str]:
    """Return a fresh resume token and its hash: ``(token, token_hash)``.

    The token goes to the client in ``welcome`` and nowhere else; the hash is what
    the store keeps, so a leaked store cannot be used to resume anybody's session.
    """
    token = _urlsafe(_draw(token_source, TOKEN_BYTES))
    return token, hash_token(token)


def hash_token(token: str) -> str:
    """SHA-256 of the token, hex encoded."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Whether ``token`` hashes to ``token_hash``, compared in constant time."""
    return hmac.compare_digest(hash_token(token), token_hash)


def _draw(token_source: TokenSource, n: int) -> bytes:
    raw = token_source(n)
    if len(raw) != n:
        raise ValueError(f"token source returned {len(raw)} bytes, expected {n}")
    return raw


class ResumeCandidate(Protocol):
    """What the server knows about a stored session when a ``hello`` names it.

    :class:`tether.stores.base.SessionRecord` satisfies it.
    """

    @property
    def token_hash(self) -> str: ...
    @property
    def previous_token_hash(self) -> str | None: ...
    @property
    def principal(self) -> str | None: ...
    @property
    def expires_at(self) -> float | None: ...
    @property
    def lost(self) -> str | None: ...
    @property
    def tx(self) -> int: ...
    @property
    def acked(self) -> int: ...
    @property
    def attempt(self) -> int: ...


def lost_reason(lost: str) -> LostReason:
    """The refusal for a session marked lost (``SessionRecord.lost``); unknown: not_resumable."""
    try:
        return LostReason(lost)
    except ValueError:
        return LostReason.NOT_RESUMABLE


def is_late(hello: Hello, served: int) -> bool:
    """Whether ``hello`` is numbered at or below ``served``, the highest attempt served.

    Such a hello came after its client's next one was served (docs/protocol.md §5).
    An unnumbered hello is never late.
    """
    return hello.attempt is not None and hello.attempt <= served


def judge_resume(
    hello: Hello,
    session: ResumeCandidate | None,
    *,
    epoch: str,
    principal: str | None,
    now: float,
) -> LostReason | None:
    """Decide whether ``hello`` may resume ``session``; return None if so, else why not.

    A resume is all or nothing: every check that fails means a fresh session,
    except ``superseded`` (a late hello: the caller closes its connection with
    4204 and starts nothing). Otherwise the order matters only for which reason
    is reported; a forged token and a principal mismatch both say
    ``token_invalid`` so a caller learns nothing about somebody else's session.

    Args:
        hello: the client's hello; it must name a session (``hello.sid`` set).
        session: the stored session for ``hello.sid``, or None if the store has none.
        epoch: the store's current epoch.
        principal: who the new connection is authenticated as (the app's hook), or None.
        now: current time in seconds, on the clock the store's ``expires_at`` uses.
    """
    if hello.token is None:
        return LostReason.UNKNOWN
    if hello.epoch != epoch:
        # The store lost its data (or it is another store): nothing it says can be trusted.
        return LostReason.EPOCH_MISMATCH
    if session is None:
        return LostReason.UNKNOWN
    # (getattr: a candidate written before ResumeCandidate.attempt keeps working.)
    if is_late(hello, getattr(session, "attempt", 0)):
        # A hello that came late, after its client's next one was served (its
        # connection given up on, still open or not yet seen closed). Judged before
        # the token: it may present the token the live resume presented (still
        # accepted as the previous one), and it must not take the session over; or an
        # older one, already refused, and it must not get a session of its own (nor
        # count as a refused guess). Whatever the token, the answer is the same, so it
        # tells a stranger nothing about the token.
        return LostReason.SUPERSEDED
    # The token issued last, or the one presented at the previous resume: the
    # welcome carrying a rotated token can be lost with its connection, and the
    # client must still be able to resume with the token it holds.
    previous = session.previous_token_hash
    if not token_matches(hello.token, session.token_hash) and not (
        previous is not None and token_matches(hello.token, previous)
    ):
        return LostReason.TOKEN_INVALID
    if session.principal != principal:
        return LostReason.TOKEN_INVALID
    if session.lost is not None:
        return lost_reason(session.lost)
    if session.expires_at is not None and now >= session.expires_at:
        return LostReason.EXPIRED
    if hello.rx > session.tx:
        # The client claims messages the server never sent: the two histories differ.
        return LostReason.NOT_RESUMABLE
    if hello.rx < session.acked:
        # Messages the client still needs were trimmed: replaying would leave a hole.
        return LostReason.OVERFLOW
    return None
