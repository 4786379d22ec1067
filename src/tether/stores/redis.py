"""Shared session store on Redis (several tether nodes behind a load balancer).

Redis is the distributed engine here; tether only lays its data out so that
every operation is one atomic server-side step:

* Per session, a **stream** ``<prefix>{<sid>}:out`` holding the unacknowledged
  outgoing messages, whose entry ids *are* the sequence numbers (``<seq>-0``,
  written with explicit ids by ``XADD``), so a resume reads exactly
  ``XRANGE <rx+1>-0 +`` of one key; there is no global stream to scan.
* A **hash** ``<prefix>{<sid>}:meta`` with the session record. The ``{<sid>}``
  hash tag puts both keys in the same hash slot, so one Lua script may touch
  both (and Redis Cluster would keep them on one shard).
* **One Lua script per write**: check the generation (fencing), ``XADD`` the
  batch, update ``tx``/``acked``/``rx``, trim exactly with ``XTRIM MINID`` (never
  an approximate ``MAXLEN ~``). Claim is a compare-and-set script.
* **Pipelining**: the script calls of every session made during one event-loop
  turn are sent in one non-transactional pipeline, so the round trip is paid
  per turn, not per session or message. At most :data:`MAX_PIPELINES` are in
  flight, each on one pooled connection; calls made while all of them wait
  for Redis share the next pipeline. A slow Redis therefore gets bigger
  pipelines, not more connections, and the pool (bounded, callers wait for a
  free connection up to ``timeout``) never runs out under a burst.
* **Expiry**: detach sets both keys' TTL to the resume window with
  ``PEXPIREAT`` (computed on Redis' own clock, so node clocks do not matter)
  and records the session in a sorted set ``<prefix>detached`` that
  :meth:`RedisStore.expire` uses to remove sessions whose window ended
  before Redis' TTL fired.
* **Orphans**: the record names the store instance that attached it
  (``owner``, :attr:`~tether.stores.base.SessionStore.node`); a set
  ``<prefix>owned:<node>`` lists what each instance attached as ``<sid>
  <generation>`` members (a hint, like the ``detached`` index: pruned a few at
  each renewal) and a sorted set ``<prefix>nodes`` holds each instance's last
  renewal, on Redis' clock. :meth:`RedisStore.expire` removes the attached
  sessions of an instance whose renewal ran out, each re-checked against its
  record: still that instance's, at that generation, attached.
* **Epoch**: ``<prefix>epoch``, created with ``SET NX`` by the first node that
  asks. Redis flushed, or restarted without persistence, loses it; the next
  node creates a new one, so old resume attempts fail with ``epoch_mismatch``.

Failures of Redis (refused, reset, timeout, out of memory, read-only replica)
raise :class:`~tether.stores.base.StoreUnavailable` chained to redis-py's
exception and are logged once per incident on ``tether.store``. redis-py's
connection pool reconnects by itself on the next operation; its automatic
retries are turned off because retrying a write whose reply was lost would
apply it twice.

This module needs redis-py (``pip install 'tether[redis]'``); importing it
without raises an ImportError that says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from ..exceptions import ConfigurationError, StoreError
from ._checks import check_batch, check_seconds
from ._incident import IncidentLog
from .base import (
    Fenced,
    Resumption,
    SessionExists,
    SessionRecord,
    SessionStore,
    StoredMessage,
    StoreUnavailable,
    UnknownSession,
    Write,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.commands.core import AsyncScript
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the redis session store needs redis-py: pip install 'tether[redis]'"
    ) from exc

_POOL_OPTIONS: dict[str, Any] = {}
try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - redis-py before 7: no such notifications
    pass
else:
    # redis-py 7+ enables them by default ("auto"), and its pool then skips the
    # check that notices an idle connection Redis closed: after a Redis restart the
    # first operation on every pooled connection failed. They serve Redis
    # Enterprise/Cloud failovers, which tether does not follow anyway.
    _POOL_OPTIONS["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)

__all__ = ["DEFAULT_PREFIX", "MAX_PIPELINES", "RedisStore"]

#: Every key tether writes starts with this (``tether:epoch``, ``tether:{sid}:meta``).
DEFAULT_PREFIX = "tether:"

#: Pipelines one store keeps in flight at once (see the module doc). Eight cover a
#: loopback round trip at thousands of sessions; more only adds connections.
MAX_PIPELINES = 8

#: Pooled connections beyond the pipelines', for the commands sent on their own
#: (the expiry sweep, script loading).
_SPARE_CONNECTIONS = 4

_T = TypeVar("_T")

# Errors come back as error replies tagged TETHER_*, translated in _translate().
_CHECK_GENERATION = """
local gen = redis.call('HGET', KEYS[1], 'generation')
if not gen then return redis.error_reply('TETHER_UNKNOWN') end
if gen ~= ARGV[1] then return redis.error_reply('TETHER_FENCED ' .. gen) end
"""

# Redis' own clock, in milliseconds: times every node must read alike (TTLs, renewals).
_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_EPOCH = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# KEYS: meta, out. ARGV: token_hash, created_at, principal, has_principal, owner.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('TETHER_EXISTS') end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'token_hash', ARGV[1], 'generation', 1, 'created_at', ARGV[2],
           'tx', 0, 'acked', 0, 'rx', 0, 'owner', ARGV[5])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'principal', ARGV[3]) end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: meta, out. ARGV: expected generation, token_hash, previous_token_hash, owner,
# attempt ('': the hello had no number, the stored one stays).
_CLAIM_STEPS = (
    _CHECK_GENERATION
    + """
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'token_hash', ARGV[2], 'previous_token_hash', ARGV[3],
           'owner', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'attempt', ARGV[5]) end
