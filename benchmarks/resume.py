"""Scenario ``resume``: time from reconnect to replay complete, 1,000 buffered messages per store.

A server process runs ``tether.serve(handler, store=STORE)``; a client process
connects with ``tether.connect`` (tether.v1, the default) and sends ``drop N``. The
handler then aborts the connection's transport (the client sees 1006, no Close
frame) and, while the client is away, sends N numbered messages into the session
followed by ``end``, and prints when it finished. The client reconnects by itself
after a fixed AWAY_S seconds (its 1006 rule set to that delay, so that the handler has
written every message to the store first: what is measured is the replay, not the
handler's own write pace), resumes, and
measures from its ``Connected(resumed=True)`` event to the arrival of ``end``, checking
that every message arrived once and in order; ``Resumed.replayed_in`` says how many
came by replay. Stores: memory, SQLite (a file in a temporary directory) and Redis
(127.0.0.1:6379, keys under a prefix of this run; skipped, and said so, when no Redis
answers).

    python -m benchmarks.resume server STORE
    python -m benchmarks.resume client URL --count N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
from typing import Any

from .common import (
    Progress,
    Summary,
    Unavailable,
    python_command,
    read_line,
    redis_run_prefix,
    run_child_json,
    run_loop,
    spawn,
    stop,
    table,
    tether_has,
)

SUBPROTOCOL = "tether.v1"
#: Targets from issue 7 (milliseconds).
TARGETS_MS = {"memory": 50.0, "redis": 150.0}
#: Bound on one client run (connect, drop, reconnect, replay of 1,000 messages).
CLIENT_BOUND_S = 30
#: How long the client stays away after the 1006: longer than the handler needs to
#: write 1,000 messages to the slowest store (SQLite, one commit per loop turn).
AWAY_S = 2.0


#: The machine's Redis (TESTING.md); the run's keys go under a prefix of its own.
REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def run(*, quick: bool, progress: Progress, runs: int = 5) -> tuple[dict[str, Any], str, bool]:
    if not (tether_has("connect") and tether_has("serve")):
        raise Unavailable("tether.connect / tether.serve (the asyncio adapter) are not here")
    count = 1000
    # Each run keeps the client away AWAY_S: --quick takes one run per store (a smoke
    # check that stays inside its 2-minute budget), the full scenario `runs`.
    rounds = 1 if quick else runs
    results: dict[str, Any] = {}
    missing: dict[str, str] = {}
    # (No Redis, no keys to delete: its row says it is missing.)
    up = _redis_up()
    redis_keys = redis_run_prefix(REDIS_URL, "resume") if up else contextlib.nullcontext(REDIS_URL)
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp, redis_keys as redis_url:
        stores = {"memory": "memory", "sqlite": f"sqlite:///{tmp}/resume.db", "redis": redis_url}
        for name, url in stores.items():
            if name == "redis" and not up:
                missing[name] = "no Redis answers on 127.0.0.1:6379"
                continue
            samples = []
            replayed = []
            for index in range(rounds):
                progress.update(f"resume: {name}, run {index + 1}/{rounds}")
                proc = spawn(python_command("resume", "server", url))
                try:
                    port = int(read_line(proc, "READY ", 30))
                    out = run_child_json(
                        python_command(
                            "resume", "client", f"ws://127.0.0.1:{port}/", "--count", str(count)
                        ),
                        CLIENT_BOUND_S,
                    )
                    sent_at = float(read_line(proc, "SENT ", 5))
                except RuntimeError as exc:
                    # Said plainly, no figure: e.g. the replay never completed.
                    missing[name] = f"FAILED in run {index + 1}: {str(exc).splitlines()[0][-200:]}"
                    break
                finally:
                    stop(proc)
                if out["subprotocol"] != SUBPROTOCOL:
                    raise Unavailable(f"negotiated {out['subprotocol']!r}, not {SUBPROTOCOL!r}")
                if sent_at > out["resumed_at"]:
                    # The handler was still writing when the client came back: the
                    # time would include its write pace. Said plainly, no figure.
                    missing[name] = (
                        f"run {index + 1}: the handler finished sending "
                        f"{sent_at - out['resumed_at']:.2f} s after the resume (AWAY_S too short)"
                    )
                    break
                samples.append(out["replay_ms"])
                replayed.append(out["replayed_in"])
            if name in missing:
                continue
            results[name] = {
                "replay_ms": Summary.of(samples).as_json(),
                "replayed_in": replayed,
                "target_ms": TARGETS_MS.get(name),
            }
    progress.done()
    rows = []
    for name, r in results.items():
        s = r["replay_ms"]
        target = TARGETS_MS.get(name)
        met = "" if target is None else ("yes" if s["median"] <= target else "NO")
        rows.append(
            [
                name,
                f"{s['median']:.1f}",
                f"{s['min']:.1f}–{s['max']:.1f}",
                ", ".join(str(x) for x in sorted(set(r["replayed_in"]))),
                f"≤ {target:g}: {met}" if target is not None else "—",
            ]
        )
    text = [
        f"resume: ms from Connected(resumed=True) to the last of {count} messages sent "
        f"while the client was away, median (min–max) of {rounds} runs",
        table(["store", "median ms", "min–max", "replayed_in", "target ms"], rows),
    ]
    for name, why in missing.items():
        text.append(f"{name}: NO FIGURE — {why}")
    result = {"scenario": "resume", "count": count, "stores": results, "missing": missing}
    return result, "\n".join(text), not missing


# --------------------------------------------------------------------------- processes


async def _server(store: str) -> None:
    import tether

    loop = asyncio.get_running_loop()

    async def handler(session: Any) -> None:
        async for message in session:
            if isinstance(message, str) and message.startswith("drop "):
                count = int(message.split()[1])
                transport = session.transport
                if transport is not None:
                    transport.abort()  # 1006 for the client: no Close frame
                for index in range(count):
                    await session.send(f"m{index}")
                await session.send("end")
                print(f"SENT {loop.time():.6f}", flush=True)  # CLOCK_MONOTONIC, as the client's

    serve: Any = tether.serve  # type: ignore[attr-defined]
    server = serve(handler, "127.0.0.1", 0, store=store)
    await server.start()
    print(f"READY {server.port}", flush=True)
    await asyncio.Event().wait()  # until the parent stops this process


async def _client(url: str, count: int) -> dict[str, Any]:
    import tether

    connect: Any = tether.connect  # type: ignore[attr-defined]
    # 1006 -> reconnect after exactly AWAY_S (the "restart" delay with a fixed window).
    away = tether.ReconnectPolicy({1006: tether.Rule.reconnect(tether.DelayRule.RESTART)})
    conn = connect(url, policy=away, backoff=tether.BackoffConfig(restart_window=(AWAY_S, AWAY_S)))
    loop = asyncio.get_running_loop()
    events = conn.events()
    resumed_at: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    replayed_in = [0]

    async def watch() -> None:
        async for event in events:
            if isinstance(event, tether.Connected) and event.resumed and not resumed_at.done():
                resumed_at.set_result(loop.time())
            elif isinstance(event, tether.Resumed):
                replayed_in[0] = int(event.replayed_in)

    watcher = asyncio.ensure_future(watch())
    async with conn:
        subprotocol = conn.subprotocol
        await conn.send(f"drop {count}")
        expected = 0
        while True:
            message = await conn.recv()
            if message == "end":
                done_at = loop.time()
                break
            if message != f"m{expected}":
                raise RuntimeError(f"got {message!r}, expected 'm{expected}'")
            expected += 1
        if expected != count:
            raise RuntimeError(f"got {expected} of {count} messages")
        start = await asyncio.wait_for(resumed_at, 10)
        await asyncio.sleep(0.05)  # let the Resumed event arrive
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    return {
        "subprotocol": subprotocol,
        "replay_ms": (done_at - start) * 1000,
        "replayed_in": replayed_in[0],
        "resumed_at": start,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resume")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("store")
    client = sub.add_parser("client")
    client.add_argument("url")
    client.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.role == "server":
        with contextlib.suppress(KeyboardInterrupt):
            run_loop(_server(args.store))
        return 0
    result = run_loop(asyncio.wait_for(_client(args.url, args.count), 60))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
