"""Checks every store applies to a write batch before touching its backend."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ..exceptions import StoreError
from .base import StoredMessage

__all__ = ["check_batch"]


def check_batch(sid: str, append: Sequence[StoredMessage]) -> None:
    """Refuse a batch whose sequence numbers are not consecutive among themselves.

    Whether the first one continues the stored ``tx`` is checked by the store,
    atomically with the append.

    Raises:
        StoreError: two neighbours are not ``n, n+1``.
    """
    for previous, message in itertools.pairwise(append):
        if message.seq != previous.seq + 1:
            raise StoreError(
                f"session {sid}: appended seq {message.seq}, expected {previous.seq + 1}"
            )
