"""Session stores (memory, SQLite, Redis) behind one async interface.

:func:`open_store` turns the URL given to ``tether serve --store`` (or
``serve(store=...)``) into a store; see ``docs/stores.md``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from .base import SessionStore
    from .memory import MemoryStore
    from .redis import RedisStore as RedisStore
    from .sqlite import SQLiteStore

# RedisStore is importable by name (it needs the redis extra) but not in __all__, so
# that `from tether.stores import *` works without the extra.
__all__ = ["MemoryStore", "SQLiteStore", "SessionStore", "open_store"]

# The classes are imported when first asked for: RedisStore needs the redis extra,
# and a server that never names a store should not pay for SQLite's import either.
_LAZY = {
    "MemoryStore": ".memory",
    "SQLiteStore": ".sqlite",
    "RedisStore": ".redis",
    "SessionStore": ".base",
}


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)


_FORMS = "memory, sqlite:///path or redis://host:port/db"
#: The URL schemes :func:`open_store` opens as a Redis store.
REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_store(url: str) -> SessionStore:
    """Create the session store a URL names; nothing is opened or connected yet.

    Forms:

    * ``memory``: in this process only (:class:`~tether.stores.memory.MemoryStore`).
    * ``sqlite:///path``: a SQLite file (:class:`~tether.stores.sqlite.SQLiteStore`).
      Three slashes then a relative path (``sqlite:///./tether-sessions.db``,
      ``sqlite:///data/s.db``) are relative to the current directory *when
      open_store is called*; four slashes give an absolute path
      (``sqlite:////var/lib/tether/s.db``), as in SQLAlchemy.
    * ``redis://host:port/db`` (also ``rediss://`` with TLS, ``unix:///path.sock?db=0``):
      :class:`~tether.stores.redis.RedisStore`; needs ``tether[redis]``. A
      ``prefix=`` query parameter sets the key prefix (default ``tether:``); the
      other query parameters are redis-py's (``socket_timeout=2``).

    Raises:
        ConfigurationError: the URL is not one of these forms, or the Redis
            extra is not installed.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"store URL must be a string, not {type(url).__name__}")
    if url == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ConfigurationError(f"bad store URL {url!r}: use {_FORMS}")
    if scheme == "sqlite":
        return _open_sqlite(url, rest)
    if scheme in REDIS_SCHEMES:
        return _open_redis(url)
    raise ConfigurationError(f"bad store URL {url!r}: unknown scheme {scheme!r}; use {_FORMS}")


def _open_sqlite(url: str, rest: str) -> SessionStore:
    # "sqlite:///x" leaves "/x": the empty host, then the path "x" (relative); "//x" is absolute.
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigurationError(
            f"bad store URL {url!r}: write sqlite:///relative/path or sqlite:////absolute/path"
        )
    if "?" in rest or "#" in rest:
        raise ConfigurationError(f"bad store URL {url!r}: sqlite URLs take no query or fragment")
    if rest[1:] == ":memory:":
        # (Else a file named ":memory:" in the current directory: not what anyone means.)
        raise ConfigurationError(
            f"bad store URL {url!r}: for sessions kept in this process only, use memory"
        )
    from .sqlite import SQLiteStore

    # Resolved now, so a later chdir() does not move the database. The path is taken
    # as written (not percent-decoded): "%20" is three characters of a file name.
    return SQLiteStore(os.path.abspath(rest[1:]))


def _open_redis(url: str) -> SessionStore:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(f"bad store URL {url!r}: {exc}") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigurationError(f"bad store URL {url!r}: no host (redis://host:port/db)")
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ConfigurationError(f"bad store URL {url!r}: the database must be a number")
    client_url, prefix = split_redis_url(url)
    try:
        from .redis import DEFAULT_PREFIX, RedisStore
    except ImportError as exc:
        raise ConfigurationError(
            f"store URL {url!r} needs redis-py: pip install 'tether[redis]'"
        ) from exc
    return RedisStore(client_url, prefix=DEFAULT_PREFIX if prefix is None else prefix)


def split_redis_url(url: str) -> tuple[str, str | None]:
    """A Redis store URL as (the URL for redis-py, the ``prefix=`` it names or None).

    The last ``prefix=`` counts (an empty one too); the other query parameters are
    redis-py's and stay. The rest of the URL is kept as written: rebuilt by
    ``urlunsplit``, ``unix:///path.sock`` lost its ``//`` (urllib does not know that
    scheme to have a host part), and redis-py refuses ``unix:/path.sock``.
    """
    base, hash_mark, fragment = url.partition("#")
    address, _, query = base.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    prefixes = [value for name, value in pairs if name == "prefix"]
    rest = [(name, value) for name, value in pairs if name != "prefix"]
    client_url = address + (f"?{urlencode(rest)}" if rest else "") + hash_mark + fragment
    return client_url, prefixes[-1] if prefixes else None
