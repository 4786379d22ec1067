"""Instructions per message, counted by callgrind: a deterministic cost for A/B work.

    python -m benchmarks.instructions [--impl websockets,tether,tether-v1]
                                      [--test echo,stream_up,stream_down,reconnect,echo_1k,echo_64k]
                                      [--side both,server,client] [--src DIR]
                                      [--counts 1000,5000] [--store memory,sqlite]
                                      [--json]

Times on a shared 2-core machine move by ±20 % within minutes (docs/benchmarks.md,
"Where tether stands"), more than a change to the per-message path is worth.
``valgrind --tool=callgrind`` counts the instructions the CPU retires instead: the same
code gives the same count within a few tenths of a percent under the same load (see
below). Each figure is the difference between two runs of the same process with ``N1``
and ``N2`` messages, divided by ``N2 - N1``: start-up, handshakes and warm-up cancel
out.

Server and client of one implementation run in one process (``benchmarks.peers``'
servers and clients, on loopback): a figure is the cost of a message on **both**
sides together. In the throughput scenario the two sides run in separate processes,
in parallel; a stream's rate follows the slower side, an echo's the sum. A ratio
here is raw websockets' count over the row's (1.00 = same cost, lower = more).

``--side server`` or ``--side client`` counts one side only: that side runs alone
under valgrind, in its own process, and the other side runs natively in another. A
stream's rate in the throughput scenario follows the slower side, so its ratio is
closer to the worse of the two sides' ratios than to the sum's.

What does move the count is the wall clock: tether.v1's timers (the ack delay, the
server's commit timer) fire per unit of time, not per message, so a run slowed by a
busy machine does more of their work per message (on the ninth session's machine,
1,000-message runs under contention counted up to 2.5 % more per echo). Run the two
sides of an A/B at the same time (two commands in parallel), not one after the
other on a machine whose load changes.

``--test echo_1k`` and ``echo_64k`` are the echo with 1 KiB and 64 KiB messages, the
throughput scenario's larger echoes (asked for by name; ``--counts 200,1000`` is enough
for 64 KiB).

``--test reconnect`` counts a reconnection instead of a message: the client's link is
cut (its socket aborted, as a 1006), it reconnects at once (tether.v1: and resumes),
and one 64 B echo goes through the new link; raw websockets opens a new connection
for each, with the same echo. That is the work a restart storm asks of both sides per
client, without the storm's contention. Its default counts are 100 and 300
reconnections. The tether rows use ``tether.serve``'s default memory store (the storm
uses SQLite, whose thread costs more per resume). ``--store sqlite`` gives the tether
servers a SQLite store instead (the storm's), in a fresh temporary file per run
(deleted after it); callgrind counts every thread, so the store's thread is included.

``--src DIR`` runs tether from another tree (a ``git worktree`` of an earlier
commit, say) with this tree's benchmarks: one side of an A/B. ``PYTHONHASHSEED`` is
fixed so that dict and set layouts do not change between the two runs. Needs
valgrind (``apt-get install valgrind``); each count takes 0.5–2 minutes. Not part
of ``tether bench``: a tool for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from typing import Any

from .common import LOOPS, REPO_ROOT, read_line, run_loop, table, use_loop
from .peers import _SERVERS, _serve_tether

IMPLS = ("websockets", "tether", "tether-v1")
TESTS = ("echo", "stream_up", "stream_down", "reconnect", "echo_1k", "echo_64k")
#: ``--test``'s default: the larger echoes are asked for by name.
DEFAULT_TESTS = ("echo", "stream_up", "stream_down", "reconnect")
#: Bytes per message of each echo test (the throughput scenario's three echoes).
ECHO_SIZES = {"echo": 64, "echo_1k": 1024, "echo_64k": 65536}
#: Warm-up round trips before the counted messages (both runs do them: they cancel out).
WARMUP = 300
#: Warm-up reconnections before the counted ones, and the default counts of ``reconnect``.
WARMUP_RECONNECTS = 20
RECONNECT_COUNTS = (100, 300)
SIDES = ("both", "server", "client")
STORES = ("memory", "sqlite")
#: A measured run still going after this long is stuck (see _watched).
WATCHDOG_S = 600
_COLLECTED = re.compile(r"Collected : (\d+)")
_VALGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


async def _connect(impl: str, url: str) -> Any:
    if impl == "websockets":
        from websockets.asyncio.client import connect

        return connect(url, compression=None, ping_interval=None, ping_timeout=None, proxy=None)
    import tether

    if impl == "tether":
        return tether.connect(url, resume=False)  # type: ignore[attr-defined]
    return tether.connect(url)  # type: ignore[attr-defined]


async def _messages(impl: str, test: str, count: int, store: str | None = None) -> None:
    """Run ``count`` messages of ``test`` through one server and client of ``impl``."""
    if store is None:
        _server, port = await _SERVERS[impl](0, False)
    else:
        _server, port = await _serve_tether(0, False, store)
    await _client(impl, test, count, port)


async def _reconnects(impl: str, count: int, url: str) -> None:
    """``count`` reconnections (after the warm-up ones), each followed by one echo."""
    echo = b"e" * 64
    if impl == "websockets":
        for _ in range(WARMUP_RECONNECTS + count):
            async with await _connect(impl, url) as conn:
                await conn.send(echo)
                await conn.recv()
        return
    import tether
    from tether.backoff import BackoffConfig
    from tether.events import Connected

    # Back at once: the count is of the work, not of the backoff's timers.
    quick = BackoffConfig(base=0.001, cap=0.001)
    conn = await tether.connect(url, resume=impl == "tether-v1", backoff=quick)  # type: ignore[attr-defined]
    try:
        events = conn.events()
        for _ in range(WARMUP_RECONNECTS + count):
            transport = conn._transport
            if transport is None:
                raise RuntimeError("no link to cut")
            transport.abort()
            async for event in events:
                if isinstance(event, Connected):
                    if event.resumed is not (impl == "tether-v1"):
                        raise RuntimeError(f"reconnected with resumed={event.resumed}")
                    break
            await conn.send(echo)
            await conn.recv()
    finally:
        await conn.close()


async def _client(impl: str, test: str, count: int, port: int) -> None:
    """Run ``count`` messages of ``test`` as a client of ``impl``'s server on ``port``."""
    if test == "reconnect":
        await _reconnects(impl, count, f"ws://127.0.0.1:{port}/")
        return
    async with await _connect(impl, f"ws://127.0.0.1:{port}/") as conn:
        if impl == "tether-v1" and conn.subprotocol != "tether.v1":
            raise RuntimeError(f"expected tether.v1, negotiated {conn.subprotocol!r}")
        echo = b"e" * ECHO_SIZES.get(test, 64)
        for _ in range(WARMUP):
            await conn.send(echo)
            await conn.recv()
        if test in ECHO_SIZES:
            for _ in range(count):
                await conn.send(echo)
                await conn.recv()
        elif test == "stream_up":
            payload = b"u" * 256
            await conn.send("sink")
            for _ in range(count):
                await conn.send(payload)
            await conn.send("count")
            counted = int(await conn.recv())
            if counted != count:
                raise RuntimeError(f"server counted {counted} of {count}")
        else:
            await conn.send(f"stream {count} 256 3600")
            received = 0
            while not isinstance(await conn.recv(), str):
                received += 1
            if received != count:
                raise RuntimeError(f"received {received} of {count}")


