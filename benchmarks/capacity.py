"""Handshakes per second one server core sustains, per implementation: the storm's ceiling.

    python -m benchmarks.capacity [--impl websockets,picows,tether,tether-v1,tether-v1-resume]
                                  [--rates 500,1000,1500,2000,3000] [--seconds 2]
                                  [--store memory|sqlite] [--gc tuned|default]
                                  [--loop asyncio|uvloop] [--json]

A restart storm of 10,000 clients over a 5 s drain, with clients waiting 1–5 s
before they come back, sends the replacement up to 2,000 reconnections per second
(docs/benchmarks.md, the storm method). Whether *any* server on one core can answer those
within the target's p99 of 100 ms is a property of the engine and of tether's
layer on it, and this measures it without the storm's other costs: the old
process's drain and the clients' own CPU.

For each implementation and rate, a fresh server (``benchmarks.peers``' servers)
runs pinned to CPU 0, and this process, pinned to CPU 1, opens connections at a
fixed rate for ``--seconds`` (an open loop: each connection starts on schedule
whether or not the ones before were answered, as a storm's clients do). A
connection is raw asyncio TCP carrying a ready-made HTTP upgrade request, so the
load costs this side little (its own lag is reported). Latency runs from the
connection's *scheduled* start, so a server that falls behind is not flattered by
a generator that falls behind with it, to:

* ``websockets``, ``picows``, ``tether``: the ``101 Switching Protocols``;
* ``tether-v1``: the ``welcome`` answering a ``hello`` for a new session;
* ``tether-v1-resume``: the ``welcome`` answering a ``hello`` that resumes a
  session: as many sessions as the step will resume are first opened (unmeasured)
  and their connections aborted, as a 1006 leaves them; the storm's work per client.

Connections stay open until the step ends (a storm's clients stay connected), then
are aborted. The server's CPU per connection is read from ``/proc`` around the step.
A rate is *sustained* when every connection completed and the p99 was at most
100 ms; the table's last column is the highest sustained rate.

The servers run with the collector settings of ``tether serve`` (``--gc tuned``:
``gc.freeze()`` after start-up, a young-generation threshold of 10,000) unless
``--gc default``: the same for every row, so that the rows compare the engines and
tether's layer, not collector settings. Needs 2 CPUs (without them the run is not
pinned, and says so). Not part of ``tether bench``: a tool for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .common import (
    LOOPS,
    bench_loop,
    cpu_times,
    python_command,
    read_line,
    spawn,
    stop,
    table,
    use_loop,
)
from .peers import V1_HELLO, raise_nofile_limit
from .storm import _percentile

IMPLS = ("websockets", "picows", "tether", "tether-v1", "tether-v1-resume")
DEFAULT_RATES = (500, 1000, 1500, 2000, 3000)
#: The storm target's bound on the handshake latency's p99 (issue 7).
P99_BOUND_S = 0.100
#: Past this, a connection still unanswered counts as failed (the storm's clients
#: give a handshake 10 s, tether.connect's default open timeout).
ANSWER_TIMEOUT_S = 10.0
SERVER_CPU = 0
LOAD_CPU = 1
#: RFC 6455's example key: the server's answer is checked only for its status line.
_REQUEST = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n{extra}\r\n"
)
_HEADERS_END = b"\r\n\r\n"


def _server_impl(impl: str) -> str:
    return "tether-v1" if impl == "tether-v1-resume" else impl


def masked_text_frame(text: str, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """One client-to-server text frame (RFC 6455 §5.2), masked as a client must.

    A fixed mask is enough for a load generator: the server unmasks whatever key
    it is given, and nothing here is exposed to a proxy's cache.
    """
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        raise ValueError("a hello is far shorter than 64 KiB")
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + masked


def server_frame(buffer: bytes) -> tuple[int, bytes, int] | None:
    """(opcode, payload, bytes used) of the first whole unmasked frame, or None."""
    if len(buffer) < 2:
        return None
    opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, start = int.from_bytes(buffer[2:4], "big"), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, start = int.from_bytes(buffer[2:10], "big"), 10
    if len(buffer) < start + length:
        return None
    return opcode, buffer[start : start + length], start + length


class _Connection:
    """One handshake (and, for tether.v1, one hello and its welcome), timed.

    A non-blocking socket driven by the loop's reader and writer callbacks: no
    task, transport or protocol object per connection, so that the load costs
    this side little next to the server it measures (asyncio's create_connection
    cost this side ~350 µs per connection, which made it lag at 2,000/s).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, port: int, request: bytes, hello: bytes | None,
        probe: Probe,
    ) -> None:  # fmt: skip
        self.loop = loop
        self.request = request
        self.hello = hello
        self.probe = probe
        self.buffer = b""
        self.upgraded = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        error = self.sock.connect_ex(("127.0.0.1", port))
        if error not in (0, errno.EINPROGRESS):
            self.close()
            probe.fail(f"connect: {os.strerror(error)}")
            return
        loop.add_writer(self.sock, self._connected)

    def _connected(self) -> None:
        self.loop.remove_writer(self.sock)
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.close()
            return self.probe.fail(f"connect: {os.strerror(error)}")
        self._send(self.request)
        self.loop.add_reader(self.sock, self._readable)

    def _send(self, data: bytes) -> None:
        # A request or a hello is a few hundred bytes: an empty socket buffer takes it whole.
        if self.sock.send(data) != len(data):
            raise RuntimeError("a short write of a few hundred bytes on a new connection")

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            data, reason = b"", str(exc)
        else:
            reason = "the server closed the connection"
        if not data:
            self.close()
            return self.probe.fail(f"closed before the answer ({reason})")
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(_HEADERS_END)
            if end < 0:
                return
            status, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            if not status.startswith(b"HTTP/1.1 101"):
                self.loop.remove_reader(self.sock)
                return self.probe.fail(status.split(b"\r\n", 1)[0].decode(errors="replace"))
            self.upgraded = True
            if self.hello is None:
                self.loop.remove_reader(self.sock)
                return self.probe.done()
            self._send(self.hello)
        frame = server_frame(self.buffer)
        if frame is None:
            return
        self.loop.remove_reader(self.sock)  # answered: what comes later is not measured
        opcode, payload, _ = frame
        if opcode != 0x1:
            return self.probe.fail(f"expected a text frame (welcome), got opcode {opcode}")
        welcome = json.loads(payload)
        if welcome.get("type") != "welcome":
            return self.probe.fail(f"expected a welcome, got {payload[:80]!r}")
        self.probe.welcomed(welcome)

    def close(self) -> None:
        """Close without a Close frame (the server sees a 1006); idempotent."""
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock)
            self.loop.remove_writer(self.sock)
            self.sock.close()


