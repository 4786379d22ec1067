"""The storm's engine reference: a ticker on raw ``websockets`` with a tether-like handover.

``tether bench storm`` row ``websockets`` runs this instead of ``tether serve``: what
the engine alone does with the storm's restart, measured in the same run as tether,
so that a target missed by both is told apart from one missed by tether's own cost.
It does what ``tether serve --app ticker --reuse-port`` does for a restart, and
nothing more (no sessions, no store, no goaway; its clients cannot resume):

* one message per ``--ticker-interval`` ms per connection, the ticker's JSON
  (``seq``, ``tick``, ``t``, ``node``), sent on the wall-clock tick;
* ``GET /healthz``: 200 while serving, 503 once draining;
* SIGHUP: start one replacement (the same command) on the same port
  (``SO_REUSEPORT``), wait until it listens (it says so through a pipe), stop
  listening, close every connection, oldest first, with 1012 in the batches of
  tether's drain plan over ``--drain-window`` seconds, and exit. Unlike ``tether
  serve`` it does not steer new connections to the replacement before it stops
  listening (a connection queued at that instant is reset);
* SIGINT/SIGTERM: exit.

Its log lines match the ones ``benchmarks.storm`` reads from ``tether serve``
(``received SIGHUP``, ``started replacement pid N``, ``draining N connection(s)``).
It runs with the process settings ``tether serve`` gives itself, so that the
comparison is of the code, not of the settings: a listen backlog of 4,096
(``tether.serve``'s default; websockets' is 100), the collector tuned after start-up
(``gc.freeze()``, a young-generation threshold of 10,000) and turned off in the
process that drains and exits. Those settings and the drain's plan are taken from
tether itself (so that they cannot drift apart); nothing of tether runs on a
connection's path.

    python -m benchmarks.rawserver --port P [--ticker-interval MS] [--drain-window S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from http import HTTPStatus
from typing import Any

from tether._cli.serve import _stop_collecting_for_exit, _tune_gc
from tether.asyncio.server import DEFAULT_BACKLOG
from tether.drain import plan_drain

from .common import child_env, run_loop

logger = logging.getLogger("benchmarks.rawserver")

#: Longest the old process waits for its replacement to listen before giving up
#: (then it keeps serving, as ``tether serve`` does when its replacement fails).
REPLACEMENT_READY_S = 30.0


def _setup_logging() -> None:
    # The format of `tether serve`'s text logs (UTC, milliseconds): benchmarks.storm
    # parses the times of the SIGHUP and of the drain's start from them.
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class TickerServer:
    """One process of the reference: connections, their tickers, the handover."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.interval_ms = float(args.ticker_interval)
        self.node = str(os.getpid())
        #: Open connections, oldest first (a dict keeps the order of arrival).
        self.connections: dict[Any, None] = {}
        self.draining = False
        #: A SIGHUP is being acted on (a second one must not start a second replacement).
        self.handing_over = False
        self.done: asyncio.Future[None] | None = None

    async def handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections[ws] = None
        sender = asyncio.ensure_future(self._tick(ws))
        try:
            async for _ in ws:  # the ticker ignores what clients send; this sees the end
                pass
        except ConnectionClosed:
            pass
        finally:
            self.connections.pop(ws, None)
            sender.cancel()

    async def _tick(self, ws: Any) -> None:
        # tether.asyncio.apps.Ticker._tick's loop, on a raw connection instead of a
        # tether Session (which is what the reference leaves out).
        from websockets.exceptions import ConnectionClosed

        seq = 0
        tick = int(time.time() * 1000 // self.interval_ms)
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, tick * self.interval_ms / 1000 - time.time()))
            seq += 1
            message = {"seq": seq, "tick": tick, "t": int(time.time() * 1000), "node": self.node}
            try:
                await ws.send(json.dumps(message, separators=(",", ":")))
            except ConnectionClosed:
                return

    def process_request(self, connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            status = HTTPStatus.SERVICE_UNAVAILABLE if self.draining else HTTPStatus.OK
            return connection.respond(status, "draining\n" if self.draining else "ok\n")
        return None

    async def serve(self) -> None:
        from websockets.asyncio.server import serve

        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        # Thousands of connections: the engine's per-connection INFO lines are noise.
        engine_logger = logging.getLogger("benchmarks.rawserver.engine")
        engine_logger.setLevel(logging.WARNING)
        server = await serve(
            self.handler,
            "127.0.0.1",
            self.args.port,
            reuse_port=True,
            compression=None,  # tether's default too
            process_request=self.process_request,
            backlog=DEFAULT_BACKLOG,
            logger=engine_logger,
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._finish)
        handover: list[asyncio.Task[None]] = []
        loop.add_signal_handler(
            signal.SIGHUP, lambda: handover.append(asyncio.ensure_future(self._handover(server)))
        )
        if self.args.ready_fd is not None:
            # Tell the predecessor that this process listens (it then stops listening).
            os.write(self.args.ready_fd, b"1")
            os.close(self.args.ready_fd)
        logger.info("serving on 127.0.0.1:%d (pid %d)", self.args.port, os.getpid())
        _tune_gc()  # as tether serve: what start-up built, out of the collector's sight
        try:
            await self.done
        finally:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    def _finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def _handover(self, server: Any) -> None:
        if self.handing_over or self.draining or (self.done is not None and self.done.done()):
            return  # one handover per process; none once it is stopping
        self.handing_over = True
        logger.info("received SIGHUP")
        try:
            replacement = await self._start_and_wait()
        finally:
            self.handing_over = False
        if replacement is None:
            return
        self.draining = True
        # Stop listening: the kernel sends every new connection to the replacement.
        # (tether serve steers new connections with a BPF program first and accepts
        # what was already queued for 0.1 s; connections queued here are reset.)
        server.server.close()
        _stop_collecting_for_exit()  # as tether serve's old process: it drains, then exits
        window = float(self.args.drain_window)
        records = list(self.connections)  # oldest first, as tether's drain
        logger.info("draining %d connection(s) with 1012 over %.1f s", len(records), window)
        loop = asyncio.get_running_loop()
        started = loop.time()
        closing = []
        queue = iter(records)
        for batch in plan_drain(len(records), window):
            delay = started + batch.offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for ws in itertools.islice(queue, batch.size):
                closing.append(asyncio.ensure_future(ws.close(1012, "service restart")))
        if closing:
            await asyncio.wait(closing, timeout=10 + window)
        logger.info("server closed")
        self._finish()

    async def _start_and_wait(self) -> subprocess.Popen[bytes] | None:
        """Start the replacement and wait until it listens; None (still serving) if not.

        A replacement that did not say so in time, or whose wait was cancelled (a
        SIGINT meanwhile), is killed by its PID: it must not outlive a failed handover.
        """
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        command = [sys.executable, "-m", "benchmarks.rawserver", *self._argv(write_fd)]
        try:
            replacement = _start_replacement(command, write_fd)
        except OSError as exc:
            os.close(read_fd)
            logger.error("handover failed, still serving: %s", exc)
            return None
        finally:
            os.close(write_fd)
        logger.info("started replacement pid %d: %s", replacement.pid, " ".join(command))
        ready: asyncio.Future[bytes] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(os.read(read_fd, 1))

        loop.add_reader(read_fd, on_readable)
        said = b""
        try:
            said = await asyncio.wait_for(ready, REPLACEMENT_READY_S)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(read_fd)
            os.close(read_fd)
            if said != b"1":
                replacement.kill()
                replacement.wait(5)
        if said != b"1":
            logger.error("the replacement did not start listening: still serving")
            return None
        return replacement

    def _argv(self, ready_fd: int) -> list[str]:
        return [
            "--port", str(self.args.port), "--ticker-interval", str(self.args.ticker_interval),
            "--drain-window", str(self.args.drain_window), "--ready-fd", str(ready_fd),
        ]  # fmt: skip


def _start_replacement(command: list[str], ready_fd: int) -> subprocess.Popen[bytes]:
    # A plain Popen, not asyncio's subprocess: asyncio kills a child still running when
    # its transport is closed, and the replacement must outlive this process. (Starting
    # it blocks the loop for a fork and exec: once per restart.)
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, pass_fds=(ready_fd,), env=child_env()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rawserver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ticker-interval", type=float, default=1000.0, metavar="MS")
    parser.add_argument("--drain-window", type=float, default=5.0, metavar="S")
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.ticker_interval > 0 or args.drain_window < 0:
        parser.error("--ticker-interval must be > 0 and --drain-window >= 0")
    from .peers import raise_nofile_limit

    raise_nofile_limit()
    _setup_logging()
    run_loop(TickerServer(args).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
