"""Close-code knowledge base, in English and Japanese (used by explain/compare and events).

Public functions (the contract other modules rely on):

* ``explain(code, lang="en") -> Explanation``: everything about one code or its range.
* ``summary(code, lang="en") -> str``: one line, used by ``Disconnected.explanation``.
* ``compare(a, b, lang="en") -> Comparison``: two codes side by side.

This placeholder only knows registry names; the texts arrive with issue 2.
"""

from __future__ import annotations

from ..closecodes import lookup

__all__ = ["summary"]


def summary(code: int, lang: str = "en") -> str:
    """One line about ``code``: its number and registered name."""
    return f"{code} {lookup(code).name}"
