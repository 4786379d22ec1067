"""``tether.stores.open_store``: store URLs to stores, bad URLs to one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether.exceptions import ConfigurationError
from tether.stores import open_store
from tether.stores.memory import MemoryStore
from tether.stores.redis import RedisStore
from tether.stores.sqlite import SQLiteStore


async def test_memory() -> None:
    """``memory`` gives a memory store."""
    assert isinstance(open_store("memory"), MemoryStore)


async def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three slashes: a path relative to the current directory, resolved at once."""
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///./data/s.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "data" / "s.db")
    await store.close()


async def test_sqlite_absolute_path(tmp_path: Path) -> None:
    """Four slashes: an absolute path."""
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == os.path.join(tmp_path, "s.db")
    await store.close()


async def test_sqlite_store_works(tmp_path: Path) -> None:
    """The store a sqlite URL names opens the file on first use."""
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    try:
        assert await store.epoch()
    finally:
        await store.close()
    assert (tmp_path / "s.db").exists()


async def test_redis_url() -> None:
    """A redis URL gives a Redis store with the default prefix; nothing connects yet."""
    store = open_store("redis://127.0.0.1:6379/3")
    assert isinstance(store, RedisStore)
    assert (store.url, store.prefix) == ("redis://127.0.0.1:6379/3", "tether:")
    await store.close()


async def test_a_unix_socket_url_keeps_its_slashes_for_redis_py() -> None:
    """``unix:///path.sock``: the URL redis-py gets still names the socket's path.

    (Rebuilt by urlunsplit it was ``unix:/path.sock``, which redis-py refuses at the
    store's first operation: "must specify one of the following schemes".)
    """
    from redis.connection import parse_url

    store = open_store("unix:///tmp/redis.sock?db=2&prefix=p:")
    assert isinstance(store, RedisStore)
    assert (store.url, store.prefix) == ("unix:///tmp/redis.sock?db=2", "p:")
    assert parse_url(store.url)["path"] == "/tmp/redis.sock"
    await store.close()


async def test_redis_prefix_parameter() -> None:
    """``?prefix=`` sets the key prefix and is not passed on to redis-py."""
    store = open_store("redis://127.0.0.1:6379/0?prefix=app1:&socket_timeout=2")
    assert isinstance(store, RedisStore)
    assert (store.url, store.prefix) == ("redis://127.0.0.1:6379/0?socket_timeout=2", "app1:")
    assert store.stream_key("s") == "app1:{s}:out"
    await store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "bad store URL"),
        ("memroy", "use memory, sqlite:///path or redis://host:port/db"),
        ("postgres://db/x", "unknown scheme 'postgres'"),
        ("sqlite://relative.db", "sqlite:///relative/path"),
        ("sqlite:///", "sqlite:///relative/path"),
        ("sqlite:///s.db?mode=ro", "no query"),
        ("redis:///0", "no host"),
        ("redis://localhost:port/0", "bad store URL"),
        ("redis://localhost:6379/first", "must be a number"),
        ("redis://localhost:6379/0?no_such_option=1", "no_such_option"),
        ("redis://localhost:6379/0?socket_timeout=soon", "socket_timeout"),
        # redis-py's own checks (before: its RedisError, a traceback from tether serve)
        ("redis://localhost:6379/0?protocol=9", "protocol must be either 2 or 3"),
        ("rediss://localhost:6379/0?ssl_cert_reqs=bogus", "Invalid SSL Certificate"),
        # accepted before, then failing at the first binary message or connection
        ("redis://localhost:6379/0?decode_responses=yes", "decode_responses is not supported"),
        ("unix://", "needs a socket path"),
        # redis-py would have taken each for something else (6379, db 0, the query's db)
        ("redis://127.0.0.1:0/9", "port 0"),
        ("redis://127.0.0.1:6379/9?db=3", "two database numbers"),
        ("redis://127.0.0.1:70000/9", "Port out of range"),
        # a file named ":memory:" in the current directory before
        ("sqlite:///:memory:", "use memory"),
        # a raw ValueError at the first operation before
        ("sqlite:///x\0.db", "NUL character"),
    ],
)
def test_bad_url(url: str, message: str) -> None:
    """A bad URL raises ConfigurationError with a one-line message naming the problem."""
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_not_a_string() -> None:
    """A URL that is not a string is refused clearly."""
    with pytest.raises(ConfigurationError, match="must be a string"):
        open_store(None)  # type: ignore[arg-type]
