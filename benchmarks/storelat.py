"""How long a resume waits for the session store while the event loop is busy.

During a restart storm the replacement's event loop is busy nearly all the time
(handshakes, welcomes, the ticker), and every resume waits for the store. The SQLite
store works on a thread of its own, and that thread needs the GIL between any two
SQLite calls (Python's sqlite3 releases it around each one): while the loop thread
holds the GIL, each such hand-off waits up to the interpreter's switch interval
(``sys.getswitchinterval()``, 5 ms by default), or longer when the loop turns over
faster than that (see docs/stores.md). A store operation is a few of them, so
its latency grows with how busy the loop is, and a resume made of three operations
waits three times.

This benchmark creates ``--sessions`` stored sessions (three held messages each),
keeps the loop busy for ``--busy`` of every millisecond (a callback that spins), and
resumes them all, 100 every 50 ms (2,000/s, a storm's peak), in two ways:

* ``three calls``: ``load``, then ``claim``, then ``messages`` (what the server did
  before ``SessionStore.resume`` existed);
* ``resume()``: one call (SQLite: one transaction on the store's thread).

Each figure is the median over ``--rounds`` rounds (the two paths alternate within a
round) of the resumes' latency percentiles, from the call to its answer. A run that
does not finish within ``--limit`` seconds is reported as such. ``--switch-interval``
sets the interpreter's switch interval for the whole run.

``--burst`` measures a ticker's burst instead: one ``write_many`` of every session
(one text message each, acknowledging the one before, as the storm's ticker writes),
``BURSTS`` times in a row, in two ways:

* ``one by one``: a guarded UPDATE, an INSERT and a DELETE per write (the store
  without its bulk statements, as on an SQLite older than 3.33);
* ``bulk``: the same writes as one UPDATE, one INSERT and one DELETE for the group
  (JSON rows).

Usage::

    python -m benchmarks.storelat [--sessions 2000] [--busy 0,0.5,0.9] [--rounds 3]
                                  [--switch-interval S] [--limit 60] [--burst] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest import mock

from tether.stores import sqlite as sqlite_module
from tether.stores.base import SessionStore, StoredMessage, Write
from tether.stores.sqlite import SQLiteStore

from .common import fmt, table

PATHS = ("three calls", "resume()")
BURST_PATHS = ("one by one", "bulk")
#: write_many calls of every session per --burst run, one after the other.
BURSTS = 5
HASH = "a" * 64
#: Arrivals: this many resumes every ARRIVAL_PERIOD_S (2,000/s).
ARRIVAL_BATCH = 100
ARRIVAL_PERIOD_S = 0.05
#: The busy callback's period: it spins for ``busy`` of it, then lets the loop wait.
BUSY_PERIOD_S = 0.001


async def _prepare(store: SessionStore, sessions: int) -> list[str]:
    sids = [f"s{number:06d}" for number in range(sessions)]
    held = [StoredMessage(seq, f"m{seq}") for seq in (1, 2, 3, 4)]
    for start in range(0, sessions, 500):
        chunk = sids[start : start + 500]
        await asyncio.gather(
            *(store.create(sid, token_hash=HASH, principal=None, now=0.0) for sid in chunk)
        )
        await asyncio.gather(*(store.write(sid, 1, append=held, acked=1) for sid in chunk))
    return sids


async def _three_calls(store: SessionStore, sid: str) -> int:
    record = await store.load(sid)
    assert record is not None
    claimed = await store.claim(
        sid, record.generation, token_hash="b" * 64, previous_token_hash=HASH
    )
    return len(await store.messages(sid, after=claimed.acked))


async def _one_call(store: SessionStore, sid: str) -> int:
    _, replay = await store.resume(
        sid, lambda record: True, token_hash="b" * 64, previous_token_hash=HASH
    )
    assert replay is not None
    return len(replay)


def _keep_busy(loop: asyncio.AbstractEventLoop, busy: float) -> Callable[[], None]:
    """Spin for ``busy`` of every BUSY_PERIOD_S until the returned function is called."""
    spin_s = busy * BUSY_PERIOD_S
    rest_s = BUSY_PERIOD_S - spin_s
    current: list[asyncio.Handle] = []

    def spin() -> None:
        end = time.perf_counter() + spin_s
        while time.perf_counter() < end:
            pass
        # All the time (1.0): next in line at once, so the loop never waits in select.
        current[0] = loop.call_later(rest_s, spin) if rest_s > 0 else loop.call_soon(spin)

    def stop() -> None:
        for handle in current:
            handle.cancel()

    if busy > 0:
        current.append(loop.call_soon(spin))
    return stop


@contextlib.asynccontextmanager
async def _prepared(sessions: int) -> AsyncIterator[tuple[SQLiteStore, list[str]]]:
    """A store on a temporary file with ``sessions`` sessions (see _prepare), closed after."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-storelat-") as directory:
        store = SQLiteStore(os.path.join(directory, "sessions.db"))
        try:
            yield store, await _prepare(store, sessions)
        finally:
            await store.close()