async def _watched(run: Coroutine[Any, Any, None]) -> None:
    """Run ``run``; if it takes over WATCHDOG_S, print every task's stack and exit with 3.

    A run under valgrind takes 0.5-2 minutes. One that stops making progress (a
    lost wake-up) would otherwise idle until the parent's timeout, and say nothing
    about where it waited.
    """
    loop = asyncio.get_running_loop()

    def stuck() -> None:
        print(f"no end after {WATCHDOG_S} s; the tasks:", file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            print(f"--- {task.get_name()}", file=sys.stderr)
            # The whole chain of awaits (print_stack() shows a suspended task's top frame only).
            awaited: Any = task.get_coro()
            while awaited is not None:
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                if frame is not None:
                    code = frame.f_code
                    print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
                inner = getattr(awaited, "cr_await", None)
                awaited = inner if inner is not None else getattr(awaited, "gi_yieldfrom", None)
            # (asyncio's own record of the future the task waits on; private, for a dump.)
            print(f"  waiting for {getattr(task, '_fut_waiter', None)!r}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    watchdog = loop.call_later(WATCHDOG_S, stuck)
    try:
        await run
    finally:
        watchdog.cancel()


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def _collected(done: subprocess.CompletedProcess[str]) -> int:
    """Callgrind's instruction total from the stderr of a run under valgrind."""
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"{done.args} failed:\n{done.stderr[-12000:]}")
    return int(match.group(1))


def _store_url(store: str, directory: str) -> str | None:
    """The store URL for ``--store`` (None: the servers' default), its file in ``directory``."""
    if store == "memory":
        return None
    return "sqlite:///" + os.path.join(directory, "sessions.db")


def _start_server(
    impl: str, src: str | None, measured: bool, store: str | None = None
) -> tuple[subprocess.Popen[str], int]:
    """A ``benchmarks.peers`` server of ``impl`` (under valgrind if ``measured``) and its port."""
    command = [sys.executable, "-m", "benchmarks.peers", "server", impl]
    if store is not None:
        command += ["--store", store]
    if measured:
        command = [*_VALGRIND, *command]
    server = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=_env(src),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Bounded: a server under valgrind starts in well under a minute.
        port = int(read_line(server, "READY ", 300))
    except BaseException:
        server.kill()
        server.communicate(timeout=60)
        raise
    return server, port


def _stop_server(server: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Stop a server started by :func:`_start_server` (by its PID) and collect its output."""
    server.send_signal(signal.SIGTERM)
    try:
        out, err = server.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        server.kill()
        out, err = server.communicate()
    return subprocess.CompletedProcess(server.args, server.returncode, out, err)


def _count(
    impl: str, test: str, messages: int, src: str | None, side: str = "both", store: str = "memory"
) -> int:
    """Instructions of one whole run of ``messages`` on ``side`` (callgrind's total)."""
    if impl == "websockets":
        store = "memory"  # no sessions: the reference row is the same with either store
    with tempfile.TemporaryDirectory(prefix="tether-instructions-") as directory:
        return _count_in(impl, test, messages, src, side, _store_url(store, directory))


def _count_in(
    impl: str, test: str, messages: int, src: str | None, side: str, store: str | None
) -> int:
    if side == "server":
        measured, port = _start_server(impl, src, measured=True, store=store)
        try:
            client = [sys.executable, "-m", "benchmarks.instructions", "_client", impl, test]
            subprocess.run(
                [*client, str(messages), str(port)],
                cwd=REPO_ROOT,
                env=_env(src),
                check=True,
                timeout=900,
            )
        finally:
            done = _stop_server(measured)
        return _collected(done)
    server: subprocess.Popen[str] | None = None
    if side == "client":
        server, port = _start_server(impl, src, measured=False, store=store)
        child = ["_client", impl, test, str(messages), str(port)]
    else:
        child = ["_run", impl, test, str(messages), *([] if store is None else [store])]
    command = [*_VALGRIND, sys.executable, "-m", "benchmarks.instructions", *child]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=_env(src), capture_output=True, text=True, timeout=900
        )
    finally:
        if server is not None:
            _stop_server(server)
    return _collected(done)


def per_message(
    impl: str,
    test: str,
    counts: tuple[int, int],
    src: str | None,
    side: str = "both",
    store: str = "memory",
) -> float:
    """Instructions per message of ``test``: the difference of two runs over their counts."""
    low, high = counts
    high_count = _count(impl, test, high, src, side, store)
    return (high_count - _count(impl, test, low, src, side, store)) / (high - low)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_run"]:  # the measured child, under valgrind
        _, impl, test, count, *store = argv
        run_loop(_watched(_messages(impl, test, int(count), *store)))
        return 0
    if argv[:1] == ["_client"]:  # the client alone, measured or not
        _, impl, test, count, port = argv
        run_loop(_watched(_client(impl, test, int(count), int(port))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument(
        "--impl", default=",".join(IMPLS), help="comma-separated, of " + ", ".join(IMPLS)
    )
    parser.add_argument(
        "--test",
        default=",".join(DEFAULT_TESTS),
        help="comma-separated, of " + ", ".join(TESTS) + " (echo_1k, echo_64k: 1 KiB and 64 KiB"
        " echoes; default: " + ",".join(DEFAULT_TESTS) + ")",
    )
    parser.add_argument(
        "--side",
        default="both",
        help="comma-separated, of both (one process), server, client (that side alone)",
    )
    parser.add_argument("--src", help="run tether from this src directory (an A/B's other side)")
    parser.add_argument(
        "--counts",
        help="messages in the two runs, N1,N2 (default 1000,5000; reconnections: 100,300)",
    )
    parser.add_argument(
        "--store",
        choices=STORES,
        default="memory",
        help="the tether servers' session store (sqlite: a fresh temporary file per run)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="event loop of the measured processes, servers and clients (uvloop: its C code is"
        " counted too)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    use_loop(args.loop)
    impls = [name for name in args.impl.split(",") if name]
    tests = [name for name in args.test.split(",") if name]
    sides = [name for name in args.side.split(",") if name]
    unknown = (
        sorted(set(impls) - set(IMPLS))
        + sorted(set(tests) - set(TESTS))
        + sorted(set(sides) - set(SIDES))
    )
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    if args.counts is not None:
        low, high = (int(n) for n in args.counts.split(","))
        if not 0 < low < high:
            parser.error("--counts needs 0 < N1 < N2")
        counts = {test: (low, high) for test in tests}
    else:
        counts = {test: RECONNECT_COUNTS if test == "reconnect" else (1000, 5000) for test in tests}
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    # A column per test and side: "echo" is both sides, "echo/server" the server alone.
    columns = [(test, side) for side in sides for test in tests]
    names = [test if side == "both" else f"{test}/{side}" for test, side in columns]
    figures: dict[str, dict[str, float]] = {}
    for impl in impls:
        for (test, side), name in zip(columns, names, strict=True):
            print(f"counting {impl} {name} ...", file=sys.stderr, flush=True)
            value = per_message(impl, test, counts[test], args.src, side, args.store)
            figures.setdefault(impl, {})[name] = value
    if args.json:
        output = {
            "src": args.src,
            "store": args.store,
            "loop": args.loop,
            "counts": counts,
            "figures": figures,
        }
        print(json.dumps(output))
        return 0
    reference = figures.get("websockets")
    rows = []
    for impl, by_name in figures.items():
        cells = []
        for name in names:
            cell = f"{by_name[name] / 1000:.1f}k"
            if reference is not None and impl != "websockets":
                cell += f" ({reference[name] / by_name[name]:.2f})"
            cells.append(cell)
        rows.append([impl, *cells])
    where = "both sides in one process" if sides == ["both"] else "by side (test/side)"
    runs = "; ".join(f"{test}: runs of {a} and {b}" for test, (a, b) in counts.items())
    print(
        f"instructions per message (reconnect: per reconnection), {where} (callgrind;"
        f" {runs}){'; tether from ' + args.src if args.src else ''}"
        f"{'; store ' + args.store if args.store != 'memory' else ''}"
        f"{'; on ' + args.loop if args.loop != 'asyncio' else ''}; in brackets: raw"
        " websockets' count / the row's"
    )
    print(table(["implementation", *names], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
