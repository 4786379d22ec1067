"""Missing tools or privileges: fail loudly in CI, skip with a printed reason locally.

CI (``CI=true``) runs as root after ``.ci/run`` installed every tool, so a missing piece there is
a broken CI setup, never a reason to skip. On a developer machine the test skips and says why.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """True when running in CI (the ``CI`` environment variable is ``true`` or ``1``)."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require(ok: bool, reason: str) -> None:
    """Fail (in CI) or skip (locally) the current test unless ``ok``.

    Args:
        ok: Whether the requirement holds.
        reason: What is missing and how to get it; printed in both cases.
    """
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI must provide this (fix .ci/run): {reason}", pytrace=False)
    pytest.skip(f"{reason} (CI=true turns this skip into a failure)")


def require_root() -> None:
    """Require effective uid 0 (network namespaces, nft)."""
    require(os.geteuid() == 0, "needs root (network namespaces, firewall rules)")


def require_tools(*names: str) -> None:
    """Require each executable in ``names`` on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    require(not missing, f"missing tools on PATH: {', '.join(missing)} (.ci/run installs them)")