@dataclass
class Probe:
    """What one connection saw: its scheduled start, its answer's time, or its failure."""

    scheduled: float
    expect_resumed: bool = False
    answered: float | None = None
    failure: str | None = None
    welcome: dict[str, Any] | None = None
    finished: asyncio.Future[None] = field(default_factory=lambda: asyncio.Future())

    def done(self) -> None:
        if not self.finished.done():
            self.answered = self.finished.get_loop().time()
            self.finished.set_result(None)

    def welcomed(self, welcome: dict[str, Any]) -> None:
        if self.expect_resumed and welcome.get("resumed") is not True:
            return self.fail(f"not resumed: reason {welcome.get('reason')!r}")
        self.welcome = welcome
        self.done()

    def fail(self, reason: str) -> None:
        if not self.finished.done():
            self.failure = reason
            self.finished.set_result(None)


def _request(port: int, impl: str) -> bytes:
    extra = "Sec-WebSocket-Protocol: tether.v1\r\n" if impl.startswith("tether-v1") else ""
    return _REQUEST.format(port=port, extra=extra).encode()


def _resume_hello(welcome: dict[str, Any]) -> bytes:
    hello = {
        "type": "hello",
        "sid": welcome["sid"],
        "token": welcome["token"],
        "epoch": welcome["epoch"],
        "rx": 0,  # the echo server sent nothing on these sessions
        "attempt": 1,
    }
    return masked_text_frame(json.dumps(hello, separators=(",", ":")))


async def _sessions(port: int, count: int) -> list[dict[str, Any]]:
    """Open ``count`` tether.v1 sessions (unmeasured), abort their connections; their welcomes."""
    loop = asyncio.get_running_loop()
    request, hello = _request(port, "tether-v1"), masked_text_frame(V1_HELLO)
    welcomes: list[dict[str, Any]] = []
    for first in range(0, count, 100):  # a hundred at a time, unmeasured
        batch = []
        for _ in range(min(100, count - first)):
            probe = Probe(loop.time())
            batch.append((probe, _Connection(loop, port, request, hello, probe)))
        await asyncio.wait_for(asyncio.gather(*(p.finished for p, _ in batch)), 30)
        for probe, connection in batch:
            connection.close()  # no Close frame: the server sees a 1006 and keeps the session
            if probe.welcome is None:
                raise RuntimeError(f"preparing a session failed: {probe.failure}")
            welcomes.append(probe.welcome)
    return welcomes


