"""``docs/stores.md`` states the defaults the code has."""

from __future__ import annotations

import inspect
from pathlib import Path

from tether.stores.redis import DEFAULT_PREFIX, RedisStore
from tether.stores.sqlite import SCHEMA_VERSION, SQLiteStore

DOC = (Path(__file__).parents[2] / "docs" / "stores.md").read_text(encoding="utf-8")


def _default(function: object, name: str) -> object:
    return inspect.signature(function).parameters[name].default  # type: ignore[arg-type]


def test_redis_prefix_documented() -> None:
    """The documented default key prefix is the code's."""
    assert f"(default `{DEFAULT_PREFIX}`)" in DOC
    assert f"`{DEFAULT_PREFIX}epoch`" in DOC


def test_timeouts_documented() -> None:
    """The documented Redis timeout and SQLite busy timeout are the code's defaults."""
    assert f"timeout ({_default(RedisStore, 'timeout'):g} s by default)" in DOC
    assert f"`busy_timeout` ({_default(SQLiteStore, 'busy_timeout'):g} s)" in DOC


def test_schema_version_documented() -> None:
    """The documented SQLite schema version is the one the code writes."""
    assert f"schema version {SCHEMA_VERSION}" in DOC
