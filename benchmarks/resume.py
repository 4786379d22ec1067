"""Scenario ``resume``: time from reconnect to replay complete, 1,000 buffered messages per store.

Needs tether.v1 session resumption (``tether.serve(..., store=...)`` resuming a
``tether.connect`` session). Until that exists the scenario refuses to run.
"""

from __future__ import annotations

from typing import Any

from .common import Progress, Unavailable


def _resumption_available() -> bool:
    try:
        import tether.resume  # noqa: F401  (the tether.v1 replay machinery, DESIGN.md §7)
    except ImportError:
        return False
    return True


def run(*, quick: bool, progress: Progress) -> tuple[dict[str, Any], str, bool]:
    if not _resumption_available():
        raise Unavailable(
            "tether.v1 session resumption (tether.resume and its stores) does not exist on "
            "this branch yet; nothing to measure"
        )
    raise Unavailable(
        "tether.resume exists but this benchmark has not been written against it yet; no figures"
    )
