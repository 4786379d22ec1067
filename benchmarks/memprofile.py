"""Where a server's per-connection memory goes: tracemalloc, grouped by source line.

    python -m benchmarks.memprofile IMPL [--connections 1000] [--top 25]

Runs the ``benchmarks.peers`` server for IMPL in this process under tracemalloc,
opens 20 warm-up connections then N idle ones from a holder process (raw
websockets clients, as in the memory scenario; for ``tether-v1`` each one starts a
tether.v1 session with hello and welcome), and prints the Python heap added
per connection, by allocating line, then the objects the cyclic GC tracks per
connection, by type (a full collection walks them all: its pause grows with
them). Python objects only: kernel socket buffers and allocator slack are in the
RSS figure of ``tether bench memory``, not here.
Not part of ``tether bench``: a tool for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import re
import sys
import tracemalloc

from .common import python_command, read_line, spawn, stop
from .peers import _SERVERS, IMPLS, raise_nofile_limit, url_for


async def _measure(impl: str, connections: int, top: int) -> None:
    tracemalloc.start(1)
    _server, port = await _SERVERS[impl](0, False)
    url = url_for(impl, port)
    loop = asyncio.get_running_loop()
    holders = []

    async def hold(n: int) -> None:
        # tether-v1: the same tether server, each holder connection a tether.v1 session.
        extra = ["--tether-v1"] if impl == "tether-v1" else []
        proc = spawn(python_command("peers", "hold", url, "--connections", str(n), *extra))
        holders.append(proc)
        await loop.run_in_executor(None, read_line, proc, "HELD ", 120)

    try:
        await hold(20)
        await asyncio.sleep(0.5)
        gc.collect()
        before = tracemalloc.take_snapshot()
        tracked_before = collections.Counter(type(o).__name__ for o in gc.get_objects())
        await hold(connections)
        await asyncio.sleep(1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracked_after = collections.Counter(type(o).__name__ for o in gc.get_objects())
    finally:
        for proc in holders:
            stop(proc)
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{impl}: Python heap added per idle connection: {total / connections / 1024:.2f} KiB")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = re.sub(r"^.*/(site-packages|src|lib/python3\.\d+)/", "", frame.filename)
        print(
            f"{stat.size_diff / connections:8.0f} B {stat.count_diff / connections:5.1f} objects"
            f"  {where}:{frame.lineno}"
        )
    # What the cyclic GC walks in a full collection: its length grows with these.
    tracked = tracked_after - tracked_before
    print(
        f"{impl}: objects tracked by the cyclic GC per idle connection: "
        f"{sum(tracked.values()) / connections:.1f}"
    )
    for name, count in tracked.most_common(top):
        print(f"{count / connections:8.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memprofile")
    parser.add_argument("impl", choices=[i for i in IMPLS if i != "tcp"])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    asyncio.run(_measure(args.impl, args.connections, args.top))
    sys.stdout.flush()
    os._exit(0)  # thousands of server connections: no graceful close needed


if __name__ == "__main__":
    main()
