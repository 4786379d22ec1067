"""The public surface of the ``tether`` package."""

from __future__ import annotations

import pytest

import tether


def test_all_names_resolve() -> None:
    """Every name in ``tether.__all__`` is importable from the package."""
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name


def test_unknown_attribute_raises() -> None:
    """A name tether does not provide raises AttributeError, not something vaguer."""
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = tether.no_such_name  # type: ignore[attr-defined]
