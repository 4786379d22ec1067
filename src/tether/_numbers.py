"""The one test behind the library's "a finite number of seconds" settings checks.

Each setting words its own error (its name, its bound, what else it accepts) and
its tests match that wording; what "a number" means is decided here, once:
an ``int`` or ``float`` that is finite, and not a ``bool`` (``True`` is an int to
Python, but ``timeout=True`` is a mistake, not one second). A string, None or
another object is not a number, so a check built on this refuses it with its own
ConfigurationError instead of failing on the comparison with a TypeError.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["is_finite_number"]


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite ``int`` or ``float`` (a ``bool`` is not).

    Only those two types (and their subclasses, ``numpy.float64`` among them): a
    ``Fraction``, a ``Decimal`` or a numpy integer is refused, as the settings that
    had a type check always did. An int too large for a float (``10**400``) is not
    finite here, rather than an OverflowError out of the check.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
