"""Argument checks shared by :func:`tether.connect` and :func:`tether.serve`."""

from __future__ import annotations

import numbers

from ..exceptions import ConfigurationError

__all__ = ["check_count", "check_duration"]


def check_duration(name: str, value: float | None, *, allow_zero: bool) -> None:
    """Refuse a number of seconds ``name`` that is not None, a number, or in range.

    Raises:
        ConfigurationError: ``value`` is not a number (a bool is not), is negative or
            NaN, or is 0 where ``allow_zero`` is false.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds or None, not {value!r}")
    if not value >= 0 or (value == 0 and not allow_zero):  # (not >= 0: NaN too)
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds or None, not {value!r}")


def check_count(name: str, value: object) -> int | None:
    """``value`` as an int if it is a whole number >= 1 (None stays None), else
    ConfigurationError.

    Whole floats (``1e6``, as byte counts are often written) are taken as ints;
    bools, strings, NaN, infinities and fractions are refused.
    """
    if value is None:
        return None
    whole: int | None = None
    if isinstance(value, bool):
        pass  # (an int to Python, never a count here)
    elif isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()):
        whole = int(value)
    if whole is None or whole < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1 or None, not {value!r}")
    return whole