@dataclass
class Step:
    impl: str
    rate: int
    planned: int
    latencies: list[float]
    failures: dict[str, int]
    server_cpu_s: float | None
    load_lag_max_s: float
    load_cpu_s: float

    @property
    def sustained(self) -> bool:
        return not self.failures and self.percentile(0.99) <= P99_BOUND_S

    def percentile(self, q: float) -> float:
        """Over every planned connection; a failed one counts as never answered."""
        never = [float("inf")] * (self.planned - len(self.latencies))
        return _percentile([*self.latencies, *never], q * 100)  # nearest rank, as the storm's

    def as_dict(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "rate": self.rate,
            "planned": self.planned,
            "answered": len(self.latencies),
            "failures": self.failures,
            "p50_s": self.percentile(0.50),
            "p90_s": self.percentile(0.90),
            "p99_s": self.percentile(0.99),
            "max_s": self.percentile(1.0),
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_per_connection_us": None
            if self.server_cpu_s is None
            else self.server_cpu_s / self.planned * 1e6,
            "load_lag_max_s": self.load_lag_max_s,
            "load_cpu_s": self.load_cpu_s,
            "sustained": self.sustained,
        }


async def _step(impl: str, port: int, pid: int, rate: int, seconds: float) -> Step:
    loop = asyncio.get_running_loop()
    planned = max(1, round(rate * seconds))
    request = _request(port, impl)
    hellos: list[bytes | None]
    if impl == "tether-v1-resume":
        hellos = [_resume_hello(w) for w in await _sessions(port, planned)]
        await _settle(pid)
    elif impl == "tether-v1":
        hellos = [masked_text_frame(V1_HELLO)] * planned
    else:
        hellos = [None] * planned
    before_cpu, load_before = cpu_times(pid), time.process_time()
    start = loop.time() + 0.05
    probes: list[Probe] = []
    connections: list[_Connection] = []
    lag = 0.0
    started = asyncio.Event()

    def open_one(scheduled: float, hello: bytes | None) -> None:
        nonlocal lag
        lag = max(lag, loop.time() - scheduled)
        probe = Probe(scheduled, expect_resumed=impl == "tether-v1-resume")
        probes.append(probe)
        connections.append(_Connection(loop, port, request, hello, probe))
        if len(probes) == planned:
            started.set()

    # Every start on its own timer, set up front: an open loop whose schedule does not
    # wait for answers (only for this process's own turns, reported as its lag).
    for index, hello in enumerate(hellos):
        scheduled = start + index / rate
        loop.call_at(scheduled, open_one, scheduled, hello)
    await started.wait()
    deadline = start + seconds + ANSWER_TIMEOUT_S
    await asyncio.wait([p.finished for p in probes], timeout=max(0.0, deadline - loop.time()))
    after_cpu, load_cpu = cpu_times(pid), time.process_time() - load_before
    failures: dict[str, int] = {}
    latencies = []
    for probe in probes:
        if probe.answered is not None:
            latencies.append(probe.answered - probe.scheduled)
        else:
            reason = probe.failure or f"no answer within {ANSWER_TIMEOUT_S:.0f} s"
            failures[reason[:120]] = failures.get(reason[:120], 0) + 1
    for connection in connections:
        connection.close()
    server_cpu = None
    if before_cpu is not None and after_cpu is not None:
        server_cpu = sum(after_cpu) - sum(before_cpu)
    return Step(impl, rate, planned, latencies, failures, server_cpu, lag, load_cpu)


async def _settle(pid: int, quiet: float = 0.3, bound: float = 10.0) -> None:
    """Wait (bounded) until the server used no CPU for ``quiet`` seconds."""
    give_up = time.monotonic() + bound
    last = cpu_times(pid)
    while time.monotonic() < give_up:
        await asyncio.sleep(quiet)
        now = cpu_times(pid)
        if now == last:
            return
        last = now


@contextlib.contextmanager
def _server(impl: str, store: str | None, gc_mode: str, pinned: bool) -> Iterator[tuple[int, int]]:
    extra = ["--store", store] if store is not None and impl.startswith("tether") else []
    proc = spawn(python_command("capacity", "_server", _server_impl(impl), gc_mode, *extra))
    try:
        if pinned:
            os.sched_setaffinity(proc.pid, {SERVER_CPU})
        port = int(read_line(proc, "READY ", 30))
        yield port, proc.pid
    finally:
        stop(proc)


