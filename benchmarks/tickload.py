"""What one ticker message costs the server at steady state, by mode and store.

The storm's servers spend much of their CPU on the ticker (one message per client per
interval, 2,000 messages/s in all), before any restart. This measures that cost alone:
N clients (the storm's own client processes) on ``tether serve --app ticker``, no
restart. Over a window of ``--seconds`` it reads the server process's CPU (user and
system, all threads), the time its cyclic garbage collector ran (``gc.callbacks``,
installed by a thin wrapper, ``tickload server``, that then runs ``tether serve``),
its context switches, and how many ticker messages the clients received; every figure
is per message received. Rows alternate within each round, so that a machine whose
speed drifts moves all rows alike.

Rows: ``tether-plain`` (plain clients, no store), ``tether-v1-memory`` and
``tether-v1-sqlite`` (tether.v1 clients; the store of the server), and
``tether-v1-redis`` with ``--redis URL``.

Usage::

    python -m benchmarks.tickload [--clients 2000] [--interval-ms 1000] [--seconds 10]
                                  [--rounds 3] [--only ROWS] [--redis URL] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .common import (
    Progress,
    Summary,
    child_env,
    cpu_times,
    fmt,
    python_command,
    read_line,
    stop,
    table,
)
from .peers import free_port, raise_nofile_limit
from .storm import DEFAULT_STORE, _store_url, _wait_healthy, connect_clients

ROWS = ("tether-plain", "tether-v1-memory", "tether-v1-sqlite", "tether-v1-redis")
DEFAULT_ROWS = ROWS[:3]
#: Seconds between all clients being connected and the window: the first ticks after
#: a connection burst still carry its garbage and its cold caches.
WARM_UP_S = 3.0


@dataclass(frozen=True)
class Snapshot:
    """The server's counters at one instant (and the messages received by then)."""

    user_s: float
    system_s: float
    gc_s: float
    gc_collections: int
    context_switches: int
    received: int
    client_cpu_s: float
    #: The collector's seconds and collections by generation (0, 1, 2): a collection
    #: of generation n walks the objects of generations 0..n, so an older one costs
    #: more, a full one (2) as much as every object the process keeps.
    gc_by_generation_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gc_by_generation: tuple[int, int, int] = (0, 0, 0)


def per_message(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Figures per message received between two snapshots (µs, or counts).

    Raises:
        ValueError: no message arrived in between (the figures would mean nothing).
    """
    messages = after.received - before.received
    if messages <= 0:
        raise ValueError("no ticker message arrived during the window")
    user = after.user_s - before.user_s
    system = after.system_s - before.system_s
    return {
        "messages": float(messages),
        "server_us": (user + system) * 1e6 / messages,
        "user_us": user * 1e6 / messages,
        "system_us": system * 1e6 / messages,
        "gc_us": (after.gc_s - before.gc_s) * 1e6 / messages,
        "gc_collections_per_1000": (after.gc_collections - before.gc_collections) * 1000 / messages,
        **{
            f"gc{n}_us": (after.gc_by_generation_s[n] - before.gc_by_generation_s[n])
            * 1e6
            / messages
            for n in range(3)
        },
        **{
            f"gc{n}_collections": float(after.gc_by_generation[n] - before.gc_by_generation[n])
            for n in range(3)
        },
        "context_switches": (after.context_switches - before.context_switches) / messages,
        "client_us": (after.client_cpu_s - before.client_cpu_s) * 1e6 / messages,
    }


def read_gc_stats(path: str) -> tuple[float, int]:
    """(seconds collecting, collections) the wrapper last wrote; (0, 0) before it did."""
    seconds, collections = read_gc_generations(path)
    return float(sum(seconds)), int(sum(collections))


def read_gc_generations(
    path: str,
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """(seconds, collections) per generation (0, 1, 2) the wrapper last wrote; zeros before."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return (0.0, 0.0, 0.0), (0, 0, 0)
    s0, s1, s2 = (float(v) for v in data["seconds"])
    c0, c1, c2 = (int(v) for v in data["collections"])
    return (s0, s1, s2), (c0, c1, c2)


def _context_switches(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _snapshot(
    server: subprocess.Popen[bytes], stats: str, clients: Sequence[subprocess.Popen[str]]
) -> Snapshot:
    # The wrapper writes its collector's totals on SIGUSR1 to a new file (os.replace):
    # a new inode tells the new figures are there, however close the two snapshots.
    before = _inode(stats)
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5.0
    while _inode(stats) in (before, None):
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not report its collector's figures within 5 s")
        time.sleep(0.01)
    gc_seconds, gc_collections = read_gc_generations(stats)
    times = cpu_times(server.pid)
    if times is None:
        raise RuntimeError("the server exited during the measurement")
    user, system = times
    received = 0
    client_cpu = 0.0
    for client in clients:
        assert client.stdin is not None
        client.stdin.write("COUNT\n")
        client.stdin.flush()
        count, cpu = read_line(client, "COUNT ", 10).split()
        received += int(count)
        client_cpu += float(cpu)
    return Snapshot(
        user,
        system,
        sum(gc_seconds),
        sum(gc_collections),
        _context_switches(server.pid),
        received,
        client_cpu,
        gc_by_generation_s=gc_seconds,
        gc_by_generation=gc_collections,
    )


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _store(row: str, redis: str | None) -> str:
    """The row's ``--store``, as storm's ``_store_url`` takes it ("sqlite": a file of the run)."""
    if row == "tether-v1-sqlite":
        return DEFAULT_STORE
    if row == "tether-v1-redis":
        assert redis is not None
        return redis
    return "memory"


def measure(
    row: str, clients: int, interval_ms: float, seconds: float, redis: str | None
) -> dict[str, float]:
    """One window of one row: start the server and its clients, measure, stop them all."""
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="tether-bench-tickload-") as tmp,
        _store_url(_store(row, redis)) as store,
        open(os.path.join(tmp, "server.log"), "wb") as log,
    ):
        stats = os.path.join(tmp, "gc.json")
        command = python_command(
            "tickload", "server", stats, "--", "serve", "--app", "ticker",
            "--ticker-interval", str(interval_ms), "--port", str(port), "--store", store,
        )  # fmt: skip
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env()
        )
        procs: list[subprocess.Popen[str]] = []
        try:
            _wait_healthy(port, server, 30)
            mode = "tether-plain" if row == "tether-plain" else "tether"
            connect_clients(mode, f"ws://127.0.0.1:{port}/", clients, procs)
            time.sleep(WARM_UP_S)
            before = _snapshot(server, stats, procs)
            time.sleep(seconds)
            after = _snapshot(server, stats, procs)
            return per_message(before, after)
        finally:
            for proc in procs:
                stop(proc, signal.SIGKILL)
            stop(server, signal.SIGKILL)  # type: ignore[arg-type]