redis.call('HDEL', KEYS[1], 'expires_at', 'ttl_at')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
"""
)
_CLAIM = _CLAIM_STEPS + "return redis.call('HGETALL', KEYS[1])\n"

# The claim, then the replay read in the same script: nothing can run between them
# (two scripts of one pipeline are sent again separately after a NOSCRIPT, and the
# session's old owner could then write in between). Trimming is exact, so the stream
# holds exactly the messages after the claimed acked. Returns {record, entries}.
_CLAIM_AND_READ = (
    _CLAIM_STEPS
    + """
local after = '(' .. redis.call('HGET', KEYS[1], 'acked') .. '-0'
return {redis.call('HGETALL', KEYS[1]), redis.call('XRANGE', KEYS[2], after, '+')}
"""
)

# KEYS: meta, out. ARGV: generation, acked|'', rx|'', first seq, count, then kind, payload pairs.
# Everything is validated before the first change: a refused batch changes nothing.
_WRITE = (
    _CHECK_GENERATION
    + """
local f = redis.call('HMGET', KEYS[1], 'tx', 'acked', 'rx', 'ttl_at')
local tx, acked, rx = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local n = tonumber(ARGV[5])
local new_tx = tx
if n > 0 then
    local first = tonumber(ARGV[4])
    if first ~= tx + 1 then
        return redis.error_reply('TETHER_BATCH appended seq ' .. ARGV[4] .. ', expected '
                                 .. string.format('%d', tx + 1))
    end
    new_tx = tx + n
end
local new_acked = acked
if ARGV[2] ~= '' then new_acked = math.max(acked, tonumber(ARGV[2])) end
if new_acked > new_tx then
    return redis.error_reply('TETHER_BATCH ack ' .. string.format('%d', new_acked)
                             .. ' is beyond tx ' .. string.format('%d', new_tx))
end
local new_rx = rx
if ARGV[3] ~= '' then new_rx = math.max(rx, tonumber(ARGV[3])) end
for i = 0, n - 1 do
    redis.call('XADD', KEYS[2], string.format('%d-0', tx + 1 + i), ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
if new_acked > acked then
    -- Exact trim: MINID with '=' removes every entry below the id, nothing more or less.
    redis.call('XTRIM', KEYS[2], 'MINID', '=', string.format('%d-0', new_acked + 1))
end
redis.call('HSET', KEYS[1], 'tx', string.format('%d', new_tx),
           'acked', string.format('%d', new_acked), 'rx', string.format('%d', new_rx))
if f[4] then
    -- Written while detached: the stream (maybe just created) expires with the session.
    redis.call('PEXPIREAT', KEYS[2], f[4])
end
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: meta, out. ARGV: after + 1 (first seq wanted).
_MESSAGES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TETHER_UNKNOWN') end
return redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+')
"""

# KEYS: meta, out. ARGV: generation, expires_at, TTL in ms (the resume window).
_DETACH = (
    _CHECK_GENERATION
    + _NOW_MS
    + """
local at = string.format('%d', now_ms + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'expires_at', ARGV[2], 'ttl_at', at)
redis.call('PEXPIREAT', KEYS[1], at)
redis.call('PEXPIREAT', KEYS[2], at)
return 1
"""
)

# KEYS: meta, out. ARGV: generation, reason.
_ABANDON = (
    _CHECK_GENERATION
    + """
local tx = redis.call('HGET', KEYS[1], 'tx')
redis.call('HSET', KEYS[1], 'lost', ARGV[2], 'acked', tx)
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS: meta, out. ARGV: generation, code, reason.
_END = (
    _CHECK_GENERATION
    + "redis.call('HSET', KEYS[1], 'end_code', ARGV[2], 'end_reason', ARGV[3])\nreturn 1\n"
)

# KEYS: meta, out. ARGV: now. Removes the session only if it is detached and its window ended.
_EXPIRE_IF_ENDED = """
local e = redis.call('HGET', KEYS[1], 'expires_at')
if e and tonumber(e) <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 1
end
return 0
"""

# KEYS: meta, out. Deletes the session; returns {owner, generation}, or 0 without an owner.
_DELETE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'generation')
if ARGV[1] and f[2] and f[2] ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
if f[1] then return {f[1], f[2]} end
return 0
"""

# KEYS: meta, out. ARGV: node, generation. Removes the session only if that node attached
# it at that generation and it is still attached: no claim since (another node's, or an
# older tether's that does not record itself), no detach.
_EXPIRE_IF_ORPHANED = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'generation', 'expires_at')
if f[1] == ARGV[1] and f[2] == ARGV[2] and not f[3] then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 1
end
return 0
"""

