"""Checks every store applies to a write batch before touching its backend."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .._numbers import is_finite_number
from ..exceptions import ConfigurationError, StoreError
from .base import StoredMessage

__all__ = ["check_batch", "check_seconds"]


def check_seconds(value: object, name: str, *, positive: bool) -> float:
    """``value`` as seconds if it is a finite number (> 0 or >= 0), else ConfigurationError.

    Checked when the store is built: a bad value would otherwise surface at the
    first operation, as a raw TypeError or OverflowError deep in the backend.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not (is_finite_number(value) and (value > 0 if positive else value >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, not {value!r}"
        )
    return float(value)


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