async def _run(path: str, sessions: int, busy: float, limit: float) -> dict[str, Any]:
    async with _prepared(sessions) as (store, sids):
        loop = asyncio.get_running_loop()
        resume = _three_calls if path == PATHS[0] else _one_call
        latencies: list[float] = []

        async def one(sid: str) -> None:
            started = loop.time()
            replayed = await resume(store, sid)
            assert replayed == 3
            latencies.append(loop.time() - started)

        before = store.transactions
        stop_busy = _keep_busy(loop, busy)
        started = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        try:
            for start in range(0, sessions, ARRIVAL_BATCH):
                tasks += [
                    asyncio.ensure_future(one(sid)) for sid in sids[start : start + ARRIVAL_BATCH]
                ]
                await asyncio.sleep(ARRIVAL_PERIOD_S)
            done, pending = await asyncio.wait(tasks, timeout=limit)
        finally:
            stop_busy()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - started
        for task in done:
            task.result()  # an error in a resume is the benchmark's error
    return _figures(path, busy, not pending, latencies, wall, store.transactions - before)


async def _run_burst(path: str, sessions: int, busy: float, limit: float) -> dict[str, Any]:
    """BURSTS write_many calls of every session, one after the other, the loop busy."""
    one_by_one = (
        # (A private hook: the store's check of what its SQLite supports.)
        mock.patch.object(sqlite_module, "_bulk_supported", return_value=False)
        if path == BURST_PATHS[0]
        else contextlib.nullcontext()
    )
    with one_by_one:
        async with _prepared(sessions) as (store, sids):
            loop = asyncio.get_running_loop()
            latencies: list[float] = []

            async def bursts() -> None:
                for number in range(BURSTS):
                    seq = 5 + number  # _prepare held 1..4, acknowledged 1
                    payload = f'{{"seq": {seq}, "tick": 88311922, "node": "4242"}}'
                    writes = [
                        Write(sid, 1, [StoredMessage(seq, payload)], acked=seq - 1) for sid in sids
                    ]
                    started = loop.time()
                    errors = await store.write_many(writes)
                    latencies.append(loop.time() - started)
                    assert errors == [None] * sessions, errors[:3]

            before = store.transactions
            stop_busy = _keep_busy(loop, busy)
            started = time.perf_counter()
            finished = True
            try:
                await asyncio.wait_for(bursts(), limit)
            except asyncio.TimeoutError:
                finished = False
            finally:
                stop_busy()
            wall = time.perf_counter() - started
    return _figures(path, busy, finished, latencies, wall, store.transactions - before)


def _figures(
    path: str,
    busy: float,
    finished: bool,
    latencies: list[float],
    wall: float,
    transactions: int,
) -> dict[str, Any]:
    latencies = sorted(latencies)

    def pct(q: float) -> float | None:
        if not finished:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "path": path,
        "busy": busy,
        "finished": finished,
        "resumed": len(latencies),
        "wall_s": wall,
        "p50_s": pct(0.50),
        "p90_s": pct(0.90),
        "p99_s": pct(0.99),
        "max_s": latencies[-1] if finished and latencies else None,
        "transactions": transactions,
    }


def _median(values: list[float | None]) -> float | None:
    if not values or any(value is None for value in values):
        return None
    return statistics.median(value for value in values if value is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storelat", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--busy", default="0,0.5,0.9", help="comma-separated fractions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--switch-interval", type=float, default=None)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per run at most")
    parser.add_argument(
        "--burst", action="store_true", help="a ticker's write_many bursts, not resumes"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    paths, run = (BURST_PATHS, _run_burst) if args.burst else (PATHS, _run)
    busy_levels = [float(value) for value in args.busy.split(",")]
    if any(not 0 <= level <= 1 for level in busy_levels) or args.sessions < 1 or args.rounds < 1:
        parser.error("--busy takes fractions in [0, 1]; --sessions and --rounds at least 1")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    runs: list[dict[str, Any]] = []
    for busy in busy_levels:
        for round_number in range(args.rounds):
            # Alternate which path goes first, so that drift moves both alike.
            order = paths if round_number % 2 == 0 else paths[::-1]
            for path in order:
                runs.append(asyncio.run(run(path, args.sessions, busy, args.limit)))
                print(
                    f"  busy {busy:.0%} {path}: {runs[-1]['wall_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    what = (
        f"{BURSTS} write_many calls of {args.sessions} sessions each (one message each)"
        if args.burst
        else f"{args.sessions} resumes, {ARRIVAL_BATCH} every {ARRIVAL_PERIOD_S * 1000:.0f} ms"
    )
    header = (
        f"storelat: {what}, a SQLite store, the loop busy for the given share of each "
        f"millisecond; switch interval {sys.getswitchinterval() * 1000:g} ms; "
        f"median of {args.rounds} round(s)"
    )
    if args.json:
        print(json.dumps({"header": header, "runs": runs}, indent=2))
        return 0
    rows = []
    for busy in busy_levels:
        for path in paths:
            mine = [one for one in runs if one["busy"] == busy and one["path"] == path]

            def ms(key: str, mine: list[dict[str, Any]] = mine) -> str:
                value = _median([one[key] for one in mine])
                return "did not finish" if value is None else fmt(value * 1000)

            transactions = statistics.median(one["transactions"] for one in mine)
            rows.append(
                [
                    f"{busy:.0%}",
                    path,
                    ms("p50_s"),
                    ms("p90_s"),
                    ms("p99_s"),
                    fmt(statistics.median(one["wall_s"] for one in mine)),
                    fmt(transactions),
                ]
            )
    print(header)
    print()
    print(
        table(
            ["loop busy", "path", "p50, ms", "p90, ms", "p99, ms", "all done, s", "transactions"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