# Node renewals are scored in milliseconds on Redis' clock (TIME), so that node clocks
# need not agree: a renewal and an expiry each pass how far ahead of their own clock
# they mean. KEYS: nodes. ARGV: node, ms ahead.
_RENEW = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: nodes. ARGV: ms ahead. Returns {cutoff, nodes whose renewal is <= cutoff}.
_DEAD_NODES = (
    _NOW_MS
    + """
local cutoff = now_ms + tonumber(ARGV[1])
return {string.format('%d', cutoff), redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)}
"""
)

# KEYS: nodes. ARGV: node, cutoff. Forgets the node unless it renewed meanwhile.
_FORGET_NODE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

#: Members of its own attached set a store checks at each renewal (see :meth:`renew`).
_PRUNE_BATCH = 200


def _check_url(url: object) -> None:
    """Refuse what redis-py would take silently for something else (ConfigurationError).

    redis-py reads port 0 as "no port" (6379) and a path that is not a number as "no
    database" (0), and lets ``?db=`` override the path's number: each would put the
    sessions where the URL does not say.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"Redis URL must be a string, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from None
    if parts.scheme.lower() == "unix":
        return
    if port == 0:
        raise ConfigurationError(f"bad Redis URL {url!r}: port 0 (redis-py would use 6379)")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigurationError(f"bad Redis URL {url!r}: the database must be a number")
    if database and any(name == "db" for name, _ in parse_qsl(parts.query)):
        raise ConfigurationError(f"bad Redis URL {url!r}: two database numbers (the path and ?db=)")


class RedisStore(SessionStore):
    """Sessions in Redis, shared by every node that uses the same server and prefix.

    No connection is made until the first operation.

    Args:
        url: ``redis://host:port/db`` (also ``rediss://`` for TLS and ``unix://``);
            redis-py's query options (``?socket_timeout=...``) are honoured.
        prefix: prepended to every key; separates several deployments (or tests)
            sharing one Redis database.
        timeout: seconds for connecting and for each reply, unless the URL says
            otherwise; then the operation fails with :class:`StoreUnavailable`.
            None waits forever (not recommended: a hung Redis then hangs resumes).
        clock: the clock the callers' times (``now``, ``expires_at``) are read
            from; wall-clock time by default, which is what the server adapter
            passes. Only used to turn ``expires_at`` into a TTL.

    Raises:
        ConfigurationError: the URL or one of its options is not valid.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float | None = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_url(url)
        if not isinstance(prefix, str):
            raise ConfigurationError(f"Redis key prefix must be a string, not {prefix!r}")
        if timeout is not None:
            timeout = check_seconds(timeout, "Redis timeout", positive=True)
        self.url = url
        self.prefix = prefix
        self._clock = clock
        try:
            # Bounded, and blocking: with redis-py's default pool (100 connections since
            # redis-py 6) a burst failed at once with "Too many connections".
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_PIPELINES + _SPARE_CONNECTIONS,
                timeout=timeout,  # waiting for a free connection
                decode_responses=False,  # payloads are bytes; text is decoded here
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),  # a lost reply must not apply a write twice
                **_POOL_OPTIONS,
            )
            self._client: aioredis.Redis = aioredis.Redis.from_pool(pool)
            # Building (not connecting) a connection checks the URL's options now,
            # not at the first operation.
            self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        except (TypeError, ValueError, RedisError) as exc:
            # (RedisError: redis-py's own check of an option, ?protocol=9 or
            # ?ssl_cert_reqs=bogus, made when the connection object is built.)
            raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from None
        kwargs = self._client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            # Payloads are bytes (binary messages); text is decoded here, per field.
            raise ConfigurationError(f"bad Redis URL {url!r}: decode_responses is not supported")
        if url.lower().startswith("unix:") and not kwargs.get("path"):
            raise ConfigurationError(f"bad Redis URL {url!r}: a unix:// URL needs a socket path")
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._incidents = IncidentLog(f"redis {where}/{kwargs.get('db', 0)} ({prefix}*)")
        self._queue: list[_Call] = []
        self._flush: asyncio.Handle | None = None
        self._in_flight: set[asyncio.Future[None]] = set()
        #: close() began: operations from then on fail (StoreUnavailable) instead of
        #: taking a connection from the pool being closed, which would leak it.
        self._closing = False
        #: Operations (_call) under way, and an event close() waits on for the last one.
        self._active = 0
        self._idle: asyncio.Event | None = None
        register = self._client.register_script
        self._epoch_script = register(_EPOCH)
        self._create_script = register(_CREATE)
        self._claim_script = register(_CLAIM)
        self._claim_and_read_script = register(_CLAIM_AND_READ)
        self._write_script = register(_WRITE)
        self._messages_script = register(_MESSAGES)
        self._detach_script = register(_DETACH)
        self._abandon_script = register(_ABANDON)
        self._end_script = register(_END)
        self._expire_script = register(_EXPIRE_IF_ENDED)
        self._delete_script = register(_DELETE)
        self._orphan_script = register(_EXPIRE_IF_ORPHANED)
        self._renew_script = register(_RENEW)
        self._dead_nodes_script = register(_DEAD_NODES)
        self._forget_node_script = register(_FORGET_NODE)
        self._prune_cursor = 0

    # -- keys --------------------------------------------------------------------------

    def meta_key(self, sid: str) -> str:
        """The hash holding the session record."""
        return f"{self.prefix}{{{_tag(sid)}}}:meta"

    def stream_key(self, sid: str) -> str:
        """The stream holding the session's unacknowledged outgoing messages."""
        return f"{self.prefix}{{{_tag(sid)}}}:out"

    @property
    def epoch_key(self) -> str:
        """The key holding the store epoch."""
        return f"{self.prefix}epoch"

    @property
    def detached_key(self) -> str:
        """The sorted set of detached sessions, scored by ``expires_at``."""
        return f"{self.prefix}detached"

    @property
    def nodes_key(self) -> str:
        """The sorted set of store instances, scored by their last renewal's ``expires_at``."""
        return f"{self.prefix}nodes"

    def owned_key(self, node: str) -> str:
        """The set of ``<sid> <generation>`` ``node`` attached (a hint: re-checked when used)."""
        return f"{self.prefix}owned:{node}"

    def _keys(self, sid: str) -> list[str]:
        return [self.meta_key(sid), self.stream_key(sid)]

    # -- SessionStore ------------------------------------------------------------------

    async def epoch(self) -> str:
        """The epoch key's value, created with ``SET NX`` if missing."""
        value = await self._call(
            "epoch",
            lambda: self._pipelined(
                self._epoch_script, [self.epoch_key], [secrets.token_urlsafe(16)]
            ),
        )
        return _text(value)

    async def create(
        self, sid: str, *, token_hash: str, principal: str | None, now: float
    ) -> SessionRecord:
        """Create a session at generation 1 (see :meth:`SessionStore.create`)."""
        args = [
            token_hash,
            repr(now),
            principal or "",
            "0" if principal is None else "1",
            self.node,
        ]
        fields = await self._owned_script("create", self._create_script, sid, args, attaches=1)
        return _record(sid, fields)

    async def load(self, sid: str) -> SessionRecord | None:
        """The record for ``sid``, or None."""
        fields = await self._call(
            "load", lambda: self._pipelined_command("HGETALL", self.meta_key(sid))
        )
        return _record(sid, fields) if fields else None

    async def claim(
        self,
        sid: str,
        expected_generation: int,
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> SessionRecord:
        """Compare-and-set the generation in one script (see :meth:`SessionStore.claim`)."""
        args = [str(expected_generation), token_hash, previous_token_hash, self.node]
        args.append("" if attempt is None else str(attempt))
        fields = await self._owned_script(
            "claim",
            self._claim_script,
            sid,
            args,
            attaches=expected_generation + 1,
            generation=expected_generation,
        )
        return _record(sid, fields)

    async def resume(
        self,
        sid: str,
        admit: Callable[[SessionRecord], bool],
        *,
        token_hash: str,
        previous_token_hash: str,
        attempt: int | None = None,
    ) -> Resumption:
        """Two round trips: the load, then one script that claims and reads the replay.

        ``admit`` runs here, between the two (it cannot run inside Redis). See
        :meth:`SessionStore.resume`.
        """
        record = await self.load(sid)
        if record is None or not admit(record):
            return Resumption(record, None)
        fields, entries = await self._owned_script(
            "claim",
            self._claim_and_read_script,
            sid,
            [
                str(record.generation),
                token_hash,
                previous_token_hash,
                self.node,
                "" if attempt is None else str(attempt),
            ],
            attaches=record.generation + 1,
            generation=record.generation,
        )
        return Resumption(
            _record(sid, fields), [_message(entry_id, entry) for entry_id, entry in entries]
        )

    async def messages(self, sid: str, *, after: int) -> list[StoredMessage]:
        """Held messages with ``seq > after``: one ``XRANGE`` of the session's stream."""
        entries = await self._session_script("messages", self._messages_script, sid, [after + 1])
        return [_message(entry_id, fields) for entry_id, fields in entries]

    async def write(
        self,
        sid: str,
        generation: int,
        *,
        append: Sequence[StoredMessage] = (),
        acked: int | None = None,
        rx: int | None = None,
    ) -> SessionRecord:
        """Append, trim and record rx in one Lua script: one round trip per batch."""
        args = _write_args(sid, generation, append, acked, rx)
        fields = await self._session_script(
            "write", self._write_script, sid, args, generation=generation
        )
        return _record(sid, fields)

    async def write_many(self, writes: Sequence[Write]) -> list[BaseException | None]:
        """Every batch's scripts in this turn's pipeline, awaited as futures (no task each).

        A batch that also detaches queues the write script (if it writes
        anything), then :meth:`detach`'s script and index entry, in that order.
        """
        results: list[BaseException | None] = [None] * len(writes)
        queued: list[tuple[int, Write, str, Awaitable[Any]]] = []
        for index, w in enumerate(writes):
            keys = self._keys(w.sid)
            try:
                if not w.only_detaches:
                    args = _write_args(w.sid, w.generation, w.append, w.acked, w.rx)
                    write = self._pipelined(self._write_script, keys, args)
                    queued.append((index, w, "write", write))
                if w.detach_at is not None:
                    for call in self._detach_calls(w.sid, w.generation, w.detach_at):
                        queued.append((index, w, "detach", call))
            except Exception as exc:  # an inconsistent batch: refused before Redis
                results[index] = exc
                continue
        answers = await asyncio.gather(*(call for *_, call in queued), return_exceptions=True)
        for (index, w, operation, _), answer in zip(queued, answers, strict=True):
            if isinstance(answer, BaseException):
                if results[index] is None:  # the first failure of a batch is its outcome
                    results[index] = self._failure(operation, answer, w.sid, w.generation)
            else:
                self._incidents.succeeded()
        return results

    async def detach(self, sid: str, generation: int, *, expires_at: float) -> None:
        """Set the keys' TTL to the resume window (see :meth:`SessionStore.detach`)."""
        await self._session_script(
            "detach",
            self._detach_script,
            sid,
            self._detach_args(generation, expires_at),
            generation=generation,
        )
        # The indexes are hints for expire(), which re-checks the record: not part of the step.
        await self._call(
            "detach", lambda: asyncio.gather(*self._detached_indexes(sid, generation, expires_at))
        )

    def _detach_calls(
        self, sid: str, generation: int, expires_at: float
    ) -> tuple[Awaitable[Any], ...]:
        """Queue a detach: its script, and with it the expiry indexes' updates.

        (:meth:`detach` updates them only after the script succeeded; here they
        travel in the same pipeline. A fenced detach then leaves an entry too,
        harmless: the index is a hint, and :meth:`expire` re-checks the record.)
        """
        script = self._pipelined(
            self._detach_script, self._keys(sid), self._detach_args(generation, expires_at)
        )
        return script, *self._detached_indexes(sid, generation, expires_at)

    def _detached_indexes(
        self, sid: str, generation: int, expires_at: float
    ) -> tuple[Awaitable[Any], ...]:
        """Into the expiry index; out of this instance's attached set (it expires on its own).

        Only that generation's member leaves the set, even when the detach was
        fenced: a claim since has its own member, which stays.
        """
        return (
            self._pipelined_command("ZADD", self.detached_key, repr(expires_at), sid),
            self._pipelined_command("SREM", self.owned_key(self.node), _member(sid, generation)),
        )

    def _detach_args(self, generation: int, expires_at: float) -> list[Any]:
        """The detach script's arguments: the keys' TTL is what is left of the window."""
        ttl_ms = max(1, math.ceil((expires_at - self._clock()) * 1000))
        return [generation, repr(expires_at), ttl_ms]

    async def abandon(self, sid: str, generation: int, *, reason: str) -> None:
        """Mark the session lost and drop its stream (see :meth:`SessionStore.abandon`)."""
        await self._session_script(
            "abandon", self._abandon_script, sid, [generation, reason], generation=generation
        )

    async def end(self, sid: str, generation: int, *, code: int, reason: str) -> None:
        """Record the application's close (see :meth:`SessionStore.end`)."""
        await self._session_script(
            "end", self._end_script, sid, [generation, code, reason], generation=generation
        )

    async def delete(self, sid: str, *, generation: int | None = None) -> None:
        """Delete both keys and the index entry, in this loop turn's pipeline.

        With ``generation``: only while the session is still at it (the script
        answers -1 and changes nothing otherwise); the index entry goes after.
        """

        async def remove() -> Any:
            if generation is None:
                # Queued together, so they travel in the same pipeline: one round trip
                # for every session deleted in this turn (a burst of closes), not one each.
                attached, _ = await asyncio.gather(
                    self._pipelined(self._delete_script, self._keys(sid), []),
                    self._pipelined_command("ZREM", self.detached_key, sid),
                )
            else:
                attached = await self._pipelined(self._delete_script, self._keys(sid), [generation])
                if attached == -1:
                    return  # claimed since: another node's now
                await self._pipelined_command("ZREM", self.detached_key, sid)
            if attached:  # [owner, generation]: out of that instance's attached set
                owner, held_at = _text(attached[0]), _text(attached[1])
                await self._pipelined_command("SREM", self.owned_key(owner), _member(sid, held_at))

        await self._call("delete", remove)

    async def renew(self, expires_at: float) -> None:
        """Record this instance's renewal in ``<prefix>nodes`` (see :meth:`SessionStore.renew`).

        ``expires_at`` is turned into a time on Redis' clock, as a detach's TTL is.
        Each renewal also checks the next few members of this instance's attached
        set and drops those that no longer describe an attached session of its
        (taken over by another node, or a refused claim's): the set stays the size
        of what this instance holds.
        """
        ahead_ms = math.ceil((expires_at - self._clock()) * 1000)
        await self._call(
            "renew",
            lambda: self._pipelined(self._renew_script, [self.nodes_key], [self.node, ahead_ms]),
        )
        await self._call("renew", self._prune)

    async def _prune(self) -> None:
        owned = self.owned_key(self.node)
        cursor, members = await self._client.sscan(owned, self._prune_cursor, count=_PRUNE_BATCH)
        self._prune_cursor = int(cursor)
        if not members:
            return
        parsed = [_parse_member(member) for member in members]
        async with self._client.pipeline(transaction=False) as pipe:
            for sid, _ in parsed:
                pipe.hmget(self.meta_key(sid), "owner", "generation", "expires_at")
            found = await pipe.execute()
        # Never stale by mistake, though not atomic: a member that no longer describes
        # an attached session of this instance never will again (a claim makes a new
        # generation, and a new member with it).
        stale = [
            member
            for member, (_, attached), (owner, generation, expires_at) in zip(
                members, parsed, found, strict=True
            )
            if owner is None
            or _text(owner) != self.node
            or generation is None
            or _text(generation) != attached
            or expires_at is not None
        ]
        if stale:
            await self._client.srem(owned, *stale)

    async def expire(self, now: float, *, batch_size: int = 500) -> int:
        """Remove detached sessions whose window ended by ``now``, and orphans; return how many.

        Redis' TTL removes detached ones too (then they are not counted here).
        Candidates come from the ``detached`` index and from the attached sets of
        the instances whose renewal ran out; each is re-checked atomically
        against its record, so a session claimed again in the meantime is kept.
        """
        removed = await self._expire_detached(now, batch_size)
        ahead_ms = math.floor((now - self._clock()) * 1000)
        cutoff, dead = await self._call(
            "expire", lambda: self._dead_nodes_script([self.nodes_key], [ahead_ms])
        )
        for node in dead:
            removed += await self._expire_orphans(_text(node), int(cutoff), batch_size)
        return removed

    async def _expire_orphans(self, node: str, cutoff: int, batch_size: int) -> int:
        """Remove the sessions still attached through ``node``; then forget the node."""
        owned = self.owned_key(node)
        removed = 0
        # Bounded: each round takes at least one member out of the set, and only a
        # node that is not dead after all adds to it.
        rounds = 1 + await self._call("expire", lambda: self._client.scard(owned)) // batch_size
        for _ in range(rounds):
            # A node that renews after all is alive again: what it holds now stays.
            score = await self._call("expire", lambda: self._client.zscore(self.nodes_key, node))
            if score is not None and score > cutoff:
                return removed
            found = await self._call("expire", lambda: self._client.srandmember(owned, batch_size))
            members: list[Any] = list(found or ())
            if not members:
                break
            taken = [_parse_member(member) for member in members]

            async def sweep(
                taken: list[tuple[str, str]] = taken, members: list[Any] = members
            ) -> Any:
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid, generation in taken:
                        await self._orphan_script(self._keys(sid), [node, generation], client=pipe)
                    pipe.srem(owned, *members)
                    return await pipe.execute()

            results = await self._call("expire", sweep)
            removed += sum(int(result) for result in results[:-1])
        await self._call(
            "expire", lambda: self._forget_node_script([self.nodes_key], [node, cutoff])
        )
        return removed

    async def _expire_detached(self, now: float, batch_size: int) -> int:
        removed = 0
        while True:
            candidates = await self._call(
                "expire",
                lambda: self._client.zrangebyscore(
                    self.detached_key, "-inf", now, start=0, num=batch_size
                ),
            )
            if not candidates:
                return removed
            sids = [_text(candidate) for candidate in candidates]

            async def sweep(sids: list[str] = sids) -> Any:
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid in sids:
                        await self._expire_script(self._keys(sid), [repr(now)], client=pipe)
                    pipe.zrem(self.detached_key, *sids)
                    return await pipe.execute()

            results = await self._call("expire", sweep)
            removed += sum(int(result) for result in results[:-1])

    async def close(self) -> None:
        """Wait for the pipelines in flight, then close the connection pool.

        An operation started once the close began fails with StoreUnavailable.
        """
        self._closing = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._start_pipeline()
        while self._in_flight or self._active:
            # A pipeline that ends starts the next one queued; an operation under way
            # (an expiry sweep's own round trips) ends before the pool closes.
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            else:
                self._idle = asyncio.Event()
                await self._idle.wait()
        await self._client.aclose()

    # -- plumbing ----------------------------------------------------------------------

    def _pipelined(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Queue one script call; every call queued in this loop turn shares one round trip.

        The calls of all sessions made while the event loop runs one batch of
        callbacks are sent in one non-transactional pipeline right after it
        (``call_soon``), so N sessions writing in the same turn cost one round
        trip, not N. Each script is still atomic on its own; a refused one
        (fenced, unknown) does not affect the others. While
        :data:`MAX_PIPELINES` are in flight the call waits for the next one.
        """
        return self._enqueue(_Call(script, [*keys, *args], len(keys), self._future()))

    def _pipelined_command(self, *command: Any) -> Awaitable[Any]:
        """Queue one plain command (``HGETALL key``) like a script call."""
        return self._enqueue(_Call(None, list(command), 0, self._future()))

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _enqueue(self, call: _Call) -> Awaitable[Any]:
        if self._closing:
            call.future.set_exception(StoreUnavailable("redis store: closed"))
            return call.future
        self._queue.append(call)
        if self._flush is None and len(self._in_flight) < MAX_PIPELINES:
            self._flush = asyncio.get_running_loop().call_soon(self._start_pipeline)
        return call.future

    def _start_pipeline(self) -> None:
        self._flush = None
        if len(self._in_flight) >= MAX_PIPELINES:
            return  # the first pipeline to finish sends what is queued
        calls, self._queue = self._queue, []
        if calls:
            task = asyncio.ensure_future(self._send_pipeline(calls))
            self._in_flight.add(task)
            task.add_done_callback(self._pipeline_done)

    def _pipeline_done(self, task: asyncio.Future[None]) -> None:
        self._in_flight.discard(task)
        if self._queue and self._flush is None:
            # Everything queued while the pipelines were busy goes in one.
            self._start_pipeline()

    async def _send_pipeline(self, calls: list[_Call]) -> None:
        try:
            results = await self._execute(calls)
            missing = [
                index for index, result in enumerate(results) if isinstance(result, NoScriptError)
            ]
            if missing:
                # Redis restarted (or SCRIPT FLUSH): those calls did not run. Load the
                # scripts and send them again; other scripts must not run twice. The
                # plain commands after the first of them run again too, in order: they
                # are index updates that must follow their script (an attached-set SADD
                # that ran before its claim could be pruned as stale in between), and
                # each is idempotent (SADD, SREM, ZADD, ZREM, HGETALL).
                scripts = {id(calls[i].script): calls[i].script for i in missing}
                for script in scripts.values():
                    assert script is not None  # plain commands never answer NOSCRIPT
                    script.sha = await self._client.script_load(script.script)
                again = [
                    index
                    for index in range(missing[0], len(calls))
                    if index in missing or calls[index].script is None
                ]
                retried = await self._execute([calls[i] for i in again])
                for index, result in zip(again, retried, strict=True):
                    results[index] = result
        except asyncio.CancelledError:  # the loop is shutting down: so are the callers
            for call in calls:
                call.future.cancel()
            raise
        except Exception as exc:  # the whole round trip failed: every call did
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        for call, result in zip(calls, results, strict=True):
            if call.future.done():  # the caller was cancelled
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                if call.script is None:
                    pipe.execute_command(*call.args)
                else:
                    pipe.evalsha(call.script.sha, call.key_count, *call.args)
            return list(await pipe.execute(raise_on_error=False))

    def _owned_script(
        self,
        operation: str,
        script: AsyncScript,
        sid: str,
        args: list[Any],
        *,
        attaches: int,
        generation: int = 0,
    ) -> Awaitable[Any]:
        """:meth:`_session_script` of a script that attaches the session at generation ``attaches``.

        The session joins this instance's attached set in the same pipeline (a
        hint: if the script is refused, the member is stale, skipped by
        :meth:`expire` and dropped by a later :meth:`renew`; if the set update
        fails, the call fails as a whole, as when the script's reply is lost).
        """

        async def attach() -> Any:
            result, _ = await asyncio.gather(
                self._pipelined(script, self._keys(sid), args),
                # After the script: a prune that reads the set in between must not
                # find a member whose claim has not run yet (it would drop it).
                self._pipelined_command("SADD", self.owned_key(self.node), _member(sid, attaches)),
            )
            return result

        return self._call(operation, attach, sid=sid, generation=generation)

    def _session_script(
        self,
        operation: str,
        script: AsyncScript,
        sid: str,
        args: list[Any],
        *,
        generation: int = 0,
    ) -> Awaitable[Any]:
        """:meth:`_call` of ``script`` on the session's two keys, in this turn's pipeline."""
        return self._call(
            operation,
            lambda: self._pipelined(script, self._keys(sid), args),
            sid=sid,
            generation=generation,
        )

    async def _call(
        self,
        operation: str,
        command: Callable[[], Awaitable[_T]],
        *,
        sid: str = "",
        generation: int = 0,
    ) -> _T:
        """Run one Redis round trip; translate tagged script errors and backend failures."""
        if self._closing:
            raise StoreUnavailable(f"redis store: {operation} failed: closed")
        self._active += 1
        try:
            result = await command()
        except (RedisError, OSError) as exc:
            error = self._failure(operation, exc, sid, generation)
            if isinstance(error, StoreUnavailable):
                raise error from exc
            raise error from None  # a refusal, not a failure: no backend traceback
        finally:
            self._active -= 1
            if not self._active and self._idle is not None:
                self._idle.set()
        self._incidents.succeeded()
        return result

    def _failure(
        self, operation: str, exc: BaseException, sid: str, generation: int
    ) -> BaseException:
        """What a failed call raises: a script's tagged refusal, else StoreUnavailable.

        A tagged refusal (fenced, unknown, ...) means the backend answered; any other
        Redis error (OOM, READONLY, a lost connection) means it failed. The returned
        StoreUnavailable has the backend's error as its ``__cause__``.
        """
        if isinstance(exc, ResponseError):
            translated = _translate(exc, sid, generation)
            if translated is not None:
                self._incidents.succeeded()
                return translated
        if isinstance(exc, (RedisError, OSError)):
            self._incidents.failed(operation, exc)
            unavailable = StoreUnavailable(f"redis store: {operation} failed: {exc}")
            unavailable.__cause__ = exc
            return unavailable
        return exc  # not the backend's (a bug): as it is


@dataclasses.dataclass
class _Call:
    """One script call (or plain command) waiting for the next pipeline."""

    script: AsyncScript | None  # None: ``args`` is a command, its name first
    args: list[Any]  # keys, then arguments
    key_count: int
    future: asyncio.Future[Any]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _member(sid: str, generation: int | str) -> str:
    """A member of an instance's attached set: the session at that generation."""
    return f"{sid} {generation}"


def _parse_member(member: Any) -> tuple[str, str]:
    """(sid, generation) of an attached-set member, as the strings :func:`_member` joined."""
    sid, _, generation = _text(member).rpartition(" ")
    return sid, generation


def _tag(sid: str) -> str:
    # A brace in the id would end the hash tag early and split the session's keys.
    if "{" in sid or "}" in sid:
        raise StoreError(f"session id {sid!r} may not contain braces")
    return sid


def _write_args(
    sid: str,
    generation: int,
    append: Sequence[StoredMessage],
    acked: int | None,
    rx: int | None,
) -> list[str | bytes | int]:
    """The write script's arguments for one batch (its consistency checked first)."""
    check_batch(sid, append)
    args: list[str | bytes | int] = [
        generation,
        "" if acked is None else acked,
        "" if rx is None else rx,
        append[0].seq if append else 0,
        len(append),
    ]
    for message in append:
        if isinstance(message.payload, str):
            args += ["t", message.payload.encode()]
        else:
            args += ["b", message.payload]
    return args


def _translate(exc: ResponseError, sid: str, generation: int) -> StoreError | None:
    text = str(exc)
    if text.startswith("TETHER_FENCED"):
        return Fenced(sid, generation, int(text.split()[1]))
    if text.startswith("TETHER_UNKNOWN"):
        return UnknownSession(f"session {sid} is unknown")
    if text.startswith("TETHER_EXISTS"):
        return SessionExists(f"session {sid} already exists")
    if text.startswith("TETHER_BATCH"):
        return StoreError(f"session {sid}: {text.removeprefix('TETHER_BATCH ')}")
    return None


def _record(sid: str, fields: Any) -> SessionRecord:
    if isinstance(fields, list):  # a script's HGETALL: flat [field, value, ...]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    meta = {_text(key): _text(value) for key, value in fields.items()}
    expires_at = meta.get("expires_at")
    end_code = meta.get("end_code")
    return SessionRecord(
        sid=sid,
        token_hash=meta["token_hash"],
        previous_token_hash=meta.get("previous_token_hash"),
        principal=meta.get("principal"),
        generation=int(meta["generation"]),
        created_at=float(meta["created_at"]),
        expires_at=None if expires_at is None else float(expires_at),
        tx=int(meta["tx"]),
        acked=int(meta["acked"]),
        rx=int(meta["rx"]),
        lost=meta.get("lost"),
        end_code=None if end_code is None else int(end_code),
        end_reason=meta.get("end_reason", ""),
        attempt=int(meta.get("attempt", 0)),
    )


def _message(entry_id: bytes, fields: list[bytes]) -> StoredMessage:
    seq = int(entry_id.split(b"-", 1)[0])
    kind, data = fields[0], bytes(fields[1])
    return StoredMessage(seq, data.decode() if kind == b"t" else data)