def _serve_main(argv: list[str]) -> int:
    """``_server IMPL GC [--store URL]``: a peers server, its collector set as asked."""
    from .common import run_loop
    from .peers import _run_server

    impl, gc_mode, *rest = argv
    store = rest[1] if rest[:1] == ["--store"] else None
    raise_nofile_limit()
    if gc_mode == "tuned":
        # As tether serve's _tune_gc: freeze what start-up built; young threshold 10,000.
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(10_000, middle, old)
    run_loop(_run_server(impl, 0, False, store))
    return 0


def _store_url(store: str, directory: str, impl: str, rate: int) -> str | None:
    if store == "memory":
        return None
    return "sqlite:///" + os.path.join(directory, f"{impl}-{rate}.db")


def run(impls: list[str], rates: list[int], seconds: float, store: str, gc_mode: str) -> list[Step]:
    pinned = len(os.sched_getaffinity(0)) >= 2 and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})
    else:
        print("capacity: fewer than 2 CPUs: server and load are not pinned", file=sys.stderr)
    raise_nofile_limit()
    steps = []
    with tempfile.TemporaryDirectory(prefix="tether-capacity-") as directory:
        for impl in impls:
            for rate in rates:
                url = _store_url(store, directory, impl, rate)
                with _server(impl, url, gc_mode, pinned) as (port, pid):
                    step = asyncio.run(_step(impl, port, pid, rate, seconds))
                steps.append(step)
                figures = step.as_dict()
                print(
                    f"capacity: {impl} {rate}/s: p99 {figures['p99_s'] * 1e3:.1f} ms,"
                    f" {figures['answered']}/{step.planned} answered",
                    file=sys.stderr,
                    flush=True,
                )
                if not step.sustained and rate != rates[-1]:
                    # Past its ceiling: higher rates only take longer to fail.
                    break
    return steps


def report(steps: list[Step], store: str, gc_mode: str, seconds: float) -> str:
    def ms(value: float) -> str:
        return "—" if value == float("inf") else f"{value * 1e3:,.1f}"

    rows = []
    for step in steps:
        f = step.as_dict()
        cpu = f["server_cpu_per_connection_us"]
        rows.append(
            [
                step.impl,
                f"{step.rate:,}",
                f"{f['answered']:,}/{step.planned:,}",
                ms(f["p50_s"]),
                ms(f["p99_s"]),
                ms(f["max_s"]),
                "—" if cpu is None else f"{cpu:,.0f}",
                "—" if cpu is None else f"{cpu * step.rate / 1e4:.0f} %",
                f"{step.load_lag_max_s * 1e3:,.1f}",
                "yes" if step.sustained else "no",
            ]
        )
    best: dict[str, int] = {}
    for step in steps:
        if step.sustained:
            best[step.impl] = max(best.get(step.impl, 0), step.rate)
    lines = [
        f"Handshakes per second on one server core ({seconds:g} s per step, store {store},"
        f" collector {gc_mode}, server loop {bench_loop()}; p99 bound {P99_BOUND_S * 1e3:.0f} ms)",
        "",
        table(
            [
                "server",
                "rate /s",
                "answered",
                "p50 ms",
                "p99 ms",
                "max ms",
                "server CPU µs/conn",
                "× rate (core use)",
                "load lag max ms",
                "sustained",
            ],
            rows,
        ),
        "",
        "Highest sustained rate: "
        + ", ".join(
            f"{impl} {best.get(impl, 0):,}/s" for impl in dict.fromkeys(s.impl for s in steps)
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_server"]:
        return _serve_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--impl", default=",".join(IMPLS))
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--gc", choices=("tuned", "default"), default="tuned")
    parser.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="the servers' event loop (load: asyncio)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    use_loop(args.loop)
    impls = [i for i in args.impl.split(",") if i]
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"unknown implementation {impl!r} (one of {', '.join(IMPLS)})")
    try:
        rates = sorted({int(r) for r in args.rates.split(",") if r})
    except ValueError:
        parser.error(f"--rates must be integers, not {args.rates!r}")
    if not rates or rates[0] <= 0:
        parser.error("--rates must be positive")
    if not 0.1 <= args.seconds <= 60:
        parser.error("--seconds must be between 0.1 and 60")
    steps = run(impls, rates, args.seconds, args.store, args.gc)
    if args.json:
        document = {"store": args.store, "gc": args.gc, "seconds": args.seconds, "loop": args.loop}
        document["steps"] = [s.as_dict() for s in steps]
        json.dump(document, sys.stdout, indent=1)
        print()
    else:
        print(report(steps, args.store, args.gc, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
