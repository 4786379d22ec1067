"""Instructions the old process spends per drained tether.v1 connection (callgrind).

    python benchmarks/results/2026-11-27h/drain_instr.py [--counts 200,600] [--store sqlite|memory]
                                                         [--src DIR]

A storm's old process spent as much CPU as its replacement (eighteenth session:
12.6 against 18.3 CPU-seconds), but only the reconnection had an instruction count
(`benchmarks.instructions --test reconnect`). This counts the drain: a
`tether.serve` server (echo handler, store as asked, collector set as `tether
serve` sets it, and turned off when the drain starts, as `tether serve --reuse-port`
does) takes N tether.v1 sessions from raw websockets holders (`benchmarks.peers
hold --tether-v1`), then `restart()`s: goaway, 1012, the close handshake and the
session's detach in the store, per connection, over a 1 s window. The same run
without the drain (the process exits once the sessions are held) is subtracted,
and the difference between N1 and N2 sessions divided by N2 - N1: start-up,
handshakes and hellos cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from benchmarks.common import REPO_ROOT, read_line  # noqa: E402
from benchmarks.instructions import _VALGRIND, _collected, _env  # noqa: E402

DRAIN_WINDOW_S = 1.0


async def _serve(mode: str, store: str) -> None:
    import tether
    from benchmarks.peers import _serve_iterable, raise_nofile_limit

    async def handler(session: object) -> None:
        await _serve_iterable(session, session.send)  # type: ignore[attr-defined]

    raise_nofile_limit()
    server = tether.serve(
        handler, "127.0.0.1", 0, store=store, handle_signals=False, drain_window=DRAIN_WINDOW_S
    )
    await server.start()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(10_000, middle, old)
    print(f"READY {server.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if mode == "drain":
        gc.disable()
        await server.restart()
    print("DONE", flush=True)
    os._exit(0)


def _count(n: int, mode: str, store: str, src: str | None) -> int:
    server = subprocess.Popen(
        [*_VALGRIND, sys.executable, __file__, "_server", mode, store],
        cwd=REPO_ROOT, env=_env(src), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder = None
    try:
        port = int(read_line(server, "READY ", 300))
        holder = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peers", "hold", f"ws://127.0.0.1:{port}/",
             "--connections", str(n), "--tether-v1", "--concurrency", "50"],
            cwd=REPO_ROOT, env=_env(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        held = read_line(holder, "HELD ", 600).split()
        if held != [str(n), "0"]:
            raise RuntimeError(f"held {held}, wanted {n} and no failure")
        assert server.stdin is not None
        server.stdin.write("GO\n")
        server.stdin.flush()
        out, err = server.communicate(timeout=600)
    finally:
        for proc in (holder, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(60)
    return _collected(subprocess.CompletedProcess(server.args, server.returncode, out, err))


def main() -> int:
    if sys.argv[1:2] == ["_server"]:
        asyncio.run(_serve(sys.argv[2], sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="200,600")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--src")
    args = parser.parse_args()
    low, high = (int(c) for c in args.counts.split(","))
    with tempfile.TemporaryDirectory(prefix="tether-drain-") as directory:
        counts = {}
        for mode in ("drain", "held"):
            for n in (low, high):
                store = (
                    "memory" if args.store == "memory"
                    else "sqlite:///" + os.path.join(directory, f"{mode}-{n}.db")
                )  # fmt: skip
                counts[mode, n] = _count(n, mode, store, args.src)
                print(f"{mode} {n}: {counts[mode, n]:,}", file=sys.stderr, flush=True)
    drained = (counts["drain", high] - counts["drain", low]) / (high - low)
    held = (counts["held", high] - counts["held", low]) / (high - low)
    print(f"per session, {args.store}: connect+hello {held:,.0f}; with the drain {drained:,.0f};"
          f" the drain alone {drained - held:,.0f} instructions")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
