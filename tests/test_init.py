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


def test_the_store_classes_are_importable_from_tether_stores() -> None:
    """docs/server.md: pass the same MemoryStore to two servers; the store classes are
    importable from ``tether.stores`` (before: only open_store was)."""
    from tether.stores import MemoryStore, RedisStore, SessionStore, SQLiteStore
    from tether.stores.memory import MemoryStore as Defined

    assert MemoryStore is Defined
    assert issubclass(MemoryStore, SessionStore)
    assert issubclass(SQLiteStore, SessionStore)
    assert issubclass(RedisStore, SessionStore)
    with pytest.raises(ImportError, match="NoSuchStore"):
        from tether.stores import NoSuchStore  # type: ignore[attr-defined]  # noqa: F401


def test_star_import_of_tether_stores_needs_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """`from tether.stores import *` works without the redis extra (RedisStore is not in
    __all__); dir() lists the store classes, RedisStore included."""
    import sys

    import tether.stores

    monkeypatch.setitem(sys.modules, "redis", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "tether.stores.redis", raising=False)
    namespace: dict[str, object] = {}
    exec("from tether.stores import *", namespace)
    assert {"MemoryStore", "SQLiteStore", "SessionStore", "open_store"} <= set(namespace)
    assert "RedisStore" not in namespace
    assert {"MemoryStore", "RedisStore", "SQLiteStore"} <= set(dir(tether.stores))


def test_resume_limit_is_exported_from_tether() -> None:
    """serve(resume_limit=tether.ResumeLimit(...)) works without knowing tether.ratelimit."""
    from tether.ratelimit import ResumeLimit

    assert tether.ResumeLimit is ResumeLimit
    assert "ResumeLimit" in tether.__all__