def run(
    clients: int,
    interval_ms: float,
    seconds: float,
    rounds: int,
    rows: Sequence[str],
    redis: str | None,
    progress: Progress,
) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {row: [] for row in rows}
    for round_number in range(1, rounds + 1):
        for row in rows:
            progress.update(f"tickload: round {round_number}/{rounds}, {row}")
            results[row].append(measure(row, clients, interval_ms, seconds, redis))
    progress.done()
    return {
        "scenario": "tickload",
        "clients": clients,
        "interval_ms": interval_ms,
        "seconds": seconds,
        "rounds": results,
    }


_COLUMNS = (
    ("server CPU, µs/msg", "server_us"),
    ("user", "user_us"),
    ("system", "system_us"),
    ("cyclic GC", "gc_us"),
    ("GC runs /1000 msgs", "gc_collections_per_1000"),
    ("GC gen 0 / 1 / 2, µs/msg", ("gc0_us", "gc1_us", "gc2_us")),
    ("GC gen 0 / 1 / 2, runs", ("gc0_collections", "gc1_collections", "gc2_collections")),
    ("ctx switches/msg", "context_switches"),
    ("clients' CPU, µs/msg", "client_us"),
)


def report(result: dict[str, Any]) -> str:
    """The table: medians (min–max) over the rounds, per message received."""
    rows = []
    for row, runs in result["rounds"].items():
        cells = [row]
        for _, key in _COLUMNS:
            if isinstance(key, tuple):  # one figure per generation: medians only
                cells.append(" / ".join(fmt(Summary.of([r[k] for r in runs]).median) for k in key))
                continue
            summary = Summary.of([r[key] for r in runs])
            cells.append(f"{fmt(summary.median)} ({fmt(summary.low)}–{fmt(summary.high)})")
        rows.append(cells)
    rate = result["clients"] * 1000 / result["interval_ms"]
    head = (
        f"tickload: {result['clients']} clients, one message each per "
        f"{result['interval_ms'] / 1000:g} s ({rate:.0f} messages/s), "
        f"{result['seconds']:g} s window, {len(next(iter(result['rounds'].values())))} rounds"
    )
    return head + "\n\n" + table(["row", *(name for name, _ in _COLUMNS)], rows)


def _server_main(argv: list[str]) -> int:
    """``tickload server STATS -- tether-args``: ``tether`` with its collector timed.

    On SIGUSR1 the collector's totals since start-up (collections and CPU seconds,
    per generation) are written to STATS (to a temporary file, then renamed).
    """
    stats, separator, *tether_args = argv
    if separator != "--":
        raise SystemExit("usage: python -m benchmarks.tickload server STATS -- TETHER-ARGS")
    collections = [0, 0, 0]
    seconds = [0.0, 0.0, 0.0]
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        # thread_time: the collector runs in the thread that triggered it, holding the GIL.
        if phase == "start":
            started[0] = time.thread_time()
        else:
            generation = info["generation"]
            collections[generation] += 1
            seconds[generation] += time.thread_time() - started[0]

    def write(*_: object) -> None:
        with open(stats + ".tmp", "w") as f:
            json.dump({"collections": collections, "seconds": seconds}, f)
        os.replace(stats + ".tmp", stats)

    gc.callbacks.append(timed)
    signal.signal(signal.SIGUSR1, write)
    sys.argv = ["tether", *tether_args]
    runpy.run_module("tether", run_name="__main__", alter_sys=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        return _server_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tickload", description=__doc__)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--interval-ms", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--redis", metavar="URL", help="a Redis store URL: adds tether-v1-redis")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or not args.seconds > 0 or not args.interval_ms > 0:
        parser.error("--clients and --rounds must be >= 1, --seconds and --interval-ms > 0")
    rows = list(DEFAULT_ROWS) + (["tether-v1-redis"] if args.redis else [])
    if args.only:
        wanted = [r.strip() for r in args.only.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in ROWS]
        if unknown:
            parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
        if "tether-v1-redis" in wanted and not args.redis:
            parser.error("tether-v1-redis needs --redis URL")
        rows = wanted
    raise_nofile_limit()
    result = run(
        args.clients, args.interval_ms, args.seconds, args.rounds, rows, args.redis, Progress()
    )
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
