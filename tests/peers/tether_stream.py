"""N ``tether.connect`` clients streaming numbered messages both ways, checking every sequence.

Usage: python tether_stream.py --url ws://... [--clients N] [--rate PER_S] [--resume|--no-resume]

Each client sends ``{"c": CLIENT, "n": 1, 2, 3...}`` at ``--rate`` messages per second. Against
``tether serve --app echo`` the answers are those messages; against ``--app ticker`` they come
back as ``{"echo": "...", "node": ID}`` between the ticker's own ``{"seq", "tick", "node"}``
messages. Both streams are checked with :class:`tether._cli.demo_report.SequenceCheck`: the echoes
(``up``: client -> server -> client, one run) and the ticks (``down``, runs by node). ``node`` is
the node id of the last message received (ticker only).

Prints JSON lines (``t`` = time.monotonic()): ``ready{clients, loop}``; per client ``connected{id,
attempt, resumed}``, ``disconnected{id, code}``, ``resumed{id, replayed_in, replayed_out}``,
``session_lost{id, reason, unacked}``, ``gave_up{id, reason}``; ``report{clients: [...],
totals}`` answering a command.

Commands on stdin (JSON lines):
- ``{"cmd": "stop_sending"}``: stop sending; answers ``stopped{sent}``.
- ``{"cmd": "report", "settle": S}``: wait up to S seconds until every echo came back, then
  ``report``; each client's ``up`` is charged with the tail it sent and never got back.
- ``{"cmd": "close"}``: close every client (code 1000) and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from typing import Any

import tether
from tether import events
from tether._cli.demo_report import SequenceCheck
from tether._cli.loops import add_loop_option, resolve_loop, run_on


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line and flush, so the parent sees it at once."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class StreamClient:
    """One tether client: sends numbered messages, checks what comes back."""

    def __init__(self, client_id: int, args: argparse.Namespace) -> None:
        self.client_id = client_id
        self.args = args
        options: dict[str, Any] = {"rng": random.Random(args.seed * 1000 + client_id)}
        if args.resume is not None:
            options["resume"] = args.resume
        if args.ping_interval > 0:
            options["heartbeat"] = tether.Heartbeat(args.ping_interval, args.ping_timeout)
        self.conn = tether.connect(args.url, **options)
        self.sent = 0
        self.sending = True
        self.up = SequenceCheck()
        self.down = SequenceCheck()
        self.node: str | None = None
        self.lost: list[str] = []
        self.resumes = 0
        self.connects = 0
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.conn.start()
        self.tasks = [
            asyncio.ensure_future(self._watch()),
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._send()),
        ]

    async def _watch(self) -> None:
        ident = self.client_id
        async for event in self.conn.events():
            if isinstance(event, events.Connected):
                self.connects += 1
                emit("connected", id=ident, attempt=event.attempt, resumed=event.resumed)
            elif isinstance(event, events.Disconnected):
                emit("disconnected", id=ident, code=event.code)
            elif isinstance(event, events.Resumed):
                self.resumes += 1
                emit("resumed", id=ident, replayed_in=event.replayed_in,
                     replayed_out=event.replayed_out)  # fmt: skip
            elif isinstance(event, events.SessionLost):
                self.lost.append(event.reason)
                emit("session_lost", id=ident, reason=event.reason, unacked=len(event.unacked))
            elif isinstance(event, events.GaveUp):
                emit("gave_up", id=ident, reason=event.reason)

    async def _read(self) -> None:
        async for message in self.conn:
            try:
                data = json.loads(message)
                if "echo" in data:
                    self.node = str(data["node"])
                    data = json.loads(data["echo"])
                if "seq" in data:
                    self.node = str(data["node"])
                    self.down.add(int(data["seq"]), self.node)
                else:
                    self.up.add(int(data["n"]))
            except (ValueError, KeyError, TypeError) as exc:
                self.errors.append(f"bad message {message!r}: {exc}")

    async def _send(self) -> None:
        interval = 1.0 / self.args.rate
        # Spread the clients' sends over one interval so they do not all send at once.
        await asyncio.sleep(interval * random.Random(self.client_id).random())
        while self.sending:
            self.sent += 1
            try:
                await self.conn.send(json.dumps({"c": self.client_id, "n": self.sent}))
            except tether.TetherError as exc:
                self.sent -= 1
                self.errors.append(f"send {self.sent + 1}: {exc!r}")
                await asyncio.sleep(interval)
                continue
            await asyncio.sleep(interval)

    def caught_up(self) -> bool:
        return self.up.received - self.up.duplicates >= self.sent

    def report(self) -> dict[str, Any]:
        # The tail sent and never echoed is charged here (not in self.up: a later report
        # may still see it arrive).
        missing_tail = max(0, self.sent - self.up.last())
        return {
            "id": self.client_id,
            "sent": self.sent,
            "up": {**self.up.counts(), "missing": self.up.missing + missing_tail},
            "down": self.down.counts(),
            "node": self.node,
            "connects": self.connects,
            "resumes": self.resumes,
            "lost": self.lost,
            "errors": self.errors[:5],
        }


async def read_commands(clients: list[StreamClient]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        name = command.get("cmd")
        if name == "stop_sending":
            for client in clients:
                client.sending = False
            emit("stopped", sent=sum(client.sent for client in clients))
        elif name == "report":
            deadline = time.monotonic() + float(command.get("settle", 5.0))
            for _ in range(10_000):  # bounded by the deadline; polls every 50 ms
                if time.monotonic() >= deadline or all(c.caught_up() for c in clients):
                    break
                await asyncio.sleep(0.05)
            reports = [client.report() for client in clients]
            totals = {
                key: sum(r[direction][key] for r in reports)
                for direction in ("up",)
                for key in ("received", "missing", "duplicates", "out_of_order")
            }
            totals["down_missing"] = sum(r["down"]["missing"] for r in reports)
            totals["down_duplicates"] = sum(r["down"]["duplicates"] for r in reports)
            totals["down_out_of_order"] = sum(r["down"]["out_of_order"] for r in reports)
            totals["sent"] = sum(r["sent"] for r in reports)
            emit("report", clients=reports, totals=totals)
        elif name == "close":
            return


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per client")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ping-interval", type=float, default=1.0, help="0: no heartbeat")
    parser.add_argument("--ping-timeout", type=float, default=2.0)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=None)
    resume.add_argument("--no-resume", dest="resume", action="store_false")
    add_loop_option(parser)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    clients = [StreamClient(i, args) for i in range(args.clients)]
    for client in clients:
        client.start()
    # (loop: which event loop runs the clients, "asyncio" or "uvloop"; see --loop.)
    emit("ready", clients=len(clients), loop=type(asyncio.get_running_loop()).__module__)
    try:
        await read_commands(clients)
    finally:
        for client in clients:
            client.sending = False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.conn.close() for c in clients), return_exceptions=True), 10
            )
        for client in clients:
            for task in client.tasks:
                task.cancel()
        await asyncio.gather(*(t for c in clients for t in c.tasks), return_exceptions=True)


if __name__ == "__main__":
    arguments = parse_args()
    run_on(resolve_loop(arguments.loop), main(arguments))
